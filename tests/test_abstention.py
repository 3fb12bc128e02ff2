import copy
import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import auc, classification_report
from sklearn.naive_bayes import GaussianNB

from cascademl import CascadeClassifier, PolicyError
from cascademl.abstention import (
    ABSTAIN,
    AbstainType,
    abstain_mask,
    coverage,
    is_abstained,
    predict_with_abstention,
    risk_coverage_curve,
    selective_accuracy,
    selective_risk,
)
from strategies import proba_tables


def test_abstain_is_a_singleton_that_survives_copies_and_pickles():
    assert AbstainType() is ABSTAIN
    assert copy.copy(ABSTAIN) is ABSTAIN
    assert copy.deepcopy([ABSTAIN])[0] is ABSTAIN
    assert pickle.loads(pickle.dumps(ABSTAIN)) is ABSTAIN  # noqa: S301 - our own bytes
    assert repr(ABSTAIN) == "ABSTAIN"
    assert ABSTAIN != "ABSTAIN"
    assert ABSTAIN != 0


def test_predict_with_abstention_keeps_the_classes_dtype():
    proba = np.array([[0.9, 0.1], [0.55, 0.45], [0.2, 0.8]])
    out = predict_with_abstention(proba, np.array([3, 7], dtype=np.int32), 0.6)
    assert out.dtype == np.int32
    assert out.tolist() == [3, -1, 7]
    named = predict_with_abstention(proba, np.array([3, 7]), 0.6, abstain_label=99)
    assert named.tolist() == [3, 99, 7]
    text = predict_with_abstention(proba, np.array(["a", "b"]), 0.6)
    assert text.dtype.kind == "U"
    assert text.tolist() == ["a", "abstain", "b"]
    floats = predict_with_abstention(proba, np.array([0.5, 1.5]), 0.6)
    assert floats.dtype == np.float64
    assert math.isnan(floats[1])
    assert is_abstained(floats, abstain_label=math.nan).tolist() == [False, True, False]
    assert predict_with_abstention(proba, ["a", "b"], None).tolist() == ["a", "a", "b"]
    assert predict_with_abstention(proba, ["a", "b"], 0.0).tolist() == ["a", "a", "b"]
    everything = predict_with_abstention(proba, ["a", "b"], 1.0, abstain_label="?")
    assert is_abstained(everything, abstain_label="?").all()
    assert abstain_mask(proba, 0.6, measure="margin").tolist() == [False, True, False]


def test_abstain_singleton_on_request():
    proba = np.array([[0.9, 0.1], [0.55, 0.45]])
    out = predict_with_abstention(proba, [3, 7], 0.6, abstain_label=ABSTAIN)
    assert out.dtype == object
    assert out.tolist() == [3, ABSTAIN]
    assert is_abstained(out).tolist() == [False, True]


@pytest.mark.parametrize(
    ("classes", "label", "match"),
    [
        ([0, 1], 1, "is one of the classes"),
        (["a", "abstain"], None, "no default"),
        (["a", "b"], -1, "classes' type"),
        ([0, 1], "abstain", "classes' type"),
        ([0, 1], 1.5, "classes' type"),
        (np.arange(256, dtype=np.uint8), None, "no default"),
        (np.array([0, 1], dtype=np.uint8), 300, "classes' type"),
        ([True, False], None, "no default"),
    ],
)
def test_invalid_abstain_labels(classes, label, match):
    proba = np.array([[0.9, 0.1], [0.55, 0.45]])
    with pytest.raises(PolicyError, match=match):
        predict_with_abstention(proba, np.asarray(classes), 0.6, abstain_label=label)


def test_default_label_steps_below_a_class_of_minus_one():
    proba = np.array([[0.4, 0.3, 0.3]])
    out = predict_with_abstention(proba, np.array([-1, 0, 1]), 0.6)
    assert out.tolist() == [-2]


@pytest.mark.parametrize(
    ("classes", "expected"),
    [
        (np.array([3, 7], dtype=np.uint8), 255),
        (np.array([3, 255], dtype=np.uint8), 254),
        (np.array([0, 254, 255], dtype=np.uint8), 253),
        (np.array([0, 1], dtype=np.uint16), 65535),
        (np.array([0, 1], dtype=np.uint64), 2**64 - 1),
        (np.array([-128, -1, 0], dtype=np.int8), 1),  # below the minimum: one above the max
        (np.array([-1, 0], dtype=np.int8), -2),
    ],
)
def test_default_label_for_fixed_width_integers(classes, expected):
    proba = np.array([[0.9, 0.05, 0.05], [0.4, 0.3, 0.3]])[:, : len(classes)]
    proba = proba / proba.sum(axis=1, keepdims=True)
    out = predict_with_abstention(proba, classes, 0.6)
    assert out.dtype == classes.dtype
    assert out.tolist() == [classes[0], expected]
    assert expected not in classes.tolist()


def test_cascade_abstains_on_unsigned_classes_without_a_named_label():
    X = np.r_[np.full((20, 1), -5.0), np.full((20, 1), 5.0), np.zeros((4, 1))]
    y = np.r_[np.zeros(20), np.ones(20), [0, 1, 0, 1]].astype(np.uint8)
    cascade = CascadeClassifier([("lr", LogisticRegression())], reject_threshold=0.9).fit(X, y)
    pred = cascade.predict_or_abstain(np.array([[-5.0], [0.0], [5.0]]))
    assert pred.dtype == np.uint8
    assert pred.tolist() == [0, 255, 1]
    assert cascade.abstain_label_ == 255


def test_typed_predictions_need_the_label_to_be_named():
    with pytest.raises(PolicyError, match="abstain_label="):
        coverage(np.array([3, -1]))
    assert coverage(np.array([3, -1]), abstain_label=-1) == 0.5
    assert selective_accuracy([3, 3], np.array([3, -1]), abstain_label=-1) == 1.0


@pytest.mark.parametrize("bad", [-0.1, 1.1, math.nan, "0.5", True])
def test_invalid_reject_thresholds(bad):
    with pytest.raises(PolicyError, match="reject_threshold"):
        predict_with_abstention(np.array([[0.5, 0.5]]), [0, 1], bad)


def test_selective_metrics():
    y = np.array(["a", "b", "b", "a"])
    pred = np.array(["a", ABSTAIN, "a", ABSTAIN], dtype=object)
    assert coverage(pred) == 0.5
    assert selective_accuracy(y, pred) == 0.5
    assert selective_risk(y, pred) == 0.5
    assert math.isnan(selective_accuracy(y[:1], [ABSTAIN]))
    assert coverage([]) == 0.0
    with pytest.raises(PolicyError, match="labels"):
        selective_accuracy(y, pred[:2])


@settings(max_examples=50, deadline=None)
@given(tables=proba_tables(min_stages=1, max_stages=1), seed=st.integers(0, 1000))
def test_risk_coverage_curve_matches_brute_force(tables, seed):
    proba = tables[0]
    n, k = proba.shape
    classes = np.arange(k)
    y = np.random.default_rng(seed).integers(0, k, n)
    curve = risk_coverage_curve(y, proba, classes=classes)
    assert np.all(np.diff(curve.coverage) > 0)
    assert curve.coverage[-1] == 1.0
    conf = proba.max(axis=1)
    for cov, risk, t in zip(curve.coverage, curve.risk, curve.thresholds, strict=True):
        pred = predict_with_abstention(proba, classes, float(t))
        # Threshold t covers exactly the samples with confidence >= t.
        assert coverage(pred, abstain_label=-1) == pytest.approx(cov)
        assert selective_risk(y, pred, abstain_label=-1) == pytest.approx(risk)
        assert np.sum(conf >= t) == round(cov * n)
    expected = auc(np.r_[0.0, curve.coverage], np.r_[curve.risk[0], curve.risk])
    assert curve.aurc == pytest.approx(expected)


@pytest.fixture(scope="module")
def iris():
    X, y = load_iris(return_X_y=True)
    return X, np.array(["setosa", "versicolor", "virginica"])[y]


def test_cascade_reject_threshold(iris):
    X, y = iris
    cascade = CascadeClassifier(
        [("nb", GaussianNB()), ("lr", LogisticRegression(max_iter=500))],
        reject_threshold=0.9,
    )
    assert cascade.get_params()["reject_threshold"] == 0.9
    assert clone(cascade).reject_threshold == 0.9
    cascade.fit(X, y)
    out = cascade.predict_or_abstain(X)
    assert out.dtype.kind == "U"
    proba = cascade.predict_proba(X)
    abstained = is_abstained(out, abstain_label="abstain")
    assert cascade.abstain_label_ == "abstain"
    assert np.array_equal(abstained, proba.max(axis=1) < 0.9)
    assert 0 < abstained.sum() < len(X)
    np.testing.assert_array_equal(out[~abstained], cascade.predict(X)[~abstained])
    plain = cascade.set_params(reject_threshold=None).predict_or_abstain(X)
    np.testing.assert_array_equal(plain, cascade.predict(X))


def test_cascade_abstain_label_works_with_classification_report(iris):
    X, y = iris
    codes = np.unique(y, return_inverse=True)[1]
    cascade = CascadeClassifier(
        [("nb", GaussianNB()), ("lr", LogisticRegression(max_iter=500))],
        reject_threshold=0.9,
        abstain_label=-1,
    ).fit(X, codes)
    out = cascade.predict_or_abstain(X)
    assert out.dtype == cascade.classes_.dtype
    assert -1 in out.tolist()
    report = classification_report(codes, out, output_dict=True, zero_division=0)
    assert report["-1"]["support"] == 0
    assert report["-1"]["precision"] == 0.0
    # After set_params the next call uses the new label, no refit needed.
    relabelled = cascade.set_params(abstain_label=-7).predict_or_abstain(X)
    np.testing.assert_array_equal(relabelled == -7, out == -1)


def test_cascade_rejects_an_abstain_label_that_is_a_class(iris):
    X, y = iris
    cascade = CascadeClassifier(
        [("nb", GaussianNB())], reject_threshold=0.9, abstain_label="setosa"
    )
    with pytest.raises(PolicyError, match="'setosa' is one of the classes"):
        cascade.fit(X, y)


@pytest.mark.parametrize("bad", [1.5, -0.2, "high"])
def test_cascade_validates_reject_threshold_in_fit(iris, bad):
    X, y = iris
    cascade = CascadeClassifier([("nb", GaussianNB())], reject_threshold=bad)
    assert cascade.reject_threshold == bad  # stored unchanged
    with pytest.raises(PolicyError, match="reject_threshold"):
        cascade.fit(X, y)
