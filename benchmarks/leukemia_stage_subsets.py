"""Which backbones pay for their place in the cascade? Tune every subset on validation.

Reads ``OUT/probabilities.npz`` and ``OUT/metrics.json`` of a finished
``python -m examples.leukemia run``. For every non-empty subset of the backbones, kept in
the paper's order (least accurate on validation first), thresholds are tuned on the
validation split for ``--scoring`` under the run's cost budget (a share of running all
five backbones). The subsets are ranked by their validation score; the test split is read
once, for the top-ranked subset only, and for the full five-stage cascade to compare.

Usage::

    python benchmarks/leukemia_stage_subsets.py runs/cpu --scoring neg_log_loss

Prints a Markdown table of the best ``--top`` subsets on validation, then the two test
results.
"""

from __future__ import annotations

import argparse
import warnings
from typing import NamedTuple

import numpy as np

from _leukemia_results import add_run_arguments, load_run
from cascademl.tuning import order_by_accuracy, score_thresholds, search_orders_from_proba


class Tuned(NamedTuple):
    """One subset tuned on validation."""

    stages: tuple[int, ...]
    thresholds: tuple[float, ...]
    val_score: float
    val_accuracy: float
    cost_share: float


def tune_subsets(
    val: np.ndarray,
    y_val: np.ndarray,
    flops: np.ndarray,
    *,
    classes: np.ndarray,
    max_cost_ratio: float,
    scoring: str | None,
) -> list[Tuned]:
    """Tune every order-preserving subset on validation; best validation score first.

    One call of ``search_orders_from_proba(orders="subsets")``, the library's stage selection,
    which the leukemia pipeline also reports; subsets that cannot meet the budget are left
    out.
    """
    order = list(order_by_accuracy(val, y_val, classes=classes))
    search = search_orders_from_proba(
        val[order], y_val, classes=classes, orders="subsets",
        stage_cost=[float(c) for c in flops[order]],
        max_cost=max_cost_ratio * float(flops.sum()), scoring=scoring,
    )  # fmt: skip
    found = []
    for tuned in search.results:
        if not tuned.feasible:
            continue
        stages = [order[i] for i in tuned.order]
        point = score_thresholds(val[stages], y_val, tuned.thresholds, classes=classes)
        found.append(
            Tuned(
                tuple(stages),
                tuple(tuned.thresholds),
                tuned.score,
                point.score,
                tuned.mean_cost / float(flops.sum()),
            )
        )
    return sorted(found, key=lambda t: (-t.val_score, t.cost_share))


def main(argv: list[str] | None = None) -> None:
    """Rank the subsets of a results folder and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    parser.add_argument("--scoring", default="neg_log_loss", help="'accuracy' or a sklearn scorer")
    parser.add_argument("--top", type=int, default=8, help="subsets to list")
    args = parser.parse_args(argv)
    run = load_run(args.results)
    names, flops, classes = run.names, run.flops, run.classes
    scoring = None if args.scoring == "accuracy" else args.scoring
    warnings.filterwarnings("ignore", category=UserWarning)
    ranked = tune_subsets(
        run.val,
        run.val_labels,
        flops,
        classes=classes,
        max_cost_ratio=args.max_cost_ratio,
        scoring=scoring,
    )
    print(f"{args.results}: {len(ranked)} subsets fit {args.max_cost_ratio:.0%} of all five\n")
    print(f"| stages (validation order) | validation {args.scoring} | accuracy | cost share |")
    print("|---|---|---|---|")
    for tuned in ranked[: args.top]:
        label = " -> ".join(names[i] for i in tuned.stages)
        print(
            f"| {label} | {tuned.val_score:.4f} | {100 * tuned.val_accuracy:.2f}% | "
            f"{100 * tuned.cost_share:.1f}% |"
        )
    full = max(ranked, key=lambda t: (len(t.stages), t.val_score))
    print()
    for title, tuned in (("top on validation", ranked[0]), ("all five", full)):
        stages = list(tuned.stages)
        test = score_thresholds(
            run.test[stages],
            run.test_labels,
            tuned.thresholds,
            classes=classes,
            stage_cost=[float(c) for c in flops[stages]],
        )
        label = " -> ".join(names[i] for i in stages)
        print(
            f"{title}: {label}: test accuracy {100 * test.score:.2f}% at "
            f"{100 * test.mean_cost / float(flops.sum()):.1f}% of all five"
        )


if __name__ == "__main__":
    main()
