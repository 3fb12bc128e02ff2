"""Order the trained stages and tune the cascade's thresholds on validation alone.

Three ordering rules (:data:`ORDER_RULES`): the paper's (least accurate on validation
first), the cheapest first, and stage selection (the paper's order, keeping only the
stages that pay within the budget). Each is tuned on validation probabilities; the test
split is used only to report each tuned order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final, NamedTuple

import numpy as np
import torch

from cascademl import CascadeClassifier, ConfidencePolicy
from cascademl.cost import CostReport, StageCost
from cascademl.metrics import classification_metrics
from cascademl.torch_stage import TorchStage
from cascademl.tuning import (
    TuningResult,
    apply_tuning,
    order_by_accuracy,
    order_by_cost,
    score_thresholds,
    search_orders_from_proba,
)

__all__ = [
    "ORDER_RULES",
    "RECOMMENDED",
    "OrderResult",
    "TunedOrder",
    "evaluate_order",
    "order_and_tune",
    "recommended_order",
]

logger = logging.getLogger(__name__)


class TunedOrder(NamedTuple):
    """One stage order with its thresholds tuned on validation."""

    ordering: tuple[int, ...]
    budget: float | None
    tuning: TuningResult
    cascade: CascadeClassifier
    #: ``(mean FLOPs, validation accuracy)`` of every point of the tuned frontier.
    frontier: list[tuple[float, float]]

    @property
    def val_accuracy(self) -> float:
        """Validation accuracy of the chosen thresholds (the tuning may score another way)."""
        return self.frontier[self.tuning.chosen_index][1]

    def to_json(self) -> dict[str, Any]:
        """The ``tuning`` entry of ``metrics.json``: the objective, budget and frontier."""
        tuning = self.tuning
        return {
            "objective": tuning.objective,
            "scoring": tuning.scoring,
            "budget_flops": self.budget,
            "val_score": tuning.score,
            "val_accuracy": self.val_accuracy,
            "val_mean_flops": tuning.mean_cost,
            "frontier": [
                {**asdict(point), "accuracy": accuracy}
                for point, (_, accuracy) in zip(tuning.frontier, self.frontier, strict=True)
            ],
        }


#: The ways the stages are ordered: the paper's (least accurate on validation first), the
#: cheapest first, and stage selection (the paper's order, keeping only the stages that pay).
ORDER_RULES: Final = ("accuracy", "cost", "selected")
#: ``--order`` default: the rule whose tuned cascade scores best on validation.
RECOMMENDED: Final = "recommended"


def recommended_order(tuned: Mapping[str, TunedOrder]) -> str:
    """The ordering rule the report recommends: the best tuning score on validation.

    The score is the tuning objective (the validation log-loss by default), within the
    same budget for every rule; ties go to the earlier rule of :data:`ORDER_RULES` (the
    paper's order first). The test split plays no part.
    """
    return max(ORDER_RULES, key=lambda rule: (tuned[rule].tuning.score, -ORDER_RULES.index(rule)))


def order_and_tune(
    stages: Sequence[tuple[str, TorchStage]],
    val_proba: np.ndarray[Any, Any],
    flops: list[float],
    *,
    y_val: np.ndarray[Any, Any],
    classes: np.ndarray[Any, Any],
    order: str,
    max_cost_ratio: float,
    scoring: str,
) -> TunedOrder:
    """Order the stages and tune the thresholds on validation probabilities (no test data).

    ``order="selected"`` tunes every sub-sequence of the paper's order (one to all five
    stages, :func:`cascademl.tuning.search_orders_from_proba` with ``orders="subsets"``) and
    keeps the best on validation, so that stages that do not pay within the budget are
    dropped.
    """
    if order in {"accuracy", "selected"}:
        base = order_by_accuracy(val_proba, y_val, classes=classes)
    elif order == "cost":
        base = order_by_cost(flops)
    else:
        msg = f"order must be one of {ORDER_RULES}, got {order!r}"
        raise ValueError(msg)
    budget: float | None = max_cost_ratio * float(sum(flops))
    cheapest = min(flops) if order == "selected" else flops[base[0]]
    if budget is not None and budget < cheapest:
        logger.warning(
            "a budget of %.0f%% of all backbones is below the first stage's own cost in this "
            "order; tuning for the best validation score without a budget instead",
            100 * max_cost_ratio,
        )
        budget = None
    search = search_orders_from_proba(
        val_proba[list(base)],
        y_val,
        classes=classes,
        orders="subsets" if order == "selected" else [tuple(range(len(base)))],
        stage_cost=[flops[i] for i in base],
        max_cost=budget,
        scoring=scoring,
        stage_names=[stages[i][0] for i in base],
    )
    tuning = search.best
    ordering = tuple(base[i] for i in tuning.order)
    proba = val_proba[list(ordering)]
    cost = [flops[i] for i in ordering]
    accuracy = [
        score_thresholds(proba, y_val, point.thresholds, classes=classes, stage_cost=cost)
        for point in tuning.frontier
    ]
    based = CascadeClassifier.from_fitted(
        [stages[i] for i in base], policy=ConfidencePolicy(thresholds=0.0)
    )
    return TunedOrder(
        ordering,
        budget,
        tuning,
        apply_tuning(based, tuning),
        [(point.mean_cost, point.score) for point in accuracy],
    )


@dataclass(frozen=True)
class OrderResult:
    """One tuned stage order, tested (the report's sections on the other orders).

    Attributes:
        rule: The ordering rule (one of :data:`ORDER_RULES`).
        order: Stage names in cascade order.
        thresholds: The thresholds tuned on validation, one per non-final stage.
        budget_flops: The mean-cost budget of the tuning (``None``: none could be met).
        scoring: What the thresholds maximise on validation.
        val_score: That score on validation.
        val_accuracy: Validation accuracy of the tuned thresholds.
        test_accuracy: Test accuracy.
        test_mcc: Test MCC.
        test_kappa: Test Cohen's kappa.
        cascade_mean_flops: Mean FLOPs per test image.
        cascade_flops_ratio_all: That over the FLOPs of all the backbones trained.
        exit_counts: ``{stage name: test samples it ended}``, in cascade order.
    """

    rule: str
    order: tuple[str, ...]
    thresholds: tuple[float, ...]
    budget_flops: float | None
    scoring: str
    val_score: float
    val_accuracy: float
    test_accuracy: float
    test_mcc: float
    test_kappa: float
    cascade_mean_flops: float
    cascade_flops_ratio_all: float
    exit_counts: Mapping[str, int]

    def to_json(self) -> dict[str, Any]:
        """The order's entry under ``alternatives`` in ``metrics.json``."""
        return {
            "rule": self.rule,
            "order": list(self.order),
            "thresholds": list(self.thresholds),
            "budget_flops": self.budget_flops,
            "scoring": self.scoring,
            "val_score": self.val_score,
            "val_accuracy": self.val_accuracy,
            "test_accuracy": self.test_accuracy,
            "test_mcc": self.test_mcc,
            "test_kappa": self.test_kappa,
            "cascade_mean_flops": self.cascade_mean_flops,
            "cascade_flops_ratio_all": self.cascade_flops_ratio_all,
            "exit_counts": dict(self.exit_counts),
        }


def evaluate_order(
    stages: Sequence[tuple[str, TorchStage]],
    costs: Sequence[StageCost],
    tuned: TunedOrder,
    *,
    rule: str,
    x_test: torch.Tensor,
    y_test: np.ndarray[Any, Any],
    classes: np.ndarray[Any, Any],
) -> OrderResult:
    """Evaluate another stage order on test for the report.

    Only the ordering rule differs; its thresholds were tuned on the validation split alone
    by :func:`order_and_tune`, as the primary result's were.
    """
    ordering, tuning = tuned.ordering, tuned.tuning
    routed = tuned.cascade.route(x_test)
    test = classification_metrics(y_test, routed.labels, classes=classes, n_bootstrap=0)
    cost = CostReport.from_result(routed, [costs[i] for i in ordering])
    return OrderResult(
        rule=rule,
        order=tuple(stages[i][0] for i in ordering),
        thresholds=tuple(tuning.thresholds),
        budget_flops=tuned.budget,
        scoring=tuning.scoring,
        val_score=tuning.score,
        val_accuracy=tuned.val_accuracy,
        test_accuracy=test.accuracy,
        test_mcc=test.mcc,
        test_kappa=test.kappa,
        cascade_mean_flops=cost.mean_flops,
        cascade_flops_ratio_all=cost.mean_flops / sum(c.flops_per_sample for c in costs),
        exit_counts=dict(zip(routed.stage_names, routed.exit_counts.tolist(), strict=True)),
    )
