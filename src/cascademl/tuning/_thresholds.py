"""Tune or score thresholds on cached probabilities: the array-level entry points."""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from cascademl._labels import label_indices
from cascademl._routing import _ROW_SUM_ATOL
from cascademl._typing import (
    CombineMethod,
    ConfidenceMeasure,
    FloatArray,
    IntArray,
    LabelArray,
)
from cascademl.exceptions import PolicyError
from cascademl.policies import ConfidencePolicy, RoutingRule
from cascademl.tuning._results import CombineArg, FrontierPoint, MinScore, Scoring, TuningResult
from cascademl.tuning._scoring import (
    _check_sample_weight,
    _resolve_scoring,
    _Score,
    single_stage_scores,
)
from cascademl.tuning._search import _Problem, _tune_one
from cascademl.voting import COMBINE_METHODS, escalation_weights

__all__ = ["score_thresholds", "tune_cascade_from_proba"]

#: The combiners ``combine="auto"`` tries, in the order that breaks ties.
_AUTO_COMBINERS: tuple[CombineMethod, ...] = ("last", "vote", "mean")
#: The vote's escalation weights ``combine="auto"`` tries without ``escalation_weight_grid``
#: (0 and 1 are ``"last"`` and ``"mean"``, tried anyway).
_AUTO_WEIGHTS: tuple[float, ...] = (0.25, 0.5, 0.75)


def _validate_inputs(  # noqa: PLR0917 - private; every caller passes all of them
    stage_proba: Any,
    y: Any,
    classes: Any,
    stage_cost: Sequence[float] | None,
    n_candidates: int,
    stage_names: Sequence[str] | None = None,
    sample_weight: Any = None,
) -> tuple[FloatArray, IntArray, LabelArray, FloatArray, tuple[str, ...], FloatArray | None]:
    p = np.asarray(stage_proba, dtype=np.float64)
    if p.ndim != 3:  # noqa: PLR2004 - (n_stages, n_samples, n_classes)
        msg = f"stage_proba must have shape (n_stages, n_samples, n_classes), got {p.shape}"
        raise PolicyError(msg)
    names = _names(stage_names, p.shape[0])
    labels = np.asarray(classes)
    if labels.shape != (p.shape[2],):
        msg = f"classes must hold {p.shape[2]} labels (one per column), got shape {labels.shape}"
        raise PolicyError(msg)
    y_idx = label_indices(y, labels)
    if y_idx.size != p.shape[1]:
        msg = f"y has {y_idx.size} labels but stage_proba has {p.shape[1]} samples"
        raise PolicyError(msg)
    if p.shape[1] == 0:
        msg = "stage_proba and y hold no samples; tuning needs at least one validation sample"
        raise PolicyError(msg)
    _check_rows(p, names)
    costs = np.ones(p.shape[0]) if stage_cost is None else np.asarray(stage_cost, float)
    if costs.shape != (p.shape[0],) or not np.all(np.isfinite(costs)) or np.any(costs < 0):
        msg = (
            f"stage_cost must hold {p.shape[0]} finite non-negative numbers (one per "
            f"stage), got {stage_cost!r}"
        )
        raise PolicyError(msg)
    if (
        isinstance(n_candidates, bool)
        or not isinstance(n_candidates, numbers.Integral)
        or n_candidates < 2  # noqa: PLR2004
    ):
        msg = f"n_candidates must be an integer >= 2, got {n_candidates!r}"
        raise PolicyError(msg)
    return p, y_idx, labels, costs, names, _check_sample_weight(sample_weight, p.shape[1])


def _check_rows(p: FloatArray, names: tuple[str, ...]) -> None:
    """Every row of every stage must be a probability vector; the error names the first bad one."""
    for s, proba in enumerate(p):
        finite = np.isfinite(proba).all(axis=1)
        sums = proba.sum(axis=1)
        bad = ~finite | (proba < 0).any(axis=1) | (np.abs(sums - 1.0) > _ROW_SUM_ATOL)
        if np.any(bad):
            row = int(np.flatnonzero(bad)[0])
            what = (
                "NaN or infinite values"
                if not finite[row]
                else f"values summing to {sums[row]:.6g} (min {proba[row].min():.6g})"
            )
            msg = (
                f"stage_proba[{s}] (stage {names[s]!r}) row {row} holds {what}; each row must "
                f"be probabilities (>= 0, summing to 1 within {_ROW_SUM_ATOL}): compute them "
                "with stage_probabilities"
            )
            raise PolicyError(msg)


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


def _target(  # noqa: PLR0917 - private; every caller passes all of them
    min_score: MinScore | None,
    p: FloatArray,
    y_idx: IntArray,
    labels: LabelArray,
    score: _Score,
    weights: FloatArray | None,
) -> float | None:
    """The score target; ``"best_stage"`` is the best single stage's score on ``p``."""
    if min_score == "best_stage":
        scores = single_stage_scores(
            p, labels[y_idx], classes=labels, scoring=score, sample_weight=weights
        )
        return float(scores.max())
    return None if min_score is None else float(min_score)


def _check_rule(rule: RoutingRule | None, n_stages: int) -> RoutingRule:
    """The rule to tune; ``None`` is max-probability confidence with the default vote."""
    if rule is None:
        return RoutingRule.from_params(None, n_stages=n_stages)
    if not isinstance(rule, RoutingRule):
        msg = f"rule must be a RoutingRule or None, got {rule!r}"
        raise PolicyError(msg)
    if rule.n_stages != n_stages:
        msg = f"rule is for {rule.n_stages} stages but stage_proba has {n_stages}"
        raise PolicyError(msg)
    return rule


def _weight_rules(rule: RoutingRule, grid: Sequence[float] | None) -> list[RoutingRule]:
    """One rule per candidate escalation weight (the same weight for every stage)."""
    if grid is None:
        return [rule]
    if rule.combine != "vote":
        msg = (
            f"escalation_weight_grid needs the rule's combine='vote' (a weight of 0 is the "
            f"exiting stage alone), got combine={rule.combine!r}"
        )
        raise PolicyError(msg)
    weights = _check_weight_grid(grid)
    return [dataclasses.replace(rule, escalation_weights=(w,) * rule.n_stages) for w in weights]


def _check_weight_grid(grid: Sequence[float]) -> list[float]:
    """The distinct weights of ``escalation_weight_grid``, in their order."""
    if isinstance(grid, (str, bytes)) or not isinstance(grid, Sequence) or len(grid) == 0:
        msg = f"escalation_weight_grid must be a non-empty sequence of weights, got {grid!r}"
        raise PolicyError(msg)
    weights = list(dict.fromkeys(grid))
    return [float(w) for w in escalation_weights(weights, len(weights))]


def _check_combine(combine: object) -> tuple[CombineMethod, ...]:
    """The combiner names that ``combine`` (``"auto"``, a name or a sequence of names) tries."""
    if isinstance(combine, str) and combine == "auto":
        return _AUTO_COMBINERS
    if isinstance(combine, str) and combine in COMBINE_METHODS:
        return (combine,)
    if (
        not isinstance(combine, (str, bytes))
        and isinstance(combine, Sequence)
        and len(combine) > 0
        and all(isinstance(c, str) and c in COMBINE_METHODS for c in combine)
    ):
        return tuple(dict.fromkeys(cast("Sequence[CombineMethod]", combine)))
    msg = (
        f"combine must be 'auto', one of {COMBINE_METHODS}, a non-empty sequence of them or "
        f"None (the rule's own), got {combine!r}"
    )
    raise PolicyError(msg)


def _combiner_rules(
    rule: RoutingRule, combine: CombineArg | None, grid: Sequence[float] | None
) -> list[RoutingRule]:
    """The candidate rules: ``rule`` with each combiner of ``combine`` (and vote weight).

    ``combine=None`` keeps the rule's combiner (and its weights, or each weight of
    ``grid``). Otherwise the vote gets each weight of ``grid``, or with ``"auto"`` and no
    grid each weight of ``_AUTO_WEIGHTS``, or else the rule's weights. A vote weight
    of 0 is the same rule as ``"last"`` and a weight of 1 the same as ``"mean"``: when that
    combiner is also a candidate, the duplicate is not searched twice.
    """
    if combine is None:
        return _weight_rules(rule, grid)
    names = _check_combine(combine)
    if grid is not None and "vote" not in names:
        msg = (
            f"escalation_weight_grid needs 'vote' among the combiners (the weights are the "
            f"vote's), got combine={combine!r}"
        )
        raise PolicyError(msg)
    vote = dataclasses.replace(rule, combine="vote")
    if grid is None and names is _AUTO_COMBINERS:
        grid = _AUTO_WEIGHTS
    rules: list[RoutingRule] = []
    for name in names:
        if name != "vote":
            rules.append(dataclasses.replace(rule, combine=name))
            continue
        for candidate in _weight_rules(vote, grid):
            (weight, *_) = candidate.escalation_weights
            same = {0.0: "last", 1.0: "mean"}.get(weight) if grid is not None else None
            if same not in names:
                rules.append(candidate)
    return rules


def _default_combine(combine: CombineArg | None, rule: RoutingRule | None) -> CombineArg | None:
    """``combine=None`` is the given rule's combiner, or ``"auto"`` when no rule is given."""
    return "auto" if combine is None and rule is None else combine


def _pick(results: Sequence[TuningResult], *, by_cost: bool) -> int | None:
    """Index of the best feasible result; ``None`` when none is feasible.

    The lowest cost (``by_cost``) or the highest score; ties go to the cheaper result, then
    to the earlier one.
    """
    feasible = [i for i, r in enumerate(results) if r.feasible]
    if not feasible:
        return None
    if by_cost:
        return min(feasible, key=lambda i: (results[i].mean_cost, -results[i].score, i))
    return min(feasible, key=lambda i: (-results[i].score, results[i].mean_cost, i))


def _infeasible_error(
    results: Sequence[TuningResult], max_cost: float | None, min_score: object
) -> None:
    """Raise for the candidate that came closest: the cheapest, or the best scoring."""
    if max_cost is not None:
        result = min(results, key=lambda r: r.frontier[0].mean_cost)
        costs, _ = result.frontier_arrays()
        msg = (
            f"no thresholds meet max_cost={max_cost!r}: the cheapest policy found costs "
            f"{costs.min():.6g} per sample (the first stage alone costs "
            f"{result.stage_cost[0]:.6g})"
        )
    else:
        result = max(results, key=lambda r: r.frontier[-1].score)
        _, scores = result.frontier_arrays()
        msg = (
            f"no thresholds reach min_score={min_score!r} ({result.scoring}); the best "
            f"found is {scores.max():.6g}"
        )
    raise PolicyError(msg)


def _tune_rules(
    p: FloatArray,
    y_idx: IntArray,
    labels: LabelArray,
    costs: FloatArray,
    rules: Sequence[RoutingRule],
    **kwargs: Any,
) -> TuningResult:
    """Tune each rule's thresholds and keep the best (an infeasible one when all are)."""
    results = [_tune_one(p, y_idx, labels, costs, rule=r, **kwargs) for r in rules]
    best = _pick(results, by_cost=kwargs["max_cost"] is None and kwargs["min_score"] is not None)
    if best is not None:
        return results[best]
    if kwargs["max_cost"] is not None:
        return min(results, key=lambda r: r.frontier[0].mean_cost)
    return max(results, key=lambda r: r.frontier[-1].score)


def tune_cascade_from_proba(
    stage_proba: Any,
    y: Any,
    *,
    classes: Any,
    rule: RoutingRule | None = None,
    stage_cost: Sequence[float] | None = None,
    max_cost: float | None = None,
    min_score: MinScore | None = None,
    scoring: Scoring = None,
    combine: CombineArg | None = None,
    escalation_weight_grid: Sequence[float] | None = None,
    n_candidates: int = 64,
    n_lambdas: int = 12,
    stage_names: Sequence[str] | None = None,
    sample_weight: Any = None,
) -> TuningResult:
    """Choose per-stage thresholds from cached validation probabilities.

    The array-level twin of [`tune_cascade`][cascademl.tuning.tune_cascade]: it takes the
    stages' probabilities instead of a cascade and validation inputs. With ``max_cost``,
    maximise the score subject to a mean cost per sample of at most ``max_cost``; with
    ``min_score``, minimise the mean cost subject to a score of at least ``min_score``
    (``"best_stage"``: no worse than the best stage alone); with neither, maximise the score
    (the cheapest such policy). Ties go to the cheaper policy.

    Without a ``rule``, the combiner and the vote's escalation weight are chosen too
    (``combine="auto"``): the thresholds are tuned for ``"last"``, for ``"vote"`` at each
    escalation weight and for ``"mean"``, and the best under the same objective, on the same
    data, is kept in ``result.rule``. A given ``rule`` keeps its combiner and weights unless
    ``combine`` says otherwise.

    Args:
        stage_proba: array of shape (n_stages, n_samples, n_classes) from
            [`stage_probabilities`][cascademl.tuning.stage_probabilities] on a validation
            split (or out-of-fold probabilities); each row sums to one.
        y: array-like of shape (n_samples,), the validation labels.
        classes: array-like of shape (n_classes,), the labels of the columns.
        rule: the [`RoutingRule`][cascademl.RoutingRule] whose thresholds are tuned: its
            measure is kept, its thresholds ignored, and its combiner and escalation weights
            kept when ``combine`` is ``None``. Defaults to max-probability confidence with
            the combiner chosen (``combine="auto"``).
        stage_cost: the cost of one sample at each stage (FLOPs, seconds, any unit); a
            sample pays for every stage it visits. Defaults to 1 per stage call.
        max_cost: the mean-cost budget per sample.
        min_score: the score target, or ``"best_stage"``.
        scoring: see [`Scoring`][cascademl.tuning.Scoring]; accuracy by default.
        combine: which combiners to try (see [`CombineArg`][cascademl.tuning.CombineArg]):
            ``"auto"`` (``"last"``, ``"vote"`` and ``"mean"``), one name (that combiner,
            with the rule's escalation weights) or a sequence of names. ``None`` (the
            default): the rule's combiner, or ``"auto"`` without a rule.
            ``combine="vote"`` without a rule is the cascade's default rule (escalation
            weight 0.5), as tuned before ``"auto"`` existed.
        escalation_weight_grid: candidate escalation weights of ``"vote"`` (one shared by
            all stages), tuned with the thresholds; the best is kept in ``result.rule``.
            ``0`` is the exiting stage alone (as ``"last"``) and ``1`` every visited stage
            alike (as ``"mean"``). Needs ``"vote"`` among the combiners tried. ``None``:
            0.25, 0.5 and 0.75 with ``combine="auto"``, the rule's weights otherwise.
        n_candidates: candidate thresholds per stage (at quantiles of its confidence).
        n_lambdas: cost penalties used to trace the frontier.
        stage_names: names for the report; ``stage0``, ``stage1``... by default.
        sample_weight: array-like of shape (n_samples,), non-negative weights of the
            validation samples (``None``: equal weights). Both the score and the mean cost
            are weighted means, as if each sample were repeated in proportion to its weight
            (scikit-learn's meaning of ``sample_weight``); a custom metric or scorer then
            receives ``sample_weight=``.

    Returns:
        The chosen rule and policy with the frontier; the same for the same input.

    Raises:
        PolicyError: for invalid inputs (no samples, rows that are not probabilities, a rule
            for another number of stages...), or when no policy meets the constraint (the
            message gives the best that was found).

    Examples:
        >>> import numpy as np
        >>> from cascademl import RoutingRule
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 2, 200)
        >>> noisy = np.where(rng.random(200) < 0.3, 1 - y, y)  # a weak first stage
        >>> weak = np.eye(2)[noisy] * 0.4 + 0.3
        >>> strong = np.eye(2)[y] * 0.8 + 0.1
        >>> last = RoutingRule.from_params(None, n_stages=2, combine="last")
        >>> result = tune_cascade_from_proba(
        ...     np.stack([weak, strong]), y, classes=[0, 1], rule=last,
        ...     stage_cost=[1.0, 10.0], max_cost=11.0,
        ... )
        >>> result.score, result.mean_cost
        (1.0, 11.0)
        >>> cheap = tune_cascade_from_proba(
        ...     np.stack([weak, strong]), y, classes=[0, 1], rule=last,
        ...     stage_cost=[1.0, 10.0], max_cost=5.0,
        ... )
        >>> cheap.mean_cost <= 5.0
        True

        Without a rule the combiner is chosen too (every combiner reaches 1.0 here, and
        ties go to the first candidate, "last"):

        >>> auto = tune_cascade_from_proba(
        ...     np.stack([weak, strong]), y, classes=[0, 1], stage_cost=[1.0, 10.0]
        ... )
        >>> auto.rule.combine, auto.score
        ('last', 1.0)
    """
    _check_constraints(max_cost, min_score)
    p, y_idx, labels, costs, names, weights = _validate_inputs(
        stage_proba, y, classes, stage_cost, n_candidates, stage_names, sample_weight
    )
    base = _check_rule(rule, p.shape[0])
    candidates = _combiner_rules(base, _default_combine(combine, rule), escalation_weight_grid)
    score = _resolve_scoring(scoring)
    if weights is not None:
        score.check_weighted()
    target = _target(min_score, p, y_idx, labels, score, weights)
    result = _tune_rules(
        p,
        y_idx,
        labels,
        costs,
        candidates,
        names=names,
        order=tuple(range(p.shape[0])),
        n_stages=p.shape[0],
        score=score,
        max_cost=max_cost,
        min_score=target,
        n_candidates=int(n_candidates),
        n_lambdas=n_lambdas,
        weights=weights,
    )
    if not result.feasible:
        _infeasible_error([result], max_cost, min_score)
    return result


def score_thresholds(
    stage_proba: Any,
    y: Any,
    thresholds: Sequence[float] | RoutingRule,
    *,
    classes: Any,
    rule: RoutingRule | None = None,
    stage_cost: Sequence[float] | None = None,
    scoring: Scoring = None,
    measure: ConfidenceMeasure | None = None,
    combine: CombineMethod | None = None,
    escalation_weight: float | Sequence[float] | None = None,
    sample_weight: Any = None,
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
            as in [`FrontierPoint.thresholds`][cascademl.tuning.FrontierPoint]; or a whole
            [`RoutingRule`][cascademl.RoutingRule] (such as a tuning result's ``rule``).
        classes: array-like of shape (n_classes,), the labels of the columns.
        rule: with threshold numbers, the rule (measure, combiner, escalation weights) to
            route with; its thresholds are replaced. Defaults to max-probability confidence
            and ``"vote"`` with escalation weight 0.5, which need not be the combiner a
            tuner chose: to score a tuning result, pass its ``rule`` as ``thresholds``.
        stage_cost: the cost of one sample at each stage; defaults to 1 per stage call.
        scoring: see [`Scoring`][cascademl.tuning.Scoring]; accuracy by default.
        measure: deprecated, use ``rule``.
        combine: deprecated, use ``rule``.
        escalation_weight: deprecated, use ``rule``.
        sample_weight: array-like of shape (n_samples,), weights of the samples in the
            score and the mean cost; see
            [`tune_cascade_from_proba`][cascademl.tuning.tune_cascade_from_proba].

    Returns:
        The thresholds (one per non-final stage) with their score and mean cost per sample.

    Raises:
        PolicyError: for invalid inputs, or a number of thresholds other than
            ``n_stages - 1``.

    Examples:
        >>> import numpy as np
        >>> from cascademl import RoutingRule
        >>> weak = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
        >>> strong = np.array([[0.9, 0.1], [0.1, 0.9], [0.1, 0.9]])
        >>> point = score_thresholds(
        ...     np.stack([weak, strong]), [0, 1, 1], [0.75], classes=[0, 1], stage_cost=[1, 4],
        ...     rule=RoutingRule.from_params(None, n_stages=2, combine="last"),
        ... )
        >>> round(point.score, 3), round(point.mean_cost, 3)  # one sample pays 1 + 4
        (1.0, 2.333)
    """
    p, y_idx, labels, costs, _, weights = _validate_inputs(
        stage_proba, y, classes, stage_cost, 2, None, sample_weight
    )
    if (measure, combine, escalation_weight) != (None, None, None):
        if rule is not None:
            msg = "give rule= or the deprecated measure/combine/escalation_weight, not both"
            raise PolicyError(msg)
        rule = _legacy_rule(
            "score_thresholds", p.shape[0], measure or "max_proba", combine or "vote",
            0.5 if escalation_weight is None else escalation_weight, stacklevel=3,
        )  # fmt: skip
    if isinstance(thresholds, RoutingRule):
        if rule is not None:
            msg = "give the thresholds as a RoutingRule or as numbers with rule=, not both"
            raise PolicyError(msg)
        routing = _check_rule(thresholds, p.shape[0])
        values = routing.thresholds[:-1]
    else:
        routing = _check_rule(rule, p.shape[0])
        values = tuple(float(t) for t in thresholds)
        if len(values) != p.shape[0] - 1 or any(math.isnan(t) for t in values):
            msg = (
                f"thresholds must hold {p.shape[0] - 1} numbers (one per non-final stage), "
                f"got {list(thresholds)!r}"
            )
            raise PolicyError(msg)
    resolved = _resolve_scoring(scoring)
    if weights is not None:
        resolved.check_weighted()
    problem = _Problem(
        p, y_idx, labels, costs, rule=routing, score=resolved, n_candidates=2, weights=weights
    )
    score, cost = problem.evaluate(problem.exit_stages(values))
    return FrontierPoint(values, score, cost)


def _legacy_rule(
    where: str,
    n_stages: int,
    measure: ConfidenceMeasure,
    combine: CombineMethod,
    escalation_weight: float | Sequence[float],
    *,
    stacklevel: int,
) -> RoutingRule:
    """Warn that ``where`` got loose routing keywords, and build the rule they describe."""
    warnings.warn(
        f"{where}: the measure, combine and escalation_weight keywords are deprecated; pass "
        f"rule=RoutingRule.from_params(ConfidencePolicy({measure!r}), n_stages={n_stages}, "
        f"combine={combine!r}, escalation_weight=...) instead",
        DeprecationWarning,
        stacklevel=stacklevel,
    )
    return RoutingRule.from_params(
        ConfidencePolicy(measure),
        n_stages=n_stages,
        combine=combine,
        escalation_weight=escalation_weight,
    )


def _names(stage_names: Sequence[str] | None, n_stages: int) -> tuple[str, ...]:
    if stage_names is None:
        return tuple(f"stage{i}" for i in range(n_stages))
    names = tuple(str(n) for n in stage_names)
    if len(names) != n_stages:
        msg = f"stage_names has {len(names)} names but there are {n_stages} stages"
        raise PolicyError(msg)
    return names
