"""Cost accounting: FLOPs and latency per stage, and what a cascade run cost per sample.

Two measurements per stage:

* **FLOPs per sample**, counted by torch's own ``torch.utils.flop_counter.FlopCounterMode``
  on one sample (one multiply-add counts as two FLOPs; preprocessing such as resizing is not
  counted);
* **latency per sample**, measured on the stage's actual device: seconds of the stage's
  ``predict_proba`` (transfer, preprocessing, forward pass and softmax) divided by the
  number of samples.

A [`CostReport`][cascademl.cost.CostReport] combines them with how many samples each stage
processed in a run: the mean cost per sample, and its ratio to running every stage on every
sample (a voting ensemble) and to running only the last stage. The routing engine attaches
one to every result of [`CascadeClassifier.route`][cascademl.CascadeClassifier.route]
(``result.cost_report``), in memory or streamed; for a steadier profile, build one with
[`CostReport.from_result`][cascademl.cost.CostReport.from_result] and stage costs from
[`measure_stage_cost`][cascademl.cost.measure_stage_cost].

The cost model itself is two functions,
[`mean_cost_per_sample`][cascademl.cost.mean_cost_per_sample] and
[`cost_ratio`][cascademl.cost.cost_ratio]: `CostReport` (FLOPs, latency) and
[`CascadeResult`][cascademl.CascadeResult] (the unit-free ``stage_cost``) both use them,
and [`routing_summary`][cascademl.metrics.routing_summary] reads the result's figures.

Only `count_flops` and `measure_stage_cost` import torch, when called.
"""

from __future__ import annotations

import importlib
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cascademl._validation import check_positive_int
from cascademl.exceptions import PolicyError

if TYPE_CHECKING:
    from cascademl.results import CascadeResult

__all__ = [
    "CostReport",
    "StageCost",
    "cost_ratio",
    "count_flops",
    "mean_cost_per_sample",
    "measure_stage_cost",
]


def mean_cost_per_sample(
    per_sample: Sequence[float], stage_calls: Sequence[int], n_samples: int
) -> float:
    """Mean cost of one routed sample: each stage's cost times the samples it processed.

    This is the one cost model of cascademl; a stage that processed no sample adds nothing,
    even when its cost is unknown (NaN).

    Args:
        per_sample: per stage, the cost of one sample there (FLOPs, seconds, any unit).
        stage_calls: per stage, how many samples it processed.
        n_samples: how many samples were routed.

    Returns:
        ``sum(calls * cost) / n_samples`` as a Python float; NaN when ``n_samples`` is 0.

    Examples:
        >>> mean_cost_per_sample([1.0, 10.0], [100, 20], 100)
        3.0
    """
    if n_samples == 0:
        return math.nan
    total = math.fsum(
        float(c) * float(v) for c, v in zip(stage_calls, per_sample, strict=True) if c
    )
    return total / n_samples


def cost_ratio(value: float, reference: float) -> float:
    """``value / reference``, NaN when either is NaN or the reference is zero.

    Examples:
        >>> cost_ratio(3.0, 11.0) == 3.0 / 11.0, cost_ratio(1.0, 0.0)
        (True, nan)
    """
    if math.isnan(value) or math.isnan(reference) or reference == 0:
        return math.nan
    return float(value) / float(reference)


def count_flops(stage: Any, example: Any) -> float:
    """FLOPs of one sample through ``stage.predict_proba``, by torch's flop counter.

    Args:
        stage: anything with ``predict_proba`` that runs torch operations.
        example: a batch of inputs; only its first sample is run.

    Returns:
        The FLOPs per sample, or NaN when the counter saw no operation it knows (a stage
        that does not use torch, for example).
    """
    from torch.utils.flop_counter import FlopCounterMode  # noqa: PLC0415 - torch on demand

    with FlopCounterMode(display=False) as counter:
        stage.predict_proba(example[:1])
    total = counter.get_total_flops()
    return float(total) if total > 0 else math.nan


@dataclass(frozen=True, slots=True)
class StageCost:
    """What one sample costs at one stage.

    Attributes:
        name: the stage's name.
        flops_per_sample: FLOPs per sample (NaN when unknown).
        latency_per_sample: seconds per sample at ``batch_size`` on ``device``.
        batch_size: the batch size the latency was measured at.
        device: the device the latency was measured on.
    """

    name: str
    flops_per_sample: float
    latency_per_sample: float
    batch_size: int
    device: str


def measure_stage_cost(
    stage: Any,
    example: Any,
    *,
    name: str = "stage",
    batch_size: int | None = None,
    repeats: int = 5,
    warmup: int = 1,
    timer: Callable[[], float] = time.perf_counter,
) -> StageCost:
    """Profile a stage: FLOPs per sample and the median latency per sample of full batches.

    The batch is built by repeating the samples of ``example``; timing calls the stage's
    ``predict_proba``, which returns CPU numpy arrays and so waits for the device.

    Args:
        stage: a stage, typically a [`TorchStage`][cascademl.torch_stage.TorchStage].
        example: tensor or array of shape (n, c, h, w) holding at least one source image.
        name: the stage's name in the report.
        batch_size: samples per timed call; the stage's own ``batch_size`` when ``None``.
        repeats: timed calls; the median is kept.
        warmup: untimed calls first (lazy initialisation, cuDNN autotuning, caches).
        timer: the clock (seconds).

    Returns:
        The stage's cost.

    Raises:
        PolicyError: for a non-positive ``repeats`` or ``batch_size``, or an empty example.
    """
    size = batch_size if batch_size is not None else getattr(stage, "batch_size", None) or 1
    size = check_positive_int(size, "batch_size")  # numpy integers too
    repeats = check_positive_int(repeats, "repeats")
    import torch  # noqa: PLC0415 - torch on demand

    source = torch.as_tensor(example)
    if source.ndim == 0 or source.shape[0] == 0:
        msg = "example must hold at least one sample"
        raise PolicyError(msg)
    batch = source[torch.arange(size) % source.shape[0]]
    flops = count_flops(stage, batch)
    for _ in range(warmup):
        stage.predict_proba(batch)
    times = []
    for _ in range(repeats):
        start = timer()
        stage.predict_proba(batch)
        times.append(timer() - start)
    device = getattr(stage, "device_", None)
    return StageCost(
        name=name,
        flops_per_sample=flops,
        latency_per_sample=statistics.median(times) / size,
        batch_size=size,
        device=str(device) if device is not None else "cpu",
    )


@dataclass(frozen=True, slots=True)
class CostReport:
    """What a cascade run cost, per stage and per sample.

    Mean costs count each stage's cost for every sample it processed, divided by the number
    of samples. The ratios compare them with running every stage on every sample
    (``*_ratio_all``, a voting ensemble) and with running only the last stage
    (``*_ratio_last``): below 1 the cascade is cheaper.

    Attributes:
        stage_names: the stages' names, in order.
        flops_per_sample: per stage, FLOPs per sample (NaN when unknown).
        latency_per_sample: per stage, seconds per sample (NaN for a stage that processed
            nothing in a run that measured it).
        stage_calls: per stage, how many samples it processed.
        n_samples: how many samples were routed.
        batch_sizes: per stage, the batch size it ran at (``None`` when not recorded).
        devices: per stage, the device it ran on (``None`` when not recorded).
        wall_time: seconds for the whole run (``None`` when not recorded).

    Examples:
        >>> report = CostReport(
        ...     stage_names=("small", "large"), flops_per_sample=(1e6, 1e8),
        ...     latency_per_sample=(1e-4, 1e-2), stage_calls=(100, 20), n_samples=100)
        >>> report.mean_flops
        21000000.0
        >>> round(report.flops_ratio_last, 2), round(report.flops_ratio_all, 3)
        (0.21, 0.208)
    """

    stage_names: tuple[str, ...]
    flops_per_sample: tuple[float, ...]
    latency_per_sample: tuple[float, ...]
    stage_calls: tuple[int, ...]
    n_samples: int
    batch_sizes: tuple[int, ...] | None = None
    devices: tuple[str, ...] | None = None
    wall_time: float | None = None

    def __post_init__(self) -> None:
        """Check that every per-stage tuple has one value per stage."""
        n = len(self.stage_names)
        for field in ("flops_per_sample", "latency_per_sample", "stage_calls"):
            if len(getattr(self, field)) != n:
                msg = f"{field} has {len(getattr(self, field))} values for {n} stages"
                raise PolicyError(msg)

    @classmethod
    def from_result(
        cls,
        result: CascadeResult,
        stage_costs: Sequence[StageCost],
        *,
        wall_time: float | None = None,
    ) -> CostReport:
        """Combine a routing result with profiled stage costs.

        Args:
            result: what [`CascadeClassifier.route`][cascademl.CascadeClassifier.route]
                returned.
            stage_costs: one [`StageCost`][cascademl.cost.StageCost] per stage, in order,
                e.g. from [`measure_stage_cost`][cascademl.cost.measure_stage_cost].
            wall_time: the run's wall time in seconds, if measured.

        Returns:
            The report.

        Raises:
            PolicyError: if there is not one stage cost per stage.
        """
        if len(stage_costs) != result.n_stages:
            msg = f"stage_costs has {len(stage_costs)} entries for {result.n_stages} stages"
            raise PolicyError(msg)
        return cls(
            stage_names=tuple(result.stage_names),
            flops_per_sample=tuple(c.flops_per_sample for c in stage_costs),
            latency_per_sample=tuple(c.latency_per_sample for c in stage_costs),
            stage_calls=tuple(int(c) for c in result.stage_calls),
            n_samples=result.n_samples,
            batch_sizes=tuple(c.batch_size for c in stage_costs),
            devices=tuple(c.device for c in stage_costs),
            wall_time=wall_time,
        )

    # ----------------------------------------------------------------- FLOPs
    @property
    def mean_flops(self) -> float:
        """Mean FLOPs per routed sample."""
        return mean_cost_per_sample(self.flops_per_sample, self.stage_calls, self.n_samples)

    @property
    def flops_ratio_all(self) -> float:
        """``mean_flops`` over the FLOPs of running every stage on every sample."""
        return cost_ratio(self.mean_flops, math.fsum(self.flops_per_sample))

    @property
    def flops_ratio_last(self) -> float:
        """``mean_flops`` over the FLOPs of running only the last stage."""
        return cost_ratio(self.mean_flops, self.flops_per_sample[-1])

    # ----------------------------------------------------------------- latency
    @property
    def mean_latency(self) -> float:
        """Mean seconds per routed sample, summed over the stages it visited."""
        return mean_cost_per_sample(self.latency_per_sample, self.stage_calls, self.n_samples)

    @property
    def latency_ratio_all(self) -> float:
        """``mean_latency`` over the latency of running every stage on every sample."""
        return cost_ratio(self.mean_latency, math.fsum(self.latency_per_sample))

    @property
    def latency_ratio_last(self) -> float:
        """``mean_latency`` over the latency of running only the last stage."""
        return cost_ratio(self.mean_latency, self.latency_per_sample[-1])

    @property
    def throughput(self) -> float:
        """Samples per second over the whole run (NaN when ``wall_time`` is unknown)."""
        if self.wall_time is None or self.wall_time <= 0:
            return math.nan
        return self.n_samples / self.wall_time

    # ----------------------------------------------------------------- display
    def to_table(self) -> str:
        """The report as a fixed-width text table, one row per stage and a summary.

        Examples:
            >>> report = CostReport(("a", "b"), (2e6, 8e6), (1e-3, 4e-3), (10, 5), 10)
            >>> print(report.to_table())  # doctest: +NORMALIZE_WHITESPACE
            stage   samples   share   MFLOPs/sample   ms/sample
            a            10  100.0%           2.000       1.000
            b             5   50.0%           8.000       4.000
            mean cost per sample: 6.000 MFLOPs, 3.000 ms
            vs every stage on every sample: 0.60x FLOPs, 0.60x latency
            vs the last stage alone: 0.75x FLOPs, 0.75x latency
        """
        known = [f for f in self.flops_per_sample if not math.isnan(f)]
        scale, unit = _flops_unit(max(known, default=0.0))
        width = max(5, *(len(n) for n in self.stage_names))
        lines = [f"{'stage':<{width}}   samples   share   {unit}/sample   ms/sample"]
        for name, calls, flops, latency in zip(
            self.stage_names,
            self.stage_calls,
            self.flops_per_sample,
            self.latency_per_sample,
            strict=True,
        ):
            share = calls / self.n_samples if self.n_samples else math.nan
            lines.append(
                f"{name:<{width}} {calls:>9d} {share:>7.1%} "
                f"{_fmt(flops / scale):>{len(unit) + 7}}  {_fmt(latency * 1e3):>10}"
            )
        lines.append(
            f"mean cost per sample: {_fmt(self.mean_flops / scale)} {unit}, "
            f"{_fmt(self.mean_latency * 1e3)} ms"
        )
        lines.append(
            f"vs every stage on every sample: {_fmt(self.flops_ratio_all, 2)}x FLOPs, "
            f"{_fmt(self.latency_ratio_all, 2)}x latency"
        )
        lines.append(
            f"vs the last stage alone: {_fmt(self.flops_ratio_last, 2)}x FLOPs, "
            f"{_fmt(self.latency_ratio_last, 2)}x latency"
        )
        if self.wall_time is not None:
            lines.append(
                f"wall time: {self.wall_time:.3f} s ({_fmt(self.throughput, 1)} samples/s)"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        """The table of [`to_table`][cascademl.cost.CostReport.to_table]."""
        return self.to_table()

    def __repr__(self) -> str:
        """A short summary: samples, stages, mean cost and ratios (``str`` gives the table)."""
        known = [f for f in self.flops_per_sample if not math.isnan(f)]
        scale, unit = _flops_unit(max(known, default=0.0))
        return (
            f"CostReport(n_samples={self.n_samples}, stages={list(self.stage_names)})\n"
            f"  samples per stage: {list(self.stage_calls)}\n"
            f"  mean per sample: {_fmt(self.mean_flops / scale)} {unit}, "
            f"{_fmt(self.mean_latency * 1e3)} ms; vs every stage: "
            f"{_fmt(self.flops_ratio_all, 2)}x FLOPs, {_fmt(self.latency_ratio_all, 2)}x latency"
        )

    def to_dict(self) -> dict[str, Any]:
        """The report as plain Python values (str, int, float, lists), ready for JSON.

        Per-stage fields are lists in stage order; derived figures (``mean_flops``, the
        ratios, ``throughput``) are included. Unknown values are ``nan``.

        Examples:
            >>> report = CostReport(("a", "b"), (2e6, 8e6), (1e-3, 4e-3), (10, 5), 10)
            >>> report.to_dict()["flops_ratio_all"]
            0.6
        """
        return {
            "stage_names": list(self.stage_names),
            "flops_per_sample": [float(v) for v in self.flops_per_sample],
            "latency_per_sample": [float(v) for v in self.latency_per_sample],
            "stage_calls": [int(v) for v in self.stage_calls],
            "n_samples": int(self.n_samples),
            "batch_sizes": None if self.batch_sizes is None else [int(b) for b in self.batch_sizes],
            "devices": None if self.devices is None else [str(d) for d in self.devices],
            "wall_time": None if self.wall_time is None else float(self.wall_time),
            "mean_flops": self.mean_flops,
            "flops_ratio_all": self.flops_ratio_all,
            "flops_ratio_last": self.flops_ratio_last,
            "mean_latency": self.mean_latency,
            "latency_ratio_all": self.latency_ratio_all,
            "latency_ratio_last": self.latency_ratio_last,
            "throughput": self.throughput,
        }

    def to_frame(self) -> Any:
        """One row per stage (index: the stage's name), as a ``pandas.DataFrame``.

        Columns: ``samples``, ``share`` (of all routed samples), ``flops_per_sample``,
        ``latency_per_sample`` (seconds), ``batch_size`` and ``device`` (when recorded).

        Raises:
            ImportError: if pandas is not installed, with the command that installs it.
        """
        pd = _import_pandas()
        n = self.n_samples
        frame = pd.DataFrame(
            {
                "samples": [int(c) for c in self.stage_calls],
                "share": [c / n if n else math.nan for c in self.stage_calls],
                "flops_per_sample": [float(v) for v in self.flops_per_sample],
                "latency_per_sample": [float(v) for v in self.latency_per_sample],
            },
            index=pd.Index(list(self.stage_names), name="stage"),
        )
        if self.batch_sizes is not None:
            frame["batch_size"] = list(self.batch_sizes)
        if self.devices is not None:
            frame["device"] = list(self.devices)
        return frame


def _import_pandas() -> Any:
    """Import pandas for ``to_frame``, or raise ImportError saying how to install it."""
    try:
        return importlib.import_module("pandas")
    except ImportError as exc:
        msg = "to_frame() needs pandas, which is not installed: pip install pandas"
        raise ImportError(msg) from exc


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _flops_unit(largest: float) -> tuple[float, str]:
    for scale, unit in ((1e12, "TFLOPs"), (1e9, "GFLOPs"), (1e6, "MFLOPs"), (1e3, "kFLOPs")):
        if largest >= scale:
            return scale, unit
    return 1.0, "FLOPs"
