"""Reuse of a saved cascade: load it with its stain reference, prepare images, evaluate.

The ``cascade`` folder of a run holds the cascade (:func:`cascademl.io.save_cascade`) and
the example's settings file (:data:`SETTINGS_FILE`: classes, cache size, stain reference,
mask); :func:`load_predictor` reads both, :func:`read_images` prepares image files as the
training images were, and :func:`evaluate_folder` scores a labelled folder.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cascademl import CascadeClassifier, _files
from cascademl.io import load_cascade, save_cascade
from cascademl.metrics import ClassificationMetrics, classification_metrics

from .data import (
    LeukemiaDataError,
    load_rgb,
    mask_bottom_strip,
    scan_dataset,
)
from .mapping import folder_classes, parse_class_map
from .transforms import (
    StainNormalizer,
    to_array,
)

__all__ = [
    "SETTINGS_FILE",
    "Predictor",
    "evaluate_folder",
    "images_to_tensor",
    "load_predictor",
    "metrics_json",
    "prepare_image",
    "read_images",
]


#: Name of the example's own settings file inside a saved cascade folder.
SETTINGS_FILE = "leukemia.json"


def images_to_tensor(images: np.ndarray[Any, Any]) -> torch.Tensor:
    """Turn uint8 images of shape (n, h, w, 3) into the (n, 3, h, w) tensor stages take."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def metrics_json(metrics: ClassificationMetrics) -> dict[str, Any]:
    """A classification report as JSON-able values (per-class lists, confusion matrix)."""
    out = metrics.as_dict()
    out["classes"] = [str(c) for c in metrics.classes.tolist()]
    out["precision"] = metrics.precision.tolist()
    out["recall"] = metrics.recall.tolist()
    out["f1"] = metrics.f1.tolist()
    out["confusion_matrix"] = metrics.confusion_matrix.tolist()
    return out


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
        if (folder / "cascade" / SETTINGS_FILE).is_file():  # the run's folder was given
            msg += f" (did you mean --model {folder / 'cascade'}?)"
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
        "metrics": metrics_json(metrics),
        "exit_counts": dict(zip(routed.stage_names, routed.exit_counts.tolist(), strict=True)),
        "skipped": [asdict(s) for s in scan.skipped],
        "stain_fallbacks": fallbacks,
    }
