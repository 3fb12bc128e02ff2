"""The results of one run as typed objects, and their ``metrics.json`` form.

:func:`.experiment.run_experiment` passes each stage's typed result to the next and
gathers them into one :class:`ExperimentResults`; :meth:`ExperimentResults.to_json` is
``metrics.json`` (the same keys and structure as the files of earlier releases, which
:mod:`.seeds` and the benchmarks read), and the report is written from the typed fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cascademl.metrics import ClassificationMetrics, McNemarResult

from .backbones import BackboneTraining
from .certification import CertifiedResult
from .data import DatasetScan
from .ordering import OrderResult, TunedOrder
from .predict import metrics_json
from .presets import Preset
from .shortcuts import ShortcutAudit

__all__ = ["CostSummary", "ExperimentResults", "ExperimentSummary"]

#: The cascade's name in the test metrics.
CASCADE: str = "Cascade"


@dataclass(frozen=True)
class ExperimentSummary:
    """The headline numbers of one run (the rest is in ``metrics.json``).

    Attributes:
        out: The results folder.
        order: Stage names in cascade order.
        thresholds: The tuned thresholds, one per non-final stage.
        test_accuracy: The cascade's test accuracy.
        test_mcc: The cascade's test MCC.
        best_single: Name and test accuracy of the best backbone alone.
        cost_ratio_all: The cascade's mean FLOPs per test image over all five backbones'.
        seconds: Wall time of the whole run.
    """

    out: Path
    order: tuple[str, ...]
    thresholds: tuple[float, ...]
    test_accuracy: float
    test_mcc: float
    best_single: tuple[str, float]
    cost_ratio_all: float
    seconds: float


@dataclass(frozen=True)
class CostSummary:
    """What the backbones and the tuned cascade cost on the test split.

    Attributes:
        flops_per_image: ``{backbone: FLOPs per image}``.
        latency_per_image_s: ``{backbone: seconds per image}`` (measured).
        cascade_mean_flops: The cascade's mean FLOPs per test image.
        cascade_flops_ratio_all: That over the FLOPs of all the backbones trained (also
            when the cascade keeps only some).
        cascade_flops_ratio_last: That over the FLOPs of the cascade's last stage alone.
        cascade_wall_seconds_per_image: The cascade's measured wall time per test image.
        table: The cost table (:meth:`cascademl.cost.CostReport.to_table`).
    """

    flops_per_image: Mapping[str, float]
    latency_per_image_s: Mapping[str, float]
    cascade_mean_flops: float
    cascade_flops_ratio_all: float
    cascade_flops_ratio_last: float
    cascade_wall_seconds_per_image: float
    table: str

    def to_json(self) -> dict[str, Any]:
        """The ``cost`` entry of ``metrics.json``."""
        return {
            "flops_per_image": dict(self.flops_per_image),
            "latency_per_image_s": dict(self.latency_per_image_s),
            "cascade_mean_flops": self.cascade_mean_flops,
            "cascade_flops_ratio_all": self.cascade_flops_ratio_all,
            "cascade_flops_ratio_last": self.cascade_flops_ratio_last,
            "cascade_wall_seconds_per_image": self.cascade_wall_seconds_per_image,
            "table": self.table,
        }


@dataclass(frozen=True)
class ExperimentResults:
    """Everything one run found: what ``metrics.json`` and ``report.md`` hold.

    Attributes:
        preset: The settings.
        device: The torch device the run used.
        processes: The number of training processes, or ``None`` for a single one.
        classes: The class names, in label order.
        split_counts: ``{split: {class: images}}``.
        scan: What the dataset scan found, or ``None`` when the split was reused.
        stain_fallbacks: ``{path: reason}`` of images kept without stain normalization.
        training: Per backbone, how its training went.
        histories: Per backbone, its metrics per epoch.
        val_accuracy: Per backbone, its validation accuracy.
        order_rule: The ordering rule of the primary cascade.
        tuned: The primary cascade: its order and thresholds, tuned on validation.
        order: The primary cascade's stage names, in order.
        alternatives: The other ordering rules' cascades, tested, by rule.
        test: Test metrics of the cascade, every backbone and the colour baseline.
        ensemble_accuracy: Test accuracy of the average of all the backbones.
        mcnemar: McNemar's test of the cascade against each backbone, on test.
        exit_counts: ``{stage: test samples it ended}`` of the primary cascade.
        cost: What the backbones and the cascade cost.
        shortcuts: The shortcut audit.
        seconds: Wall time of the run.
        time_budget: The time budget's plan and what it took (:mod:`.budget`), or ``None``
            for a run with the preset's fixed epochs.
        order_choice: Which ordering rule was asked (``"recommended"`` by default) and
            saved, with every rule's validation score.
        certification: The certificates asked for (``--certify``), with their test numbers.
    """

    preset: Preset
    device: str
    processes: int | None
    classes: tuple[str, ...]
    split_counts: Mapping[str, Mapping[str, int]]
    scan: DatasetScan | None
    stain_fallbacks: Mapping[str, str]
    training: Mapping[str, BackboneTraining]
    histories: Mapping[str, list[dict[str, float]]]
    val_accuracy: Mapping[str, float]
    order_rule: str
    tuned: TunedOrder
    order: tuple[str, ...]
    alternatives: Mapping[str, OrderResult]
    test: Mapping[str, ClassificationMetrics]
    ensemble_accuracy: float
    mcnemar: Mapping[str, McNemarResult]
    exit_counts: Mapping[str, int]
    cost: CostSummary
    shortcuts: ShortcutAudit
    seconds: float
    time_budget: Mapping[str, Any] | None = None
    order_choice: Mapping[str, Any] | None = None
    certification: tuple[CertifiedResult, ...] = ()

    @property
    def thresholds(self) -> tuple[float, ...]:
        """The primary cascade's tuned thresholds."""
        return tuple(self.tuned.tuning.thresholds)

    @property
    def cascade(self) -> ClassificationMetrics:
        """The primary cascade's test metrics."""
        return self.test[CASCADE]

    @property
    def best_backbone(self) -> str:
        """The backbone with the best test accuracy alone (the first one of a tie)."""
        return max(self.val_accuracy, key=lambda name: self.test[name].accuracy)

    def summary(self, out: Path) -> ExperimentSummary:
        """The headline numbers, for a run written into ``out``."""
        best = self.best_backbone
        return ExperimentSummary(
            out=out,
            order=self.order,
            thresholds=self.thresholds,
            test_accuracy=self.cascade.accuracy,
            test_mcc=self.cascade.mcc,
            best_single=(best, self.test[best].accuracy),
            cost_ratio_all=self.cost.cascade_flops_ratio_all,
            seconds=self.seconds,
        )

    def to_json(self) -> dict[str, Any]:
        """The content of ``metrics.json``, as earlier releases wrote it."""
        scan = self.scan
        return {
            "preset": asdict(self.preset),
            "device": self.device,
            # Only with several processes, so that a single-process run's file is as before.
            **({"processes": self.processes} if self.processes is not None else {}),
            "split_counts": {k: dict(v) for k, v in self.split_counts.items()},
            "skipped": [asdict(s) for s in scan.skipped] if scan is not None else [],
            "exact_duplicate_groups": (
                [list(g) for g in scan.duplicates] if scan is not None else []
            ),
            "stain_fallbacks": dict(self.stain_fallbacks),
            "training": {name: t.to_json() for name, t in self.training.items()},
            "histories": dict(self.histories),
            "val_accuracy": dict(self.val_accuracy),
            "order": list(self.order),
            "order_rule": self.order_rule,
            "alternatives": {rule: alt.to_json() for rule, alt in self.alternatives.items()},
            "thresholds": list(self.thresholds),
            "tuning": self.tuned.to_json(),
            "test": {name: metrics_json(m) for name, m in self.test.items()},
            "ensemble_all_five_test_accuracy": self.ensemble_accuracy,
            "mcnemar_cascade_vs": {name: asdict(m) for name, m in self.mcnemar.items()},
            "exit_counts": dict(self.exit_counts),
            "cost": self.cost.to_json(),
            "shortcut_audit": self.shortcuts.to_json(),
            # Per-sample test labels of every cascade configuration, for summaries over seeds.
            "test_predictions": dict(self.shortcuts.test_predictions),
            **({"order_choice": dict(self.order_choice)} if self.order_choice else {}),
            **(
                {"certification": [r.to_json() for r in self.certification]}
                if self.certification
                else {}
            ),
            "seconds": self.seconds,
            # Only with a time budget, so that a fixed run's file is as before.
            **({"time_budget": dict(self.time_budget)} if self.time_budget is not None else {}),
        }
