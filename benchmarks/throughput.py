"""Throughput and accuracy: the cascade vs a five-stage voting ensemble vs the largest stage.

Data: scikit-learn's digits (1,797 8x8 images, 10 classes, shipped inside scikit-learn)
upsampled to 32x32 RGB, split 2/3 train, 1/3 test with a fixed seed. Five timm architectures
(``pretrained=False``, nothing downloaded) are each trained briefly on the train split
(AdamW, four epochs, identical budget, then batch-norm statistics re-estimated on
the train split), then frozen as `TorchStage`s. On the same test
images, in one run:

* the cascade at several thresholds (one threshold for every non-final stage, max
  probability, the paper's vote combiner): accuracy, escalation rate, throughput;
* all five stages on every sample, averaged (``combine="mean"`` with thresholds above 1,
  so every sample visits every stage): the voting ensemble;
* the largest stage alone.

Throughput is samples per second over the best of ``--repeats`` timed runs of the
streaming engine on the in-memory test tensor, at batch 64 for every stage.

Usage:
    python benchmarks/throughput.py --device cpu
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - torch's convention
from sklearn.datasets import load_digits
from sklearn.metrics import accuracy_score

from cascademl import ConfidencePolicy, RoutingRule, inference
from cascademl.torch_stage import TorchStage

MODELS = ("lcnet_050", "mobilenetv3_small_100", "resnet10t", "efficientnet_b0", "resnet18")
THRESHOLDS = (0.0, 0.9, 0.99, 0.999)


def digits_images(size: int) -> tuple[torch.Tensor, np.ndarray]:
    """The digits of scikit-learn as float RGB images in [0, 1] of shape (n, 3, size, size)."""
    digits = load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.expand(-1, 3, -1, -1).contiguous(), digits.target


def train(stage: TorchStage, x: torch.Tensor, y: np.ndarray, *, epochs: int, seed: int) -> None:
    """A short, fixed training budget; the stage is left in eval mode."""
    device = stage.device_
    module = stage.module_.train()
    optimiser = torch.optim.AdamW(module.parameters(), lr=2e-3, weight_decay=1e-4)
    targets = torch.as_tensor(y)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for first in range(0, len(x), 64):
            idx = order[first : first + 64]
            batch = stage.preprocessing_(inference.to_device(x[idx], device))
            loss = F.cross_entropy(module(batch), inference.to_device(targets[idx], device))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    # Re-estimate batch-norm statistics over the train split (a cumulative average): a
    # short run leaves the running averages behind the weights.
    for layer in module.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):  # noqa: SLF001
            layer.reset_running_stats()
            layer.momentum = None
    with torch.no_grad():
        for first in range(0, len(x), 64):
            module(stage.preprocessing_(inference.to_device(x[first : first + 64], device)))
    module.eval()


def timed_route(
    stages: list[TorchStage],
    x: torch.Tensor,
    thresholds: list[float],
    *,
    combine: str,
    repeats: int,
) -> tuple[float, object]:
    """Best wall time of ``repeats`` streaming runs, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = inference.stream_route(
            stages,
            x,
            stage_names=[f"s{i}" for i in range(len(stages))],
            classes=np.arange(10),
            rule=RoutingRule.from_params(
                ConfidencePolicy("max_proba", tuple(thresholds)),
                n_stages=len(stages),
                combine=combine,  # type: ignore[arg-type]
            ),
        )
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv: list[str] | None = None) -> int:
    """Train, then print one table row per configuration."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    x, y = digits_images(args.image_size)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(x))
    n_train = 2 * len(x) // 3
    train_idx, test_idx = order[:n_train], order[n_train:]
    x_test, y_test = x[test_idx], y[test_idx]

    torch.manual_seed(args.seed)
    stages = []
    start = time.perf_counter()
    for i, name in enumerate(MODELS):
        stage = TorchStage.from_timm(
            name,
            num_classes=10,
            input_size=(3, args.image_size, args.image_size),
            crop_pct=1.0,
            batch_size=64,
            device=args.device,
        )
        train(stage, x[train_idx], y[train_idx], epochs=args.epochs, seed=args.seed + i)
        stages.append(stage)
    print(f"trained {len(MODELS)} stages in {time.perf_counter() - start:.0f} s", flush=True)
    for stage in stages:
        stage.predict_proba(x_test[:64])  # warm-up

    n = len(x_test)
    rows = []
    for threshold in THRESHOLDS:
        wall, result = timed_route(
            stages, x_test, [threshold] * 4 + [np.inf], combine="vote", repeats=args.repeats
        )
        rows.append((f"cascade t={threshold}", result, wall))
    wall, result = timed_route(
        stages, x_test, [np.inf] * len(stages), combine="mean", repeats=args.repeats
    )
    rows.append(("ensemble (all 5, mean)", result, wall))
    wall, result = timed_route(stages[-1:], x_test, [np.inf], combine="vote", repeats=args.repeats)
    rows.append((f"largest stage ({MODELS[-1]})", result, wall))

    print(f"device {stages[0].device_}, {n} test images, torch {torch.__version__}")
    print(
        f"{'configuration':<28}{'accuracy':>9}{'escalated':>11}{'stage calls':>13}"
        f"{'MFLOPs/img':>12}{'img/s':>9}{'speed-up':>10}"
    )
    ensemble_rate = n / rows[-2][2]
    for label, result, wall in rows:
        report = result.cost_report
        acc = accuracy_score(y_test, result.labels)
        print(
            f"{label:<28}{acc:>9.3f}{result.escalation_rate:>11.1%}"
            f"{result.visited.sum() / n:>13.2f}{report.mean_flops / 1e6:>12.1f}"
            f"{n / wall:>9.0f}{(n / wall) / ensemble_rate:>9.2f}x"
        )
    print("per stage (from the ensemble run, which ran every stage on every sample):")
    ensemble_report = rows[-2][1].cost_report
    for i, (name, stage) in enumerate(zip(MODELS, stages, strict=True)):
        print(
            f"  {name:<24} accuracy {accuracy_score(y_test, stage.predict(x_test)):.3f}  "
            f"{ensemble_report.flops_per_sample[i] / 1e6:6.1f} MFLOPs  "
            f"{ensemble_report.latency_per_sample[i] * 1e3:6.3f} ms/img"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
