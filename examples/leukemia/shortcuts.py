"""The run's shortcut audit: what do the backbones and cascades read besides the cells?

:func:`shortcut_audit` trains the colour baseline (:mod:`.audit`) under every
preprocessing variant, runs every backbone on the test split under every variant, and
replays the tuned cascades on those probabilities. The result, :class:`ShortcutAudit`, is
``shortcut_audit`` in ``metrics.json`` and three sections of the report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from cascademl import CascadeClassifier
from cascademl.metrics import ClassificationMetrics
from cascademl.torch_stage import TorchStage

from . import audit
from .data import SCALE_BAR_FRACTION, SplitManifest
from .predict import images_to_tensor
from .presets import Preset

__all__ = ["RULE_ROW", "ShortcutAudit", "shortcut_audit"]

logger = logging.getLogger(__name__)

#: How the shortcut table names each configuration of the cascade.
RULE_ROW: Final = {
    "accuracy": "Cascade, paper's order",
    "cost": "Cascade, cheapest first",
    "selected": "Cascade, stage selection",
}


@dataclass(frozen=True)
class ShortcutAudit:
    """The shortcut audit of one run.

    Attributes:
        trained_variant: The preprocessing the backbones were trained on.
        mask_bottom: Share of the rows masked by the masked variants.
        colour_baseline: The colour baseline under each variant.
        test_accuracy: ``{model: {variant: test accuracy}}``.
        exits_per_class: ``{cascade row: {stage: {class: test samples it ended}}}``.
        n_test: Test images.
        seconds: Wall time of the audit.
        test_predictions: Per-sample test labels of every cascade configuration (by
            ordering rule) and of the colour baseline, for summaries over seeds.
    """

    trained_variant: str
    mask_bottom: float
    colour_baseline: Mapping[str, audit.BaselineResult]
    test_accuracy: Mapping[str, Mapping[str, float]]
    exits_per_class: Mapping[str, Mapping[str, Mapping[str, int]]]
    n_test: int
    seconds: float
    test_predictions: Mapping[str, list[str]]

    @property
    def baseline_metrics(self) -> ClassificationMetrics:
        """The colour baseline's test metrics under the backbones' preprocessing."""
        return self.colour_baseline[self.trained_variant].test

    def to_json(self) -> dict[str, Any]:
        """The ``shortcut_audit`` entry of ``metrics.json``."""
        return {
            "trained_variant": self.trained_variant,
            "mask_bottom": self.mask_bottom,
            "colour_baseline": {name: r.as_dict() for name, r in self.colour_baseline.items()},
            "test_accuracy": {name: dict(row) for name, row in self.test_accuracy.items()},
            "exits_per_class": {
                name: {stage: dict(counts) for stage, counts in exits.items()}
                for name, exits in self.exits_per_class.items()
            },
            "n_test": self.n_test,
            "seconds": self.seconds,
        }

    def report_sections(self) -> dict[str, str]:
        """The report's sections of the audit."""
        trained = self.trained_variant
        mask = f"{self.mask_bottom:.1%}"
        return {
            "Shortcut audit: the model that sees no cell": (
                "Colour statistics of the whole image (per-channel mean, standard deviation "
                "and 8-bin histogram: 30 numbers, no shape, no cell) into a gradient-boosted "
                "tree, trained on this run's training split and tested on its test split, "
                "under each preprocessing:\n\n"
                + audit.baseline_markdown(self.colour_baseline, trained)
                + f"\n\n\\* the backbones' preprocessing. Masked: the bottom {mask} of the "
                "rows (where the scale bars sit) filled with one constant."
            ),
            "Shortcut table: test accuracy under each preprocessing": (
                "Backbones and cascades trained on the starred preprocessing, tested on the "
                "same test images changed at test time only (thresholds as tuned on "
                "validation); the colour baseline trained and tested under each "
                f"preprocessing. {self.n_test} test images: one image is "
                f"{1 / max(self.n_test, 1):.2%}.\n\n"
                + audit.shortcut_markdown(self.test_accuracy, trained)
                + "\n\n"
                + audit.CLAIMS
            ),
            "Samples ended per stage and class (test)": "\n\n".join(
                f"{name}:\n\n{audit.exits_markdown(exits)}"
                for name, exits in self.exits_per_class.items()
            ),
        }


def shortcut_audit(
    preset: Preset,
    manifest: SplitManifest,
    out: Path,
    *,
    stages: list[tuple[str, TorchStage]],
    test_proba: Mapping[str, np.ndarray[Any, Any]],
    cascades: Mapping[str, CascadeClassifier],
    y_test: np.ndarray[Any, Any],
    classes: np.ndarray[Any, Any],
) -> ShortcutAudit:
    """The colour baseline per variant, every model under every test-time variant, exits.

    The backbones run once more on the test split per variant other than their own; the
    cascades are replayed on those probabilities (:func:`.audit.route_cached`), with the
    thresholds tuned on the (unchanged) validation split.
    """
    tic = time.perf_counter()
    original, normalized = audit.load_original_and_normalized(manifest, preset, out / "cache")
    baseline = audit.baseline_per_variant(original, normalized, manifest, preset)
    trained = audit.trained_variant(
        stain_normalize=preset.stain_normalize, mask_bottom=preset.mask_bottom
    ).name
    proba: dict[str, Mapping[str, np.ndarray[Any, Any]]] = {}
    for variant in audit.VARIANTS:
        if variant.name == trained:
            proba[variant.name] = test_proba
            continue
        x_variant = images_to_tensor(
            audit.apply_variant(
                variant,
                original=original.subset(manifest, "test"),
                normalized=normalized.subset(manifest, "test"),
                mask_bottom=preset.mask_bottom,
            )
        )
        proba[variant.name] = {name: stage.predict_proba(x_variant) for name, stage in stages}
    rows = {RULE_ROW[rule]: cascade for rule, cascade in cascades.items()}
    table = audit.shortcut_table(proba, rows, y_test, classes, baseline)
    routed = {rule: audit.route_cached(c, test_proba) for rule, c in cascades.items()}
    predictions = {rule: [str(v) for v in r.labels] for rule, r in routed.items()}
    predictions[audit.BASELINE_NAME] = [str(v) for v in baseline[trained].test_labels]
    exits = {
        RULE_ROW[rule]: audit.exits_per_class(r, y_test, classes) for rule, r in routed.items()
    }
    result = ShortcutAudit(
        trained_variant=trained,
        mask_bottom=preset.mask_bottom or SCALE_BAR_FRACTION,
        colour_baseline=baseline,
        test_accuracy=table,
        exits_per_class=exits,
        n_test=len(y_test),
        seconds=time.perf_counter() - tic,
        test_predictions=predictions,
    )
    logger.info("shortcut audit: %.1f s", result.seconds)
    return result
