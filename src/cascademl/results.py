"""The frozen outcome of routing samples through a cascade."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cascademl._typing import BoolArray, FloatArray, IntArray, LabelArray, ProbaArray

if TYPE_CHECKING:
    from cascademl.cost import CostReport

__all__ = ["CascadeResult"]


@dataclass(frozen=True, slots=True, eq=False)
class CascadeResult:
    """Per-sample outcome of [`CascadeClassifier.route`][cascademl.CascadeClassifier.route].

    All arrays are read-only. ``predict`` and ``predict_proba`` are views over
    ``labels`` and ``proba``.

    Attributes:
        classes: ndarray of shape (n_classes,), the column labels of ``proba``.
        stage_names: the stages' names, in cascade order.
        labels: ndarray of shape (n_samples,), the final label of each sample.
        proba: ndarray of shape (n_samples, n_classes), the final (combined) probabilities.
        exit_stage: int ndarray of shape (n_samples,): index of the stage that ended the sample.
        stage_proba: ndarray of shape (n_stages, n_samples, n_classes); each visited stage's
            probabilities, NaN for stages the sample never reached.
        stage_confidence: ndarray of shape (n_stages, n_samples); each visited stage's
            confidence, NaN where not visited.
        visited: bool ndarray of shape (n_stages, n_samples).
        stage_cost: ndarray of shape (n_stages,), the cost of one sample at each stage
            (1.0 per stage call unless stages report ``cost_per_sample``).
        cost_unit: what ``stage_cost`` counts.
        cost_report: measured FLOPs and latency per stage and per sample, printable as a
            table; set by the streaming engine
            ([`stream_route`][cascademl.inference.stream_route]), ``None`` otherwise (build
            one with [`CostReport.from_result`][cascademl.cost.CostReport.from_result]).
    """

    classes: LabelArray
    stage_names: tuple[str, ...]
    labels: LabelArray
    proba: ProbaArray
    exit_stage: IntArray
    stage_proba: FloatArray
    stage_confidence: FloatArray
    visited: BoolArray
    stage_cost: FloatArray
    cost_unit: str = "stage calls"
    cost_report: CostReport | None = None

    def __post_init__(self) -> None:
        """Copy every array and make it read-only."""
        for name in (
            "classes",
            "labels",
            "proba",
            "exit_stage",
            "stage_proba",
            "stage_confidence",
            "visited",
            "stage_cost",
        ):
            array = np.array(getattr(self, name))  # a private copy, then frozen
            array.flags.writeable = False
            object.__setattr__(self, name, array)

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
        """Mean cost per sample: each stage's cost times the share of samples it processed."""
        if self.n_samples == 0:
            return 0.0
        return float(self.stage_calls @ self.stage_cost) / self.n_samples

    @property
    def cost_ratio_all(self) -> float:
        """``mean_cost`` over the cost of running every stage on every sample."""
        return self.mean_cost / float(self.stage_cost.sum())

    @property
    def cost_ratio_last(self) -> float:
        """``mean_cost`` over the cost of running only the last stage."""
        return self.mean_cost / float(self.stage_cost[-1])

    @property
    def calls_saved(self) -> float:
        """Share of stage calls saved against running every stage on every sample."""
        if self.n_samples == 0:
            return 0.0
        return 1.0 - float(self.visited.sum()) / (self.n_stages * self.n_samples)

    def visited_proba(self, index: int) -> dict[str, ProbaArray]:
        """The probabilities of each stage that sample ``index`` visited, by stage name."""
        return {
            name: self.stage_proba[s, index]
            for s, name in enumerate(self.stage_names)
            if self.visited[s, index]
        }
