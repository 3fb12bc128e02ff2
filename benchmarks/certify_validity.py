"""Do certified cascades keep their promise? Miss rates over random calibration draws.

For pools of real stage outputs (scikit-learn stages of several model families on
generated data, 30,000 rows, k = 2, 3 and 5 stages; see ``_certify_pools.py``), every draw
takes ``n`` random rows as calibration data, certifies on them with
`certify_cascade_from_proba`, and measures the guaranteed quantity of the returned rule on
the rest of the pool (the "future data"). A *miss* is a draw whose certificate says
``certified=True`` while the quantity on the rest of the pool is below the target; the
guarantee says misses happen in at most a ``delta`` share of draws. Beside it, on the same
draw, the uncertified tuner: ``tune_cascade_from_proba(..., min_score=target)`` (agreement:
with the last stage's labels as ``y``; it also chooses the escalation weight, 0 (the exiting
stage alone) or 0.5), and for the reject option the plug-in rule (the certified routing
with the lowest reject threshold whose selective accuracy *on the draw* reaches the target).

Targets, fixed before any run from the pools' stage accuracies (no tuning to the outcome):
agreement 0.95, accuracy 0.83 (the last stage alone is at 0.853), selective accuracy 0.95.

A second part (``--sweep``) traces the cost of a certified rule against the target (k = 3,
n = 2,000, delta = 0.05): the figure data for "cost against target".

Usage::

    python benchmarks/certify_validity.py --draws 100           # a few minutes
    python benchmarks/certify_validity.py --draws 500 --sweep-draws 50 \
        --out docs/benchmarks/data/certification_validity.json    # the recorded run
    python benchmarks/certify_validity.py --leukemia RUN_DIR        # adds a run's probabilities

Pools are cached in ``--cache`` (default ``/tmp/cascademl-certify-pools``).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import beta

from _certify_pools import Pool, check_router, make_pool, route
from _machine import machine_lines
from cascademl import RoutingRule
from cascademl.certify import certify_cascade_from_proba
from cascademl.exceptions import CascadeMLError, PolicyError
from cascademl.tuning import tune_cascade_from_proba

GUARANTEES = ("agreement", "accuracy", "selective")
TARGETS = {"agreement": 0.95, "accuracy": 0.83, "selective": 0.95}
DELTAS = (0.05, 0.1)
SIZES = (500, 2000)
WEIGHT_GRID = (0.0, 0.5)
SWEEP_TARGETS = (0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99)
#: Where the pools are cached between runs.
CACHE = Path(tempfile.gettempdir()) / "cascademl-certify-pools"


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval of a proportion ``k / n``."""
    a = (1 - level) / 2
    low = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return low, high


@dataclass
class Tally:
    """Outcomes of one method in one cell over the draws."""

    draws: int = 0
    claims: int = 0  # certified (or, for the tuner, a rule returned)
    misses: int = 0
    truth: list[float] = field(default_factory=list)
    bound: list[float] = field(default_factory=list)
    cost_share: list[float] = field(default_factory=list)
    coverage: list[float] = field(default_factory=list)

    def add(
        self,
        *,
        claimed: bool,
        truth: float,
        target: float,
        cost_share: float,
        coverage: float = 1.0,
        bound: float = math.nan,
    ) -> None:
        """One draw."""
        self.draws += 1
        if not claimed:
            return
        self.claims += 1
        self.misses += int(truth < target)
        self.truth.append(truth)
        self.bound.append(bound)
        self.cost_share.append(cost_share)
        self.coverage.append(coverage)

    def to_json(self) -> dict[str, Any]:
        """Miss rate with its exact 95% interval, and the claimed draws' means."""
        low, high = clopper_pearson(self.misses, self.draws)

        def mean(values: list[float]) -> float | None:
            finite = [v for v in values if not math.isnan(v)]
            return round(float(np.mean(finite)), 4) if finite else None

        return {
            "draws": self.draws,
            "claimed": self.claims,
            "misses": self.misses,
            "miss_rate": round(self.misses / self.draws, 4),
            "miss_rate_ci95": [round(low, 4), round(high, 4)],
            "mean_truth": mean(self.truth),
            "mean_bound": mean(self.bound),
            "mean_cost_share_last": mean(self.cost_share),
            "mean_coverage": mean(self.coverage),
        }


def truth_on_rest(
    pool: Pool,
    rest: np.ndarray[Any, Any],
    rule: RoutingRule,
    guarantee: str,
    reject_threshold: float | None,
) -> tuple[float, float, float]:
    """(guaranteed quantity, cost share of the last stage alone, coverage) on ``rest``."""
    routed = route(pool.proba[:, rest], rule, pool.stage_cost, reject_threshold)
    reference = pool.last_labels[rest] if guarantee == "agreement" else pool.y[rest]
    right = routed.labels == reference
    decided = routed.decided
    coverage = float(decided.mean())
    value = float(right[decided].mean()) if decided.any() else 1.0
    return value, float(routed.cost.mean() / pool.stage_cost[-1]), coverage


def plug_in_selective(
    pool: Pool, draw: np.ndarray[Any, Any], rule: RoutingRule, target: float
) -> float | None:
    """Lowest reject threshold whose selective accuracy on the draw reaches ``target``."""
    routed = route(pool.proba[:, draw], rule, pool.stage_cost)
    final = routed.final
    n = final.shape[0]
    conf = rule.confidence(final)
    right = np.argmax(final, axis=1) == pool.y[draw]
    order = np.argsort(-conf, kind="stable")
    running = np.cumsum(right[order]) / np.arange(1, n + 1)
    ok = np.flatnonzero(running >= target)
    if ok.size == 0:
        return None
    return float(conf[order][ok[-1]])


def _draws(n_pool: int, n: int, count: int, seed: int) -> Iterator[np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield rng.choice(n_pool, n, replace=False)


def run_cell(pool: Pool, n: int, draws: int, seed: int) -> list[dict[str, Any]]:
    """Every guarantee and delta for one pool and calibration size, on the same draws."""
    n_pool = pool.proba.shape[1]
    certified = {(g, d): Tally() for g in GUARANTEES for d in DELTAS}
    tuned = {g: Tally() for g in GUARANTEES}
    seconds = dict.fromkeys(GUARANTEES, 0.0)
    for i, draw in enumerate(_draws(n_pool, n, draws, seed)):
        rest = np.setdiff1d(np.arange(n_pool), draw, assume_unique=True)
        p = pool.proba[:, draw]
        for guarantee in GUARANTEES:
            target = TARGETS[guarantee]
            y = None if guarantee == "agreement" else pool.y[draw]
            last_cert = None
            for delta in DELTAS:
                tic = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    cert = certify_cascade_from_proba(
                        p,
                        classes=pool.classes,
                        target=target,
                        delta=delta,
                        guarantee=guarantee,
                        y=y,
                        stage_cost=pool.stage_cost,
                        random_state=seed * 100_003 + i,
                    )
                seconds[guarantee] += time.perf_counter() - tic
                truth, share, cov = truth_on_rest(
                    pool, rest, cert.rule, guarantee, cert.reject_threshold
                )
                certified[guarantee, delta].add(
                    claimed=cert.certified,
                    truth=truth,
                    target=target,
                    cost_share=share,
                    coverage=cov,
                    bound=cert.bound,
                )
                last_cert = cert
            _tuner(pool, draw, rest, guarantee, target, last_cert, tuned[guarantee])
    return [
        {
            "pool": pool.name,
            "k": int(pool.proba.shape[0]),
            "guarantee": guarantee,
            "target": TARGETS[guarantee],
            "delta": delta,
            "n": n,
            "certified": certified[guarantee, delta].to_json(),
            "uncertified": tuned[guarantee].to_json(),
            "certify_seconds_mean": round(seconds[guarantee] / (draws * len(DELTAS)), 4),
        }
        for guarantee in GUARANTEES
        for delta in DELTAS
    ]


def _tuner(  # noqa: PLR0917 - one call site, every argument needed
    pool: Pool,
    draw: np.ndarray[Any, Any],
    rest: np.ndarray[Any, Any],
    guarantee: str,
    target: float,
    cert: Any,
    tally: Tally,
) -> None:
    """The uncertified baseline on the same draw, scored on the same rest of the pool."""
    if guarantee == "selective":
        threshold = plug_in_selective(pool, draw, cert.rule, target)
        if threshold is None:
            tally.add(claimed=False, truth=math.nan, target=target, cost_share=math.nan)
            return
        truth, share, cov = truth_on_rest(pool, rest, cert.rule, guarantee, threshold)
        tally.add(claimed=True, truth=truth, target=target, cost_share=share, coverage=cov)
        return
    y = pool.last_labels[draw] if guarantee == "agreement" else pool.y[draw]
    try:
        result = tune_cascade_from_proba(
            pool.proba[:, draw],
            y,
            classes=pool.classes,
            stage_cost=pool.stage_cost,
            min_score=target,
            escalation_weight_grid=WEIGHT_GRID,
        )
    except PolicyError:  # no rule reaches the target on the draw: the tuner refuses
        tally.add(claimed=False, truth=math.nan, target=target, cost_share=math.nan)
        return
    truth, share, _ = truth_on_rest(pool, rest, result.rule, guarantee, None)
    tally.add(claimed=True, truth=truth, target=target, cost_share=share)


def sweep(pool: Pool, n: int, draws: int, seed: int) -> list[dict[str, Any]]:
    """Cost share of the certified and the tuned agreement rule against the target."""
    n_pool = pool.proba.shape[1]
    rows = []
    for target in SWEEP_TARGETS:
        cert_tally, tuned_tally = Tally(), Tally()
        for i, draw in enumerate(_draws(n_pool, n, draws, seed + 7)):
            rest = np.setdiff1d(np.arange(n_pool), draw, assume_unique=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cert = certify_cascade_from_proba(
                    pool.proba[:, draw],
                    classes=pool.classes,
                    target=target,
                    delta=0.05,
                    guarantee="agreement",
                    stage_cost=pool.stage_cost,
                    random_state=i,
                )
            truth, share, _ = truth_on_rest(pool, rest, cert.rule, "agreement", None)
            cert_tally.add(
                claimed=cert.certified,
                truth=truth,
                target=target,
                cost_share=share,
                bound=cert.bound,
            )
            _tuner(pool, draw, rest, "agreement", target, cert, tuned_tally)
        rows.append(
            {
                "target": target,
                "oracle_cost_share_last": round(_oracle_share(pool, target), 4),
                "certified": cert_tally.to_json(),
                "uncertified": tuned_tally.to_json(),
            }
        )
    return rows


def _oracle_share(pool: Pool, target: float) -> float:
    """Cheapest cost share of a ``combine="last"`` rule reaching ``target`` on the whole pool.

    What a tuner that knew every row could do: a reference, not something to reach.
    """
    rule = RoutingRule.from_params(None, n_stages=pool.proba.shape[0], combine="last")
    try:
        result = tune_cascade_from_proba(
            pool.proba,
            pool.last_labels,
            classes=pool.classes,
            rule=rule,
            stage_cost=pool.stage_cost,
            min_score=target,
        )
    except CascadeMLError:
        return 1.0
    return result.mean_cost / pool.stage_cost[-1]


def leukemia_pool(run_dir: Path) -> Pool:
    """The five backbones' validation + test probabilities of a finished leukemia run.

    Stages in the run's cascade order (``metrics.json``), cost = FLOPs per image.
    """
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    with np.load(run_dir / "probabilities.npz", allow_pickle=False) as saved:
        names = [str(n) for n in saved["stages"]]
        proba = np.concatenate([saved["val"], saved["test"]], axis=1).astype(np.float64)
        classes = [str(c) for c in saved["classes"]]
        labels = np.concatenate([saved["val_labels"], saved["test_labels"]])
    order = [names.index(name) for name in metrics["order"]]
    flops = metrics["cost"]["flops_per_image"]
    y = np.array([classes.index(str(label)) for label in labels])
    proba = proba[order] / proba[order].sum(axis=2, keepdims=True)
    return Pool(
        f"leukemia-{run_dir.name}",
        proba,
        y,
        tuple(names[i] for i in order),
        tuple(float(flops[names[i]]) for i in order),
        tuple(float(np.mean(p.argmax(axis=1) == y)) for p in proba[order]),
        0.0,
    )


def _print(rows: Sequence[dict[str, Any]]) -> None:
    print(
        "| pool | guarantee | target | delta | n | certified: misses / draws (95% CI) | "
        "certified share | cost share | tuner: misses / draws | tuner cost share |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        c, u = r["certified"], r["uncertified"]
        print(
            f"| {r['pool']} | {r['guarantee']} | {r['target']} | {r['delta']} | {r['n']} | "
            f"{c['misses']}/{c['draws']} ({c['miss_rate_ci95'][0]:.3f}-"
            f"{c['miss_rate_ci95'][1]:.3f}) | {c['claimed'] / c['draws']:.0%} | "
            f"{c['mean_cost_share_last']} | {u['misses']}/{u['draws']} | "
            f"{u['mean_cost_share_last']} |"
        )


def _write(  # noqa: PLR0917 - main's state, written after every cell
    args: argparse.Namespace,
    argv: Sequence[str] | None,
    started: float,
    pools: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    sweep_rows: list[dict[str, Any]],
) -> None:
    """Write the results so far (after every cell, so that a long run keeps its part)."""
    if not args.out:
        return
    payload = {
        "command": "python benchmarks/" + Path(__file__).name + " " + shlex.join(
            sys.argv[1:] if argv is None else argv
        ),
        "machine": machine_lines(),
        "seconds": round(time.perf_counter() - started, 1),
        "targets": TARGETS,
        "pools": pools,
        "validity": rows,
        "cost_against_target": {"pool": "generated-k3", "n": 2000, "delta": 0.05,
                                "guarantee": "agreement", "rows": sweep_rows},
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table; write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=100, help="calibration draws per cell")
    parser.add_argument("--sweep-draws", type=int, default=20, help="draws per sweep target")
    parser.add_argument("--ks", default="2,3,5", help="stage counts (2,3,5)")
    parser.add_argument("--sizes", default="500,2000", help="calibration sizes (500,2000)")
    parser.add_argument("--leukemia", type=Path, action="append", default=[], help="run folder")
    parser.add_argument("--leukemia-draws", type=int, default=500)
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "cascademl-certify-pools"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="JSON file for the results")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    for line in machine_lines():
        print(line)
    rows: list[dict[str, Any]] = []
    pools = []
    sweep_rows: list[dict[str, Any]] = []
    for k in (int(v) for v in args.ks.split(",") if v.strip()):
        pool = make_pool(k, seed=args.seed, cache=args.cache)
        check_router(pool, RoutingRule("max_proba", (0.8,) * (k - 1) + (math.inf,), "vote"))
        pools.append(pool.describe())
        print(pool.describe(), flush=True)
        for n in (int(v) for v in args.sizes.split(",") if v.strip()):
            rows.extend(run_cell(pool, n, args.draws, args.seed + 1000 * k + n))
            _print(rows[-6:])
            _write(args, argv, started, pools, rows, sweep_rows)
        if k == 3 and args.sweep_draws:
            sweep_rows = sweep(pool, 2000, args.sweep_draws, args.seed)
            for r in sweep_rows:
                print(r, flush=True)
    for run_dir in args.leukemia:
        pool = leukemia_pool(run_dir)
        pools.append(pool.describe())
        print(pool.describe(), flush=True)
        n = pool.proba.shape[1] // 2
        rows.extend(run_cell(pool, n, args.leukemia_draws, args.seed))
        _print(rows[-6:])
    print(f"total {time.perf_counter() - started:.0f} s")
    _write(args, argv, started, pools, rows, sweep_rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
