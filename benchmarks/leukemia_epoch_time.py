"""Time a few training steps per backbone and extrapolate a CPU epoch time.

The ``cpu`` preset of ``examples.leukemia`` was sized with this script; a time-budgeted run
(``run --time-budget``) times its backbones with the same code,
:func:`examples.leukemia.budget.time_steps`. Each probe builds a
timm backbone from scratch, runs two warm-up steps and ``--steps`` timed steps of
forward + backward + AdamW on random inputs, and extrapolates the time of one training
epoch over ``--train-images`` images (doubled when ``--doubling`` is on, as the example
does) plus one validation pass over ``--val-images`` images.

Usage::

    python benchmarks/leukemia_epoch_time.py --models resnet50 densenet201 --sizes 64 96
    python benchmarks/leukemia_epoch_time.py --preset cpu          # the preset's own sizes
    python benchmarks/leukemia_epoch_time.py --preset cpu --compare fp32 bf16

The first lines name the CPU, its vector capability, whether it runs bfloat16 natively and
the precision each probe used (``--precision auto`` resolves as the ``cpu`` preset does:
bfloat16 only where it is native). ``--compare`` times the same probes in several
precisions side by side, interleaved, so their ratio is measured under the same load.

Numbers depend on the machine and its load; rerun on the target machine.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence

import torch
from examples.leukemia.budget import MIN_SIZE, time_steps
from examples.leukemia.presets import get_preset
from examples.leukemia.training import PRECISIONS

from _machine import machine_lines
from cascademl.inference import resolve_precision

logger = logging.getLogger("leukemia_epoch_time")

DEFAULT_MODELS = ("efficientnet_b0", "inception_v3", "vgg19_bn", "resnet50", "densenet201")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the probes and log one line per backbone, size and precision.

    Args:
        argv: Command-line arguments; ``None`` reads ``sys.argv``.

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 96])
    parser.add_argument(
        "--preset",
        default=None,
        help="probe a preset's backbones at their own sizes and batch sizes, and add up its "
        "training budget (epochs x epoch time)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--train-images", type=int, default=2285)
    parser.add_argument("--val-images", type=int, default=286)
    parser.add_argument("--doubling", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="auto (bfloat16 only where native), fp32 or bf16; default: the preset's, else fp32",
    )
    parser.add_argument("--bf16", action="store_true", help="same as --precision bf16")
    parser.add_argument(
        "--compare", nargs="+", choices=PRECISIONS, default=None, help="time several precisions"
    )
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = get_preset(args.preset) if args.preset else None
    default_precision = preset.precision if preset is not None else "fp32"
    precisions = args.compare or ["bf16" if args.bf16 else (args.precision or default_precision)]
    channels_last = args.channels_last
    if channels_last is None:
        channels_last = preset.channels_last if preset is not None else False
    cpu = torch.device("cpu")
    resolved = {p: resolve_precision(p, cpu).precision for p in precisions}
    if preset is not None:
        probes = [
            (s.timm_name, s.image_size, s.batch_size, preset.train_config(s).epochs, s.model_kwargs)
            for s in preset.backbones
        ]
    else:
        probes = [(m, size, args.batch_size, 1, {}) for m in args.models for size in args.sizes]
    images = args.train_images * (2 if args.doubling else 1)
    for line in machine_lines():
        logger.info("%s", line)
    logger.info(
        "precisions=%s channels_last=%s fused=%s train images/epoch=%d",
        ", ".join(f"{p}->{r}" for p, r in resolved.items()),
        channels_last,
        args.fused,
        images,
    )
    logger.info(
        "%-16s %5s %5s %6s %10s %10s %11s %8s",
        "model",
        "size",
        "batch",
        "prec",
        "s/step",
        "s/val",
        "epoch (s)",
        "x epochs",
    )
    totals = dict.fromkeys(precisions, 0.0)
    for name, size, batch_size, epochs, model_kwargs in probes:
        if size < MIN_SIZE.get(name, 0):
            logger.info("%-16s %5d skipped: below the minimum of %d", name, size, MIN_SIZE[name])
            continue
        train_steps = math.ceil(images / batch_size)
        val_batches = math.ceil(args.val_images / batch_size)
        for precision in precisions:
            step_s, infer_s = time_steps(
                name,
                size,
                batch_size,
                steps=args.steps,
                bf16=resolved[precision] == "bf16",
                channels_last=channels_last,
                fused=args.fused,
                model_kwargs=model_kwargs,
            )
            epoch_s = train_steps * step_s + val_batches * infer_s
            totals[precision] += epochs * epoch_s
            logger.info(
                "%-16s %5d %5d %6s %10.3f %10.2f %11.0f %8.0f",
                name,
                size,
                batch_size,
                resolved[precision],
                step_s,
                val_batches * infer_s,
                epoch_s,
                epochs * epoch_s,
            )
    if preset is not None:
        for precision, total in totals.items():
            logger.info(
                "preset %s, %s: about %.1f min of training (epochs x epoch time; add about 10%% "
                "for weight averaging)",
                preset.name,
                resolved[precision],
                total / 60,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
