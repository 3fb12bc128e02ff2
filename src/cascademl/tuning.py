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

from __future__ import annotations

import inspect
import itertools
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, cast

import numpy as np
from sklearn import config_context
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import get_scorer, log_loss
from sklearn.utils.validation import _num_samples

from cascademl._labels import label_indices
from cascademl._routing import check_stage_proba, confidence_scores, exit_mask
from cascademl._typing import (
    BoolArray,
    CombineMethod,
    ConfidenceMeasure,
    FloatArray,
    IntArray,
    LabelArray,
)
from cascademl.cascade import CascadeClassifier, _column_map, _take
from cascademl.exceptions import NotFittedError, PolicyError
from cascademl.policies import ConfidencePolicy
from cascademl.stages import SklearnStage
from cascademl.stages import stage_cost as _stage_cost
from cascademl.voting import combine_votes

__all__ = [
    "FrontierPoint",
    "MinScore",
    "OrderSearchResult",
    "Scoring",
    "TuningResult",
    "apply_tuning",
    "order_by_accuracy",
    "order_by_cost",
    "score_thresholds",
    "search_orders",
    "search_stage_orders",
    "single_stage_scores",
    "stage_probabilities",
    "tune_cascade",
    "tune_thresholds",
]

Scoring: TypeAlias = str | Callable[..., float] | None
"""What to maximise: a scikit-learn scorer name (``"accuracy"``, ``"f1_macro"``,
``"balanced_accuracy"``, ``"neg_log_loss"``...), a scorer callable
``scorer(estimator, X, y)`` as built by ``sklearn.metrics.make_scorer``, or ``None`` for
accuracy. Scorers that read only predicted labels are evaluated on counts of (true,
predicted) pairs, so their cost does not grow with the number of samples."""

MinScore: TypeAlias = float | Literal["best_stage"]
"""A score target; ``"best_stage"``: at least the score of the best stage used alone."""

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
    """Outcome of [`tune_thresholds`][cascademl.tuning.tune_thresholds].

    Attributes:
        policy: the chosen [`ConfidencePolicy`][cascademl.ConfidencePolicy] (one threshold
            per non-final stage, in the order ``order``).
        score: the chosen point's validation score.
        mean_cost: the chosen point's mean cost per validation sample.
        frontier: the non-dominated configurations found, by increasing cost (and strictly
            increasing score).
        chosen_index: position of the chosen point in ``frontier``.
        feasible: whether the chosen point meets the constraint. `tune_thresholds` raises
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


# --------------------------------------------------------------------------- caching
def stage_probabilities(
    cascade: CascadeClassifier, X: Any, *, batch_size: int | None = None
) -> FloatArray:
    """Run every stage of a fitted cascade once on every sample; no routing.

    Args:
        cascade: a fitted [`CascadeClassifier`][cascademl.CascadeClassifier].
        X: the samples (a validation or calibration split, never the test split).
        batch_size: at most this many samples per stage call; defaults to the cascade's
            ``batch_size`` (all at once when ``None``).

    Returns:
        ndarray of shape (n_stages, n_samples, n_classes), columns in the order of
        ``cascade.classes_``.

    Raises:
        NotFittedError: if the cascade is not fitted.
        StageOutputError: if a stage returns invalid probabilities.

    Examples:
        >>> from sklearn.datasets import load_iris
        >>> from sklearn.naive_bayes import GaussianNB
        >>> from sklearn.tree import DecisionTreeClassifier
        >>> X, y = load_iris(return_X_y=True)
        >>> cascade = CascadeClassifier(
        ...     [("nb", GaussianNB()), ("tree", DecisionTreeClassifier(random_state=0))]
        ... ).fit(X, y)
        >>> stage_probabilities(cascade, X[:5]).shape
        (2, 5, 3)
    """
    if not hasattr(cascade, "stages_"):
        msg = (
            f"this {type(cascade).__name__} is not fitted yet; call fit before stage_probabilities"
        )
        raise NotFittedError(msg)
    classes = cascade.classes_
    names = tuple(cascade.named_stages_.keys())
    n_samples = _num_samples(X)
    size = batch_size if batch_size is not None else cascade.batch_size
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        msg = f"batch_size must be a positive integer or None, got {size!r}"
        raise PolicyError(msg)
    step = max(n_samples, 1) if size is None else size
    out = np.empty((len(cascade.stages_), n_samples, len(classes)), dtype=np.float64)
    for s, stage in enumerate(cascade.stages_):
        columns = _column_map(stage.classes_, classes)
        for start in range(0, n_samples, step):
            rows = np.arange(start, min(start + step, n_samples), dtype=np.intp)
            proba = check_stage_proba(
                stage.predict_proba(_take(X, rows)),
                n_samples=rows.size,
                n_classes=len(classes),
                stage_name=names[s],
            )
            out[s, rows] = proba[:, columns]
    return out


# --------------------------------------------------------------------------- scoring
class _PredictionView(ClassifierMixin, BaseEstimator):
    """A stand-in estimator whose ``predict``/``predict_proba`` look up fixed arrays.

    scikit-learn scorers call ``scorer(estimator, X, y)``; passing sample indices as ``X``
    lets any scorer read precomputed predictions without a model call.
    """

    def __init__(self, classes: LabelArray, labels: LabelArray, proba: FloatArray) -> None:
        self.classes = classes
        self.labels = labels
        self.proba = proba

    @property
    def classes_(self) -> LabelArray:
        """The class labels."""
        return self.classes

    def predict(self, X: Any) -> LabelArray:
        """The fixed labels of samples ``X`` (indices)."""
        return np.asarray(self.labels[np.asarray(X, dtype=np.intp)])

    def predict_proba(self, X: Any) -> FloatArray:
        """The fixed probabilities of samples ``X`` (indices)."""
        return np.asarray(self.proba[np.asarray(X, dtype=np.intp)], dtype=np.float64)


def _resolve_scoring(scoring: Scoring) -> tuple[str, Callable[..., float] | None]:
    """Return a display name and a scorer (``None`` for the vectorised accuracy path)."""
    if scoring is None or (isinstance(scoring, str) and scoring == "accuracy"):
        return "accuracy", None
    if isinstance(scoring, str):
        try:
            return scoring, get_scorer(scoring)
        except ValueError as exc:
            msg = f"scoring must be None, a scikit-learn scorer name or callable, got {scoring!r}"
            raise PolicyError(msg) from exc
    if callable(scoring):
        return getattr(scoring, "__name__", repr(scoring)), scoring
    msg = f"scoring must be None, a scikit-learn scorer name or callable, got {scoring!r}"
    raise PolicyError(msg)


def _reads_labels_only(scorer: Callable[..., float] | None) -> bool:
    """Whether a scikit-learn scorer reads only ``predict`` and takes ``sample_weight``."""
    if scorer is None or getattr(scorer, "_response_method", None) != "predict":
        return False
    score_func = getattr(scorer, "_score_func", None)
    if score_func is None:
        return False
    try:
        return "sample_weight" in inspect.signature(score_func).parameters
    except (TypeError, ValueError):
        return False


def _is_neg_log_loss(scorer: Callable[..., float] | None) -> bool:
    """Whether ``scorer`` is scikit-learn's plain ``neg_log_loss`` scorer."""
    return (
        scorer is not None
        and getattr(scorer, "_score_func", None) is log_loss
        and getattr(scorer, "_sign", None) == -1
        and not getattr(scorer, "_kwargs", None)
        and getattr(scorer, "_response_method", None) == "predict_proba"
    )


def _per_sample_scores(
    exit_proba: FloatArray,
    exit_pred: IntArray,
    y_idx: IntArray,
    scorer: Callable[..., float] | None,
) -> FloatArray | None:
    """Each sample's share of the score at each exit stage, when the score is a mean of them.

    Accuracy (``scorer=None``) is the mean of 0/1 hits; scikit-learn's ``neg_log_loss`` is the
    mean of the log of the true class's probability, clipped to ``[eps, 1 - eps]`` exactly as
    :func:`sklearn.metrics.log_loss` clips it. For such scores a threshold sweep is a few
    cumulative sums instead of one scorer call per candidate. Returns an array of shape
    (n_stages, n_samples), or ``None`` for any other scorer.
    """
    if scorer is None:
        hits: FloatArray = (exit_pred == y_idx[None, :]).astype(np.float64)
        return hits
    if _is_neg_log_loss(scorer):
        eps = np.finfo(np.float64).eps
        cols = np.arange(y_idx.size)
        true_proba = exit_proba[:, cols, y_idx].astype(np.float64)
        return np.asarray(np.log(np.clip(true_proba, eps, 1 - eps)), dtype=np.float64)
    return None


def single_stage_scores(
    stage_proba: FloatArray, y: Any, *, classes: Any, scoring: Scoring = None
) -> FloatArray:
    """Score each stage used alone on cached probabilities.

    Args:
        stage_proba: array of shape (n_stages, n_samples, n_classes).
        y: array-like of shape (n_samples,), true labels.
        classes: array-like of shape (n_classes,), the labels of the columns.
        scoring: see [`Scoring`][cascademl.tuning.Scoring].

    Returns:
        ndarray of shape (n_stages,).

    Examples:
        >>> import numpy as np
        >>> proba = np.array([[[0.9, 0.1], [0.8, 0.2]], [[0.9, 0.1], [0.3, 0.7]]])
        >>> single_stage_scores(proba, ["a", "b"], classes=["a", "b"]).tolist()
        [0.5, 1.0]
    """
    p = np.asarray(stage_proba, dtype=np.float64)
    labels = np.asarray(classes)
    y_idx = label_indices(y, labels)
    _, scorer = _resolve_scoring(scoring)
    out = np.empty(p.shape[0], dtype=np.float64)
    for s in range(p.shape[0]):
        pred = np.argmax(p[s], axis=1)
        if scorer is None:
            out[s] = float(np.mean(pred == y_idx)) if y_idx.size else 0.0
        else:
            view = _PredictionView(labels, labels[pred], p[s])
            out[s] = float(scorer(view, np.arange(y_idx.size), labels[y_idx]))
    return out


def order_by_accuracy(stage_proba: FloatArray, y: Any, *, classes: Any) -> tuple[int, ...]:
    """Order stages by validation accuracy, least accurate first (the paper's order).

    Ties keep the original order.

    Examples:
        >>> import numpy as np
        >>> proba = np.array([[[0.1, 0.9]], [[0.9, 0.1]]])
        >>> order_by_accuracy(proba, ["a"], classes=["a", "b"])
        (0, 1)
    """
    scores = single_stage_scores(stage_proba, y, classes=classes)
    return tuple(int(i) for i in np.argsort(scores, kind="stable"))


def order_by_cost(stage_cost: Sequence[float]) -> tuple[int, ...]:
    """Order stages by cost per sample, cheapest first; ties keep the original order.

    Examples:
        >>> order_by_cost([5.0, 1.0, 3.0])
        (1, 2, 0)
    """
    return tuple(int(i) for i in np.argsort(np.asarray(stage_cost, float), kind="stable"))


# --------------------------------------------------------------------------- the search
class _Problem:
    """Cached arrays for fast evaluation of threshold vectors on one stage order."""

    def __init__(
        self,
        stage_proba: FloatArray,
        y_idx: IntArray,
        classes: LabelArray,
        costs: FloatArray,
        *,
        measure: ConfidenceMeasure,
        combine: CombineMethod,
        escalation_weight: float | Sequence[float],
        scorer: Callable[..., float] | None,
        n_candidates: int,
    ) -> None:
        n_stages, n_samples, _ = stage_proba.shape
        self.n_stages = n_stages
        self.n_samples = n_samples
        self.classes = classes
        self.y_idx = y_idx
        self.scorer = scorer
        self.pairs_only = _reads_labels_only(scorer)
        self.conf = np.stack([confidence_scores(p, measure) for p in stage_proba])
        self.cum_cost = np.cumsum(costs)
        # Final probabilities if a sample exits at stage e (visiting stages 0..e).
        visited_upto = np.arange(n_stages)[:, None] <= np.arange(n_stages)[None, :]
        self.exit_proba = np.stack(
            [
                _combine_at_exit(stage_proba, visited_upto[:, e], e, combine, escalation_weight)
                for e in range(n_stages)
            ]
        )
        self.exit_pred = np.argmax(self.exit_proba, axis=2)
        # Accuracy or log-loss: a mean of per-sample values, swept with cumulative sums.
        self.exit_value = _per_sample_scores(self.exit_proba, self.exit_pred, y_idx, scorer)
        self.candidates = [_candidates(self.conf[s], n_candidates) for s in range(n_stages - 1)]
        self.n_evaluations = 0
        self._sweeps: dict[tuple[int, ...], tuple[FloatArray, FloatArray]] = {}
        self._pair_cache: dict[bytes, float] = {}

    def thresholds(self, idx: IntArray | Sequence[int]) -> tuple[float, ...]:
        return tuple(float(self.candidates[s][i]) for s, i in enumerate(idx))

    def exit_stages(self, thresholds: Sequence[float]) -> IntArray:
        """Exit stage of each sample under ``thresholds`` (one per non-final stage)."""
        exit_stage = np.full(self.n_samples, self.n_stages - 1, dtype=np.intp)
        pending = np.ones(self.n_samples, dtype=bool)
        for s in range(self.n_stages - 1):
            done = exit_mask(self.conf[s], thresholds[s], is_last=False) & pending
            exit_stage[done] = s
            pending &= ~done
        return exit_stage

    def evaluate(self, exit_stage: IntArray) -> tuple[float, float]:
        self.n_evaluations += 1
        if self.n_samples == 0:
            return 0.0, 0.0
        cols = np.arange(self.n_samples)
        cost = float(self.cum_cost[exit_stage].mean())
        if self.exit_value is not None:
            return float(self.exit_value[exit_stage, cols].mean()), cost
        view = _PredictionView(
            self.classes,
            self.classes[self.exit_pred[exit_stage, cols]],
            self.exit_proba[exit_stage, cols],
        )
        scorer = cast("Callable[..., float]", self.scorer)  # exit_value is None: a scorer
        return float(scorer(view, cols, self.classes[self.y_idx])), cost

    def sweep(self, s: int, idx: IntArray | Sequence[int]) -> tuple[FloatArray, FloatArray]:
        """Scores and costs of every candidate threshold of stage ``s``, the others fixed."""
        key = (s, *(int(i) if j != s else -1 for j, i in enumerate(idx)))
        if key not in self._sweeps:
            self._sweeps[key] = self._sweep(s, idx)
        return self._sweeps[key]

    def _sweep(self, s: int, idx: IntArray | Sequence[int]) -> tuple[FloatArray, FloatArray]:
        cands = self.candidates[s]
        t = list(self.thresholds(idx))
        t[s] = math.inf  # stage s exits nobody: gives the exits before and after s
        base = self.exit_stages(t)
        before = base < s
        if self.exit_value is None and not self.pairs_only:
            scores = np.empty(cands.size)
            costs = np.empty(cands.size)
            for j, c in enumerate(cands):
                exit_stage = np.where(
                    ~before & exit_mask(self.conf[s], float(c), is_last=False), s, base
                )
                scores[j], costs[j] = self.evaluate(exit_stage)
            return scores, costs
        self.n_evaluations += cands.size
        if self.n_samples == 0:
            return np.zeros(cands.size), np.zeros(cands.size)
        cols = np.arange(self.n_samples)
        rest = np.flatnonzero(~before)
        order = rest[np.argsort(self.conf[s, rest], kind="stable")]
        # Candidates ascend, so k ascends: the k least confident samples escalate (their
        # confidence is below the threshold), the other m - k exit at stage s.
        k = np.searchsorted(self.conf[s, order], cands, side="left")
        m = order.size
        esc_cost = np.concatenate([[0.0], np.cumsum(self.cum_cost[base[order]])])
        cost = self.cum_cost[base[before]].sum() + esc_cost[k] + (m - k) * self.cum_cost[s]
        if self.exit_value is not None:
            value = self.exit_value
            fixed = value[base[before], cols[before]].sum()
            escalated = np.concatenate([[0.0], np.cumsum(value[base[order], order])])
            here = np.concatenate([[0.0], np.cumsum(value[s, order])])
            total = fixed + escalated[k] + (here[m] - here[k])
            return total / self.n_samples, cost / self.n_samples
        return self._pair_scores(s, base, before, order, k), cost / self.n_samples

    def _pair_scores(
        self, s: int, base: IntArray, before: BoolArray, order: IntArray, k: IntArray
    ) -> FloatArray:
        """Scores of label-only scorers from (true, predicted) pair counts per candidate.

        A scorer that reads only ``predict`` depends on the multiset of (true, predicted)
        pairs, so each candidate is scored on at most ``n_classes**2`` weighted pairs.
        """
        n_classes = self.classes.size
        n_pairs = n_classes * n_classes
        y = self.y_idx
        fixed_codes = y[before] * n_classes + self.exit_pred[base[before], np.flatnonzero(before)]
        fixed = np.bincount(fixed_codes, minlength=n_pairs)
        # Position i of ``order`` is below k[j] exactly for j >= segment[i].
        segment = np.searchsorted(k, np.arange(order.size), side="right")
        n_seg = k.size + 1

        def prefix(codes: IntArray) -> IntArray:
            counts = np.bincount(segment * n_pairs + codes, minlength=n_seg * n_pairs)
            return np.cumsum(counts.reshape(n_seg, n_pairs), axis=0)[: k.size]

        esc = prefix(y[order] * n_classes + self.exit_pred[base[order], order])
        here = prefix(y[order] * n_classes + self.exit_pred[s, order])
        here_total = np.bincount(y[order] * n_classes + self.exit_pred[s, order], minlength=n_pairs)
        counts = fixed[None, :] + esc + (here_total[None, :] - here)
        scores = np.empty(k.size)
        scorer = cast("Callable[..., float]", self.scorer)
        for j in range(k.size):
            key = counts[j].tobytes()
            if key not in self._pair_cache:
                codes = np.flatnonzero(counts[j])
                view = _PredictionView(
                    self.classes, self.classes[codes % n_classes], np.empty((0, n_classes))
                )
                # The inputs are built here and valid: skip sklearn's per-call checks.
                with config_context(skip_parameter_validation=True):
                    self._pair_cache[key] = float(
                        scorer(
                            view,
                            np.arange(codes.size),
                            self.classes[codes // n_classes],
                            sample_weight=counts[j, codes],
                        )
                    )
            scores[j] = self._pair_cache[key]
        return scores


def _candidates(conf: FloatArray, n_candidates: int) -> FloatArray:
    """Candidate thresholds: 0, midpoints below quantiles of ``conf``, and infinity.

    Midpoints between consecutive distinct confidences, never a confidence itself, keep a
    sample's side of a threshold stable under rounding of its probabilities.
    """
    values = np.unique(conf)
    if values.size == 0:
        return np.array([0.0, math.inf])
    picks = np.unique(np.round(np.linspace(0, values.size - 1, n_candidates)).astype(np.intp))
    picks = picks[picks > 0]
    midpoints = (values[picks - 1] + values[picks]) / 2.0
    return np.unique(np.concatenate([[0.0, math.inf], midpoints]))


def _combine_at_exit(
    stage_proba: FloatArray,
    visited_column: BoolArray,
    exit_at: int,
    combine: CombineMethod,
    escalation_weight: float | Sequence[float],
) -> FloatArray:
    n_samples = stage_proba.shape[1]
    visited = np.repeat(visited_column[:, None], n_samples, axis=1)
    exit_stage = np.full(n_samples, exit_at, dtype=np.intp)
    return combine_votes(
        stage_proba, visited, exit_stage, method=combine, escalation_weight=escalation_weight
    )


# Keys: larger tuples are better; compared lexicographically.
_KeyFn: TypeAlias = Callable[[FloatArray, FloatArray], tuple[FloatArray, ...]]


def _feasible_cost(costs: FloatArray, budget: float) -> BoolArray:
    return np.asarray(costs <= budget * (1 + _COST_RTOL) + _COST_RTOL, dtype=bool)


def _key_max_score() -> _KeyFn:
    return lambda scores, costs: (scores, -costs)


def _key_lagrangian(lam: float) -> _KeyFn:
    return lambda scores, costs: (scores - lam * costs, scores, -costs)


def _key_budget(budget: float) -> _KeyFn:
    def key(scores: FloatArray, costs: FloatArray) -> tuple[FloatArray, ...]:
        ok = _feasible_cost(costs, budget)
        return ok.astype(float), np.where(ok, scores, -costs), np.where(ok, -costs, scores)

    return key


def _key_target(target: float) -> _KeyFn:
    def key(scores: FloatArray, costs: FloatArray) -> tuple[FloatArray, ...]:
        ok = scores >= target
        return ok.astype(float), np.where(ok, -costs, scores), np.where(ok, scores, -costs)

    return key


def _best(keys: tuple[FloatArray, ...], current: int) -> int:
    best = int(np.lexsort(keys[::-1])[-1])
    best_key = tuple(float(k[best]) for k in keys)
    current_key = tuple(float(k[current]) for k in keys)
    return current if current_key >= best_key else best


class _Archive:
    """Every configuration scored, as candidate-index rows with their score and cost."""

    def __init__(self) -> None:
        self.rows: list[IntArray] = []
        self.scores: list[FloatArray] = []
        self.costs: list[FloatArray] = []

    def add(self, idx: IntArray, scores: FloatArray, costs: FloatArray) -> None:
        self.rows.append(idx)
        self.scores.append(scores)
        self.costs.append(costs)

    def arrays(self) -> tuple[IntArray, FloatArray, FloatArray]:
        rows = np.concatenate(self.rows)
        scores = np.concatenate(self.scores)
        costs = np.concatenate(self.costs)
        rows, first = np.unique(rows, axis=0, return_index=True)
        return rows, scores[first], costs[first]


def _descend(problem: _Problem, start: IntArray, key: _KeyFn, archive: _Archive) -> IntArray:
    idx = start.copy()
    for _ in range(_MAX_SWEEPS):
        changed = False
        for s in range(problem.n_stages - 1):
            scores, costs = problem.sweep(s, idx)
            rows = np.repeat(idx[None, :], scores.size, axis=0)
            rows[:, s] = np.arange(scores.size)
            archive.add(rows, scores, costs)
            new = _best(key(scores, costs), int(idx[s]))
            if new != idx[s]:
                idx[s] = new
                changed = True
        if not changed:
            break
    return idx


def _pareto(scores: FloatArray, costs: FloatArray) -> IntArray:
    """Indices of the non-dominated points, by increasing cost and strictly rising score."""
    order = np.lexsort((-scores, costs))
    keep: list[int] = []
    best = -math.inf
    for i in order.tolist():
        if scores[i] > best:
            keep.append(i)
            best = float(scores[i])
    return np.array(keep, dtype=np.intp)


def _validate_inputs(
    stage_proba: Any,
    y: Any,
    classes: Any,
    stage_cost: Sequence[float] | None,
    n_candidates: int,
) -> tuple[FloatArray, IntArray, LabelArray, FloatArray]:
    p = np.asarray(stage_proba, dtype=np.float64)
    if p.ndim != 3:  # noqa: PLR2004 - (n_stages, n_samples, n_classes)
        msg = f"stage_proba must have shape (n_stages, n_samples, n_classes), got {p.shape}"
        raise PolicyError(msg)
    labels = np.asarray(classes)
    if labels.shape != (p.shape[2],):
        msg = f"classes must hold {p.shape[2]} labels (one per column), got shape {labels.shape}"
        raise PolicyError(msg)
    if not np.all(np.isfinite(p)):
        msg = "stage_proba holds NaN or infinite values; compute it with stage_probabilities"
        raise PolicyError(msg)
    y_idx = label_indices(y, labels)
    if y_idx.size != p.shape[1]:
        msg = f"y has {y_idx.size} labels but stage_proba has {p.shape[1]} samples"
        raise PolicyError(msg)
    costs = np.ones(p.shape[0]) if stage_cost is None else np.asarray(stage_cost, float)
    if costs.shape != (p.shape[0],) or not np.all(np.isfinite(costs)) or np.any(costs < 0):
        msg = (
            f"stage_cost must hold {p.shape[0]} finite non-negative numbers (one per "
            f"stage), got {stage_cost!r}"
        )
        raise PolicyError(msg)
    if isinstance(n_candidates, bool) or not isinstance(n_candidates, int) or n_candidates < 2:  # noqa: PLR2004
        msg = f"n_candidates must be an integer >= 2, got {n_candidates!r}"
        raise PolicyError(msg)
    return p, y_idx, labels, costs


def _check_constraints(max_cost: float | None, min_score: MinScore | None) -> None:
    if max_cost is not None and min_score is not None:
        msg = (
            "give max_cost (maximise the score under a cost budget) or min_score "
            "(minimise the cost for a score target), not both"
        )
        raise PolicyError(msg)
    if max_cost is not None and (
        isinstance(max_cost, bool)
        or not isinstance(max_cost, numbers.Real)
        or not math.isfinite(float(max_cost))
        or max_cost < 0
    ):
        msg = f"max_cost must be a finite number >= 0 or None, got {max_cost!r}"
        raise PolicyError(msg)
    if (
        min_score is not None
        and min_score != "best_stage"
        and (
            isinstance(min_score, bool)
            or not isinstance(min_score, numbers.Real)
            or math.isnan(float(min_score))
        )
    ):
        msg = f"min_score must be a number, 'best_stage' or None, got {min_score!r}"
        raise PolicyError(msg)


def _lambdas(costs: FloatArray, n_lambdas: int) -> list[float]:
    span = float(costs.sum() - costs[0])
    if span <= 0 or n_lambdas <= 0:
        return [0.0]
    return [0.0, *(np.geomspace(1e-3, 10.0, n_lambdas) / span).tolist()]


def _explore(problem: _Problem, costs: FloatArray, n_lambdas: int) -> _Archive:
    """Search the grid for good trade-offs; every configuration scored is archived."""
    archive = _Archive()
    n_free = problem.n_stages - 1
    # Trace the frontier: penalised descents, warm-started from the most expensive policy.
    idx = np.array([problem.candidates[s].size - 1 for s in range(n_free)], dtype=np.intp)
    for lam in _lambdas(costs, n_lambdas):
        idx = _descend(problem, idx, _key_lagrangian(lam), archive)
    # Small problems: sweep the last free stage for every combination of the others, which
    # is exhaustive over the candidate grid (two or three stages, with default settings).
    sizes = [problem.candidates[s].size for s in range(n_free - 1)]
    if math.prod(sizes) <= _EXHAUSTIVE_SWEEPS:
        for head in itertools.product(*(range(n) for n in sizes)):
            row = np.array([*head, 0], dtype=np.intp)
            scores_s, costs_s = problem.sweep(n_free - 1, row)
            rows_s = np.repeat(row[None, :], scores_s.size, axis=0)
            rows_s[:, -1] = np.arange(scores_s.size)
            archive.add(rows_s, scores_s, costs_s)
    # Penalties only reach the convex hull of the frontier; budget-constrained descents
    # at evenly spaced budgets fill in the points between.
    rows, scores, costs_seen = archive.arrays()
    for budget in np.linspace(costs_seen.min(), costs_seen.max(), n_lambdas + 2)[1:-1]:
        budget_key = _key_budget(float(budget))
        start = int(np.lexsort(budget_key(scores, costs_seen)[::-1])[-1])
        _descend(problem, rows[start], budget_key, archive)
    return archive


def _tune_one(
    p: FloatArray,
    y_idx: IntArray,
    labels: LabelArray,
    costs: FloatArray,
    *,
    names: tuple[str, ...],
    order: tuple[int, ...],
    n_stages: int,
    measure: ConfidenceMeasure,
    combine: CombineMethod,
    escalation_weight: float | Sequence[float],
    scoring: Scoring,
    max_cost: float | None,
    min_score: MinScore | None,
    n_candidates: int,
    n_lambdas: int,
) -> TuningResult:
    score_name, scorer = _resolve_scoring(scoring)
    stage_scores = single_stage_scores(p, labels[y_idx], classes=labels, scoring=scoring)
    target: float | None = None
    if min_score == "best_stage":
        target = float(stage_scores.max())
    elif min_score is not None:
        target = float(min_score)
    key, objective = _objective(max_cost, target)
    problem = _Problem(
        p,
        y_idx,
        labels,
        costs,
        measure=measure,
        combine=combine,
        escalation_weight=escalation_weight,
        scorer=scorer,
        n_candidates=n_candidates,
    )
    if p.shape[0] == 1:
        # One stage: nothing to tune; every sample ends at that stage.
        score, cost = problem.evaluate(np.zeros(problem.n_samples, dtype=np.intp))
        return TuningResult(
            policy=ConfidencePolicy(measure, 0.0),
            score=score,
            mean_cost=cost,
            frontier=(FrontierPoint((), score, cost),),
            chosen_index=0,
            feasible=_is_feasible(score, cost, max_cost, target),
            stage_names=names,
            order=order,
            stage_cost=(float(costs[0]),),
            stage_scores=(float(stage_scores[0]),),
            scoring=score_name,
            objective=objective,
            n_evaluations=problem.n_evaluations,
            n_stages=n_stages,
        )
    archive = _explore(problem, costs, n_lambdas)
    # Refine on the real objective, from the best archived points.
    rows, scores, costs_seen = archive.arrays()
    ranking = np.lexsort(key(scores, costs_seen)[::-1])[::-1][:3]
    for r in ranking.tolist():
        _descend(problem, rows[r], key, archive)
    rows, scores, costs_seen = archive.arrays()
    best = int(np.lexsort(key(scores, costs_seen)[::-1])[-1])
    feasible = _is_feasible(float(scores[best]), float(costs_seen[best]), max_cost, target)
    front = _pareto(scores, costs_seen)
    # The chosen point is non-dominated by construction of the keys; among configurations
    # with the same score and cost, report the chosen one's thresholds.
    same = (scores[front] == scores[best]) & (costs_seen[front] == costs_seen[best])
    chosen = int(np.flatnonzero(same)[0])
    front[chosen] = best
    points = tuple(
        FrontierPoint(problem.thresholds(rows[i]), float(scores[i]), float(costs_seen[i]))
        for i in front.tolist()
    )
    return TuningResult(
        policy=ConfidencePolicy(measure, points[chosen].thresholds),
        score=points[chosen].score,
        mean_cost=points[chosen].mean_cost,
        frontier=points,
        chosen_index=chosen,
        feasible=feasible,
        stage_names=names,
        order=order,
        stage_cost=tuple(float(c) for c in costs),
        stage_scores=tuple(float(s) for s in stage_scores),
        scoring=score_name,
        objective=objective,
        n_evaluations=problem.n_evaluations,
        n_stages=n_stages,
    )


def _objective(max_cost: float | None, target: float | None) -> tuple[_KeyFn, str]:
    """The ranking key of the tuning objective, and its name."""
    if max_cost is not None:
        return _key_budget(float(max_cost)), "max_score_under_budget"
    if target is not None:
        return _key_target(target), "min_cost_for_score"
    return _key_max_score(), "max_score"


def _is_feasible(score: float, cost: float, max_cost: float | None, target: float | None) -> bool:
    if max_cost is not None:
        return bool(_feasible_cost(np.array([cost]), float(max_cost))[0])
    if target is not None:
        return score >= target
    return True


def _infeasible_error(result: TuningResult, max_cost: float | None, min_score: object) -> None:
    costs, scores = result.frontier_arrays()
    if max_cost is not None:
        msg = (
            f"no thresholds meet max_cost={max_cost!r}: the cheapest policy found costs "
            f"{costs.min():.6g} per sample (the first stage alone costs "
            f"{result.stage_cost[0]:.6g})"
        )
    else:
        msg = (
            f"no thresholds reach min_score={min_score!r} ({result.scoring}); the best "
            f"found is {scores.max():.6g}"
        )
    raise PolicyError(msg)


def tune_thresholds(
    stage_proba: Any,
    y: Any,
    *,
    classes: Any,
    stage_cost: Sequence[float] | None = None,
    measure: ConfidenceMeasure = "max_proba",
    combine: CombineMethod = "vote",
    escalation_weight: float | Sequence[float] = 0.5,
    max_cost: float | None = None,
    min_score: MinScore | None = None,
    scoring: Scoring = None,
    n_candidates: int = 64,
    n_lambdas: int = 12,
    stage_names: Sequence[str] | None = None,
) -> TuningResult:
    """Choose per-stage thresholds from cached validation probabilities.

    With ``max_cost``, maximise the score subject to a mean cost per sample of at most
    ``max_cost``; with ``min_score``, minimise the mean cost subject to a score of at least
    ``min_score`` (``"best_stage"``: no worse than the best stage alone); with neither,
    maximise the score (the cheapest such policy). Ties go to the cheaper policy.

    Args:
        stage_proba: array of shape (n_stages, n_samples, n_classes) from
            [`stage_probabilities`][cascademl.tuning.stage_probabilities] on a validation
            split.
        y: array-like of shape (n_samples,), the validation labels.
        classes: array-like of shape (n_classes,), the labels of the columns.
        stage_cost: the cost of one sample at each stage (FLOPs, seconds, any unit); a
            sample pays for every stage it visits. Defaults to 1 per stage call.
        measure: the confidence measure of the policy.
        combine: the cascade's combiner (``"vote"``, ``"last"`` or ``"mean"``).
        escalation_weight: the cascade's escalation weight(s) for ``"vote"``.
        max_cost: the mean-cost budget per sample.
        min_score: the score target, or ``"best_stage"``.
        scoring: see [`Scoring`][cascademl.tuning.Scoring]; accuracy by default.
        n_candidates: candidate thresholds per stage (at quantiles of its confidence).
        n_lambdas: cost penalties used to trace the frontier.
        stage_names: names for the report; ``stage0``, ``stage1``... by default.

    Returns:
        The chosen policy with the frontier; the result is the same for the same input.

    Raises:
        PolicyError: for invalid inputs, or when no policy meets the constraint (the
            message gives the best that was found).

    Examples:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 2, 200)
        >>> noisy = np.where(rng.random(200) < 0.3, 1 - y, y)  # a weak first stage
        >>> weak = np.eye(2)[noisy] * 0.4 + 0.3
        >>> strong = np.eye(2)[y] * 0.8 + 0.1
        >>> result = tune_thresholds(
        ...     np.stack([weak, strong]), y, classes=[0, 1], stage_cost=[1.0, 10.0],
        ...     combine="last", max_cost=11.0,
        ... )
        >>> result.score, result.mean_cost
        (1.0, 11.0)
        >>> cheap = tune_thresholds(
        ...     np.stack([weak, strong]), y, classes=[0, 1], stage_cost=[1.0, 10.0],
        ...     combine="last", max_cost=5.0,
        ... )
        >>> cheap.mean_cost <= 5.0
        True
    """
    _check_constraints(max_cost, min_score)
    p, y_idx, labels, costs = _validate_inputs(stage_proba, y, classes, stage_cost, n_candidates)
    names = _names(stage_names, p.shape[0])
    result = _tune_one(
        p,
        y_idx,
        labels,
        costs,
        names=names,
        order=tuple(range(p.shape[0])),
        n_stages=p.shape[0],
        measure=measure,
        combine=combine,
        escalation_weight=escalation_weight,
        scoring=scoring,
        max_cost=max_cost,
        min_score=min_score,
        n_candidates=n_candidates,
        n_lambdas=n_lambdas,
    )
    if not result.feasible:
        _infeasible_error(result, max_cost, min_score)
    return result


def score_thresholds(
    stage_proba: Any,
    y: Any,
    thresholds: Sequence[float],
    *,
    classes: Any,
    stage_cost: Sequence[float] | None = None,
    measure: ConfidenceMeasure = "max_proba",
    combine: CombineMethod = "vote",
    escalation_weight: float | Sequence[float] = 0.5,
    scoring: Scoring = None,
) -> FrontierPoint:
    """Score given thresholds on cached probabilities, without calling the models.

    Use it to score tuned thresholds on held-out probabilities (another fold of the
    validation data), or to read a frontier tuned for one score (say ``"neg_log_loss"``)
    in another (accuracy). The routing is the cascade's own: a sample stops at the first
    stage whose confidence reaches that stage's threshold, and its final probabilities
    combine the stages it visited.

    Args:
        stage_proba: array of shape (n_stages, n_samples, n_classes) from
            [`stage_probabilities`][cascademl.tuning.stage_probabilities].
        y: array-like of shape (n_samples,), the true labels.
        thresholds: one threshold per non-final stage (``math.inf``: never stop there),
            as in [`FrontierPoint.thresholds`][cascademl.tuning.FrontierPoint].
        classes: array-like of shape (n_classes,), the labels of the columns.
        stage_cost: the cost of one sample at each stage; defaults to 1 per stage call.
        measure: the confidence measure of the policy.
        combine: the cascade's combiner (``"vote"``, ``"last"`` or ``"mean"``).
        escalation_weight: the cascade's escalation weight(s) for ``"vote"``.
        scoring: see [`Scoring`][cascademl.tuning.Scoring]; accuracy by default.

    Returns:
        The thresholds with their score and mean cost per sample.

    Raises:
        PolicyError: for invalid inputs, or a number of thresholds other than
            ``n_stages - 1``.

    Examples:
        >>> import numpy as np
        >>> weak = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
        >>> strong = np.array([[0.9, 0.1], [0.1, 0.9], [0.1, 0.9]])
        >>> point = score_thresholds(
        ...     np.stack([weak, strong]), [0, 1, 1], [0.75], classes=[0, 1], stage_cost=[1, 4],
        ...     combine="last",
        ... )
        >>> round(point.score, 3), round(point.mean_cost, 3)  # one sample pays 1 + 4
        (1.0, 2.333)
    """
    p, y_idx, labels, costs = _validate_inputs(stage_proba, y, classes, stage_cost, 2)
    values = tuple(float(t) for t in thresholds)
    if len(values) != p.shape[0] - 1 or any(math.isnan(t) for t in values):
        msg = (
            f"thresholds must hold {p.shape[0] - 1} numbers (one per non-final stage), "
            f"got {list(thresholds)!r}"
        )
        raise PolicyError(msg)
    problem = _Problem(
        p,
        y_idx,
        labels,
        costs,
        measure=measure,
        combine=combine,
        escalation_weight=escalation_weight,
        scorer=_resolve_scoring(scoring)[1],
        n_candidates=2,
    )
    score, cost = problem.evaluate(problem.exit_stages(values))
    return FrontierPoint(values, score, cost)


def _names(stage_names: Sequence[str] | None, n_stages: int) -> tuple[str, ...]:
    if stage_names is None:
        return tuple(f"stage{i}" for i in range(n_stages))
    names = tuple(str(n) for n in stage_names)
    if len(names) != n_stages:
        msg = f"stage_names has {len(names)} names but there are {n_stages} stages"
        raise PolicyError(msg)
    return names


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


def _candidate_orders(
    orders: OrdersArg, p: FloatArray, y: Any, labels: LabelArray, costs: FloatArray
) -> list[tuple[int, ...]]:
    n = p.shape[0]
    if isinstance(orders, str):
        if orders == "all":
            return list(itertools.permutations(range(n)))
        if orders == "auto":
            found = [
                tuple(range(n)),
                order_by_accuracy(p, y, classes=labels),
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


def search_stage_orders(
    stage_proba: Any,
    y: Any,
    *,
    classes: Any,
    orders: OrdersArg = "auto",
    stage_cost: Sequence[float] | None = None,
    measure: ConfidenceMeasure = "max_proba",
    combine: CombineMethod = "vote",
    escalation_weight: float | Sequence[float] = 0.5,
    max_cost: float | None = None,
    min_score: MinScore | None = None,
    scoring: Scoring = None,
    n_candidates: int = 64,
    n_lambdas: int = 12,
    stage_names: Sequence[str] | None = None,
) -> OrderSearchResult:
    """Tune thresholds for several stage orders and report each order's frontier.

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
        measure: see [`tune_thresholds`][cascademl.tuning.tune_thresholds].
        combine: see `tune_thresholds`.
        escalation_weight: a number, or one weight per stage in the original order.
        max_cost: see `tune_thresholds`.
        min_score: see `tune_thresholds`; ``"best_stage"`` is the same target for every order.
        scoring: see `tune_thresholds`.
        n_candidates: see `tune_thresholds`.
        n_lambdas: see `tune_thresholds`.
        stage_names: names in the original order.

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
        >>> search = search_stage_orders(
        ...     np.stack([wrong, right]), y, classes=[0, 1], stage_cost=[1.0, 4.0],
        ...     orders="subsets", max_cost=4.0,
        ... )
        >>> [r.order for r in search.results]
        [(0,), (1,), (0, 1)]
        >>> search.best.order, search.best.score, search.best.mean_cost
        ((1,), 1.0, 4.0)
    """
    _check_constraints(max_cost, min_score)
    p, y_idx, labels, costs = _validate_inputs(stage_proba, y, classes, stage_cost, n_candidates)
    names = _names(stage_names, p.shape[0])
    if min_score == "best_stage":
        min_score = float(single_stage_scores(p, y, classes=labels, scoring=scoring).max())
    weights = escalation_weight
    results = []
    for order in _candidate_orders(orders, p, labels[y_idx], labels, costs):
        if isinstance(weights, Sequence) and not isinstance(weights, str):
            weights_o: float | Sequence[float] = [weights[i] for i in order]
        else:
            weights_o = weights
        results.append(
            _tune_one(
                p[list(order)],
                y_idx,
                labels,
                costs[list(order)],
                names=tuple(names[i] for i in order),
                order=order,
                n_stages=p.shape[0],
                measure=measure,
                combine=combine,
                escalation_weight=weights_o,
                scoring=scoring,
                max_cost=max_cost,
                min_score=min_score,
                n_candidates=n_candidates,
                n_lambdas=n_lambdas,
            )
        )
    feasible = [i for i, r in enumerate(results) if r.feasible]
    if not feasible:
        # Report the candidate that came closest: the cheapest, or the best scoring.
        if max_cost is not None:
            closest = min(results, key=lambda r: r.frontier[0].mean_cost)
        else:
            closest = max(results, key=lambda r: r.frontier[-1].score)
        _infeasible_error(closest, max_cost, min_score)
    if min_score is not None:
        best = min(feasible, key=lambda i: (results[i].mean_cost, -results[i].score, i))
    else:
        best = min(feasible, key=lambda i: (-results[i].score, results[i].mean_cost, i))
    return OrderSearchResult(results=tuple(results), best_index=best)


# --------------------------------------------------------------------------- cascades
def _cascade_costs(cascade: CascadeClassifier, stage_cost: Sequence[float] | None) -> list[float]:
    if stage_cost is not None:
        return [float(c) for c in stage_cost]
    return [_stage_cost(s) for s in cascade.stages_]


def tune_cascade(
    cascade: CascadeClassifier,
    X_val: Any,
    y_val: Any,
    *,
    max_cost: float | None = None,
    min_score: MinScore | None = None,
    scoring: Scoring = None,
    stage_cost: Sequence[float] | None = None,
    n_candidates: int = 64,
    n_lambdas: int = 12,
) -> TuningResult:
    """Tune a fitted cascade's thresholds on a validation split (one model call per stage).

    The measure, combiner and escalation weights are the cascade's; only the thresholds
    are tuned. Apply the result with [`apply_tuning`][cascademl.tuning.apply_tuning] or
    ``cascade.set_params(policy=result.policy)``.

    Args:
        cascade: a fitted cascade.
        X_val: validation inputs (never the test split).
        y_val: validation labels.
        max_cost: see [`tune_thresholds`][cascademl.tuning.tune_thresholds].
        min_score: see `tune_thresholds`.
        scoring: see `tune_thresholds`.
        stage_cost: cost per sample of each stage; defaults to each stage's
            ``cost_per_sample`` (1 per stage call when it has none).
        n_candidates: see `tune_thresholds`.
        n_lambdas: see `tune_thresholds`.

    Returns:
        The tuning result.

    Raises:
        NotFittedError: if the cascade is not fitted.
        PolicyError: see `tune_thresholds`.
    """
    proba = stage_probabilities(cascade, X_val)
    return tune_thresholds(
        proba,
        y_val,
        classes=cascade.classes_,
        stage_cost=_cascade_costs(cascade, stage_cost),
        measure=cascade.policy_.measure,
        combine=cascade.combine,
        escalation_weight=cascade.escalation_weight,
        max_cost=max_cost,
        min_score=min_score,
        scoring=scoring,
        n_candidates=n_candidates,
        n_lambdas=n_lambdas,
        stage_names=tuple(cascade.named_stages_.keys()),
    )


def search_orders(
    cascade: CascadeClassifier,
    X_val: Any,
    y_val: Any,
    *,
    orders: OrdersArg = "auto",
    max_cost: float | None = None,
    min_score: MinScore | None = None,
    scoring: Scoring = None,
    stage_cost: Sequence[float] | None = None,
    n_candidates: int = 64,
    n_lambdas: int = 12,
) -> OrderSearchResult:
    """Like [`tune_cascade`][cascademl.tuning.tune_cascade], over several stage orders.

    See [`search_stage_orders`][cascademl.tuning.search_stage_orders] for ``orders``:
    ``orders="subsets"`` also tries every sub-sequence of the stages, so that
    [`apply_tuning`][cascademl.tuning.apply_tuning] can drop the stages that do not pay.
    """
    proba = stage_probabilities(cascade, X_val)
    return search_stage_orders(
        proba,
        y_val,
        classes=cascade.classes_,
        orders=orders,
        stage_cost=_cascade_costs(cascade, stage_cost),
        measure=cascade.policy_.measure,
        combine=cascade.combine,
        escalation_weight=cascade.escalation_weight,
        max_cost=max_cost,
        min_score=min_score,
        scoring=scoring,
        n_candidates=n_candidates,
        n_lambdas=n_lambdas,
        stage_names=tuple(cascade.named_stages_.keys()),
    )


def _frozen_stage(stage: Any) -> Any:
    """Return a stage that a new cascade's ``fit`` adopts as it is, without retraining."""
    if isinstance(stage, SklearnStage):
        fitted = stage.estimator_ if hasattr(stage, "estimator_") else stage.estimator
        return SklearnStage(fitted, cost_per_sample=stage.cost_per_sample)
    return stage


def apply_tuning(
    cascade: CascadeClassifier,
    result: TuningResult | OrderSearchResult,
    X: Any,
    y: Any,
) -> CascadeClassifier:
    """Return a new fitted cascade with the tuned stage order and policy.

    The new cascade holds the stages of the tuned order only, in that order, under their
    names: a result for a sub-sequence of the stages (from ``orders="subsets"``) drops the
    others, and a per-stage ``escalation_weight`` keeps the weights of the stages kept.
    The trained stages are reused, never retrained: ``X`` and ``y`` (for example the
    validation split) only let ``fit`` check the classes and the number of features.

    Args:
        cascade: the fitted cascade that was tuned.
        result: a tuning result (an order search contributes its best order).
        X: inputs accepted by the stages.
        y: their labels.

    Returns:
        A fitted cascade; ``cascade`` is left unchanged.

    Raises:
        NotFittedError: if the cascade is not fitted.
        PolicyError: if the result's order is empty or holds an index that is repeated or
            not one of the cascade's stages.
    """
    tuned = result.best if isinstance(result, OrderSearchResult) else result
    if not hasattr(cascade, "stages_"):
        msg = f"this {type(cascade).__name__} is not fitted yet; call fit before apply_tuning"
        raise NotFittedError(msg)
    names = list(cascade.named_stages_.keys())
    problem = _order_problem(tuned.order, len(names))
    if problem is None and tuned.n_stages not in (None, len(names)):
        problem = f"it was tuned on {tuned.n_stages} stages"
    if problem is not None:
        msg = (
            f"the result's order {tuned.order!r} does not fit this cascade of {len(names)} "
            f"stages (indices in range({len(names)}), each at most once): {problem}"
        )
        raise PolicyError(msg)
    stages = [(names[i], _frozen_stage(cascade.stages_[i])) for i in tuned.order]
    weights = cascade.escalation_weight
    if isinstance(weights, Sequence) and not isinstance(weights, str):
        weights = [weights[i] for i in tuned.order]
    params = cascade.get_params(deep=False)
    params.update(stages=stages, policy=tuned.policy, escalation_weight=weights)
    return type(cascade)(**params).fit(X, y)
