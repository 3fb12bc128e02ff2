"""Time a few training steps per backbone and extrapolate a CPU epoch time.

The ``cpu`` preset of ``examples.leukemia`` was sized with this script. Each probe builds a
timm backbone from scratch, runs two warm-up steps and ``--steps`` timed steps of
forward + backward + AdamW on random inputs, and extrapolates the time of one training
epoch over ``--train-images`` images (doubled when ``--doubling`` is on, as the example
does) plus one validation pass over ``--val-images`` images.

Usage::

    python benchmarks/leukemia_epoch_time.py --models resnet50 densenet201 --sizes 64 96

Numbers depend on the machine and its load; rerun on the target machine.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import time
from collections.abc import Sequence

import timm
import torch
from torch import nn

logger = logging.getLogger("leukemia_epoch_time")

DEFAULT_MODELS = ("efficientnet_b0", "inception_v3", "vgg19_bn", "resnet50", "densenet201")
#: Smallest input each architecture accepts (InceptionV3's stride-2 stem needs 75 px).
MIN_SIZE = {"inception_v3": 75}


def time_steps(
    name: str,
    image_size: int,
    batch_size: int,
    *,
    steps: int,
    bf16: bool,
    channels_last: bool,
    fused: bool,
    warmup: int = 2,
) -> tuple[float, float]:
    """Measure the mean seconds of one training step and of one inference batch.

    Args:
        name: timm model name.
        image_size: Square input size in pixels.
        batch_size: Images per step.
        steps: Timed steps after the warm-up steps.
        bf16: Run forward passes under CPU bfloat16 autocast.
        channels_last: Use the channels-last memory format for model and inputs.
        fused: Use the fused AdamW implementation.
        warmup: Untimed steps first (oneDNN picks its kernels on the first calls).

    Returns:
        Seconds per training step and seconds per inference batch.
    """
    generator = torch.Generator().manual_seed(0)
    model: nn.Module = timm.create_model(name, pretrained=False, num_classes=4)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused)
    inputs = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
    inputs = inputs.contiguous(memory_format=memory_format)
    targets = torch.randint(0, 4, (batch_size,), generator=generator)
    loss_fn = nn.CrossEntropyLoss()

    def autocast() -> contextlib.AbstractContextManager[object]:
        if bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    model.train()
    train_times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            logits = model(inputs)
        loss = loss_fn(logits.float(), targets)
        loss.backward()
        optimizer.step()
        if step >= warmup:
            train_times.append(time.perf_counter() - start)
    model.eval()
    with torch.inference_mode(), autocast():
        model(inputs)
        start = time.perf_counter()
        model(inputs)
        infer_time = time.perf_counter() - start
    return sum(train_times) / len(train_times), infer_time


def main(argv: Sequence[str] | None = None) -> int:
    """Run the probes and log one line per backbone and size.

    Args:
        argv: Command-line arguments; ``None`` reads ``sys.argv``.

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 96])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--train-images", type=int, default=2285)
    parser.add_argument("--val-images", type=int, default=286)
    parser.add_argument("--doubling", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--bf16", action="store_true", help="CPU bfloat16 autocast")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    images = args.train_images * (2 if args.doubling else 1)
    train_steps = math.ceil(images / args.batch_size)
    val_batches = math.ceil(args.val_images / args.batch_size)
    logger.info(
        "threads=%d bf16=%s channels_last=%s fused=%s batch=%d train images/epoch=%d",
        torch.get_num_threads(),
        args.bf16,
        args.channels_last,
        args.fused,
        args.batch_size,
        images,
    )
    logger.info("%-16s %5s %10s %10s %12s", "model", "size", "s/step", "s/val", "epoch (s)")
    for name in args.models:
        for size in args.sizes:
            if size < MIN_SIZE.get(name, 0):
                logger.info(
                    "%-16s %5d skipped: below the minimum of %d", name, size, MIN_SIZE[name]
                )
                continue
            step_s, infer_s = time_steps(
                name,
                size,
                args.batch_size,
                steps=args.steps,
                bf16=args.bf16,
                channels_last=args.channels_last,
                fused=args.fused,
            )
            epoch_s = train_steps * step_s + val_batches * infer_s
            logger.info(
                "%-16s %5d %10.3f %10.2f %12.0f",
                name,
                size,
                step_s,
                val_batches * infer_s,
                epoch_s,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
