"""Choosing a numeric precision: bfloat16 only where the hardware runs it natively.

bfloat16 autocast is fast on CPUs with native bfloat16 instructions (AVX512-BF16, AMX) and
on recent GPUs; elsewhere oneDNN emulates it, and a forward pass can be 20x slower than in
float32 (measured on a 2-core AMD EPYC with AVX2 only). ``precision="auto"`` therefore picks
bfloat16 only where it is native and float32 everywhere else, and says why.

The CPU check honours the two switches that cap what torch may use, so a machine with AMX
can emulate one without it: ``ATEN_CPU_CAPABILITY`` (read by
``torch.backends.cpu.get_cpu_capability()``) and ``ONEDNN_MAX_CPU_ISA``.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Literal, NamedTuple, TypeAlias

import torch

__all__ = ["ResolvedPrecision", "cpu_bf16_support", "resolve_precision"]

logger = logging.getLogger("cascademl.inference")

#: A concrete precision (what ``"auto"`` resolves to).
ConcretePrecision: TypeAlias = Literal["fp32", "bf16", "fp16"]

#: oneDNN ISA caps (``ONEDNN_MAX_CPU_ISA``) that still allow native bfloat16 kernels.
_ONEDNN_BF16_ISAS = frozenset(
    {
        "ALL",
        "DEFAULT",
        "AVX512_CORE_BF16",
        "AVX512_CORE_FP16",
        "AVX512_CORE_AMX",
        "AVX512_CORE_AMX_FP16",
        "AVX10_1_512",
        "AVX10_1_512_AMX",
        "AVX10_1_512_AMX_FP16",
        "AVX10_2_512",
        "AVX10_2_512_AMX_2",
    }
)


class ResolvedPrecision(NamedTuple):
    """The precision a run uses, and why it was chosen."""

    precision: ConcretePrecision
    reason: str


def _cpu_flag(name: str) -> bool:
    """``torch.cpu._is_<name>_supported()``, or the CPU flags in ``/proc/cpuinfo``."""
    probe = getattr(torch.cpu, f"_is_{name}_supported", None)
    if callable(probe):
        try:
            return bool(probe())
        except RuntimeError:  # pragma: no cover - a torch build without cpuinfo
            pass
    flags = {"avx512_bf16": "avx512_bf16", "amx_tile": "amx_bf16"}  # pragma: no cover
    try:  # pragma: no cover - only where torch lacks the probe
        with Path("/proc/cpuinfo").open(encoding="ascii", errors="replace") as handle:
            return any(flags.get(name, name) in line.split() for line in handle)
    except OSError:  # pragma: no cover
        return False


def cpu_bf16_support() -> ResolvedPrecision:
    """Whether this CPU runs bfloat16 natively, as ``("bf16" | "fp32", reason)``.

    Native means AVX512-BF16 or AMX instructions that torch (``ATEN_CPU_CAPABILITY``) and
    oneDNN (``ONEDNN_MAX_CPU_ISA``) are allowed to use.

    Examples:
        >>> cpu_bf16_support().precision in ("bf16", "fp32")
        True
    """
    capability = torch.backends.cpu.get_cpu_capability()
    if not capability.upper().startswith("AVX512"):
        return ResolvedPrecision(
            "fp32",
            f"the CPU's vector capability is {capability} (bfloat16 would be emulated, "
            "about 20x slower than float32)",
        )
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if isa and isa not in _ONEDNN_BF16_ISAS:
        return ResolvedPrecision(
            "fp32", f"ONEDNN_MAX_CPU_ISA={isa} caps oneDNN below native bfloat16"
        )
    amx = _cpu_flag("amx_tile")
    avx512_bf16 = _cpu_flag("avx512_bf16")
    if amx or avx512_bf16:
        native = "AMX" if amx else "AVX512-BF16"
        return ResolvedPrecision("bf16", f"the CPU runs bfloat16 natively ({native})")
    return ResolvedPrecision(
        "fp32",
        f"the CPU has {capability} but no AVX512-BF16 or AMX (bfloat16 would be emulated)",
    )


def resolve_precision(precision: str, device: torch.device) -> ResolvedPrecision:
    """Resolve ``"auto"`` to a concrete precision for ``device``; others pass through.

    ``"auto"`` is ``"bf16"`` on a CUDA device that supports it and on a CPU with native
    bfloat16 ([`cpu_bf16_support`][cascademl.inference.cpu_bf16_support]), ``"fp32"``
    everywhere else. The choice and its reason are logged once per device and reason.

    Args:
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (validated by the caller).
        device: the device the forward pass runs on.
    """
    if precision != "auto":
        return ResolvedPrecision(precision, "asked for")  # type: ignore[arg-type]
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            chosen = ResolvedPrecision("bf16", "the CUDA device supports bfloat16")
        else:
            chosen = ResolvedPrecision("fp32", "the CUDA device has no bfloat16 support")
    elif device.type == "cpu":
        chosen = cpu_bf16_support()
    else:
        chosen = ResolvedPrecision("fp32", f"no autocast is used on {device.type} devices")
    _log_choice(device.type, chosen)
    return chosen


@functools.cache
def _log_choice(device_type: str, chosen: ResolvedPrecision) -> None:
    logger.info("precision='auto' on %s: %s (%s)", device_type, chosen.precision, chosen.reason)
