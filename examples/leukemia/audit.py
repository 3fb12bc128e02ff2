"""The shortcut audit: how much of the accuracy can come from something other than the cell.

The images carry cues that are not the cells: a scale bar printed at the bottom, and a
background colour and illumination that differ between classes (each class comes from other
patients and sessions). This module measures them with cascademl itself:

* **The model that sees no cell** (:func:`colour_baseline`): 30 colour statistics of the
  whole image (per-channel mean, standard deviation and 8-bin histogram; no shape, no
  position) fed to a gradient-boosted tree, as a one-stage cascade
  (:class:`ColourStage`), trained on the training split of the run's own grouped split and
  scored on its validation and test splits.
* **Preprocessing variants** (:data:`VARIANTS`): the original images, the bottom strip
  masked, Macenko colour normalization, both, and greyscale. The colour baseline is
  trained and tested under each; the trained backbones and cascades are tested under each
  (evaluation-time only, through the same stages, :func:`shortcut_table`).
* **Exits per class** (:func:`exits_per_class`): how many test samples each stage ends, per
  class; a stage that ends one class early on colour alone shows here.

``python -m examples.leukemia audit`` runs the colour baseline alone (seconds, no
backbone); ``run`` adds all of it to its report.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Self

import numpy as np
import torch
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from cascademl import CascadeClassifier, CascadeResult, ConfidencePolicy, _files
from cascademl.metrics import ClassificationMetrics, classification_metrics

from .data import SCALE_BAR_FRACTION, SplitManifest, mask_bottom_strip, prepare_split
from .presets import Preset
from .transforms import NormalizedImages, fit_stain_normalizer, load_images

__all__ = [
    "VARIANTS",
    "CachedProbabilities",
    "ColourStage",
    "ColourStatistics",
    "Variant",
    "colour_baseline",
    "colour_features",
    "colour_pipeline",
    "exits_per_class",
    "greyscale",
    "route_cached",
]

logger = logging.getLogger(__name__)

#: Histogram bins per channel; with the mean and standard deviation, 3 x (2 + 8) = 30 features.
HISTOGRAM_BINS: Final = 8
_LEVELS: Final = 256
_CHUNK: Final = 64
_DEFAULT_LEAF: Final = 20
#: ITU-R BT.601 luma weights (Pillow's ``convert("L")``).
_LUMA: Final = (0.299, 0.587, 0.114)


def _nchw_uint8(X: Any) -> NDArray[np.uint8]:
    """Images of shape (n, 3, H, W) as a numpy uint8 array (torch tensors are converted)."""
    array = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
    if array.ndim != 4 or array.shape[1] != 3:  # noqa: PLR2004 - (n, 3, H, W)
        msg = f"X must hold images of shape (n, 3, H, W), got an array of shape {array.shape}"
        raise ValueError(msg)
    if array.dtype != np.uint8:
        msg = f"X must hold uint8 pixels (0-255), got dtype {array.dtype}"
        raise ValueError(msg)
    return array


def colour_features(X: Any, *, bins: int = HISTOGRAM_BINS) -> NDArray[np.float64]:
    """Per-channel mean, standard deviation and histogram of whole images.

    Args:
        X: uint8 images of shape (n, 3, H, W), a numpy array or torch tensor (the layout
            the cascade's stages take).
        bins: Histogram bins per channel, equal widths over 0-255.

    Returns:
        Array of shape (n, 3 * (2 + bins)): for each channel its mean and standard deviation
        scaled to [0, 1], then its histogram as shares of the pixels.

    Raises:
        ValueError: When ``X`` is not uint8 images of shape (n, 3, H, W) or ``bins`` is not
            in ``[1, 256]``.
    """
    if not 1 <= bins <= _LEVELS:
        msg = f"bins must be in [1, 256], got {bins}"
        raise ValueError(msg)
    images = _nchw_uint8(X)
    n = len(images)
    pixels = images.shape[2] * images.shape[3]
    out = np.empty((n, 3, 2 + bins), dtype=np.float64)
    bin_of = (np.arange(_LEVELS) * bins // _LEVELS).astype(np.int64)
    for start in range(0, n, _CHUNK):
        chunk = images[start : start + _CHUNK].reshape(-1, 3, pixels)
        values = chunk.astype(np.float64) / (_LEVELS - 1)
        out[start : start + _CHUNK, :, 0] = values.mean(axis=2)
        out[start : start + _CHUNK, :, 1] = values.std(axis=2)
        # One bincount per chunk over (image, channel, bin) cells.
        cells = np.arange(len(chunk) * 3, dtype=np.int64).reshape(-1, 3, 1) * bins
        counts = np.bincount(
            (cells + bin_of[chunk]).ravel(), minlength=len(chunk) * 3 * bins
        ).reshape(len(chunk), 3, bins)
        out[start : start + _CHUNK, :, 2:] = counts / pixels
    return out.reshape(n, -1)


class ColourStatistics(TransformerMixin, BaseEstimator):
    """scikit-learn transformer: images to :func:`colour_features` (no cell, no shape).

    Args:
        bins: Histogram bins per channel.
    """

    def __init__(self, bins: int = HISTOGRAM_BINS) -> None:
        self.bins = bins

    def fit(self, X: Any, y: Any = None) -> Self:  # noqa: ARG002 - the sklearn signature
        """Check ``X`` and record the number of features out."""
        _nchw_uint8(X)
        self.n_features_out_ = 3 * (2 + self.bins)
        return self

    def transform(self, X: Any) -> NDArray[np.float64]:
        """Return the colour statistics of every image."""
        return colour_features(X, bins=self.bins)

    def get_feature_names_out(self, input_features: Any = None) -> NDArray[np.str_]:  # noqa: ARG002
        """Names such as ``R_mean``, ``G_std`` and ``B_hist7``."""
        names = [
            f"{channel}_{kind}"
            for channel in "RGB"
            for kind in ("mean", "std", *(f"hist{i}" for i in range(self.bins)))
        ]
        return np.array(names)


def colour_pipeline(seed: int = 0) -> Pipeline:
    """The colour statistics into a gradient-boosted tree (scikit-learn's defaults)."""
    return Pipeline(
        [
            ("colour", ColourStatistics()),
            ("trees", HistGradientBoostingClassifier(random_state=seed)),
        ]
    )


class ColourStage:
    """A fitted colour pipeline as a cascade stage that takes the backbones' image tensors.

    A cascade of scikit-learn stages only checks its input as a 2-D table; wrapping the
    pipeline lets it take (n, 3, H, W) images like the torch stages, alone or in a cascade
    with them.

    Args:
        pipeline: A fitted classifier whose first step takes images (see
            :func:`colour_pipeline`).

    Attributes:
        classes_: The pipeline's classes.
        cost_per_sample: FLOPs of the features of one 224 px image, roughly (a few
            operations per pixel and channel); negligible beside any backbone.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.classes_ = np.asarray(pipeline.classes_)
        self.cost_per_sample = 10.0 * 3 * 224 * 224

    def predict_proba(self, X: Any) -> NDArray[np.float64]:
        """Class probabilities of shape (n, n_classes)."""
        with threadpool_limits(limits=1, user_api="openmp"):
            proba: NDArray[np.float64] = self.pipeline.predict_proba(_nchw_uint8(X))
        return proba


# --------------------------------------------------------------------- preprocessing
@dataclass(frozen=True)
class Variant:
    """One preprocessing of the images, applied to every split or at evaluation time.

    Attributes:
        name: Short name used in tables and JSON.
        normalized: Macenko stain normalization (the run's reference).
        masked: The bottom strip filled (the scale bar hidden).
        grey: Converted to greyscale (luma in all three channels).
    """

    name: str
    normalized: bool
    masked: bool
    grey: bool = False


#: The preprocessing variants of the audit, in table order.
VARIANTS: Final[tuple[Variant, ...]] = (
    Variant("original", normalized=False, masked=False),
    Variant("masked", normalized=False, masked=True),
    Variant("normalized", normalized=True, masked=False),
    Variant("normalized + masked", normalized=True, masked=True),
    Variant("greyscale + masked", normalized=False, masked=True, grey=True),
)


def trained_variant(*, stain_normalize: bool, mask_bottom: float) -> Variant:
    """The variant a run's backbones were trained on."""
    return next(
        v
        for v in VARIANTS
        if not v.grey and v.normalized == stain_normalize and v.masked == bool(mask_bottom)
    )


def greyscale(images: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Images of shape (..., H, W, 3) in greyscale: BT.601 luma repeated in every channel."""
    luma = np.rint(images.astype(np.float32) @ np.array(_LUMA, dtype=np.float32))
    grey = np.clip(luma, 0, _LEVELS - 1).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def apply_variant(
    variant: Variant,
    *,
    original: NDArray[np.uint8],
    normalized: NDArray[np.uint8],
    mask_bottom: float,
) -> NDArray[np.uint8]:
    """Images of shape (n, H, W, 3) under one variant.

    Args:
        variant: The preprocessing.
        original: The images decoded and resized, nothing else.
        normalized: The same images after stain normalization (same order).
        mask_bottom: Share of rows masked when ``variant.masked`` (``0``: the default
            :data:`~examples.leukemia.data.SCALE_BAR_FRACTION`).
    """
    images = normalized if variant.normalized else original
    if variant.grey:
        images = greyscale(images)
    if variant.masked:
        images = mask_bottom_strip(images, mask_bottom or SCALE_BAR_FRACTION)
    return images


def _nchw(images: NDArray[np.uint8]) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------- the baseline
@dataclass(frozen=True)
class BaselineResult:
    """The colour baseline under one variant.

    Attributes:
        variant: The variant's name.
        val_accuracy: Validation accuracy.
        test: Test metrics.
        test_labels: Predicted test labels, in the split's row order.
    """

    variant: str
    val_accuracy: float
    test: ClassificationMetrics
    test_labels: NDArray[Any]

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "variant": self.variant,
            "val_accuracy": self.val_accuracy,
            "test_accuracy": self.test.accuracy,
            "test_mcc": self.test.mcc,
            "test_kappa": self.test.kappa,
        }


def colour_baseline(
    images: NDArray[np.uint8],
    manifest: SplitManifest,
    *,
    variant: str = "as trained",
    seed: int = 0,
) -> BaselineResult:
    """Train the model that sees no cell on the training split; score validation and test.

    Args:
        images: uint8 images of shape (n, H, W, 3), one per manifest row, in row order.
        manifest: The run's split.
        variant: Name of the preprocessing ``images`` went through, for the result.
        seed: Seed of the tree.

    Returns:
        Validation accuracy and test metrics of the one-stage colour cascade.
    """
    if len(images) != len(manifest.rows):
        msg = f"{len(images)} images for a split of {len(manifest.rows)} rows"
        raise ValueError(msg)
    classes = np.array(manifest.classes)
    row_split = np.array([row.split for row in manifest.rows])
    x = {split: _nchw(images[row_split == split]) for split in ("train", "val", "test")}
    y = {split: classes[manifest.targets(split)] for split in ("train", "val", "test")}
    pipeline = colour_pipeline(seed)
    # scikit-learn's default leaf size (20) on the real data; smaller on tiny sets.
    leaf = min(_DEFAULT_LEAF, max(2, len(y["train"]) // _DEFAULT_LEAF))
    # One thread: on a shared, busy CPU the tree's OpenMP threads spin against the other
    # processes (a fit on 40 images took 162 s with two threads, 5 s with one, on 2 cores).
    with threadpool_limits(limits=1, user_api="openmp"):
        pipeline.set_params(trees__min_samples_leaf=leaf).fit(x["train"], y["train"])
    cascade = CascadeClassifier(
        [("Colour", ColourStage(pipeline))], policy=ConfidencePolicy(thresholds=0.0)
    ).fit(x["val"], y["val"])
    val_accuracy = float(np.mean(cascade.predict(x["val"]) == y["val"]))
    test_labels = cascade.predict(x["test"])
    test = classification_metrics(y["test"], test_labels, classes=classes, n_bootstrap=0)
    logger.info(
        "colour baseline (%s): validation %.2f%%, test %.2f%%",
        variant,
        100 * val_accuracy,
        100 * test.accuracy,
    )
    return BaselineResult(variant, val_accuracy, test, test_labels)


# --------------------------------------------------------------------- cached routing
class CachedProbabilities:
    """A stage that returns stored probabilities; its inputs are sample indices.

    Args:
        proba: Probabilities of shape (n_samples, n_classes).
        classes: The labels of the columns.
    """

    def __init__(self, proba: NDArray[np.floating[Any]], classes: Any) -> None:
        self.proba = np.asarray(proba, dtype=np.float64)
        self.classes_ = np.asarray(classes)

    def predict_proba(self, X: Any) -> NDArray[np.float64]:
        """The stored rows ``X`` (integer indices)."""
        return self.proba[np.asarray(X, dtype=np.intp)]


def route_cached(
    cascade: CascadeClassifier, stage_proba: Mapping[str, NDArray[np.floating[Any]]]
) -> CascadeResult:
    """Route stored probabilities through a fitted cascade's policy, without its models.

    The result is what ``cascade.route`` gives on the images those probabilities came from:
    the same thresholds, combiner and escalation weights, in the cascade's stage order.

    Args:
        cascade: A fitted cascade.
        stage_proba: ``{stage name: probabilities of shape (n, n_classes)}`` for at least
            the cascade's stages, columns in ``cascade.classes_`` order.

    Returns:
        The routing result.

    Raises:
        KeyError: When a stage of the cascade has no probabilities.
    """
    names = list(cascade.named_stages_.keys())
    missing = [name for name in names if name not in stage_proba]
    if missing:
        msg = f"no probabilities for the stage(s) {missing}; have {sorted(stage_proba)}"
        raise KeyError(msg)
    classes = cascade.classes_
    params = cascade.get_params(deep=False)
    params.update(
        stages=[(name, CachedProbabilities(stage_proba[name], classes)) for name in names],
        batch_size=None,
    )
    n = len(stage_proba[names[0]])
    index = np.arange(n, dtype=np.intp)
    placeholder = np.resize(classes, n)  # fit only checks the classes
    replay: CascadeClassifier = type(cascade)(**params).fit(index, placeholder)
    return replay.route(index)


def exits_per_class(
    result: CascadeResult,
    y_true: Sequence[Any] | NDArray[Any],
    classes: Sequence[Any] | NDArray[Any],
) -> dict[str, dict[str, int]]:
    """How many samples of each true class each stage ended.

    Returns:
        ``{stage name: {class: count}}``, stages in cascade order.
    """
    truth = np.asarray(y_true)
    return {
        name: {
            str(label): int(np.sum((result.exit_stage == stage) & (truth == label)))
            for label in classes
        }
        for stage, name in enumerate(result.stage_names)
    }


def shortcut_table(
    proba: Mapping[str, Mapping[str, NDArray[np.floating[Any]]]],
    cascades: Mapping[str, CascadeClassifier],
    y_true: NDArray[Any],
    classes: NDArray[Any],
    baseline: Mapping[str, BaselineResult],
) -> dict[str, dict[str, float]]:
    """Test accuracy of every model under every variant.

    Args:
        proba: ``{variant: {backbone: test probabilities}}``.
        cascades: ``{row name: fitted cascade}``; routed on the cached probabilities.
        y_true: Test labels.
        classes: The classes, in column order.
        baseline: ``{variant: colour baseline trained and tested under it}``.

    Returns:
        ``{model: {variant: test accuracy}}``: backbones, cascades, then ``"Colour
        statistics (no cell)"``.
    """
    table: dict[str, dict[str, float]] = {}
    for variant, by_stage in proba.items():
        for name, p in by_stage.items():
            labels = classes[np.argmax(p, axis=1)]
            table.setdefault(name, {})[variant] = float(np.mean(labels == y_true))
        for name, cascade in cascades.items():
            routed = route_cached(cascade, by_stage)
            table.setdefault(name, {})[variant] = float(np.mean(routed.labels == y_true))
    for variant, result in baseline.items():
        table.setdefault(BASELINE_NAME, {})[variant] = result.test.accuracy
    return table


#: Name of the colour baseline in tables.
BASELINE_NAME: Final = "Colour statistics (no cell)"


def shortcut_markdown(table: Mapping[str, Mapping[str, float]], trained: str) -> str:
    """The shortcut table as Markdown; the column of the training preprocessing is starred."""
    variants = [v.name for v in VARIANTS if any(v.name in row for row in table.values())]
    header = [f"{v} *" if v == trained else v for v in variants]
    lines = [
        "| model | " + " | ".join(header) + " |",
        "|---|" + "---:|" * len(variants),
    ]
    for name, row in table.items():
        cells = [f"{100 * row[v]:.2f}%" if v in row else "-" for v in variants]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def exits_markdown(exits: Mapping[str, Mapping[str, int]]) -> str:
    """Exits per stage and class as a Markdown table."""
    classes = list(next(iter(exits.values()))) if exits else []
    lines = [
        "| stage | " + " | ".join(classes) + " | total |",
        "|---|" + "---:|" * (len(classes) + 1),
    ]
    for stage, counts in exits.items():
        cells = [str(counts[c]) for c in classes]
        lines.append(f"| {stage} | " + " | ".join(cells) + f" | {sum(counts.values())} |")
    return "\n".join(lines)


#: What the audit allows one to claim, for the report and the docs.
CLAIMS: Final = (
    "What these numbers allow one to claim: how much of the test accuracy a model that "
    "sees no cell (whole-image colour statistics) reaches on the same split, and how much "
    "each model loses when the scale-bar strip is masked, the colour normalized or removed "
    "at test time. A model that falls when only the colour or the strip changes was "
    "reading them. What they do not allow: a claim that the backbones classify the subtypes "
    "by morphology. The subtypes are defined by immunophenotype (flow cytometry), not by "
    "what a smear shows; each class comes from other patients and staining sessions, and "
    "the dataset has no patient ids, so a patient-grouped split is impossible. The split "
    "groups exact and near duplicates (and, when set, blocks of consecutive file numbers): "
    "a proxy for patients and sessions that cannot rule out that test images share a "
    "patient, a slide or a session with training images."
)


# --------------------------------------------------------------------- the command
def load_original_and_normalized(
    manifest: SplitManifest, preset: Preset, cache_dir: Path
) -> tuple[NormalizedImages, NormalizedImages]:
    """Every image of the split decoded and resized, and the same stain-normalized.

    Both go through the run's cache (``OUT/cache``), so a run and an audit of the same
    folder decode and normalize once. The stain reference is fitted on training images as
    in :func:`examples.leukemia.experiment.run_experiment`, also when the preset leaves
    stain normalization off.
    """
    original = load_images(manifest, size=preset.cache_size, cache_dir=cache_dir)
    normalizer = fit_stain_normalizer(manifest, size=preset.cache_size, seed=preset.seed)
    normalized = load_images(
        manifest, size=preset.cache_size, normalizer=normalizer, cache_dir=cache_dir
    )
    return original, normalized


def baseline_per_variant(
    original: NormalizedImages,
    normalized: NormalizedImages,
    manifest: SplitManifest,
    preset: Preset,
) -> dict[str, BaselineResult]:
    """The colour baseline trained and tested under every variant of :data:`VARIANTS`."""
    return {
        v.name: colour_baseline(
            apply_variant(
                v,
                original=original.images,
                normalized=normalized.images,
                mask_bottom=preset.mask_bottom,
            ),
            manifest,
            variant=v.name,
            seed=preset.seed,
        )
        for v in VARIANTS
    }


def _write_text(path: Path, text: str) -> None:
    _files.write_text(path, text)  # per-process temporary name, fsync, rename


def baseline_markdown(results: Mapping[str, BaselineResult], trained: str) -> str:
    """The colour baseline per variant as a Markdown table (the training variant starred)."""
    lines = [
        "| preprocessing (train and test) | validation accuracy | test accuracy | test MCC |",
        "|---|---:|---:|---:|",
    ]
    for name, result in results.items():
        star = " *" if name == trained else ""
        lines.append(
            f"| {name}{star} | {result.val_accuracy:.2%} | {result.test.accuracy:.2%} | "
            f"{result.test.mcc:.4f} |"
        )
    return "\n".join(lines)


def run_audit(
    data_root: str | Path, preset: Preset, out: str | Path, *, skip_bad: bool = False
) -> dict[str, Any]:
    """The colour baseline alone, on the split a run of ``preset`` into ``out`` uses.

    Makes (or reuses) ``OUT/split.csv`` exactly as ``run`` does, then trains and tests the
    model that sees no cell under every preprocessing variant. Writes ``OUT/audit.json``
    and ``OUT/audit.md``; takes seconds once the images are cached (about a minute of
    decoding and stain normalization the first time).

    Returns:
        The JSON content: the split's size, the variant the preset trains on, and the
        baseline's validation and test numbers per variant.
    """
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest, _ = prepare_split(
        data_root, out / "split.csv", skip_bad=skip_bad, **preset.split_options()
    )
    original, normalized = load_original_and_normalized(manifest, preset, out / "cache")
    results = baseline_per_variant(original, normalized, manifest, preset)
    trained = trained_variant(
        stain_normalize=preset.stain_normalize, mask_bottom=preset.mask_bottom
    ).name
    payload = {
        "preset": preset.name,
        "seed": preset.seed,
        "split_counts": manifest.counts(),
        "trained_variant": trained,
        "mask_bottom": preset.mask_bottom or SCALE_BAR_FRACTION,
        "colour_baseline": {name: r.as_dict() for name, r in results.items()},
        "seconds": time.perf_counter() - started,
    }
    _write_text(out / "audit.json", json.dumps(payload, indent=2))
    _write_text(
        out / "audit.md",
        "# Shortcut audit: the model that sees no cell\n\n"
        + baseline_markdown(results, trained)
        + f"\n\n\\* the preprocessing the {preset.name!r} preset trains its backbones on. "
        f"Test split: {sum(manifest.counts()['test'].values())} images.\n\n" + CLAIMS + "\n",
    )
    return payload
