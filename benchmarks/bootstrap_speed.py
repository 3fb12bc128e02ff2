"""Bootstrap confidence intervals of ``classification_metrics``: the old loop against the new one.

``classification_metrics`` used to draw each bootstrap resample in a Python loop and call
torchmetrics' functions on it (``n_bootstrap`` x 9 calls). It now draws every resample's
confusion-matrix counts at once (a multinomial over the non-empty cells, which is the same
distribution as resampling the samples) and computes every metric from them in float64.
This script times both in one process, on the same labels, with the old loop kept here as
the reference, and checks that the intervals agree within Monte Carlo error: the new
method is rerun with ``--seeds`` seeds, and each of the old bounds must lie within four
standard deviations of the new bounds' mean over those seeds.

Usage::

    python benchmarks/bootstrap_speed.py
    python benchmarks/bootstrap_speed.py --n-bootstrap 1000 --seeds 50

Prints one Markdown row per workload: seconds for each method (best of ``--repeats``), the
speed-up, and the largest disagreement of a bound in units of its Monte Carlo standard
deviation. Exits with status 1 if a bound disagrees by more than four.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torchmetrics
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_cohen_kappa,
    multiclass_f1_score,
    multiclass_matthews_corrcoef,
    multiclass_precision,
    multiclass_recall,
)

from cascademl.metrics import classification_metrics

#: Bounds further than this many Monte Carlo standard deviations apart fail the check.
TOLERANCE_SD = 4.0


# --------------------------------------------------------------------------- old method
def _old_point_metrics(pred: torch.Tensor, target: torch.Tensor, k: int) -> dict[str, Any]:
    precision = multiclass_precision(pred, target, k, average=None)
    recall = multiclass_recall(pred, target, k, average=None)
    f1 = multiclass_f1_score(pred, target, k, average=None)
    accuracy = float(multiclass_accuracy(pred, target, k, average="micro"))
    return {
        "accuracy": accuracy,
        "error_rate": 1.0 - accuracy,
        "precision": precision.double().numpy(),
        "recall": recall.double().numpy(),
        "f1": f1.double().numpy(),
        "macro_precision": float(multiclass_precision(pred, target, k, average="macro")),
        "macro_recall": float(multiclass_recall(pred, target, k, average="macro")),
        "macro_f1": float(multiclass_f1_score(pred, target, k, average="macro")),
        "mcc": float(multiclass_matthews_corrcoef(pred, target, k)),
        "kappa": float(multiclass_cohen_kappa(pred, target, k)),
    }


def old_bootstrap(
    y_true: np.ndarray, y_pred: np.ndarray, k: int, n_bootstrap: int, level: float, *, seed: int
) -> dict[str, tuple[Any, Any]]:
    """The loop ``classification_metrics`` used before, unchanged (labels are indices)."""
    target, pred = torch.as_tensor(y_true), torch.as_tensor(y_pred)
    compute: Callable[[torch.Tensor], dict[str, Any]] = lambda idx: _old_point_metrics(  # noqa: E731
        pred[idx], target[idx], k
    )
    n_samples = target.numel()
    rng = np.random.default_rng(seed)
    draws: dict[str, list[Any]] = {}
    for _ in range(n_bootstrap):
        idx = torch.as_tensor(rng.integers(0, n_samples, n_samples))
        for name, value in compute(idx).items():
            draws.setdefault(name, []).append(value)
    alpha = (1.0 - level) / 2.0
    out: dict[str, tuple[Any, Any]] = {}
    for name, values in draws.items():
        array = np.asarray(values, dtype=np.float64)
        if np.all(np.isnan(array)):
            out[name] = (math.nan, math.nan)
            continue
        low, high = np.nanquantile(array, [alpha, 1.0 - alpha], axis=0)
        out[name] = (float(low), float(high)) if array.ndim == 1 else (low, high)
    return out


# --------------------------------------------------------------------------- workloads
def labels(n: int, k: int, accuracy: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """True labels uniform over ``k`` classes; predictions right with about ``accuracy``."""
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, k, n)
    wrong = (y_true + rng.integers(1, k, n)) % k
    return y_true, np.where(rng.random(n) < accuracy, y_true, wrong)


def new_bootstrap(
    y_true: np.ndarray, y_pred: np.ndarray, k: int, n_bootstrap: int, level: float, *, seed: int
) -> dict[str, tuple[Any, Any]]:
    """The intervals ``classification_metrics`` returns now."""
    return dict(
        classification_metrics(
            y_true,
            y_pred,
            classes=np.arange(k),
            n_bootstrap=n_bootstrap,
            confidence_level=level,
            random_state=seed,
        ).intervals
    )


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of ``repeats`` calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def disagreement(
    old: dict[str, tuple[Any, Any]], reruns: list[dict[str, tuple[Any, Any]]]
) -> tuple[float, str]:
    """Largest |old bound - mean of new bounds| / their standard deviation, and where."""
    worst, where = 0.0, ""
    for name, (old_low, old_high) in old.items():
        for side, old_bound in (("low", old_low), ("high", old_high)):
            index = 0 if side == "low" else 1
            new = np.array([np.asarray(r[name][index], dtype=np.float64) for r in reruns])
            sd = np.maximum(new.std(axis=0, ddof=1), 1e-12)
            gap = np.abs(np.asarray(old_bound, dtype=np.float64) - new.mean(axis=0)) / sd
            if float(np.nanmax(gap)) > worst:
                worst, where = float(np.nanmax(gap)), f"{name} {side}"
    return worst, where


def main() -> int:
    """Run every workload and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    parser.add_argument("--level", type=float, default=0.95)
    parser.add_argument("--seeds", type=int, default=50, help="reruns of the new method")
    parser.add_argument("--repeats", type=int, default=3, help="timings of the new method")
    args = parser.parse_args()

    print(
        f"Python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__},"
        f" torchmetrics {torchmetrics.__version__}, {platform.machine()};"
        f" {args.n_bootstrap} resamples, level {args.level}"
    )
    print()
    print("| samples | classes | old loop (s) | new (s) | speed-up | worst bound gap (MC sd) |")
    print("|---|---|---|---|---|---|")
    workloads = [(2_000, 2, 0.92), (2_000, 10, 0.8), (10_000, 4, 0.9)]
    failed = False
    for n, k, accuracy in workloads:
        y_true, y_pred = labels(n, k, accuracy, seed=n + k)
        run = (y_true, y_pred, k, args.n_bootstrap, args.level)
        start = time.perf_counter()
        old = old_bootstrap(*run, seed=0)
        old_seconds = time.perf_counter() - start
        new_seconds = best_time(lambda run=run: new_bootstrap(*run, seed=0), args.repeats)
        reruns = [new_bootstrap(*run, seed=seed) for seed in range(1, args.seeds + 1)]
        gap, where = disagreement(old, reruns)
        failed |= gap > TOLERANCE_SD
        print(
            f"| {n:,} | {k} | {old_seconds:.2f} | {new_seconds:.4f} |"
            f" {old_seconds / new_seconds:,.0f}x | {gap:.2f} ({where}) |"
        )
    if failed:
        print(f"\nFAILED: a bound differs by more than {TOLERANCE_SD} Monte Carlo sd")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
