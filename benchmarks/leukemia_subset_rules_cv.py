"""Compare stage-selection rules by cross-validation inside the validation split.

The leukemia example's stage selection tunes every order-preserving subset of the paper's
order (least accurate first) for the validation log-loss under the cost budget and keeps
the subset with the best validation log-loss. This script asks, on validation data only,
whether another rule for picking the subset carries over better to unseen images.

For each finished run (``OUT/probabilities.npz`` and ``OUT/metrics.json``; the test
probabilities are never read), the validation images are split into stratified halves,
``--repeats`` times. On the tuning half the backbones are ordered by accuracy (the paper's
rule), every subset is tuned with ``search_orders_from_proba(orders="subsets")`` and each
rule picks one subset with its thresholds; the pick is scored on the other half. The rules:

* ``log-loss`` (the example's rule): subset and thresholds by validation log-loss;
* ``accuracy, log-loss thresholds``: thresholds tuned for log-loss, subset by validation
  accuracy (ties: better log-loss, then cheaper);
* ``accuracy``: subset and thresholds by validation accuracy;
* ``log-loss, cheapest within 1 SE``: among the subsets whose log-loss is within one
  standard error of the best (paired over the tuning images), the cheapest;
* ``accuracy, cheapest within 1 SE``: as the last, for the accuracy of log-loss-tuned
  thresholds;
* ``best backbone alone`` (reference): the most accurate backbone on the tuning half.

Usage::

    python benchmarks/leukemia_subset_rules_cv.py runs/seeds-cpu/seed-0 runs/seeds-cpu/seed-1 \
        runs/seeds-cpu/seed-2 --repeats 10

Prints, per run, what each rule picks when tuned on the whole validation split (as the
example tunes), then one Markdown table per run and one pooled over the runs: mean held-out
accuracy and
its spread over the folds, the difference from the example's rule with its standard error
(images as the unit: each image's difference is averaged over the repeats, in which it is
held out once each), the number of runs where the rule is at least as accurate, the mean
held-out log-loss, the mean cost as a share of running every backbone and the mean number
of stages.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from sklearn.model_selection import StratifiedKFold

from _leukemia_results import load_run
from cascademl.tuning import order_by_accuracy, score_thresholds, search_orders_from_proba

_EPS = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class Candidate:
    """One subset tuned on the tuning half, with its per-image results there."""

    stages: tuple[int, ...]
    thresholds: tuple[float, ...]
    hits: np.ndarray
    loss: np.ndarray
    cost: float

    @property
    def accuracy(self) -> float:
        """Accuracy on the tuning half."""
        return float(self.hits.mean())

    @property
    def log_loss(self) -> float:
        """Log-loss on the tuning half."""
        return float(self.loss.mean())


def routed(
    proba: np.ndarray,
    y: np.ndarray,
    thresholds: Sequence[float],
    *,
    classes: np.ndarray,
    cost: Sequence[float],
) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-image hits and log-loss, and the mean cost, of thresholds on cached probabilities.

    The routing is the library's own (``score_thresholds``); a scorer reads its combined
    probabilities.
    """
    seen: list[np.ndarray] = []

    def keep(estimator: Any, x: Any, _y: Any) -> float:
        seen.append(estimator.predict_proba(x))
        return 0.0

    point = score_thresholds(
        proba, y, list(thresholds), classes=classes, stage_cost=list(cost), scoring=keep
    )
    final = seen[-1]
    index = {c: i for i, c in enumerate(classes.tolist())}
    truth = np.array([index[v] for v in y.tolist()])
    hits = (classes[np.argmax(final, axis=1)] == y).astype(float)
    loss = -np.log(np.clip(final[np.arange(len(y)), truth], _EPS, 1 - _EPS))
    return hits, loss, float(point.mean_cost)


def tune_candidates(
    proba: np.ndarray,
    y: np.ndarray,
    flops: np.ndarray,
    *,
    classes: np.ndarray,
    budget: float,
    scoring: str | None,
) -> list[Candidate]:
    """Every feasible order-preserving subset of the paper's order, tuned for ``scoring``.

    Listed in the library's order (shortest first); the first of the list is the paper's
    order of the tuning images.
    """
    order = list(order_by_accuracy(proba, y, classes=classes))
    search = search_orders_from_proba(
        proba[order], y, classes=classes, orders="subsets",
        stage_cost=[float(c) for c in flops[order]], max_cost=budget, scoring=scoring,
    )  # fmt: skip
    found = []
    for tuned in search.results:
        if not tuned.feasible:
            continue
        stages = tuple(order[i] for i in tuned.order)
        hits, loss, cost = routed(
            proba[list(stages)], y, tuned.thresholds, classes=classes, cost=flops[list(stages)]
        )
        found.append(Candidate(stages, tuple(tuned.thresholds), hits, loss, cost))
    return found


def _paired_se(a: np.ndarray, b: np.ndarray) -> float:
    diff = a - b
    return float(diff.std(ddof=1) / np.sqrt(diff.size))


def by_log_loss(candidates: Sequence[Candidate]) -> Candidate:
    """Best log-loss; ties to the cheaper, then to the shorter (the library's rule)."""
    return min(candidates, key=lambda c: (c.log_loss, c.cost, len(c.stages)))


def by_accuracy(candidates: Sequence[Candidate]) -> Candidate:
    """Best accuracy; ties to the better log-loss, then to the cheaper."""
    return min(candidates, key=lambda c: (-c.accuracy, c.log_loss, c.cost, len(c.stages)))


def cheapest_within_se(
    candidates: Sequence[Candidate], best: Candidate, per_image: Callable[[Candidate], np.ndarray]
) -> Candidate:
    """The cheapest candidate within one paired standard error of ``best`` (higher is better)."""
    top = per_image(best)
    close = [
        c
        for c in candidates
        if top.mean() - per_image(c).mean() <= _paired_se(top, per_image(c)) or c is best
    ]
    return min(close, key=lambda c: (c.cost, len(c.stages), -per_image(c).mean()))


class Tuned(NamedTuple):
    """The feasible subsets of one tuning set, tuned for log-loss and for accuracy."""

    log_loss: list[Candidate]
    accuracy: list[Candidate]


#: The rules: each picks one candidate from the log-loss-tuned and the accuracy-tuned lists.
RULES: dict[str, Callable[[Tuned], Candidate]] = {
    "log-loss (the example's rule)": lambda t: by_log_loss(t.log_loss),
    "accuracy, log-loss thresholds": lambda t: by_accuracy(t.log_loss),
    "accuracy (subset and thresholds)": lambda t: by_accuracy(t.accuracy),
    "log-loss, cheapest within 1 SE": lambda t: cheapest_within_se(
        t.log_loss, by_log_loss(t.log_loss), lambda c: -c.loss
    ),
    "accuracy, cheapest within 1 SE": lambda t: cheapest_within_se(
        t.log_loss, by_accuracy(t.log_loss), lambda c: c.hits
    ),
}
REFERENCE = "log-loss (the example's rule)"
ALONE = "best backbone alone (reference)"


@dataclass
class RuleScores:
    """Held-out results of one rule on one run."""

    accuracy: list[float] = field(default_factory=list)
    log_loss: list[float] = field(default_factory=list)
    cost: list[float] = field(default_factory=list)
    stages: list[int] = field(default_factory=list)
    #: Held-out hits per repeat, each image once per repeat: shape (repeats, n_images).
    hits: list[np.ndarray] = field(default_factory=list)


def held_out(
    proba: np.ndarray,
    y: np.ndarray,
    flops: np.ndarray,
    *,
    classes: np.ndarray,
    budget: float,
    repeats: int,
) -> dict[str, RuleScores]:
    """Held-out results of every rule over ``repeats`` stratified 2-fold splits."""
    scores = {name: RuleScores() for name in [*RULES, ALONE]}
    total = float(flops.sum())
    for seed in range(repeats):
        hits = {name: np.full(len(y), np.nan) for name in scores}
        for fit, check in StratifiedKFold(2, shuffle=True, random_state=seed).split(y, y):
            kwargs = {"classes": classes, "budget": budget}
            ll = tune_candidates(proba[:, fit], y[fit], flops, scoring="neg_log_loss", **kwargs)
            acc = tune_candidates(proba[:, fit], y[fit], flops, scoring=None, **kwargs)
            picks = {name: rule(Tuned(ll, acc)) for name, rule in RULES.items()}
            alone = max((c for c in ll if len(c.stages) == 1), key=lambda c: c.accuracy)
            picks[ALONE] = alone
            for name, pick in picks.items():
                stages = list(pick.stages)
                h, loss, cost = routed(
                    proba[stages][:, check],
                    y[check],
                    pick.thresholds,
                    classes=classes,
                    cost=flops[stages],
                )
                s = scores[name]
                s.accuracy.append(float(h.mean()))
                s.log_loss.append(float(loss.mean()))
                s.cost.append(cost / total)
                s.stages.append(len(stages))
                hits[name][check] = h
        for name, s in scores.items():
            s.hits.append(hits[name])
    return scores


def full_validation_picks(
    proba: np.ndarray,
    y: np.ndarray,
    flops: np.ndarray,
    *,
    classes: np.ndarray,
    budget: float,
) -> dict[str, Candidate]:
    """What each rule picks when it tunes on the whole validation split (as the example does)."""
    kwargs = {"classes": classes, "budget": budget}
    ll = tune_candidates(proba, y, flops, scoring="neg_log_loss", **kwargs)
    acc = tune_candidates(proba, y, flops, scoring=None, **kwargs)
    picks = {name: rule(Tuned(ll, acc)) for name, rule in RULES.items()}
    picks[ALONE] = max((c for c in ll if len(c.stages) == 1), key=lambda c: c.accuracy)
    return picks


def _difference(per_run: Sequence[dict[str, RuleScores]], name: str) -> tuple[float, float]:
    """Mean held-out accuracy difference from the example's rule and its standard error.

    Images are the unit: each image's difference is averaged over the repeats first.
    """
    diffs = [(np.mean(s[name].hits, axis=0) - np.mean(s[REFERENCE].hits, axis=0)) for s in per_run]
    d = np.concatenate(diffs)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(d.size))


def table(per_run: Sequence[dict[str, RuleScores]]) -> list[str]:
    """Markdown rows for one run or pooled over several."""
    lines = [
        (
            "| rule | held-out accuracy | sd over folds | vs the example's rule (± SE) "
            "| runs at least as accurate | held-out log-loss | cost, share of all five | stages |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in per_run[0]:
        accuracy = np.concatenate([s[name].accuracy for s in per_run])
        log_loss = np.concatenate([s[name].log_loss for s in per_run])
        cost = np.concatenate([s[name].cost for s in per_run])
        stages = np.concatenate([s[name].stages for s in per_run])
        diff, se = _difference(per_run, name)
        wins = sum(np.mean(s[name].accuracy) >= np.mean(s[REFERENCE].accuracy) for s in per_run)
        lines.append(
            f"| {name} | {100 * accuracy.mean():.2f}% | {100 * accuracy.std():.2f} | "
            f"{100 * diff:+.2f} ± {100 * se:.2f} | {wins} of {len(per_run)} | "
            f"{log_loss.mean():.4f} | {100 * cost.mean():.1f}% | {stages.mean():.2f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    """Run the comparison on one or more results folders and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+", help="results folders of leukemia runs")
    parser.add_argument(
        "--max-cost-ratio", type=float, default=0.35, help="budget, share of all backbones"
    )
    parser.add_argument("--repeats", type=int, default=10, help="seeds of the 2-fold split")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    per_run = []
    for folder in args.results:
        run = load_run(folder)
        budget = run.budget(args.max_cost_ratio)
        scores = held_out(
            run.val,
            run.val_labels,
            run.flops,
            classes=run.classes,
            budget=budget,
            repeats=args.repeats,
        )
        per_run.append(scores)
        n = len(run.val_labels)
        print(f"{folder}: {n} validation images, test split unused\n")
        picks = full_validation_picks(
            run.val,
            run.val_labels,
            run.flops,
            classes=run.classes,
            budget=budget,
        )
        print("| rule | pick on the whole validation split | accuracy | log-loss | cost share |")
        print("|---|---|---:|---:|---:|")
        for name, pick in picks.items():
            label = " -> ".join(run.names[i] for i in pick.stages)
            print(
                f"| {name} | {label} | {100 * pick.accuracy:.2f}% | {pick.log_loss:.4f} | "
                f"{100 * pick.cost / float(run.flops.sum()):.1f}% |"
            )
        print(f"\nHeld out, {args.repeats} x 2-fold inside validation:\n")
        print("\n".join(table([scores])) + "\n", flush=True)
    if len(per_run) > 1:
        print(f"Pooled over {len(per_run)} runs:\n")
        print("\n".join(table(per_run)))


if __name__ == "__main__":
    main()
