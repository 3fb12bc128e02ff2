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
from sklearn.metrics import auc
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


def test_predict_with_abstention_keeps_label_types():
    proba = np.array([[0.9, 0.1], [0.55, 0.45], [0.2, 0.8]])
    out = predict_with_abstention(proba, np.array([3, 7]), 0.6)
    assert out.dtype == object
    assert out.tolist() == [3, ABSTAIN, 7]
    assert predict_with_abstention(proba, ["a", "b"], None).tolist() == ["a", "a", "b"]
    assert predict_with_abstention(proba, ["a", "b"], 0.0).tolist() == ["a", "a", "b"]
    assert is_abstained(predict_with_abstention(proba, ["a", "b"], 1.0)).all()
    assert abstain_mask(proba, 0.6, measure="margin").tolist() == [False, True, False]


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
        assert coverage(pred) == pytest.approx(cov)
        assert selective_risk(y, pred) == pytest.approx(risk)
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
    proba = cascade.predict_proba(X)
    abstained = is_abstained(out)
    assert np.array_equal(abstained, proba.max(axis=1) < 0.9)
    assert 0 < abstained.sum() < len(X)
    np.testing.assert_array_equal(out[~abstained].astype(str), cascade.predict(X)[~abstained])
    assert not is_abstained(cascade.set_params(reject_threshold=None).predict_or_abstain(X)).any()


@pytest.mark.parametrize("bad", [1.5, -0.2, "high"])
def test_cascade_validates_reject_threshold_in_fit(iris, bad):
    X, y = iris
    cascade = CascadeClassifier([("nb", GaussianNB())], reject_threshold=bad)
    assert cascade.reject_threshold == bad  # stored unchanged
    with pytest.raises(PolicyError, match="reject_threshold"):
        cascade.fit(X, y)
