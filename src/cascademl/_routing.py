"""Pure array functions for confidence scores and stage assignment.

Nothing here touches a model, a device or the file system: the functions take probability
matrices and return arrays, so the same rule serves the in-memory cascade and the streaming
torch engine, and is tested once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from cascademl._typing import BoolArray, ConfidenceMeasure, FloatArray, IntArray, ProbaArray
from cascademl.exceptions import PolicyError, StageOutputError

__all__ = [
    "CONFIDENCE_MEASURES",
    "RoutingArrays",
    "check_stage_proba",
    "confidence_scores",
    "exit_mask",
    "route",
]

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
    proba: object, *, n_samples: int, n_classes: int, stage_name: str
) -> ProbaArray:
    """Validate one stage's probabilities and return them as float64, rows renormalised.

    Args:
        proba: what the stage's ``predict_proba`` returned.
        n_samples: the number of rows expected.
        n_classes: the number of columns expected.
        stage_name: named in error messages.

    Returns:
        ndarray of shape (n_samples, n_classes).

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
    return np.asarray(p / sums[:, None], dtype=np.float64)


def exit_mask(confidence: FloatArray, threshold: float, *, is_last: bool) -> BoolArray:
    """Return which samples end at a stage: confidence at or above threshold, or last stage."""
    if is_last:
        return np.ones(confidence.shape[0], dtype=bool)
    return np.asarray(confidence >= threshold, dtype=bool)


@dataclass(frozen=True, slots=True)
class RoutingArrays:
    """Raw routing outcome: what each stage saw and said.

    Attributes:
        stage_proba: ndarray of shape (n_stages, n_samples, n_classes); NaN where a stage
            did not see the sample.
        stage_confidence: ndarray of shape (n_stages, n_samples); NaN where not visited.
        visited: bool ndarray of shape (n_stages, n_samples).
        exit_stage: int ndarray of shape (n_samples,): the stage that ended each sample.
    """

    stage_proba: FloatArray
    stage_confidence: FloatArray
    visited: BoolArray
    exit_stage: IntArray


def route(
    predict: Callable[[int, IntArray], ProbaArray],
    *,
    n_samples: int,
    n_classes: int,
    thresholds: Sequence[float],
    measure: ConfidenceMeasure,
) -> RoutingArrays:
    """Send samples through the stages in order; each stage sees only those that reach it.

    Args:
        predict: ``predict(stage_index, sample_indices)`` returns the (already validated)
            probabilities of that stage for those samples, in cascade column order. It is
            called once per stage, never per sample, and not at all once no sample is left.
        n_samples: number of samples.
        n_classes: number of classes.
        thresholds: one threshold per stage; the last is ignored (the last stage decides).
        measure: the confidence measure.

    Returns:
        The routing arrays.
    """
    n_stages = len(thresholds)
    if n_stages == 0:
        msg = "a cascade needs at least one stage"
        raise PolicyError(msg)
    stage_proba = np.full((n_stages, n_samples, n_classes), np.nan)
    stage_conf = np.full((n_stages, n_samples), np.nan)
    visited = np.zeros((n_stages, n_samples), dtype=bool)
    exit_stage = np.full(n_samples, -1, dtype=np.intp)
    active: IntArray = np.arange(n_samples, dtype=np.intp)
    for s in range(n_stages):
        if active.size == 0:
            break
        proba = predict(s, active)
        conf = confidence_scores(proba, measure)
        stage_proba[s, active] = proba
        stage_conf[s, active] = conf
        visited[s, active] = True
        done = exit_mask(conf, thresholds[s], is_last=s == n_stages - 1)
        exit_stage[active[done]] = s
        active = active[~done]
    return RoutingArrays(stage_proba, stage_conf, visited, exit_stage)
