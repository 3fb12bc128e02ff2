"""The torch inference engine: devices, batching, precision and streaming routing.

This is the only module of cascademl that touches ``torch.device``, moves tensors with
``.to()``, enters autocast or channels-last, or groups samples into batches. The rest of the
library calls into it:

* [`resolve_device`][cascademl.inference.resolve_device] turns ``"auto"``, ``"cpu"``,
  ``"cuda"``, ``"cuda:N"`` or ``"mps"`` into a ``torch.device``, or raises
  [`DeviceUnavailableError`][cascademl.exceptions.DeviceUnavailableError];
* [`predict_proba_batched`][cascademl.inference.predict_proba_batched] runs a module over
  inputs batch by batch and yields CPU numpy probabilities (as skorch's ``forward_iter``);
* [`stream_route`][cascademl.inference.stream_route] routes a stream of inputs (a tensor, a
  numpy array, a ``Dataset``, a ``DataLoader`` or an iterator of batches) through the stages
  with *batched escalation*: each stage keeps a buffer of the samples that reached it and
  runs only on full batches of its own ``batch_size``; partial batches are flushed only once
  the input is exhausted. Memory is bounded by the batch sizes, not by the dataset size.

The routing loop itself is not here: ``stream_route`` hands a torch source to the one
engine, ``cascademl._engine``, which also routes in-memory inputs and applies the
[`RoutingRule`][cascademl.RoutingRule] through the pure functions of
``cascademl._routing`` and `cascademl.voting`. So a streamed result
equals [`CascadeClassifier.route`][cascademl.CascadeClassifier.route] on the same images
in memory.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cascademl import _engine
from cascademl._engine import DEFAULT_BATCH_SIZE, Keep
from cascademl._precision import ResolvedPrecision, cpu_bf16_support, resolve_precision
from cascademl._typing import IntArray, LabelArray, ProbaArray
from cascademl._validation import check_batch_size
from cascademl.exceptions import (
    DeviceUnavailableError,
    DeviceWarning,
    PolicyError,
    StageInterfaceError,
    StageOutputError,
)

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from torch import nn

    from cascademl.policies import RoutingRule
    from cascademl.results import CascadeResult

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "PRECISIONS",
    "Precision",
    "ResolvedPrecision",
    "as_tensor",
    "autocast",
    "available_devices",
    "cpu_bf16_support",
    "forward_proba",
    "is_stream",
    "iter_batches",
    "predict_proba_batched",
    "prepare_module",
    "resolve_device",
    "resolve_precision",
    "state_dict_to_cpu",
    "stream_route",
    "to_device",
]

logger = logging.getLogger(__name__)

#: Names of the numeric precisions a stage may run in.
#: ``"auto"`` is bfloat16 where the device runs it natively, else float32.
Precision: TypeAlias = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = ("auto", "fp32", "bf16", "fp16")

_AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: (device type, precision) pairs where autocast is applied; elsewhere fp32 with a warning.
_AUTOCAST_SUPPORTED = {("cuda", "bf16"), ("cuda", "fp16"), ("cpu", "bf16")}


# --------------------------------------------------------------------------- devices
def available_devices() -> list[str]:
    """Names of the torch devices present on this machine.

    Returns:
        ``["cpu"]``, then ``"cuda:0"``, ``"cuda:1"``, ... for each visible GPU, then ``"mps"``
        where Apple's Metal backend is available.

    Examples:
        >>> "cpu" in available_devices()
        True
    """
    names = ["cpu"]
    if torch.cuda.is_available():
        names.extend(f"cuda:{i}" for i in range(torch.cuda.device_count()))
    if _mps_available():
        names.append("mps")
    return names


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn a device name into a ``torch.device`` that exists on this machine.

    This is the only place where cascademl chooses a device: nothing falls back silently.

    Args:
        device: ``"auto"`` (the first CUDA GPU, else Apple's ``"mps"``, else ``"cpu"``; the
            choice is logged at INFO level), ``"cpu"``, ``"cuda"`` (the current GPU),
            ``"cuda:N"``, ``"mps"``, or a ``torch.device``.

    Returns:
        The device.

    Raises:
        DeviceUnavailableError: if the device is absent (``"cuda"`` without a GPU, an index
            past the last GPU, ``"mps"`` off Apple silicon) or the name is not one of the
            forms above; the message names the device and those that exist.

    Examples:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if isinstance(device, str) and device == "auto":
        if torch.cuda.is_available():
            chosen = torch.device("cuda", torch.cuda.current_device())
        elif _mps_available():
            chosen = torch.device("mps")
        else:
            chosen = torch.device("cpu")
        logger.info("device='auto' chose %r (available: %s)", str(chosen), available_devices())
        return chosen
    try:
        dev = device if isinstance(device, torch.device) else torch.device(device)
    except (RuntimeError, TypeError) as exc:
        msg = (
            f"device must be 'auto', 'cpu', 'cuda', 'cuda:N', 'mps' or a torch.device, got "
            f"{device!r} (available on this machine: {available_devices()})"
        )
        raise DeviceUnavailableError(msg) from exc
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type == "cuda":
        return _check_cuda(dev)
    if dev.type == "mps":
        if not _mps_available():
            msg = (
                f"device 'mps' was requested but Apple's Metal backend is not available; "
                f"available: {available_devices()}"
            )
            raise DeviceUnavailableError(msg)
        return dev
    msg = (
        f"device {str(dev)!r} is not supported; use 'auto', 'cpu', 'cuda', 'cuda:N' or "
        f"'mps' (available on this machine: {available_devices()})"
    )
    raise DeviceUnavailableError(msg)


def _check_cuda(dev: torch.device) -> torch.device:
    if not torch.cuda.is_available():
        msg = (
            f"device {str(dev)!r} was requested but CUDA is not available (no GPU, no "
            f"driver, or a CPU-only torch build); available: {available_devices()}"
        )
        raise DeviceUnavailableError(msg)
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        msg = (
            f"device {str(dev)!r} was requested but this machine has {count} CUDA "
            f"device(s); available: {available_devices()}"
        )
        raise DeviceUnavailableError(msg)
    return dev


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


# --------------------------------------------------------------------------- tensors
def as_tensor(X: Any, *, name: str = "X") -> torch.Tensor:
    """Check that ``X`` is a batch of images and return it as a tensor, without copying.

    Args:
        X: a ``torch.Tensor`` or numpy array of shape (n_samples, channels, height, width).
        name: named in error messages.

    Returns:
        The tensor (numpy arrays share memory with the result where possible).

    Raises:
        StageInterfaceError: if ``X`` is neither a tensor nor a numeric numpy array, or is not
            four-dimensional.
    """
    if isinstance(X, torch.Tensor):
        tensor = X
    elif isinstance(X, np.ndarray):
        if X.dtype.kind not in "biuf":
            msg = f"{name} must hold numbers, got a numpy array of dtype {X.dtype}"
            raise StageInterfaceError(msg)
        tensor = torch.from_numpy(np.ascontiguousarray(X))
    else:
        msg = (
            f"{name} must be a torch.Tensor or numpy array of shape (n_samples, channels, "
            f"height, width), got {type(X).__name__}"
        )
        raise StageInterfaceError(msg)
    if tensor.ndim != 4:  # noqa: PLR2004 - (N, C, H, W)
        msg = (
            f"{name} must have shape (n_samples, channels, height, width), got shape "
            f"{tuple(tensor.shape)}"
        )
        raise StageInterfaceError(msg)
    return tensor


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move ``x`` to ``device``; float64 inputs become float32 first (models run in fp32).

    Pinned CPU tensors are copied asynchronously to CUDA devices.
    """
    if x.dtype == torch.float64:
        x = x.float()
    if x.device == device:
        return x
    return x.to(device, non_blocking=device.type == "cuda" and x.is_pinned())


def prepare_module(module: nn.Module, device: torch.device, *, channels_last: bool) -> nn.Module:
    """Put ``module`` in eval mode on ``device``, in channels-last layout when asked.

    Returns:
        The same module, modified in place.
    """
    module.eval()
    module.to(device)
    if channels_last:
        module.to(memory_format=torch.channels_last)
    return module


def autocast(device: torch.device, precision: Precision) -> AbstractContextManager[Any]:
    """A context that runs the forward pass in ``precision`` on ``device``.

    ``"fp32"`` does nothing. ``"bf16"`` and ``"fp16"`` use ``torch.autocast`` on CUDA;
    ``"bf16"`` also on CPU. Elsewhere the pass stays in fp32 and a
    [`DeviceWarning`][cascademl.exceptions.DeviceWarning] says so. ``"auto"`` is ``"bf16"``
    where the device runs bfloat16 natively (a CUDA device that supports it, a CPU with
    AVX512-BF16 or AMX) and ``"fp32"`` elsewhere, where emulated bfloat16 can be 20x slower
    ([`resolve_precision`][cascademl.inference.resolve_precision]; the choice is logged).

    Raises:
        PolicyError: if ``precision`` is not one of ``"auto"``, ``"fp32"``, ``"bf16"``,
            ``"fp16"``.
    """
    if precision not in PRECISIONS:
        msg = f"precision must be one of {PRECISIONS}, got {precision!r}"
        raise PolicyError(msg)
    if precision == "auto":
        precision = resolve_precision(precision, device).precision
    if precision == "fp32":
        return contextlib.nullcontext()
    if (device.type, precision) not in _AUTOCAST_SUPPORTED:
        import warnings  # noqa: PLC0415 - only on this rare path

        msg = (
            f"precision={precision!r} is not supported on device {str(device)!r}; running "
            "in fp32 (bf16 and fp16 autocast need CUDA; bf16 also works on CPU)"
        )
        warnings.warn(msg, DeviceWarning, stacklevel=3)
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[precision])


def iter_batches(X: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Yield consecutive slices of at most ``batch_size`` samples (views, no copies)."""
    check_batch_size(batch_size, "batch_size")
    for start in range(0, X.shape[0], batch_size):
        yield X[start : start + batch_size]


def forward_proba(
    module: nn.Module,
    x: torch.Tensor,
    *,
    device: torch.device,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    n_classes: int,
    precision: Precision = "fp32",
    channels_last: bool = False,
) -> ProbaArray:
    """Run one batch through ``module`` and return softmax probabilities on the CPU.

    The batch is moved to ``device``, preprocessed there, optionally converted to
    channels-last, and run under ``torch.inference_mode`` and ``precision``'s autocast; the
    logits are moved to the CPU and turned into float64 probabilities.

    Args:
        module: maps a float tensor (n, c, h, w) to logits of shape (n, n_classes); already
            on ``device`` (see [`prepare_module`][cascademl.inference.prepare_module]).
        x: the raw batch.
        device: where to run.
        preprocess: maps the raw batch (on ``device``) to the module's input.
        n_classes: the expected number of logits per sample.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        channels_last: convert the input to channels-last memory format.

    Returns:
        ndarray of shape (n, n_classes), float64, rows summing to one.

    Raises:
        StageOutputError: if the module does not return logits of shape (n, n_classes).
    """
    with torch.inference_mode():
        batch = preprocess(to_device(x, device))
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            logits = module(batch)
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (x.shape[0], n_classes):
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
            msg = (
                f"{type(module).__name__} returned {shape}; expected logits of shape "
                f"({x.shape[0]}, {n_classes})"
            )
            raise StageOutputError(msg)
        proba = torch.softmax(logits.to("cpu", torch.float64), dim=1)
    return proba.numpy()


def predict_proba_batched(
    module: nn.Module,
    X: Any,
    *,
    batch_size: int,
    device: torch.device,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    n_classes: int,
    precision: Precision = "fp32",
    channels_last: bool = False,
) -> Iterator[ProbaArray]:
    """Yield the probabilities of ``module`` on ``X``, one CPU numpy array per batch.

    Args:
        module: as in [`forward_proba`][cascademl.inference.forward_proba].
        X: tensor or numpy array of shape (n_samples, channels, height, width).
        batch_size: samples per forward pass.
        device: where to run.
        preprocess: maps a raw batch to the module's input.
        n_classes: the expected number of logits per sample.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        channels_last: convert inputs to channels-last memory format.

    Yields:
        ndarray of shape (n_batch, n_classes), float64.
    """
    for batch in iter_batches(as_tensor(X), batch_size):
        yield forward_proba(
            module,
            batch,
            device=device,
            preprocess=preprocess,
            n_classes=n_classes,
            precision=precision,
            channels_last=channels_last,
        )


def state_dict_to_cpu(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's ``state_dict`` with every tensor detached, contiguous and on the CPU."""
    return {
        key: value.detach().to("cpu").contiguous() for key, value in module.state_dict().items()
    }


# --------------------------------------------------------------------------- streaming
def is_stream(X: object) -> bool:
    """Whether ``X`` is routed by streaming: a ``Dataset``, a ``DataLoader`` or an iterator.

    In-memory arrays, tensors and lists are not streams (they are indexed directly).

    Examples:
        >>> is_stream(iter([])), is_stream(torch.zeros(2, 3, 8, 8))
        (True, False)
    """
    return isinstance(X, (Dataset, DataLoader, Iterator))


def stream_route(
    stages: Sequence[Any],
    data: Any,
    *,
    rule: RoutingRule,
    stage_names: Sequence[str],
    classes: LabelArray,
    columns: Sequence[IntArray] | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    keep: Keep = "all",
) -> CascadeResult:
    """Route a stream of images through the stages with batched escalation.

    Each stage keeps a buffer of the samples that reached it and runs only when the buffer
    holds a full batch of the stage's ``batch_size`` (a stage's own attribute, else
    ``batch_size``, else 64); the samples it does not end join the next stage's buffer.
    Partial batches are run only when the input is exhausted, from the first stage to the
    last. Buffers hold raw source samples, so each stage preprocesses them its own way.

    [`CascadeClassifier.route`][cascademl.CascadeClassifier.route] calls this for
    ``Dataset``, ``DataLoader`` and iterator inputs; call it directly to stream tensors.
    In-memory inputs go through the same engine (``cascademl._engine``), so both give the
    same result.

    Args:
        stages: the fitted stages, in order (anything with ``predict_proba``).
        data: a tensor or numpy array (n_samples, c, h, w), a map-style or iterable
            ``Dataset`` (read through a ``DataLoader`` with the first stage's batch size), a
            ``DataLoader``, or an iterator of batches. Items or batches that are tuples or
            lists, such as ``(images, targets)``, contribute their first element.
        rule: the [`RoutingRule`][cascademl.RoutingRule]: measure, one threshold per stage
            (the last is never consulted), combiner and escalation weights.
        stage_names: one name per stage, used in messages and the result.
        classes: ndarray of shape (n_classes,), the cascade's class order.
        columns: per stage, the indices that reorder its ``predict_proba`` columns into
            ``classes`` order; ``None`` when every stage already uses that order.
        batch_size: the batch size of stages without their own ``batch_size`` attribute.
        progress: show a tqdm progress bar over the samples decided (needs ``tqdm``).
        keep: ``"all"`` keeps every visited stage's probabilities in
            ``result.stage_proba``; ``"none"`` does not (``stage_proba`` is ``None``), so
            memory stays bounded by the batch sizes.

    Returns:
        A [`CascadeResult`][cascademl.CascadeResult] in input order, with ``cost_report``
        set: FLOPs per sample counted once per torch stage, latency per sample measured
        in this run (wall time of the stage's ``predict_proba`` over the samples it saw),
        and the run's wall time.

    Raises:
        PolicyError: for an invalid batch size or ``keep``, or mismatched arguments.
        StageOutputError: if a stage returns NaN, negative or malformed probabilities.
        StageInterfaceError: if the input is not images of shape (n, c, h, w).

    Examples:
        >>> import numpy as np, torch
        >>> from cascademl import RoutingRule
        >>> from cascademl.torch_stage import TorchStage
        >>> stage = TorchStage(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2)),
        ...                    classes=["no", "yes"], batch_size=4, device="cpu")
        >>> result = stream_route([stage], torch.rand(10, 3, 2, 2), stage_names=["s"],
        ...                       classes=np.array(["no", "yes"]),
        ...                       rule=RoutingRule("max_proba", (float("inf"),)))
        >>> result.n_samples, result.cost_report.stage_calls
        (10, (10,))
    """
    outcome = _engine.run(
        stages,
        _TensorStream(data),
        rule=rule,
        stage_names=stage_names,
        classes=classes,
        columns=columns,
        batch_size=batch_size,
        want="result",
        keep=keep,
        progress=progress,
    )
    if outcome.result is None:  # pragma: no cover - want="result" always builds one
        msg = "the engine returned no result"
        raise RuntimeError(msg)
    return outcome.result


class _TensorStream:
    """A source of image batches: tensors, numpy arrays, Datasets, DataLoaders, iterators.

    Buffered samples carry their raw rows (a tensor) as payload, so each stage receives the
    source images and preprocesses them its own way.
    """

    default_batch_size = DEFAULT_BATCH_SIZE

    def __init__(self, data: Any) -> None:
        self.data = data
        self.length = _length(data)

    def chunks(self, size: int) -> Iterator[tuple[int, torch.Tensor]]:
        for batch in _iter_source(self.data, size):
            x = as_tensor(batch, name="each input batch")
            yield int(x.shape[0]), x

    def inputs(self, indices: IntArray, payload: torch.Tensor) -> torch.Tensor:  # noqa: ARG002
        return payload

    def concat(self, payloads: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(payloads)

    def select(self, payload: torch.Tensor, rows: slice | IntArray) -> torch.Tensor:
        if isinstance(rows, slice):
            return payload[rows]
        return payload[torch.from_numpy(rows).to(payload.device)]


def _iter_source(data: Any, batch_size: int) -> Iterator[Any]:
    if isinstance(data, (torch.Tensor, np.ndarray)):
        yield from iter_batches(as_tensor(data), batch_size)
        return
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        data = DataLoader(data, batch_size=batch_size, shuffle=False)
    elif not isinstance(data, (DataLoader, Iterable)):
        msg = (
            "data must be a tensor, a numpy array, a torch Dataset or DataLoader, or an "
            f"iterator of batches, got {type(data).__name__}"
        )
        raise StageInterfaceError(msg)
    for batch in data:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def _length(data: Any) -> int | None:
    if isinstance(data, (torch.Tensor, np.ndarray)):
        return int(data.shape[0])
    if isinstance(data, DataLoader):
        data = data.dataset
    try:
        return len(data)
    except TypeError:
        return None
