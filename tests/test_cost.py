"""Cost accounting: FLOPs from torch's counter, latency, and per-run reports."""

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import TensorDataset

from cascademl import CascadeClassifier, ConfidencePolicy, PolicyError
from cascademl.cost import CostReport, StageCost, count_flops, measure_stage_cost
from cascademl.torch_stage import TorchStage


def linear_stage(n_in=12, n_out=4, batch_size=8):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(n_in, n_out))
    return TorchStage(net, classes=list(range(n_out)), batch_size=batch_size, device="cpu")


def test_count_flops_matches_the_analytic_count_of_a_linear_layer():
    # one multiply-add per weight, counted as two FLOPs
    assert count_flops(linear_stage(12, 4), torch.rand(5, 3, 2, 2)) == 2 * 12 * 4


def test_count_flops_of_a_convolution():
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    )
    stage = TorchStage(net, classes=list(range(8)), device="cpu")
    assert count_flops(stage, torch.rand(2, 3, 6, 6)) == 2 * (3 * 3 * 3) * 8 * 6 * 6


def test_count_flops_follows_the_stage_input_size():
    small = TorchStage.from_timm("test_resnet", num_classes=3, input_size=(3, 32, 32), device="cpu")
    large = TorchStage.from_timm("test_resnet", num_classes=3, input_size=(3, 64, 64), device="cpu")
    source = torch.rand(1, 3, 48, 48)
    assert count_flops(large, source) == pytest.approx(4 * count_flops(small, source), rel=0.05)


def test_count_flops_is_nan_without_torch_operations():
    class NumpyStage:
        classes_ = np.array([0, 1])

        def predict_proba(self, X):
            return np.full((len(X), 2), 0.5)

    assert math.isnan(count_flops(NumpyStage(), np.zeros((3, 1))))


def test_measure_stage_cost_times_full_batches_with_the_given_clock():
    stage = linear_stage(batch_size=8)
    calls = []
    original = stage.predict_proba

    def spy(X):
        calls.append(len(X))
        return original(X)

    stage.predict_proba = spy
    ticks = itertools.count(step=0.4)  # every call of the clock advances 0.4 s
    cost = measure_stage_cost(
        stage, torch.rand(3, 3, 2, 2), name="lin", repeats=3, warmup=2, timer=lambda: next(ticks)
    )
    assert cost == StageCost("lin", 2 * 12 * 4, 0.4 / 8, 8, "cpu")
    assert calls == [1, 8, 8, 8, 8, 8]  # flop count, warm-up, timed repeats


def test_measure_stage_cost_validates():
    stage = linear_stage()
    with pytest.raises(PolicyError, match="repeats"):
        measure_stage_cost(stage, torch.rand(1, 3, 2, 2), repeats=0)
    with pytest.raises(PolicyError, match="batch_size"):
        measure_stage_cost(stage, torch.rand(1, 3, 2, 2), batch_size=-1)
    with pytest.raises(PolicyError, match="at least one sample"):
        measure_stage_cost(stage, torch.rand(0, 3, 2, 2))


def test_measured_latency_is_positive_on_the_real_clock():
    cost = measure_stage_cost(linear_stage(), torch.rand(2, 3, 2, 2), repeats=2)
    assert cost.latency_per_sample > 0
    assert cost.device == "cpu"


def report(calls=(100, 20), n=100):
    return CostReport(
        stage_names=("small", "large"),
        flops_per_sample=(1e6, 1e8),
        latency_per_sample=(1e-4, 1e-2),
        stage_calls=calls,
        n_samples=n,
    )


def test_report_ratios():
    r = report()
    assert r.mean_flops == pytest.approx((100 * 1e6 + 20 * 1e8) / 100)
    assert r.flops_ratio_all == pytest.approx(r.mean_flops / (1e6 + 1e8))
    assert r.flops_ratio_last == pytest.approx(r.mean_flops / 1e8)
    assert r.mean_latency == pytest.approx((100 * 1e-4 + 20 * 1e-2) / 100)
    assert r.latency_ratio_last == pytest.approx(r.mean_latency / 1e-2)
    assert math.isnan(r.throughput)
    assert dataclasses.replace(r, wall_time=2.0).throughput == 50.0


@given(
    calls=st.lists(st.integers(0, 50), min_size=1, max_size=5),
    flops=st.lists(st.floats(1, 1e9), min_size=5, max_size=5),
)
def test_every_stage_on_every_sample_has_ratio_one(calls, flops):
    n_stages = len(calls)
    n = 50
    r = CostReport(
        tuple(f"s{i}" for i in range(n_stages)),
        tuple(flops[:n_stages]),
        tuple(flops[:n_stages]),
        (n,) * n_stages,
        n,
    )
    assert r.flops_ratio_all == pytest.approx(1.0)
    assert r.latency_ratio_last == pytest.approx(sum(flops[:n_stages]) / flops[n_stages - 1])


def test_unknown_costs_propagate_as_nan_and_print_as_na():
    r = CostReport(("a", "b"), (math.nan, 5.0), (1e-3, math.nan), (4, 0), 4)
    assert math.isnan(r.mean_flops)
    assert r.mean_latency == pytest.approx(1e-3)  # b processed nothing: its NaN is unused
    assert math.isnan(r.latency_ratio_all)
    assert "n/a" in r.to_table()
    empty = CostReport(("a",), (1.0,), (1.0,), (0,), 0)
    assert math.isnan(empty.mean_flops)
    assert "n/a" in str(empty)


def test_report_checks_lengths():
    with pytest.raises(PolicyError, match="stage_calls"):
        CostReport(("a", "b"), (1.0, 2.0), (1.0, 2.0), (1,), 1)


def test_table_lists_every_stage_and_the_ratios():
    text = str(dataclasses.replace(report(), wall_time=0.5))
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["stage", "samples", "share"]
    assert "MFLOPs/sample" in lines[0]
    assert lines[1].split()[:3] == ["small", "100", "100.0%"]
    assert lines[2].split()[:3] == ["large", "20", "20.0%"]
    assert "21.000 MFLOPs" in text
    assert "0.21x FLOPs" in text  # vs the last stage alone
    assert "200.0 samples/s" in text


def test_from_result_uses_the_result_calls():
    stages = [("a", linear_stage()), ("b", linear_stage(batch_size=4))]
    cascade = CascadeClassifier(stages, policy=ConfidencePolicy(thresholds=2.0))
    X = torch.rand(6, 3, 2, 2)
    cascade.fit(X, [0, 1, 2, 3, 0, 1])
    result = cascade.route(X)
    costs = [StageCost("a", 10.0, 1.0, 8, "cpu"), StageCost("b", 30.0, 3.0, 4, "cpu")]
    r = CostReport.from_result(result, costs, wall_time=1.0)
    assert r.stage_calls == (6, 6)
    assert r.mean_flops == 40.0
    assert r.flops_ratio_all == 1.0
    assert r.batch_sizes == (8, 4)
    with pytest.raises(PolicyError, match="1 entries for 2 stages"):
        CostReport.from_result(result, costs[:1])


def test_streamed_results_carry_a_measured_report():
    stages = [("a", linear_stage(batch_size=4)), ("b", linear_stage(batch_size=3))]
    cascade = CascadeClassifier(stages, policy=ConfidencePolicy(thresholds=2.0))
    X = torch.rand(10, 3, 2, 2)
    cascade.fit(X, [0, 1, 2, 3] * 2 + [0, 1])
    r = cascade.route(TensorDataset(X)).cost_report
    assert r.stage_calls == (10, 10)
    assert r.flops_per_sample == (96.0, 96.0)
    assert all(latency > 0 for latency in r.latency_per_sample)
    assert r.batch_sizes == (4, 3)
    assert r.devices == ("cpu", "cpu")
    assert r.wall_time >= sum(
        c * t for c, t in zip(r.stage_calls, r.latency_per_sample, strict=True)
    )
