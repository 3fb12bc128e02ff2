"""Threshold tuning: cascademl against scikit-fallback's ``ThresholdCascadeClassifierCV``.

Both tuners get the same five fitted scikit-learn stages, the same validation split, the
same per-stage costs and the same rule (max-probability confidence, a sample stops at the
first stage whose confidence is at or above its threshold, and that stage decides:
cascademl's ``combine="last"``). The chosen thresholds are then evaluated on a held-out test
split with cascademl's `CascadeClassifier`, so both are measured by the same code.

* scikit-fallback evaluates a grid of ``cv_thresholds ** (n_stages - 1)`` threshold
  combinations, each by running the cascade (model calls) on the validation split. It is
  given ``FrozenEstimator`` stages and a single split ``(validation, validation)``, so it
  trains nothing and scores on exactly our validation split; it is given cumulative costs,
  so that its cost (``acceptance_rates @ costs``) equals cascademl's mean cost per sample.
* cascademl runs each stage once on the validation split (`stage_probabilities`) and then
  searches thresholds on the cached probabilities (`tune_cascade_from_proba`).

Usage::

    python benchmarks/tuning_vs_skfallback.py            # both datasets, ~2-3 minutes
    python benchmarks/tuning_vs_skfallback.py --quick    # digits only

Needs ``pip install scikit-fallback`` (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import logging
import platform
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sklearn
from skfb.ensemble import ThresholdCascadeClassifierCV
from sklearn.datasets import load_digits, make_classification
from sklearn.ensemble import ExtraTreesClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.naive_bayes import GaussianNB
from sklearn.neural_network import MLPClassifier
from sklearn.tree import DecisionTreeClassifier

import cascademl
from cascademl import CascadeClassifier, ConfidencePolicy, RoutingRule, SklearnStage
from cascademl.tuning import stage_probabilities, tune_cascade_from_proba

logger = logging.getLogger("tuning_vs_skfallback")

#: Relative cost of one sample at each stage (user-given units), cheapest first.
STAGE_COSTS = (1.0, 1.0, 2.0, 8.0, 40.0)
#: Budgets, as shares of the cost of running every stage on every sample.
BUDGET_SHARES = (0.15, 0.3, 0.5)
#: scikit-fallback's grids: its default (5 values from 1/n_classes to 0.95) and one that
#: also reaches high confidences and "never stop here" (1.01), as cascademl's search does.
SKFB_GRIDS = {"default": None, "extended": (0.5, 0.8, 0.95, 0.999, 1.01)}


def make_stages(seed: int) -> list[tuple[str, object]]:
    """Five scikit-learn classifiers, roughly cheapest and weakest first."""
    return [
        ("nb", GaussianNB()),
        ("tree", DecisionTreeClassifier(max_depth=6, random_state=seed)),
        ("logreg", LogisticRegression(max_iter=2000)),
        ("mlp", MLPClassifier((64,), max_iter=300, random_state=seed)),
        ("extra_trees", ExtraTreesClassifier(n_estimators=60, random_state=seed, n_jobs=1)),
    ]


@dataclass
class Row:
    """One tuner at one budget."""

    dataset: str
    tuner: str
    budget: float
    val_accuracy: float
    test_accuracy: float
    test_cost: float


def load(name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The dataset's features and labels."""
    if name == "digits":
        X, y = load_digits(return_X_y=True)
        return X, y
    X, y = make_classification(
        n_samples=12_000,
        n_features=30,
        n_informative=15,
        n_redundant=5,
        n_classes=5,
        n_clusters_per_class=2,
        random_state=seed,
    )
    return X, y


def evaluate(models: Sequence[object], thresholds: Sequence[float], X, y) -> tuple[float, float]:  # noqa: ANN001
    """Test accuracy and mean cost of ``thresholds`` with cascademl's cascade."""
    stages = [
        (f"s{i}", SklearnStage(m, cost_per_sample=c))
        for i, (m, c) in enumerate(zip(models, STAGE_COSTS, strict=True))
    ]
    cascade = CascadeClassifier(
        stages, policy=ConfidencePolicy("max_proba", tuple(thresholds)), combine="last"
    ).fit(X, y)
    result = cascade.route(X)
    return float(np.mean(result.labels == y)), result.mean_cost


def run_dataset(name: str, seed: int, cv_thresholds: int) -> tuple[list[Row], dict[str, Any]]:
    """Fit the stages once, tune with both libraries, evaluate on the test split."""
    X, y = load(name, seed)
    X_train, X_rest, y_train, y_rest = train_test_split(
        X, y, test_size=0.5, stratify=y, random_state=seed
    )
    X_val, X_test, y_val, y_test = train_test_split(
        X_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=seed
    )
    models = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _, model in make_stages(seed):
            models.append(model.fit(X_train, y_train))
    total = float(sum(STAGE_COSTS))
    budgets = [round(share * total, 2) for share in BUDGET_SHARES]
    rows: list[Row] = []

    # cascademl: one model call per stage, then search on cached probabilities.
    start = time.perf_counter()
    stages = [
        (f"s{i}", SklearnStage(m, cost_per_sample=c))
        for i, (m, c) in enumerate(zip(models, STAGE_COSTS, strict=True))
    ]
    cascade = CascadeClassifier(stages, combine="last").fit(X_val, y_val)
    proba = stage_probabilities(cascade, X_val)
    first = None
    ours = {}
    for budget in budgets:
        ours[budget] = tune_cascade_from_proba(
            proba,
            y_val,
            classes=cascade.classes_,
            rule=RoutingRule.from_params(None, n_stages=len(STAGE_COSTS), combine="last"),
            stage_cost=STAGE_COSTS,
            max_cost=budget,
        )
        if first is None:
            first = time.perf_counter() - start
    ours_all = time.perf_counter() - start

    # scikit-fallback: a grid of thresholds, each scored by running the cascade.
    cumulative = np.cumsum(STAGE_COSTS)
    split = [(np.arange(len(y_val)), np.arange(len(y_val)))]
    skfb_times = {}
    skfb_configs = 0
    for grid_name, grid in SKFB_GRIDS.items():
        start = time.perf_counter()
        skfb = ThresholdCascadeClassifierCV(
            [FrozenEstimator(m) for m in models],
            costs=cumulative,
            cv_thresholds=cv_thresholds if grid is None else np.asarray(grid),
            cv=split,
            max_cost=budgets[0],
            strategy="min_score",
            return_earray=False,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its fallback warnings; infeasible shows below
            skfb.fit(X_val, y_val)
        skfb_times[grid_name] = time.perf_counter() - start
        skfb_configs = len(skfb.all_cv_thresholds_)
        for budget in budgets:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                skfb.set_params(max_cost=budget)
            chosen = list(skfb.best_thresholds_)
            index = int(np.flatnonzero((skfb.all_cv_thresholds_ == chosen).all(axis=1))[0])
            acc, cost = evaluate(models, chosen, X_test, y_test)
            rows.append(
                Row(
                    name,
                    f"scikit-fallback ({grid_name} grid)",
                    budget,
                    float(skfb.mean_cv_scores_[index]),
                    acc,
                    cost,
                )
            )
    for budget in budgets:
        result = ours[budget]
        acc, cost = evaluate(models, result.thresholds, X_test, y_test)
        rows.append(Row(name, "cascademl", budget, result.score, acc, cost))
    timing: dict[str, Any] = {
        "cascademl_first_budget_s": float(first or 0.0),
        "cascademl_all_budgets_s": ours_all,
        "skfb_fit_s": min(skfb_times.values()),
        "skfb_configs": float(skfb_configs),
        "n_val": float(len(y_val)),
        "n_test": float(len(y_test)),
    }
    alone = [float(np.mean(m.predict(X_test) == y_test)) for m in models]
    best = int(np.argmax(alone))
    timing["best_stage"] = (
        f"{make_stages(seed)[best][0]}: {alone[best]:.4f} (cost {STAGE_COSTS[best]:g})"
    )
    return rows, timing


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print Markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cv-thresholds", type=int, default=5, help="size of scikit-fallback's default grid"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import skfb  # noqa: PLC0415 - only for its version

    print(
        f"python {platform.python_version()}, numpy {np.__version__}, scikit-learn "
        f"{sklearn.__version__}, cascademl {cascademl.__version__}, scikit-fallback "
        f"{getattr(skfb, '__version__', 'unknown')}; stage costs {STAGE_COSTS}"
    )
    datasets = ["digits"] if args.quick else ["digits", "make_classification"]
    print(
        "\n| dataset | val / test | cascademl tuning (1 budget / 3 budgets) | "
        "scikit-fallback fit, faster grid | speed-up | best single stage (test) |"
    )
    print("|---|---|---|---|---|---|")
    all_rows: list[Row] = []
    for name in datasets:
        logger.info("running %s", name)
        rows, t = run_dataset(name, args.seed, args.cv_thresholds)
        all_rows += rows
        print(
            f"| {name} | {int(t['n_val'])} / {int(t['n_test'])} | "
            f"{t['cascademl_first_budget_s']:.2f} s / {t['cascademl_all_budgets_s']:.2f} s | "
            f"{t['skfb_fit_s']:.1f} s ({int(t['skfb_configs'])} configurations) | "
            f"{t['skfb_fit_s'] / t['cascademl_first_budget_s']:.0f}x | "
            f"{t['best_stage']} |"
        )
    print(
        "\n| dataset | budget (cost/sample) | tuner | val accuracy | test accuracy | "
        "test cost/sample |"
    )
    print("|---|---|---|---|---|---|")
    for r in all_rows:
        print(
            f"| {r.dataset} | {r.budget:g} | {r.tuner} | {r.val_accuracy:.4f} | "
            f"{r.test_accuracy:.4f} | {r.test_cost:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
