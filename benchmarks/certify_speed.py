"""Certification time: five stages, 2,000 calibration samples (target: under one second).

Times [`certify_cascade_from_proba`][cascademl.certify.certify_cascade_from_proba] on
synthetic probabilities (five stages of rising accuracy over four classes, costs 1, 2, 4,
8, 16), for each guarantee, with ``rule=None`` (the combiner and escalation weight chosen
too: five variants tuned on the path part) and with a given rule (its thresholds only).
The runs are interleaved and repeated; each row gives the median and best of
``--repeats`` runs, and what was certified.

Usage::

    python benchmarks/certify_speed.py
    python benchmarks/certify_speed.py --samples 2000 --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np

from _machine import machine_lines
from cascademl import RoutingRule
from cascademl.certify import CertificationWarning, certify_cascade_from_proba


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


CASES = (
    ("agreement", 0.90, None),
    ("agreement", 0.90, "vote"),
    ("accuracy", 0.70, None),
    ("accuracy", 0.70, "vote"),
    ("selective", 0.90, None),
    ("selective", 0.90, "vote"),
)


def main() -> None:
    """Print the machine, then one Markdown row per case."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    proba, y, costs = synthetic(args.samples)
    classes = np.arange(4)
    given = RoutingRule.from_params(None, n_stages=5)
    times: dict[int, list[float]] = {i: [] for i in range(len(CASES))}
    results = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CertificationWarning)
        for _ in range(args.repeats):
            for i, (guarantee, target, rule) in enumerate(CASES):
                start = time.perf_counter()
                results[i] = certify_cascade_from_proba(
                    proba, classes=classes, target=target, guarantee=guarantee, y=y,
                    rule=None if rule is None else given, stage_cost=costs,
                )  # fmt: skip
                times[i].append(time.perf_counter() - start)
    for line in machine_lines():
        print(line)
    print(f"{args.samples} calibration samples, 5 stages, {args.repeats} interleaved repeats\n")
    print("| guarantee | target | rule | median s | best s | certified | cost share | coverage |")
    print("|---|---|---|---|---|---|---|---|")
    for i, (guarantee, target, rule) in enumerate(CASES):
        cert = results[i]
        print(
            f"| {guarantee} | {target} | {'chosen' if rule is None else 'given (vote 0.5)'} "
            f"| {statistics.median(times[i]):.3f} | {min(times[i]):.3f} | {cert.certified} "
            f"| {cert.cost_share_last:.2f} | {cert.coverage:.3f} |"
        )


if __name__ == "__main__":
    main()
