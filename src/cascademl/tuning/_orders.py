"""Stage orders: order heuristics and the search over orders and stage subsets."""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Sequence
from typing import Any, Literal, TypeAlias, cast

import numpy as np

from cascademl._typing import FloatArray, LabelArray
from cascademl.exceptions import PolicyError
from cascademl.policies import RoutingRule
from cascademl.tuning._results import CombineArg, MinScore, OrderSearchResult, Scoring
from cascademl.tuning._scoring import _resolve_scoring, single_stage_scores
from cascademl.tuning._thresholds import (
    _check_constraints,
    _check_rule,
    _combiner_rules,
    _infeasible_error,
    _pick,
    _target,
    _tune_rules,
    _validate_inputs,
)

__all__ = ["OrdersArg", "order_by_accuracy", "order_by_cost", "search_orders_from_proba"]


def order_by_accuracy(
    stage_proba: FloatArray, y: Any, *, classes: Any, sample_weight: Any = None
) -> tuple[int, ...]:
    """Order stages by validation accuracy, least accurate first (the paper's order).

    Ties keep the original order. With ``sample_weight``, by weighted accuracy.

    Examples:
        >>> import numpy as np
        >>> proba = np.array([[[0.1, 0.9]], [[0.9, 0.1]]])
        >>> order_by_accuracy(proba, ["a"], classes=["a", "b"])
        (0, 1)
    """
    scores = single_stage_scores(stage_proba, y, classes=classes, sample_weight=sample_weight)
    return tuple(int(i) for i in np.argsort(scores, kind="stable"))


def order_by_cost(stage_cost: Sequence[float]) -> tuple[int, ...]:
    """Order stages by cost per sample, cheapest first; ties keep the original order.

    Examples:
        >>> order_by_cost([5.0, 1.0, 3.0])
        (1, 2, 0)
    """
    return tuple(int(i) for i in np.argsort(np.asarray(stage_cost, float), kind="stable"))


OrdersArg: TypeAlias = Literal["auto", "all", "subsets"] | Sequence[Sequence[int]]
"""Which stage orders an order search tunes: ``"auto"``, ``"all"``, ``"subsets"`` or a list
of orders, each a sequence of stage indices (all the stages, or a sub-sequence of them)."""

#: ``orders="subsets"`` tunes ``2**n - 1`` candidates; refused above this many stages.
_MAX_SUBSET_STAGES = 12


def _order_problem(order: object, n: int) -> str | None:
    """Why ``order`` is not a valid order of stages ``range(n)``; ``None`` when it is."""
    if isinstance(order, (str, bytes)) or not isinstance(order, Sequence):
        return "not a sequence of stage indices"
    if len(order) == 0:
        return "it is empty"
    seen: set[int] = set()
    for i in order:
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            return f"{i!r} is not an integer"
        if not 0 <= int(i) < n:
            return f"index {int(i)} is out of range"
        if int(i) in seen:
            return f"index {int(i)} is repeated"
        seen.add(int(i))
    return None


def _check_order(order: object, n: int) -> tuple[int, ...]:
    """Validate one order: a non-empty sequence of distinct indices in ``range(n)``."""
    problem = _order_problem(order, n)
    if problem is not None:
        shown = list(order) if isinstance(order, Sequence) and not isinstance(order, str) else order
        msg = (
            f"each order must be a permutation of range({n}) or a non-empty sub-sequence of "
            f"distinct stage indices in range({n}), got {shown!r}: {problem}"
        )
        raise PolicyError(msg)
    return tuple(int(i) for i in cast("Sequence[int]", order))


def _subsets(n: int) -> list[tuple[int, ...]]:
    """Every non-empty order-preserving sub-sequence of ``range(n)``, shortest first."""
    if n > _MAX_SUBSET_STAGES:
        msg = (
            f"orders='subsets' tunes every non-empty sub-sequence of the stages: "
            f"2**{n} - 1 = {2**n - 1} candidates, one tuning run each; it is limited to "
            f"{_MAX_SUBSET_STAGES} stages ({2**_MAX_SUBSET_STAGES - 1} candidates). Pass a "
            "list of orders instead"
        )
        raise PolicyError(msg)
    return [c for k in range(1, n + 1) for c in itertools.combinations(range(n), k)]


def _candidate_orders(  # noqa: PLR0917 - private; every caller passes all of them
    orders: OrdersArg,
    p: FloatArray,
    y: Any,
    labels: LabelArray,
    costs: FloatArray,
    weights: FloatArray | None,
) -> list[tuple[int, ...]]:
    n = p.shape[0]
    if isinstance(orders, str):
        if orders == "all":
            return list(itertools.permutations(range(n)))
        if orders == "auto":
            found = [
                tuple(range(n)),
                order_by_accuracy(p, y, classes=labels, sample_weight=weights),
                order_by_cost(costs.tolist()),
            ]
            return list(dict.fromkeys(found))
        if orders == "subsets":
            return _subsets(n)
        msg = (
            f"orders must be 'auto', 'all', 'subsets' or a list of orders (sequences of "
            f"stage indices), got {orders!r}"
        )
        raise PolicyError(msg)
    if not isinstance(orders, Sequence):
        msg = f"orders must be 'auto', 'all', 'subsets' or a list of orders, got {orders!r}"
        raise PolicyError(msg)
    out = [_check_order(o, n) for o in orders]
    if not out:
        msg = "orders must not be empty"
        raise PolicyError(msg)
    return list(dict.fromkeys(out))


def search_orders_from_proba(
    stage_proba: Any,
    y: Any,
    *,
    classes: Any,
    orders: OrdersArg = "auto",
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
) -> OrderSearchResult:
    """Tune thresholds for several stage orders and report each order's frontier.

    The array-level twin of [`search_orders`][cascademl.tuning.search_orders].

    Reordering reuses the cached probabilities: no model is called again. A candidate that
    leaves stages out is tuned as a cascade of its stages only: a sample pays for the
    stages it visits among them, and a one-stage candidate sends every sample to its stage
    (no thresholds; its score and cost are that stage's).

    Args:
        stage_proba: array of shape (n_stages, n_samples, n_classes), in the original order.
        y: the validation labels.
        classes: the labels of the columns.
        orders: ``"auto"`` (the given order, least-accurate-first as in the paper, and
            cheapest-first), ``"all"`` (every permutation; only for a few stages),
            ``"subsets"`` (stage selection: every non-empty sub-sequence of the stages in
            their given order, shortest first, the full order last) or a list of orders.
            Each listed order is a non-empty sequence of distinct stage indices: a
            permutation of them all, or a sub-sequence that leaves some stages out. Each
            candidate is one tuning run: ``"subsets"`` tunes ``2**n_stages - 1`` of them (31
            for five stages) and is refused above 12 stages.
        stage_cost: the cost per sample of each stage, in the original order.
        rule: the [`RoutingRule`][cascademl.RoutingRule] to tune, for the stages in the
            original order (its escalation weights follow the stages into each order); see
            [`tune_cascade_from_proba`][cascademl.tuning.tune_cascade_from_proba].
        max_cost: see `tune_cascade_from_proba`.
        min_score: see `tune_cascade_from_proba`; ``"best_stage"`` is the same target for
            every order.
        scoring: see `tune_cascade_from_proba`.
        combine: which combiners to try for each order (see
            [`CombineArg`][cascademl.tuning.CombineArg]); each order gets its best. ``None``
            (the default) keeps the rule's combiner (``"vote"``, escalation weight 0.5,
            without a rule): unlike `tune_cascade_from_proba`, an order search does not
            choose the combiner unless asked, because ``"auto"`` multiplies its tuning runs
            by five (155 instead of 31 for ``orders="subsets"`` on five stages).
        escalation_weight_grid: see `tune_cascade_from_proba`; each order gets its best
            weight.
        n_candidates: see `tune_cascade_from_proba`.
        n_lambdas: see `tune_cascade_from_proba`.
        stage_names: names in the original order.
        sample_weight: weights of the validation samples; see `tune_cascade_from_proba`
            (``orders="auto"`` then orders by weighted accuracy).

    Returns:
        One result per order, and the best: the highest score (under ``max_cost`` or
        unconstrained) or the lowest cost (with ``min_score``) among feasible orders. Ties
        go to the cheaper order, then to the earlier one in the list of candidates (with
        ``"subsets"``, the one with fewer stages).

    Raises:
        PolicyError: for invalid inputs (an order with a repeated, out-of-range or
            non-integer index, or an empty one; ``"subsets"`` with more than 12 stages), or
            when no order meets the constraint.

    Examples:
        >>> import numpy as np
        >>> y = np.array([0, 1] * 50)
        >>> wrong = np.eye(2)[1 - y] * 0.9 + 0.05  # cheap, confident and always wrong
        >>> right = np.eye(2)[y] * 0.8 + 0.1
        >>> search = search_orders_from_proba(
        ...     np.stack([wrong, right]), y, classes=[0, 1], stage_cost=[1.0, 4.0],
        ...     orders="subsets", max_cost=4.0,
        ... )
        >>> [r.order for r in search.results]
        [(0,), (1,), (0, 1)]
        >>> search.best.order, search.best.score, search.best.mean_cost
        ((1,), 1.0, 4.0)
    """
    _check_constraints(max_cost, min_score)
    p, y_idx, labels, costs, names, weights = _validate_inputs(
        stage_proba, y, classes, stage_cost, n_candidates, stage_names, sample_weight
    )
    base = _check_rule(rule, p.shape[0])
    score = _resolve_scoring(scoring)
    if weights is not None:
        score.check_weighted()
    target = _target(min_score, p, y_idx, labels, score, weights)
    results = []
    for order in _candidate_orders(orders, p, labels[y_idx], labels, costs, weights):
        sub = RoutingRule(
            base.measure,
            tuple(base.thresholds[i] for i in order),
            base.combine,
            tuple(base.escalation_weights[i] for i in order),
        )
        results.append(
            _tune_rules(
                p[list(order)],
                y_idx,
                labels,
                costs[list(order)],
                _combiner_rules(sub, combine, escalation_weight_grid),
                names=tuple(names[i] for i in order),
                order=order,
                n_stages=p.shape[0],
                score=score,
                max_cost=max_cost,
                min_score=target,
                n_candidates=int(n_candidates),
                n_lambdas=n_lambdas,
                weights=weights,
            )
        )
    best = _pick(results, by_cost=target is not None and max_cost is None)
    if best is None:
        _infeasible_error(results, max_cost, min_score)
        raise AssertionError  # pragma: no cover - _infeasible_error always raises
    return OrderSearchResult(results=tuple(results), best_index=best)
