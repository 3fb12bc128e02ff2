"""Draw every figure of the documentation into ``docs/img/``.

The figures are drawn from small recorded result files in ``docs/img/data/`` (each names
the command, machine and date its numbers came from), except the digits demo's, which are
drawn from the demo's own data with :mod:`cascademl.plot` (seeded and quick). A rerun
writes the same bytes: the SVG ids are salted with a constant and no date is written.

Run from the repository root (needs matplotlib, in the ``example`` extra)::

    python benchmarks/docs_figures.py            # redraw every figure
    python benchmarks/docs_figures.py --check    # fail if a committed figure is stale
    python benchmarks/docs_figures.py --only leukemia_frontier
    python benchmarks/docs_figures.py --record-confusion runs/seeds-cpu/seed-0 "machine, date"

``--record-confusion RUN NOTE`` copies the test confusion matrix of a finished leukemia
run's saved cascade (``RUN/metrics.json``) into ``docs/img/data/leukemia_confusion.json``,
with the run's preset and NOTE (the machine and date) as its source; the figure
``leukemia_confusion`` is drawn from that file.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib as mpl

mpl.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.ticker import NullFormatter

ROOT = Path(__file__).resolve().parent.parent
IMG = ROOT / "docs" / "img"
DATA = IMG / "data"

#: Colours by kind of model, used on every page.
COLOURS = {
    "backbone": "#4c72b0",
    "cascade": "#dd8452",
    "baseline": "#55a868",
    "other": "#8c8c8c",
    "accent": "#c44e52",
}

STYLE = {
    "svg.hashsalt": "cascademl-docs",
    "svg.fonttype": "path",
    "font.size": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "figure.dpi": 100,
}


def load(name: str) -> dict[str, Any]:
    """Read one recorded result file of ``docs/img/data``."""
    path = DATA / f"{name}.json"
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def records(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``rows`` of a result file with ``columns``, each as a column -> value dict."""
    return [dict(zip(data["columns"], row, strict=True)) for row in data["rows"]]


def svg_bytes(fig: Figure) -> bytes:
    """The figure as SVG, without a date, so that a rerun gives the same bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


# --------------------------------------------------------------------------- home page


def _box(
    ax: Any, xy: tuple[float, float], size: tuple[float, float], text: str, colour: str
) -> None:
    (x, y), (w, h) = xy, size
    ax.add_patch(
        FancyBboxPatch(
            (x, y),
            w,
            h,
            boxstyle="round,pad=0.02,rounding_size=0.08",
            facecolor=colour,
            edgecolor="black",
            linewidth=1.0,
        )
    )
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=10)


def _arrow(ax: Any, start: tuple[float, float], end: tuple[float, float], colour: str) -> None:
    ax.add_patch(
        FancyArrowPatch(
            start, end, arrowstyle="-|>", mutation_scale=14, color=colour, linewidth=1.4
        )
    )


def cascade_diagram() -> Figure:
    """A three-stage cascade: stages, exits, escalation and the vote."""
    fig, ax = plt.subplots(figsize=(9.0, 3.6))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 4.2)
    ax.axis("off")
    stages = [
        ("stage 1\ncheap", "#dbe5f1"),
        ("stage 2", "#c0d3ea"),
        ("stage 3\nmost accurate", "#9fbbe0"),
    ]
    xs = [1.6, 4.4, 7.2]
    w, h, y = 1.7, 1.0, 2.6
    ax.text(0.05, y + h / 2, "samples", ha="left", va="center", fontsize=10)
    _arrow(ax, (0.85, y + h / 2), (xs[0], y + h / 2), "black")
    for i, ((text, colour), x) in enumerate(zip(stages, xs, strict=True)):
        _box(ax, (x, y), (w, h), text, colour)
        if i < len(stages) - 1:
            _arrow(ax, (x + w, y + h / 2), (xs[i + 1], y + h / 2), COLOURS["cascade"])
            ax.text(
                (x + w + xs[i + 1]) / 2,
                y + h / 2 + 0.18,
                "escalate",
                ha="center",
                va="bottom",
                fontsize=9,
                color=COLOURS["cascade"],
            )
        label = "confident:\nexit" if i < len(stages) - 1 else "last stage:\nalways exits"
        _arrow(ax, (x + w / 2, y), (x + w / 2, 1.25), COLOURS["baseline"])
        ax.text(
            x + w / 2 + 0.08,
            1.85,
            label,
            ha="left",
            va="center",
            fontsize=8.5,
            color=COLOURS["baseline"],
        )
    _box(
        ax,
        (1.6, 0.2),
        (7.3, 1.0),
        "decision: confidence-weighted vote over the stages the sample visited\n"
        "(or the exiting stage's own answer, combine='last')",
        "#e8f3ea",
    )
    ax.text(
        9.05,
        y + h / 2,
        "each stage runs\nonly on the samples\nthat reach it",
        ha="left",
        va="center",
        fontsize=8.5,
        color="#444444",
    )
    return fig


# --------------------------------------------------------------------- getting started


@functools.cache
def _digits_cascade() -> tuple[Any, Any, Any]:
    """The demo's cascade, fitted on the demo's split (the same data as ``cascademl demo``)."""
    from sklearn.calibration import CalibratedClassifierCV  # noqa: PLC0415
    from sklearn.datasets import load_digits  # noqa: PLC0415
    from sklearn.ensemble import RandomForestClassifier  # noqa: PLC0415
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
    from sklearn.model_selection import train_test_split  # noqa: PLC0415
    from sklearn.pipeline import make_pipeline  # noqa: PLC0415
    from sklearn.preprocessing import StandardScaler  # noqa: PLC0415
    from sklearn.svm import SVC  # noqa: PLC0415

    from cascademl import CascadeClassifier, ConfidencePolicy  # noqa: PLC0415

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, stratify=y, random_state=0
    )
    stages = [
        ("logreg", make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))),
        (
            "svm",
            make_pipeline(
                StandardScaler(), CalibratedClassifierCV(SVC(random_state=0), ensemble=False)
            ),
        ),
        ("forest", RandomForestClassifier(n_estimators=300, random_state=0)),
    ]
    cascade = CascadeClassifier(
        stages,
        policy=ConfidencePolicy("max_proba", thresholds=0.9),
        combine="vote",
        escalation_weight=0.5,
    ).fit(X_train, y_train)
    return cascade, X_test, y_test


def digits_frontier() -> Figure:
    """The demo cascade's accuracy-cost frontier on its test quarter."""
    from cascademl.plot import CostAccuracyDisplay  # noqa: PLC0415

    cascade, X_test, y_test = _digits_cascade()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    CostAccuracyDisplay.from_estimator(cascade, X_test, y_test, ax=ax)
    ax.set_xlabel("stage calls per sample (every stage counted as 1)")
    ax.set_title("digits demo: accuracy against cost on the test quarter")
    return fig


def digits_exits() -> Figure:
    """Where the demo cascade ends its test samples, and how accurate each exit is."""
    from cascademl.plot import ExitDisplay  # noqa: PLC0415

    cascade, X_test, y_test = _digits_cascade()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ExitDisplay.from_estimator(cascade, X_test, y_test, ax=ax)
    ax.set_title("digits demo: samples ended per stage (threshold 0.9)")
    return fig


# ---------------------------------------------------------------------------- leukemia


def leukemia_frontier() -> Figure:
    """Test accuracy against cost for every backbone and cascade, over three seeds."""
    data = load("leukemia_seeds")
    columns = data["columns"]
    rows = [dict(zip(columns, row, strict=True)) for row in data["rows"]]
    fig, ax = plt.subplots(figsize=(7.6, 4.6))
    offsets = {
        "InceptionV3": (6, -12),
        "EfficientNetB0": (6, 2),
        "VGG19-BN": (6, 2),
        "ResNet50": (-58, 4),
        "DenseNet201": (-78, 4),
        "Cascade, paper's order": (-150, -4),
        "Cascade, cheapest first": (6, -14),
        "Cascade, stage selection": (-20, 9),
    }
    for row in rows:
        if row["cost_mean"] is None:
            ax.axhspan(
                row["test_mean"] - row["test_sd"],
                row["test_mean"] + row["test_sd"],
                color=COLOURS["baseline"],
                alpha=0.15,
                linewidth=0,
            )
            ax.axhline(row["test_mean"], color=COLOURS["baseline"], linestyle="--")
            ax.text(
                1.0,
                row["test_mean"] + 0.8,
                f"{row['model']}: {row['test_mean']:.2f}%",
                color=COLOURS["baseline"],
                fontsize=9,
            )
            continue
        colour = COLOURS[row["kind"]]
        marker = "o" if row["kind"] == "backbone" else "s"
        ax.errorbar(
            row["cost_mean"],
            row["test_mean"],
            yerr=row["test_sd"],
            xerr=row["cost_sd"],
            fmt=marker,
            color=colour,
            capsize=3,
            markersize=7,
        )
        ax.annotate(
            row["model"],
            (row["cost_mean"], row["test_mean"]),
            xytext=offsets.get(row["model"], (6, 2)),
            textcoords="offset points",
            fontsize=8.5,
            color=colour,
        )
    ax.axvline(data["budget"], color=COLOURS["other"], linestyle=":")
    ax.text(data["budget"] + 0.4, 58, "budget:\n35% of all five", fontsize=8.5, color="#555555")
    ax.set_xlim(0, 40)
    ax.set_ylim(55, 100)
    ax.set_xlabel("cost, % of running all five backbones (FLOPs)")
    ax.set_ylabel("test accuracy, % (mean ± sd, 3 seeds)")
    ax.set_title("leukemia, cpu preset: backbones (circles) and cascades (squares)")
    return fig


def leukemia_seeds() -> Figure:
    """Validation and test accuracy of every model, mean and sd over three seeds."""
    data = load("leukemia_seeds")
    columns = data["columns"]
    rows = [dict(zip(columns, row, strict=True)) for row in data["rows"]]
    names = [row["model"] for row in rows]
    y = np.arange(len(rows))[::-1]
    fig, ax = plt.subplots(figsize=(7.6, 4.4))
    height = 0.38
    for shift, key, label, alpha in (
        (height / 2, "val", "validation", 0.55),
        (-height / 2, "test", "test", 1.0),
    ):
        means = [row[f"{key}_mean"] for row in rows]
        sds = [row[f"{key}_sd"] for row in rows]
        colours = [COLOURS[row["kind"]] for row in rows]
        ax.barh(
            y + shift,
            means,
            height,
            xerr=sds,
            color=colours,
            alpha=alpha,
            capsize=2,
            label=label,
            edgecolor="black",
            linewidth=0.4,
        )
        if key == "test":
            for yi, mean, sd in zip(y, means, sds, strict=True):
                ax.text(mean + sd + 0.8, yi + shift, f"{mean:.1f}", va="center", fontsize=8)
    ax.set_yticks(y, names)
    ax.set_xlim(50, 105)
    ax.set_xlabel("accuracy, % (mean ± sd over seeds 0-2; pale: validation, dark: test)")
    ax.set_title("leukemia, cpu preset, three seeds")
    ax.grid(axis="y", visible=False)
    return fig


def leukemia_shortcuts() -> Figure:
    """The shortcut audit: test accuracy when only the preprocessing changes at test time."""
    data = load("leukemia_shortcuts")
    keep = {
        "DenseNet201",
        "ResNet50",
        "InceptionV3",
        "Cascade, stage selection",
        "Colour statistics (no cell)",
    }
    rows = [row for row in data["rows"] if row[0] in keep]
    preprocessings = data["preprocessings"]
    x = np.arange(len(preprocessings))
    width = 0.8 / len(rows)
    palette = ["#4c72b0", "#6f93c8", "#a3bde0", COLOURS["cascade"], COLOURS["baseline"]]
    fig, ax = plt.subplots(figsize=(8.4, 4.2))
    for i, ((name, means, sds), colour) in enumerate(zip(rows, palette, strict=True)):
        ax.bar(
            x - 0.4 + width * (i + 0.5),
            means,
            width,
            yerr=sds,
            color=colour,
            label=name,
            capsize=2,
            edgecolor="black",
            linewidth=0.4,
        )
    ax.axhline(data["chance"], color="black", linestyle=":", linewidth=1)
    ax.text(-0.45, data["chance"] + 1.5, "largest class", ha="left", fontsize=8)
    ax.set_xticks(x, [name.replace(" + ", "\n+ ") for name in preprocessings])
    ax.set_ylim(0, 105)
    ax.set_ylabel("test accuracy, % (mean ± sd, 3 seeds)")
    ax.set_title(
        "Shortcut audit: backbones trained on normalized + masked images,\n"
        "tested on other preprocessings; the colour statistics see no cell"
    )
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3)
    ax.grid(axis="x", visible=False)
    return fig


def leukemia_confusion() -> Figure:
    """The confusion matrix of one run's recommended cascade on its test split."""
    data = load("leukemia_confusion")
    matrix = np.asarray(data["matrix"])
    classes = data["classes"]
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    ax.imshow(matrix, cmap="Blues")
    limit = matrix.max() / 2
    for (i, j), count in np.ndenumerate(matrix):
        colour = "white" if count > limit else "black"
        ax.text(j, i, str(count), ha="center", va="center", color=colour)
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.grid(visible=False)
    ax.set_title(data["title"], fontsize=9.5)
    return fig


# -------------------------------------------------------------------------- benchmarks


def engine_overhead() -> Figure:
    """The engine's wall time against the bare forward passes, run by run."""
    data = load("engine_overhead")
    rows = records(data)
    y = np.arange(len(rows))[::-1]
    fig, ax = plt.subplots(figsize=(7.6, 3.4))
    height = 0.38
    ax.barh(
        y + height / 2,
        [row["vs_forward"] for row in rows],
        height,
        color=COLOURS["cascade"],
        label="cascade / bare forward",
    )
    ax.barh(
        y - height / 2,
        [row["vs_preprocessing_forward"] for row in rows],
        height,
        color=COLOURS["backbone"],
        label="cascade / (preprocessing + forward)",
    )
    ax.axvline(1.0, color="black", linewidth=1)
    ax.axvline(
        data["target"],
        color=COLOURS["accent"],
        linestyle="--",
        linewidth=1,
        label=f"target {data['target']} (against the bare forward)",
    )
    for yi, row in zip(y, rows, strict=True):
        for shift, key in ((height / 2, "vs_forward"), (-height / 2, "vs_preprocessing_forward")):
            ax.text(row[key] + 0.004, yi + shift, f"{row[key]:.3f}", va="center", fontsize=7.5)
    ax.set_yticks(y, [row["run"] for row in rows], fontsize=8.5)
    ax.set_xlim(0.9, 1.45)
    ax.set_xlabel("wall-time ratio (median of 7 rounds; 1.0 = no overhead)")
    ax.set_title("Engine overhead: five timm stages, 1,024 images")
    ax.legend(fontsize=8.5, loc="upper center", bbox_to_anchor=(0.35, -0.22), ncol=2)
    ax.grid(axis="y", visible=False)
    return fig


def tuning_vs_skfallback() -> Figure:
    """Test accuracy at each budget, cascademl against scikit-fallback, and tuning time."""
    data = load("tuning_vs_skfallback")
    budgets = data["budgets"]
    datasets = list(data["datasets"])
    fig, axes = plt.subplot_mosaic(
        [datasets, ["time", "time"]], figsize=(8.0, 6.6), height_ratios=[1.5, 1]
    )
    styles = {
        "scikit-fallback, default grid": (COLOURS["other"], "v", ":"),
        "scikit-fallback, extended grid": (COLOURS["backbone"], "^", "--"),
        "cascademl": (COLOURS["cascade"], "o", "-"),
    }
    for dataset in datasets:
        ax, series = axes[dataset], data["datasets"][dataset]
        for name, (colour, marker, line) in styles.items():
            ax.plot(budgets, series[name], marker=marker, linestyle=line, color=colour, label=name)
        ax.axhline(
            series["best single stage"],
            color="black",
            linewidth=0.8,
            linestyle="-.",
            label="best single stage",
        )
        ax.set_title(dataset)
        ax.set_ylabel("test accuracy")
        ax.set_xlabel("budget, mean cost per sample (all five: 52)")
        ax.set_xticks(budgets)
    axes[datasets[0]].legend(fontsize=8, loc="center right")
    ax = axes["time"]
    y = np.arange(len(datasets))[::-1]
    seconds = [data["seconds"][name] for name in datasets]
    ax.barh(
        y + 0.2,
        [entry["scikit-fallback"] for entry in seconds],
        0.4,
        color=COLOURS["backbone"],
        label="scikit-fallback (625 configurations)",
    )
    ax.barh(
        y - 0.2,
        [entry["cascademl, 1 budget"] for entry in seconds],
        0.4,
        color=COLOURS["cascade"],
        label="cascademl (one budget)",
    )
    for yi, entry in zip(y, seconds, strict=True):
        ax.text(
            entry["scikit-fallback"] * 1.15,
            yi + 0.2,
            f"{entry['scikit-fallback']} s: cascademl {entry['speed-up']}x faster",
            va="center",
            fontsize=8.5,
        )
        ax.text(
            entry["cascademl, 1 budget"] * 1.15,
            yi - 0.2,
            f"{entry['cascademl, 1 budget']} s",
            va="center",
            fontsize=8.5,
        )
    ax.set_xscale("log")
    ax.set_xlim(0.01, 1000)
    ax.set_yticks(y, datasets)
    ax.set_xlabel("seconds to tune (log scale)")
    ax.set_title("tuning time")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", visible=False)
    fig.tight_layout()
    return fig


def throughput() -> Figure:
    """Accuracy against images per second: cascades, the ensemble and the largest stage."""
    data = load("throughput")
    rows = records(data)
    cascades = [row for row in rows if row["configuration"].startswith("cascade")]
    fig, ax = plt.subplots(figsize=(6.8, 4.0))
    ax.plot(
        [row["images_per_s"] for row in cascades],
        [row["accuracy"] for row in cascades],
        "o-",
        color=COLOURS["cascade"],
        label="cascade, one threshold",
    )
    for row in cascades:
        threshold = row["configuration"].removeprefix("cascade, threshold ")
        ax.annotate(
            f"threshold {threshold}",
            (row["images_per_s"], row["accuracy"]),
            xytext={"0": (-75, 0), "0.9": (6, -12), "0.999": (-40, -16)}.get(threshold, (-20, 8)),
            textcoords="offset points",
            fontsize=8,
        )
    for row, colour, marker in (
        (rows[4], COLOURS["backbone"], "s"),
        (rows[5], COLOURS["accent"], "D"),
    ):
        ax.plot(
            row["images_per_s"],
            row["accuracy"],
            marker,
            color=colour,
            markersize=8,
            label=row["configuration"],
            linestyle="none",
        )
    ax.set_xscale("log")
    ticks = [250, 500, 1000, 2000, 4000]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("images per second (2-core CPU, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Streaming throughput, five timm stages on digits at 32 px")
    ax.legend(fontsize=8, loc="lower left")
    return fig


def ray_throughput() -> Figure:
    """Rows per second through Ray Data against the in-process engine."""
    data = load("ray_throughput")
    rows = records(data)
    y = np.arange(len(rows))[::-1]
    fig, ax = plt.subplots(figsize=(7.6, 3.2))
    height = 0.38
    ax.barh(
        y + height / 2,
        [row["steady_state"] for row in rows],
        height,
        color=COLOURS["cascade"],
        label="steady state",
    )
    ax.barh(
        y - height / 2,
        [row["end_to_end"] for row in rows],
        height,
        color=COLOURS["backbone"],
        label="end to end (start-up included)",
    )
    for yi, row in zip(y, rows, strict=True):
        ax.text(
            row["steady_state"] + 8,
            yi + height / 2,
            str(row["steady_state"]),
            va="center",
            fontsize=8,
        )
        note = "" if row["first_row_s"] is None else f"  (first row after {row['first_row_s']} s)"
        ax.text(
            row["end_to_end"] + 8,
            yi - height / 2,
            f"{row['end_to_end']}{note}",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(y, [row["run"] for row in rows], fontsize=8.5)
    ax.set_xlim(0, 900)
    ax.set_xlabel("rows per second (8,192 images, 2-core CPU)")
    ax.set_title("Ray Data: a three-stage cascade of small timm models")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", visible=False)
    return fig


def record_confusion(run: Path, note: str, model: str = "Cascade") -> Path:
    """Write ``leukemia_confusion.json`` from a finished run's ``metrics.json``."""
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    test = metrics["test"][model]
    preset = metrics["preset"]
    record = {
        "source": (
            f"{run / 'metrics.json'}, test['{model}'] of python -m examples.leukemia run "
            f"(preset {preset.get('name', '?')}, seed {preset.get('seed', '?')}); {note}"
        ),
        "title": (
            f"{model} ({' -> '.join(metrics['order'])}), test split: "
            f"{test['accuracy']:.2%} accurate"
        ),
        "classes": test["classes"],
        "matrix": test["confusion_matrix"],
    }
    path = DATA / "leukemia_confusion.json"
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path


def onnx_cascade() -> Figure:
    """The whole trained cascade on its test split: seconds per engine, with agreement."""
    data = load("onnx_cascade")
    rows = records(data)
    base = rows[0]["median_s"]
    fig, ax = plt.subplots(figsize=(7.6, 3.2))
    y = np.arange(len(rows))[::-1]
    colours = [
        COLOURS["baseline"] if row["engine"].startswith("torch") else COLOURS["cascade"]
        for row in rows
    ]
    ax.barh(
        y,
        [row["median_s"] for row in rows],
        color=colours,
        xerr=[
            [row["median_s"] - row["min_s"] for row in rows],
            [row["max_s"] - row["median_s"] for row in rows],
        ],
        capsize=3,
    )
    for yi, row in zip(y, rows, strict=True):
        ax.text(
            row["max_s"] + 0.3,
            yi,
            f"{base / row['median_s']:.2f}x, labels as torch fp32 {row['labels_as_torch_fp32']}"
            f"/286, accuracy {row['accuracy']:.2f}%",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(y, [row["engine"] for row in rows], fontsize=8.5)
    ax.set_xlim(0, 34)
    ax.set_xlabel("seconds for the 286 test images (median and range of 5)")
    ax.set_title("The trained leukemia cascade (seed 0, cpu preset) on a 2-core CPU", fontsize=10)
    ax.grid(axis="y", visible=False)
    fig.tight_layout()
    return fig


FIGURES: dict[str, Callable[[], Figure]] = {
    "cascade_diagram": cascade_diagram,
    "digits_frontier": digits_frontier,
    "digits_exits": digits_exits,
    "leukemia_frontier": leukemia_frontier,
    "leukemia_seeds": leukemia_seeds,
    "leukemia_shortcuts": leukemia_shortcuts,
    "leukemia_confusion": leukemia_confusion,
    "engine_overhead": engine_overhead,
    "tuning_vs_skfallback": tuning_vs_skfallback,
    "throughput": throughput,
    "ray_throughput": ray_throughput,
    "onnx_cascade": onnx_cascade,
}


def main(argv: list[str] | None = None) -> int:
    """Redraw the figures (or, with ``--check``, compare them with the committed ones)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    parser.add_argument("--only", nargs="+", choices=sorted(FIGURES), help="figures to draw")
    parser.add_argument(
        "--record-confusion",
        nargs=2,
        metavar=("RUN", "NOTE"),
        help="record a finished leukemia run's test confusion matrix, then draw it",
    )
    args = parser.parse_args(argv)
    if args.record_confusion:
        run, note = args.record_confusion
        print(f"wrote {record_confusion(Path(run), note).relative_to(ROOT)}")
        args.only = ["leukemia_confusion"]
    stale = []
    with mpl.rc_context(STYLE):
        names = args.only or [
            name
            for name in FIGURES
            if name != "leukemia_confusion" or (DATA / "leukemia_confusion.json").is_file()
        ]
        for name in names:
            content = svg_bytes(FIGURES[name]())
            path = IMG / f"{name}.svg"
            if args.check:
                if not path.is_file() or path.read_bytes() != content:
                    stale.append(path.relative_to(ROOT))
                continue
            path.write_bytes(content)
            print(f"{path.relative_to(ROOT)}: {len(content) / 1024:.0f} KiB")
    if stale:
        print("stale or missing (rerun python benchmarks/docs_figures.py):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
