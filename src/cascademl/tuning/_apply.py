"""Tune a fitted cascade and apply the result: the cascade-level entry points."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cascademl._probabilities import stage_probabilities
from cascademl._validation import check_fitted, warn_data_ignored
from cascademl.cascade import CascadeClassifier
from cascademl.exceptions import PolicyError
from cascademl.policies import ConfidencePolicy, RoutingRule
from cascademl.stages import stage_cost as _stage_cost
from cascademl.tuning._orders import OrdersArg, _order_problem, search_orders_from_proba
from cascademl.tuning._results import MinScore, OrderSearchResult, Scoring, TuningResult
from cascademl.tuning._thresholds import tune_cascade_from_proba

__all__ = ["apply_tuning", "search_orders", "tune_cascade"]


def _cascade_problem(
    cascade: CascadeClassifier, X_val: Any, y_val: Any, stage_cost: Sequence[float] | None
) -> dict[str, Any]:
    """The array-level tuner's inputs for a fitted cascade (each stage runs once on X_val)."""
    check_fitted(cascade, before="tuning")
    rule = cascade.routing_rule_
    return {
        "stage_proba": stage_probabilities(cascade, X_val),
        "y": y_val,
        "classes": cascade.classes_,
        "rule": rule,
        "stage_cost": [float(c) for c in stage_cost]
        if stage_cost is not None
        else [_stage_cost(s) for s in cascade.stages_],
        "stage_names": tuple(cascade.named_stages_.keys()),
    }


def tune_cascade(
    cascade: CascadeClassifier,
    X_val: Any,
    y_val: Any,
    *,
    max_cost: float | None = None,
    min_score: MinScore | None = None,
    scoring: Scoring = None,
    stage_cost: Sequence[float] | None = None,
    escalation_weight_grid: Sequence[float] | None = None,
    n_candidates: int = 64,
    n_lambdas: int = 12,
    sample_weight: Any = None,
) -> TuningResult:
    """Tune a fitted cascade's thresholds on a validation split (one model call per stage).

    The measure, combiner and escalation weights are the cascade's (its routing rule);
    the thresholds are tuned, and with ``escalation_weight_grid`` the escalation weight
    too. Apply the result with [`apply_tuning`][cascademl.tuning.apply_tuning].

    Args:
        cascade: a fitted cascade.
        X_val: validation inputs (never the test split).
        y_val: validation labels.
        max_cost: see [`tune_cascade_from_proba`][cascademl.tuning.tune_cascade_from_proba].
        min_score: see `tune_cascade_from_proba`.
        scoring: see `tune_cascade_from_proba`.
        stage_cost: cost per sample of each stage; defaults to each stage's
            ``cost_per_sample`` (1 per stage call when it has none).
        escalation_weight_grid: see `tune_cascade_from_proba`.
        n_candidates: see `tune_cascade_from_proba`.
        n_lambdas: see `tune_cascade_from_proba`.
        sample_weight: weights of the validation samples; see `tune_cascade_from_proba`.

    Returns:
        The tuning result.

    Raises:
        NotFittedError: if the cascade is not fitted.
        PolicyError: see `tune_cascade_from_proba`.
    """
    return tune_cascade_from_proba(
        **_cascade_problem(cascade, X_val, y_val, stage_cost),
        max_cost=max_cost,
        min_score=min_score,
        scoring=scoring,
        escalation_weight_grid=escalation_weight_grid,
        n_candidates=n_candidates,
        n_lambdas=n_lambdas,
        sample_weight=sample_weight,
    )


def search_orders(
    cascade: CascadeClassifier,
    X_val: Any,
    y_val: Any,
    *,
    orders: OrdersArg = "auto",
    max_cost: float | None = None,
    min_score: MinScore | None = None,
    scoring: Scoring = None,
    stage_cost: Sequence[float] | None = None,
    escalation_weight_grid: Sequence[float] | None = None,
    n_candidates: int = 64,
    n_lambdas: int = 12,
    sample_weight: Any = None,
) -> OrderSearchResult:
    """Like [`tune_cascade`][cascademl.tuning.tune_cascade], over several stage orders.

    See [`search_orders_from_proba`][cascademl.tuning.search_orders_from_proba] for
    ``orders``: ``orders="subsets"`` also tries every sub-sequence of the stages, so that
    [`apply_tuning`][cascademl.tuning.apply_tuning] can drop the stages that do not pay.
    """
    return search_orders_from_proba(
        **_cascade_problem(cascade, X_val, y_val, stage_cost),
        orders=orders,
        max_cost=max_cost,
        min_score=min_score,
        scoring=scoring,
        escalation_weight_grid=escalation_weight_grid,
        n_candidates=n_candidates,
        n_lambdas=n_lambdas,
        sample_weight=sample_weight,
    )


def _rule_params(rule: RoutingRule, *, as_list: bool = False) -> dict[str, Any]:
    """The cascade parameters ``policy``, ``combine`` and ``escalation_weight`` of a rule.

    The weights are one number when they are all equal, unless ``as_list``.
    """
    weights = rule.escalation_weights
    return {
        "policy": ConfidencePolicy(rule.measure, rule.thresholds[:-1] or 0.0),
        "combine": rule.combine,
        "escalation_weight": list(weights) if as_list or len(set(weights)) > 1 else weights[0],
    }


def apply_tuning(
    cascade: CascadeClassifier,
    result: TuningResult | OrderSearchResult,
    X: Any = None,
    y: Any = None,
) -> CascadeClassifier:
    """Return a new fitted cascade with the tuned stage order and routing rule.

    The new cascade holds the stages of the tuned order only, in that order, under their
    names: a result for a sub-sequence of the stages (from ``orders="subsets"``) drops the
    others. Its policy, combiner and escalation weights are those of ``result.rule``
    (the cascade's own unless the escalation weight was tuned). The trained stages are
    reused, never retrained, and no data is needed: the new cascade is built with
    [`CascadeClassifier.from_fitted`][cascademl.CascadeClassifier.from_fitted] and keeps
    the classes, ``n_features_in_`` and ``feature_names_in_`` of ``cascade``.

    Args:
        cascade: the fitted cascade that was tuned.
        result: a tuning result (an order search contributes its best order).
        X: deprecated and ignored (it was once used to refit on the kept stages); passing
            it emits a ``DeprecationWarning``.
        y: deprecated and ignored, as ``X``.

    Returns:
        A fitted cascade; ``cascade`` is left unchanged.

    Raises:
        NotFittedError: if the cascade is not fitted.
        PolicyError: if the result's order is empty or holds an index that is repeated or
            not one of the cascade's stages.
    """
    warn_data_ignored("apply_tuning", X, y)
    tuned = result.best if isinstance(result, OrderSearchResult) else result
    check_fitted(cascade, before="apply_tuning")
    names = list(cascade.named_stages_.keys())
    problem = _order_problem(tuned.order, len(names))
    if problem is None and tuned.n_stages not in (None, len(names)):
        problem = f"it was tuned on {tuned.n_stages} stages"
    if problem is not None:
        msg = (
            f"the result's order {tuned.order!r} does not fit this cascade of {len(names)} "
            f"stages (indices in range({len(names)}), each at most once): {problem}"
        )
        raise PolicyError(msg)
    stages = [(names[i], cascade.stages_[i]) for i in tuned.order]
    return _adopt_rule(cascade, stages, tuned.rule)


def _adopt_rule(
    cascade: CascadeClassifier,
    stages: Sequence[tuple[str, Any]],
    rule: RoutingRule,
    **overrides: Any,
) -> CascadeClassifier:
    """A new fitted cascade of ``stages`` (already fitted) routing with ``rule``.

    The other parameters are ``cascade``'s, updated with ``overrides``; the classes,
    ``n_features_in_`` and ``feature_names_in_`` are ``cascade``'s too.
    """
    params = cascade.get_params(deep=False)
    del params["stages"]
    as_list = isinstance(cascade.escalation_weight, Sequence)
    params.update(_rule_params(rule, as_list=as_list))
    params.update(overrides)
    adopted = type(cascade).from_fitted(stages, classes=cascade.classes_, **params)
    for name in ("n_features_in_", "feature_names_in_"):
        if hasattr(adopted, name):
            delattr(adopted, name)
        if hasattr(cascade, name):
            setattr(adopted, name, getattr(cascade, name))
    return adopted
