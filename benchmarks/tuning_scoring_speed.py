"""Tuning time by scoring rule: accuracy, log-loss (fast path) and log-loss scored point by point.

``tune_cascade_from_proba`` and ``search_orders_from_proba`` sweep each stage's candidate
thresholds with cumulative sums when the score is a mean of per-sample values (accuracy, and
scikit-learn's ``neg_log_loss``); any other scorer is called once per configuration. This
script times the same search three ways in one process, on the same probabilities:

* ``accuracy``;
* ``neg_log_loss``, recognised and swept with cumulative sums;
* ``neg_log_loss`` wrapped in a plain function, which the tuner cannot recognise, so it is
  called once per configuration (how every probability scorer was tuned before the fast
  path existed).

The workload is stage selection, ``orders="subsets"`` (31 tuning runs for five stages), on
synthetic probabilities (five stages of rising accuracy, four classes) and, with
``--results OUT``, on the validation probabilities of a finished leukemia run.

Usage::

    python benchmarks/tuning_scoring_speed.py
    python benchmarks/tuning_scoring_speed.py --results runs/cpu

Prints one Markdown row per workload and rule: best-of-``--repeats`` seconds, the speed-up
against the point-by-point rule, and the chosen candidate's validation score.
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
from sklearn.metrics import get_scorer

from _leukemia_results import load_run
from cascademl.tuning import order_by_accuracy, search_orders_from_proba


def synthetic(n_samples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Five stages of rising accuracy over four classes; costs 1, 2, 4, 8, 16."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n_samples)
    tables = []
    for s in range(5):
        logits = rng.normal(size=(n_samples, 4))
        logits[np.arange(n_samples), y] += (0.5 + 0.6 * s) * rng.random(n_samples) * 2
        p = np.exp(logits)
        tables.append(p / p.sum(axis=1, keepdims=True))
    return np.stack(tables), y, np.array([1.0, 2.0, 4.0, 8.0, 16.0])


def _point_by_point() -> Callable[..., float]:
    scorer = get_scorer("neg_log_loss")

    def neg_log_loss(estimator: Any, X: Any, y: Any) -> float:
        return float(scorer(estimator, X, y))

    return neg_log_loss


def time_rules(
    proba: np.ndarray, y: np.ndarray, costs: np.ndarray, *, budget: float, repeats: int
) -> list[tuple[str, float, float]]:
    """``(rule, best seconds, chosen validation score)`` for the three rules."""
    classes = np.unique(y)
    order = list(order_by_accuracy(proba, y, classes=classes))
    rules: dict[str, Any] = {
        "accuracy": None,
        "neg_log_loss": "neg_log_loss",
        "neg_log_loss, point by point": _point_by_point(),
    }
    rows = []
    for name, scoring in rules.items():
        best, score = float("inf"), float("nan")
        for _ in range(repeats):
            tic = time.perf_counter()
            search = search_orders_from_proba(
                proba[order], y, classes=classes, orders="subsets",
                stage_cost=costs[order].tolist(), max_cost=budget, scoring=scoring,
            )  # fmt: skip
            best = min(best, time.perf_counter() - tic)
            score = search.best.score
        rows.append((name, best, score))
    return rows


def main(argv: list[str] | None = None) -> None:
    """Time the rules on each workload and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, help="results folder of a leukemia run")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; best is kept")
    parser.add_argument("--max-cost-ratio", type=float, default=0.35, help="budget share")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    workloads: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {
        "synthetic, 286 samples": synthetic(286),
        "synthetic, 1,000 samples": synthetic(1000),
    }
    if args.results is not None:
        run = load_run(args.results)
        labels = np.searchsorted(run.classes, run.val_labels)
        workloads[f"{args.results} (validation)"] = (run.val, labels, run.flops)
    print(
        f"{platform.machine()}, Python {platform.python_version()}, numpy {np.__version__}, "
        f"scikit-learn {sklearn.__version__}; orders='subsets' (31 tunings of 5 stages), "
        f"budget {args.max_cost_ratio:.0%} of all stages, best of {args.repeats}\n"
    )
    print("| workload | scoring | seconds | vs point by point | chosen validation score |")
    print("|---|---|---|---|---|")
    for label, (proba, y, costs) in workloads.items():
        rows = time_rules(
            proba, y, costs, budget=args.max_cost_ratio * costs.sum(), repeats=args.repeats
        )
        slow = rows[-1][1]
        for name, seconds, score in rows:
            print(f"| {label} | {name} | {seconds:.2f} | {slow / seconds:.1f}x | {score:.4f} |")


if __name__ == "__main__":
    main()
