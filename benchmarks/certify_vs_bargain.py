"""Certified two-stage cascades against BARGAIN_A on BARGAIN's own task.

BARGAIN's task (``bargain`` 0.1.x, ``BARGAIN.BARGAIN_A``): a dataset of records, a cheap
*proxy* that gives each record a label and a confidence score, an expensive *oracle*; the
output must match the oracle's label on at least ``target`` of the records of this
dataset, with probability at least ``1 - delta``, using as few oracle calls as possible.
BARGAIN_A sorts the records by proxy score, tries M = 20 cut-offs from the most confident
down, and for each draws oracle labels adaptively (10 at a time, without replacement, among
the records above the cut-off) until a betting confidence sequence (Waudby-Smith and
Ramdas) says the proxy is above or below the cut-off's accuracy target, which it lowers to
account for the oracle answering every record below the cut-off; it stops at the first
cut-off it cannot certify. Records above the chosen cut-off that were not sampled get the
proxy's label; every other record (sampled or below) gets the oracle's.

Here both get the same records: rows of a pool of real stage outputs
(``_certify_pools.py``): proxy = a cheap stage's label with its max probability as the
score, oracle = the last stage's label. BARGAIN_A runs with its defaults (M = 20; only
``verbose`` is turned off and ``seed`` set to the draw's number). cascademl draws a random
calibration sample of ``n_cal`` records, calls the oracle on them (they get the oracle's
label and count as oracle calls), certifies ``guarantee="agreement"`` with
``combine="last"`` (a record that escalates gets the oracle's label) and routes the rest:
records below the certified threshold go to the oracle too. Two cascademl variants:

* ``plain``: certify ``target`` for the population the records come from;
* ``counted``: the calibration records are known to be right, so the rest needs only
  ``(target * N - n_cal) / (N - n_cal)``; certify that (the same adjustment BARGAIN_A
  makes for the records below a cut-off).

For each of ``--datasets`` random datasets of ``--records`` records: the share of records
answered by the proxy (the utility), the oracle calls, the accuracy against the oracle
over the whole dataset, and whether the target was missed; also the best share any
cut-off could reach knowing every oracle label (a reference).

Usage::

    python benchmarks/certify_vs_bargain.py --datasets 20 \
        --out docs/benchmarks/data/certification_bargain.json

Needs ``pip install bargain`` (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from BARGAIN import BARGAIN_A, Oracle, Proxy

import cascademl
from _certify_pools import make_pool, route
from _machine import machine_lines
from cascademl import RoutingRule
from cascademl.certify import certify_cascade_from_proba

TARGETS = (0.9, 0.95)
DELTA = 0.1
CAL_SIZES = (500, 1000)
#: (task, pool's stage count, proxy stage index): the oracle is the pool's last stage.
TASKS = (("weak proxy", 2, 0), ("strong proxy", 5, 3))
#: Where the pools are cached between runs.
CACHE = Path(tempfile.gettempdir()) / "cascademl-certify-pools"


class ArrayProxy(Proxy):  # type: ignore[misc]
    """The proxy: a record is a row index; its label and score come from cached outputs."""

    def __init__(self, labels: np.ndarray[Any, Any], scores: np.ndarray[Any, Any]) -> None:
        super().__init__(verbose=False, max_workers=1)
        self.labels, self.scores = labels, scores

    def proxy_func(self, input: Any) -> tuple[Any, float]:  # noqa: A002 - BARGAIN's name
        """Label and confidence of row ``input``."""
        row = int(input)
        return int(self.labels[row]), float(self.scores[row])


class ArrayOracle(Oracle):  # type: ignore[misc]
    """The oracle: the last stage's label; counts the distinct records it is asked about."""

    def __init__(self, labels: np.ndarray[Any, Any]) -> None:
        super().__init__(verbose=False, max_workers=1)
        self.labels = labels
        self.asked: set[int] = set()

    def oracle_func(self, input: Any, proxy_output: Any) -> tuple[bool, Any]:  # noqa: A002
        """Whether ``proxy_output`` is the oracle's label for row ``input``, and that label."""
        row = int(input)
        self.asked.add(row)
        label = int(self.labels[row])
        return proxy_output == label, label


def run_bargain(
    proxy_labels: np.ndarray[Any, Any],
    scores: np.ndarray[Any, Any],
    oracle_labels: np.ndarray[Any, Any],
    target: float,
    seed: int,
) -> dict[str, Any]:
    """BARGAIN_A on one dataset: utility, oracle calls, accuracy against the oracle."""
    n = proxy_labels.shape[0]
    oracle = ArrayOracle(oracle_labels)
    method = BARGAIN_A(
        ArrayProxy(proxy_labels, scores), oracle, target=target, delta=DELTA, seed=seed,
        verbose=False,
    )  # fmt: skip
    tic = time.perf_counter()
    output, used_oracle = method.process(list(range(n)), return_oracle_usage=True)
    seconds = time.perf_counter() - tic
    output = np.asarray(output, dtype=int)
    used = np.asarray(used_oracle, dtype=bool)
    return {
        "proxy_share": float(1 - used.mean()),
        "oracle_calls": len(oracle.asked),
        "accuracy": float(np.mean(output == oracle_labels)),
        "seconds": seconds,
    }


def run_cascademl(
    proba: np.ndarray[Any, Any],
    target: float,
    n_cal: int,
    seed: int,
    *,
    counted: bool,
) -> dict[str, Any]:
    """Certify on a random sample (oracle-labelled), route the rest."""
    n = proba.shape[1]
    rng = np.random.default_rng(seed)
    cal = rng.choice(n, n_cal, replace=False)
    rest = np.setdiff1d(np.arange(n), cal, assume_unique=True)
    oracle_labels = np.argmax(proba[-1], axis=1)
    goal = (target * n - n_cal) / (n - n_cal) if counted else target
    rule = RoutingRule.from_params(None, n_stages=2, combine="last")
    tic = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cert = certify_cascade_from_proba(
            proba[:, cal],
            classes=np.arange(proba.shape[2]),
            target=min(max(goal, 1e-6), 1 - 1e-6),
            delta=DELTA,
            guarantee="agreement",
            rule=rule,
            stage_cost=(1.0, 100.0),
            random_state=seed,
        )
    seconds = time.perf_counter() - tic
    routed = route(proba[:, rest], cert.rule, (1.0, 100.0))
    by_proxy = routed.cost == 1.0
    output = oracle_labels.copy()
    output[rest] = routed.labels
    return {
        "proxy_share": float(by_proxy.sum() / n),
        "oracle_calls": int(n_cal + (~by_proxy).sum()),
        "accuracy": float(np.mean(output == oracle_labels)),
        "certified": bool(cert.certified),
        "bound": float(cert.bound),
        "seconds": seconds,
    }


def best_possible(
    proxy_labels: np.ndarray[Any, Any],
    scores: np.ndarray[Any, Any],
    oracle_labels: np.ndarray[Any, Any],
    target: float,
) -> float:
    """Largest proxy share of a score cut-off that meets ``target`` knowing every label."""
    order = np.argsort(-scores, kind="stable")
    wrong = np.cumsum(proxy_labels[order] != oracle_labels[order])
    n = len(order)
    ok = np.flatnonzero(1 - wrong / n >= target)
    return 0.0 if ok.size == 0 else float((ok[-1] + 1) / n)


def _summary(values: list[dict[str, Any]], target: float) -> dict[str, Any]:
    share = [v["proxy_share"] for v in values]
    calls = [v["oracle_calls"] for v in values]
    accuracy = [v["accuracy"] for v in values]
    return {
        "datasets": len(values),
        "proxy_share_mean": round(float(np.mean(share)), 4),
        "proxy_share_sd": round(float(np.std(share, ddof=1)), 4) if len(share) > 1 else 0.0,
        "oracle_calls_mean": round(float(np.mean(calls)), 1),
        "accuracy_mean": round(float(np.mean(accuracy)), 4),
        "accuracy_min": round(float(np.min(accuracy)), 4),
        "missed": int(sum(a < target for a in accuracy)),
        "seconds_mean": round(float(np.mean([v["seconds"] for v in values])), 4),
        **(
            {"certified": int(sum(v["certified"] for v in values))}
            if "certified" in values[0]
            else {}
        ),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run every task, target and dataset draw; print the table; write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=int, default=20, help="dataset draws (20)")
    parser.add_argument("--records", type=int, default=5000, help="records per dataset")
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "cascademl-certify-pools"
    )
    parser.add_argument("--out", type=Path, help="JSON file for the results")
    args = parser.parse_args(argv)
    logging.getLogger("BARGAIN").setLevel(logging.WARNING)
    import BARGAIN  # noqa: PLC0415 - its version for the record

    started = time.perf_counter()
    lines = [*machine_lines(), f"bargain {BARGAIN.__version__}, cascademl {cascademl.__version__}"]
    for line in lines:
        print(line)
    results = []
    for task, k, proxy_index in TASKS:
        pool = make_pool(k, cache=args.cache)
        proba_all = pool.proba[[proxy_index, k - 1]]
        agreement = float(np.mean(proba_all[0].argmax(1) == proba_all[1].argmax(1)))
        print(f"{task}: {pool.stage_names[proxy_index]} -> {pool.stage_names[-1]}, "
              f"agreement on the pool {agreement:.3f}", flush=True)  # fmt: skip
        rng = np.random.default_rng(12345 + k)
        datasets = [
            rng.choice(pool.proba.shape[1], args.records, replace=False)
            for _ in range(args.datasets)
        ]
        for target in TARGETS:
            runs: dict[str, list[dict[str, Any]]] = {}
            best = []
            for i, rows in enumerate(datasets):
                proba = proba_all[:, rows]
                labels, scores = proba[0].argmax(1), proba[0].max(1)
                oracle = proba[1].argmax(1)
                runs.setdefault("BARGAIN_A", []).append(
                    run_bargain(labels, scores, oracle, target, seed=i)
                )
                for n_cal in CAL_SIZES:
                    for counted in (False, True):
                        name = f"cascademl n_cal={n_cal} {'counted' if counted else 'plain'}"
                        runs.setdefault(name, []).append(
                            run_cascademl(proba, target, n_cal, seed=i, counted=counted)
                        )
                best.append(best_possible(labels, scores, oracle, target))
            row = {
                "task": task,
                "proxy": pool.stage_names[proxy_index],
                "oracle": pool.stage_names[-1],
                "pool_agreement": round(agreement, 4),
                "target": target,
                "delta": DELTA,
                "records": args.records,
                "best_possible_share_mean": round(float(np.mean(best)), 4),
                "methods": {name: _summary(v, target) for name, v in runs.items()},
            }
            results.append(row)
            print(f"\n{task}, target {target}: knowing every label, "
                  f"{row['best_possible_share_mean']:.1%} by the proxy")  # fmt: skip
            print("| method | proxy share (sd) | oracle calls | accuracy (min) | missed |")
            print("|---|---|---|---|---|")
            for name, s in row["methods"].items():
                print(
                    f"| {name} | {s['proxy_share_mean']:.1%} ({s['proxy_share_sd']:.1%}) | "
                    f"{s['oracle_calls_mean']:.0f} | {s['accuracy_mean']:.4f} "
                    f"({s['accuracy_min']:.4f}) | {s['missed']}/{s['datasets']} |",
                    flush=True,
                )
    seconds = time.perf_counter() - started
    print(f"total {seconds:.0f} s")
    if args.out:
        payload = {
            "command": "python benchmarks/" + Path(__file__).name + " " + " ".join(
                sys.argv[1:] if argv is None else argv
            ),
            "machine": lines,
            "seconds": round(seconds, 1),
            "results": results,
        }  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
