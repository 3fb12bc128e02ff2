"""Cross-validated cascades: CascadeClassifierCV against ThresholdCascadeClassifierCV.

Both get the same five unfitted scikit-learn stages, the same training split, the same
3 stratified folds, the same per-stage costs and the same budgets, and both fit each stage
once per fold and once more on the whole training split. They are timed over that whole
fit, stage fits included, and the chosen cascades are evaluated on a held-out test split
by the same code (cascademl's `CascadeClassifier`, with the stages each library refit).

* scikit-fallback scores a grid of ``cv_thresholds ** (n_stages - 1)`` threshold
  combinations (``--cv-thresholds 5``: 625) on each fold by running its cascade (its own
  default, 10 values, would be 10,000), and keeps the best under the budget
  (``strategy="min_score"``); its cost is ``acceptance_rates @ costs``, so it is given
  cumulative costs, which makes it cascademl's mean cost per sample. Its rule: the exiting
  stage decides.
* cascademl collects each stage's out-of-fold probabilities and tunes the thresholds on
  them. Four rules: the same as scikit-fallback's (``combine="last"``); the paper's vote
  with escalation weight 0.5 (``combine="vote"``, the default before ``"auto"``); the vote
  with the escalation weight tuned from ``(0, 0.25, 0.5)`` (0 is the exiting stage alone);
  and the default, ``combine="auto"``, which chooses among ``"last"``, the vote at 0.25,
  0.5 and 0.75, and ``"mean"`` on the out-of-fold probabilities.

Each library is fitted once, at the first budget, and timed; the other budgets are chosen
from the same fit: scikit-fallback by ``set_params(max_cost=...)``, cascademl by tuning the
same out-of-fold probabilities again (`tune_cascade_from_proba`) and applying the rule to
the same refit stages (`apply_tuning`), which is what fitting again at that budget gives.

The tuning step alone (``tune_cascade_from_proba`` on the out-of-fold probabilities at the
first budget) is also timed for ``combine="vote"`` and ``combine="auto"``, interleaved,
``--repeats`` times each: what choosing the combiner adds to a fit.

Usage::

    python benchmarks/cv_vs_skfallback.py            # digits and make_classification
    python benchmarks/cv_vs_skfallback.py --quick    # digits only

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
from sklearn.base import clone
from sklearn.datasets import load_digits, make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import StratifiedKFold, train_test_split

import cascademl
from cascademl import CascadeClassifier, CascadeClassifierCV, ConfidencePolicy, SklearnStage
from cascademl.tuning import apply_tuning, tune_cascade_from_proba
from tuning_vs_skfallback import BUDGET_SHARES, STAGE_COSTS, make_stages

logger = logging.getLogger("cv_vs_skfallback")

#: cascademl's rules: the exiting stage decides; the vote at 0.5 (the former default); the
#: vote with a tuned weight; the default, which chooses the combiner and the weight.
RULES: dict[str, dict[str, Any]] = {
    'cascademl, combine="last"': {"combine": "last"},
    'cascademl, combine="vote"': {"combine": "vote"},
    "cascademl, vote, weight tuned": {
        "combine": "vote",
        "escalation_weight_grid": (0.0, 0.25, 0.5),
    },
    'cascademl, default combine="auto"': {},
}


def load(name: str, seed: int, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Digits, or ``n_samples`` of the five-class task of ``tuning_vs_skfallback.py``."""
    if name == "digits":
        X, y = load_digits(return_X_y=True)
        return X, y
    X, y = make_classification(
        n_samples=n_samples,
        n_features=30,
        n_informative=15,
        n_redundant=5,
        n_classes=5,
        n_clusters_per_class=2,
        random_state=seed,
    )
    return X, y


@dataclass
class Row:
    """One library and rule at one budget."""

    dataset: str
    tuner: str
    budget: float
    test_accuracy: float
    test_cost: float
    combiner: str = ""


def evaluate(models: Sequence[Any], thresholds: Sequence[float], X, y) -> tuple[float, float]:  # noqa: ANN001
    """Test accuracy and mean cost of scikit-fallback's choice, with cascademl's cascade."""
    stages = [
        (f"s{i}", SklearnStage(m, cost_per_sample=c))
        for i, (m, c) in enumerate(zip(models, STAGE_COSTS, strict=True))
    ]
    cascade = CascadeClassifier(
        stages, policy=ConfidencePolicy("max_proba", tuple(thresholds)), combine="last"
    ).fit(X, y)
    result = cascade.route(X)
    return float(np.mean(result.labels == y)), result.mean_cost


def run_dataset(  # noqa: PLR0917 - the benchmark's settings
    name: str, seed: int, n_jobs: int | None, n_samples: int, cv_thresholds: int, repeats: int
) -> tuple[list[Row], dict[str, float]]:
    """Fit both libraries on the training split and evaluate every budget on the test split."""
    X, y = load(name, seed, n_samples)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, stratify=y, random_state=seed
    )
    folds = StratifiedKFold(3, shuffle=True, random_state=seed)
    budgets = [round(share * float(sum(STAGE_COSTS)), 2) for share in BUDGET_SHARES]
    rows: list[Row] = []
    times: dict[str, float] = {}

    logger.info("%s: scikit-fallback", name)
    start = time.perf_counter()
    skfb = ThresholdCascadeClassifierCV(
        [clone(m) for _, m in make_stages(seed)],
        costs=np.cumsum(STAGE_COSTS),
        cv_thresholds=cv_thresholds,
        cv=folds,
        max_cost=budgets[0],
        strategy="min_score",
        return_earray=False,
        n_jobs=n_jobs,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence and fallback warnings
        skfb.fit(X_train, y_train)
    skfb_name = f"scikit-fallback ({cv_thresholds ** (len(STAGE_COSTS) - 1)} configurations)"
    times[skfb_name] = time.perf_counter() - start
    for budget in budgets:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            skfb.set_params(max_cost=budget)
        acc, cost = evaluate(skfb.estimators_, list(skfb.best_thresholds_), X_test, y_test)
        rows.append(Row(name, skfb_name, budget, acc, cost))

    for rule_name, params in RULES.items():
        logger.info("%s: %s", name, rule_name)
        start = time.perf_counter()
        model = CascadeClassifierCV(
            make_stages(seed),
            cv=folds,
            stage_cost=STAGE_COSTS,
            max_cost=budgets[0],
            n_jobs=n_jobs,
            **params,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X_train, y_train)
        times[rule_name] = time.perf_counter() - start
        for budget in budgets:
            if budget == budgets[0]:
                cascade = model.cascade_
            else:
                result = tune_cascade_from_proba(
                    model.oof_proba_,
                    y_train,
                    classes=model.classes_,
                    rule=model.rule_,
                    stage_cost=STAGE_COSTS,
                    max_cost=budget,
                    combine=model.combine,
                    escalation_weight_grid=params.get("escalation_weight_grid"),
                )
                cascade = apply_tuning(model.cascade_, result)
            routed = cascade.route(X_test)
            acc = float(np.mean(routed.labels == y_test))
            combiner = cascade.combine
            if combiner == "vote":
                combiner += f" {cascade.escalation_weight:g}"
            rows.append(Row(name, rule_name, budget, acc, routed.mean_cost, combiner))
        if not params:
            times |= time_tuning(model, y_train, budgets[0], repeats)
    times["n_train"] = float(len(y_train))
    times["n_test"] = float(len(y_test))
    return rows, times


def time_tuning(
    model: CascadeClassifierCV, y: np.ndarray, budget: float, repeats: int
) -> dict[str, float]:
    """Median seconds of the tuning step alone, ``combine="vote"`` and ``"auto"`` interleaved."""
    seconds: dict[str, list[float]] = {"vote": [], "auto": []}
    for _ in range(repeats):
        for combine, spent in seconds.items():
            start = time.perf_counter()
            tune_cascade_from_proba(
                model.oof_proba_,
                y,
                classes=model.classes_,
                stage_cost=STAGE_COSTS,
                max_cost=budget,
                combine=combine,
            )
            spent.append(time.perf_counter() - start)
    return {f"tuning alone, {c}": float(np.median(v)) for c, v in seconds.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print Markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits only")
    parser.add_argument(
        "--dataset", choices=["digits", "make_classification"], help="run this dataset only"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-jobs", type=int, default=None, help="both libraries' n_jobs")
    parser.add_argument(
        "--cv-thresholds",
        type=int,
        default=5,
        help="scikit-fallback's grid: this many thresholds from 1/n_classes to 0.95 per stage",
    )
    parser.add_argument(
        "--n-samples", type=int, default=4000, help="make_classification's number of samples"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed repeats of the tuning step alone"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import skfb  # noqa: PLC0415 - only for its version

    print(
        f"python {platform.python_version()}, numpy {np.__version__}, scikit-learn "
        f"{sklearn.__version__}, cascademl {cascademl.__version__}, scikit-fallback "
        f"{getattr(skfb, '__version__', 'unknown')}; stage costs {STAGE_COSTS}, cv=3, "
        f"n_jobs={args.n_jobs}, scikit-fallback grid {args.cv_thresholds} values per stage"
    )
    datasets = ["digits"] if args.quick else ["digits", "make_classification"]
    if args.dataset is not None:
        datasets = [args.dataset]
    all_rows: list[Row] = []
    all_times: dict[str, dict[str, float]] = {}
    for name in datasets:
        rows, times = run_dataset(
            name, args.seed, args.n_jobs, args.n_samples, args.cv_thresholds, args.repeats
        )
        all_rows += rows
        all_times[name] = times
    print("\n| dataset | train / test | library, rule | whole fit (s) |")
    print("|---|---|---|---|")
    for name, times in all_times.items():
        for tuner, seconds in times.items():
            if tuner.startswith(("n_train", "n_test", "tuning alone")):
                continue
            size = f"{int(times['n_train'])} / {int(times['n_test'])}"
            print(f"| {name} | {size} | {tuner} | {seconds:.1f} |")
    print("\n| dataset | tuning alone, vote (s) | tuning alone, auto (s) | ratio |")
    print("|---|---|---|---|")
    for name, times in all_times.items():
        vote, auto = times["tuning alone, vote"], times["tuning alone, auto"]
        print(f"| {name} | {vote:.3f} | {auto:.3f} | {auto / vote:.1f}x |")
    print(
        "\n| dataset | budget (cost/sample) | library, rule | combiner | test accuracy | "
        "test cost/sample |"
    )
    print("|---|---|---|---|---|---|")
    for r in all_rows:
        print(
            f"| {r.dataset} | {r.budget:g} | {r.tuner} | {r.combiner or 'last'} | "
            f"{r.test_accuracy:.4f} | {r.test_cost:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
