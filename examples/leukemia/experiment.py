"""The experiment: split, stain-normalize, train the backbones, build, tune and test the cascade.

Everything about the cascade itself goes through cascademl's public API
(`TorchStage`, `CascadeClassifier`, `cascademl.tuning`, `cascademl.cost`,
`cascademl.metrics`, `cascademl.io`); this module only wires the example's data and training
layers to it and writes the results folder.

:func:`run_experiment` is a sequence of stage functions, each passing a typed result to
the next: :func:`prepare_data` (:class:`SplitData`), :func:`.backbones.train_backbones`,
:func:`.backbones.score_backbones`, :func:`tune_orders`, :func:`route_test_split`,
:func:`.shortcuts.shortcut_audit`, :func:`score_on_test`, :func:`save_model`, then
:func:`.sections.write_figures` and :func:`write_results` with the gathered
:class:`.results.ExperimentResults`.

Layout of the results folder ``OUT``::

    OUT/split.csv                  the grouped 80/10/10 split (reused by later runs)
    OUT/split.json                 the settings it was made with (fractions, seed, groups)
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from cascademl import CascadeClassifier, CascadeResult, _files
from cascademl.certify import apply_certificate
from cascademl.cost import CostReport
from cascademl.inference import resolve_device
from cascademl.metrics import (
    ClassificationMetrics,
    McNemarResult,
    classification_metrics,
    mcnemar_test,
)
from cascademl.torch_stage import TorchStage

from . import audit, distributed, report
from .backbones import (
    BackboneScores,
    check_pretrained_weights,
    predicted_labels,
    score_backbones,
    train_backbones,
    warn_if_slow_precision,
)
from .budget import PLAN_FILE, BudgetPlanner, Workload, plan_markdown
from .certification import CertifiedResult, CertifySpec, certify_probabilities
from .data import DatasetScan, LeukemiaDataError, SplitManifest, mask_bottom_strip, prepare_split
from .ordering import (
    ORDER_RULES,
    RECOMMENDED,
    OrderResult,
    TunedOrder,
    evaluate_order,
    order_and_tune,
    recommended_order,
)
from .predict import _save_model, images_to_tensor
from .presets import Preset
from .results import CASCADE, CostSummary, ExperimentResults, ExperimentSummary
from .runlock import lock_output, releases_output_locks
from .sections import report_sections, write_figures
from .shortcuts import ShortcutAudit, shortcut_audit
from .training import CHECKPOINT_NAME, check_batch_size
from .transforms import NormalizedImages, StainNormalizer, fit_stain_normalizer, load_images

__all__ = [
    "CascadeTest",
    "ExperimentSummary",
    "SplitData",
    "TestScores",
    "masked_images",
    "prepare_data",
    "route_test_split",
    "run_experiment",
    "save_model",
    "score_on_test",
    "tune_orders",
    "write_results",
]

logger = logging.getLogger(__name__)


def masked_images(images: NormalizedImages, fraction: float) -> NormalizedImages:
    """Return the images with the bottom ``fraction`` of their rows masked (the scale bar).

    Applied in memory after the cache, so one cache serves runs with and without the mask.
    """
    if not fraction:
        return images
    return NormalizedImages(
        mask_bottom_strip(images.images, fraction), images.paths, images.fallbacks
    )


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
    order: str = RECOMMENDED,
    scoring: str = "neg_log_loss",
    progress: bool = False,
    time_budget: float | None = None,
    certify: Sequence[CertifySpec] = (),
    delta: float = 0.05,
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
        order: ``"recommended"`` (the rule whose tuned cascade scores best on validation,
            :func:`.ordering.recommended_order`), ``"accuracy"`` (the paper), ``"cost"`` or
            ``"selected"``. Every rule is tuned and reported; this one is saved.
        scoring: What the thresholds maximise on validation: a scikit-learn scorer name
            (``"neg_log_loss"``, ``"accuracy"``, ``"balanced_accuracy"``...).
        progress: Show progress bars.
        time_budget: Minutes the whole run may take: the backbones' epochs and input sizes
            are planned for this machine to fit them (see :mod:`.budget`; ``OUT/plan.json``).
            ``None``: the preset's fixed epochs. Ignored, with a warning, under several
            processes.
        certify: Guarantees to certify for the saved order on the validation split
            (:mod:`.certification`); each is reported beside the tuned cascade with what
            it reached on test, and the first one that is certified routes the saved
            model.
        delta: The allowed probability that a certificate is wrong.

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
    torch.manual_seed(preset.seed)

    data = prepare_data(data_root, preset, out, skip_bad=skip_bad)
    spent = time.perf_counter() - started
    planner = _planner(preset, data, out, minutes=time_budget, spent=spent, device=device)
    trained = train_backbones(
        preset,
        data.manifest,
        data.images,
        out,
        stain=data.stain,
        device=device,
        checkpoints=weights,
        allow_download=allow_download,
        progress=progress,
        planner=planner,
    )
    if not ranks.main:  # rank 0 alone tunes, tests and writes; this rank takes its summary
        return distributed.share(None, ExperimentSummary)

    scores = score_backbones(trained.stages, data.x, data.y, data.classes, out)
    tuned = tune_orders(
        trained.stages,
        scores,
        data,
        first=order if order in ORDER_RULES else ORDER_RULES[0],
        max_cost_ratio=max_cost_ratio,
        scoring=scoring,
    )
    asked, order = order, recommended_order(tuned) if order == RECOMMENDED else order
    tuned = {order: tuned[order], **{r: t for r, t in tuned.items() if r != order}}
    chosen = tuned[order]
    tested = route_test_split(chosen, scores, data)
    shortcuts = shortcut_audit(
        preset,
        data.manifest,
        out,
        stages=trained.stages,
        test_proba=dict(zip(scores.names, scores.test_proba, strict=True)),
        cascades={rule: t.cascade for rule, t in tuned.items()},
        y_test=data.y["test"],
        classes=data.classes,
    )
    test = score_on_test(trained.stages, scores, tuned, tested, shortcuts=shortcuts, data=data)
    certified = _certify(certify, delta, chosen, scores, data)
    saved = next((r for r in certified if r.certified), None)
    save_model(
        chosen.cascade if saved is None else _certified(chosen.cascade, saved),
        preset,
        data,
        out / "cascade",
    )
    figures = write_figures(
        out / "figures",
        histories=trained.histories,
        metrics=test.metrics,
        class_names=list(data.manifest.classes),
        tuned=chosen,
        references=_references(scores, data),
    )
    results = ExperimentResults(
        preset=preset,
        device=device,
        processes=ranks.world_size if ranks.distributed else None,
        classes=tuple(data.manifest.classes),
        split_counts=data.manifest.counts(),
        scan=data.scan,
        stain_fallbacks=dict(data.images.fallbacks),
        training=trained.training,
        histories=trained.histories,
        val_accuracy=dict(zip(scores.names, scores.val_accuracy, strict=True)),
        order_rule=order,
        tuned=chosen,
        order=tuple(scores.names[i] for i in chosen.ordering),
        alternatives=test.alternatives,
        test=test.metrics,
        ensemble_accuracy=test.ensemble_accuracy,
        mcnemar=test.mcnemar,
        exit_counts=tested.exit_counts,
        cost=tested.cost,
        shortcuts=shortcuts,
        seconds=time.perf_counter() - started,
        time_budget=planner.to_json(time.perf_counter() - started) if planner else None,
        order_choice={
            "asked": asked,
            "saved": order,
            "val_score": {rule: t.tuning.score for rule, t in tuned.items()},
            "certified_rule_saved": None if saved is None else str(saved.spec),
            "tuned_test_agreement": float(
                np.mean(
                    tested.routed.labels
                    == data.classes[np.argmax(scores.test_proba[chosen.ordering[-1]], axis=1)]
                )
            ),
        },
        certification=tuple(certified),
    )
    write_results(results, out, figures)
    return distributed.share(results.summary(out), ExperimentSummary)


def _certified(cascade: CascadeClassifier, result: CertifiedResult) -> CascadeClassifier:
    """The cascade routing with ``result``'s certified rule (the certificate saved with it)."""
    if result.certificate is None:
        msg = f"{result.spec} has no certificate"
        raise ValueError(msg)
    return apply_certificate(cascade, result.certificate)


def _certify(
    specs: Sequence[CertifySpec],
    delta: float,
    chosen: TunedOrder,
    scores: BackboneScores,
    data: SplitData,
) -> list[CertifiedResult]:
    """Certify the saved order on validation; measure each certified rule on test."""
    if not specs:
        return []
    ordering = list(chosen.ordering)
    return certify_probabilities(
        specs,
        val_proba=np.asarray(scores.val_proba, dtype=np.float64)[ordering],
        test_proba=np.asarray(scores.test_proba, dtype=np.float64)[ordering],
        y_val=data.y["val"],
        y_test=data.y["test"],
        classes=data.classes,
        flops=[scores.flops[i] for i in ordering],
        stage_names=[scores.names[i] for i in ordering],
        total_flops=float(sum(scores.flops)),
        delta=delta,
    )


@dataclass(frozen=True)
class SplitData:
    """The split and its images, as :func:`prepare_data` makes them.

    Attributes:
        manifest: The grouped 80/10/10 split.
        scan: What the dataset scan found, or ``None`` when ``split.csv`` was reused.
        normalizer: The stain normalizer fitted on training images, or ``None``.
        stain: The normalizer's fingerprint (``"none"`` without one), for checkpoints.
        images: Every image of the split, resized, normalized and masked.
        classes: The class names, in label order.
        x: ``{"val" | "test": (n, 3, h, w) uint8 images}``.
        y: ``{"val" | "test": class names}``.
    """

    manifest: SplitManifest
    scan: DatasetScan | None
    normalizer: StainNormalizer | None
    stain: str
    images: NormalizedImages
    classes: np.ndarray[Any, Any]
    x: Mapping[str, torch.Tensor]
    y: Mapping[str, np.ndarray[Any, Any]]


def prepare_data(data_root: str | Path, preset: Preset, out: Path, *, skip_bad: bool) -> SplitData:
    """Split (or reuse ``split.csv``), fit the stain reference, load the images (cached).

    With several processes rank 0 writes the split and the cache and fits the stain
    reference, which it sends to the others; they then read the split and the cache.
    """
    ranks = distributed.current()
    with distributed.main_first():
        if not ranks.main:
            distributed.readable(out / "split.csv")
        manifest, scan = prepare_split(
            data_root, out / "split.csv", skip_bad=skip_bad, **preset.split_options()
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
    classes = np.array(manifest.classes)
    splits = ("val", "test")
    y = {split: classes[manifest.targets(split)] for split in splits}
    x = {split: images_to_tensor(images.subset(manifest, split)) for split in splits}
    logger.info("split: %s", manifest.counts())
    return SplitData(manifest, scan, normalizer, stain, images, classes, x, y)


def tune_orders(
    stages: Sequence[tuple[str, TorchStage]],
    scores: BackboneScores,
    data: SplitData,
    *,
    first: str,
    max_cost_ratio: float,
    scoring: str,
) -> dict[str, TunedOrder]:
    """Order the stages by every rule of :data:`.ordering.ORDER_RULES`, ``first`` first.

    Each order's thresholds are tuned on the validation probabilities alone.
    """
    rules = (first, *(rule for rule in ORDER_RULES if rule != first))
    return {
        rule: order_and_tune(
            stages,
            scores.val_proba,
            scores.flops,
            y_val=data.y["val"],
            classes=data.classes,
            order=rule,
            max_cost_ratio=max_cost_ratio,
            scoring=scoring,
        )
        for rule in rules
    }


class CascadeTest(NamedTuple):
    """The tuned cascade on the test split (:func:`route_test_split`).

    Attributes:
        routed: The routing result.
        cost: What the backbones and the cascade cost.
    """

    routed: CascadeResult
    cost: CostSummary

    @property
    def exit_counts(self) -> dict[str, int]:
        """``{stage: test samples it ended}``."""
        routed = self.routed
        return dict(zip(routed.stage_names, routed.exit_counts.tolist(), strict=True))


def route_test_split(chosen: TunedOrder, scores: BackboneScores, data: SplitData) -> CascadeTest:
    """Route the test split through the tuned cascade (timed) and account for its cost."""
    tic = time.perf_counter()
    routed = chosen.cascade.route(data.x["test"])
    wall = time.perf_counter() - tic
    ordered_costs = [scores.costs[i] for i in chosen.ordering]
    cost_report = CostReport.from_result(routed, ordered_costs, wall_time=wall)
    flops = scores.flops
    cost = CostSummary(
        flops_per_image=dict(zip(scores.names, flops, strict=True)),
        latency_per_image_s={c.name: c.latency_per_sample for c in scores.costs},
        cascade_mean_flops=cost_report.mean_flops,
        # Against all the backbones trained, also when the cascade keeps only some.
        cascade_flops_ratio_all=cost_report.mean_flops / sum(flops),
        cascade_flops_ratio_last=cost_report.flops_ratio_last,
        cascade_wall_seconds_per_image=wall / max(routed.n_samples, 1),
        table=cost_report.to_table(),
    )
    return CascadeTest(routed, cost)


class TestScores(NamedTuple):
    """Every model on the test split (:func:`score_on_test`).

    Attributes:
        metrics: Test metrics of the cascade, every backbone and the colour baseline.
        ensemble_accuracy: Test accuracy of the average of all the backbones.
        mcnemar: McNemar's test of the cascade against each backbone.
        alternatives: The other orders' cascades, tested, by rule.
    """

    metrics: dict[str, ClassificationMetrics]
    ensemble_accuracy: float
    mcnemar: dict[str, McNemarResult]
    alternatives: dict[str, OrderResult]


def score_on_test(
    stages: Sequence[tuple[str, TorchStage]],
    scores: BackboneScores,
    tuned: Mapping[str, TunedOrder],
    tested: CascadeTest,
    *,
    shortcuts: ShortcutAudit,
    data: SplitData,
) -> TestScores:
    """Metrics of the cascade, each backbone and the baseline; the other orders on test.

    ``tuned``'s first order is the cascade of :func:`route_test_split`; the others are
    routed here.
    """
    y_test, classes = data.y["test"], data.classes
    routed = tested.routed
    predictions = {CASCADE: routed.labels}
    for name, proba in zip(scores.names, scores.test_proba, strict=True):
        predictions[name] = predicted_labels(proba, classes)
    metrics: dict[str, ClassificationMetrics] = {
        **{
            name: classification_metrics(y_test, pred, classes=classes)
            for name, pred in predictions.items()
        },
        audit.BASELINE_NAME: shortcuts.baseline_metrics,
    }
    ensemble = classification_metrics(
        y_test,
        predicted_labels(scores.test_proba.mean(axis=0), classes),
        classes=classes,
        n_bootstrap=0,
    )
    mcnemar = {
        name: mcnemar_test(y_test, routed.labels, predictions[name], classes=classes)
        for name in scores.names
    }
    alternatives = {
        rule: evaluate_order(
            stages,
            scores.costs,
            tuned[rule],
            rule=rule,
            x_test=data.x["test"],
            y_test=y_test,
            classes=classes,
        )
        for rule in list(tuned)[1:]
    }
    return TestScores(metrics, ensemble.accuracy, mcnemar, alternatives)


def save_model(cascade: CascadeClassifier, preset: Preset, data: SplitData, folder: Path) -> Path:
    """Save the tuned cascade with the example's settings file (stain reference, mask)."""
    settings = {
        "classes": list(data.manifest.classes),
        "cache_size": preset.cache_size,
        "stain_normalizer": data.normalizer.to_dict() if data.normalizer is not None else None,
        "mask_bottom": preset.mask_bottom,
        "preset": preset.name,
    }
    return _save_model(cascade, settings, folder)


def _references(scores: BackboneScores, data: SplitData) -> dict[str, tuple[float, float]]:
    """``(FLOPs, validation accuracy)`` of each backbone alone and of all of them voting."""
    flops = scores.flops
    references = {
        f"{name} alone": (flops[i], scores.val_accuracy[i]) for i, name in enumerate(scores.names)
    }
    vote = predicted_labels(scores.val_proba.mean(axis=0), data.classes)
    references["all backbones (vote)"] = (
        float(sum(flops)),
        float(np.mean(vote == data.y["val"])),
    )
    return references


def _planner(
    preset: Preset, data: SplitData, out: Path, *, minutes: float | None, spent: float, device: str
) -> BudgetPlanner | None:
    """The time budget's planner (it probes and plans, or reloads ``OUT/plan.json``)."""
    if minutes is None:
        return None
    if distributed.current().distributed:
        logger.warning("the time budget is for one process; %s min ignored", minutes)
        return None
    if not (out / PLAN_FILE).is_file() and any(out.glob(f"models/*/{CHECKPOINT_NAME}")):
        logger.warning(
            "%s holds checkpoints of a run with fixed epochs; resuming it with them (the "
            "%g min time budget applies to a new --out)",
            out,
            minutes,
        )
        return None
    counts = data.manifest.counts()
    n_train = sum(counts["train"].values())
    workload = Workload(
        train_items=n_train * (2 if preset.doubling else 1),
        val_images=sum(counts["val"].values()),
        test_images=sum(counts["test"].values()),
    )
    return BudgetPlanner(
        preset, out, minutes=minutes, workload=workload, spent=spent, device=device
    )


def write_results(results: ExperimentResults, out: Path, figures: Mapping[str, Path]) -> None:
    """Write ``metrics.json`` and ``report.md`` (the figures are written already)."""
    _files.write_text(out / "metrics.json", json.dumps(results.to_json(), indent=2, default=str))
    sections = {**report_sections(results), **results.shortcuts.report_sections()}
    if results.time_budget is not None:
        sections["Time budget"] = plan_markdown(results.time_budget)
    report.write_markdown_report(
        out / "report.md",
        results.test,
        list(results.classes),
        title=f"Leukemia cascade: results ({results.preset.name} preset)",
        sections=sections,
        figures=figures,
    )


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
