"""Pure array functions for confidence scores and stage assignment.

Nothing here touches a model, a device or the file system: the functions take probability
matrices and return arrays. The routing engine (``cascademl._engine``) calls them for every
batch, whatever the input, so the rule is written and tested once.
"""

from __future__ import annotations

import numpy as np

from cascademl._typing import BoolArray, ConfidenceMeasure, FloatArray, IntArray, ProbaArray
from cascademl.exceptions import PolicyError, StageOutputError

__all__ = ["CONFIDENCE_MEASURES", "check_stage_proba", "confidence_scores", "exit_mask"]

CONFIDENCE_MEASURES: tuple[ConfidenceMeasure, ...] = ("max_proba", "margin", "entropy")

#: Rows of a stage's probabilities may differ from one by this much before it is an error.
_ROW_SUM_ATOL = 1e-3


def confidence_scores(proba: ProbaArray, measure: ConfidenceMeasure) -> FloatArray:
    """Score how confident each row of ``proba`` is, on a common scale from 0 to 1.

    Args:
        proba: array-like of shape (n_samples, n_classes), rows summing to one.
        measure: ``"max_proba"`` (the largest probability), ``"margin"`` (largest minus
            second largest) or ``"entropy"`` (one minus the entropy normalised by
            ``log(n_classes)``).

    Returns:
        ndarray of shape (n_samples,) with values in ``[0, 1]``.

    Raises:
        PolicyError: if ``measure`` is not one of the three names.

    Examples:
        >>> import numpy as np
        >>> p = np.array([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]])
        >>> confidence_scores(p, "max_proba").round(3).tolist()
        [0.7, 0.333]
        >>> confidence_scores(p, "margin").round(3).tolist()
        [0.5, 0.0]
        >>> confidence_scores(p, "entropy").round(3).tolist()
        [0.27, 0.0]
    """
    p = np.asarray(proba, dtype=np.float64)
    n_classes = p.shape[1]
    if measure == "max_proba":
        scores = p.max(axis=1)
    elif measure == "margin":
        if n_classes < 2:  # noqa: PLR2004 - a single class leaves no runner-up
            scores = np.ones(p.shape[0])
        else:
            top2 = np.partition(p, n_classes - 2, axis=1)[:, -2:]
            scores = top2[:, 1] - top2[:, 0]
    elif measure == "entropy":
        if n_classes < 2:  # noqa: PLR2004 - a single class has zero entropy by definition
            scores = np.ones(p.shape[0])
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                plogp = np.where(p > 0, p * np.log(p), 0.0)
            scores = 1.0 + plogp.sum(axis=1) / np.log(n_classes)
    else:
        msg = f"measure must be one of {CONFIDENCE_MEASURES}, got {measure!r}"
        raise PolicyError(msg)
    return np.asarray(np.clip(scores, 0.0, 1.0), dtype=np.float64)


def check_stage_proba(
    proba: object,
    *,
    n_samples: int,
    n_classes: int,
    stage_name: str,
    columns: IntArray | None = None,
) -> ProbaArray:
    """Validate one stage's probabilities and return them as float64, rows renormalised.

    Args:
        proba: what the stage's ``predict_proba`` returned.
        n_samples: the number of rows expected.
        n_classes: the number of columns expected.
        stage_name: named in error messages.
        columns: the stage's columns in the cascade's class order (``None`` keeps them);
            reordering here costs no extra copy of the matrix.

    Returns:
        ndarray of shape (n_samples, n_classes), a new array.

    Raises:
        StageOutputError: for a wrong shape, NaN or infinite values, negative values, or rows
            that do not sum to one (within 1e-3).
    """
    p = np.asarray(proba, dtype=np.float64)
    if p.shape != (n_samples, n_classes):
        msg = (
            f"stage {stage_name!r} returned probabilities of shape {p.shape}, "
            f"expected ({n_samples}, {n_classes})"
        )
        raise StageOutputError(msg)
    if not np.all(np.isfinite(p)):
        rows = np.flatnonzero(~np.isfinite(p).all(axis=1))
        msg = (
            f"stage {stage_name!r} returned NaN or infinite probabilities for "
            f"{rows.size} sample(s), first at row {int(rows[0])}"
        )
        raise StageOutputError(msg)
    if np.any(p < 0):
        rows = np.flatnonzero((p < 0).any(axis=1))
        msg = (
            f"stage {stage_name!r} returned negative probabilities for {rows.size} "
            f"sample(s), first at row {int(rows[0])} (min {p.min():.3g})"
        )
        raise StageOutputError(msg)
    sums = p.sum(axis=1)
    bad = np.abs(sums - 1.0) > _ROW_SUM_ATOL
    if np.any(bad):
        first = int(np.flatnonzero(bad)[0])
        msg = (
            f"stage {stage_name!r} returned probability rows that do not sum to 1 "
            f"(row {first} sums to {sums[first]:.6g}); pass probabilities, not logits"
        )
        raise StageOutputError(msg)
    # A new array: never scale the stage's own array in place.
    out = p[:, columns] if columns is not None else (p.copy() if p is proba else p)
    out /= sums[:, None]
    return out


def exit_mask(confidence: FloatArray, threshold: float, *, is_last: bool) -> BoolArray:
    """Return which samples end at a stage: confidence at or above threshold, or last stage."""
    if is_last:
        return np.ones(confidence.shape[0], dtype=bool)
    return np.asarray(confidence >= threshold, dtype=bool)
