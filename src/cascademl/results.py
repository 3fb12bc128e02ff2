"""The frozen outcome of routing samples through a cascade."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from cascademl._typing import BoolArray, FloatArray, IntArray, LabelArray, ProbaArray
from cascademl.cost import _import_pandas, cost_ratio, mean_cost_per_sample
from cascademl.exceptions import PolicyError

if TYPE_CHECKING:
    from cascademl.cost import CostReport

__all__ = ["CascadeResult"]

_ARRAYS = (
    "classes",
    "labels",
    "proba",
    "exit_stage",
    "stage_proba",
    "stage_confidence",
    "visited",
    "stage_cost",
)


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class CascadeResult:
    """Per-sample outcome of [`CascadeClassifier.route`][cascademl.CascadeClassifier.route].

    All arrays are read-only. ``predict`` and ``predict_proba`` are views over
    ``labels`` and ``proba``. ``repr(result)`` is a few lines of summary;
    [`to_dict`][cascademl.CascadeResult.to_dict] and
    [`to_frame`][cascademl.CascadeResult.to_frame] give the figures as Python values or a
    ``pandas.DataFrame``.

    Attributes:
        classes: ndarray of shape (n_classes,), the column labels of ``proba``.
        stage_names: the stages' names, in cascade order.
        labels: ndarray of shape (n_samples,), the final label of each sample.
        proba: ndarray of shape (n_samples, n_classes), the final (combined) probabilities.
        exit_stage: int ndarray of shape (n_samples,): index of the stage that ended the sample.
        stage_proba: ndarray of shape (n_stages, n_samples, n_classes); each visited stage's
            probabilities, NaN for stages the sample never reached. ``None`` when the route
            did not keep them (``route(X, keep="none")``).
        stage_confidence: ndarray of shape (n_stages, n_samples); each visited stage's
            confidence, NaN where not visited.
        visited: bool ndarray of shape (n_stages, n_samples).
        stage_cost: ndarray of shape (n_stages,), the cost of one sample at each stage
            (1.0 per stage call unless stages report ``cost_per_sample``).
        cost_unit: what ``stage_cost`` counts.
        cost_report: measured FLOPs (for torch stages) and latency per stage and per sample,
            printable as a table; set by `route` for in-memory and streamed inputs alike
            (``None`` only for results built by hand; build one with
            [`CostReport.from_result`][cascademl.cost.CostReport.from_result]).
    """

    classes: LabelArray
    stage_names: tuple[str, ...]
    labels: LabelArray
    proba: ProbaArray
    exit_stage: IntArray
    stage_proba: FloatArray | None
    stage_confidence: FloatArray
    visited: BoolArray
    stage_cost: FloatArray
    cost_unit: str = "stage calls"
    cost_report: CostReport | None = None

    def __post_init__(self) -> None:
        """Copy every array and make it read-only."""
        for name in _ARRAYS:
            value = getattr(self, name)
            if value is None:
                continue
            array = np.array(value)  # a private copy, then frozen
            array.flags.writeable = False
            object.__setattr__(self, name, array)

    @classmethod
    def _from_owned(cls, **values: Any) -> CascadeResult:
        """Build a result from arrays nobody else holds: freeze them instead of copying."""
        result = object.__new__(cls)
        for field in fields(cls):
            value = values.get(field.name, field.default)
            if field.name in _ARRAYS and value is not None:
                value = np.asarray(value)
                value.flags.writeable = False
            object.__setattr__(result, field.name, value)
        return result

    @property
    def n_samples(self) -> int:
        """Number of routed samples."""
        return int(self.labels.shape[0])

    @property
    def n_stages(self) -> int:
        """Number of stages in the cascade."""
        return len(self.stage_names)

    @property
    def exit_counts(self) -> IntArray:
        """How many samples each stage ended, shape (n_stages,)."""
        return np.asarray(np.bincount(self.exit_stage, minlength=self.n_stages), dtype=np.intp)

    @property
    def stage_calls(self) -> IntArray:
        """How many samples each stage processed, shape (n_stages,)."""
        return np.asarray(self.visited.sum(axis=1), dtype=np.intp)

    @property
    def escalation_rate(self) -> float:
        """Share of samples that went past the first stage."""
        return float(np.mean(self.exit_stage > 0)) if self.n_samples else 0.0

    @property
    def mean_cost(self) -> float:
        """Mean cost per sample: each stage's cost times the share of samples it processed.

        See [`mean_cost_per_sample`][cascademl.cost.mean_cost_per_sample]; 0 for no sample.
        """
        if self.n_samples == 0:
            return 0.0
        return mean_cost_per_sample(
            self.stage_cost.tolist(), self.stage_calls.tolist(), self.n_samples
        )

    @property
    def cost_ratio_all(self) -> float:
        """``mean_cost`` over the cost of running every stage on every sample."""
        return cost_ratio(self.mean_cost, math.fsum(self.stage_cost.tolist()))

    @property
    def cost_ratio_last(self) -> float:
        """``mean_cost`` over the cost of running only the last stage."""
        return cost_ratio(self.mean_cost, float(self.stage_cost[-1]))

    @property
    def calls_saved(self) -> float:
        """Share of stage calls saved against running every stage on every sample."""
        if self.n_samples == 0:
            return 0.0
        return 1.0 - float(self.visited.sum()) / (self.n_stages * self.n_samples)

    def visited_proba(self, index: int) -> dict[str, ProbaArray]:
        """The probabilities of each stage that sample ``index`` visited, by stage name.

        Raises:
            PolicyError: if the route did not keep the stages' probabilities.
        """
        if self.stage_proba is None:
            msg = (
                "this result holds no per-stage probabilities; route with keep='all' "
                "(the default of route) to keep them"
            )
            raise PolicyError(msg)
        stage_proba = self.stage_proba
        return {
            name: stage_proba[s, index]
            for s, name in enumerate(self.stage_names)
            if self.visited[s, index]
        }

    # ----------------------------------------------------------------- display
    def __repr__(self) -> str:
        """A few lines: samples, stages, where samples exited, and the mean cost."""
        n = self.n_samples
        exits = ", ".join(
            f"{name} {int(c)} ({c / n:.1%})" if n else f"{name} 0"
            for name, c in zip(self.stage_names, self.exit_counts, strict=True)
        )
        kept = "kept" if self.stage_proba is not None else "not kept"
        return (
            f"CascadeResult(n_samples={n}, n_stages={self.n_stages}, "
            f"n_classes={self.classes.size})\n"
            f"  exits: {exits}\n"
            f"  mean cost: {self.mean_cost:.4g} {self.cost_unit} per sample "
            f"({self.cost_ratio_all:.2f}x every stage, {self.cost_ratio_last:.2f}x the last "
            f"stage alone)\n"
            f"  stage probabilities: {kept}; cost report: "
            f"{'yes' if self.cost_report is not None else 'no'}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain Python values (str, int, float, lists), ready for JSON.

        Keys: ``n_samples``, ``n_stages``, ``stage_names``, ``classes``, ``exit_counts``,
        ``stage_calls``, ``escalation_rate``, ``mean_cost``, ``cost_ratio_all``,
        ``cost_ratio_last``, ``calls_saved``, ``cost_unit`` and ``cost_report`` (the
        report's [`to_dict`][cascademl.cost.CostReport.to_dict], or ``None``). Per-sample
        values are in [`to_frame`][cascademl.CascadeResult.to_frame].

        Examples:
            >>> import numpy as np
            >>> result = CascadeResult(
            ...     classes=np.array(["a", "b"]), stage_names=("s0", "s1"),
            ...     labels=np.array(["a", "b"]), proba=np.array([[0.9, 0.1], [0.2, 0.8]]),
            ...     exit_stage=np.array([0, 1]), stage_proba=None,
            ...     stage_confidence=np.array([[0.9, 0.6], [np.nan, 0.8]]),
            ...     visited=np.array([[True, True], [False, True]]),
            ...     stage_cost=np.array([1.0, 4.0]))
            >>> summary = result.to_dict()
            >>> summary["exit_counts"], summary["mean_cost"], summary["classes"]
            ([1, 1], 3.0, ['a', 'b'])
        """
        return {
            "n_samples": self.n_samples,
            "n_stages": self.n_stages,
            "stage_names": list(self.stage_names),
            "classes": self.classes.tolist(),
            "exit_counts": [int(c) for c in self.exit_counts],
            "stage_calls": [int(c) for c in self.stage_calls],
            "escalation_rate": float(self.escalation_rate),
            "mean_cost": float(self.mean_cost),
            "cost_ratio_all": float(self.cost_ratio_all),
            "cost_ratio_last": float(self.cost_ratio_last),
            "calls_saved": float(self.calls_saved),
            "cost_unit": self.cost_unit,
            "cost_report": None if self.cost_report is None else self.cost_report.to_dict(),
        }

    def to_frame(self, *, proba: bool = False) -> Any:
        """One row per sample, as a ``pandas.DataFrame``.

        Columns: ``label``, ``exit_stage`` (the name of the stage that ended the sample),
        ``confidence`` (its confidence there), then ``confidence[<stage>]`` for every stage
        (NaN where not visited); with ``proba=True`` also ``proba[<class>]`` per class.

        Args:
            proba: add the final probabilities, one column per class.

        Raises:
            ImportError: if pandas is not installed, with the command that installs it.
        """
        pd = _import_pandas()
        rows = np.arange(self.n_samples)
        names = np.asarray(self.stage_names, dtype=object)
        columns: dict[str, Any] = {
            "label": self.labels,
            "exit_stage": names[self.exit_stage] if self.n_samples else names[:0],
            "confidence": self.stage_confidence[self.exit_stage, rows],
        }
        for s, name in enumerate(self.stage_names):
            columns[f"confidence[{name}]"] = self.stage_confidence[s]
        if proba:
            for k, label in enumerate(self.classes.tolist()):
                columns[f"proba[{label}]"] = self.proba[:, k]
        return pd.DataFrame(columns)
