"""The experiment: split, stain-normalize, train the backbones, build, tune and test the cascade.

Everything about the cascade itself goes through cascademl's public API
(`TorchStage`, `CascadeClassifier`, `cascademl.tuning`, `cascademl.cost`,
`cascademl.metrics`, `cascademl.io`); this module only wires the example's data and training
layers to it and writes the results folder.

Layout of the results folder ``OUT``::

    OUT/split.csv                  the grouped 80/10/10 split (reused by later runs)
    OUT/cache/                     stain-normalized images (reused by later runs)
    OUT/models/<timm name>/        checkpoint.pt (every epoch), best.pt, history.json
    OUT/cascade/                   the saved cascade + leukemia.json (stain reference)
    OUT/figures/*.png              training curves, confusion matrices, bars, frontier
    OUT/metrics.json               every number of the report
    OUT/probabilities.npz          every backbone's probabilities on validation and test
    OUT/report.md                  the paper's Table 1 and the rest
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple

import numpy as np
import torch

from cascademl import CascadeClassifier, _files
from cascademl.cost import CostReport, StageCost, measure_stage_cost
from cascademl.inference import resolve_device
from cascademl.metrics import ClassificationMetrics, classification_metrics, mcnemar_test
from cascademl.torch_stage import TorchStage

from . import audit, distributed, report
from .backbones import (
    _backbone_probabilities,
    _train_all,
    check_pretrained_weights,
    warn_if_slow_precision,
)
from .data import (
    SCALE_BAR_FRACTION,
    DatasetScan,
    LeukemiaDataError,
    SplitManifest,
    mask_bottom_strip,
    prepare_split,
)
from .ordering import ORDER_RULES, _alternative_order, _order_and_tune
from .predict import _metrics_json, _save_model, images_to_tensor
from .presets import Preset
from .runlock import lock_output, releases_output_locks
from .sections import _report_sections, _write_figures
from .training import (
    check_batch_size,
)
from .transforms import (
    NormalizedImages,
    StainNormalizer,
    fit_stain_normalizer,
    load_images,
)

__all__ = [
    "ExperimentSummary",
    "masked_images",
    "run_experiment",
]

logger = logging.getLogger(__name__)


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


def masked_images(images: NormalizedImages, fraction: float) -> NormalizedImages:
    """Return the images with the bottom ``fraction`` of their rows masked (the scale bar).

    Applied in memory after the cache, so one cache serves runs with and without the mask.
    """
    if not fraction:
        return images
    return NormalizedImages(
        mask_bottom_strip(images.images, fraction), images.paths, images.fallbacks
    )


class _Shortcuts(NamedTuple):
    """What :func:`_shortcut_audit` adds to the run's results."""

    payload: dict[str, Any]
    baseline_metrics: ClassificationMetrics
    test_predictions: dict[str, list[str]]


#: How the shortcut table names each configuration of the cascade.
_RULE_ROW: Final = {
    "accuracy": "Cascade, paper's order",
    "cost": "Cascade, cheapest first",
    "selected": "Cascade, stage selection",
}


def _shortcut_audit(
    preset: Preset,
    manifest: SplitManifest,
    out: Path,
    *,
    stages: list[tuple[str, TorchStage]],
    test_proba: Mapping[str, np.ndarray[Any, Any]],
    cascades: Mapping[str, CascadeClassifier],
    y_test: np.ndarray[Any, Any],
    classes: np.ndarray[Any, Any],
) -> _Shortcuts:
    """The colour baseline per variant, every model under every test-time variant, exits.

    The backbones run once more on the test split per variant other than their own; the
    cascades are replayed on those probabilities (:func:`audit.route_cached`), with the
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
    rows = {_RULE_ROW[rule]: cascade for rule, cascade in cascades.items()}
    table = audit.shortcut_table(proba, rows, y_test, classes, baseline)
    routed = {rule: audit.route_cached(c, test_proba) for rule, c in cascades.items()}
    predictions = {rule: [str(v) for v in r.labels] for rule, r in routed.items()}
    predictions[audit.BASELINE_NAME] = [str(v) for v in baseline[trained].test_labels]
    payload = {
        "trained_variant": trained,
        "mask_bottom": preset.mask_bottom or SCALE_BAR_FRACTION,
        "colour_baseline": {name: r.as_dict() for name, r in baseline.items()},
        "test_accuracy": table,
        "exits_per_class": {
            _RULE_ROW[rule]: audit.exits_per_class(r, y_test, classes) for rule, r in routed.items()
        },
        "n_test": len(y_test),
        "seconds": time.perf_counter() - tic,
    }
    logger.info("shortcut audit: %.1f s", payload["seconds"])
    return _Shortcuts(payload, baseline[trained].test, predictions)


def _predict_labels(
    proba: np.ndarray[Any, Any], classes: np.ndarray[Any, Any]
) -> np.ndarray[Any, Any]:
    labels: np.ndarray[Any, Any] = classes[np.argmax(proba, axis=1)]
    return labels


@releases_output_locks
def run_experiment(
    data_root: str | Path,
    preset: Preset,
    out: str | Path,
    *,
    device: str = "cpu",
    skip_bad: bool = False,
    checkpoints: Mapping[str, str] | None = None,
    allow_download: bool = False,
    max_cost_ratio: float = 0.35,
    order: str = "accuracy",
    scoring: str = "neg_log_loss",
    progress: bool = False,
) -> ExperimentSummary:
    """Run the paper's experiment end to end and write the results folder.

    Steps: a grouped, stratified 80/10/10 split (saved as ``split.csv`` and reused);
    Macenko stain normalization fitted on training images only and applied to every
    split (cached); each backbone trained with class-weighted cross-entropy, early stopping
    on validation accuracy and a checkpoint every epoch (a rerun resumes); every backbone
    evaluated on validation and test; the stages ordered by validation accuracy, least
    accurate first, as in the paper (``order="cost"``: cheapest first); the thresholds tuned
    on the validation split for the best ``scoring`` under a mean cost of at most
    ``max_cost_ratio`` times running every backbone; the cascade evaluated on the test split.

    The default ``scoring="neg_log_loss"`` tunes for the validation log-loss of the
    cascade's combined probabilities rather than its accuracy. With a few hundred
    validation images and accurate stages, many thresholds tie on accuracy and the tie goes
    to the cheapest, which lets a weak early stage end samples it only got right by luck;
    the log-loss still separates them by how confident the right answers are. In 5 x 2-fold
    cross-validation within the validation split of the ``cpu`` run at ``d1671dd``
    (``benchmarks/leukemia_tuning_cv.py``), thresholds tuned for the log-loss scored 96.43%
    on the held-out halves against 94.76% for thresholds tuned for accuracy.

    Args:
        data_root: The dataset folder (class folders, or their ``Original/`` parent).
        preset: The settings.
        out: The results folder.
        device: Torch device for training and inference (``"auto"``: CUDA when present);
            an absent device raises :class:`cascademl.DeviceUnavailableError` at once.
        skip_bad: Skip unreadable images (listed in the report) instead of failing.
        checkpoints: ``{backbone: local weights file}`` for pretrained weights offline
            (timm name or display name, any case).
        allow_download: Let timm download ImageNet weights that are neither in
            ``checkpoints`` nor cached. Without it a preset with ``pretrained=True`` stops
            before any work when a backbone's weights are missing (see
            :func:`check_pretrained_weights`).
        max_cost_ratio: Cost budget of the tuned cascade, as a share of all backbones.
        order: ``"accuracy"`` (the paper) or ``"cost"``.
        scoring: What the thresholds maximise on validation: a scikit-learn scorer name
            (``"neg_log_loss"``, ``"accuracy"``, ``"balanced_accuracy"``...).
        progress: Show progress bars.

    Returns:
        The headline numbers.
    """
    started = time.perf_counter()
    ranks = distributed.current()
    # Before any work: an absent GPU or missing weights must not cost an hour first.
    device = str(resolve_device(device))  # also resolves "auto"
    weights = check_pretrained_weights(preset, checkpoints or {}, allow_download=allow_download)
    if ranks.main:
        warn_if_slow_precision(preset, device)
    for spec in preset.backbones:
        check_batch_size(spec.batch_size, ranks.world_size, name=f"{spec.timm_name}.batch_size")
    out = _claim_output(data_root, out, lock=ranks.main)
    figures = out / "figures"
    torch.manual_seed(preset.seed)

    # ---------------------------------------------------------------- data
    manifest, scan, normalizer, stain, images = _prepare_data(
        data_root, preset, out, skip_bad=skip_bad
    )
    classes = np.array(manifest.classes)
    y = {split: classes[manifest.targets(split)] for split in ("val", "test")}
    x = {split: images_to_tensor(images.subset(manifest, split)) for split in ("val", "test")}
    logger.info("split: %s", manifest.counts())

    # ---------------------------------------------------------------- training
    stages, histories, training = _train_all(
        preset,
        manifest,
        images,
        out,
        stain=stain,
        device=device,
        checkpoints=weights,
        allow_download=allow_download,
        progress=progress,
    )
    if not ranks.main:  # rank 0 alone tunes, tests and writes; this rank takes its summary
        return distributed.share(None, ExperimentSummary)

    # ---------------------------------------------------------------- every backbone
    names = [name for name, _ in stages]
    val_proba, test_proba = _backbone_probabilities(stages, x, y, classes, out)
    costs: list[StageCost] = [
        measure_stage_cost(stage, x["test"][:1], name=name, repeats=3) for name, stage in stages
    ]
    flops = [c.flops_per_sample for c in costs]
    val_acc = [float(np.mean(_predict_labels(p, classes) == y["val"])) for p in val_proba]

    # ---------------------------------------------------------------- order and tune
    rules = (order, *(rule for rule in ORDER_RULES if rule != order))
    tuned = {
        rule: _order_and_tune(
            stages,
            val_proba,
            flops,
            x_val=x["val"],
            y_val=y["val"],
            classes=classes,
            order=rule,
            max_cost_ratio=max_cost_ratio,
            scoring=scoring,
        )
        for rule in rules
    }
    chosen = tuned[order]
    tuning = chosen.tuning

    # ---------------------------------------------------------------- test
    tic = time.perf_counter()
    routed = chosen.cascade.route(x["test"])
    wall = time.perf_counter() - tic
    ordered_costs = [costs[i] for i in chosen.ordering]
    cost_report = CostReport.from_result(routed, ordered_costs, wall_time=wall)

    # ---------------------------------------------------------------- shortcut audit
    shortcuts = _shortcut_audit(
        preset,
        manifest,
        out,
        stages=stages,
        test_proba=dict(zip(names, test_proba, strict=True)),
        cascades={rule: tuned[rule].cascade for rule in rules},
        y_test=y["test"],
        classes=classes,
    )

    predictions = {"Cascade": routed.labels}
    for name, proba in zip(names, test_proba, strict=True):
        predictions[name] = _predict_labels(proba, classes)
    metrics: dict[str, ClassificationMetrics] = {
        **{
            name: classification_metrics(y["test"], pred, classes=classes)
            for name, pred in predictions.items()
        },
        audit.BASELINE_NAME: shortcuts.baseline_metrics,
    }
    ensemble_metrics = classification_metrics(
        y["test"], _predict_labels(test_proba.mean(axis=0), classes), classes=classes, n_bootstrap=0
    )
    mcnemar = {
        name: asdict(mcnemar_test(y["test"], routed.labels, predictions[name], classes=classes))
        for name in names
    }
    best_name = max(names, key=lambda n: metrics[n].accuracy)
    alternatives = {
        rule: _alternative_order(
            stages,
            costs,
            tuned[rule],
            rule=rule,
            x_test=x["test"],
            y_test=y["test"],
            classes=classes,
        )
        for rule in rules[1:]
    }

    # ---------------------------------------------------------------- save
    settings = {
        "classes": list(manifest.classes),
        "cache_size": preset.cache_size,
        "stain_normalizer": normalizer.to_dict() if normalizer is not None else None,
        "mask_bottom": preset.mask_bottom,
        "preset": preset.name,
    }
    _save_model(chosen.cascade, settings, out / "cascade")

    # ---------------------------------------------------------------- report
    references = {f"{name} alone": (flops[i], val_acc[i]) for i, name in enumerate(names)}
    references["all backbones (vote)"] = (
        float(sum(flops)),
        float(np.mean(_predict_labels(val_proba.mean(axis=0), classes) == y["val"])),
    )
    figure_files = _write_figures(
        figures,
        histories=histories,
        metrics=metrics,
        class_names=list(manifest.classes),
        tuned=chosen,
        references=references,
    )

    seconds = time.perf_counter() - started
    payload: dict[str, Any] = {
        "preset": asdict(preset),
        "device": device,
        # Only with several processes, so that a single-process run's file is as before.
        **({"processes": ranks.world_size} if ranks.distributed else {}),
        "split_counts": manifest.counts(),
        "skipped": [asdict(s) for s in scan.skipped] if scan is not None else [],
        "exact_duplicate_groups": [list(g) for g in scan.duplicates] if scan is not None else [],
        "stain_fallbacks": dict(images.fallbacks),
        "training": training,
        "histories": histories,
        "val_accuracy": dict(zip(names, val_acc, strict=True)),
        "order": [names[i] for i in chosen.ordering],
        "order_rule": order,
        "alternatives": alternatives,
        "thresholds": list(tuning.thresholds),
        "tuning": {
            "objective": tuning.objective,
            "scoring": tuning.scoring,
            "budget_flops": chosen.budget,
            "val_score": tuning.score,
            "val_accuracy": chosen.val_accuracy,
            "val_mean_flops": tuning.mean_cost,
            "frontier": [
                {**asdict(p), "accuracy": acc}
                for p, (_, acc) in zip(tuning.frontier, chosen.frontier, strict=True)
            ],
        },
        "test": {name: _metrics_json(m) for name, m in metrics.items()},
        "ensemble_all_five_test_accuracy": ensemble_metrics.accuracy,
        "mcnemar_cascade_vs": mcnemar,
        "exit_counts": dict(zip(routed.stage_names, routed.exit_counts.tolist(), strict=True)),
        "cost": {
            "flops_per_image": dict(zip(names, flops, strict=True)),
            "latency_per_image_s": {c.name: c.latency_per_sample for c in costs},
            "cascade_mean_flops": cost_report.mean_flops,
            # Against all the backbones trained, also when the cascade keeps only some.
            "cascade_flops_ratio_all": cost_report.mean_flops / sum(flops),
            "cascade_flops_ratio_last": cost_report.flops_ratio_last,
            "cascade_wall_seconds_per_image": wall / max(routed.n_samples, 1),
            "table": cost_report.to_table(),
        },
        "shortcut_audit": shortcuts.payload,
        # Per-sample test labels of every cascade configuration, for summaries over seeds.
        "test_predictions": shortcuts.test_predictions,
        "seconds": seconds,
    }
    _files.write_text(out / "metrics.json", json.dumps(payload, indent=2, default=str))
    sections = {
        **_report_sections(payload, manifest, scan, best_name, metrics),
        **audit.report_sections(payload["shortcut_audit"]),
    }
    report.write_markdown_report(
        out / "report.md",
        metrics,
        list(manifest.classes),
        title=f"Leukemia cascade: results ({preset.name} preset)",
        sections=sections,
        figures=figure_files,
    )
    return distributed.share(
        ExperimentSummary(
            out=out,
            order=tuple(payload["order"]),
            thresholds=tuple(tuning.thresholds),
            test_accuracy=metrics["Cascade"].accuracy,
            test_mcc=metrics["Cascade"].mcc,
            best_single=(best_name, metrics[best_name].accuracy),
            cost_ratio_all=payload["cost"]["cascade_flops_ratio_all"],
            seconds=seconds,
        ),
        ExperimentSummary,
    )


class _Data(NamedTuple):
    """The split, its scan (``None`` when reused), the stain normalizer and the images."""

    manifest: SplitManifest
    scan: DatasetScan | None
    normalizer: StainNormalizer | None
    stain: str
    images: NormalizedImages


def _prepare_data(data_root: str | Path, preset: Preset, out: Path, *, skip_bad: bool) -> _Data:
    """Split (or reuse ``split.csv``), fit the stain reference, load the images (cached).

    With several processes rank 0 writes the split and the cache and fits the stain
    reference, which it sends to the others; they then read the split and the cache.
    """
    ranks = distributed.current()
    with distributed.main_first():
        if not ranks.main:
            distributed.readable(out / "split.csv")
        manifest, scan = prepare_split(
            data_root,
            out / "split.csv",
            skip_bad=skip_bad,
            seed=preset.seed,
            near_threshold=preset.near_threshold,
            block_size=preset.group_block,
            max_per_class=preset.max_images_per_class,
        )
    normalizer = distributed.broadcast(
        fit_stain_normalizer(manifest, size=preset.cache_size, seed=preset.seed)
        if preset.stain_normalize and ranks.main
        else None
    )
    stain = normalizer.fingerprint() if normalizer is not None else "none"
    with distributed.main_first():
        images = masked_images(
            load_images(
                manifest,
                size=preset.cache_size,
                normalizer=normalizer,
                cache_dir=out / "cache",
                write_cache=ranks.main,
            ),
            preset.mask_bottom,
        )
    return _Data(manifest, scan, normalizer, stain, images)


def _claim_output(data_root: str | Path, out: str | Path, *, lock: bool = True) -> Path:
    """Check the dataset root exists, then lock ``out`` (created) for this run.

    With ``lock=False`` (the ranks other than 0 of a multi-process run, which only read
    what rank 0 writes) the folder is neither created nor locked.

    Raises:
        LeukemiaDataError: When ``data_root`` is not a folder (nothing is written then).
        OutputFolderBusyError: When another run holds ``out``; the message names it.
    """
    if not Path(data_root).is_dir():
        msg = f"dataset root {data_root} is not a folder"
        raise LeukemiaDataError(msg)
    if lock:
        lock_output(out)  # held until run_experiment returns
    return Path(out)
