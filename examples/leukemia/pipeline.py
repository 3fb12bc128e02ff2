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
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple

import numpy as np
import torch
from PIL import Image

from cascademl import CascadeClassifier, ConfidencePolicy, _files
from cascademl.cost import CostReport, StageCost, measure_stage_cost
from cascademl.inference import resolve_device, resolve_precision
from cascademl.io import load_cascade, save_cascade
from cascademl.metrics import ClassificationMetrics, classification_metrics, mcnemar_test
from cascademl.torch_stage import TorchStage
from cascademl.tuning import (
    TuningResult,
    apply_tuning,
    order_by_accuracy,
    score_thresholds,
    search_orders_from_proba,
    stage_probabilities,
)

from . import audit, distributed, report
from .data import (
    CLASS_NAMES,
    SCALE_BAR_FRACTION,
    DatasetScan,
    LeukemiaDataError,
    SplitManifest,
    load_rgb,
    mask_bottom_strip,
    prepare_split,
    scan_dataset,
)
from .mapping import folder_classes, parse_class_map
from .presets import BackboneSpec, Preset
from .runlock import lock_output, releases_output_locks
from .training import (
    PretrainedWeightsUnavailableError,
    TrainResult,
    check_batch_size,
    class_weights,
    create_backbone,
    pretrained_available,
    train_model,
    ways_out,
)
from .transforms import (
    ImageArrayDataset,
    NormalizedImages,
    StainNormalizer,
    build_augmentation,
    fit_stain_normalizer,
    load_images,
    preprocessing_for,
    to_array,
)

__all__ = [
    "ExperimentSummary",
    "check_pretrained_weights",
    "images_to_tensor",
    "load_predictor",
    "prepare_image",
    "read_images",
    "run_experiment",
]

logger = logging.getLogger(__name__)

#: Name of the example's own settings file inside a saved cascade folder.
SETTINGS_FILE = "leukemia.json"
#: Every backbone's probabilities on validation and test, for re-tuning without the models.
PROBABILITIES_FILE = "probabilities.npz"


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


def images_to_tensor(images: np.ndarray[Any, Any]) -> torch.Tensor:
    """Turn uint8 images of shape (n, h, w, 3) into the (n, 3, h, w) tensor stages take."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def masked_images(images: NormalizedImages, fraction: float) -> NormalizedImages:
    """Return the images with the bottom ``fraction`` of their rows masked (the scale bar).

    Applied in memory after the cache, so one cache serves runs with and without the mask.
    """
    if not fraction:
        return images
    return NormalizedImages(
        mask_bottom_strip(images.images, fraction), images.paths, images.fallbacks
    )


def warn_if_slow_precision(preset: Preset, device: str) -> bool:
    """Warn when a preset sized for native bfloat16 will train in float32 on a CPU.

    Args:
        preset: The settings.
        device: The resolved torch device.

    Returns:
        Whether it warned.
    """
    if not preset.sized_for_bf16 or torch.device(device).type != "cpu":
        return False
    choice = resolve_precision(preset.precision, torch.device(device))
    if choice.precision == "bf16":
        return False
    logger.warning(
        "preset %r was sized for a CPU that trains in bfloat16 natively (about 50 min of "
        "training on 2 cores with AMX); this one trains in %s (%s), which took about 169 min "
        "on a 2-core AVX2 CPU. --preset cpu is sized for either kind of CPU.",
        preset.name,
        choice.precision,
        choice.reason,
    )
    return True


def _fingerprint(
    preset: Preset, spec: BackboneSpec, manifest: SplitManifest, stain: str
) -> dict[str, Any]:
    return {
        "model": spec.timm_name,
        # Fields at their default of older versions are left out, so that their runs resume.
        "spec": {k: v for k, v in asdict(spec).items() if not (k == "mlp_ratio" and v is None)},
        "pretrained": preset.pretrained,
        "doubling": preset.doubling,
        "split": manifest.digest(),
        "stain": stain,
        "cache_size": preset.cache_size,
        # Only when on, so that checkpoints of runs from before the mask still resume.
        **({"mask_bottom": preset.mask_bottom} if preset.mask_bottom else {}),
    }


def _train_one(
    spec: BackboneSpec,
    preset: Preset,
    manifest: SplitManifest,
    images: NormalizedImages,
    out: Path,
    *,
    stain: str,
    device: str,
    checkpoints: Mapping[str, str],
    allow_download: bool,
    progress: bool,
) -> TrainResult:
    model = create_backbone(
        spec.timm_name,
        num_classes=len(manifest.classes),
        pretrained=preset.pretrained,
        checkpoint=checkpoints.get(spec.timm_name),
        allow_download=allow_download,
        drop_rate=spec.drop_rate,
        seed=preset.seed,
        **spec.model_kwargs,
    )
    prep = preprocessing_for(model, spec.image_size)
    train_set = ImageArrayDataset(
        images.subset(manifest, "train"),
        manifest.targets("train"),
        prep,
        augment=build_augmentation(),
        double=preset.doubling,
    )
    val_set = ImageArrayDataset(images.subset(manifest, "val"), manifest.targets("val"), prep)
    return train_model(
        model,
        train_set,
        val_set,
        config=preset.train_config(spec),
        out_dir=out / "models" / spec.timm_name,
        weights=class_weights(manifest.targets("train"), len(manifest.classes)),
        device=device,
        fingerprint=_fingerprint(preset, spec, manifest, stain),
        progress=progress,
    )


def _stage(spec: BackboneSpec, model: torch.nn.Module, preset: Preset, device: str) -> TorchStage:
    """Wrap a trained backbone: timm's mean/std, the backbone's own input size."""
    stage = TorchStage.from_timm(
        spec.timm_name,
        num_classes=len(CLASS_NAMES),
        classes=list(CLASS_NAMES),
        input_size=(3, spec.image_size, spec.image_size),
        interpolation="bilinear",
        crop_pct=1.0,
        batch_size=max(spec.batch_size, 64),
        device=device,
        precision=preset.precision,  # validated by TrainConfig and TorchStage
        channels_last=preset.channels_last,
        drop_rate=spec.drop_rate,
        **spec.model_kwargs,
    )
    stage.module_.load_state_dict(model.state_dict())
    stage.module_.eval()
    return stage


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


def _history_dicts(result: TrainResult) -> list[dict[str, float]]:
    return [asdict(epoch) for epoch in result.history]


def _metrics_json(metrics: ClassificationMetrics) -> dict[str, Any]:
    out = metrics.as_dict()
    out["classes"] = [str(c) for c in metrics.classes.tolist()]
    out["precision"] = metrics.precision.tolist()
    out["recall"] = metrics.recall.tolist()
    out["f1"] = metrics.f1.tolist()
    out["confusion_matrix"] = metrics.confusion_matrix.tolist()
    return out


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


def _save_model(cascade: CascadeClassifier, settings: dict[str, Any], folder: Path) -> Path:
    """Save the cascade and its settings file into ``folder`` together, atomically.

    Both are written into a new folder beside ``folder``, which then replaces it in one
    rename: a reader sees the previous model and settings or the new ones, never a mix.
    """
    new = _files.temporary_sibling(folder, "new")
    try:
        save_cascade(cascade, new)
        _files.write_text(new / SETTINGS_FILE, json.dumps(settings, indent=2))
        _files.replace_folder(new, folder)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    return folder


def _backbone_probabilities(
    stages: list[tuple[str, TorchStage]],
    x: Mapping[str, torch.Tensor],
    y: Mapping[str, np.ndarray[Any, Any]],
    classes: np.ndarray[Any, Any],
    out: Path,
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Run every backbone on validation and test once; save to ``OUT/probabilities.npz``.

    The file's keys: ``stages`` (backbone names), ``classes``, ``val`` and ``test``
    (``(n_backbones, n_images, n_classes)`` probabilities, in the backbones' training order),
    ``val_labels`` and ``test_labels``.
    """
    full = CascadeClassifier(stages, policy=ConfidencePolicy(thresholds=0.0)).fit(
        x["val"], y["val"]
    )
    proba = {split: stage_probabilities(full, x[split]) for split in ("val", "test")}
    with _files.atomic_path(out / PROBABILITIES_FILE) as tmp:
        np.savez(
            tmp,
            stages=np.array([name for name, _ in stages]),
            classes=np.array([str(c) for c in classes]),
            val=proba["val"],
            test=proba["test"],
            val_labels=np.array([str(c) for c in y["val"]]),
            test_labels=np.array([str(c) for c in y["test"]]),
        )
    return proba["val"], proba["test"]


def check_pretrained_weights(
    preset: Preset, checkpoints: Mapping[str, str | Path], *, allow_download: bool = False
) -> dict[str, str]:
    """Check, before any work, that every backbone can get the weights it starts from.

    Run at the start of :func:`run_experiment`, so that a missing file or missing ImageNet
    weights stop the run at once rather than after hours of training the other backbones.

    Args:
        preset: The settings; ``preset.pretrained`` says whether weights are needed.
        checkpoints: ``{backbone: local weights file}``; a backbone is named by its timm
            name or display name, in any case.
        allow_download: Whether timm may download the weights not given or cached.

    Returns:
        The checkpoints keyed by timm name, as strings.

    Raises:
        ValueError: A checkpoint names no backbone of the preset, or checkpoints are given
            to a preset that trains from scratch.
        FileNotFoundError: A checkpoint file does not exist.
        PretrainedWeightsUnavailableError: Some backbones have neither a checkpoint nor
            cached weights and ``allow_download`` is off; the message lists all of them
            and the ways out.
    """
    resolved: dict[str, str] = {}
    for key, path in checkpoints.items():
        try:
            name = preset.backbone(str(key)).timm_name
        except KeyError:
            msg = (
                f"--checkpoint {key}=...: {key!r} is not a backbone of the {preset.name!r} "
                f"preset; use one of {', '.join(spec.timm_name for spec in preset.backbones)}"
            )
            raise ValueError(msg) from None
        if not Path(path).is_file():
            msg = f"--checkpoint {key}=...: pretrained checkpoint {path} not found"
            raise FileNotFoundError(msg)
        resolved[name] = str(path)
    if resolved and not preset.pretrained:
        msg = (
            f"--checkpoint given, but the {preset.name!r} preset trains from scratch "
            "(pretrained=false); add --set pretrained=true to start from the checkpoints"
        )
        raise ValueError(msg)
    if preset.pretrained and not allow_download:
        missing = [
            spec.timm_name
            for spec in preset.backbones
            if spec.timm_name not in resolved and not pretrained_available(spec.timm_name)
        ]
        if missing:
            msg = (
                f"ImageNet weights for {', '.join(missing)} are not available offline, and "
                f"the {preset.name!r} preset starts from them. " + ways_out(missing)
            )
            raise PretrainedWeightsUnavailableError(msg)
    return resolved


def _train_all(
    preset: Preset,
    manifest: SplitManifest,
    images: NormalizedImages,
    out: Path,
    *,
    stain: str,
    device: str,
    checkpoints: Mapping[str, str],
    allow_download: bool,
    progress: bool,
) -> tuple[list[tuple[str, TorchStage]], dict[str, list[dict[str, float]]], dict[str, Any]]:
    """Train (or resume, or reuse) every backbone and wrap each as a `TorchStage`."""
    stages: list[tuple[str, TorchStage]] = []
    histories: dict[str, list[dict[str, float]]] = {}
    training: dict[str, Any] = {}
    for spec in preset.backbones:
        logger.info("training %s (%s @ %d px)", spec.name, spec.timm_name, spec.image_size)
        result = _train_one(
            spec,
            preset,
            manifest,
            images,
            out,
            stain=stain,
            device=device,
            checkpoints=checkpoints,
            allow_download=allow_download,
            progress=progress,
        )
        stages.append((spec.name, _stage(spec, result.model, preset, device)))
        histories[spec.name] = _history_dicts(result)
        training[spec.name] = {
            "best_epoch": result.best_epoch,
            "best_val_acc": result.best_val_acc,
            "epochs_run": len(result.history),
            "stopped_early": result.stopped_early,
            "resumed_from": result.resumed_from,
            "train_seconds": float(sum(e.seconds for e in result.history)),
        }
    return stages, histories, training


class _Tuned(NamedTuple):
    """One stage order with its thresholds tuned on validation."""

    ordering: tuple[int, ...]
    budget: float | None
    tuning: TuningResult
    cascade: CascadeClassifier
    #: ``(mean FLOPs, validation accuracy)`` of every point of the tuned frontier.
    frontier: list[tuple[float, float]]

    @property
    def val_accuracy(self) -> float:
        """Validation accuracy of the chosen thresholds (the tuning may score another way)."""
        return self.frontier[self.tuning.chosen_index][1]


#: The ways the stages are ordered: the paper's (least accurate on validation first), the
#: cheapest first, and stage selection (the paper's order, keeping only the stages that pay).
ORDER_RULES: Final = ("accuracy", "cost", "selected")


def _order_and_tune(
    stages: list[tuple[str, TorchStage]],
    val_proba: np.ndarray[Any, Any],
    flops: list[float],
    *,
    x_val: torch.Tensor,
    y_val: np.ndarray[Any, Any],
    classes: np.ndarray[Any, Any],
    order: str,
    max_cost_ratio: float,
    scoring: str,
) -> _Tuned:
    """Order the stages and tune the thresholds on validation probabilities (no test data).

    ``order="selected"`` tunes every sub-sequence of the paper's order (one to all five
    stages, :func:`cascademl.tuning.search_orders_from_proba` with ``orders="subsets"``) and
    keeps the best on validation, so that stages that do not pay within the budget are
    dropped.
    """
    if order in {"accuracy", "selected"}:
        base = order_by_accuracy(val_proba, y_val, classes=classes)
    elif order == "cost":
        base = tuple(int(i) for i in np.argsort(flops, kind="stable"))
    else:
        msg = f"order must be one of {ORDER_RULES}, got {order!r}"
        raise ValueError(msg)
    budget: float | None = max_cost_ratio * float(sum(flops))
    cheapest = min(flops) if order == "selected" else flops[base[0]]
    if budget is not None and budget < cheapest:
        logger.warning(
            "a budget of %.0f%% of all backbones is below the first stage's own cost in this "
            "order; tuning for the best validation score without a budget instead",
            100 * max_cost_ratio,
        )
        budget = None
    search = search_orders_from_proba(
        val_proba[list(base)],
        y_val,
        classes=classes,
        orders="subsets" if order == "selected" else [tuple(range(len(base)))],
        stage_cost=[flops[i] for i in base],
        max_cost=budget,
        scoring=scoring,
        stage_names=[stages[i][0] for i in base],
    )
    tuning = search.best
    ordering = tuple(base[i] for i in tuning.order)
    proba = val_proba[list(ordering)]
    cost = [flops[i] for i in ordering]
    accuracy = [
        score_thresholds(proba, y_val, point.thresholds, classes=classes, stage_cost=cost)
        for point in tuning.frontier
    ]
    based = CascadeClassifier(
        [stages[i] for i in base], policy=ConfidencePolicy(thresholds=0.0)
    ).fit(x_val, y_val)
    return _Tuned(
        ordering,
        budget,
        tuning,
        apply_tuning(based, tuning),
        [(point.mean_cost, point.score) for point in accuracy],
    )


def _alternative_order(
    stages: list[tuple[str, TorchStage]],
    costs: Sequence[StageCost],
    tuned: _Tuned,
    *,
    rule: str,
    x_test: torch.Tensor,
    y_test: np.ndarray[Any, Any],
    classes: np.ndarray[Any, Any],
) -> dict[str, Any]:
    """Evaluate the other stage order on test for the report.

    Only the ordering rule differs; its thresholds were tuned on the validation split alone
    by :func:`_order_and_tune`, as the primary result's were.
    """
    ordering, tuning = tuned.ordering, tuned.tuning
    routed = tuned.cascade.route(x_test)
    test = classification_metrics(y_test, routed.labels, classes=classes, n_bootstrap=0)
    cost = CostReport.from_result(routed, [costs[i] for i in ordering])
    return {
        "rule": rule,
        "order": [stages[i][0] for i in ordering],
        "thresholds": list(tuning.thresholds),
        "budget_flops": tuned.budget,
        "scoring": tuning.scoring,
        "val_score": tuning.score,
        "val_accuracy": tuned.val_accuracy,
        "test_accuracy": test.accuracy,
        "test_mcc": test.mcc,
        "test_kappa": test.kappa,
        "cascade_mean_flops": cost.mean_flops,
        "cascade_flops_ratio_all": cost.mean_flops / sum(c.flops_per_sample for c in costs),
        "exit_counts": dict(zip(routed.stage_names, routed.exit_counts.tolist(), strict=True)),
    }


def _write_figures(
    folder: Path,
    *,
    histories: Mapping[str, list[dict[str, float]]],
    metrics: Mapping[str, ClassificationMetrics],
    class_names: list[str],
    tuned: _Tuned,
    references: Mapping[str, tuple[float, float]],
) -> dict[str, Path]:
    """The paper's figures: curves (8-13), confusion matrices, bars (14-15), the frontier."""
    files: dict[str, Path] = {}
    for name, history in histories.items():
        files[f"Training curves: {name}"] = report.plot_training_curves(
            history, folder / f"curves-{name}.png", title=name
        )
    for name, m in metrics.items():
        files[f"Confusion matrix: {name}"] = report.plot_confusion_matrix(
            m.confusion_matrix, class_names, folder / f"confusion-{name}.png", title=name
        )
    files["Per-class precision, recall and F1"] = report.plot_per_class_bars(
        metrics, class_names, folder / "per-class.png"
    )
    files["Accuracy, kappa, MCC and error rate"] = report.plot_summary_bars(
        metrics, folder / "summary.png"
    )
    giga = 1e9
    files["Accuracy-cost frontier (validation)"] = report.plot_cost_frontier(
        [(cost / giga, accuracy) for cost, accuracy in tuned.frontier],
        folder / "frontier.png",
        chosen=(tuned.tuning.mean_cost / giga, tuned.val_accuracy),
        references={k: (c / giga, a) for k, (c, a) in references.items()},
        cost_label="mean GFLOPs per image (validation)",
    )
    return files


def _report_sections(
    payload: Mapping[str, Any],
    manifest: SplitManifest,
    scan: DatasetScan | None,
    best_name: str,
    metrics: Mapping[str, ClassificationMetrics],
) -> dict[str, str]:
    cascade = metrics["Cascade"]
    low, high = cascade.intervals.get("accuracy", (float("nan"), float("nan")))
    counts = manifest.counts()
    split_lines = [
        "| split | " + " | ".join(manifest.classes) + " | total |",
        "|---|" + "---|" * (len(manifest.classes) + 1),
    ]
    for split, per_class in counts.items():
        split_lines.append(
            f"| {split} | "
            + " | ".join(str(per_class[c]) for c in manifest.classes)
            + f" | {sum(per_class.values())} |"
        )
    order = " -> ".join(payload["order"])
    order_rule = _RULE_TEXT[payload["order_rule"]]
    thresholds = ", ".join(f"{t:.4g}" for t in payload["thresholds"])
    objective = _objective(payload["tuning"]["scoring"], payload["tuning"]["budget_flops"])
    exits = ", ".join(f"{k}: {v}" for k, v in payload["exit_counts"].items())
    cost = payload["cost"]
    val_lines = "\n".join(f"- {k}: {v:.2%}" for k, v in payload["val_accuracy"].items())
    mcn = "\n".join(
        f"- vs {k}: only the cascade right on {v['only_a_correct']}, only {k} right on "
        f"{v['only_b_correct']}, p = {v['p_value']:.3g} ({v['method']})"
        for k, v in payload["mcnemar_cascade_vs"].items()
    )
    latency = "\n".join(f"- {k}: {1e3 * v:.2f} ms" for k, v in cost["latency_per_image_s"].items())
    skipped = payload["skipped"]
    data_notes = [
        (
            f"- exact-duplicate groups: {len(payload['exact_duplicate_groups'])} (kept on one "
            "side of the split, with near duplicates, by grouping)"
            if scan is not None
            else "- the split was reused from split.csv (duplicates were grouped when it was made)"
        ),
        (
            "- stain normalization fell back to the original image for "
            f"{len(payload['stain_fallbacks'])} image(s)"
        ),
        f"- skipped files: {len(skipped)}"
        + "".join(f"\n  - {s['path']}: {s['reason']}" for s in skipped),
    ]
    return {
        "Cascade": (
            f"Order ({order_rule}): {order}.\n\n"
            f"Thresholds (max probability), tuned for {objective}: {thresholds} "
            f"(validation accuracy {payload['tuning']['val_accuracy']:.2%}). "
            f"{validation_check(payload)}\n\n"
            f"Test accuracy {cascade.accuracy:.2%} (95% bootstrap CI {low:.2%}-{high:.2%}), "
            f"MCC {cascade.mcc:.4f}, kappa {cascade.kappa:.4f}. Best single backbone: "
            f"{best_name}, {metrics[best_name].accuracy:.2%}. All backbones averaged: "
            f"{payload['ensemble_all_five_test_accuracy']:.2%}.\n\n"
            f"Samples ended per stage (test): {exits}.\n\n"
            f"Mean cost: {cost['cascade_mean_flops'] / 1e9:.3f} GFLOPs per image, "
            f"{cost['cascade_flops_ratio_all']:.1%} of running every backbone, "
            f"{cost['cascade_flops_ratio_last']:.1%} of the last stage alone."
        ),
        **{
            _RULE_HEADING[rule]: _alternative_section(alt)
            for rule, alt in payload["alternatives"].items()
        },
        "Validation accuracy per backbone": val_lines,
        "McNemar's test, cascade against each backbone (test split)": mcn,
        "Inference time per image": (
            latency + f"\n- Cascade (measured wall time over the test split): "
            f"{1e3 * cost['cascade_wall_seconds_per_image']:.2f} ms\n\n```text\n"
            + cost["table"]
            + "\n```"
        ),
        "Data": "\n".join(split_lines) + "\n\n" + "\n".join(data_notes),
        "Run": (
            f"Wall time of this invocation {payload['seconds'] / 60:.1f} min on "
            f"{payload['device']}; training time of the backbones, summed over every epoch "
            "(including epochs of an earlier, interrupted or finished run that this one "
            f"reused): {sum(t['train_seconds'] for t in payload['training'].values()) / 60:.1f}"
            " min."
        ),
    }


def validation_check(payload: Mapping[str, Any]) -> str:
    """Compare the tuned cascade with the best backbone alone, on validation only.

    Args:
        payload: The run's ``metrics.json`` content (``tuning.val_accuracy`` and
            ``val_accuracy`` per backbone).

    Returns:
        One sentence for the report: whether the cascade reaches the best backbone's
        validation accuracy, and where to look when it does not.
    """
    cascade = float(payload["tuning"]["val_accuracy"])
    best_name, best = max(payload["val_accuracy"].items(), key=lambda item: item[1])
    if cascade >= best:
        return (
            f"On validation that is at or above the best backbone alone ({best_name}, {best:.2%})."
        )
    return (
        f"On validation that is below {best_name} alone ({best:.2%}): within this budget "
        "the cascade does not pay for all its stages; the stage-selection section below "
        "keeps only the backbones that do, and `python benchmarks/leukemia_stage_subsets.py "
        "OUT` ranks every subset on validation."
    )


def _objective(scoring: str, budget: float | None) -> str:
    score = {
        "neg_log_loss": "the lowest validation log-loss",
        "accuracy": "the best validation accuracy",
    }.get(scoring, f"the best validation {scoring}")
    if budget is None:
        return f"{score} (no budget: a first stage alone would exceed it)"
    return f"{score} at a mean cost of at most {budget / 1e9:.3f} GFLOPs"


#: How the report names each ordering rule, in a sentence and as a section heading.
_RULE_TEXT: Final = {
    "accuracy": "least accurate on validation first, as in the paper",
    "cost": "cheapest first (FLOPs per image)",
    "selected": (
        "least accurate on validation first, keeping the sub-sequence of the backbones "
        "that scores best on validation within the budget (stage selection)"
    ),
}
_RULE_HEADING: Final = {
    "accuracy": "The paper's stage order",
    "cost": "Other stage order: cheapest first",
    "selected": "Stage selection: only the backbones that pay",
}


def _alternative_section(alt: Mapping[str, Any]) -> str:
    objective = _objective(alt["scoring"], alt["budget_flops"])
    exits = ", ".join(f"{k}: {v}" for k, v in alt["exit_counts"].items())
    thresholds = ", ".join(f"{t:.4g}" for t in alt["thresholds"]) or "none (one stage)"
    return (
        f"Backbones ordered {_RULE_TEXT[alt['rule']]}: {' -> '.join(alt['order'])}; "
        f"thresholds tuned on validation for {objective}: {thresholds}"
        f" (validation accuracy {alt['val_accuracy']:.2%})"
        f".\n\nTest accuracy {alt['test_accuracy']:.2%}, MCC {alt['test_mcc']:.4f}, "
        f"kappa {alt['test_kappa']:.4f}; mean cost {alt['cascade_mean_flops'] / 1e9:.3f} "
        f"GFLOPs per image, {alt['cascade_flops_ratio_all']:.1%} of running every backbone. "
        f"Samples ended per stage (test): {exits}."
    )


# ------------------------------------------------------------------------- reuse
@dataclass(frozen=True)
class Predictor:
    """A saved cascade with the example's preprocessing.

    Attributes:
        cascade: The loaded cascade.
        cache_size: Side the source images are resized to.
        normalizer: The stain normalizer fitted on training images, or ``None``.
        mask_bottom: Share of the rows at the bottom masked after normalization (``0``:
            none; cascades saved before the setting existed had none).
    """

    cascade: CascadeClassifier
    cache_size: int
    normalizer: StainNormalizer | None
    mask_bottom: float = 0.0


def load_predictor(model_dir: str | Path, *, device: str | None = None) -> Predictor:
    """Load a cascade saved by :func:`run_experiment`, with its stain reference.

    Raises:
        FileNotFoundError: When ``model_dir`` lacks the example's settings file.
    """
    folder = Path(model_dir)
    settings_file = folder / SETTINGS_FILE
    if not settings_file.is_file():
        msg = (
            f"{settings_file} not found: --model must be the 'cascade' folder written by "
            "'python -m examples.leukemia run'"
        )
        raise FileNotFoundError(msg)
    settings = _read_settings(settings_file)
    cascade = load_cascade(folder, device=device)
    state = settings.get("stain_normalizer")
    normalizer = StainNormalizer.from_dict(state) if state else None
    mask = float(settings.get("mask_bottom", 0.0))
    return Predictor(cascade, int(settings["cache_size"]), normalizer, mask)


def _read_settings(path: Path) -> dict[str, Any]:
    """Read the example's settings file; an invalid value raises an error naming it.

    Raises:
        LeukemiaDataError: For invalid JSON, a ``cache_size`` that is not a positive
            integer, or a stain reference that is not finite and of the fitted shapes
            (``he_ref`` 3 x 2, ``max_c_ref`` two positive numbers): each would otherwise
            make every image fall back to no normalization.
    """
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:
        msg = f"{path}: not valid JSON ({exc})"
        raise LeukemiaDataError(msg) from exc
    if not isinstance(settings, dict):
        msg = f"{path}: expected a JSON object, got {type(settings).__name__}"
        raise LeukemiaDataError(msg)
    size = settings.get("cache_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        msg = f"{path}: cache_size must be a positive integer, got {size!r}"
        raise LeukemiaDataError(msg)
    state = settings.get("stain_normalizer")
    if state is None:
        return settings
    if not isinstance(state, dict):
        msg = f"{path}: stain_normalizer must be an object or null, got {state!r:.80}"
        raise LeukemiaDataError(msg)
    checks = {
        "he_ref": ((3, 2), "a 3 x 2 list of finite numbers"),
        "max_c_ref": ((2,), "two positive finite numbers"),
        "io": ((), "a positive finite number"),
    }
    for key, (shape, what) in checks.items():
        value = state.get(key)
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            array = np.full(1, np.nan)
        positive = key != "he_ref"
        if (
            array.shape != shape
            or not np.isfinite(array).all()
            or (positive and not (array > 0).all())
        ):
            msg = f"{path}: stain_normalizer.{key} must be {what}, got {value!r:.120}"
            raise LeukemiaDataError(msg)
    return settings


def prepare_image(
    path: Path, cache_size: int, normalizer: StainNormalizer | None, mask_bottom: float
) -> tuple[np.ndarray[Any, Any], bool]:
    """Decode, resize, stain-normalize and mask one image file as the training images were.

    Returns:
        The (h, w, 3) uint8 array, and whether stain normalization fell back to the
        original image.
    """
    array = to_array(load_rgb(path), cache_size)
    fell_back = False
    if normalizer is not None:
        array, reason = normalizer.transform(array)
        fell_back = reason is not None
    return mask_bottom_strip(array, mask_bottom), fell_back


def read_images(paths: Sequence[Path], predictor: Predictor) -> tuple[torch.Tensor, list[str]]:
    """Decode, resize, stain-normalize and mask image files as the training images were.

    Returns:
        The (n, 3, h, w) uint8 tensor, and the paths with a stain fallback.
    """
    arrays = []
    fallbacks = []
    for path in paths:
        array, fell_back = prepare_image(
            path, predictor.cache_size, predictor.normalizer, predictor.mask_bottom
        )
        if fell_back:
            fallbacks.append(str(path))
        arrays.append(array)
    if not arrays:
        return torch.empty(
            (0, 3, predictor.cache_size, predictor.cache_size), dtype=torch.uint8
        ), []
    return images_to_tensor(np.stack(arrays)), fallbacks


def _input_sizes(paths: Sequence[Path], predictor: Predictor) -> dict[str, Any]:
    """The source images' sizes and the sizes the cascade's stages saw."""
    sizes: dict[str, int] = {}
    for path in paths:
        with Image.open(path) as image:
            key = f"{image.width}x{image.height}"
        sizes[key] = sizes.get(key, 0) + 1
    stages = {}
    for name, stage in predictor.cascade.named_stages_.items():
        size = getattr(stage, "input_size", None)
        stages[name] = f"{size[2]}x{size[1]}" if size else "as given"
    return {
        "source_sizes": sizes,
        "resized_to": f"{predictor.cache_size}x{predictor.cache_size}",
        "mask_bottom": predictor.mask_bottom,
        "stain_normalized": predictor.normalizer is not None,
        "stage_input": stages,
    }


def evaluate_folder(
    model_dir: str | Path,
    data_root: str | Path,
    *,
    skip_bad: bool = False,
    device: str | None = None,
    class_map: Sequence[str] = (),
) -> dict[str, Any]:
    """Evaluate a saved cascade on every image of a labelled folder.

    Without ``class_map`` the folder has the four class folders of the Kaggle layout. With
    it, the folder's class folders are the map's targets and each predicted class is
    renamed by the map before the metrics (:func:`.mapping.parse_class_map`). Images of any
    size are resized to the training cache size, normalized and masked as in training,
    then resized to each backbone's input by its stage.

    Args:
        model_dir: The ``cascade`` folder of a run.
        data_root: The labelled folder.
        skip_bad: Skip unreadable images (listed) instead of failing.
        device: Torch device (default: as saved).
        class_map: Items such as ``"Benign=Healthy"`` and ``"Early,Pre,Pro=ALL"``.

    Returns:
        A JSON-able dict: the cascade's metrics (on the folder's classes), exit counts,
        the sizes of the source images and of what the model saw, the counts of the
        model's own classes per folder class, and skipped files.
    """
    predictor = load_predictor(model_dir, device=device)
    model_classes = [str(c) for c in predictor.cascade.classes_]
    mapping = parse_class_map(class_map, model_classes) if class_map else None
    classes = folder_classes(mapping) if mapping else tuple(model_classes)
    scan = scan_dataset(data_root, skip_bad=skip_bad, check_manifest=True, classes=classes)
    paths = [scan.root / r.path for r in scan.records]
    labels = np.array([r.label for r in scan.records])
    x, fallbacks = read_images(paths, predictor)
    routed = predictor.cascade.route(x)
    predicted = np.array([str(v) for v in routed.labels])
    if mapping:
        predicted = np.array([mapping[v] for v in predicted])
    metrics = classification_metrics(labels, predicted, classes=np.array(classes))
    return {
        "data_root": str(scan.root),
        "n_images": len(paths),
        "class_map": mapping,
        "input": _input_sizes(paths, predictor),
        "model_classes_per_folder_class": {
            c: {m: int(np.sum((labels == c) & (routed.labels == m))) for m in model_classes}
            for c in classes
        },
        "metrics": _metrics_json(metrics),
        "exit_counts": dict(zip(routed.stage_names, routed.exit_counts.tolist(), strict=True)),
        "skipped": [asdict(s) for s in scan.skipped],
        "stain_fallbacks": fallbacks,
    }
