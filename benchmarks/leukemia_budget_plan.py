"""What the leukemia example's time budget plans from the ``cpu`` preset's recorded epoch times.

No training and no timing: the probes are made up from the per-epoch seconds of
:data:`examples.leukemia.presets.CPU_BUDGET` (an AVX2 CPU's step timing, an AMX CPU's
logged epochs), with inference at 1% of an epoch's time per 286 images (the AVX2 CPU's
EfficientNetB0 validation pass: 0.78 s against a 75 s epoch), and given to
:func:`examples.leukemia.budget.plan_epochs` as a run would, after 1 min of split and
stain normalization and 2 min of probes.

Usage::

    python benchmarks/leukemia_budget_plan.py --minutes 60
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from examples.leukemia.budget import (
    FIXED_SECONDS,
    SAFETY,
    STEP_OVERHEAD,
    Probe,
    Workload,
    plan_epochs,
)
from examples.leukemia.presets import CPU, CPU_BUDGET

logger = logging.getLogger("leukemia_budget_plan")

#: The ``cpu`` preset's split: training images (doubled), validation and test images.
WORKLOAD = Workload(train_items=2 * 2285, val_images=286, test_images=286)
#: Inference time of the validation split as a share of an epoch's time.
VALIDATION_SHARE = 0.01


def probes_from_epochs(kind: str) -> dict[tuple[str, int], Probe]:
    """Probes whose predicted epochs match :data:`CPU_BUDGET`'s for ``kind``."""
    table = CPU_BUDGET[kind]
    probes = {}
    for spec in CPU.backbones:
        key = next(k for k in table if k.startswith(f"{spec.timm_name} "))
        epoch = table[key] / int(key.rsplit("x", 1)[1])
        steps = WORKLOAD.train_items // spec.batch_size
        # The AVX2 times are a step timing (the overhead comes on top); the AMX ones logged.
        overhead = 1.0 if kind.startswith("fp32") else 1 / STEP_OVERHEAD
        step = epoch * (1 - VALIDATION_SHARE) / steps * overhead
        infer = VALIDATION_SHARE * epoch / WORKLOAD.val_images
        probes[spec.timm_name, spec.image_size] = Probe(
            spec.timm_name, spec.image_size, spec.batch_size, step, infer
        )
    return probes


def main(argv: Sequence[str] | None = None) -> int:
    """Log the plan for each kind of CPU.

    Args:
        argv: Command-line arguments; ``None`` reads ``sys.argv``.

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--setup-minutes", type=float, default=1.0)
    parser.add_argument("--probe-minutes", type=float, default=2.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spent = 60 * (args.setup_minutes + args.probe_minutes)
    budget = 60 * args.minutes
    preset_epochs = [CPU.train_config(spec).epochs for spec in CPU.backbones]
    for kind in CPU_BUDGET:
        plans = plan_epochs(
            CPU.backbones,
            preset_epochs,
            probes_from_epochs(kind),
            WORKLOAD,
            budget - spent - FIXED_SECONDS,
            margin=(1 - SAFETY) * budget,
        )
        total = spent + FIXED_SECONDS + sum(p.seconds for p in plans)
        logger.info(
            "%s: %s; predicted %.1f min",
            kind,
            ", ".join(f"{p.timm_name} {p.epochs} @ {p.image_size}" for p in plans),
            total / 60,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
