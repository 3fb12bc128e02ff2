"""The experiment over several seeds (different grouped splits), and a summary of them.

One 286-image test split moves by about a point per three errors: one run cannot say
whether the cascade beats its best stage. :func:`run_seeds` runs (or resumes, or reuses)
one run per seed into ``OUT/seed-N``; :func:`summarize_seeds` reads the finished runs'
``metrics.json`` and ``probabilities.npz`` (nothing is recomputed) and gives, per backbone
and per cascade configuration, validation and test accuracy, test MCC and cost as
mean +- sd over the seeds, with McNemar's test of each configuration against its best stage,
pooled over the seeds.

The best stage of a configuration is the backbone of its own order with the best
validation accuracy (chosen on validation, as everything else). The pooled test
concatenates the test splits of the seeds; these overlap (an image can be in the test split
of two seeds), so the pooled p-value is a rough guide, not an exact test.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

import numpy as np

from cascademl import _files
from cascademl.metrics import mcnemar_test

from .audit import BASELINE_NAME
from .backbones import PROBABILITIES_FILE
from .ordering import ORDER_RULES

__all__ = [
    "SeedRunError",
    "run_seeds",
    "seeds_markdown",
    "settings_differences",
    "summarize_seeds",
]

logger = logging.getLogger(__name__)

#: How the summary names each cascade configuration.
CONFIGURATIONS: Final = {
    "accuracy": "Cascade, paper's order",
    "cost": "Cascade, cheapest first",
    "selected": "Cascade, stage selection",
}
#: The summary files written into the parent folder.
SUMMARY_JSON: Final = "seeds.json"
SUMMARY_MARKDOWN: Final = "seeds.md"
#: Preset settings that change how fast a run goes, not its results.
_SPEED_ONLY: Final = frozenset({"num_workers", "channels_last"})


class SeedRunError(ValueError):
    """A seed folder that is not a finished run of this experiment."""


def _finished(folder: Path) -> bool:
    metrics = folder / "metrics.json"
    if not (metrics.is_file() and (folder / PROBABILITIES_FILE).is_file()):
        return False
    return "test_predictions" in json.loads(metrics.read_text())


def settings_differences(
    folder: Path,
    preset: Mapping[str, Any],
    *,
    max_cost_ratio: float,
    scoring: str | None,
) -> list[str]:
    """What a finished run in ``folder`` was made with that differs from what is asked.

    Args:
        folder: A finished run.
        preset: The asked preset as a mapping (``dataclasses.asdict``), seed included.
        max_cost_ratio: The asked cost budget, a share of running every backbone.
        scoring: The asked tuning score.

    Returns:
        One ``"name: run has X, asked Y"`` line per differing setting (empty when the run
        can stand for the one asked). Settings a run of an older version did not record
        are not compared.
    """
    metrics = json.loads((folder / "metrics.json").read_text())
    saved = metrics.get("preset", {})
    asked = json.loads(json.dumps(dict(preset)))  # tuples as lists, as the run saved them
    lines = [
        f"{key}: the run has {saved[key]!r}, asked {value!r}"
        for key, value in asked.items()
        if key in saved and saved[key] != value and key not in _SPEED_ONLY
    ]
    tuning = metrics.get("tuning", {})
    if "scoring" in tuning and tuning["scoring"] != scoring:
        lines.append(f"scoring: the run has {tuning['scoring']!r}, asked {scoring!r}")
    flops = metrics.get("cost", {}).get("flops_per_image", {})
    if "budget_flops" in tuning and flops:
        ratio = float(tuning["budget_flops"]) / float(sum(flops.values()))
        if not math.isclose(ratio, max_cost_ratio, rel_tol=1e-6):
            lines.append(f"max_cost_ratio: the run has {ratio:.4g}, asked {max_cost_ratio:.4g}")
    return lines


def run_seeds(
    seeds: Sequence[int],
    out: str | Path,
    run: Callable[[int, Path], object],
    differences: Callable[[int, Path], Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Run or reuse one run per seed into ``OUT/seed-N``, then summarize them.

    A seed whose folder holds a finished run (``metrics.json`` with per-sample test
    predictions, and ``probabilities.npz``) is reused as it is, unless ``differences``
    finds that it was made with other settings: then nothing is run or summarized, and the
    error names the settings and the way out (a summary that mixed runs of different
    settings would say nothing true). Any other seed is run, which resumes from its
    checkpoints when interrupted before.

    Args:
        seeds: The seeds, one run each (each seed gives another grouped split).
        out: The parent folder.
        run: ``run(seed, folder)`` runs the experiment with that seed into that folder.
        differences: ``differences(seed, folder)`` lists how a finished run's settings
            differ from the asked ones (see :func:`settings_differences`); ``None``
            reuses every finished run.

    Returns:
        The summary (also written to ``OUT/seeds.json`` and ``OUT/seeds.md``).

    Raises:
        SeedRunError: No seeds, repeated seeds, or a finished run made with other
            settings.
    """
    if not seeds:
        raise SeedRunError("no seeds given (e.g. --seeds 0,1,2)")
    if len(set(seeds)) != len(seeds):
        msg = f"seeds must differ, got {list(seeds)}"
        raise SeedRunError(msg)
    parent = Path(out)
    stale: dict[int, list[str]] = {}
    if differences is not None:
        for seed in seeds:
            folder = parent / f"seed-{seed}"
            if _finished(folder) and (lines := list(differences(seed, folder))):
                stale[seed] = lines
    if stale:
        listed = "; ".join(
            f"{parent / f'seed-{seed}'}: {', '.join(lines)}" for seed, lines in stale.items()
        )
        msg = (
            f"finished runs made with other settings: {listed}. Use another --out, or "
            "delete those runs' metrics.json to redo their tuning and test from their "
            "checkpoints (a changed training setting retrains)"
        )
        raise SeedRunError(msg)
    folders = []
    for seed in seeds:
        folder = parent / f"seed-{seed}"
        if _finished(folder):
            logger.info("seed %d: reusing the finished run in %s", seed, folder)
        else:
            logger.info("seed %d: running into %s", seed, folder)
            run(seed, folder)
        folders.append(folder)
    summary = summarize_seeds(folders)
    write_summary(summary, parent)
    return summary


def _mean_sd(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    sd = float(array.std(ddof=1)) if len(array) > 1 else math.nan
    return {"mean": float(array.mean()), "sd": sd, "n": len(array)}


def _load(folder: Path) -> tuple[dict[str, Any], Any]:
    metrics_file = folder / "metrics.json"
    if not _finished(folder):
        msg = (
            f"{folder} is not a finished run of this version of the example (it needs "
            f"metrics.json with test_predictions, and {PROBABILITIES_FILE})"
        )
        raise SeedRunError(msg)
    return json.loads(metrics_file.read_text()), np.load(folder / PROBABILITIES_FILE)


def _configuration(metrics: Mapping[str, Any], rule: str) -> dict[str, Any]:
    """Order, validation/test numbers and cost share of one configuration of one run."""
    if rule == metrics["order_rule"]:
        test = metrics["test"]["Cascade"]
        return {
            "order": list(metrics["order"]),
            "val_accuracy": metrics["tuning"]["val_accuracy"],
            "test_accuracy": test["accuracy"],
            "test_mcc": test["mcc"],
            "cost": metrics["cost"]["cascade_flops_ratio_all"],
        }
    alt = metrics["alternatives"][rule]
    return {
        "order": list(alt["order"]),
        "val_accuracy": alt["val_accuracy"],
        "test_accuracy": alt["test_accuracy"],
        "test_mcc": alt["test_mcc"],
        "cost": alt["cascade_flops_ratio_all"],
    }


def summarize_seeds(folders: Sequence[str | Path]) -> dict[str, Any]:
    """Mean +- sd over finished runs, and the pooled McNemar test of each configuration.

    Args:
        folders: Finished run folders, one per seed.

    Returns:
        ``{"runs", "rows", "mcnemar"}``: ``rows`` maps each backbone, each configuration
        and the colour baseline to ``{val_accuracy, test_accuracy, test_mcc, cost}``, each
        ``{mean, sd, n}`` (cost as the share of running every backbone); ``mcnemar`` maps
        each configuration to its pooled test against its best stage, with the number of
        seeds where it was at least as accurate on test.

    Raises:
        SeedRunError: A folder is not a finished run, or the runs disagree on the backbones.
    """
    runs = [Path(f) for f in folders]
    values: dict[str, dict[str, list[float]]] = {}
    pooled: dict[str, dict[str, list[Any]]] = {
        rule: {"y": [], "cascade": [], "best": [], "best_names": [], "wins": []}
        for rule in ORDER_RULES
    }
    stages: list[str] | None = None

    def add(name: str, **numbers: float) -> None:
        row = values.setdefault(name, {})
        for key, value in numbers.items():
            row.setdefault(key, []).append(float(value))

    for folder in runs:
        metrics, saved = _load(folder)
        names = [str(s) for s in saved["stages"]]
        if stages is None:
            stages = names
        elif names != stages:
            msg = f"{folder} has the backbones {names}, the first run {stages}"
            raise SeedRunError(msg)
        classes = np.array([str(c) for c in saved["classes"]])
        y_test = np.array([str(v) for v in saved["test_labels"]])
        flops = metrics["cost"]["flops_per_image"]
        total = float(sum(flops.values()))
        test_labels = {
            name: classes[np.argmax(saved["test"][i], axis=1)] for i, name in enumerate(names)
        }
        for name in names:
            add(
                name,
                val_accuracy=metrics["val_accuracy"][name],
                test_accuracy=metrics["test"][name]["accuracy"],
                test_mcc=metrics["test"][name]["mcc"],
                cost=flops[name] / total,
            )
        for rule in ORDER_RULES:
            config = _configuration(metrics, rule)
            add(
                CONFIGURATIONS[rule],
                **{k: v for k, v in config.items() if k != "order"},
            )
            best = max(config["order"], key=lambda n: metrics["val_accuracy"][n])
            cascade = np.array(metrics["test_predictions"][rule])
            entry = pooled[rule]
            entry["y"].append(y_test)
            entry["cascade"].append(cascade)
            entry["best"].append(test_labels[best])
            entry["best_names"].append(best)
            entry["wins"].append(
                float(np.mean(cascade == y_test)) >= float(np.mean(test_labels[best] == y_test))
            )
        baseline = metrics.get("shortcut_audit", {})
        if BASELINE_NAME in metrics["test"] and baseline:
            trained = baseline["trained_variant"]
            add(
                BASELINE_NAME,
                val_accuracy=baseline["colour_baseline"][trained]["val_accuracy"],
                test_accuracy=metrics["test"][BASELINE_NAME]["accuracy"],
                test_mcc=metrics["test"][BASELINE_NAME]["mcc"],
                cost=0.0,
            )
    classes_all = sorted({str(v) for e in pooled.values() for y in e["y"] for v in y})
    mcnemar = {}
    for rule, entry in pooled.items():
        result = mcnemar_test(
            np.concatenate(entry["y"]),
            np.concatenate(entry["cascade"]),
            np.concatenate(entry["best"]),
            classes=classes_all,
        )
        mcnemar[CONFIGURATIONS[rule]] = {
            **asdict(result),
            "best_stage_per_seed": entry["best_names"],
            "seeds_at_least_as_accurate": int(sum(entry["wins"])),
            "n_seeds": len(entry["wins"]),
            "n_test_pooled": int(sum(len(y) for y in entry["y"])),
        }
    return {
        "runs": [str(f) for f in runs],
        "rows": {
            name: {key: _mean_sd(v) for key, v in row.items()} for name, row in values.items()
        },
        "mcnemar": mcnemar,
    }


def _cell(stat: Mapping[str, float], *, percent: bool) -> str:
    mean, sd = stat["mean"], stat["sd"]
    if percent:
        return f"{100 * mean:.2f}%" + ("" if math.isnan(sd) else f" ± {100 * sd:.2f}")
    return f"{mean:.4f}" + ("" if math.isnan(sd) else f" ± {sd:.4f}")


def seeds_markdown(summary: Mapping[str, Any]) -> str:
    """The summary as Markdown: one table of mean ± sd, then the pooled McNemar tests."""
    n = len(summary["runs"])
    lines = [
        f"Mean ± sd over {n} seed(s) (sample sd; one grouped split per seed).",
        "",
        "| model | validation accuracy | test accuracy | test MCC | cost (share of all) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in summary["rows"].items():
        lines.append(
            f"| {name} | {_cell(row['val_accuracy'], percent=True)} | "
            f"{_cell(row['test_accuracy'], percent=True)} | "
            f"{_cell(row['test_mcc'], percent=False)} | {_cell(row['cost'], percent=True)} |"
        )
    lines += ["", "McNemar's test against the configuration's best stage, pooled over seeds:", ""]
    for name, m in summary["mcnemar"].items():
        lines.append(
            f"- {name}: only the cascade right on {m['only_a_correct']}, only the best stage "
            f"({', '.join(m['best_stage_per_seed'])}) right on {m['only_b_correct']}, "
            f"p = {m['p_value']:.3g} ({m['method']}, {m['n_test_pooled']} test images); "
            f"at least as accurate on test in {m['seeds_at_least_as_accurate']} of "
            f"{m['n_seeds']} seeds"
        )
    lines += [
        "",
        (
            "The test splits of different seeds overlap, so the pooled test counts some images "
            "more than once: read its p-value as a guide."
        ),
    ]
    return "\n".join(lines)


def write_summary(summary: Mapping[str, Any], parent: Path) -> None:
    """Write ``seeds.json`` and ``seeds.md`` into ``parent``."""
    parent.mkdir(parents=True, exist_ok=True)
    for name, text in (
        (SUMMARY_JSON, json.dumps(summary, indent=2)),
        (SUMMARY_MARKDOWN, "# The experiment over seeds\n\n" + seeds_markdown(summary) + "\n"),
    ):
        _files.write_text(parent / name, text)  # per-process temporary name, fsync, rename
