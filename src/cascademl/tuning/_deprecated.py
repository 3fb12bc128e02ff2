"""The tuner's former array-level names, kept as deprecated aliases.

``tune_thresholds`` is now [`tune_cascade_from_proba`][cascademl.tuning.tune_cascade_from_proba]
and ``search_stage_orders`` is
[`search_orders_from_proba`][cascademl.tuning.search_orders_from_proba]; both take a
[`RoutingRule`][cascademl.RoutingRule] instead of ``measure``, ``combine`` and
``escalation_weight``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from cascademl._typing import CombineMethod, ConfidenceMeasure
from cascademl.policies import ConfidencePolicy, RoutingRule
from cascademl.tuning._orders import OrdersArg, search_orders_from_proba
from cascademl.tuning._results import MinScore, OrderSearchResult, Scoring, TuningResult
from cascademl.tuning._thresholds import tune_cascade_from_proba

__all__ = ["search_stage_orders", "tune_thresholds"]


def _rule(
    stage_proba: Any,
    measure: ConfidenceMeasure,
    combine: CombineMethod,
    escalation_weight: float | Sequence[float],
) -> RoutingRule | None:
    shape = np.shape(stage_proba)
    if len(shape) != 3:  # noqa: PLR2004 - the new function reports the shape
        return None
    return RoutingRule.from_params(
        ConfidencePolicy(measure),
        n_stages=shape[0],
        combine=combine,
        escalation_weight=escalation_weight,
    )


def _warn(old: str, new: str) -> None:
    warnings.warn(
        f"{old} is deprecated; use cascademl.tuning.{new} with rule=RoutingRule.from_params("
        "policy, n_stages=..., combine=..., escalation_weight=...) instead of the measure, "
        "combine and escalation_weight keywords",
        DeprecationWarning,
        stacklevel=3,
    )


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
    """Deprecated: use [`tune_cascade_from_proba`][cascademl.tuning.tune_cascade_from_proba].

    Emits a ``DeprecationWarning``, then tunes with the rule that ``measure``, ``combine``
    and ``escalation_weight`` describe.
    """
    _warn("tune_thresholds", "tune_cascade_from_proba")
    return tune_cascade_from_proba(
        stage_proba,
        y,
        classes=classes,
        rule=_rule(stage_proba, measure, combine, escalation_weight),
        stage_cost=stage_cost,
        max_cost=max_cost,
        min_score=min_score,
        scoring=scoring,
        n_candidates=n_candidates,
        n_lambdas=n_lambdas,
        stage_names=stage_names,
    )


def search_stage_orders(
    stage_proba: Any,
    y: Any,
    *,
    classes: Any,
    orders: OrdersArg = "auto",
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
) -> OrderSearchResult:
    """Deprecated: use [`search_orders_from_proba`][cascademl.tuning.search_orders_from_proba].

    Emits a ``DeprecationWarning``, then searches with the rule that ``measure``,
    ``combine`` and ``escalation_weight`` describe.
    """
    _warn("search_stage_orders", "search_orders_from_proba")
    return search_orders_from_proba(
        stage_proba,
        y,
        classes=classes,
        orders=orders,
        rule=_rule(stage_proba, measure, combine, escalation_weight),
        stage_cost=stage_cost,
        max_cost=max_cost,
        min_score=min_score,
        scoring=scoring,
        n_candidates=n_candidates,
        n_lambdas=n_lambdas,
        stage_names=stage_names,
    )
