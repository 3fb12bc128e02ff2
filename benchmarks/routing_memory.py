"""Peak memory of in-memory routing: many samples x many classes x several stages.

Three cheap stages return precomputed probabilities (looked up by sample id, so the stages
cost nothing and allocate only their answer). Each sample's row puts a random confidence
``c ~ U(0, 1)`` on one class and spreads ``1 - c`` over the others; with threshold 0.5
about half of the samples escalate at each stage. The tables are built before measuring:
``tracemalloc`` reports the peak of Python and numpy allocations made by the call alone.

The script also runs against versions of cascademl from before ``route(X, keep=...)``
(it then measures ``route(X)``), to compare with them.

Usage:
    python benchmarks/routing_memory.py --n-samples 5000 --n-classes 1000 --batch-size 500
"""

from __future__ import annotations

import argparse
import inspect
import platform
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from cascademl import CascadeClassifier, ConfidencePolicy


class LookupStage:
    """A fitted stage whose probabilities for sample ``i`` (``X[i, 0] == i``) are ``table[i]``."""

    def __init__(self, table: np.ndarray[Any, Any]) -> None:
        self.table = table
        self.classes_ = np.arange(table.shape[1])

    def predict_proba(self, X: Any) -> np.ndarray[Any, Any]:
        """The precomputed rows of these samples."""
        return self.table[np.asarray(X)[:, 0]]


def make_table(n: int, k: int, rng: np.random.Generator) -> np.ndarray[Any, Any]:
    """Rows with a random confidence on a random class, the rest spread evenly."""
    confidence = rng.uniform(0.0, 1.0, size=n)
    table = np.repeat(((1.0 - confidence) / (k - 1))[:, None], k, axis=1)
    table[np.arange(n), rng.integers(0, k, size=n)] = confidence
    return table


def peak_mb(call: Callable[[], object]) -> tuple[float, float]:
    """Peak traced MB and seconds of one call."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        call()
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak / 2**20, seconds


def main(argv: list[str] | None = None) -> int:
    """Measure predict, predict_proba and route, and print one row each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=5000)
    parser.add_argument("--n-classes", type=int, default=1000)
    parser.add_argument("--n-stages", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--threshold", type=float, default=0.5)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    n, k = args.n_samples, args.n_classes
    stages = [(f"s{s}", LookupStage(make_table(n, k, rng))) for s in range(args.n_stages)]
    X = np.arange(n).reshape(-1, 1)
    cascade = CascadeClassifier(
        stages, policy=ConfidencePolicy(thresholds=args.threshold), batch_size=args.batch_size
    ).fit(X, np.arange(n) % k)
    result = cascade.route(X)
    print(
        f"python {sys.version.split()[0]}, numpy {np.__version__}, {platform.machine()}; "
        f"{n} samples x {k} classes x {args.n_stages} stages, batch_size={args.batch_size}; "
        f"samples per stage {result.stage_calls.tolist()}"
    )
    print(
        f"final labels {n * 8 / 2**10:.0f} kB (int64 ids), final probabilities "
        f"{n * k * 8 / 2**20:.1f} MB, every stage's probabilities "
        f"{args.n_stages * n * k * 8 / 2**20:.1f} MB"
    )
    calls: list[tuple[str, Callable[[], object]]] = [
        ("predict(X)", lambda: cascade.predict(X)),
        ("predict_proba(X)", lambda: cascade.predict_proba(X)),
    ]
    if "keep" in inspect.signature(cascade.route).parameters:
        calls.append(("route(X, keep='none')", lambda: cascade.route(X, keep="none")))
        calls.append(("route(X, keep='all')", lambda: cascade.route(X, keep="all")))
    else:  # versions before keep= (to measure them with the same script)
        calls.append(("route(X)", lambda: cascade.route(X)))
    print(f"{'call':<24}{'peak traced MB':>16}{'seconds':>10}")
    for name, call in calls:
        mb, seconds = peak_mb(call)
        print(f"{name:<24}{mb:>16.1f}{seconds:>10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
