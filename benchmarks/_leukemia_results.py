"""Read a finished leukemia run's saved probabilities, for the leukemia benchmark scripts.

``python benchmarks/<script>.py`` puts ``benchmarks/`` first on ``sys.path``, so the scripts
import this module by its bare name; it needs numpy only (not the example package).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Files of a results folder (``python -m examples.leukemia run --out OUT``).
PROBABILITIES_FILE = "probabilities.npz"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class SavedRun:
    """Every backbone's probabilities of one run, with their labels and costs.

    Attributes:
        names: Backbone names, in the order the run trained them.
        flops: FLOPs per image of each backbone, in that order.
        classes: Class labels of the probability columns.
        val: Validation probabilities, shape (n_backbones, n_val, n_classes).
        val_labels: Validation labels.
        test: Test probabilities, shape (n_backbones, n_test, n_classes).
        test_labels: Test labels.
    """

    names: list[str]
    flops: np.ndarray
    classes: np.ndarray
    val: np.ndarray
    val_labels: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray

    def budget(self, max_cost_ratio: float) -> float:
        """The cost budget in FLOPs per image: a share of running every backbone."""
        return max_cost_ratio * float(self.flops.sum())


def load_run(folder: Path) -> SavedRun:
    """Load ``probabilities.npz`` and the FLOPs from ``metrics.json`` of a results folder.

    Raises:
        FileNotFoundError: When the folder lacks either file, naming the command that
            writes them.
    """
    for name in (PROBABILITIES_FILE, METRICS_FILE):
        if not (folder / name).is_file():
            msg = (
                f"{folder / name} not found: pass the --out folder of a finished "
                "'python -m examples.leukemia run'"
            )
            raise FileNotFoundError(msg)
    saved = np.load(folder / PROBABILITIES_FILE)
    metrics = json.loads((folder / METRICS_FILE).read_text())
    names = [str(n) for n in saved["stages"]]
    flops = np.array([metrics["cost"]["flops_per_image"][n] for n in names], dtype=float)
    return SavedRun(
        names=names,
        flops=flops,
        classes=saved["classes"],
        val=saved["val"],
        val_labels=saved["val_labels"],
        test=saved["test"],
        test_labels=saved["test_labels"],
    )


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the results folder and ``--max-cost-ratio`` (the run's default budget, 0.35)."""
    parser.add_argument("results", type=Path, help="results folder of a leukemia run")
    parser.add_argument(
        "--max-cost-ratio", type=float, default=0.35, help="budget, share of all backbones"
    )
