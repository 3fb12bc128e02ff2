"""Result types of the tuner: frontier points, tuning and order-search results."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

import numpy as np

from cascademl._typing import CombineMethod, FloatArray
from cascademl.policies import ConfidencePolicy, RoutingRule

__all__ = [
    "CombineArg",
    "FrontierPoint",
    "MinScore",
    "OrderSearchResult",
    "Scoring",
    "TuningResult",
]

Scoring: TypeAlias = str | Callable[..., float] | None
"""What to maximise (higher is better):

* ``None`` or ``"accuracy"``;
* a scikit-learn scorer name (``"f1_macro"``, ``"balanced_accuracy"``, ``"neg_log_loss"``...,
  see ``sklearn.metrics.get_scorer_names()``);
* a metric ``f(y_true, y_pred)`` on labels (a callable with two required positional
  parameters, such as ``sklearn.metrics.f1_score`` or a ``functools.partial`` of it);
* a scorer ``scorer(estimator, X, y)``, such as one built by ``sklearn.metrics.make_scorer``
  (called on a stand-in estimator whose ``predict``/``predict_proba`` return the routed
  cascade's outputs).

Accuracy and ``"neg_log_loss"`` are swept with cumulative sums. Scorer names that read only
labels, and metrics that accept ``sample_weight``, are evaluated on weighted counts of
(true, predicted) pairs, so their cost does not grow with the number of samples. Other
callables are called once per configuration."""

MinScore: TypeAlias = float | Literal["best_stage"]
"""A score target; ``"best_stage"``: at least the score of the best stage used alone."""

CombineArg: TypeAlias = Literal["auto", "vote", "last", "mean"] | Sequence[CombineMethod]
"""Which combiners a tuner tries (see [`combine_votes`][cascademl.voting.combine_votes]):

* ``"auto"``: ``"last"`` (the exiting stage decides), ``"vote"`` (the paper's vote, with
  each escalation weight of ``escalation_weight_grid``, by default 0.25, 0.5 and 0.75) and
  ``"mean"`` (every visited stage votes alike); the best under the tuning objective is kept;
* one name: that combiner only;
* a sequence of names: the best of those.

Each candidate combiner (and weight) is one threshold search, so ``"auto"`` costs five
searches where one name costs one. Between candidates of equal score the cheaper wins, then
the earlier: ``"last"``, then ``"vote"`` by increasing weight, then ``"mean"`` with
``"auto"``."""

_COST_RTOL = 1e-9
_MAX_SWEEPS = 20
#: Up to this many sweeps, the candidate grid is searched exhaustively.
_EXHAUSTIVE_SWEEPS = 256


# --------------------------------------------------------------------------- results
@dataclass(frozen=True, slots=True)
class FrontierPoint:
    """One configuration on the accuracy-cost frontier.

    Attributes:
        thresholds: one threshold per non-final stage (``math.inf``: never stop there).
        score: the validation score (accuracy unless another scorer was given).
        mean_cost: the mean cost per validation sample.
    """

    thresholds: tuple[float, ...]
    score: float
    mean_cost: float


@dataclass(frozen=True, slots=True, eq=False)
class TuningResult:
    """Outcome of [`tune_cascade_from_proba`][cascademl.tuning.tune_cascade_from_proba].

    Attributes:
        rule: the tuned [`RoutingRule`][cascademl.RoutingRule] (measure, thresholds,
            combiner and escalation weights, one per stage in the order ``order``); with
            ``combine="auto"`` or several combiners, ``rule.combine`` and
            ``rule.escalation_weights`` are the ones chosen.
        policy: the chosen [`ConfidencePolicy`][cascademl.ConfidencePolicy] (one threshold
            per non-final stage, in the order ``order``).
        score: the chosen point's validation score.
        mean_cost: the chosen point's mean cost per validation sample.
        frontier: the non-dominated configurations found, by increasing cost (and strictly
            increasing score).
        chosen_index: position of the chosen point in ``frontier``.
        feasible: whether the chosen point meets the constraint. The tuner raises
            when it cannot; order searches keep infeasible orders for their frontier.
        stage_names: the stages' names, in the order tuned.
        order: the tuned order as indices into the original stage order. An order search
            may tune a sub-sequence of the stages (``orders="subsets"``), so it can be
            shorter than the original number of stages; the stages it leaves out are
            dropped by [`apply_tuning`][cascademl.tuning.apply_tuning].
        stage_cost: the cost of one sample at each stage, in the order tuned.
        stage_scores: the score of each stage used alone, in the order tuned.
        scoring: the name of the score.
        objective: ``"max_score"``, ``"max_score_under_budget"`` or
            ``"min_cost_for_score"``.
        n_evaluations: the number of configurations scored.
        n_stages: how many stages ``order`` indexes into (the original stages, a
            sub-sequence of which may have been tuned); ``None`` when not recorded.
    """

    policy: ConfidencePolicy
    score: float
    mean_cost: float
    frontier: tuple[FrontierPoint, ...]
    chosen_index: int
    feasible: bool
    stage_names: tuple[str, ...]
    order: tuple[int, ...]
    stage_cost: tuple[float, ...]
    stage_scores: tuple[float, ...]
    scoring: str
    objective: str
    n_evaluations: int
    n_stages: int | None = None
    rule: RoutingRule = field(kw_only=True)

    @property
    def chosen(self) -> FrontierPoint:
        """The chosen frontier point."""
        return self.frontier[self.chosen_index]

    @property
    def thresholds(self) -> tuple[float, ...]:
        """The chosen thresholds, one per non-final stage."""
        return self.chosen.thresholds

    def frontier_arrays(self) -> tuple[FloatArray, FloatArray]:
        """The frontier as two arrays ``(mean_costs, scores)``, by increasing cost."""
        costs = np.array([p.mean_cost for p in self.frontier], dtype=np.float64)
        scores = np.array([p.score for p in self.frontier], dtype=np.float64)
        return costs, scores


@dataclass(frozen=True, slots=True, eq=False)
class OrderSearchResult:
    """Outcome of an order search: one [`TuningResult`][cascademl.tuning.TuningResult] per order.

    An order is a tuple of original stage indices: a permutation of all the stages, or a
    sub-sequence of them when the search was asked for ``orders="subsets"`` or given such
    orders, in which case the best order may leave stages out.

    Attributes:
        results: one result per stage order tried, each with its own frontier.
        best_index: the order whose chosen point is best under the tuning objective.
    """

    results: tuple[TuningResult, ...]
    best_index: int

    @property
    def best(self) -> TuningResult:
        """The best order's result."""
        return self.results[self.best_index]

    def for_order(self, order: Sequence[int]) -> TuningResult:
        """The result for one order (a sequence of original stage indices, all or some).

        Raises:
            KeyError: if that order was not searched.
        """
        key = tuple(int(i) for i in order)
        for result in self.results:
            if result.order == key:
                return result
        msg = f"order {key} was not searched; searched {[r.order for r in self.results]}"
        raise KeyError(msg)
