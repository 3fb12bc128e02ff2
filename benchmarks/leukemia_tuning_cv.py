"""Compare threshold-tuning rules by cross-validation inside the validation split.

Reads ``OUT/probabilities.npz`` and ``OUT/metrics.json`` of a finished
``python -m examples.leukemia run`` and never touches the test probabilities: the
validation images are split into stratified halves; each rule orders the backbones by
accuracy on one half (the paper's rule, weakest first), tunes thresholds on that half under
the run's cost budget, and is scored on the other half with
``cascademl.tuning.score_thresholds``. Repeated over seeds, this estimates how well each rule's
validation choice carries over to unseen images, which is how the example's default
(``--scoring neg_log_loss``) was chosen. One more rule first rescales every stage by a
temperature fitted on the tuning half (``cascademl.calibration.fit_temperatures``), so that
the confidence-weighted vote weighs calibrated probabilities; the example does not use it.

Usage::

    python benchmarks/leukemia_tuning_cv.py runs/cpu --repeats 5

Prints a Markdown table: mean held-out accuracy and its spread, and mean cost as a share of
running every backbone.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from sklearn.model_selection import StratifiedKFold

from _leukemia_results import add_run_arguments, load_run
from cascademl.calibration import apply_temperature, fit_temperatures
from cascademl.tuning import (
    order_by_accuracy,
    score_thresholds,
    single_stage_scores,
    tune_cascade_from_proba,
)

#: Rules compared: a name and the ``tune_cascade_from_proba`` scoring (``None``: accuracy).
RULES: dict[str, str | None] = {
    "accuracy": None,
    "balanced_accuracy": "balanced_accuracy",
    "neg_log_loss": "neg_log_loss",
}
#: Also compared: log-loss tuning after per-stage temperature scaling fitted on the tuning half.
CALIBRATED = "neg_log_loss, temperature-scaled stages"


def _temperature_scaled(
    proba: np.ndarray, y_fit: np.ndarray, fit: np.ndarray, classes: np.ndarray
) -> np.ndarray:
    """Scale every stage by the temperature fitted on the tuning half (``fit``) only."""
    report = fit_temperatures(proba[:, fit], y_fit, classes=classes)
    scaled = [apply_temperature(p, t) for p, t in zip(proba, report.temperatures, strict=True)]
    return np.stack(scaled)


def held_out_scores(
    proba: np.ndarray,
    y: np.ndarray,
    flops: np.ndarray,
    *,
    classes: np.ndarray,
    budget: float,
    repeats: int,
) -> dict[str, tuple[list[float], list[float]]]:
    """Held-out accuracy and cost ratio of every rule, plus the best single backbone."""
    results: dict[str, tuple[list[float], list[float]]] = {
        name: ([], []) for name in [*RULES, CALIBRATED, "best backbone alone"]
    }
    for seed in range(repeats):
        folds = StratifiedKFold(2, shuffle=True, random_state=seed)
        for fit, check in folds.split(y, y):
            order = list(order_by_accuracy(proba[:, fit], y[fit], classes=classes))
            p, cost = proba[order], flops[order]
            scaled = _temperature_scaled(p, y[fit], fit, classes)
            candidates = [(name, scoring, p) for name, scoring in RULES.items()]
            candidates.append((CALIBRATED, "neg_log_loss", scaled))
            for name, scoring, q in candidates:
                tuned = tune_cascade_from_proba(
                    q[:, fit],
                    y[fit],
                    classes=classes,
                    stage_cost=list(cost),
                    max_cost=budget,
                    scoring=scoring,
                    combine="vote",  # the example's combiner, which score_thresholds uses
                )
                point = score_thresholds(
                    q[:, check], y[check], tuned.thresholds, classes=classes, stage_cost=list(cost)
                )
                results[name][0].append(point.score)
                results[name][1].append(point.mean_cost / flops.sum())
            best = order[-1]  # most accurate on the tuning half
            alone = single_stage_scores(proba[[best]][:, check], y[check], classes=classes)
            results["best backbone alone"][0].append(float(alone[0]))
            results["best backbone alone"][1].append(float(flops[best] / flops.sum()))
    return results


def main(argv: list[str] | None = None) -> None:
    """Run the comparison on a results folder and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    parser.add_argument("--repeats", type=int, default=5, help="seeds of the 2-fold split")
    args = parser.parse_args(argv)
    run = load_run(args.results)
    warnings.filterwarnings("ignore", category=UserWarning)
    results = held_out_scores(
        run.val,
        run.val_labels,
        run.flops,
        classes=run.classes,
        budget=run.budget(args.max_cost_ratio),
        repeats=args.repeats,
    )
    n = len(run.val_labels)
    print(f"{args.results}: {n} validation images, {args.repeats} x 2-fold, test split unused\n")
    print("| tuned for | held-out accuracy | spread (sd) | cost, share of all five |")
    print("|---|---|---|---|")
    for name, (accuracy, cost) in results.items():
        print(
            f"| {name} | {100 * np.mean(accuracy):.2f}% | {100 * np.std(accuracy):.2f} | "
            f"{100 * np.mean(cost):.1f}% |"
        )


if __name__ == "__main__":
    main()
