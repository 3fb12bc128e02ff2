"""Peak memory while streaming datasets of 1x, 5x, 10x and 20x the size of one batch.

A map-style ``Dataset`` makes each image on the fly from its index (nothing is stored), so
the dataset never sits in memory unless the engine gathers it. A three-stage cascade of
tiny timm ``test_*`` models (``pretrained=False``) at batch 64 routes it through a
``DataLoader``; the thresholds send about half of the samples on at each stage.

Each size runs in a fresh child process, so ``resource.getrusage`` reports that run's own
peak resident set size (maxrss); ``tracemalloc`` reports the peak of Python and numpy
allocations during routing (torch's CPU allocator is not traced). For comparison, the same
child can materialise the whole dataset as one tensor first (``--materialise``), as an
in-memory route would need.

Usage:
    python benchmarks/streaming_memory.py --device cpu
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cascademl import RoutingRule, inference
from cascademl._routing import confidence_scores
from cascademl.torch_stage import TorchStage

MODELS = (("test_efficientnet", 32), ("test_resnet", 48), ("test_byobnet", 64))


class SyntheticImages(Dataset[torch.Tensor]):
    """``n`` uint8 images of shape (3, size, size), each generated from its index."""

    def __init__(self, n: int, size: int) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        """The number of images."""
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        """The image of ``index``, the same on every call."""
        generator = torch.Generator().manual_seed(index)
        shape = (3, self.size, self.size)
        return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)


def child(multiple: int, args: argparse.Namespace) -> dict[str, float]:
    """Route ``multiple`` batches' worth of images; return memory and timing figures."""
    torch.manual_seed(0)
    stages = [
        TorchStage.from_timm(
            name,
            num_classes=10,
            input_size=(3, size, size),
            batch_size=args.batch_size,
            device=args.device,
        )
        for name, size in MODELS
    ]
    dataset = SyntheticImages(multiple * args.batch_size, args.image_size)
    warm = next(iter(DataLoader(dataset, batch_size=args.batch_size)))
    thresholds = [
        float(np.median(confidence_scores(s.predict_proba(warm), "max_proba"))) for s in stages
    ]
    thresholds[-1] = float("inf")
    source: object = DataLoader(dataset, batch_size=args.batch_size)
    if args.materialise:
        source = torch.stack([dataset[i] for i in range(len(dataset))])
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    start = time.perf_counter()
    result = inference.stream_route(
        stages,
        source,
        stage_names=[name for name, _ in MODELS],
        classes=np.arange(10),
        rule=RoutingRule("max_proba", tuple(thresholds)),
    )
    wall = time.perf_counter() - start
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stage_proba = result.stage_proba
    assert stage_proba is not None  # noqa: S101 - kept by default
    per_sample = stage_proba.nbytes + result.stage_confidence.nbytes + result.proba.nbytes
    return {
        "samples": result.n_samples,
        "maxrss_mb": rss_peak / 1024,  # Linux reports KiB
        "maxrss_before_mb": rss_before / 1024,
        "traced_peak_mb": traced_peak / 2**20,
        "per_sample_outputs_mb": per_sample / 2**20,
        "dataset_mb": len(dataset) * 3 * args.image_size**2 / 2**20,
        "escalated": result.escalation_rate,
        "seconds": wall,
    }


def main(argv: list[str] | None = None) -> int:
    """Run one child per size and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--multiples", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--materialise", action="store_true")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args)))
        return 0

    print(
        f"device {args.device}, batch {args.batch_size}, source images 3x{args.image_size}"
        f"x{args.image_size} uint8, torch {torch.__version__}"
    )
    print(
        f"{'input':<24}{'samples':>8}{'dataset MB':>12}{'maxrss MB':>11}{'traced MB':>11}"
        f"{'outputs MB':>12}{'escalated':>11}{'s':>7}"
    )
    modes = [False, True] if args.materialise else [False]
    for materialise in modes:
        for multiple in args.multiples:
            command = [
                sys.executable,
                __file__,
                "--child",
                str(multiple),
                "--device",
                args.device,
                "--batch-size",
                str(args.batch_size),
                "--image-size",
                str(args.image_size),
            ]
            if materialise:
                command.append("--materialise")
            out = subprocess.run(command, check=True, capture_output=True, text=True)  # noqa: S603
            row = json.loads(out.stdout.strip().splitlines()[-1])
            label = f"{'tensor' if materialise else 'DataLoader'} {multiple}x batch"
            print(
                f"{label:<24}{row['samples']:>8}{row['dataset_mb']:>12.1f}"
                f"{row['maxrss_mb']:>11.1f}{row['traced_peak_mb']:>11.2f}"
                f"{row['per_sample_outputs_mb']:>12.3f}{row['escalated']:>11.1%}"
                f"{row['seconds']:>7.1f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
