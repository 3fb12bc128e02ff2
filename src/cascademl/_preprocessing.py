"""Preprocessing of image batches for `TorchStage`: layout, resizing, normalization.

[`Preprocessing`][cascademl.torch_stage.Preprocessing] turns a batch of source images
into a model's input (the same object serves the leukemia example's training transforms);
``_as_nchw`` brings lists of images and channels-last batches to (n, c, h, w), and
``_resolve_preprocessing`` fills what the user left out from timm's data config.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - torch's own convention
from torch import nn

from cascademl._images import _is_deep, to_uint8_image
from cascademl._optional import require
from cascademl.exceptions import PolicyError, StageInterfaceError

#: Interpolation modes for resizing.
Interpolation: TypeAlias = Literal["nearest", "bilinear", "bicubic"]
_INTERPOLATIONS: tuple[Interpolation, ...] = ("nearest", "bilinear", "bicubic")

_UINT8_MAX = 255.0


@dataclass(frozen=True, slots=True)
class Preprocessing:
    """Turn a batch of source images into a model's input, on whatever device it is on.

    Steps, in timm's evaluation order: ``uint8`` images are scaled to ``[0, 1]`` (float
    inputs are taken as already in ``[0, 1]``); the shorter side is resized to
    ``floor(size / crop_pct)`` and the centre cropped to ``input_size`` (with
    ``crop_pct=1`` that is a plain resize, skipped when the size already matches); then
    ``(x - mean) / std`` per channel.

    Attributes:
        input_size: ``(channels, height, width)`` the model takes, or ``None`` to keep the
            source size (the channels are then not checked).
        interpolation: ``"nearest"``, ``"bilinear"`` or ``"bicubic"`` (antialiased when
            downsampling).
        mean: per-channel mean, or ``None`` for no normalisation.
        std: per-channel standard deviation, or ``None`` for no normalisation.
        crop_pct: share of the resized image kept by the centre crop, in ``(0, 1]``.

    Examples:
        >>> prep = Preprocessing((3, 4, 4), "bilinear", (0.5,) * 3, (0.5,) * 3)
        >>> prep(torch.full((2, 3, 8, 8), 255, dtype=torch.uint8)).shape
        torch.Size([2, 3, 4, 4])
    """

    input_size: tuple[int, int, int] | None = None
    interpolation: Interpolation = "bilinear"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    crop_pct: float = 1.0

    def __post_init__(self) -> None:
        """Validate and normalise the fields."""
        if self.input_size is not None:
            size = tuple(self.input_size)
            if len(size) != 3 or not all(  # noqa: PLR2004 - (C, H, W)
                isinstance(v, numbers.Integral) and not isinstance(v, bool | np.bool_) and v > 0
                for v in size
            ):
                msg = f"input_size must be (channels, height, width) > 0, got {self.input_size!r}"
                raise PolicyError(msg)
            object.__setattr__(self, "input_size", tuple(int(v) for v in size))
        if self.interpolation not in _INTERPOLATIONS:
            msg = f"interpolation must be one of {_INTERPOLATIONS}, got {self.interpolation!r}"
            raise PolicyError(msg)
        if (self.mean is None) != (self.std is None):
            msg = (
                "mean and std must both be given or both be None, got "
                f"mean={self.mean!r}, std={self.std!r}"
            )
            raise PolicyError(msg)
        if self.mean is not None and self.std is not None:
            mean = tuple(float(v) for v in self.mean)
            std = tuple(float(v) for v in self.std)
            if len(mean) != len(std) or any(not (s > 0) for s in std):
                msg = f"std must be positive with one value per mean, got mean={mean}, std={std}"
                raise PolicyError(msg)
            object.__setattr__(self, "mean", mean)
            object.__setattr__(self, "std", std)
        crop = float(self.crop_pct)
        if not 0 < crop <= 1:
            msg = f"crop_pct must be in (0, 1], got {self.crop_pct!r}"
            raise PolicyError(msg)
        object.__setattr__(self, "crop_pct", crop)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocess a batch of shape (n, c, h, w); returns float32 (n, *input_size).

        The input is never modified; the ``uint8`` scaling and the normalisation are fused
        into one multiply-add, done in place on intermediate tensors.
        """
        scale = 1.0 / _UINT8_MAX if x.dtype == torch.uint8 else 1.0
        owned = x.dtype != torch.float32  # .float() below copies: ours to modify
        x = x.float()
        if self.input_size is not None:
            channels, height, width = self.input_size
            if x.shape[1] != channels:
                msg = (
                    f"the model takes {channels}-channel images, got {x.shape[1]} channels "
                    f"(input shape {tuple(x.shape)}; expected (n_samples, {channels}, height, "
                    f"width), or (n_samples, height, width, {channels}))"
                )
                raise StageInterfaceError(msg)
            x, resized = self._resize_crop(x, height, width)
            owned = owned or resized
        if self.mean is not None and self.std is not None:
            if x.shape[1] != len(self.mean):
                msg = f"mean has {len(self.mean)} values for {x.shape[1]}-channel images"
                raise StageInterfaceError(msg)
            # One fused multiply-add: x times scale/std, plus -mean/std.
            factor = [scale / s for s in self.std]
            shift = [-m / s for m, s in zip(self.mean, self.std, strict=True)]
            factor_t = torch.tensor(factor, device=x.device).view(1, -1, 1, 1)
            shift_t = torch.tensor(shift, device=x.device).view(1, -1, 1, 1)
            if owned:
                return x.mul_(factor_t).add_(shift_t)
            return torch.addcmul(shift_t, x, factor_t)
        if scale != 1.0:
            return x.mul_(scale) if owned else x * scale
        return x

    def _resize_crop(self, x: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, bool]:
        """Resize and crop; also say whether the result is a new tensor (not a view of x)."""
        src_h, src_w = int(x.shape[-2]), int(x.shape[-1])
        if self.crop_pct == 1.0:
            if (src_h, src_w) == (height, width):
                return x, False
            return self._resize(x, height, width), True
        scale_h = math.floor(height / self.crop_pct)
        scale_w = math.floor(width / self.crop_pct)
        if scale_h == scale_w:  # timm: resize the shorter side, keep the aspect ratio
            factor = scale_h / min(src_h, src_w)
            new_h = max(height, round(src_h * factor))
            new_w = max(width, round(src_w * factor))
        else:
            new_h, new_w = scale_h, scale_w
        resized = (new_h, new_w) != (src_h, src_w)
        if resized:
            x = self._resize(x, new_h, new_w)
        top = (new_h - height) // 2
        left = (new_w - width) // 2
        return x[:, :, top : top + height, left : left + width], resized

    def _resize(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if self.interpolation == "nearest":
            return F.interpolate(x, size=(height, width), mode="nearest")
        return F.interpolate(
            x, size=(height, width), mode=self.interpolation, align_corners=False, antialias=True
        )

    def to_dict(self) -> dict[str, Any]:
        """The preprocessing as JSON-able values."""
        return {
            "input_size": list(self.input_size) if self.input_size is not None else None,
            "interpolation": self.interpolation,
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
            "crop_pct": self.crop_pct,
        }


#: Channel counts that mark the last axis of a 4-d array as the channel axis.
_IMAGE_CHANNELS = (1, 3, 4)
_NCHW_NDIM = 4
_HINT = (
    "TorchStage takes a tensor or numpy array of shape (n_samples, channels, height, width)"
    " (uint8 in [0, 255] or float in [0, 1]); it also reads (n_samples, height, width,"
    " channels) arrays and lists of same-size PIL images or (channels, height, width) arrays"
)


def _as_nchw(X: Any, channels: int | None) -> Any:
    """Bring a list of images, or a channels-last batch, to (n, c, h, w); else return ``X``.

    * A list (or tuple) of PIL images of one size is stacked (converted to RGB, or to
      grayscale for a 1-channel model, when their mode differs; 16-bit and 32-bit images
      scaled to 8 bits by `to_uint8_image`), as ``uint8``.
    * A list of tensors or arrays of one shape is stacked, then read as below.
    * A 4-d tensor or array whose last axis holds ``channels`` values and whose second
      does not (or, when the stage does not know its channels, whose last axis has 1, 3
      or 4 values and whose second has not) is read as (n, h, w, c) and returned as a
      permuted view (no copy).

    Anything else is returned unchanged, for `inference.as_tensor` to check.

    Raises:
        StageInterfaceError: for a list that is empty, mixes types, holds images of
            different sizes, or holds something other than images; the message says what
            the stage takes.
    """
    if isinstance(X, (list, tuple)):
        X = _stack_images(list(X), channels)
    if isinstance(X, np.ndarray) and X.ndim == _NCHW_NDIM and X.dtype.kind in "biuf":
        X = torch.from_numpy(np.ascontiguousarray(X))
    if isinstance(X, torch.Tensor) and X.ndim == _NCHW_NDIM:
        second, last = int(X.shape[1]), int(X.shape[3])
        if channels is not None:
            channels_last = last == channels and second != channels
        else:
            channels_last = last in _IMAGE_CHANNELS and second not in _IMAGE_CHANNELS
        if channels_last:
            return X.permute(0, 3, 1, 2)
    return X


def _stack_images(images: list[Any], channels: int | None) -> Any:
    if not images:
        msg = f"got an empty {type(images).__name__} of images. {_HINT}"
        raise StageInterfaceError(msg)
    pil = sys.modules.get("PIL.Image")
    if pil is not None and all(isinstance(im, pil.Image) for im in images):
        mode = {1: "L", 3: "RGB"}.get(channels or 0)
        modes = {im.mode for im in images}
        if mode is None and len(modes) > 1:
            mode = "RGB"
        elif mode is None and _is_deep(modes.pop()):
            mode = "L"  # one channel, scaled to 8 bits (see to_uint8_image)
        arrays = [np.asarray(im if mode is None else to_uint8_image(im, mode)) for im in images]
        arrays = [a[:, :, None] if a.ndim == 2 else a for a in arrays]  # noqa: PLR2004 - (h, w)
        sizes = sorted({a.shape for a in arrays})
        if len(sizes) > 1:
            msg = (
                f"the {len(images)} PIL images have different sizes {sizes[:5]} (height, "
                "width, channels): resize them to one size first (the stage's "
                f"preprocessing then brings them to its input size). {_HINT}"
            )
            raise StageInterfaceError(msg)
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    if all(isinstance(im, torch.Tensor) for im in images) or all(
        isinstance(im, np.ndarray) for im in images
    ):
        shapes = sorted({tuple(im.shape) for im in images})
        if len(shapes) > 1 or len(shapes[0]) != _NCHW_NDIM - 1:
            msg = (
                f"a list of {len(images)} arrays is stacked into a batch, so each must be one "
                f"image of the same shape, got shapes {shapes[:5]}. {_HINT}"
            )
            raise StageInterfaceError(msg)
        if isinstance(images[0], torch.Tensor):
            return torch.stack(images)
        return np.stack(images)
    kinds = sorted({type(im).__name__ for im in images})
    msg = f"got a {type(images).__name__} of {', '.join(kinds)}. {_HINT}"
    if "str" in kinds or "PosixPath" in kinds or "WindowsPath" in kinds:
        msg += " (load image files first, e.g. with PIL.Image.open)"
    raise StageInterfaceError(msg)


def _import_timm() -> Any:
    require("timm.data", "timm", purpose="a timm model")
    return require("timm", "timm", purpose="a timm model")


def _resolve_preprocessing(
    module: nn.Module,
    *,
    input_size: tuple[int, int, int] | None,
    interpolation: Interpolation | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    crop_pct: float | None,
) -> Preprocessing:
    defaults: dict[str, Any] = {}
    if isinstance(getattr(module, "pretrained_cfg", None), Mapping):
        cfg = _import_timm().data.resolve_model_data_config(module)
        defaults = {
            "input_size": tuple(cfg["input_size"]),
            "interpolation": cfg["interpolation"]
            if cfg["interpolation"] in _INTERPOLATIONS
            else "bilinear",
            "mean": tuple(cfg["mean"]),
            "std": tuple(cfg["std"]),
            "crop_pct": cfg.get("crop_pct", 1.0),
        }
    return Preprocessing(
        input_size=input_size if input_size is not None else defaults.get("input_size"),
        interpolation=(
            interpolation
            if interpolation is not None
            else defaults.get("interpolation", "bilinear")
        ),
        mean=tuple(mean) if mean is not None else defaults.get("mean"),
        std=tuple(std) if std is not None else defaults.get("std"),
        crop_pct=crop_pct if crop_pct is not None else defaults.get("crop_pct", 1.0),
    )
