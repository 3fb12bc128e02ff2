import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB

from cascademl import CascadeClassifier, ConfidencePolicy, NotFittedError, PolicyError, Stage
from cascademl.calibration import (
    TemperatureScaledStage,
    apply_temperature,
    calibrate_cascade,
    expected_calibration_error,
    fit_temperature,
    fit_temperatures,
    with_temperatures,
)
from strategies import proba_tables


def _overconfident(n=4000, n_classes=4, factor=3.0, seed=0):
    """Labels drawn from softmax(z); the 'model' reports softmax(factor * z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=1.5, size=(n, n_classes))
    true_p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(n_classes, p=row) for row in true_p])
    model_p = np.exp(factor * z) / np.exp(factor * z).sum(axis=1, keepdims=True)
    return model_p, y


def test_fit_temperature_recovers_the_distortion():
    proba, y = _overconfident(factor=3.0)
    t = fit_temperature(proba, y, classes=np.arange(4))
    assert t == pytest.approx(3.0, rel=0.1)
    logits = np.log(proba)
    assert fit_temperature(logits, y, classes=np.arange(4), from_logits=True) == pytest.approx(t)
    # Deterministic.
    assert fit_temperature(proba, y, classes=np.arange(4)) == t


def test_ece_before_and_after_from_torchmetrics():
    proba, y = _overconfident(factor=3.0)
    report = fit_temperatures(proba[None], y, classes=np.arange(4), stage_names=["m"])
    assert report.stage_names == ("m",)
    assert report.ece_after[0] < report.ece_before[0] / 2
    assert report.nll_after[0] < report.nll_before[0]
    assert report.n_samples == len(y)
    # Perfectly calibrated by construction after dividing by the true temperature.
    ideal = apply_temperature(proba, 3.0)
    assert expected_calibration_error(ideal, y, classes=np.arange(4)) < 0.03


def test_ece_matches_a_reference_by_hand_on_a_tiny_case():
    proba = np.array([[0.8, 0.2], [0.8, 0.2], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 1, 0, 0])
    # bins: conf 0.8 -> acc 0.5 (gap 0.3), conf 0.6 -> acc 1.0 (gap 0.4); weighted 0.35
    assert expected_calibration_error(proba, y, classes=[0, 1], n_bins=10) == pytest.approx(0.35)


@settings(max_examples=40, deadline=None)
@given(tables=proba_tables(min_stages=1, max_stages=1), t=st.floats(0.05, 20))
def test_apply_temperature_properties(tables, t):
    proba = tables[0]
    scaled = apply_temperature(proba, t)
    np.testing.assert_allclose(scaled.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(apply_temperature(proba, 1.0), proba, atol=1e-9)
    # Scaling never changes the predicted class (up to ties).
    top = proba.max(axis=1, keepdims=True)
    clear = (proba >= top - 1e-9).sum(axis=1) == 1
    assert np.array_equal(scaled.argmax(1)[clear], proba.argmax(1)[clear])


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "2", True])
def test_invalid_temperatures(bad):
    with pytest.raises(PolicyError, match="temperature"):
        apply_temperature(np.array([[0.5, 0.5]]), bad)


def test_fit_temperature_input_errors():
    with pytest.raises(PolicyError, match="bounds"):
        fit_temperature(np.array([[0.5, 0.5]]), [0], classes=[0, 1], bounds=(2.0, 1.0))
    with pytest.raises(PolicyError, match="shape"):
        fit_temperature(np.array([[0.5, 0.5]]), [0, 1], classes=[0, 1])
    with pytest.raises(PolicyError, match="not in classes"):
        fit_temperature(np.array([[0.5, 0.5]]), [7], classes=[0, 1])


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    cascade = CascadeClassifier(
        [("nb", GaussianNB()), ("lr", LogisticRegression(max_iter=500))],
        policy=ConfidencePolicy("max_proba", 0.95),
    ).fit(X[:700], y[:700])
    return cascade, X, y


def test_calibrate_cascade_wraps_without_retraining(digits):
    cascade, X, y = digits
    before = cascade.predict_proba(X[1200:])
    calibrated, report = calibrate_cascade(cascade, X[700:1200], y[700:1200])
    assert report.stage_names == ("nb", "lr")
    assert all(isinstance(s, TemperatureScaledStage) for s in calibrated.stages_)
    assert all(isinstance(s, Stage) for s in calibrated.stages_)
    assert calibrated.stages_[0].stage.estimator_ is cascade.stages_[0].estimator_
    assert calibrated.policy_ == cascade.policy_
    assert report.temperatures[0] > 1.0  # naive Bayes is over-confident
    assert all(a <= b + 1e-12 for a, b in zip(report.nll_after, report.nll_before, strict=True))
    # Each stage's own ranking of classes is unchanged; the original cascade too.
    for s, stage in enumerate(calibrated.stages_):
        raw = cascade.stages_[s].predict_proba(X[1200:])
        assert np.array_equal(stage.predict_proba(X[1200:]).argmax(1), raw.argmax(1))
    np.testing.assert_array_equal(cascade.predict_proba(X[1200:]), before)
    # The calibrated cascade is still a scikit-learn estimator.
    assert clone(calibrated).fit(X[700:800], y[700:800]).score(X[1200:], y[1200:]) > 0.8


def test_with_temperatures_composes_and_validates(digits):
    cascade, X, _ = digits
    once = with_temperatures(cascade, [2.0, 1.5])
    twice = with_temperatures(once, [3.0, 2.0])
    assert [s.temperature for s in twice.stages_] == [6.0, 3.0]
    direct = with_temperatures(cascade, [6.0, 3.0])
    np.testing.assert_allclose(twice.predict_proba(X[1200:]), direct.predict_proba(X[1200:]))
    assert twice.stages_[0].cost_per_sample is None
    with pytest.raises(PolicyError, match="2 stages"):
        with_temperatures(cascade, [1.0])
    with pytest.raises(NotFittedError):
        with_temperatures(CascadeClassifier([("nb", GaussianNB())]), [1.0])
    assert "temperature=2" in repr(once.stages_[0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -0.5])
def test_fit_temperature_rejects_nan_infinite_or_negative_probabilities(bad):
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    proba[1, 0] = bad
    with pytest.raises(PolicyError, match="first at row 1"):
        fit_temperature(proba, [0, 1, 0], classes=[0, 1])


def test_fit_temperature_rejects_non_finite_logits():
    logits = np.array([[2.0, -1.0], [np.nan, 1.0], [0.5, 0.1]])
    with pytest.raises(PolicyError, match=r"NaN.*logits.*first at row 1"):
        fit_temperature(logits, [0, 1, 0], classes=[0, 1], from_logits=True)
    logits[1, 0] = -np.inf  # would give a NaN temperature
    with pytest.raises(PolicyError, match="first at row 1"):
        fit_temperature(logits, [0, 1, 0], classes=[0, 1], from_logits=True)
