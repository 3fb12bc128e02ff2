"""Hypothesis strategies shared by the tests: probability tables, thresholds, cascades."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

# Sorted, so that the cascade's column order (sorted classes) equals the tables' order.
CLASS_LABELS = ("benign", "early", "other", "pre", "pro")


class TableStage:
    """A pre-fitted `Stage` whose probabilities are looked up by sample id (``X[:, 0]``)."""

    def __init__(self, table: np.ndarray, classes: np.ndarray) -> None:
        self.table = table
        self.classes_ = classes
        self.calls: list[int] = []

    def predict_proba(self, X: Any) -> np.ndarray:
        ids = np.asarray(X)[:, 0].astype(int)
        self.calls.append(ids.size)
        return self.table[ids]


def _normalise(raw: np.ndarray) -> np.ndarray:
    raw = raw + 1e-3
    return raw / raw.sum(axis=-1, keepdims=True)


@st.composite
def proba_tables(draw: st.DrawFn, *, min_stages: int = 1, max_stages: int = 4) -> np.ndarray:
    """(n_stages, n_samples, n_classes) tables of valid probability rows."""
    n_stages = draw(st.integers(min_stages, max_stages))
    n_samples = draw(st.integers(1, 30))
    n_classes = draw(st.integers(2, 5))
    raw = draw(
        hnp.arrays(
            np.float64,
            (n_stages, n_samples, n_classes),
            elements=st.floats(0, 1, allow_nan=False, width=32),
        )
    )
    return _normalise(raw)


def thresholds(n: int) -> st.SearchStrategy[list[float]]:
    """``n`` thresholds in [0, 1.2]: values above 1 never stop a sample."""
    return st.lists(st.floats(0, 1.2, allow_nan=False), min_size=n, max_size=n)


def table_stages(tables: np.ndarray) -> list[tuple[str, TableStage]]:
    """Named pre-fitted stages over a probability table, with string class labels."""
    n_classes = tables.shape[2]
    classes = np.array(CLASS_LABELS[:n_classes])
    return [(f"s{i}", TableStage(t, classes)) for i, t in enumerate(tables)]


def sample_ids(n_samples: int) -> np.ndarray:
    """The inputs that select rows of a table: shape (n_samples, 1)."""
    return np.arange(n_samples).reshape(-1, 1)
