"""Label-to-column-index conversion shared by tuning, calibration and metrics."""

from __future__ import annotations

from typing import Any

import numpy as np

from cascademl._typing import IntArray, LabelArray
from cascademl.exceptions import PolicyError


def label_indices(y: Any, classes: LabelArray, *, name: str = "y") -> IntArray:
    """Return the column index in ``classes`` of every label in ``y``.

    Args:
        y: array-like of shape (n_samples,), labels.
        classes: array-like of shape (n_classes,), the labels of the columns.
        name: The argument ``y`` came from, for the error message.

    Returns:
        ndarray of shape (n_samples,) and dtype ``intp``.

    Raises:
        PolicyError: When ``y`` holds a label that is not in ``classes``; the message names
            ``name`` and up to five such labels.
    """
    position = {label: i for i, label in enumerate(np.asarray(classes).tolist())}
    values = np.asarray(y).tolist()
    unknown = sorted({v for v in values if v not in position}, key=str)
    if unknown:
        msg = f"{name} holds labels {unknown[:5]} that are not in classes {list(position)[:10]}"
        raise PolicyError(msg)
    return np.array([position[v] for v in values], dtype=np.intp)
