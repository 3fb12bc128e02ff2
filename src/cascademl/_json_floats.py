"""JSON encodings of floats that keep infinities and NaN (``"inf"``, ``"-inf"``, ``"nan"``).

Shared by the saved cascade's ``cascade.json`` and by certificates; free of torch, so that
``import cascademl`` stays light.
"""

from __future__ import annotations

import math

from cascademl.exceptions import SerializationError

__all__: list[str] = []


def _encode_float(value: float) -> float | str:
    number = float(value)
    return number if math.isfinite(number) else str(number)  # "inf", "-inf", "nan"


def _decode_float(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        msg = f"{where} must be a number, got {value!r}"
        raise SerializationError(msg)
    try:
        return float(value)
    except ValueError as exc:
        msg = f"{where} must be a number, got {value!r}"
        raise SerializationError(msg) from exc
