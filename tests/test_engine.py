"""One routing engine for every input: rule from current params, bounded memory, reports."""

import math
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.naive_bayes import GaussianNB

from cascademl import (
    CascadeClassifier,
    ConfidencePolicy,
    NotFittedError,
    PolicyError,
    RoutingRule,
)
from cascademl.cost import CostReport, cost_ratio, mean_cost_per_sample
from strategies import TableStage, sample_ids


class CountingNB(GaussianNB):
    """GaussianNB that counts how often any instance is fitted."""

    fits = 0

    def fit(self, X, y, sample_weight=None):
        type(self).fits += 1
        return super().fit(X, y, sample_weight=sample_weight)


@pytest.fixture
def iris():
    return load_iris(return_X_y=True)


def _table_cascade(n_samples=40, n_classes=3, n_stages=3, seed=0, **params):
    rng = np.random.default_rng(seed)
    tables = rng.dirichlet(np.ones(n_classes), size=(n_stages, n_samples))
    classes = np.arange(n_classes)
    stages = [(f"s{i}", TableStage(t, classes)) for i, t in enumerate(tables)]
    cascade = CascadeClassifier(stages, **params)
    ids = sample_ids(n_samples)
    return cascade.fit(ids, classes[np.arange(n_samples) % n_classes]), ids, tables


# --------------------------------------------------------------------------- routing rule
def test_routing_rule_needs_a_fitted_cascade(iris):
    cascade = CascadeClassifier([("a", GaussianNB()), ("b", GaussianNB())])
    with pytest.raises(NotFittedError):
        _ = cascade.routing_rule_
    assert not hasattr(cascade, "routing_rule_")


def test_set_params_after_fit_takes_effect_without_refitting(iris):
    X, y = iris
    CountingNB.fits = 0
    cascade = CascadeClassifier(
        [("a", CountingNB()), ("b", CountingNB(var_smoothing=1e-3))],
        policy=ConfidencePolicy(thresholds=0.0),
    ).fit(X, y)
    assert CountingNB.fits == 2
    assert cascade.route(X).exit_counts.tolist() == [len(X), 0]
    proba_a = cascade.stages_[0].predict_proba(X)
    proba_b = cascade.stages_[1].predict_proba(X)

    cascade.set_params(policy=ConfidencePolicy(thresholds=1.5))  # nobody stops at "a"
    rule = cascade.routing_rule_
    assert rule.thresholds == (1.5, math.inf)
    assert cascade.route(X).exit_counts.tolist() == [0, len(X)]

    cascade.set_params(combine="last")
    assert cascade.routing_rule_.combine == "last"
    np.testing.assert_allclose(cascade.predict_proba(X), proba_b)

    cascade.set_params(combine="vote", escalation_weight=1.0)
    assert cascade.routing_rule_.escalation_weights == (1.0, 1.0)
    np.testing.assert_allclose(cascade.predict_proba(X), (proba_a + proba_b) / 2)

    cascade.set_params(escalation_weight=0.0)
    np.testing.assert_allclose(cascade.predict_proba(X), proba_b)
    assert CountingNB.fits == 2  # no stage was refit


def test_invalid_params_set_after_fit_raise_at_predict(iris):
    X, y = iris
    cascade = CascadeClassifier([("a", GaussianNB()), ("b", GaussianNB())]).fit(X, y)
    cascade.set_params(combine="median")
    with pytest.raises(PolicyError, match="combine"):
        cascade.predict(X)


# --------------------------------------------------------------------------- one engine
def test_in_memory_route_carries_a_cost_report_for_sklearn_stages(iris):
    X, y = iris
    cascade = CascadeClassifier(
        [("a", GaussianNB()), ("b", GaussianNB())], policy=ConfidencePolicy(thresholds=0.99)
    ).fit(X, y)
    result = cascade.route(X)
    report = result.cost_report
    assert isinstance(report, CostReport)
    assert report.stage_calls == tuple(int(c) for c in result.stage_calls)
    assert report.n_samples == len(X)
    assert all(math.isnan(f) for f in report.flops_per_sample)  # not a torch stage
    assert report.latency_per_sample[0] > 0
    assert report.wall_time is not None
    assert report.wall_time > 0


def test_batched_in_memory_route_runs_stages_on_full_batches():
    cascade, ids, _ = _table_cascade(n_samples=50, policy=ConfidencePolicy(thresholds=0.6))
    whole = cascade.route(ids)
    for stage in cascade.stages_:
        stage.calls.clear()
    batched = cascade.route(ids, batch_size=8)
    np.testing.assert_array_equal(batched.exit_stage, whole.exit_stage)
    np.testing.assert_array_equal(batched.proba, whole.proba)
    for s, stage in enumerate(cascade.stages_):
        assert sum(stage.calls) == whole.stage_calls[s]
        assert all(size == 8 for size in stage.calls[:-1])  # escalated samples are gathered
    assert batched.cost_report.batch_sizes == (8, 8, 8)


def test_pure_sklearn_cascade_never_imports_torch():
    code = textwrap.dedent(
        """
        import sys
        import pandas as pd
        from sklearn.datasets import load_iris
        from sklearn.naive_bayes import GaussianNB
        import cascademl

        X, y = load_iris(return_X_y=True)
        cascade = cascademl.CascadeClassifier([("a", GaussianNB()), ("b", GaussianNB())])
        cascade.fit(X, y)
        cascade.predict(X), cascade.predict_proba(X.tolist()), cascade.score(X, y)
        result = cascade.route(X, batch_size=16)
        repr(result), result.to_dict(), str(result.cost_report)
        print("torch" in sys.modules)
        """
    )
    out = subprocess.run(  # noqa: S603 - this interpreter, a fixed script
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == "False"


# --------------------------------------------------------------------------- keep and memory
def test_keep_none_drops_stage_probabilities_only():
    cascade, ids, _ = _table_cascade(policy=ConfidencePolicy(thresholds=0.5))
    full = cascade.route(ids)
    lean = cascade.route(ids, keep="none")
    assert full.stage_proba is not None
    assert lean.stage_proba is None
    np.testing.assert_array_equal(lean.proba, full.proba)
    np.testing.assert_array_equal(lean.stage_confidence, full.stage_confidence)
    np.testing.assert_array_equal(lean.visited, full.visited)
    visited = full.visited[:, 0]
    assert sorted(full.visited_proba(0)) == [f"s{s}" for s in np.flatnonzero(visited)]
    with pytest.raises(PolicyError, match="keep='all'"):
        lean.visited_proba(0)
    with pytest.raises(PolicyError, match="keep must be one of"):
        cascade.route(ids, keep="some")
    np.testing.assert_array_equal(cascade.predict_proba(ids), full.proba)
    np.testing.assert_array_equal(cascade.predict(ids), full.labels)


def _peak_bytes(call):
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_predict_memory_is_bounded_by_the_batch_not_the_stages():
    n, k, batch = 2000, 200, 100
    cascade, ids, _ = _table_cascade(
        n_samples=n, n_classes=k, policy=ConfidencePolicy(thresholds=1.5), batch_size=batch
    )
    one_batch = batch * k * 8  # one stage's float64 probabilities for one batch
    predict_peak = _peak_bytes(lambda: cascade.predict(ids))
    proba_peak = _peak_bytes(lambda: cascade.predict_proba(ids))
    assert cascade.route(ids, keep="none").visited.all()  # every stage saw every sample
    # A few batches' worth of temporaries, not 3 stages x 2,000 samples (30 batches).
    assert predict_peak < 10 * one_batch
    assert proba_peak < n * k * 8 + 10 * one_batch  # the answer itself, plus a few batches


# --------------------------------------------------------------------------- reports
def test_result_repr_is_a_short_summary():
    cascade, ids, _ = _table_cascade(n_samples=500, policy=ConfidencePolicy(thresholds=0.5))
    result = cascade.route(ids)
    text = repr(result)
    assert len(text.splitlines()) <= 5
    assert "array" not in text
    assert "n_samples=500" in text
    for name, count in zip(result.stage_names, result.exit_counts, strict=True):
        assert f"{name} {count}" in text
    assert len(repr(result.cost_report).splitlines()) <= 4


def test_result_to_dict_holds_python_values():
    cascade, ids, _ = _table_cascade(policy=ConfidencePolicy(thresholds=0.5))
    result = cascade.route(ids)
    summary = result.to_dict()
    assert summary["exit_counts"] == result.exit_counts.tolist()
    assert type(summary["mean_cost"]) is float
    assert summary["mean_cost"] == result.mean_cost
    assert all(type(c) is int for c in summary["stage_calls"])
    assert all(type(c) is int for c in summary["classes"])
    report = summary["cost_report"]
    assert report["stage_calls"] == summary["stage_calls"]
    assert type(report["mean_latency"]) is float


def test_result_and_report_to_frame():
    pd = pytest.importorskip("pandas")
    cascade, ids, _ = _table_cascade(policy=ConfidencePolicy(thresholds=0.5))
    result = cascade.route(ids)
    frame = result.to_frame(proba=True)
    assert isinstance(frame, pd.DataFrame)
    assert len(frame) == result.n_samples
    assert frame["exit_stage"].tolist() == [result.stage_names[s] for s in result.exit_stage]
    exit_conf = result.stage_confidence[result.exit_stage, np.arange(result.n_samples)]
    np.testing.assert_array_equal(frame["confidence"], exit_conf)
    np.testing.assert_array_equal(frame["proba[1]"], result.proba[:, 1])
    stages = result.cost_report.to_frame()
    assert stages.index.tolist() == list(result.stage_names)
    assert stages["samples"].tolist() == result.stage_calls.tolist()


def test_to_frame_without_pandas_says_how_to_install_it(monkeypatch):
    cascade, ids, _ = _table_cascade()
    result = cascade.route(ids)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        result.to_frame()
    with pytest.raises(ImportError, match="pip install pandas"):
        result.cost_report.to_frame()


# --------------------------------------------------------------------------- cost model
def test_one_cost_model_for_results_and_reports():
    cascade, ids, _ = _table_cascade(policy=ConfidencePolicy(thresholds=0.5))
    result = cascade.route(ids)
    costs = [1.0, 3.0, 10.0]
    report = CostReport(
        result.stage_names, tuple(costs), tuple(costs), tuple(result.stage_calls), len(ids)
    )
    expected = mean_cost_per_sample(costs, result.stage_calls, len(ids))
    assert report.mean_flops == expected
    assert report.flops_ratio_all == cost_ratio(expected, 14.0)
    assert result.mean_cost == mean_cost_per_sample([1.0] * 3, result.stage_calls, len(ids))
    assert math.isnan(mean_cost_per_sample([math.nan, 1.0], [0, 5], 0))
    assert mean_cost_per_sample([math.nan, 1.0], [0, 5], 5) == 1.0  # unused stage: no cost
    assert math.isnan(cost_ratio(1.0, 0.0))


def test_routing_rule_reaches_the_engine_unchanged():
    cascade, ids, tables = _table_cascade(
        policy=ConfidencePolicy("margin", thresholds=0.3), combine="mean"
    )
    rule = cascade.routing_rule_
    assert rule == RoutingRule("margin", (0.3, 0.3, math.inf), "mean", (0.5, 0.5, 0.5))
    result = cascade.route(ids)
    margin = np.sort(tables[0], axis=1)
    exits_first = (margin[:, -1] - margin[:, -2]) >= 0.3
    np.testing.assert_array_equal(result.exit_stage == 0, exits_first)
