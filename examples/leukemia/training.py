"""Train one timm backbone: weighted loss, AdamW, early stopping, resumable checkpoints.

:func:`create_backbone` builds a timm model with ImageNet weights from the local caches
or a file the user gives, and never downloads unless asked to. :func:`train_model` runs
the epochs; after each one it writes ``checkpoint.pt`` (model, weight average, optimizer,
scheduler, epoch, history, early-stopping state) atomically, and ``best.pt`` (the weights
of the best validation epoch) whenever they improve, so a rerun with the same output folder resumes
after the last finished epoch, and a finished run is not retrained.

Weight averaging: with ``TrainConfig.ema_decay`` set, an exponential moving average of
the weights and batch-norm statistics (timm's ``ModelEmaV3``) is updated after every
step, and it is the averaged model that is validated, kept as the best and returned. A
from-scratch network trained at a high learning rate for a few epochs swings on
validation from one epoch to the next (its batch-norm statistics lag its weights); the
average does not.

Randomness: every epoch reseeds the shuffling generator and, inside
``torch.random.fork_rng``, the global torch generator used by dropout and the
augmentation, from ``(seed, epoch)``. A resumed run therefore draws the same numbers as
an uninterrupted one without storing RNG states, and the caller's global RNG state is
left untouched.

Several processes (``torchrun``, see :mod:`.distributed`): the model is wrapped in
``DistributedDataParallel`` and each epoch's training items are dealt out by a
``DistributedSampler`` (reshuffled every epoch from the seed and the epoch).
``TrainConfig.batch_size`` stays the *global* batch: each of ``N`` processes takes
``batch_size / N`` items per step, so a step, the number of steps per epoch, the
learning-rate schedule and the meaning of ``lr`` are those of a single-process run. Rank
0 keeps the single-process seeds; the other ranks draw their augmentation and dropout
from seeds derived from ``(seed, epoch, rank)``, so a rerun draws the same numbers. Rank
0 alone validates (on the whole validation split), decides about the best epoch and early
stopping, and writes the checkpoint, ``best.pt`` and the history; it sends its decision
to the others. Every rank loads the checkpoint to resume, and ``best.pt`` at the end.
Batch-norm statistics are those of each process's own share of the batch.

Exceptions::

    TrainingError (RuntimeError)
    ├── PretrainedWeightsUnavailableError   ImageNet weights are not available offline
    └── CheckpointMismatchError             a checkpoint from a different configuration
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import huggingface_hub
import huggingface_hub.errors
import numpy as np
import timm
import timm.models
import torch
from numpy.typing import NDArray
from sklearn.utils.class_weight import compute_class_weight
from timm.utils.model_ema import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm  # type: ignore[import-untyped]

from cascademl import _files
from cascademl.inference import ResolvedPrecision
from cascademl.inference import resolve_precision as _resolve_precision

from . import distributed

logger = logging.getLogger(__name__)

CHECKPOINT_NAME: Final = "checkpoint.pt"
BEST_NAME: Final = "best.pt"
HISTORY_NAME: Final = "history.json"
_FORMAT: Final = 2
#: Precisions a training run may ask for (``"auto"``: bfloat16 only where it is native).
PRECISIONS: Final = ("auto", "fp32", "bf16")
#: Learning-rate decays after the warm-up (both reach zero at the last planned step).
SCHEDULES: Final = ("cosine", "linear")


class TrainingError(RuntimeError):
    """Base class of the training errors of the leukemia example."""


class PretrainedWeightsUnavailableError(TrainingError):
    """Pretrained weights were requested but cannot be had without a download."""


class CheckpointMismatchError(TrainingError):
    """The checkpoint in the output folder was made with other settings."""


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run.

    Attributes:
        epochs: Maximum number of epochs.
        batch_size: Training batch size: images per optimizer step, over all processes
            when ``torchrun`` starts several (each takes ``batch_size / N``; it must
            divide evenly). ``lr`` is the learning rate for this batch, however many
            processes share it.
        lr: Peak learning rate of AdamW.
        weight_decay: AdamW weight decay.
        patience: Epochs without a better validation accuracy before stopping.
        warmup_epochs: Linear warm-up length before the decay, in epochs.
        label_smoothing: Cross-entropy label smoothing.
        ema_decay: Decay of the weight average that is validated and kept (``None``: no
            average, the trained weights themselves). The decay ramps up from 0 over the
            first steps (timm's warm-up), so early epochs are not dominated by the random
            initialization.
        precision: ``"fp32"``, ``"bf16"`` (forward passes under bfloat16 autocast, CPU or
            CUDA) or ``"auto"``: bfloat16 only where the device runs it natively (a CPU
            with AVX512-BF16 or AMX, a CUDA device that supports it), float32 elsewhere.
            Emulated bfloat16 made a training step about 20x slower than float32 on a CPU
            with AVX2 only. The choice and its reason are logged when training starts.
        channels_last: Use the channels-last memory format (faster convolutions on CPU).
        eval_batch_size: Batch size of the validation pass (``None``: twice ``batch_size``).
        num_workers: Worker processes that augment the training batches (0: the main
            process). On a GPU a single process cannot augment 224 px images as fast as
            the GPU trains on them; the workers are seeded from ``seed`` and the epoch, so
            a run stays repeatable for a given ``num_workers``.
        seed: Seed of initialization, shuffling, dropout and augmentation.
        schedule: The decay after the warm-up, to zero at the last of ``epochs``:
            ``"cosine"`` (the presets') or ``"linear"`` (a time-budgeted run's, see
            :mod:`.budget`).
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    patience: int = 3
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.0
    ema_decay: float | None = None
    precision: str = "fp32"
    channels_last: bool = False
    eval_batch_size: int | None = None
    num_workers: int = 0
    seed: int = 0
    schedule: str = "cosine"

    def __post_init__(self) -> None:
        """Validate the settings."""
        if self.schedule not in SCHEDULES:
            msg = f"TrainConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}"
            raise ValueError(msg)
        if self.precision not in PRECISIONS:
            msg = f"TrainConfig.precision must be one of {PRECISIONS}, got {self.precision!r}"
            raise ValueError(msg)
        for name in ("epochs", "batch_size", "patience"):
            value = getattr(self, name)
            if value < 1:
                msg = f"TrainConfig.{name} must be at least 1, got {value}"
                raise ValueError(msg)
        if self.num_workers < 0:
            msg = f"TrainConfig.num_workers must be >= 0, got {self.num_workers}"
            raise ValueError(msg)
        if self.lr <= 0:
            msg = f"TrainConfig.lr must be positive, got {self.lr}"
            raise ValueError(msg)
        if self.warmup_epochs < 0:
            msg = f"TrainConfig.warmup_epochs must be >= 0, got {self.warmup_epochs}"
            raise ValueError(msg)
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            msg = f"TrainConfig.ema_decay must be in (0, 1) or None, got {self.ema_decay}"
            raise ValueError(msg)


@dataclass(frozen=True)
class EpochStats:
    """Metrics of one epoch.

    Attributes:
        epoch: 1-based epoch number.
        train_loss: Mean training loss.
        train_acc: Training accuracy (on the augmented, doubled set).
        val_loss: Mean validation loss.
        val_acc: Validation accuracy.
        seconds: Wall time of the epoch, validation included.
        lr: Learning rate at the end of the epoch.
    """

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    seconds: float
    lr: float


@dataclass
class TrainResult:
    """Outcome of :func:`train_model`.

    Attributes:
        model: The model, holding the weights of the best validation epoch.
        history: One :class:`EpochStats` per finished epoch.
        best_epoch: 1-based epoch of the best validation accuracy.
        best_val_acc: That accuracy.
        stopped_early: Whether patience ran out before ``epochs``.
        resumed_from: Epochs already done when this call started (0 for a fresh run).
        checkpoint: Path of the checkpoint file.
    """

    model: nn.Module
    history: list[EpochStats]
    best_epoch: int
    best_val_acc: float
    stopped_early: bool
    resumed_from: int
    checkpoint: Path


def _cached_pretrained_file(name: str) -> Path | None:
    """Find a model's default pretrained weights in the HF hub or torch hub caches."""
    config = timm.models.get_pretrained_cfg(name)
    if config is None:
        return None
    if config.hf_hub_id:
        filenames = [config.hf_hub_filename] if config.hf_hub_filename else []
        filenames += ["model.safetensors", "pytorch_model.bin"]
        for filename in filenames:
            found = huggingface_hub.try_to_load_from_cache(config.hf_hub_id, filename)
            if isinstance(found, str):
                return Path(found)
    if config.url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / str(config.url).rsplit("/", 1)[-1]
        if candidate.is_file():
            return candidate
    return None


def create_backbone(
    name: str,
    *,
    num_classes: int = 4,
    pretrained: bool = False,
    checkpoint: str | os.PathLike[str] | None = None,
    allow_download: bool = False,
    drop_rate: float = 0.0,
    seed: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a timm backbone with a fresh ``num_classes`` head.

    With ``pretrained=True`` the ImageNet weights come, in this order, from
    ``checkpoint`` (a local file in timm's format), the Hugging Face hub cache or the
    torch hub cache, or (only with ``allow_download=True``) from the internet.

    Args:
        name: timm model name, e.g. ``"densenet201"``.
        num_classes: Output classes.
        pretrained: Start from ImageNet weights; ``False`` trains from scratch.
        checkpoint: Local weights file to use when ``pretrained`` is true.
        allow_download: Let timm download missing weights.
        drop_rate: Dropout before the classifier.
        seed: Seed of the random initialization (the caller's RNG state is kept);
            ``None`` uses the global torch generator.
        **kwargs: Passed to ``timm.create_model``.

    Returns:
        The model, in training mode.

    Raises:
        PretrainedWeightsUnavailableError: Pretrained weights are requested but neither
            given, cached, nor allowed to be downloaded; the download failed; or the
            weights file cannot be loaded into the model. The message names the file or
            the ways out.
        FileNotFoundError: ``checkpoint`` does not exist.
    """
    options: dict[str, Any] = {"num_classes": num_classes, "drop_rate": drop_rate, **kwargs}
    if seed is None:
        return _create(name, pretrained, checkpoint, allow_download, options)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _create(name, pretrained, checkpoint, allow_download, options)


def _create(
    name: str,
    pretrained: bool,
    checkpoint: str | os.PathLike[str] | None,
    allow_download: bool,
    options: dict[str, Any],
) -> nn.Module:
    if not pretrained:
        return timm.create_model(name, pretrained=False, **options)
    file = Path(checkpoint) if checkpoint is not None else _cached_pretrained_file(name)
    if checkpoint is not None and file is not None and not file.is_file():
        msg = f"pretrained checkpoint for {name!r} not found: {file}"
        raise FileNotFoundError(msg)
    if file is not None:
        logger.info("loading %s weights from %s", name, file)
        try:
            return timm.create_model(
                name, pretrained=True, pretrained_cfg_overlay={"file": str(file)}, **options
            )
        # Any failure of torch.load, safetensors or load_state_dict: name the file.
        except Exception as error:
            msg = (
                f"cannot load ImageNet weights for {name!r} from {file}: "
                f"{type(error).__name__}: {str(error)[:500]}. The file must hold timm's "
                f"weights for {name!r} (a state dict in .pth, .bin or .safetensors); "
                "--no-pretrained trains from scratch instead"
            )
            raise PretrainedWeightsUnavailableError(msg) from error
    if allow_download:
        try:
            return timm.create_model(name, pretrained=True, **options)
        # No network, the hub's offline mode, HTTP errors, a full disk; a missing file.
        except (OSError, huggingface_hub.errors.EntryNotFoundError) as error:
            msg = f"downloading ImageNet weights for {name!r} failed ({error}). " + ways_out(
                [name], downloaded=True
            )
            raise PretrainedWeightsUnavailableError(msg) from error
    msg = f"ImageNet weights for {name!r} are not available offline. " + ways_out([name])
    raise PretrainedWeightsUnavailableError(msg)


def ways_out(names: Sequence[str], *, downloaded: bool = False) -> str:
    """Say where the weights of ``names`` were looked for and how else to get them.

    Args:
        names: timm model names whose ImageNet weights are missing.
        downloaded: Whether a download was already tried (then it is not suggested).

    Returns:
        Sentences for an error message.
    """
    hub_ids = []
    for name in names:
        config = timm.models.get_pretrained_cfg(name)
        hub_id = config.hf_hub_id if config is not None else None
        hub_ids.append(hub_id or f"timm/{name}")
    options = [
        "train from scratch with --no-pretrained",
        "give local weights files with " + " ".join(f"--checkpoint {name}=PATH" for name in names),
        "pre-populate the Hugging Face hub cache (on a machine with internet: "
        + "; ".join(f"`hf download {hub_id}`" for hub_id in hub_ids)
        + ", then copy ~/.cache/huggingface, or set HF_HOME)",
    ]
    if not downloaded:
        options.append("let timm download them with --download-weights")
    return (
        f"Looked in the Hugging Face hub cache ({', '.join(repr(h) for h in hub_ids)}) and "
        f"the torch hub cache ({torch.hub.get_dir()}). Ways out: " + "; ".join(options) + "."
    )


def pretrained_available(name: str) -> bool:
    """Whether timm's ImageNet weights for ``name`` are in a local cache (no download)."""
    return _cached_pretrained_file(name) is not None


def class_weights(targets: Sequence[int] | NDArray[np.int64], num_classes: int) -> torch.Tensor:
    """Return ``compute_class_weight("balanced")`` weights as a float tensor.

    Args:
        targets: Training labels in ``range(num_classes)``.
        num_classes: Number of classes.

    Returns:
        One weight per class.

    Raises:
        ValueError: When a class has no training image.
    """
    labels = np.asarray(targets, dtype=np.int64)
    missing = sorted(set(range(num_classes)) - set(labels.tolist()))
    if missing:
        msg = f"classes {missing} have no training image; cannot weight the loss"
        raise ValueError(msg)
    weights = compute_class_weight("balanced", classes=np.arange(num_classes), y=labels)
    return torch.tensor(weights, dtype=torch.float32)


def resolve_precision(precision: str, device: torch.device) -> ResolvedPrecision:
    """The concrete precision (``"fp32"`` or ``"bf16"``) a run uses on ``device``, and why.

    ``"auto"`` is resolved by cascademl's rule: bfloat16 only where it is native.
    """
    if precision not in PRECISIONS:
        msg = f"precision must be one of {PRECISIONS}, got {precision!r}"
        raise ValueError(msg)
    return _resolve_precision(precision, device)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if resolve_precision(precision, device).precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _batches(
    model: nn.Module,
    dataset: Dataset[tuple[torch.Tensor, int]],
    *,
    batch_size: int,
    device: torch.device,
    precision: str,
    channels_last: bool,
) -> Any:
    """Yield ``(logits as float32 on CPU, targets)`` for a dataset, without gradients."""
    model.eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    with torch.inference_mode():
        for batch, targets in loader:
            with _autocast(device, precision):
                logits = model(batch.to(device, memory_format=memory_format))
            yield logits.float().cpu(), targets


def _evaluate(
    model: nn.Module,
    dataset: Dataset[tuple[torch.Tensor, int]],
    criterion: nn.Module,
    config: TrainConfig,
    device: torch.device,
) -> tuple[float, float]:
    total_loss, correct, seen = 0.0, 0, 0
    for logits, targets in _batches(
        model,
        dataset,
        batch_size=config.eval_batch_size or 2 * config.batch_size,
        device=device,
        precision=config.precision,
        channels_last=config.channels_last,
    ):
        # The logits come back on the CPU; the class weights live where the model trains.
        loss = criterion(logits.to(device), targets.to(device))
        total_loss += float(loss) * len(targets)
        correct += int((logits.argmax(dim=1) == targets).sum())
        seen += len(targets)
    return total_loss / max(seen, 1), correct / max(seen, 1)


def _schedule(
    total_steps: int, warmup_steps: int, *, linear: bool = False
) -> Callable[[int], float]:
    """The learning-rate factor after ``step`` steps: warm-up, then a decay to zero.

    The decay is a half cosine, or with ``linear`` a straight line (a time budget's), and
    reaches zero after ``total_steps`` steps.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if linear:
            return 1.0 - progress
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _atomic_save(obj: object, path: Path) -> None:
    try:
        with _files.atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except RuntimeError as exc:  # a full disk reads "basic_ios::clear: iostream error"
        msg = f"{path}: could not write the checkpoint ({exc}); is the disk full?"
        raise TrainingError(msg) from exc


def _epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed of one epoch's random numbers on one rank (rank 0: the single-process seed)."""
    base = (seed * 1_000_003 + epoch) % (2**63)
    return base if rank == 0 else (base + rank * 0x9E3779B97F4A7C15) % (2**63)


def check_batch_size(batch_size: int, world_size: int, *, name: str = "batch_size") -> int:
    """Return the per-process batch: ``batch_size`` shared by ``world_size`` processes.

    Raises:
        ValueError: ``batch_size`` is not a multiple of ``world_size``; the message names
            both.
    """
    if batch_size % world_size:
        msg = (
            f"{name}={batch_size} is not a multiple of the {world_size} training processes: "
            f"the batch is shared evenly; choose a multiple of {world_size} (e.g. "
            f"--set {name}={world_size * max(1, round(batch_size / world_size))})"
        )
        raise ValueError(msg)
    return batch_size // world_size


def train_model(
    model: nn.Module,
    train_set: Dataset[tuple[torch.Tensor, int]],
    val_set: Dataset[tuple[torch.Tensor, int]],
    *,
    config: TrainConfig,
    out_dir: str | os.PathLike[str],
    weights: torch.Tensor | None = None,
    device: str | torch.device = "cpu",
    fingerprint: Mapping[str, Any] | None = None,
    progress: bool = False,
    on_epoch_end: Callable[[EpochStats], None] | None = None,
) -> TrainResult:
    """Train ``model``, or resume or reuse the run saved in ``out_dir``.

    The model is trained with class-weighted cross-entropy and AdamW under a per-step
    linear warm-up and cosine decay. After every epoch the validation accuracy is
    measured (of the weight average when ``config.ema_decay`` is set, which is then also
    what is kept and returned); the best weights are kept, and training stops after
    ``config.patience`` epochs without improvement (ties on accuracy are broken by the
    lower validation loss). Inside a process group (``torchrun``) the model trains with
    DistributedDataParallel and rank 0 alone validates and writes (see the module notes).

    Args:
        model: A freshly built backbone (its weights are replaced on resume).
        train_set: Training items ``(image tensor, label)``.
        val_set: Validation items.
        config: Training settings.
        out_dir: Folder for ``checkpoint.pt``, ``best.pt`` and ``history.json``.
        weights: Per-class loss weights (see :func:`class_weights`); ``None``: unweighted.
        device: Where to train.
        fingerprint: Extra JSON-serializable facts (model name, split digest, ...) that
            must match for a checkpoint to be resumed.
        progress: Show tqdm progress bars.
        on_epoch_end: Called with each finished epoch's stats, after its checkpoint is
            written; an exception it raises interrupts training (as a crash would).

    Returns:
        The model with its best weights, the history and the stopping facts.

    Raises:
        CheckpointMismatchError: ``out_dir`` holds a checkpoint made with other settings.
    """
    ranks = distributed.current()
    folder = Path(out_dir)
    if ranks.main:
        folder.mkdir(parents=True, exist_ok=True)
    checkpoint_path = folder / CHECKPOINT_NAME
    best_path = folder / BEST_NAME
    parts = _Parts.build(model, config, len(train_set), weights, torch.device(device), ranks=ranks)  # type: ignore[arg-type]
    settings = asdict(config)
    if settings["schedule"] == "cosine":  # left out, so that earlier runs' checkpoints resume
        del settings["schedule"]
    identity = json.loads(json.dumps({"config": settings, **(fingerprint or {})}))
    state: dict[str, Any] = {
        "format": _FORMAT,
        "identity": identity,
        "epoch": 0,
        "history": [],
        "best": None,
        "bad_epochs": 0,
        "finished": False,
        "stopped_early": False,
    }
    chosen = resolve_precision(config.precision, parts.device)
    logger.info(
        "training in %s on %s (precision=%r: %s)",
        chosen.precision,
        parts.device,
        config.precision,
        chosen.reason,
    )
    # Rank 0 decides whether to resume; every rank then loads the same checkpoint.
    if distributed.broadcast(checkpoint_path.is_file()):
        state = parts.restore(distributed.readable(checkpoint_path), state)
        logger.info("resuming %s after epoch %d", checkpoint_path, state["epoch"])
    resumed_from = int(state["epoch"])
    parts.wrap()

    while not state["finished"]:
        start = time.perf_counter()
        train_loss, train_acc = parts.train_epoch(
            train_set, state["epoch"], progress=progress and ranks.main
        )
        found: EpochStats | None = None
        if ranks.main:  # the others wait for its numbers
            val_loss, val_acc = _evaluate(
                parts.evaluated, val_set, parts.criterion, config, parts.device
            )
            found = EpochStats(
                epoch=state["epoch"] + 1,
                train_loss=train_loss,
                train_acc=train_acc,
                val_loss=val_loss,
                val_acc=val_acc,
                seconds=time.perf_counter() - start,
                lr=float(parts.scheduler.get_last_lr()[0]),
            )
        stats = distributed.share(found, EpochStats)
        improved = _record(state, stats, config.epochs, config.patience)
        if not ranks.main:
            if on_epoch_end is not None:
                on_epoch_end(stats)
            continue
        if improved:
            _atomic_save(parts.evaluated.state_dict(), best_path)
        logger.info(
            "epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.1fs",
            stats.epoch,
            config.epochs,
            train_loss,
            train_acc,
            val_loss,
            val_acc,
            stats.seconds,
        )
        _atomic_save({**state, **parts.state_dicts()}, checkpoint_path)
        _files.write_text(folder / HISTORY_NAME, json.dumps(state["history"], indent=1))
        if on_epoch_end is not None:
            on_epoch_end(stats)

    distributed.barrier()  # best.pt is written
    best = state["best"]
    best_file = distributed.readable(best_path)
    model.load_state_dict(torch.load(best_file, map_location=parts.device, weights_only=True))
    model.eval()
    return TrainResult(
        model=model,
        history=[EpochStats(**row) for row in state["history"]],
        best_epoch=int(best["epoch"]),
        best_val_acc=float(best["val_acc"]),
        stopped_early=bool(state["stopped_early"]),
        resumed_from=resumed_from,
        checkpoint=checkpoint_path,
    )


def _record(state: dict[str, Any], stats: EpochStats, epochs: int, patience: int) -> bool:
    """Add an epoch to the run state; return whether it is the best so far."""
    state["history"].append(asdict(stats))
    state["epoch"] = stats.epoch
    best = state["best"]
    improved = best is None or (stats.val_acc, -stats.val_loss) > (
        best["val_acc"],
        -best["val_loss"],
    )
    if improved:
        state["best"] = {"epoch": stats.epoch, "val_acc": stats.val_acc, "val_loss": stats.val_loss}
        state["bad_epochs"] = 0
    else:
        state["bad_epochs"] += 1
    state["stopped_early"] = state["bad_epochs"] >= patience
    state["finished"] = stats.epoch >= epochs or state["stopped_early"]
    return improved


@dataclass
class _Parts:
    """The model and what trains it: loss, optimizer, scheduler, settings, device."""

    model: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    config: TrainConfig
    device: torch.device
    drop_last: bool
    ema: ModelEmaV3 | None = None
    step: int = 0
    ranks: distributed.Ranks = field(default_factory=distributed.Ranks)
    #: What the training steps run: the model, or its DistributedDataParallel wrapper.
    trained: nn.Module | None = None

    @property
    def evaluated(self) -> nn.Module:
        """The network that is validated and kept: the weight average, if any."""
        return self.model if self.ema is None else self.ema.module

    @classmethod
    def build(
        cls,
        model: nn.Module,
        config: TrainConfig,
        train_size: int,
        weights: torch.Tensor | None,
        device: torch.device,
        *,
        ranks: distributed.Ranks | None = None,
    ) -> _Parts:
        ranks = ranks or distributed.Ranks()
        check_batch_size(config.batch_size, ranks.world_size)
        if train_size < ranks.world_size:
            msg = (
                f"{train_size} training items cannot be shared by {ranks.world_size} "
                "processes; start fewer"
            )
            raise ValueError(msg)
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        model.to(device)
        model.to(memory_format=memory_format)
        criterion = nn.CrossEntropyLoss(
            weight=None if weights is None else weights.to(device),
            label_smoothing=config.label_smoothing,
        )
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=config.lr,
            weight_decay=config.weight_decay,
            fused=device.type in {"cpu", "cuda"},
        )
        drop_last = train_size > config.batch_size
        steps_per_epoch = train_size // config.batch_size if drop_last else 1
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            _schedule(
                steps_per_epoch * config.epochs,
                round(config.warmup_epochs * steps_per_epoch),
                linear=config.schedule == "linear",
            ),
        )
        ema = (
            None
            if config.ema_decay is None
            else ModelEmaV3(model, decay=config.ema_decay, use_warmup=True, warmup_power=0.75)
        )
        return cls(
            model, criterion, optimizer, scheduler, config, device, drop_last, ema, ranks=ranks
        )

    def wrap(self) -> None:
        """Wrap the model for the training steps (DistributedDataParallel with a group).

        Called after a checkpoint is restored; the wrapper starts by copying rank 0's
        weights and buffers to every rank.
        """
        if not self.ranks.distributed:
            self.trained = self.model
            return
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.trained = DistributedDataParallel(self.model, device_ids=ids)

    def state_dicts(self) -> dict[str, Any]:
        saved = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
        }
        if self.ema is not None:
            saved["ema"] = self.ema.module.state_dict()
        return saved

    def restore(self, path: Path, fresh: dict[str, Any]) -> dict[str, Any]:
        """Load a checkpoint into the parts; return its run state."""
        saved = torch.load(path, map_location=self.device, weights_only=True)
        if saved.get("format") != _FORMAT or saved.get("identity") != fresh["identity"]:
            msg = (
                f"{path} was written with other settings (saved {saved.get('identity')}, "
                f"now {fresh['identity']}); delete it or choose another output folder"
            )
            raise CheckpointMismatchError(msg)
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.step = int(saved["step"])
        if self.ema is not None:
            self.ema.module.load_state_dict(saved["ema"])
        return {key: saved[key] for key in fresh}

    def train_epoch(
        self, dataset: Dataset[tuple[torch.Tensor, int]], epoch: int, *, progress: bool
    ) -> tuple[float, float]:
        """Run one epoch (0-based ``epoch``) with RNG seeded from ``(seed, epoch)``."""
        config = self.config
        seed = _epoch_seed(config.seed, epoch, self.ranks.rank)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        trained = self.model if self.trained is None else self.trained
        total_loss, correct, seen = 0.0, 0, 0
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            loader = self._loader(dataset, epoch, seed)
            trained.train()
            description = f"epoch {epoch + 1}/{config.epochs}"
            for batch, labels in tqdm(loader, desc=description, disable=not progress, leave=False):
                inputs = batch.to(self.device, memory_format=memory_format)
                targets = labels.to(self.device)
                self.optimizer.zero_grad(set_to_none=True)
                with _autocast(self.device, config.precision):
                    logits = trained(inputs)
                loss = self.criterion(logits.float(), targets)
                loss.backward()
                self.optimizer.step()
                self.scheduler.step()
                self.step += 1
                if self.ema is not None:
                    self.ema.update(self.model, step=self.step)
                total_loss += float(loss.detach()) * len(targets)
                correct += int((logits.argmax(dim=1) == targets).sum())
                seen += len(targets)
        if self.ranks.distributed:  # the epoch's numbers over every process's items
            sums = torch.tensor([total_loss, correct, seen], dtype=torch.float64)
            sums = sums.to(self.device)
            torch.distributed.all_reduce(sums)
            total_loss, correct, seen = float(sums[0]), int(sums[1]), int(sums[2])
        return total_loss / max(seen, 1), correct / max(seen, 1)

    def _loader(
        self, dataset: Dataset[tuple[torch.Tensor, int]], epoch: int, seed: int
    ) -> DataLoader[tuple[torch.Tensor, int]]:
        """The epoch's training batches; with several processes, this rank's share."""
        config = self.config
        if not self.ranks.distributed:
            return DataLoader(
                dataset,
                batch_size=config.batch_size,
                shuffle=True,
                drop_last=self.drop_last,
                generator=torch.Generator().manual_seed(seed),
                num_workers=config.num_workers,
                pin_memory=self.device.type == "cuda",
            )
        # drop_last on both: each rank gets floor(n / N) items in batches of batch_size / N,
        # so the steps per epoch are floor(n / batch_size), as with one process.
        sampler: DistributedSampler[tuple[torch.Tensor, int]] = DistributedSampler(
            dataset,
            num_replicas=self.ranks.world_size,
            rank=self.ranks.rank,
            shuffle=True,
            seed=config.seed,
            drop_last=True,
        )
        sampler.set_epoch(epoch)
        return DataLoader(
            dataset,
            batch_size=check_batch_size(config.batch_size, self.ranks.world_size),
            sampler=sampler,
            drop_last=self.drop_last,
            generator=torch.Generator().manual_seed(seed),
            num_workers=config.num_workers,
            pin_memory=self.device.type == "cuda",
        )
