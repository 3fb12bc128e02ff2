"""How long certifying takes: 5 stages, 2,000 calibration samples, each guarantee.

Times `certify_cascade_from_proba` on random draws of 2,000 rows from the k = 5 pool of
``_certify_pools.py`` (wall time of one call, ``--repeats`` draws per guarantee, the
median and the fastest reported, and the median CPU time of the process, which a busy
machine inflates less), on cached probabilities: the models' own inference is not part of
it.

Usage::

    flock /tmp/bench.lock python benchmarks/certify_speed_pools.py --repeats 10
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from _certify_pools import make_pool
from _machine import machine_lines
from cascademl.certify import certify_cascade_from_proba

TARGETS = {"agreement": 0.95, "accuracy": 0.83, "selective": 0.95}


def main(argv: Sequence[str] | None = None) -> int:
    """Time each guarantee; print and optionally save the medians."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "cascademl-certify-pools"
    )
    parser.add_argument("--out", type=Path, help="JSON file for the results")
    args = parser.parse_args(argv)
    lines = machine_lines()
    print("\n".join(lines))
    pool = make_pool(5, cache=args.cache)
    rng = np.random.default_rng(0)
    results = {}
    for guarantee, target in TARGETS.items():
        times, cpu = [], []
        for _ in range(args.repeats):
            draw = rng.choice(pool.proba.shape[1], args.n, replace=False)
            p, y = np.ascontiguousarray(pool.proba[:, draw]), pool.y[draw]
            tic, tic_cpu = time.perf_counter(), time.process_time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                certify_cascade_from_proba(
                    p, classes=pool.classes, target=target, guarantee=guarantee,
                    y=None if guarantee == "agreement" else y, stage_cost=pool.stage_cost,
                )  # fmt: skip
            times.append(time.perf_counter() - tic)
            cpu.append(time.process_time() - tic_cpu)
        results[guarantee] = {
            "median_s": float(np.median(times)),
            "min_s": float(min(times)),
            "median_cpu_s": float(np.median(cpu)),
        }
        print(
            f"{guarantee}: median {np.median(times):.3f} s, fastest {min(times):.3f} s "
            f"(CPU time of this process: median {np.median(cpu):.3f} s)"
        )
    if args.out:
        payload = {"machine": lines, "n": args.n, "k": 5, "repeats": args.repeats, **results}
        args.out.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
