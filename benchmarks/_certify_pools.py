"""Pools of real stage outputs for the certification benchmarks, and a vectorised router.

A pool is the probabilities of k fitted scikit-learn stages (several model families, the
cheap ones seeing fewer features) on rows they were not trained on: generated data from
``make_classification`` (nothing is downloaded). The router replays a
[`RoutingRule`][cascademl.RoutingRule] on the cached probabilities with cascademl's own
replay (``cascademl._replay.replay``: the rule's exit test and ``combine_votes``), so the truth a
benchmark measures on the rest of a pool is the cascade's own routing; :func:`check_router`
compares it once with ``score_thresholds``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.datasets import make_classification
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from cascademl import RoutingRule
from cascademl._replay import replay
from cascademl.tuning import score_thresholds

__all__ = ["Pool", "Routed", "check_router", "make_pool", "route"]

N_TRAIN = 6_000
N_FEATURES = 20


@dataclass(frozen=True)
class Pool:
    """The stage outputs on the pool rows.

    Attributes:
        name: e.g. ``"generated-k3"``.
        proba: (k, n, n_classes) stage probabilities, cheapest stage first.
        y: (n,) true labels (class indices).
        stage_names: the stages' models.
        stage_cost: relative cost of one sample at each stage.
        stage_accuracy: each stage's accuracy on the pool.
        seconds: time to build it.
    """

    name: str
    proba: np.ndarray[Any, Any]
    y: np.ndarray[Any, Any]
    stage_names: tuple[str, ...]
    stage_cost: tuple[float, ...]
    stage_accuracy: tuple[float, ...]
    seconds: float

    @property
    def classes(self) -> np.ndarray[Any, Any]:
        """Class labels (the column indices)."""
        return np.arange(self.proba.shape[2])

    @property
    def last_labels(self) -> np.ndarray[Any, Any]:
        """The last stage's labels: the reference of the agreement guarantee."""
        return np.asarray(np.argmax(self.proba[-1], axis=1))

    def describe(self) -> dict[str, Any]:
        """What the results JSON records about the pool."""
        return {
            "name": self.name,
            "n_rows": int(self.proba.shape[1]),
            "n_classes": int(self.proba.shape[2]),
            "stages": list(self.stage_names),
            "stage_cost": list(self.stage_cost),
            "stage_accuracy": [round(a, 4) for a in self.stage_accuracy],
            "build_seconds": round(self.seconds, 1),
        }


def _columns(model: Any, n_columns: int) -> Any:
    """``model`` fitted on the first ``n_columns`` features only (a cheaper, weaker stage)."""
    return make_pipeline(
        ColumnTransformer([("keep", "passthrough", list(range(n_columns)))]), model
    )


def _stages(k: int, seed: int) -> list[tuple[str, float, Any]]:
    """``(name, cost, unfitted model)`` per stage, cheapest first."""
    scaled_lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    catalogue = {
        "nb-6": (1.0, _columns(GaussianNB(), 6)),
        "logreg-10": (2.0, _columns(make_pipeline(StandardScaler(), LogisticRegression()), 10)),
        "logreg": (3.0, scaled_lr),
        "tree-d8": (4.0, DecisionTreeClassifier(max_depth=8, random_state=seed)),
        "forest": (
            12.0,
            RandomForestClassifier(60, min_samples_leaf=2, n_jobs=1, random_state=seed),
        ),
        "mlp": (
            15.0,
            make_pipeline(
                StandardScaler(),
                MLPClassifier((128, 64), max_iter=300, early_stopping=True, random_state=seed),
            ),
        ),
        "hgb": (
            25.0,
            HistGradientBoostingClassifier(max_iter=60, early_stopping=False, random_state=seed),
        ),
    }
    names = {
        2: ["logreg-10", "hgb"],
        3: ["nb-6", "logreg", "hgb"],
        5: ["nb-6", "logreg", "tree-d8", "forest", "hgb"],
    }[k]
    return [(name, *catalogue[name]) for name in names]


def make_pool(k: int, *, n_rows: int = 30_000, seed: int = 0, cache: Path | None = None) -> Pool:
    """Train ``k`` stages on generated data and return their outputs on ``n_rows`` new rows.

    The data: 4 classes, 20 features of which 8 informative, two clusters per class, 3% of
    labels flipped (so no stage is perfect and the stages disagree). With ``cache``, the
    pool is saved there as ``generated-k{k}-n{n_rows}-s{seed}.npz`` and read back by later
    runs (the data and the models are seeded, so it is the same pool).
    """
    tic = time.perf_counter()
    path = None if cache is None else cache / f"generated-k{k}-n{n_rows}-s{seed}.npz"
    if path is not None and path.is_file():
        with np.load(path) as saved:
            return Pool(
                f"generated-k{k}",
                saved["proba"],
                saved["y"],
                tuple(str(n) for n in saved["names"]),
                tuple(float(c) for c in saved["cost"]),
                tuple(float(a) for a in saved["accuracy"]),
                float(saved["seconds"]),
            )
    x, y = make_classification(
        n_samples=N_TRAIN + n_rows,
        n_features=N_FEATURES,
        n_informative=8,
        n_redundant=4,
        n_classes=4,
        n_clusters_per_class=2,
        flip_y=0.03,
        class_sep=1.0,
        random_state=seed,
    )
    x_train, y_train, x_pool, y_pool = x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]
    names, costs, probas = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for name, cost, model in _stages(k, seed):
            model.fit(x_train, y_train)
            names.append(name)
            costs.append(cost)
            probas.append(np.asarray(model.predict_proba(x_pool), dtype=np.float64))
    proba = np.stack(probas)
    proba /= proba.sum(axis=2, keepdims=True)
    accuracy = tuple(float(np.mean(p.argmax(axis=1) == y_pool)) for p in proba)
    seconds = time.perf_counter() - tic
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            path, proba=proba, y=y_pool, names=names, cost=costs, accuracy=accuracy,
            seconds=seconds,
        )  # fmt: skip
    return Pool(
        f"generated-k{k}", proba, np.asarray(y_pool), tuple(names), tuple(costs), accuracy, seconds
    )


@dataclass(frozen=True)
class Routed:
    """A rule replayed on every pool row."""

    labels: np.ndarray[Any, Any]
    decided: np.ndarray[Any, Any]
    cost: np.ndarray[Any, Any]
    final: np.ndarray[Any, Any]


def route(
    proba: np.ndarray[Any, Any],
    rule: RoutingRule,
    stage_cost: tuple[float, ...],
    reject_threshold: float | None = None,
) -> Routed:
    """Labels, decided mask (the reject option) and cost of every row under ``rule``."""
    replayed = replay(proba, rule, reject_threshold)
    cost = np.cumsum(np.asarray(stage_cost))[replayed.exit_stage]
    return Routed(replayed.label_index, replayed.decided, cost, replayed.final)


def check_router(pool: Pool, rule: RoutingRule) -> None:
    """Fail unless :func:`route` gives ``score_thresholds``'s accuracy and cost for ``rule``."""
    routed = route(pool.proba, rule, pool.stage_cost)
    point = score_thresholds(
        pool.proba, pool.y, rule, classes=pool.classes, stage_cost=pool.stage_cost
    )
    accuracy = float(np.mean(routed.labels == pool.y))
    if abs(accuracy - point.score) > 1e-9 or abs(routed.cost.mean() - point.mean_cost) > 1e-6:
        msg = (
            f"router disagrees with score_thresholds on {pool.name}: accuracy {accuracy} vs "
            f"{point.score}, cost {routed.cost.mean()} vs {point.mean_cost}"
        )
        raise RuntimeError(msg)
