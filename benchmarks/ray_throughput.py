"""Rows per second of a saved cascade on Ray Data against the in-process engine.

A three-stage cascade of small timm models (``pretrained=False``, nothing downloaded)
routes the same random 64 px images in-process (``cascade.route``) and on a local Ray with
``cascademl.ray_data.route_dataset``: whole cascade and stage-parallel, with 1 and 2 actors
per pool. Each stage's threshold is its median confidence, so about half of the images
escalate at each stage. A Ray figure includes starting the actors and loading the cascade
in each (as a job pays it), so it is printed with the time to the first output row.

Usage:
    python benchmarks/ray_throughput.py [--n 2048] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import ray
import torch

from _machine import machine_lines
from cascademl import CascadeClassifier, ConfidencePolicy, TorchStage
from cascademl.io import save_cascade
from cascademl.ray_data import route_dataset

STAGES = (("test_efficientnet", 64), ("test_resnet", 64), ("resnet10t", 64))


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


def _ray_run(dataset: object, folder: Path, *, mode: str, actors: int) -> tuple[float, float]:
    start = time.perf_counter()
    first = None
    n = 0
    # Every pool's actors together reserve at most the 2 CPUs: 3 stage pools share them.
    share = 1.0 if mode == "cascade" else 2 / (len(STAGES) * actors)
    out = route_dataset(
        dataset, folder, mode=mode, concurrency=actors, batch_size=64, num_cpus=share
    )
    for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
        if first is None:
            first = time.perf_counter() - start
        n += len(batch["label"])
    return time.perf_counter() - start, first or 0.0


def main() -> None:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2048, help="images (2048)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting, best kept")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(args.n, 64, 64, 3), dtype=np.uint8)
    cascade = _cascade(images)
    result = cascade.route(images)
    visits = result.stage_calls / args.n
    for line in machine_lines():
        print(line)
    print(f"ray {ray.__version__}, float32")
    print(f"stages: {', '.join(n for n, _ in STAGES)}; share of images per stage: {visits}")
    best = min(_timed(lambda: cascade.route(images)) for _ in range(args.repeats))
    rows = [("in-process `cascade.route` (torch's 2 threads)", "-", args.n / best, float("nan"))]
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_cascade(cascade, Path(tmp) / "model")
        src = str(Path(__file__).resolve().parents[1] / "src")
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
        ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env})
        ray.data.DataContext.get_current().enable_progress_bars = False
        dataset = ray.data.from_numpy(images).rename_columns({"data": "image"}).materialize()
        for mode in ("cascade", "stages"):
            for actors in (1, 2):
                runs = [
                    _ray_run(dataset, folder, mode=mode, actors=actors) for _ in range(args.repeats)
                ]
                wall, first = min(runs)
                label = "whole cascade" if mode == "cascade" else "stage-parallel"
                rows.append((f"Ray, {label}", str(actors), args.n / wall, first))
        ray.shutdown()
    print("\n| run | actors per pool | rows/s | s to first output |")
    print("| --- | --- | --- | --- |")
    for name, actors, rate, first in rows:
        first_text = "-" if np.isnan(first) else f"{first:.1f}"
        print(f"| {name} | {actors} | {rate:.0f} | {first_text} |")


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
