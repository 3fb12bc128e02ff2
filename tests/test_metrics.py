import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    matthews_corrcoef,
    precision_recall_fscore_support,
)
from sklearn.naive_bayes import GaussianNB

from cascademl import CascadeClassifier, PolicyError
from cascademl.metrics import (
    McNemarTest,
    classification_metrics,
    evaluate_cascade,
    mcnemar_test,
    routing_summary,
)
from cascademl.tuning import stage_probabilities

LABELS = np.array(["ALL", "AML", "CLL", "CML"])


@settings(max_examples=40, deadline=None)
@given(data=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=2, max_size=80))
def test_metrics_match_sklearn(data):
    y_true = LABELS[[t for t, _ in data]]
    y_pred = LABELS[[p for _, p in data]]
    m = classification_metrics(y_true, y_pred, classes=LABELS, n_bootstrap=0)
    assert m.accuracy == pytest.approx(accuracy_score(y_true, y_pred))
    assert m.error_rate == pytest.approx(1 - accuracy_score(y_true, y_pred))
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=LABELS, zero_division=0.0)
    np.testing.assert_allclose(m.precision, p, atol=1e-6)
    np.testing.assert_allclose(m.recall, r, atol=1e-6)
    np.testing.assert_allclose(m.f1, f, atol=1e-6)
    assert m.macro_f1 == pytest.approx(
        f1_score(y_true, y_pred, average="macro", zero_division=0.0), abs=1e-6
    )
    np.testing.assert_array_equal(
        m.confusion_matrix, confusion_matrix(y_true, y_pred, labels=LABELS)
    )
    if len(set(y_true) | set(y_pred)) > 1:  # sklearn warns on a single label
        assert m.mcc == pytest.approx(matthews_corrcoef(y_true, y_pred), abs=1e-12)
        assert m.kappa == pytest.approx(cohen_kappa_score(y_true, y_pred), abs=1e-12)


def test_metrics_are_float64_python_floats():
    # 208 of 225 right: float32 arithmetic reports 0.9244444370269775.
    y = np.array([0] * 100 + [1] * 125)
    pred = y.copy()
    pred[:17] = 1
    m = classification_metrics(y, pred, classes=[0, 1], n_bootstrap=50)
    assert m.accuracy == 208 / 225
    assert m.error_rate == 1 - 208 / 225
    assert m.mcc == pytest.approx(matthews_corrcoef(y, pred), abs=1e-15)
    assert m.kappa == pytest.approx(cohen_kappa_score(y, pred), abs=1e-15)
    for name in ("accuracy", "error_rate", "macro_precision", "macro_recall", "macro_f1"):
        assert type(getattr(m, name)) is float
        low, high = m.intervals[name]
        assert type(low) is float
        assert type(high) is float
    for name in ("mcc", "kappa"):
        assert type(getattr(m, name)) is float
    assert m.precision.dtype == np.float64
    assert m.intervals["recall"][0].dtype == np.float64
    assert all(type(v) in {int, float, tuple} for v in m.as_dict().values())


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(0, 1), st.integers(0, 1)), min_size=1, max_size=12),
    k=st.sampled_from([2, 3]),
)
def test_metrics_follow_torchmetrics_definitions(data, k):
    # Including the degenerate cases: one class only, no correct label, MCC's 2-class cases.
    from torchmetrics.functional.classification import (
        multiclass_cohen_kappa,
        multiclass_matthews_corrcoef,
        multiclass_precision,
        multiclass_recall,
    )

    y_true = np.array([t for t, _ in data])
    y_pred = np.array([p for _, p in data])
    m = classification_metrics(y_true, y_pred, classes=list(range(k)), n_bootstrap=0)
    t, p = torch.as_tensor(y_true), torch.as_tensor(y_pred)
    assert m.mcc == pytest.approx(float(multiclass_matthews_corrcoef(p, t, k)), abs=1e-6)
    assert m.kappa == pytest.approx(float(multiclass_cohen_kappa(p, t, k)), abs=1e-6, nan_ok=True)
    assert m.macro_precision == pytest.approx(
        float(multiclass_precision(p, t, k, average="macro")), abs=1e-6
    )
    np.testing.assert_allclose(
        m.recall, multiclass_recall(p, t, k, average=None).double().numpy(), atol=1e-6
    )


def _seeded_case():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, 300)
    pred = np.where(rng.random(300) < 0.8, y, rng.integers(0, 3, 300))
    return y, pred


def test_bootstrap_accuracy_interval_matches_scipy_percentile_bootstrap():
    y, pred = _seeded_case()
    m = classification_metrics(y, pred, classes=[0, 1, 2], n_bootstrap=20_000, random_state=0)
    reference = stats.bootstrap(
        ((y == pred).astype(float),),
        np.mean,
        n_resamples=20_000,
        method="percentile",
        random_state=np.random.default_rng(0),
    ).confidence_interval
    # Monte Carlo error of a 2.5% quantile over 20,000 resamples is about 0.0005 here; the
    # accuracy moves in steps of 1/300.
    assert m.intervals["accuracy"][0] == pytest.approx(reference.low, abs=0.005)
    assert m.intervals["accuracy"][1] == pytest.approx(reference.high, abs=0.005)


def test_bootstrap_intervals_match_resampling_the_samples():
    # The reference resamples the samples themselves and scores each resample (MCC with
    # scikit-learn); the library draws the confusion cells at once. Same distribution.
    y, pred = _seeded_case()
    m = classification_metrics(y, pred, classes=[0, 1, 2], n_bootstrap=4000, random_state=0)
    rng = np.random.default_rng(1)
    draws = []
    for _ in range(600):
        idx = rng.integers(0, y.size, y.size)
        t, p = y[idx], pred[idx]
        recall = np.bincount(t[t == p], minlength=3) / np.bincount(t, minlength=3)
        draws.append((matthews_corrcoef(t, p), *recall))
    low, high = np.quantile(np.array(draws), [0.025, 0.975], axis=0)
    # Intervals about 0.1 wide; the Monte Carlo error of a bound is about 0.004 here.
    assert m.intervals["mcc"] == pytest.approx((low[0], high[0]), abs=0.015)
    np.testing.assert_allclose(m.intervals["recall"][0], low[1:], atol=0.02)
    np.testing.assert_allclose(m.intervals["recall"][1], high[1:], atol=0.02)


def test_bootstrap_gives_per_class_intervals_around_the_estimate():
    # Speed (all resamples at once) is measured by benchmarks/bootstrap_speed.py, not here.
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 2000)
    pred = np.where(rng.random(2000) < 0.8, y, rng.integers(0, 10, 2000))
    m = classification_metrics(y, pred, classes=np.arange(10), n_bootstrap=1000)
    low, high = m.intervals["f1"]
    assert low.shape == high.shape == (10,)
    assert np.all(low < m.f1)
    assert np.all(m.f1 < high)


def test_bootstrap_intervals_are_seeded_and_sensible():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    pred = np.where(rng.random(300) < 0.8, y, rng.integers(0, 3, 300))
    a = classification_metrics(y, pred, classes=[0, 1, 2], n_bootstrap=200, random_state=1)
    b = classification_metrics(y, pred, classes=[0, 1, 2], n_bootstrap=200, random_state=1)
    c = classification_metrics(y, pred, classes=[0, 1, 2], n_bootstrap=200, random_state=2)
    assert a.intervals["accuracy"] == b.intervals["accuracy"]
    assert a.intervals["accuracy"] != c.intervals["accuracy"]
    for name in ("accuracy", "mcc", "kappa", "macro_f1", "error_rate"):
        low, high = a.intervals[name]
        assert low <= getattr(a, name) <= high
        assert high - low < 0.2
    low, high = a.intervals["f1"]
    assert low.shape == (3,)
    assert np.all(low <= a.f1)
    assert np.all(a.f1 <= high)
    # A binomial normal approximation of the accuracy interval.
    half = 1.96 * np.sqrt(a.accuracy * (1 - a.accuracy) / 300)
    assert a.intervals["accuracy"][0] == pytest.approx(a.accuracy - half, abs=0.02)
    assert set(a.as_dict()) >= {"accuracy", "accuracy_ci", "mcc", "kappa_ci", "n_samples"}


def test_metric_input_errors():
    with pytest.raises(PolicyError, match="same length"):
        classification_metrics([0, 1], [0], classes=[0, 1])
    with pytest.raises(PolicyError, match=r"y_true holds labels \[5\] that are not in classes"):
        classification_metrics([0, 5], [0, 1], classes=[0, 1])
    with pytest.raises(PolicyError, match=r"y_pred holds labels \[7\]"):
        classification_metrics([0, 1], [7, 1], classes=[0, 1])
    with pytest.raises(PolicyError, match=r"pred_b holds labels \['c'\]"):
        mcnemar_test(["a", "b"], ["a", "b"], ["a", "c"], classes=["a", "b"])
    with pytest.raises(PolicyError, match="n_bootstrap"):
        classification_metrics([0, 1], [0, 1], classes=[0, 1], n_bootstrap=-1)
    with pytest.raises(PolicyError, match="confidence_level"):
        classification_metrics([0, 1], [0, 1], classes=[0, 1], confidence_level=1.0)


def test_mcnemar_exact_and_chi2_against_scipy():
    y = np.zeros(100, dtype=int)
    a = np.r_[np.zeros(70, int), np.ones(30, int)]  # right on 0..69
    b = np.r_[np.ones(10, int), np.zeros(75, int), np.ones(15, int)]  # right on 10..84
    # a right, b wrong: 0..9 (10); a wrong, b right: 70..84 (15)
    exact = mcnemar_test(y, a, b, classes=[0, 1], method="exact")
    assert (exact.only_a_correct, exact.only_b_correct) == (10, 15)
    assert exact.p_value == pytest.approx(stats.binomtest(10, 25, 0.5).pvalue)
    chi2 = mcnemar_test(y, a, b, classes=[0, 1], method="chi2")
    assert chi2.statistic == pytest.approx((abs(10 - 15) - 1) ** 2 / 25)
    assert chi2.p_value == pytest.approx(stats.chi2.sf(chi2.statistic, 1))
    assert mcnemar_test(y, a, b, classes=[0, 1]).method == "chi2"  # 25 discordant pairs
    swapped = mcnemar_test(y, b, a, classes=[0, 1], method="exact")
    assert swapped.p_value == pytest.approx(exact.p_value)
    same = mcnemar_test(y, a, a, classes=[0, 1])
    assert same.p_value == 1.0
    with pytest.raises(PolicyError, match="method"):
        mcnemar_test(y, a, b, classes=[0, 1], method="fisher")


def test_mcnemar_metric_class_accumulates_batches():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    a = np.where(rng.random(200) < 0.7, y, 0)
    b = np.where(rng.random(200) < 0.8, y, 1)
    metric = McNemarTest(method="chi2")
    for chunk in np.array_split(np.arange(200), 4):
        metric.update(
            torch.as_tensor(a[chunk]), torch.as_tensor(b[chunk]), torch.as_tensor(y[chunk])
        )
    statistic, p_value = metric.compute().tolist()
    reference = mcnemar_test(y, a, b, classes=[0, 1, 2], method="chi2")
    assert statistic == pytest.approx(reference.statistic)
    assert p_value == pytest.approx(reference.p_value)


def test_evaluate_cascade_and_routing_summary():
    X, y = load_iris(return_X_y=True)
    labels = np.array(["setosa", "versicolor", "virginica"])[y]
    cascade = CascadeClassifier(
        [("nb", GaussianNB()), ("lr", LogisticRegression(max_iter=500))]
    ).fit(X[::2], labels[::2])
    report = evaluate_cascade(cascade, X[1::2], labels[1::2], n_bootstrap=50)
    result = cascade.route(X[1::2])
    assert report.cascade.accuracy == pytest.approx(accuracy_score(labels[1::2], result.labels))
    proba = stage_probabilities(cascade, X[1::2])
    for s, name in enumerate(["nb", "lr"]):
        alone = cascade.classes_[proba[s].argmax(1)]
        assert report.stages[name].accuracy == pytest.approx(accuracy_score(labels[1::2], alone))
        assert report.mcnemar[name].p_value <= 1.0
    summary = report.routing
    assert summary.exit_rate.sum() == pytest.approx(1.0)
    assert summary.deferral_rate[-1] == 0.0
    assert summary.reach_rate[0] == 1.0
    assert summary.mean_cost == pytest.approx(result.mean_cost)
    assert summary.exit_counts.tolist() == result.exit_counts.tolist()
    assert summary.deferral_rate[0] == pytest.approx(1 - summary.exit_rate[0])
    without = evaluate_cascade(cascade, X[1::2], labels[1::2], n_bootstrap=0, compare_stages=False)
    assert without.stages == {}
    assert without.mcnemar == {}
    assert routing_summary(result).calls_saved == pytest.approx(result.calls_saved)


def test_n_bootstrap_takes_numpy_integers():
    y = np.array([0, 1, 1, 0, 1, 0, 0, 1] * 10)
    pred = np.roll(y, 1)
    numpy_int = classification_metrics(
        y, pred, classes=[0, 1], n_bootstrap=np.int64(40), random_state=0
    )
    plain = classification_metrics(y, pred, classes=[0, 1], n_bootstrap=40, random_state=0)
    assert type(numpy_int.n_bootstrap) is int
    assert numpy_int.intervals["accuracy"] == plain.intervals["accuracy"]
    with pytest.raises(PolicyError, match="n_bootstrap"):
        classification_metrics(y, pred, classes=[0, 1], n_bootstrap=np.True_)
