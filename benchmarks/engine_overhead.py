"""Engine overhead: cascade wall time over the pure forward time of what each stage ran.

Five timm architectures (``pretrained=False``, so nothing is downloaded) at a small input
size route random images through the streaming engine with batched escalation. Each stage's
threshold is the median confidence it gives on a calibration batch, so about half of the
samples escalate at every stage. Then, for each stage, the same number of samples it
processed in the cascade is run through the bare module at the same batch size (full
batches plus the one partial batch the engine flushes), on inputs preprocessed beforehand.

    overhead = cascade wall time / sum over stages of the pure forward time

A second ratio puts each stage's own preprocessing (uint8 to float, mean/std) on the pure
side, leaving only what the engine adds: buffering, gathering escalated samples, softmax,
validation and routing. Runs alternate (cascade, pure, pure+preprocessing, cascade, ...)
so that a noisy shared machine affects all sides alike; the script prints the median of the
per-round ratios and the ratio of the best times.

Usage:
    python benchmarks/engine_overhead.py --device cpu
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import numpy as np
import torch

from cascademl import RoutingRule, inference
from cascademl._routing import confidence_scores
from cascademl.torch_stage import TorchStage

MODELS = ("lcnet_050", "mobilenetv3_small_100", "resnet10t", "efficientnet_b0", "resnet18")


def build_stages(size: int, batch_size: int, device: str) -> list[TorchStage]:
    """The five stages, with timm's mean/std and the given square input size."""
    torch.manual_seed(0)
    return [
        TorchStage.from_timm(
            name,
            num_classes=10,
            input_size=(3, size, size),
            crop_pct=1.0,  # source images already have the input size: no resize
            batch_size=batch_size,
            device=device,
        )
        for name in MODELS
    ]


def pure_forward_seconds(
    stage: TorchStage, inputs: torch.Tensor, n: int, *, preprocess: bool = False
) -> float:
    """Seconds for the bare module on ``n`` samples at the stage's batch size.

    ``inputs`` are preprocessed already, unless ``preprocess`` (then they are the raw
    images, moved to the device and preprocessed batch by batch inside the timing).
    """
    module, size, device = stage.module_, stage.batch_size, stage.device_
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    start = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, n, size):
            batch = inputs[first : min(first + size, n)]
            if preprocess:
                batch = stage.preprocessing_(inference.to_device(batch, device))
            module(batch)
        sync()
    return time.perf_counter() - start


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n-samples", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    stages = build_stages(args.image_size, args.batch_size, args.device)
    names = [f"{i}:{m}" for i, m in enumerate(MODELS)]
    generator = torch.Generator().manual_seed(0)
    shape = (args.n_samples, 3, args.image_size, args.image_size)
    images = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    classes = np.arange(10)
    calibration = images[: args.batch_size]
    thresholds = [
        float(np.median(confidence_scores(s.predict_proba(calibration), "max_proba")))
        for s in stages
    ]

    inside: list[float] = []  # seconds inside the stages' predict_proba, per run

    def run_cascade() -> tuple[float, tuple[int, ...]]:
        start = time.perf_counter()
        result = inference.stream_route(
            stages,
            images,
            stage_names=names,
            classes=classes,
            rule=RoutingRule("max_proba", tuple(thresholds)),
        )
        wall = time.perf_counter() - start
        report = result.cost_report
        assert report is not None  # noqa: S101 - set by the engine
        inside.append(
            sum(c * t for c, t in zip(report.stage_calls, report.latency_per_sample, strict=True))
        )
        return wall, report.stage_calls

    _, calls = run_cascade()  # warm-up: lazy init, FLOP counts, allocator
    device = stages[0].device_
    prepared = [s.preprocessing_(inference.to_device(images, device)).contiguous() for s in stages]
    for stage, x in zip(stages, prepared, strict=True):
        pure_forward_seconds(stage, x, args.batch_size)  # warm-up

    cascade_times, pure_times, prep_times = [], [], []
    for _ in range(args.rounds):
        wall, round_calls = run_cascade()
        if round_calls != calls:
            msg = "routing changed between rounds"
            raise RuntimeError(msg)
        pure = sum(
            pure_forward_seconds(stage, x, n)
            for stage, x, n in zip(stages, prepared, calls, strict=True)
        )
        with_prep = sum(
            pure_forward_seconds(stage, images, n, preprocess=True)
            for stage, n in zip(stages, calls, strict=True)
        )
        cascade_times.append(wall)
        pure_times.append(pure)
        prep_times.append(with_prep)

    outside = [1 - i / c for i, c in zip(inside[1:], cascade_times, strict=True)]
    ratios = [c / p for c, p in zip(cascade_times, pure_times, strict=True)]
    prep_ratios = [c / p for c, p in zip(cascade_times, prep_times, strict=True)]
    print(
        f"machine: {platform.machine()}, torch {torch.__version__}, device {device}, "
        f"{torch.get_num_threads()} threads, python {sys.version.split()[0]}"
    )
    print(
        f"{len(MODELS)} stages at {args.image_size}x{args.image_size}, batch {args.batch_size}, "
        f"{args.n_samples} samples"
    )
    print("samples per stage:", dict(zip(MODELS, calls, strict=True)))
    print(f"cascade wall s:   {', '.join(f'{t:.3f}' for t in cascade_times)}")
    print(f"pure forward s:   {', '.join(f'{t:.3f}' for t in pure_times)}")
    print(f"pure + preproc s: {', '.join(f'{t:.3f}' for t in prep_times)}")
    print(
        "share of cascade wall time outside the stages' predict_proba (buffers, routing, "
        f"voting): median {statistics.median(outside):.1%}"
    )
    print(
        f"overhead vs bare forward:            median of rounds "
        f"{statistics.median(ratios):.3f}, best/best {min(cascade_times) / min(pure_times):.3f}"
    )
    print(
        f"overhead vs preprocessing + forward: median of rounds "
        f"{statistics.median(prep_ratios):.3f}, best/best "
        f"{min(cascade_times) / min(prep_times):.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
