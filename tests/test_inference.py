"""The torch engine: device resolution, batching, and streaming equal to a naive reference."""

import functools
import logging
import math
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from cascademl import (
    CascadeClassifier,
    ConfidencePolicy,
    DeviceUnavailableError,
    DeviceWarning,
    PolicyError,
    RoutingRule,
    StageInterfaceError,
    _engine,
    inference,
)
from cascademl._routing import check_stage_proba, confidence_scores
from cascademl.cascade import _column_map
from cascademl.torch_stage import TorchStage
from strategies import CLASS_LABELS, proba_tables

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODEL_PROPERTY = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TEST_DEVICE = os.environ.get("CASCADEML_TEST_DEVICE", "cuda")
INPUT_KINDS = ("tensor", "numpy", "dataset", "dataloader", "iterator", "iterable_dataset")


# --------------------------------------------------------------------------- helpers
class LookupStage:
    """A torch-free stage: sample ``i`` is the image filled with ``i``; its row is ``table[i]``.

    Records the size of every call, so tests can check the batching.
    """

    def __init__(self, table, classes, batch_size):
        self.table = table
        self.classes_ = np.asarray(classes)
        self.batch_size = batch_size
        self.calls = []

    def predict_proba(self, X):
        ids = np.asarray(X)[:, 0, 0, 0].astype(int)
        self.calls.append(ids.size)
        return self.table[ids]


def make_rule(thresholds, *, measure="max_proba", combine="vote", weight=0.5):
    """The routing rule of these thresholds, one per stage."""
    return RoutingRule.from_params(
        ConfidencePolicy(measure, tuple(thresholds)),
        n_stages=len(thresholds),
        combine=combine,
        escalation_weight=weight,
    )


def lookup_images(n):
    return torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1).expand(n, 1, 2, 2).clone()


def _confidence(p, measure):
    """One row's confidence, from the definitions (not the library's functions)."""
    k = len(p)
    top = sorted(p, reverse=True)
    if measure == "max_proba":
        value = top[0]
    elif measure == "margin":
        value = top[0] - (top[1] if k > 1 else 0.0)
    else:  # entropy: 1 - H(p) / log(k), with 0 log 0 = 0
        h = -sum(q * math.log(q) for q in p if q > 0)
        value = 1.0 - h / math.log(k) if k > 1 else 1.0
    return min(max(value, 0.0), 1.0)


def naive_reference(probas, columns, thresholds, *, measure, combine, escalation_weight):
    """Every stage on every sample, then the rule applied afterwards, sample by sample.

    Written from the rule's definition, with none of the library's routing or voting code:
    a sample ends at the first stage whose confidence reaches its threshold (the last stage
    ends the rest); the stage that ends it votes with weight 1, each stage it escalated from
    with its escalation weight ("vote"), 1 ("mean") or 0 ("last"); the final row is the
    weighted sum of the votes, normalised.
    """
    n_stages, n_samples = len(probas), probas[0].shape[0]
    stage_proba = np.stack([p[:, c] for p, c in zip(probas, columns, strict=True)])
    weights = (
        [float(escalation_weight)] * n_stages
        if np.ndim(escalation_weight) == 0
        else [float(w) for w in escalation_weight]
    )
    exit_stage = np.empty(n_samples, dtype=np.intp)
    proba = np.empty((n_samples, stage_proba.shape[2]))
    for i in range(n_samples):
        votes = np.zeros(stage_proba.shape[2])
        for s in range(n_stages):
            row = stage_proba[s, i] / stage_proba[s, i].sum()
            if s == n_stages - 1 or _confidence(row.tolist(), measure) >= thresholds[s]:
                exit_stage[i] = s
                votes += row
                break
            escalating = {"vote": weights[s], "mean": 1.0, "last": 0.0}[combine]
            votes += escalating * row
        proba[i] = votes / votes.sum()
    visited = np.arange(n_stages)[:, None] <= exit_stage[None, :]
    return exit_stage, visited, proba


def as_input(X, kind, loader_batch):
    if kind == "tensor":
        return X
    if kind == "numpy":
        return X.numpy()
    if kind == "dataset":
        return TensorDataset(X, torch.zeros(len(X)))
    if kind == "dataloader":
        return DataLoader(TensorDataset(X), batch_size=loader_batch)
    if kind == "iterable_dataset":
        return _Chunks(X, loader_batch)
    return iter([X[i : i + loader_batch] for i in range(0, len(X), loader_batch)])


class _Chunks(IterableDataset):
    def __init__(self, X, size):
        self.X, self.size = X, size

    def __iter__(self):
        for i in range(len(self.X)):
            yield self.X[i]


def safe_threshold(conf, quantile):
    """A threshold at the requested quantile, moved into a wide gap between confidences.

    Different batch compositions change a model's outputs by ~1e-7; a threshold that sits
    within that distance of a confidence would make the comparison flaky.
    """
    values = np.unique(conf)
    gaps = np.diff(values)
    mids = (values[1:] + values[:-1]) / 2
    wide = mids[gaps > 1e-4]
    if wide.size == 0:
        return 1.5  # nobody stops here
    return float(wide[np.argmin(np.abs(wide - np.quantile(conf, quantile)))])


# --------------------------------------------------------------------------- devices
def test_cpu_always_resolves():
    assert inference.resolve_device("cpu") == torch.device("cpu")
    assert inference.resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_auto_without_gpu_chooses_cpu_and_logs(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(inference, "_mps_available", lambda: False)
    with caplog.at_level(logging.INFO, logger="cascademl.inference"):
        device = inference.resolve_device("auto")
    assert device == torch.device("cpu")
    assert "'cpu'" in caplog.text
    assert "auto" in caplog.text


def test_auto_prefers_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert inference.resolve_device("auto") == torch.device("cuda", 1)


def test_auto_uses_mps_when_no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(inference, "_mps_available", lambda: True)
    assert inference.resolve_device("auto") == torch.device("mps")
    assert inference.available_devices() == ["cpu", "mps"]


def test_cuda_without_gpu_raises_naming_what_exists(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(inference, "_mps_available", lambda: False)
    with pytest.raises(DeviceUnavailableError, match=r"'cuda'.*available: \['cpu'\]"):
        inference.resolve_device("cuda")


def test_cuda_index_past_the_last_gpu_raises(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(inference, "_mps_available", lambda: False)
    assert inference.resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(DeviceUnavailableError, match=r"'cuda:1'.*1 CUDA.*'cuda:0'"):
        inference.resolve_device("cuda:1")


def test_mps_absent_raises(monkeypatch):
    monkeypatch.setattr(inference, "_mps_available", lambda: False)
    with pytest.raises(DeviceUnavailableError, match="'mps'"):
        inference.resolve_device("mps")


@pytest.mark.parametrize("name", ["tpu", "gpu", "", "cuda:x"])
def test_unknown_device_names_raise(name):
    with pytest.raises(DeviceUnavailableError, match="device"):
        inference.resolve_device(name)


def test_device_error_is_a_runtime_error():
    assert issubclass(DeviceUnavailableError, RuntimeError)


# --------------------------------------------------------------------------- tensors
def test_as_tensor_shares_numpy_memory_and_checks_shape():
    array = np.zeros((2, 3, 4, 4), dtype=np.float32)
    tensor = inference.as_tensor(array)
    array[0, 0, 0, 0] = 7
    assert tensor[0, 0, 0, 0] == 7
    with pytest.raises(StageInterfaceError, match=r"shape \(n_samples, channels"):
        inference.as_tensor(np.zeros((2, 3)))
    with pytest.raises(StageInterfaceError, match="list"):
        inference.as_tensor([[1.0]])
    with pytest.raises(StageInterfaceError, match="dtype"):
        inference.as_tensor(np.zeros((1, 1, 1, 1), dtype=object))


def test_iter_batches_covers_every_sample_once():
    X = torch.arange(10.0).reshape(10, 1, 1, 1)
    sizes = [b.shape[0] for b in inference.iter_batches(X, 4)]
    assert sizes == [4, 4, 2]
    with pytest.raises(PolicyError, match="batch_size"):
        list(inference.iter_batches(X, 0))


def test_to_device_turns_float64_into_float32():
    x = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    assert inference.to_device(x, torch.device("cpu")).dtype == torch.float32


def test_autocast_fp16_on_cpu_warns_and_runs_fp32():
    with pytest.warns(DeviceWarning, match="fp16"):
        context = inference.autocast(torch.device("cpu"), "fp16")
    with context:
        assert torch.nn.Linear(2, 2)(torch.zeros(1, 2)).dtype == torch.float32
    with pytest.raises(PolicyError, match="precision"):
        inference.autocast(torch.device("cpu"), "fp8")


def test_autocast_bf16_on_cpu_lowers_precision():
    with inference.autocast(torch.device("cpu"), "bf16"):
        assert torch.nn.Linear(2, 2)(torch.zeros(1, 2)).dtype == torch.bfloat16


def test_is_stream():
    X = torch.zeros(2, 1, 1, 1)
    assert inference.is_stream(TensorDataset(X))
    assert inference.is_stream(DataLoader(TensorDataset(X)))
    assert inference.is_stream(iter([X]))
    assert not inference.is_stream(X)
    assert not inference.is_stream(X.numpy())
    assert not inference.is_stream([X])


# --------------------------------------------------------------------------- streaming
@PROPERTY
@given(
    tables=proba_tables(min_stages=1, max_stages=4),
    data=st.data(),
    measure=st.sampled_from(["max_proba", "margin", "entropy"]),
    combine=st.sampled_from(["vote", "last", "mean"]),
    kind=st.sampled_from(INPUT_KINDS),
)
def test_stream_equals_naive_reference_for_any_batching_and_order(
    tables, data, measure, combine, kind
):
    n_stages, n_samples, n_classes = tables.shape
    # Each stage lists the classes in its own order; the cascade sorts them.
    classes = np.array(CLASS_LABELS[:n_classes])
    orders = [data.draw(st.permutations(range(n_classes))) for _ in range(n_stages)]
    stages = [
        LookupStage(t[:, order], classes[order], data.draw(st.integers(1, 9)))
        for t, order in zip(tables, orders, strict=True)
    ]
    columns = [_column_map(s.classes_, classes) for s in stages]
    thresholds = data.draw(st.lists(st.floats(0, 1.1), min_size=n_stages, max_size=n_stages))
    weight = data.draw(st.floats(0, 1))
    perm = np.asarray(data.draw(st.permutations(range(n_samples))), dtype=np.intp)
    X = lookup_images(n_samples)[perm]
    loader_batch = data.draw(st.integers(1, 12))

    result = inference.stream_route(
        stages,
        as_input(X, kind, loader_batch),
        stage_names=[f"s{i}" for i in range(n_stages)],
        classes=classes,
        columns=columns,
        rule=make_rule(thresholds, measure=measure, combine=combine, weight=weight),
    )

    probas = [
        check_stage_proba(s.table[perm], n_samples=n_samples, n_classes=n_classes, stage_name="s")
        for s in stages
    ]
    exit_stage, visited, proba = naive_reference(
        probas, columns, thresholds, measure=measure, combine=combine, escalation_weight=weight
    )
    np.testing.assert_array_equal(result.exit_stage, exit_stage)
    np.testing.assert_array_equal(result.visited, visited)
    np.testing.assert_allclose(result.proba, proba, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(result.labels, classes[np.argmax(proba, axis=1)])
    # Batched escalation: every call is a full batch except at most one final flush.
    for s, stage in enumerate(stages):
        assert sum(stage.calls) == visited[s].sum()
        assert all(size == stage.batch_size for size in stage.calls[:-1])
        assert all(0 < size <= stage.batch_size for size in stage.calls)
    assert result.cost_report is not None
    assert result.cost_report.stage_calls == tuple(visited.sum(axis=1))


@PROPERTY
@given(tables=proba_tables(min_stages=2, max_stages=4), data=st.data())
def test_cascade_route_streams_datasets_like_in_memory_tensors(tables, data):
    n_stages, n_samples, n_classes = tables.shape
    classes = np.array(CLASS_LABELS[:n_classes])
    stages = [
        (f"s{i}", LookupStage(t, classes, data.draw(st.integers(1, 7))))
        for i, t in enumerate(tables)
    ]
    thresholds = data.draw(st.lists(st.floats(0, 1.1), min_size=n_stages, max_size=n_stages))
    cascade = CascadeClassifier(
        stages, policy=ConfidencePolicy(thresholds=thresholds), escalation_weight=0.3
    )
    X = lookup_images(n_samples)
    cascade.fit(X, classes[np.arange(n_samples) % n_classes])
    in_memory = cascade.route(X)
    streamed = cascade.route(DataLoader(TensorDataset(X), batch_size=data.draw(st.integers(1, 9))))
    np.testing.assert_array_equal(streamed.proba, in_memory.proba)
    np.testing.assert_array_equal(streamed.labels, in_memory.labels)
    np.testing.assert_array_equal(streamed.exit_stage, in_memory.exit_stage)
    np.testing.assert_array_equal(streamed.stage_confidence, in_memory.stage_confidence)
    assert streamed.stage_names == in_memory.stage_names
    # One engine: both carry a cost report, counting the same samples per stage.
    assert in_memory.cost_report is not None
    assert streamed.cost_report is not None
    assert in_memory.cost_report.stage_calls == streamed.cost_report.stage_calls


def test_buffers_stay_bounded_by_the_batch_sizes():
    n_samples, sizes = 2000, [16, 8, 32]
    rng = np.random.default_rng(0)
    tables = rng.dirichlet(np.ones(3), size=(len(sizes), n_samples))
    stages = [LookupStage(t, ["a", "b", "c"], b) for t, b in zip(tables, sizes, strict=True)]
    engine = _engine.Engine(
        stages,
        inference._TensorStream(lookup_images(n_samples)),
        names=("a", "b", "c"),
        sizes=sizes,
        columns=[None] * 3,
        rule=make_rule([0.6, 0.6, math.inf], measure="max_proba"),
        n_classes=3,
    )
    loader_batch, largest = 10, 0
    for batch in inference.iter_batches(lookup_images(n_samples), loader_batch):
        engine.feed(len(batch), batch)
        largest = max(largest, sum(b.size for b in engine.buffers))
        assert all(b.size < size for b, size in zip(engine.buffers, sizes, strict=True))
    engine.finish()
    assert sum(b.size for b in engine.buffers) == 0
    assert largest < sum(sizes)
    assert sum(stages[0].calls) == n_samples
    assert len(stages[2].calls) > 1  # the last stage ran several full batches


def test_iterator_is_consumed_lazily():
    """The first stage runs before the whole input has been read."""
    pulled = []
    table = np.tile([[0.9, 0.1]], (100, 1))
    stage = LookupStage(table, ["a", "b"], 10)

    def batches():
        for start in range(0, 100, 10):
            pulled.append(start)
            yield lookup_images(100)[start : start + 10]

    original = stage.predict_proba

    def spy(X):
        assert len(pulled) < 10 or len(stage.calls) >= 1
        return original(X)

    stage.predict_proba = spy
    inference.stream_route(
        [stage],
        batches(),
        stage_names=["a"],
        classes=np.array(["a", "b"]),
        rule=make_rule([math.inf]),
    )
    assert stage.calls[0] == 10
    assert len(stage.calls) == 10


def test_empty_stream_gives_an_empty_result():
    stage = LookupStage(np.zeros((0, 2)), ["a", "b"], 4)
    result = inference.stream_route(
        [stage],
        iter([]),
        stage_names=["a"],
        classes=np.array(["a", "b"]),
        rule=make_rule([math.inf]),
    )
    assert result.n_samples == 0
    assert result.proba.shape == (0, 2)
    assert stage.calls == []


def test_stream_route_validates_arguments():
    stage = LookupStage(np.full((3, 2), 0.5), ["a", "b"], 4)
    common = {"classes": np.array(["a", "b"]), "rule": make_rule([1])}
    with pytest.raises(PolicyError, match="same non-zero length"):
        inference.stream_route([stage], iter([]), stage_names=["a", "b"], **common)
    with pytest.raises(PolicyError, match="same non-zero length"):
        inference.stream_route(
            [stage], iter([]), stage_names=["a"], classes=common["classes"], rule=make_rule([1, 1])
        )
    with pytest.raises(PolicyError, match="batch_size"):
        inference.stream_route(
            [LookupStage(stage.table, ["a", "b"], None)],
            iter([]),
            stage_names=["a"],
            batch_size=0,
            **common,
        )
    with pytest.raises(PolicyError, match="keep"):
        inference.stream_route([stage], iter([]), stage_names=["a"], keep="some", **common)
    with pytest.raises(StageInterfaceError, match="data must be"):
        inference.stream_route([stage], 42, stage_names=["a"], **common)
    with pytest.raises(StageInterfaceError, match="input batch"):
        inference.stream_route([stage], iter([np.zeros((2, 2))]), stage_names=["a"], **common)


def test_stages_without_a_batch_size_use_the_route_batch_size():
    table = np.tile([[0.5, 0.5]], (20, 1))
    stage = LookupStage(table, ["a", "b"], None)
    cascade = CascadeClassifier([("a", stage)]).fit(lookup_images(2), ["a", "b"])
    cascade.route(iter([lookup_images(20)]), batch_size=6)
    assert stage.calls == [6, 6, 6, 2]


def test_progress_bar_is_opt_in(capsys):
    table = np.tile([[0.5, 0.5]], (20, 1))
    cascade = CascadeClassifier([("a", LookupStage(table, ["a", "b"], 5))])
    cascade.fit(lookup_images(2), ["a", "b"])
    cascade.route(TensorDataset(lookup_images(20)))
    assert "sample" not in capsys.readouterr().err
    cascade.route(TensorDataset(lookup_images(20)), progress=True)
    err = capsys.readouterr().err
    assert "20/20" in err
    assert "sample" in err


def test_dataset_items_may_be_images_or_tuples():
    class Images(Dataset):
        def __len__(self):
            return 7

        def __getitem__(self, i):
            return lookup_images(7)[i].numpy()

    table = np.tile([[0.2, 0.8]], (7, 1))
    stage = LookupStage(table, ["a", "b"], 3)
    cascade = CascadeClassifier([("a", stage)]).fit(lookup_images(2), ["a", "b"])
    assert cascade.route(Images()).labels.tolist() == ["b"] * 7
    assert stage.calls == [3, 3, 1]


# --------------------------------------------------------------------------- timm models
SOURCE_SIZE = 32
N_IMAGES = 24
MODELS = (("test_resnet", 24), ("test_efficientnet", 32), ("test_byobnet", 40))
TIMM_CLASSES = np.array(["blast", "lymph", "mono"])


@functools.cache
def timm_stage(index, batch_size, device="cpu"):
    name, size = MODELS[index]
    torch.manual_seed(index)
    # Each stage lists the classes in another order, to exercise the column mapping.
    order = np.roll(np.arange(3), index)
    return TorchStage.from_timm(
        name,
        num_classes=3,
        classes=TIMM_CLASSES[order],
        input_size=(3, size, size),
        batch_size=batch_size,
        device=device,
    )


@functools.cache
def source_images():
    generator = torch.Generator().manual_seed(0)
    return torch.randint(
        0, 256, (N_IMAGES, 3, SOURCE_SIZE, SOURCE_SIZE), generator=generator, dtype=torch.uint8
    )


@functools.cache
def reference_probas():
    """Every stage on every source image, in one batch each."""
    X = source_images()
    return tuple(
        check_stage_proba(
            timm_stage(s, N_IMAGES).predict_proba(X),
            n_samples=N_IMAGES,
            n_classes=3,
            stage_name="ref",
        )
        for s in range(len(MODELS))
    )


@MODEL_PROPERTY
@given(
    data=st.data(),
    measure=st.sampled_from(["max_proba", "margin", "entropy"]),
    combine=st.sampled_from(["vote", "last", "mean"]),
    kind=st.sampled_from(INPUT_KINDS),
)
def test_timm_cascade_streams_like_the_naive_reference(data, measure, combine, kind):
    n = data.draw(st.integers(1, N_IMAGES))
    perm = np.asarray(data.draw(st.permutations(range(N_IMAGES))), dtype=np.intp)[:n]
    sizes = [data.draw(st.integers(1, 10)) for _ in MODELS]
    stages = [timm_stage(s, b) for s, b in enumerate(sizes)]
    columns = [_column_map(stage.classes_, TIMM_CLASSES) for stage in stages]
    base = reference_probas()
    thresholds = [
        safe_threshold(confidence_scores(p[:, c], measure), data.draw(st.floats(0.1, 0.9)))
        for p, c in zip(base, columns, strict=True)
    ]
    weight = data.draw(st.floats(0, 1))

    result = inference.stream_route(
        stages,
        as_input(source_images()[perm], kind, data.draw(st.integers(1, 12))),
        stage_names=[name for name, _ in MODELS],
        classes=TIMM_CLASSES,
        columns=columns,
        rule=make_rule(thresholds, measure=measure, combine=combine, weight=weight),
    )

    exit_stage, visited, proba = naive_reference(
        [p[perm] for p in base],
        columns,
        thresholds,
        measure=measure,
        combine=combine,
        escalation_weight=weight,
    )
    np.testing.assert_array_equal(result.exit_stage, exit_stage)
    np.testing.assert_array_equal(result.visited, visited)
    np.testing.assert_allclose(result.proba, proba, rtol=0, atol=1e-5)
    np.testing.assert_allclose(result.proba.sum(axis=1), 1.0)
    report = result.cost_report
    assert report.stage_calls == tuple(visited.sum(axis=1))
    assert all(f > 0 for f in report.flops_per_sample)


def test_timm_cascade_route_on_a_dataloader_matches_in_memory_route():
    stages = [(name, timm_stage(s, 5)) for s, (name, _) in enumerate(MODELS)]
    base = reference_probas()
    thresholds = [safe_threshold(confidence_scores(p, "max_proba"), 0.5) for p in base]
    cascade = CascadeClassifier(stages, policy=ConfidencePolicy(thresholds=thresholds))
    cascade.fit(source_images()[:3], TIMM_CLASSES)
    X = source_images()
    in_memory = cascade.route(X)
    streamed = cascade.route(DataLoader(TensorDataset(X, torch.zeros(len(X))), batch_size=7))
    assert 0 < in_memory.escalation_rate < 1
    np.testing.assert_array_equal(streamed.exit_stage, in_memory.exit_stage)
    np.testing.assert_allclose(streamed.proba, in_memory.proba, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(streamed.labels, in_memory.labels)
    assert "test_resnet" in str(streamed.cost_report)


# --------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_stream_matches_cpu_reference():
    stages = [timm_stage(s, 4, TEST_DEVICE) for s in range(len(MODELS))]
    for stage, cpu in zip(stages, [timm_stage(s, 4) for s in range(len(MODELS))], strict=True):
        stage.module_.load_state_dict(cpu.module_.state_dict())
    base = reference_probas()
    thresholds = [safe_threshold(confidence_scores(p, "max_proba"), 0.5) for p in base]
    result = inference.stream_route(
        stages,
        DataLoader(TensorDataset(source_images()), batch_size=5),
        stage_names=[n for n, _ in MODELS],
        classes=TIMM_CLASSES,
        columns=[_column_map(s.classes_, TIMM_CLASSES) for s in stages],
        rule=make_rule(thresholds, measure="max_proba"),
    )
    assert result.cost_report.devices[0].startswith("cuda")
    columns = [_column_map(s.classes_, TIMM_CLASSES) for s in stages]
    _, _, proba = naive_reference(
        list(base), columns, thresholds, measure="max_proba", combine="vote", escalation_weight=0.5
    )
    np.testing.assert_allclose(result.proba, proba, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_gpu_mixed_precision_and_channels_last_stay_close(precision):
    reference = timm_stage(0, 8)
    stage = TorchStage.from_timm(
        "test_resnet",
        num_classes=3,
        classes=reference.classes_,
        input_size=(3, 24, 24),
        device=TEST_DEVICE,
        precision=precision,
        channels_last=True,
    )
    stage.module_.load_state_dict(reference.module_.state_dict())
    X = source_images()
    np.testing.assert_allclose(stage.predict_proba(X), reference.predict_proba(X), atol=2e-2)
    assert inference.resolve_device(TEST_DEVICE).type == "cuda"
