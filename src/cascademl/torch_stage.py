"""`TorchStage`: a pre-trained PyTorch image classifier as a cascade stage.

A [`TorchStage`][cascademl.torch_stage.TorchStage] wraps any ``torch.nn.Module`` that maps
images to logits, together with its own preprocessing (input size, interpolation, crop,
mean and std), so stages with different input sizes run from the same source images. For
timm models the preprocessing comes from timm's data config
(``timm.data.resolve_model_data_config``); nothing is hard-coded. Device placement, batching,
autocast and channels-last are delegated to [`cascademl.inference`][cascademl.inference].
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import fields
from typing import Any

import numpy as np
import torch
from torch import nn

from cascademl import inference
from cascademl._images import to_uint8_image
from cascademl._preprocessing import (
    Interpolation,
    Preprocessing,
    _as_nchw,
    _import_timm,
    _resolve_preprocessing,
)
from cascademl._typing import LabelArray, ProbaArray
from cascademl._validation import check_positive_int
from cascademl.cost import count_flops
from cascademl.exceptions import PolicyError, SerializationError, StageError, StageInterfaceError

__all__ = [
    "CONFIG_FORMAT",
    "CONFIG_VERSION",
    "Interpolation",
    "Preprocessing",
    "TorchStage",
    "to_uint8_image",
]


#: The ``"format"`` key of `TorchStage.to_config`.
CONFIG_FORMAT = "cascademl.TorchStage"
#: The ``"version"`` key of `TorchStage.to_config`; bumped on incompatible changes.
CONFIG_VERSION = 1


class TorchStage:
    """A pre-trained ``torch.nn.Module`` image classifier, used as a cascade stage.

    The stage is never fitted by a cascade (it has no ``fit``), and ``sklearn.base.clone``
    returns it unchanged (``__sklearn_clone__``), so a trained network is never refit or
    copied. ``predict_proba`` accepts tensors or numpy arrays of raw source images of shape
    (n_samples, channels, height, width), ``uint8`` in ``[0, 255]`` or float in ``[0, 1]``,
    preprocesses them for this model (see [`Preprocessing`][cascademl.torch_stage.Preprocessing])
    and returns float64 softmax probabilities, ``batch_size`` samples per forward pass.

    It also reads, without being told, the layouts images usually come in:

    * channels-last batches (n_samples, height, width, channels), as numpy and PIL give
      them: recognised when the last axis has the model's channel count and the second has
      not (with no ``input_size`` or ``mean``, when the last axis has 1, 3 or 4 values and
      the second has not), and read through a permuted view, without a copy;
    * a list of PIL images of one size (converted to RGB, or to grayscale for a one-channel
      model, when their mode differs; the preprocessing then resizes them), or a list of
      single images as arrays or tensors of one shape, stacked into a batch.

    Anything else (file paths, images of different sizes) raises a
    [`StageInterfaceError`][cascademl.exceptions.StageInterfaceError] that says what the
    stage takes.

    Preprocessing arguments left at ``None`` come from timm's data config when ``module`` is
    a timm model (``timm.data.resolve_model_data_config``); for other modules ``None``
    means no resize and no normalisation, and ``interpolation`` defaults to ``"bilinear"``.

    Args:
        module: maps a float tensor (n, c, h, w) to logits of shape (n, n_classes).
        classes: array-like of shape (n_classes,), the label of each logit, in order.
        input_size: ``(channels, height, width)`` of the model's input.
        interpolation: ``"nearest"``, ``"bilinear"`` or ``"bicubic"``.
        mean: per-channel normalisation mean.
        std: per-channel normalisation standard deviation.
        crop_pct: centre-crop share, as in timm (``1.0`` is a plain resize).
        batch_size: samples per forward pass; the streaming engine gathers escalated
            samples into full batches of this size.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``; resolved by
            [`resolve_device`][cascademl.inference.resolve_device] on first use.
        precision: ``"fp32"`` (default), ``"bf16"``/``"fp16"`` autocast (CUDA; ``"bf16"``
            also on CPU), or ``"auto"``: bfloat16 where the device runs it natively (a CUDA
            device that supports it, a CPU with AVX512-BF16 or AMX), float32 elsewhere,
            where emulated bfloat16 can be 20x slower. ``"auto"`` is resolved at every
            call on the machine that runs it, so a saved stage adapts to the next machine.
        channels_last: run in channels-last memory format (faster convolutions on recent
            GPUs).
        cost_per_sample: this stage's cost for one sample, in any unit, for the
            ``stage_cost`` of [`CascadeResult`][cascademl.CascadeResult]; e.g.
            ``stage.flops_per_sample(images)``.

    Attributes:
        classes_: ndarray of shape (n_classes,).
        preprocessing_: the resolved [`Preprocessing`][cascademl.torch_stage.Preprocessing].
        device_: the resolved ``torch.device``, set on first use.
        module_: the wrapped module, in eval mode on ``device_`` once used.

    Raises:
        PolicyError: for an invalid ``batch_size``, ``precision`` or preprocessing value.
        StageInterfaceError: if ``module`` is not a ``torch.nn.Module`` or ``classes`` is
            empty.

    Examples:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
        >>> stage = TorchStage(net, classes=["cat", "dog"], input_size=(3, 8, 8),
        ...                    mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), device="cpu")
        >>> stage.predict_proba(torch.rand(5, 3, 16, 16)).shape
        (5, 2)
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        classes: Any,
        input_size: tuple[int, int, int] | None = None,
        interpolation: Interpolation | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        crop_pct: float | None = None,
        batch_size: int = 64,
        device: str | torch.device = "auto",
        precision: inference.Precision = "fp32",
        channels_last: bool = False,
        cost_per_sample: float | None = None,
    ) -> None:
        if not isinstance(module, nn.Module):
            msg = f"module must be a torch.nn.Module, got {type(module).__name__}"
            raise StageInterfaceError(msg)
        labels = np.asarray(classes)
        if labels.ndim != 1 or labels.size == 0:
            msg = f"classes must be a non-empty 1-d array-like, got shape {labels.shape}"
            raise StageInterfaceError(msg)
        batch_size = check_positive_int(batch_size, "batch_size")  # numpy integers too
        if precision not in inference.PRECISIONS:
            msg = f"precision must be one of {inference.PRECISIONS}, got {precision!r}"
            raise PolicyError(msg)
        self.module = module
        self.classes = classes
        self.input_size = input_size
        self.interpolation = interpolation
        self.mean = mean
        self.std = std
        self.crop_pct = crop_pct
        self.batch_size = batch_size
        self.device = device
        self.precision = precision
        self.channels_last = channels_last
        self.cost_per_sample = cost_per_sample
        self.classes_: LabelArray = labels
        self.module_ = module
        self.preprocessing_ = _resolve_preprocessing(
            module,
            input_size=input_size,
            interpolation=interpolation,
            mean=mean,
            std=std,
            crop_pct=crop_pct,
        )
        self._architecture: dict[str, Any] = {
            "source": "module",
            "class": f"{type(module).__module__}.{type(module).__qualname__}",
        }
        self._flops: dict[tuple[int, ...], float] = {}
        self._device: torch.device | None = None

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_timm(
        cls,
        name: str,
        *,
        num_classes: int,
        pretrained: bool = False,
        checkpoint_path: str | os.PathLike[str] | None = None,
        classes: Any = None,
        **kwargs: Any,
    ) -> TorchStage:
        """Build a stage from a timm model name, with timm's preprocessing for it.

        Args:
            name: a timm model name, e.g. ``"resnet18"`` or ``"inception_v3"``.
            num_classes: outputs of the classifier head.
            pretrained: start from timm's pretrained weights (downloaded by timm into the
                Hugging Face hub cache unless already there, or read from
                ``checkpoint_path``); the head is re-initialised when ``num_classes``
                differs from the pretrained one.
            checkpoint_path: a local weights file. With ``pretrained=True`` it holds the
                pretrained weights (no download); with ``pretrained=False`` it is a full
                checkpoint of this architecture with ``num_classes`` outputs (e.g. a
                fine-tuned model), loaded strictly.
            classes: labels of the outputs; ``range(num_classes)`` by default.
            **kwargs: the class's own keyword arguments (``input_size``,
                ``interpolation``, ``mean``, ``std``, ``crop_pct``, ``batch_size``,
                ``device``, ``precision``, ``channels_last``, ``cost_per_sample``) configure
                the stage, and preprocessing values given here override timm's (e.g.
                ``input_size=(3, 64, 64)``); any other keyword is a JSON-able argument for
                ``timm.create_model`` (e.g. ``drop_rate``), where ``None`` values are
                dropped, as timm does.

        Returns:
            The stage.

        Raises:
            ImportError: if timm is not installed.
            StageError: if pretrained weights cannot be had offline: the message names the
                ways out.
            FileNotFoundError: if ``checkpoint_path`` does not exist.
        """
        timm = _import_timm()
        options = {k: v for k, v in kwargs.items() if k in _STAGE_OPTIONS}
        model_kwargs = {
            k: v for k, v in kwargs.items() if k not in _STAGE_OPTIONS and v is not None
        }
        if checkpoint_path is not None and not os.path.isfile(checkpoint_path):  # noqa: PTH113
            msg = f"checkpoint_path {os.fspath(checkpoint_path)!r} does not exist"
            raise FileNotFoundError(msg)
        create: dict[str, Any] = {"num_classes": num_classes, **model_kwargs}
        if pretrained and checkpoint_path is not None:
            create["pretrained_cfg_overlay"] = {"file": os.fspath(checkpoint_path)}
        elif checkpoint_path is not None:
            create["checkpoint_path"] = os.fspath(checkpoint_path)
        try:
            module = timm.create_model(name, pretrained=pretrained, **create)
        except OSError as exc:
            if not pretrained or checkpoint_path is not None:
                raise
            msg = (
                f"pretrained weights for timm model {name!r} could not be loaded (no network, "
                f"and not in the Hugging Face hub cache): {exc}. Ways out: pass "
                "checkpoint_path='<local weights file>' with pretrained=True; pre-populate "
                "the Hugging Face hub cache on a machine with network access (e.g. "
                f"timm.create_model({name!r}, pretrained=True) there, then copy "
                "~/.cache/huggingface/hub, or point HF_HUB_CACHE at it); or use "
                "pretrained=False (random weights)"
            )
            raise StageError(msg) from exc
        stage = cls(
            module, classes=np.arange(num_classes) if classes is None else classes, **options
        )
        stage._architecture = {
            "source": "timm",
            "name": name,
            "num_classes": num_classes,
            "kwargs": model_kwargs,
        }
        return stage

    # ----------------------------------------------------------------- inference
    @property
    def device_(self) -> torch.device:
        """The resolved device; resolving it moves the module there (once)."""
        if self._device is None:
            device = inference.resolve_device(self.device)
            inference.prepare_module(self.module_, device, channels_last=self.channels_last)
            self._device = device
        return self._device

    def predict_proba_batched(self, X: Any) -> Iterator[ProbaArray]:
        """Yield probabilities batch by batch, as CPU float64 arrays of shape (n_batch, n_classes).

        Args:
            X: tensor or numpy array of shape (n_samples, channels, height, width), or
                channels last, or a list of same-size PIL images (see the class).
        """
        yield from inference.predict_proba_batched(
            self.module_,
            self._image_batch(X),
            batch_size=self.batch_size,
            device=self.device_,
            preprocess=self.preprocessing_,
            n_classes=len(self.classes_),
            precision=self.precision,
            channels_last=self.channels_last,
        )

    def predict_proba(self, X: Any) -> ProbaArray:
        """Class probabilities, float64 ndarray of shape (n_samples, n_classes).

        Args:
            X: tensor or numpy array of shape (n_samples, channels, height, width), or
                channels last, or a list of same-size PIL images (see the class).

        Raises:
            StageInterfaceError: if ``X`` is not a batch of images with the right channels.
            StageOutputError: if the module's output is not (n_samples, n_classes) logits.
        """
        parts = list(self.predict_proba_batched(X))
        if not parts:
            return np.empty((0, len(self.classes_)), dtype=np.float64)
        return np.concatenate(parts)

    def predict(self, X: Any) -> LabelArray:
        """Most probable class per sample, ndarray of shape (n_samples,)."""
        return np.asarray(self.classes_[np.argmax(self.predict_proba(X), axis=1)])

    def flops_per_sample(self, example: Any) -> float:
        """FLOPs of one sample (torch's flop counter), cached per source image shape.

        Args:
            example: tensor or numpy array (n, c, h, w); its first sample is run once.
        """
        x = inference.as_tensor(self._image_batch(example), name="example")
        key = tuple(int(v) for v in x.shape[1:])
        if key not in self._flops:
            self._flops[key] = count_flops(self, x[:1])
        return self._flops[key]

    def _image_batch(self, X: Any) -> Any:
        """``X`` as (n, c, h, w) when given in another layout this stage can read."""
        prep = self.preprocessing_
        if prep.input_size is not None:
            channels: int | None = prep.input_size[0]
        else:
            channels = None if prep.mean is None else len(prep.mean)
        return _as_nchw(X, channels)

    # ----------------------------------------------------------------- sklearn
    def __sklearn_clone__(self) -> TorchStage:
        """Return this stage itself: a trained network is never copied or refit."""
        return self

    def __repr__(self) -> str:
        """Name the model, classes and device."""
        arch = self._architecture.get("name") or self._architecture["class"]
        return (
            f"TorchStage({arch}, classes={self.classes_.tolist()!r}, "
            f"batch_size={self.batch_size}, device={str(self.device)!r})"
        )

    # ----------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The module's weights, as contiguous CPU tensors (ready for safetensors)."""
        return inference.state_dict_to_cpu(self.module_)

    def to_config(self) -> dict[str, Any]:
        """Everything but the weights, as a JSON-able dict.

        Keys (format version 1):

        * ``"format"``: ``"cascademl.TorchStage"``; ``"version"``: ``1``;
        * ``"architecture"``: ``{"source": "timm", "name": str, "num_classes": int,
          "kwargs": dict}`` for stages built by `from_timm`, else
          ``{"source": "module", "class": "package.module.ClassName"}`` (informative: the
          module must be passed to `from_config`);
        * ``"classes"``: list of labels (ints, floats, strings or bools);
        * ``"preprocessing"``: ``{"input_size": [c, h, w] | null, "interpolation": str,
          "mean": [float] | null, "std": [float] | null, "crop_pct": float}``, the
          resolved values;
        * ``"batch_size"``: int; ``"device"``: str (as given, e.g. ``"auto"``);
          ``"precision"``: ``"auto" | "fp32" | "bf16" | "fp16"``; ``"channels_last"``: bool;
          ``"cost_per_sample"``: float | null.

        Raises:
            SerializationError: if a value (a class label or a timm keyword) is not JSON-able.
        """
        config: dict[str, Any] = {
            "format": CONFIG_FORMAT,
            "version": CONFIG_VERSION,
            "architecture": self._architecture,
            "classes": self.classes_.tolist(),
            "preprocessing": self.preprocessing_.to_dict(),
            "batch_size": self.batch_size,
            "device": str(self.device),
            "precision": self.precision,
            "channels_last": bool(self.channels_last),
            "cost_per_sample": (
                None if self.cost_per_sample is None else float(self.cost_per_sample)
            ),
        }
        try:
            return dict(json.loads(json.dumps(config)))
        except (TypeError, ValueError) as exc:
            msg = f"this TorchStage's config is not JSON-able: {exc}"
            raise SerializationError(msg) from exc

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any],
        state_dict: Mapping[str, torch.Tensor],
        *,
        module: nn.Module | None = None,
        device: str | torch.device | None = None,
    ) -> TorchStage:
        """Rebuild a stage from `to_config` and `state_dict` output.

        Args:
            config: the dict from [`to_config`][cascademl.torch_stage.TorchStage.to_config].
            state_dict: the weights from
                [`state_dict`][cascademl.torch_stage.TorchStage.state_dict].
            module: a freshly built module of the saved architecture; required unless the
                stage came from timm (then it is rebuilt with ``pretrained=False``).
            device: overrides the saved device (e.g. ``"cpu"`` to load a GPU stage here).

        Returns:
            The stage, with the saved weights loaded strictly.

        Raises:
            SerializationError: for another format or version, missing keys, a missing
                ``module``, or weights that do not fit the architecture.
        """
        if config.get("format") != CONFIG_FORMAT or config.get("version") != CONFIG_VERSION:
            msg = (
                f"expected a config with format {CONFIG_FORMAT!r} version {CONFIG_VERSION}, "
                f"got format {config.get('format')!r} version {config.get('version')!r}"
            )
            raise SerializationError(msg)
        try:
            arch = config["architecture"]
            prep = config["preprocessing"]
            if module is None:
                if arch.get("source") != "timm":
                    msg = (
                        f"this stage wraps a {arch.get('class')!r} module: pass a freshly "
                        "built one as module="
                    )
                    raise SerializationError(msg)
                module = _import_timm().create_model(
                    arch["name"],
                    pretrained=False,
                    num_classes=arch["num_classes"],
                    **arch["kwargs"],
                )
            options = {name: prep[name] for name in _PREPROCESSING_OPTIONS}
            options |= {name: config[name] for name in _STAGE_OPTIONS - _PREPROCESSING_OPTIONS}
            if options["input_size"] is not None:
                options["input_size"] = tuple(options["input_size"])
            if device is not None:
                options["device"] = device
            stage = cls(module, classes=np.asarray(config["classes"]), **options)
        except KeyError as exc:
            msg = f"the TorchStage config lacks the key {exc.args[0]!r}"
            raise SerializationError(msg) from exc
        try:
            module.load_state_dict(dict(state_dict), strict=True)
        except RuntimeError as exc:
            msg = f"the saved weights do not fit the {type(module).__name__} module: {exc}"
            raise SerializationError(msg) from exc
        stage._architecture = dict(arch)
        return stage


#: The keyword parameters of `TorchStage` that `from_timm` and `from_config` pass through:
#: read from its signature, so they are declared once.
_STAGE_OPTIONS = frozenset(inspect.signature(TorchStage).parameters) - {"module", "classes"}
#: Those of them that are `Preprocessing` fields (saved under ``"preprocessing"``).
_PREPROCESSING_OPTIONS = frozenset(field.name for field in fields(Preprocessing))
