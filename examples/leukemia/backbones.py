"""The backbones: check their weights, train (or resume) each, wrap it as a `TorchStage`.

Also the backbones' probabilities on validation and test (:data:`PROBABILITIES_FILE`),
computed once and shared by the tuning, the tests and the shortcut audit.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from cascademl import CascadeClassifier, ConfidencePolicy, _files
from cascademl.cost import StageCost, measure_stage_cost
from cascademl.inference import resolve_precision
from cascademl.torch_stage import TorchStage
from cascademl.tuning import (
    stage_probabilities,
)

from .budget import BudgetPlanner
from .data import (
    CLASS_NAMES,
    SplitManifest,
)
from .presets import CPU_BF16_BUDGET, BackboneSpec, Preset
from .training import (
    PretrainedWeightsUnavailableError,
    TrainResult,
    class_weights,
    create_backbone,
    pretrained_available,
    train_model,
    ways_out,
)
from .transforms import (
    ImageArrayDataset,
    NormalizedImages,
    build_augmentation,
    preprocessing_for,
)

__all__ = [
    "PROBABILITIES_FILE",
    "BackboneScores",
    "BackboneTraining",
    "TrainedBackbones",
    "check_pretrained_weights",
    "predicted_labels",
    "score_backbones",
    "train_backbones",
    "warn_if_slow_precision",
]

logger = logging.getLogger(__name__)


#: Every backbone's probabilities on validation and test, for re-tuning without the models.
PROBABILITIES_FILE = "probabilities.npz"


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
    minutes = {kind: sum(steps.values()) / 60 for kind, steps in CPU_BF16_BUDGET.items()}
    logger.warning(
        "preset %r was sized for a CPU that trains in bfloat16 natively (about %.0f min of "
        "training on 2 cores with AMX); this one trains in %s (%s), which took about %.0f min "
        "on a 2-core AVX2 CPU. --preset cpu is sized for either kind of CPU.",
        preset.name,
        minutes["bf16 (AMX)"],
        choice.precision,
        choice.reason,
        minutes["fp32 (AVX2)"],
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


def _stage(spec: BackboneSpec, model: torch.nn.Module, preset: Preset, device: str) -> TorchStage:
    """Wrap a trained backbone with the preprocessing it was trained with.

    That is :func:`.transforms.preprocessing_for` (timm's mean/std, the backbone's own
    input size), the object the training transforms were built from.
    """
    prep = preprocessing_for(model, spec.image_size)
    stage = TorchStage.from_timm(
        spec.timm_name,
        num_classes=len(CLASS_NAMES),
        classes=list(CLASS_NAMES),
        input_size=prep.input_size,
        interpolation=prep.interpolation,
        mean=prep.mean,
        std=prep.std,
        crop_pct=prep.crop_pct,
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


def _history_dicts(result: TrainResult) -> list[dict[str, float]]:
    return [asdict(epoch) for epoch in result.history]


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
    full = CascadeClassifier.from_fitted(stages, policy=ConfidencePolicy(thresholds=0.0))
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


@dataclass(frozen=True)
class BackboneTraining:
    """How the training of one backbone went (``training`` in ``metrics.json``).

    Attributes:
        best_epoch: 1-based epoch of the best validation accuracy.
        best_val_acc: That accuracy.
        epochs_run: Epochs finished, including those of an earlier run this one resumed.
        stopped_early: Whether patience ran out before the last epoch.
        resumed_from: Epochs already done when this run started.
        train_seconds: Training time summed over every epoch.
    """

    best_epoch: int
    best_val_acc: float
    epochs_run: int
    stopped_early: bool
    resumed_from: int
    train_seconds: float

    @classmethod
    def from_result(cls, result: TrainResult) -> BackboneTraining:
        """Summarise :func:`.training.train_model`'s result."""
        return cls(
            best_epoch=result.best_epoch,
            best_val_acc=result.best_val_acc,
            epochs_run=len(result.history),
            stopped_early=result.stopped_early,
            resumed_from=result.resumed_from,
            train_seconds=float(sum(e.seconds for e in result.history)),
        )

    def to_json(self) -> dict[str, Any]:
        """The backbone's entry under ``training`` in ``metrics.json``."""
        return asdict(self)


class TrainedBackbones(NamedTuple):
    """What :func:`train_backbones` returns.

    Attributes:
        stages: ``(display name, stage)`` per backbone, in the preset's order.
        histories: Per backbone, one dict of :class:`.training.EpochStats` per epoch.
        training: Per backbone, how its training went.
    """

    stages: list[tuple[str, TorchStage]]
    histories: dict[str, list[dict[str, float]]]
    training: dict[str, BackboneTraining]


def train_backbones(
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
    planner: BudgetPlanner | None = None,
) -> TrainedBackbones:
    """Train (or resume, or reuse) every backbone and wrap each as a `TorchStage`.

    With a ``planner`` (a time budget) each backbone trains for its planned epochs at its
    planned size, with the learning rate decaying linearly to zero; after each one the
    planner may cut the later ones (see :mod:`.budget`).
    """
    # The same for every backbone: taken once (each subset is a copy of the split's images).
    train_x, train_y = images.subset(manifest, "train"), manifest.targets("train")
    val_x, val_y = images.subset(manifest, "val"), manifest.targets("val")
    weights = class_weights(train_y, len(manifest.classes))
    trained = TrainedBackbones([], {}, {})
    for preset_spec in preset.backbones:
        spec = preset_spec if planner is None else planner.apply(preset_spec)
        config = preset.train_config(spec)
        if planner is not None:
            config = dataclasses.replace(config, schedule="linear")
        logger.info(
            "training %s (%s @ %d px, %d epochs)",
            spec.name,
            spec.timm_name,
            spec.image_size,
            config.epochs,
        )
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
        augment = build_augmentation()
        result = train_model(
            model,
            ImageArrayDataset(train_x, train_y, prep, augment=augment, double=preset.doubling),
            ImageArrayDataset(val_x, val_y, prep),
            config=config,
            out_dir=out / "models" / spec.timm_name,
            weights=weights,
            device=device,
            fingerprint=_fingerprint(preset, spec, manifest, stain),
            progress=progress,
        )
        trained.stages.append((spec.name, _stage(spec, result.model, preset, device)))
        trained.histories[spec.name] = _history_dicts(result)
        trained.training[spec.name] = BackboneTraining.from_result(result)
        if planner is not None:
            done = trained.training[spec.name]
            planner.finished(
                spec.timm_name, epochs_run=done.epochs_run, train_seconds=done.train_seconds
            )
    return trained


def predicted_labels(
    proba: np.ndarray[Any, Any], classes: np.ndarray[Any, Any]
) -> np.ndarray[Any, Any]:
    """The most probable class of each row of ``proba``."""
    labels: np.ndarray[Any, Any] = classes[np.argmax(proba, axis=1)]
    return labels


class BackboneScores(NamedTuple):
    """Every backbone alone on validation and test, and its cost (:func:`score_backbones`).

    Attributes:
        names: The backbones' display names, in training order.
        val_proba: Probabilities of shape (n_backbones, n_val, n_classes).
        test_proba: Probabilities of shape (n_backbones, n_test, n_classes).
        costs: Each backbone's measured cost per image.
        val_accuracy: Each backbone's validation accuracy.
    """

    names: list[str]
    val_proba: np.ndarray[Any, Any]
    test_proba: np.ndarray[Any, Any]
    costs: list[StageCost]
    val_accuracy: list[float]

    @property
    def flops(self) -> list[float]:
        """FLOPs per image of each backbone."""
        return [c.flops_per_sample for c in self.costs]


def score_backbones(
    stages: list[tuple[str, TorchStage]],
    x: Mapping[str, torch.Tensor],
    y: Mapping[str, np.ndarray[Any, Any]],
    classes: np.ndarray[Any, Any],
    out: Path,
) -> BackboneScores:
    """Run every backbone on validation and test once (saved), and measure its cost."""
    val_proba, test_proba = _backbone_probabilities(stages, x, y, classes, out)
    costs = [
        measure_stage_cost(stage, x["test"][:1], name=name, repeats=3) for name, stage in stages
    ]
    val_accuracy = [float(np.mean(predicted_labels(p, classes) == y["val"])) for p in val_proba]
    return BackboneScores([name for name, _ in stages], val_proba, test_proba, costs, val_accuracy)
