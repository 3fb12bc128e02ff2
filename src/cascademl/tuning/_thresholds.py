"""Tune or score thresholds on cached probabilities: the array-level entry points."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from cascademl._labels import label_indices
from cascademl._typing import CombineMethod, ConfidenceMeasure, FloatArray, IntArray, LabelArray
from cascademl.exceptions import PolicyError
from cascademl.tuning._results import FrontierPoint, MinScore, Scoring, TuningResult
from cascademl.tuning._scoring import _resolve_scoring
from cascademl.tuning._search import _Problem, _tune_one

__all__ = ["score_thresholds", "tune_thresholds"]


def _validate_inputs(
    stage_proba: Any,
    y: Any,
    classes: Any,
    stage_cost: Sequence[float] | None,
    n_candidates: int,
) -> tuple[FloatArray, IntArray, LabelArray, FloatArray]:
    p = np.asarray(stage_proba, dtype=np.float64)
    if p.ndim != 3:  # noqa: PLR2004 - (n_stages, n_samples, n_classes)
        msg = f"stage_proba must have shape (n_stages, n_samples, n_classes), got {p.shape}"
        raise PolicyError(msg)
    labels = np.asarray(classes)
    if labels.shape != (p.shape[2],):
        msg = f"classes must hold {p.shape[2]} labels (one per column), got shape {labels.shape}"
        raise PolicyError(msg)
    if not np.all(np.isfinite(p)):
        msg = "stage_proba holds NaN or infinite values; compute it with stage_probabilities"
        raise PolicyError(msg)
    y_idx = label_indices(y, labels)
    if y_idx.size != p.shape[1]:
        msg = f"y has {y_idx.size} labels but stage_proba has {p.shape[1]} samples"
        raise PolicyError(msg)
    costs = np.ones(p.shape[0]) if stage_cost is None else np.asarray(stage_cost, float)
    if costs.shape != (p.shape[0],) or not np.all(np.isfinite(costs)) or np.any(costs < 0):
        msg = (
            f"stage_cost must hold {p.shape[0]} finite non-negative numbers (one per "
            f"stage), got {stage_cost!r}"
        )
        raise PolicyError(msg)
    if isinstance(n_candidates, bool) or not isinstance(n_candidates, int) or n_candidates < 2:  # noqa: PLR2004
        msg = f"n_candidates must be an integer >= 2, got {n_candidates!r}"
        raise PolicyError(msg)
    return p, y_idx, labels, costs


def _check_constraints(max_cost: float | None, min_score: MinScore | None) -> None:
    if max_cost is not None and min_score is not None:
        msg = (
            "give max_cost (maximise the score under a cost budget) or min_score "
            "(minimise the cost for a score target), not both"
        )
        raise PolicyError(msg)
    if max_cost is not None and (
        isinstance(max_cost, bool)
        or not isinstance(max_cost, numbers.Real)
        or not math.isfinite(float(max_cost))
        or max_cost < 0
    ):
        msg = f"max_cost must be a finite number >= 0 or None, got {max_cost!r}"
        raise PolicyError(msg)
    if (
        min_score is not None
        and min_score != "best_stage"
        and (
            isinstance(min_score, bool)
            or not isinstance(min_score, numbers.Real)
            or math.isnan(float(min_score))
        )
    ):
        msg = f"min_score must be a number, 'best_stage' or None, got {min_score!r}"
        raise PolicyError(msg)


def _infeasible_error(result: TuningResult, max_cost: float | None, min_score: object) -> None:
    costs, scores = result.frontier_arrays()
    if max_cost is not None:
        msg = (
            f"no thresholds meet max_cost={max_cost!r}: the cheapest policy found costs "
            f"{costs.min():.6g} per sample (the first stage alone costs "
            f"{result.stage_cost[0]:.6g})"
        )
    else:
        msg = (
            f"no thresholds reach min_score={min_score!r} ({result.scoring}); the best "
            f"found is {scores.max():.6g}"
        )
    raise PolicyError(msg)


def tune_thresholds(
    stage_proba: Any,
    y: Any,
    *,
    classes: Any,
    stage_cost: Sequence[float] | None = None,
    measure: ConfidenceMeasure = "max_proba",
    combine: CombineMethod = "vote",
    escalation_weight: float | Sequence[float] = 0.5,
    max_cost: float | None = None,
    min_score: MinScore | None = None,
    scoring: Scoring = None,
    n_candidates: int = 64,
    n_lambdas: int = 12,
    stage_names: Sequence[str] | None = None,
) -> TuningResult:
    """Choose per-stage thresholds from cached validation probabilities.

    With ``max_cost``, maximise the score subject to a mean cost per sample of at most
    ``max_cost``; with ``min_score``, minimise the mean cost subject to a score of at least
    ``min_score`` (``"best_stage"``: no worse than the best stage alone); with neither,
    maximise the score (the cheapest such policy). Ties go to the cheaper policy.

    Args:
        stage_proba: array of shape (n_stages, n_samples, n_classes) from
            [`stage_probabilities`][cascademl.tuning.stage_probabilities] on a validation
            split.
        y: array-like of shape (n_samples,), the validation labels.
        classes: array-like of shape (n_classes,), the labels of the columns.
        stage_cost: the cost of one sample at each stage (FLOPs, seconds, any unit); a
            sample pays for every stage it visits. Defaults to 1 per stage call.
        measure: the confidence measure of the policy.
        combine: the cascade's combiner (``"vote"``, ``"last"`` or ``"mean"``).
        escalation_weight: the cascade's escalation weight(s) for ``"vote"``.
        max_cost: the mean-cost budget per sample.
        min_score: the score target, or ``"best_stage"``.
        scoring: see [`Scoring`][cascademl.tuning.Scoring]; accuracy by default.
        n_candidates: candidate thresholds per stage (at quantiles of its confidence).
        n_lambdas: cost penalties used to trace the frontier.
        stage_names: names for the report; ``stage0``, ``stage1``... by default.

    Returns:
        The chosen policy with the frontier; the result is the same for the same input.

    Raises:
        PolicyError: for invalid inputs, or when no policy meets the constraint (the
            message gives the best that was found).

    Examples:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 2, 200)
        >>> noisy = np.where(rng.random(200) < 0.3, 1 - y, y)  # a weak first stage
        >>> weak = np.eye(2)[noisy] * 0.4 + 0.3
        >>> strong = np.eye(2)[y] * 0.8 + 0.1
        >>> result = tune_thresholds(
        ...     np.stack([weak, strong]), y, classes=[0, 1], stage_cost=[1.0, 10.0],
        ...     combine="last", max_cost=11.0,
        ... )
        >>> result.score, result.mean_cost
        (1.0, 11.0)
        >>> cheap = tune_thresholds(
        ...     np.stack([weak, strong]), y, classes=[0, 1], stage_cost=[1.0, 10.0],
        ...     combine="last", max_cost=5.0,
        ... )
        >>> cheap.mean_cost <= 5.0
        True
    """
    _check_constraints(max_cost, min_score)
    p, y_idx, labels, costs = _validate_inputs(stage_proba, y, classes, stage_cost, n_candidates)
    names = _names(stage_names, p.shape[0])
    result = _tune_one(
        p,
        y_idx,
        labels,
        costs,
        names=names,
        order=tuple(range(p.shape[0])),
        n_stages=p.shape[0],
        measure=measure,
        combine=combine,
        escalation_weight=escalation_weight,
        scoring=scoring,
        max_cost=max_cost,
        min_score=min_score,
        n_candidates=n_candidates,
        n_lambdas=n_lambdas,
    )
    if not result.feasible:
        _infeasible_error(result, max_cost, min_score)
    return result


def score_thresholds(
    stage_proba: Any,
    y: Any,
    thresholds: Sequence[float],
    *,
    classes: Any,
    stage_cost: Sequence[float] | None = None,
    measure: ConfidenceMeasure = "max_proba",
    combine: CombineMethod = "vote",
    escalation_weight: float | Sequence[float] = 0.5,
    scoring: Scoring = None,
) -> FrontierPoint:
    """Score given thresholds on cached probabilities, without calling the models.

    Use it to score tuned thresholds on held-out probabilities (another fold of the
    validation data), or to read a frontier tuned for one score (say ``"neg_log_loss"``)
    in another (accuracy). The routing is the cascade's own: a sample stops at the first
    stage whose confidence reaches that stage's threshold, and its final probabilities
    combine the stages it visited.

    Args:
        stage_proba: array of shape (n_stages, n_samples, n_classes) from
            [`stage_probabilities`][cascademl.tuning.stage_probabilities].
        y: array-like of shape (n_samples,), the true labels.
        thresholds: one threshold per non-final stage (``math.inf``: never stop there),
            as in [`FrontierPoint.thresholds`][cascademl.tuning.FrontierPoint].
        classes: array-like of shape (n_classes,), the labels of the columns.
        stage_cost: the cost of one sample at each stage; defaults to 1 per stage call.
        measure: the confidence measure of the policy.
        combine: the cascade's combiner (``"vote"``, ``"last"`` or ``"mean"``).
        escalation_weight: the cascade's escalation weight(s) for ``"vote"``.
        scoring: see [`Scoring`][cascademl.tuning.Scoring]; accuracy by default.

    Returns:
        The thresholds with their score and mean cost per sample.

    Raises:
        PolicyError: for invalid inputs, or a number of thresholds other than
            ``n_stages - 1``.

    Examples:
        >>> import numpy as np
        >>> weak = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
        >>> strong = np.array([[0.9, 0.1], [0.1, 0.9], [0.1, 0.9]])
        >>> point = score_thresholds(
        ...     np.stack([weak, strong]), [0, 1, 1], [0.75], classes=[0, 1], stage_cost=[1, 4],
        ...     combine="last",
        ... )
        >>> round(point.score, 3), round(point.mean_cost, 3)  # one sample pays 1 + 4
        (1.0, 2.333)
    """
    p, y_idx, labels, costs = _validate_inputs(stage_proba, y, classes, stage_cost, 2)
    values = tuple(float(t) for t in thresholds)
    if len(values) != p.shape[0] - 1 or any(math.isnan(t) for t in values):
        msg = (
            f"thresholds must hold {p.shape[0] - 1} numbers (one per non-final stage), "
            f"got {list(thresholds)!r}"
        )
        raise PolicyError(msg)
    problem = _Problem(
        p,
        y_idx,
        labels,
        costs,
        measure=measure,
        combine=combine,
        escalation_weight=escalation_weight,
        scorer=_resolve_scoring(scoring)[1],
        n_candidates=2,
    )
    score, cost = problem.evaluate(problem.exit_stages(values))
    return FrontierPoint(values, score, cost)


def _names(stage_names: Sequence[str] | None, n_stages: int) -> tuple[str, ...]:
    if stage_names is None:
        return tuple(f"stage{i}" for i in range(n_stages))
    names = tuple(str(n) for n in stage_names)
    if len(names) != n_stages:
        msg = f"stage_names has {len(names)} names but there are {n_stages} stages"
        raise PolicyError(msg)
    return names
