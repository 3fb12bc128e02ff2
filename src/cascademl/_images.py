"""Pillow images to 8 bits per channel, public as `cascademl.torch_stage.to_uint8_image`.

Numpy only, so that the leukemia example's data module reads images without torch.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

#: Pillow modes with more than 8 bits per value: 16-bit integers, 32-bit integers, floats.
_DEEP_MODES = ("I", "F")
_UINT8_MAX = 255.0
_UINT16_MAX = 65535.0


def _is_deep(mode: str) -> bool:
    return mode in _DEEP_MODES or mode.startswith("I;16")


def to_uint8_image(image: Image.Image, mode: str = "RGB") -> Image.Image:
    """Return a Pillow image as 8 bits per channel in ``mode``, scaling deeper images.

    Pillow's own ``convert`` clips 16-bit and 32-bit greyscale images at 255, so that a
    16-bit PNG, as microscopes and scanners write them, turns almost white. Here their
    values are scaled instead: 16-bit modes (``I;16``...) from ``[0, 65535]``; 32-bit
    integer images (``I``) and float images (``F``) from the smallest of ``[0, 1]`` (floats
    only), ``[0, 255]``, ``[0, 65535]`` and ``[0, max]`` that holds their largest value
    (negative values and NaN become 0). Other modes (``P``, ``L``, ``RGBA``, ``CMYK``,
    ...) go through ``convert`` as usual.

    Args:
        image: a ``PIL.Image.Image``.
        mode: the mode to return, ``"RGB"`` or ``"L"`` (or any mode Pillow converts to).

    Returns:
        An image in ``mode`` (``image`` itself when it is in that mode already).

    Examples:
        >>> import numpy as np
        >>> from PIL import Image
        >>> deep = Image.fromarray(np.full((2, 2), 32768, dtype=np.uint16))
        >>> deep.mode, int(np.asarray(deep.convert("RGB"))[0, 0, 0])  # Pillow clips
        ('I;16', 255)
        >>> np.asarray(to_uint8_image(deep))[0, 0]
        array([128, 128, 128], dtype=uint8)
    """
    if image.mode == mode:
        return image
    if not _is_deep(image.mode):
        return image.convert(mode)
    values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
    largest = float(values.max(initial=0.0))
    if image.mode.startswith("I;16"):
        top = _UINT16_MAX
    else:
        floors = ((1.0,) if image.mode == "F" else ()) + (_UINT8_MAX, _UINT16_MAX)
        top = next((f for f in floors if largest <= f), largest)
    scaled = np.clip(np.rint(values * (_UINT8_MAX / top)), 0, _UINT8_MAX).astype(np.uint8)
    grey: Image.Image = sys.modules["PIL.Image"].fromarray(scaled)
    return grey if mode == "L" else grey.convert(mode)
