"""Figures and the Markdown report of the leukemia experiment.

Every function is pure apart from the file it writes: inputs are plain arrays, dicts and
histories; metrics are `cascademl.metrics.ClassificationMetrics` (from torchmetrics). Plots
use matplotlib's Agg backend through an explicit ``Figure`` (no pyplot state). Figure numbers
refer to the paper.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from cascademl import _files
from cascademl.metrics import ClassificationMetrics

#: Paper names of the four classes, in label order (Benign, Early, Pre, Pro).
PAPER_CLASS_NAMES: Final = (
    "Non-malignant",
    "Initial Pre-B",
    "Intermediate Pre-B",
    "Advanced Pro-B",
)


PAPER_NOTE: Final = (
    "Paper numbers: Section 4 and Table 1 of the paper; it publishes per-class results "
    "for the cascade only."
)


@dataclass(frozen=True)
class PaperResult:
    """Numbers the paper publishes for one model (``None`` where it gives none).

    Attributes:
        accuracy: Test accuracy.
        kappa: Cohen's kappa.
        mcc: Matthews correlation coefficient.
        error_rate: ``1 - accuracy`` as the paper states it.
        precision: Per-class precision, in label order.
        recall: Per-class recall.
        f1: Per-class F1.
    """

    accuracy: float
    kappa: float | None = None
    mcc: float | None = None
    error_rate: float | None = None
    precision: tuple[float, ...] | None = None
    recall: tuple[float, ...] | None = None
    f1: tuple[float, ...] | None = None


#: Published results (Section 4 and Table 1 of the paper; its abstract gives other,
#: inconsistent single-model accuracies, which are not used).
PAPER_RESULTS: Final[Mapping[str, PaperResult]] = MappingProxyType(
    {
        "Cascade": PaperResult(
            0.9815,
            kappa=0.97,
            mcc=0.973,
            error_rate=0.0185,
            precision=(0.94, 0.98, 1.00, 0.99),
            recall=(0.96, 0.96, 1.00, 1.00),
            f1=(0.95, 0.97, 1.00, 0.99),
        ),
        "DenseNet201": PaperResult(0.958, error_rate=0.042),
        "ResNet50": PaperResult(0.9401),
        "VGG19": PaperResult(0.9355),
        "EfficientNetB0": PaperResult(0.8966, error_rate=0.103),
        "InceptionV3": PaperResult(0.7862, error_rate=0.21),
    }
)


def _save(figure: Figure, path: str | os.PathLike[str]) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    with _files.atomic_path(target) as tmp:
        figure.savefig(tmp, dpi=120, bbox_inches="tight")
    return target


def plot_training_curves(
    history: Sequence[Mapping[str, float]], path: str | os.PathLike[str], *, title: str
) -> Path:
    """Plot accuracy and loss per epoch, training vs validation (the paper's Figs. 8-13).

    Args:
        history: One mapping per epoch with ``epoch``, ``train_acc``, ``val_acc``,
            ``train_loss`` and ``val_loss``.
        path: Image file to write (format from the suffix).
        title: Figure title, e.g. the model name.

    Returns:
        The written path.
    """
    if not history:
        raise ValueError("history is empty")
    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(10, 4))
    for axis, metric, label in zip(
        figure.subplots(1, 2), ("acc", "loss"), ("Accuracy", "Loss"), strict=True
    ):
        axis.plot(epochs, [row[f"train_{metric}"] for row in history], "o-", label="train")
        axis.plot(epochs, [row[f"val_{metric}"] for row in history], "s-", label="validation")
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.set_title(f"{title}: {label.lower()}")
        axis.grid(alpha=0.3)
        axis.legend()
    return _save(figure, path)


def plot_confusion_matrix(
    matrix: ArrayLike,
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    *,
    title: str,
) -> Path:
    """Plot a confusion matrix with counts in the cells.

    Args:
        matrix: Counts of shape (n_classes, n_classes), rows true, columns predicted (e.g.
            ``ClassificationMetrics.confusion_matrix``).
        class_names: Names in label order.
        path: Image file to write.
        title: Figure title.

    Returns:
        The written path.
    """
    n = len(class_names)
    matrix = np.asarray(matrix)
    if matrix.shape != (n, n):
        msg = f"matrix must have shape ({n}, {n}) for {n} class names, got {matrix.shape}"
        raise ValueError(msg)
    figure = Figure(figsize=(5, 4.5))
    axis = figure.subplots()
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis)
    axis.set_xticks(range(n), class_names, rotation=30, ha="right")
    axis.set_yticks(range(n), class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, col), value in np.ndenumerate(matrix):
        axis.text(
            col,
            row,
            str(value),
            ha="center",
            va="center",
            color="white" if value > threshold else "black",
        )
    return _save(figure, path)


def plot_per_class_bars(
    metrics: Mapping[str, ClassificationMetrics],
    class_names: Sequence[str],
    path: str | os.PathLike[str],
) -> Path:
    """Plot per-class precision, recall and F1 for every model (the paper's Fig. 14).

    Args:
        metrics: ``{model name: metrics}``.
        class_names: Names in label order.
        path: Image file to write.

    Returns:
        The written path.
    """
    names = list(metrics)
    figure = Figure(figsize=(14, 4))
    width = 0.8 / max(len(names), 1)
    positions = np.arange(len(class_names))
    for axis, metric in zip(
        figure.subplots(1, 3, sharey=True), ("precision", "recall", "f1"), strict=True
    ):
        for index, name in enumerate(names):
            values = getattr(metrics[name], metric)
            axis.bar(positions + index * width, values, width, label=name)
        axis.set_xticks(positions + width * (len(names) - 1) / 2, class_names, rotation=20)
        axis.set_title(metric.capitalize() if metric != "f1" else "F1-score")
        axis.set_ylim(0, 1.05)
        axis.grid(axis="y", alpha=0.3)
    figure.axes[0].legend(fontsize="small")
    return _save(figure, path)


def plot_summary_bars(
    metrics: Mapping[str, ClassificationMetrics], path: str | os.PathLike[str]
) -> Path:
    """Plot accuracy, kappa, MCC and error rate for every model (the paper's Fig. 15).

    Args:
        metrics: ``{model name: metrics}``.
        path: Image file to write.

    Returns:
        The written path.
    """
    names = list(metrics)
    keys = ("accuracy", "kappa", "mcc", "error_rate")
    figure = Figure(figsize=(10, 4))
    axis = figure.subplots()
    width = 0.8 / max(len(names), 1)
    positions = np.arange(len(keys))
    for index, name in enumerate(names):
        axis.bar(
            positions + index * width, [getattr(metrics[name], k) for k in keys], width, label=name
        )
    axis.set_xticks(
        positions + width * (len(names) - 1) / 2, ["Accuracy", "Kappa", "MCC", "Error rate"]
    )
    axis.set_ylim(0, 1.05)
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize="small")
    return _save(figure, path)


def plot_cost_frontier(
    points: Sequence[tuple[float, float]],
    path: str | os.PathLike[str],
    *,
    chosen: tuple[float, float] | None = None,
    references: Mapping[str, tuple[float, float]] | None = None,
    cost_label: str = "mean cost per image",
) -> Path:
    """Plot accuracy against cost, with the Pareto frontier and the chosen point.

    Args:
        points: ``(cost, accuracy)`` of each candidate (e.g. threshold settings).
        path: Image file to write.
        chosen: The operating point picked, highlighted.
        references: Labelled extra points, e.g. each backbone alone.
        cost_label: Label of the cost axis.

    Returns:
        The written path.
    """
    figure = Figure(figsize=(6, 4.5))
    axis = figure.subplots()
    if points:
        cost, accuracy = np.asarray(points, dtype=float).T
        axis.scatter(cost, accuracy, s=12, alpha=0.5, label="candidates")
        front = pareto_front(points)
        axis.plot(*np.asarray(front).T, "-", color="tab:orange", label="frontier")
    for label, (x, y) in (references or {}).items():
        axis.scatter([x], [y], marker="^", s=40)
        axis.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize="small")
    if chosen is not None:
        axis.scatter(
            [chosen[0]], [chosen[1]], marker="*", s=200, color="red", label="chosen", zorder=3
        )
    axis.set_xlabel(cost_label)
    axis.set_ylabel("accuracy")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
    return _save(figure, path)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Return the points no other point beats on both lower cost and higher accuracy.

    Args:
        points: ``(cost, accuracy)`` pairs.

    Returns:
        The frontier, sorted by cost.
    """
    front: list[tuple[float, float]] = []
    best = -math.inf
    for cost, accuracy in sorted(points, key=lambda p: (p[0], -p[1])):
        if accuracy > best:
            front.append((float(cost), float(accuracy)))
            best = accuracy
    return front


def _fmt(value: float | None, *, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}%" if percent else f"{value:.3f}"


def metrics_table(
    metrics: Mapping[str, ClassificationMetrics],
    class_names: Sequence[str],
    *,
    paper: Mapping[str, PaperResult] = PAPER_RESULTS,
    paper_column: str = "Cascade",
) -> str:
    """Render the paper's Table 1 for every model side by side, as Markdown.

    Rows are per-class precision, recall and F1, then accuracy, kappa, MCC and error
    rate; columns are the models, then the paper's published numbers for
    ``paper_column``. A last row gives the paper's accuracy for each model it reports.

    Args:
        metrics: ``{model name: metrics}``, e.g. the cascade first, then the backbones.
        class_names: Names in label order.
        paper: Published results by model name.
        paper_column: Which published model gets its own column.

    Returns:
        The Markdown table.
    """
    names = list(metrics)
    published = paper.get(paper_column)
    header = ["Metric", *names] + ([f"Paper: {paper_column}"] if published else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def row(label: str, ours: list[str], theirs: str | None) -> None:
        cells = [label, *ours] + ([theirs or "-"] if published else [])
        lines.append("| " + " | ".join(cells) + " |")

    for metric, title in (("precision", "Precision"), ("recall", "Recall"), ("f1", "F1")):
        for index, class_name in enumerate(class_names):
            values = getattr(published, metric) if published else None
            row(
                f"{title}: {class_name}",
                [_fmt(getattr(metrics[n], metric)[index]) for n in names],
                _fmt(values[index]) if values else None,
            )
    for metric, title, percent in (
        ("accuracy", "Accuracy", True),
        ("kappa", "Kappa", False),
        ("mcc", "MCC", False),
        ("error_rate", "Error rate", True),
    ):
        row(
            title,
            [_fmt(getattr(metrics[n], metric), percent=percent) for n in names],
            _fmt(getattr(published, metric), percent=percent) if published else None,
        )
    row(
        "Paper accuracy",
        [_fmt(paper[n].accuracy, percent=True) if n in paper else "-" for n in names],
        None,
    )
    return "\n".join(lines)


def write_markdown_report(
    path: str | os.PathLike[str],
    metrics: Mapping[str, ClassificationMetrics],
    class_names: Sequence[str],
    *,
    title: str = "Leukemia cascade: results",
    sections: Mapping[str, str] | None = None,
    figures: Mapping[str, str | os.PathLike[str]] | None = None,
    paper: Mapping[str, PaperResult] = PAPER_RESULTS,
) -> Path:
    """Write the Markdown report: Table 1, free-form sections and figure links.

    Args:
        path: The ``.md`` file to write.
        metrics: ``{model name: test metrics}``; name the cascade ``"Cascade"`` to set
            it against the paper's column.
        class_names: Names in label order.
        title: Top heading.
        sections: ``{heading: Markdown body}`` added after the table (settings, timing,
            skipped files, duplicates, ...).
        figures: ``{caption: image path}``; paths are written relative to the report.
        paper: Published results by model name.

    Returns:
        The written path.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    parts = [
        f"# {title}",
        "",
        "## Test metrics (the paper's Table 1)",
        "",
        metrics_table(metrics, class_names, paper=paper),
        "",
    ]
    parts += [PAPER_NOTE, ""]
    for heading, body in (sections or {}).items():
        parts += [f"## {heading}", "", body.rstrip(), ""]
    if figures:
        parts += ["## Figures", ""]
        for caption, image in figures.items():
            relative = os.path.relpath(Path(image), target.parent)
            parts += [f"![{caption}]({Path(relative).as_posix()})", ""]
    _files.write_text(target, "\n".join(parts))
    return target
