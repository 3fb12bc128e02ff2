"""Markdown tables and SVG figures from the certification benchmarks' JSON files.

Reads ``docs/benchmarks/data/certification_validity_*.json`` (``certify_validity.py``) and
``docs/benchmarks/data/certification_bargain.json`` (``certify_vs_bargain.py``); prints the
tables of ``docs/benchmarks/certification.md`` and, with ``--figures DIR``, writes
``certification-miss-rate.svg`` (miss rate against delta) and
``certification-cost.svg`` (cost against the target).

Usage::

    python benchmarks/certify_tables.py --figures docs/img
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "data"


def _load_validity() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    rows: list[dict[str, Any]] = []
    sweep: list[dict[str, Any]] = []
    commands = []
    for path in sorted(DATA.glob("certification_validity_*.json")):
        payload = json.loads(path.read_text(encoding="utf-8"))
        rows.extend(payload["validity"])
        sweep.extend(payload["cost_against_target"]["rows"])
        commands.append(f"{payload['command']}  # {payload['seconds'] / 60:.0f} min")
    # generated pools first (by k, then n), then the leukemia runs' pools
    rows.sort(key=lambda r: (r["pool"].startswith("leukemia"), r["k"], r["n"]))
    return rows, sweep, commands


def _pool(row: dict[str, Any]) -> str:
    if row["pool"].startswith("leukemia-"):
        return f"leukemia {row['pool'].removeprefix('leukemia-')}, k = {row['k']}"
    return f"generated, k = {row['k']}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def validity_table(rows: Sequence[dict[str, Any]]) -> str:
    """One row per pool, guarantee, delta and n: certified against uncertified."""
    lines = [
        (
            "| pool | guarantee (target) | delta | n | draws | certified | misses (95% CI) | "
            "cost, share of last | uncertified: returned | misses | cost |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c, u = r["certified"], r["uncertified"]
        low, high = c["miss_rate_ci95"]
        lines.append(
            f"| {_pool(r)} | {r['guarantee']} ({r['target']}) | {r['delta']} | {r['n']:,} | "
            f"{c['draws']} | {c['claimed'] / c['draws']:.0%} | {c['misses']} "
            f"({low:.3f}-{high:.3f}) | {_share(c['mean_cost_share_last'])} | "
            f"{u['claimed'] / u['draws']:.0%} | **{u['misses']}** ({u['miss_rate']:.0%}) | "
            f"{_share(u['mean_cost_share_last'])} |"
        )
    return "\n".join(lines)


def sweep_table(rows: Sequence[dict[str, Any]]) -> str:
    """Cost share against the agreement target."""
    lines = [
        (
            "| target | certified: cost, share of last | agreement reached (mean) | misses | "
            "uncertified: cost | misses | knowing the whole pool: cost |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c, u = r["certified"], r["uncertified"]
        lines.append(
            f"| {r['target']} | {_share(c['mean_cost_share_last'])} | {c['mean_truth']} | "
            f"{c['misses']}/{c['draws']} | {_share(u['mean_cost_share_last'])} | "
            f"{u['misses']}/{u['draws']} | {_share(r['oracle_cost_share_last'])} |"
        )
    return "\n".join(lines)


def bargain_table(payload: dict[str, Any]) -> str:
    """Utility, oracle calls, accuracy and misses, per task and target."""
    lines = [
        (
            "| task (proxy -> oracle) | target | method | proxy share (sd) | oracle calls | "
            "accuracy, mean (min) | missed |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for r in payload["results"]:
        task = f"{r['task']} ({r['proxy']} -> {r['oracle']}, agree {r['pool_agreement']:.1%})"
        for name, s in r["methods"].items():
            lines.append(
                f"| {task} | {r['target']} | {name} | {s['proxy_share_mean']:.1%} "
                f"({s['proxy_share_sd']:.1%}) | {s['oracle_calls_mean']:,.0f} | "
                f"{s['accuracy_mean']:.4f} ({s['accuracy_min']:.4f}) | "
                f"{s['missed']}/{s['datasets']} |"
            )
        lines.append(
            f"| {task} | {r['target']} | knowing every label | "
            f"{r['best_possible_share_mean']:.1%} | - | - | - |"
        )
    return "\n".join(lines)


def figures(rows: Sequence[dict[str, Any]], sweep: Sequence[dict[str, Any]], out: Path) -> None:
    """Miss rate against delta, and cost against the target (small SVGs)."""
    import matplotlib as mpl  # noqa: PLC0415 - only for --figures

    mpl.use("Agg")
    from matplotlib.figure import Figure  # noqa: PLC0415

    mpl.rcParams["svg.fonttype"] = "none"
    mpl.rcParams["svg.hashsalt"] = "cascademl-docs"  # the same bytes on a rerun
    out.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(8.4, 3.4))
    full, zoom = fig.subplots(1, 2)
    deltas = sorted({r["delta"] for r in rows})
    spread = 0.012
    for ax in (full, zoom):
        ax.hlines(deltas, [d - spread for d in deltas], [d + spread for d in deltas],
                  colors="k", linestyles="--", lw=1, label="allowed: delta")  # fmt: skip
    per_delta = {d: [r for r in rows if r["delta"] == d] for d in deltas}
    first = True
    for delta, cells in per_delta.items():
        for j, r in enumerate(cells):
            c = r["certified"]
            x = delta + spread * (2 * j / max(len(cells) - 1, 1) - 1)
            low, high = c["miss_rate_ci95"]
            for ax in (full, zoom):
                ax.errorbar(
                    x, c["miss_rate"], yerr=[[c["miss_rate"] - low], [high - c["miss_rate"]]],
                    fmt="o", ms=3, color="C0", lw=0.8,
                    label="certified (95% CI)" if first else None,
                )  # fmt: skip
            full.plot(x, r["uncertified"]["miss_rate"], "x", ms=4, color="C3",
                      label="uncertified tuner" if first else None)  # fmt: skip
            first = False
    full.set_ylim(-0.02, 1.0)
    full.set_title("every cell, beside the uncertified tuner", fontsize=9)
    zoom.set_ylim(0, max(0.15, max(r["certified"]["miss_rate_ci95"][1] for r in rows) + 0.01))
    zoom.set_title("certified only (zoomed)", fontsize=9)
    for ax in (full, zoom):
        ax.set_xticks(deltas)
        ax.set_xlabel("delta (allowed miss rate)")
    full.set_ylabel("share of draws that missed")
    full.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "certification-miss-rate.svg", metadata={"Date": None})

    fig = Figure(figsize=(5.2, 3.4))
    ax = fig.add_subplot()
    targets = [r["target"] for r in sweep]
    ax.plot(targets, [r["certified"]["mean_cost_share_last"] for r in sweep], "o-",
            label="certified (delta 0.05)")  # fmt: skip
    ax.plot(targets, [r["uncertified"]["mean_cost_share_last"] for r in sweep], "x--",
            label="uncertified tuner")  # fmt: skip
    ax.plot(targets, [r["oracle_cost_share_last"] for r in sweep], ":", color="grey",
            label="knowing the whole pool")  # fmt: skip
    ax.set_xlabel("agreement target")
    ax.set_ylabel("mean cost / last stage alone")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "certification-cost.svg", metadata={"Date": None})


def main(argv: Sequence[str] | None = None) -> int:
    """Print the tables; draw the figures with ``--figures``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--figures", type=Path, help="folder for the SVG figures")
    args = parser.parse_args(argv)
    rows, sweep, commands = _load_validity()
    print("\n".join(commands), "\n")
    print(validity_table(rows), "\n")
    if sweep:
        print(sweep_table(sweep), "\n")
    bargain = DATA / "certification_bargain.json"
    if bargain.is_file():
        payload = json.loads(bargain.read_text(encoding="utf-8"))
        print(payload["command"], f"# {payload['seconds'] / 60:.0f} min\n")
        print(bargain_table(payload))
    if args.figures and rows and sweep:
        figures(rows, sweep, args.figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
