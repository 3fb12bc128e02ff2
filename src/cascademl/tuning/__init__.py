"""Threshold tuning from validation data, without calling the models again.

Tuning works on cached stage probabilities:
[`stage_probabilities`][cascademl.tuning.stage_probabilities] runs every stage once on every
validation sample, and from then on each candidate policy is evaluated from that
``(n_stages, n_samples, n_classes)`` array alone.

The search is a deterministic coordinate descent over per-stage candidate thresholds
(midpoints between consecutive distinct confidences of each stage on the validation data,
at quantiles, plus 0 and infinity). For one stage at a time, every
candidate is scored at once with prefix sums over the samples sorted by confidence, so a
sweep costs ``O(n_samples log n_samples)`` per stage instead of one routing per candidate,
and the number of evaluations grows linearly, not exponentially, with the number of stages.
Descents for a schedule of cost penalties trace the accuracy-cost frontier, descents under
evenly spaced budgets fill it in, and a final descent on the constrained objective (a cost
budget, or a score target) refines the chosen point. When the grid is small (two or three
stages with the default candidates), it is also searched exhaustively, one vectorised
sweep per combination of the other stages, so the result is exact on the grid.
Every configuration the search visits is kept, and the frontier is the set of those that no
other visited configuration beats on both score and cost.

The routing rule is not re-implemented: confidences come from
[`confidence_scores`][cascademl._routing.confidence_scores], exits from ``exit_mask`` (in
``cascademl._routing``) and final probabilities from
[`combine_votes`][cascademl.voting.combine_votes]. Since a sample's final decision depends
only on the stage where it exits, the search caches the decision for each possible exit.
"""

from cascademl._probabilities import stage_probabilities
from cascademl.tuning._apply import apply_tuning, search_orders, tune_cascade
from cascademl.tuning._deprecated import search_stage_orders, tune_thresholds
from cascademl.tuning._orders import (
    OrdersArg,
    order_by_accuracy,
    order_by_cost,
    search_orders_from_proba,
)
from cascademl.tuning._results import (
    CombineArg,
    FrontierPoint,
    MinScore,
    OrderSearchResult,
    Scoring,
    TuningResult,
)
from cascademl.tuning._scoring import single_stage_scores
from cascademl.tuning._thresholds import score_thresholds, tune_cascade_from_proba

__all__ = [
    "CombineArg",
    "FrontierPoint",
    "MinScore",
    "OrderSearchResult",
    "OrdersArg",
    "Scoring",
    "TuningResult",
    "apply_tuning",
    "order_by_accuracy",
    "order_by_cost",
    "score_thresholds",
    "search_orders",
    "search_orders_from_proba",
    "search_stage_orders",
    "single_stage_scores",
    "stage_probabilities",
    "tune_cascade",
    "tune_cascade_from_proba",
    "tune_thresholds",
]
