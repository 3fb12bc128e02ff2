"""Rows per second of a saved cascade on Ray Data against the in-process engine.

A three-stage cascade of small timm models (``pretrained=False``, nothing downloaded)
routes the same random 64 px images in-process (``cascade.route``) and on a local Ray with
``cascademl.ray_data.route_dataset``: whole cascade with 1 and 2 actors, and
stage-parallel with one actor per stage. Each stage's threshold is its median confidence,
so about half of the images escalate at each stage.

The images are split into ``--blocks`` blocks (Ray hands an actor pool whole blocks, so a
single block would keep a second actor idle) and kept in Ray's object store before timing.
The CPUs are shared out: every actor reserves ``cpus / actors`` of them and runs torch
with ``--threads-per-actor`` threads (by default the same share, at least 1), set through
``OMP_NUM_THREADS`` in the actors' environment. Each Ray run reports:

* end-to-end rows/s: all rows over the time from ``route_dataset`` to the last output
  row, which includes starting the actors and loading the cascade in each;
* seconds to the first output row (that start-up, mostly);
* steady-state rows/s: the rows after the first output batch over the time from the
  first output batch to the last, which leaves the start-up out.

Usage:
    python benchmarks/ray_throughput.py [--n 2048] [--repeats 2] [--blocks 32]
        [--cpus 2] [--threads-per-actor N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import torch

from _machine import machine_lines
from cascademl import CascadeClassifier, ClusterResourceWarning, ConfidencePolicy, TorchStage
from cascademl.io import save_cascade
from cascademl.ray_data import route_dataset

STAGES = (("test_efficientnet", 64), ("test_resnet", 64), ("resnet10t", 64))
BATCH_SIZE = 64


@dataclass(frozen=True)
class Run:
    """One timed pass over the dataset."""

    wall: float  # route_dataset to the last output row
    first: float  # route_dataset to the first output batch
    steady: float  # rows/s from the first output batch to the last


def _cascade(images: np.ndarray) -> CascadeClassifier:
    torch.manual_seed(0)
    stages = [
        (name, TorchStage.from_timm(name, num_classes=4, input_size=(3, px, px), device="cpu"))
        for name, px in STAGES
    ]
    # Thresholds above 1 never stop a sample: every stage's confidence on every image.
    cascade = CascadeClassifier(stages, policy=ConfidencePolicy(thresholds=2.0)).fit(images[:1])
    conf = cascade.route(images[:256]).stage_confidence
    thresholds = tuple(float(np.nanmedian(conf[s])) for s in range(len(stages) - 1))
    return cascade.set_params(policy=ConfidencePolicy(thresholds=thresholds))


def _ray_run(
    dataset: object, folder: Path, *, mode: str, actors: int, cpus: int, threads: int | None
) -> Run:
    pools = 1 if mode == "cascade" else len(STAGES)
    share = cpus / (pools * actors)  # every actor of every pool together: the CPUs
    n_threads = threads or max(1, int(share))
    start = time.perf_counter()
    with warnings.catch_warnings():
        # The actors get every CPU on purpose: the images already sit in the object store,
        # so no read task waits for a CPU.
        warnings.simplefilter("ignore", ClusterResourceWarning)
        out = route_dataset(
            dataset,
            folder,
            mode=mode,
            concurrency=actors,
            batch_size=BATCH_SIZE,
            num_cpus=share,
            ray_remote_args={"runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(n_threads)}}},
        )
    first = None
    first_rows = n = 0
    for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
        n += len(batch["label"])
        if first is None:
            first, first_rows = time.perf_counter(), n
    end = time.perf_counter()
    if first is None:
        msg = "the Ray run returned no rows"
        raise RuntimeError(msg)
    steady = (n - first_rows) / (end - first) if end > first else float("nan")
    return Run(wall=end - start, first=first - start, steady=steady)


def main() -> None:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2048, help="images (2048)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting, best kept")
    parser.add_argument("--blocks", type=int, default=32, help="blocks of the dataset (32)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="Ray's CPUs")
    parser.add_argument(
        "--threads-per-actor",
        type=int,
        default=None,
        help="torch threads in each actor (default: its share of the CPUs, at least 1)",
    )
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(args.n, 64, 64, 3), dtype=np.uint8)
    torch.set_num_threads(args.cpus)
    cascade = _cascade(images)
    result = cascade.route(images)
    visits = result.stage_calls / args.n
    for line in machine_lines():
        print(line)
    print(f"ray {ray.__version__}, float32, {args.cpus} CPUs for Ray")
    print(f"stages: {', '.join(n for n, _ in STAGES)}; share of images per stage: {visits}")
    print(f"{args.n} images in {args.blocks} blocks, batch size {BATCH_SIZE}")
    best = min(_timed(cascade, images) for _ in range(args.repeats))
    in_process = f"in-process `cascade.route` ({args.cpus} torch threads)"
    rows: list[tuple[str, str, str, float, float, float]] = [
        (in_process, "-", str(args.cpus), args.n / best, float("nan"), args.n / best)
    ]
    settings = (("cascade", 1), ("cascade", 2), ("stages", 1))
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_cascade(cascade, Path(tmp) / "model")
        src = str(Path(__file__).resolve().parents[1] / "src")
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
        ray.init(num_cpus=args.cpus, include_dashboard=False, runtime_env={"env_vars": env})
        ray.data.DataContext.get_current().enable_progress_bars = False
        parts = np.array_split(images, args.blocks)
        dataset = ray.data.from_numpy(parts).rename_columns({"data": "image"}).materialize()
        for mode, actors in settings:
            runs = [
                _ray_run(
                    dataset,
                    folder,
                    mode=mode,
                    actors=actors,
                    cpus=args.cpus,
                    threads=args.threads_per_actor,
                )
                for _ in range(args.repeats)
            ]
            share = args.cpus / (actors * (1 if mode == "cascade" else len(STAGES)))
            threads = args.threads_per_actor or max(1, int(share))
            label = "Ray, whole cascade" if mode == "cascade" else "Ray, stage-parallel"
            rows.append(
                (
                    label,
                    str(actors),
                    str(threads),
                    args.n / min(r.wall for r in runs),
                    min(r.first for r in runs),
                    max(r.steady for r in runs),
                )
            )
        ray.shutdown()
    print(
        "\n| run | actors per pool | torch threads per actor | rows/s end-to-end "
        "| s to first output | rows/s steady state |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name, actors, threads, rate, first, steady in rows:
        first_text = "-" if np.isnan(first) else f"{first:.1f}"
        print(f"| {name} | {actors} | {threads} | {rate:.0f} | {first_text} | {steady:.0f} |")


def _timed(cascade: CascadeClassifier, images: np.ndarray) -> float:
    start = time.perf_counter()
    cascade.route(images)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
