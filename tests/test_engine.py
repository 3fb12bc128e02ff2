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


# --------------------------------------------------------------------------- engine internals
# The engine's own contract, checked through `_engine.run` with stages written here: what a
# stage receives for each batch, and every field of the outcome and its cost report.
from cascademl import _engine  # noqa: E402 - the tests below drive the engine directly


class _Recorder(TableStage):
    """A table stage that also keeps what it receives and can advance a clock per row."""

    def __init__(self, table, *, clock=None, seconds_per_row=0.0, **attributes):
        super().__init__(np.asarray(table, dtype=np.float64), np.array(["a", "b"]))
        self.received: list = []
        self.clock = clock
        self.seconds_per_row = seconds_per_row
        for name, value in attributes.items():
            setattr(self, name, value)

    def predict_proba(self, X):
        self.received.append(X)
        if self.clock is not None:
            self.clock[0] += self.seconds_per_row * len(X)
        return super().predict_proba(np.asarray(X).reshape(len(X), -1))  # row id: first value


class _FrameLike:
    """The least a frame needs for the engine: ``iloc`` and ``len``; no row ``__getitem__``."""

    def __init__(self, values):
        self.values = np.asarray(values)
        self.keys: list = []
        parent = self

        class _ILoc:
            def __getitem__(self, key):
                parent.keys.append(key)
                return _FrameLike(parent.values[key])

        self.iloc = _ILoc()

    def __len__(self):
        return len(self.values)

    def __array__(self, dtype=None, copy=None):
        return self.values if dtype is None else self.values.astype(dtype)

    def __getitem__(self, key):
        msg = f"a frame selects columns with [], not rows: {key!r}"
        raise TypeError(msg)


_TABLE = np.array([[0.9, 0.1], [0.2, 0.8], [0.55, 0.45], [0.3, 0.7], [0.6, 0.4]])


def _run(
    stages, X, *, thresholds=(0.65, math.inf), batch_size=None, want="result", source=None, **rule
):
    return _engine.run(
        stages,
        _engine.MemorySource(X, len(X)) if source is None else source,
        rule=RoutingRule(measure="max_proba", thresholds=tuple(thresholds), combine="last", **rule),
        stage_names=[f"s{s}" for s in range(len(stages))],
        classes=np.array(["a", "b"]),
        batch_size=batch_size,
        want=want,
    )


def test_memory_source_walks_its_rows_in_order_and_has_at_least_one_row_per_batch():
    assert _engine.MemorySource(np.zeros((0, 1)), 0).default_batch_size == 1
    assert _engine.MemorySource(np.zeros((1, 1)), 1).default_batch_size == 1
    assert _engine.MemorySource(np.zeros((7, 1)), 7).default_batch_size == 7
    assert list(_engine.MemorySource(np.zeros((0, 1)), 0).chunks(4)) == []
    assert [n for n, _ in _engine.MemorySource(np.zeros((7, 1)), 7).chunks(3)] == [3, 3, 1]


def test_one_row_routes_as_one_batch_of_one():
    first, last = _Recorder(_TABLE), _Recorder(_TABLE)
    outcome = _run([first, last], np.array([[2]]))
    assert outcome.result.cost_report.batch_sizes == (1, 1)
    assert [len(x) for x in first.received] == [1]
    assert outcome.labels.tolist() == ["a"]


def test_an_empty_input_routes_to_empty_outputs():
    stage = _Recorder(_TABLE)
    outcome = _run([stage, _Recorder(_TABLE)], np.zeros((0, 1), dtype=int))
    assert stage.received == []
    assert outcome.labels.shape == (0,)
    assert outcome.proba.shape == (0, 2)
    assert outcome.result.exit_stage.shape == (0,)


def test_numpy_batches_are_views_of_the_input_when_their_rows_are_consecutive():
    X = np.arange(5).reshape(-1, 1)
    first, last = _Recorder(_TABLE), _Recorder(_TABLE)
    _run([first, last], X, batch_size=2)
    assert [x[:, 0].tolist() for x in first.received] == [[0, 1], [2, 3], [4]]
    assert all(np.shares_memory(x, X) for x in first.received)
    # rows 2 and 4 escalate (top probabilities 0.55 and 0.6 are below 0.65): the second
    # stage receives them as one batch of rows that are not consecutive, a copy
    assert [x[:, 0].tolist() for x in last.received] == [[2, 4]]
    assert not np.shares_memory(last.received[0], X)


def test_lists_are_sliced_and_frames_are_read_with_iloc():
    rows = [[0], [1], [2], [3], [4]]
    first, last = _Recorder(_TABLE), _Recorder(_TABLE)
    _run([first, last], rows, batch_size=2)
    assert all(isinstance(x, list) for x in first.received + last.received)
    assert first.received[1] == [[2], [3]]

    frame = _FrameLike(rows)
    first, last = _Recorder(_TABLE), _Recorder(_TABLE)
    outcome = _run([first, last], frame, batch_size=2)
    assert outcome.labels.tolist() == ["a", "b", "a", "b", "a"]
    # consecutive rows arrive as one slice of iloc (a view for pandas), the rest by index
    assert frame.keys[:2] == [slice(0, 2), slice(2, 4)]
    assert any(isinstance(k, np.ndarray) for k in frame.keys)


def test_flops_are_counted_for_stages_that_count_them_and_nan_for_the_others():
    counted = _Recorder(_TABLE, flops_per_sample=lambda example: 1000.0 * len(example))
    outcome = _run([_Recorder(_TABLE), counted], np.arange(5).reshape(-1, 1))
    flops = outcome.result.cost_report.flops_per_sample
    assert math.isnan(flops[0])
    assert flops[1] == 1000.0  # measured on one example row


def test_latency_is_the_stage_time_per_sample_it_ran_on(monkeypatch):
    clock = [100.0]  # a clock that does not start at zero: times are differences
    monkeypatch.setattr(_engine.time, "perf_counter", lambda: clock[0])
    first = _Recorder(_TABLE, clock=clock, seconds_per_row=2.0)
    last = _Recorder(_TABLE, clock=clock, seconds_per_row=3.0)
    never = _Recorder(_TABLE, clock=clock, seconds_per_row=5.0)
    thresholds = (0.65, 0, math.inf)
    X = np.arange(5).reshape(-1, 1)
    outcome = _run([first, last, never], X, thresholds=thresholds, batch_size=2)
    assert [len(x) for x in first.received] == [2, 2, 1]  # every batch's time is counted
    report = outcome.result.cost_report
    assert report.stage_calls == (5, 2, 0)
    assert report.latency_per_sample[:2] == (2.0, 3.0)
    assert math.isnan(report.latency_per_sample[2])
    assert report.wall_time == 2.0 * 5 + 3.0 * 2


def test_outcome_reports_devices_costs_and_the_cost_unit():
    gpu = _Recorder(_TABLE, device_="cuda:1", cost_per_sample=7)
    outcome = _run([_Recorder(_TABLE), gpu], np.arange(5).reshape(-1, 1))
    result = outcome.result
    assert result.cost_report.devices == ("cpu", "cuda:1")
    assert result.stage_cost.dtype == np.float64
    assert result.stage_cost.tolist() == [1.0, 7.0]
    assert result.cost_unit == "stage calls"
    np.testing.assert_array_equal(outcome.labels, result.labels)
    assert outcome.labels.tolist() == ["a", "b", "a", "b", "a"]


@pytest.mark.parametrize("want", ["labels", "proba"])
def test_outcome_holds_only_what_was_asked_for(want):
    outcome = _run([_Recorder(_TABLE), _Recorder(_TABLE)], np.arange(5).reshape(-1, 1), want=want)
    assert outcome.result is None
    assert outcome.labels.tolist() == ["a", "b", "a", "b", "a"]
    if want == "labels":
        assert outcome.proba is None
    else:
        np.testing.assert_array_equal(outcome.proba, _TABLE)


def test_stage_confidence_is_kept_for_the_stages_a_sample_visited():
    result = _run([_Recorder(_TABLE), _Recorder(_TABLE)], np.arange(5).reshape(-1, 1)).result
    top = _TABLE.max(axis=1)
    np.testing.assert_array_equal(result.stage_confidence[0], top)
    np.testing.assert_array_equal(result.stage_confidence[1], [np.nan, np.nan, 0.55, np.nan, 0.6])


def test_run_gives_a_full_result_and_no_progress_bar_by_default(capsys):
    outcome = _engine.run(
        [_Recorder(_TABLE), _Recorder(_TABLE)],
        _engine.MemorySource(np.arange(5).reshape(-1, 1), 5),
        rule=RoutingRule(measure="max_proba", thresholds=(0.65, math.inf), combine="last"),
        stage_names=["s0", "s1"],
        classes=np.array(["a", "b"]),
    )
    assert outcome.result is not None
    assert outcome.result.exit_stage.tolist() == [0, 0, 1, 0, 1]
    assert outcome.result.cost_report.batch_sizes == (5, 5)  # all rows at once in memory
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out == ""


def test_invalid_batch_sizes_are_named():
    X = np.arange(5).reshape(-1, 1)
    with pytest.raises(PolicyError, match=r"^batch_size must be a positive integer, got 0$"):
        _run([_Recorder(_TABLE), _Recorder(_TABLE)], X, batch_size=0)
    stages = [_Recorder(_TABLE), _Recorder(_TABLE, batch_size=-2)]
    with pytest.raises(
        PolicyError, match=r"^batch_size of stage 's1' must be a positive integer, got -2$"
    ):
        _run(stages, X)


def test_an_engine_keeps_everything_by_default():
    stages = [_Recorder(_TABLE), _Recorder(_TABLE)]
    engine = _engine.Engine(
        stages,
        _engine.MemorySource(np.arange(5).reshape(-1, 1), 5),
        names=("s0", "s1"),
        sizes=[5, 5],
        columns=[None, None],
        rule=RoutingRule(measure="max_proba", thresholds=(0.65, math.inf), combine="last"),
        n_classes=2,
    )
    engine.feed(5, None)
    engine.finish()
    result = engine.outcome(np.array(["a", "b"]), wall_time=1.0).result
    assert result is not None
    np.testing.assert_array_equal(result.stage_proba[0], _TABLE)  # keep="all"
    np.testing.assert_array_equal(result.stage_proba[1, [2, 4]], _TABLE[[2, 4]])


class _GappySource(_engine.MemorySource):
    """An in-memory source whose first chunk is empty, as a stream's first batch can be."""

    def chunks(self, size):
        yield 0, None
        yield from super().chunks(size)


@pytest.mark.parametrize(
    ("source_type", "batch_size"), [(_engine.MemorySource, 1), (_GappySource, 3)]
)
def test_flops_are_counted_once_on_the_first_row(source_type, batch_size):
    examples = []

    def count(example):
        examples.append(len(example))
        return 10.0

    X = np.arange(5).reshape(-1, 1)
    stages = [_Recorder(_TABLE, flops_per_sample=count), _Recorder(_TABLE)]
    outcome = _run(stages, X, batch_size=batch_size, source=source_type(X, 5))
    assert examples == [1]
    assert outcome.result.cost_report.flops_per_sample[0] == 10.0


def test_flops_of_a_stream_are_counted_on_its_first_row():
    torch = pytest.importorskip("torch")
    from cascademl import inference

    X = (torch.arange(10, dtype=torch.float64) // 2).reshape(5, 1, 1, 2)  # row i: [[[i, i]]]
    counted = _Recorder(_TABLE, flops_per_sample=lambda example: 100.0 * example.numel())
    stream = inference._TensorStream(X)  # the torch source of the engine
    outcome = _run([counted, _Recorder(_TABLE)], X, batch_size=3, source=stream)
    assert outcome.result.cost_report.flops_per_sample[0] == 200.0  # one row of two values
    assert outcome.labels.tolist() == ["a", "b", "a", "b", "a"]
