"""What machine a benchmark ran on: the lines every benchmark prints before its figures."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

import torch

from cascademl.inference import cpu_bf16_support

__all__ = ["cpu_model", "machine_lines"]


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``platform`` elsewhere)."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), Path("/proc/cpuinfo").open(encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return model


def machine_lines() -> list[str]:
    """Describe the CPU, its vector capability and its native bfloat16 support."""
    native = cpu_bf16_support()
    return [
        (
            f"cpu: {cpu_model()} ({os.cpu_count()} logical CPUs, torch threads "
            f"{torch.get_num_threads()})"
        ),
        (
            f"torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}, "
            f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '(unset)')}"
        ),
        f"precision='auto' here: {native.precision} ({native.reason})",
    ]
