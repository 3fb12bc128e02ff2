"""Scores of routed predictions, through scikit-learn's public scorer API only.

A score is given as a scorer name, a metric ``f(y_true, y_pred)`` or a scorer
``scorer(estimator, X, y)``. Scorers are called on `_PredictionView`, an estimator whose
``predict``/``predict_proba`` look up precomputed arrays by sample index, so no model runs.
Two names get a vectorised path because the score is a mean of per-sample values
(``"accuracy"`` and ``"neg_log_loss"``), and the names of label-only metrics that take
``sample_weight`` (``"f1_macro"``, ``"balanced_accuracy"``...) are scored from weighted
counts of (true, predicted) pairs. Callables are never inspected beyond their signature.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from sklearn import config_context
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import get_scorer, get_scorer_names

from cascademl._labels import label_indices
from cascademl._typing import FloatArray, IntArray, LabelArray
from cascademl.exceptions import PolicyError
from cascademl.tuning._results import Scoring

__all__ = ["single_stage_scores"]

#: Scorer names whose metric reads only predicted labels and accepts ``sample_weight`` as
#: counts, so a score depends only on the weighted (true, predicted) pairs.
_LABEL_ONLY_PREFIXES = (
    "accuracy",
    "balanced_accuracy",
    "f1",
    "precision",
    "recall",
    "jaccard",
    "matthews_corrcoef",
)
_LABEL_ONLY_NAMES = frozenset(
    name
    for name in get_scorer_names()
    if name.startswith(_LABEL_ONLY_PREFIXES) and not name.endswith("_samples")
)

_INVALID = "scoring must be None, a scikit-learn scorer name, a metric f(y_true, y_pred) or "
_INVALID += "a scorer(estimator, X, y)"


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


@dataclass(frozen=True, slots=True)
class _Score:
    """A resolved score: how to compute it, and which fast path it allows.

    Attributes:
        name: the display name.
        kind: ``"accuracy"`` and ``"neg_log_loss"`` are means of per-sample values;
            ``"pairs"`` reads only labels and takes ``sample_weight`` as counts; ``"metric"``
            is another ``f(y_true, y_pred)``; ``"scorer"`` is called as
            ``scorer(estimator, X, y)``.
        func: the scorer or metric (``None`` for accuracy).
    """

    name: str
    kind: Literal["accuracy", "neg_log_loss", "pairs", "metric", "scorer"]
    func: Callable[..., float] | None
    is_metric: bool = False

    @property
    def mean_of_samples(self) -> bool:
        """Whether the score is a mean of per-sample values (swept with cumulative sums)."""
        return self.kind in ("accuracy", "neg_log_loss")

    def __call__(
        self,
        classes: LabelArray,
        y_idx: IntArray,
        pred: IntArray,
        proba: Any,
        sample_weight: FloatArray | None = None,
    ) -> float:
        """Score predicted column indices ``pred`` (and ``proba``) against ``y_idx``.

        With ``sample_weight``, the metric or scorer gets it as ``sample_weight=``.
        """
        if self.kind == "accuracy":
            if not y_idx.size:
                return 0.0
            return float(np.average(pred == y_idx, weights=sample_weight))
        func = self.func
        if func is None:  # pragma: no cover - only accuracy has no function
            msg = "a score other than accuracy needs a function"
            raise PolicyError(msg)
        weight = {} if sample_weight is None else {"sample_weight": sample_weight}
        if self.is_metric:
            return float(func(classes[y_idx], classes[pred], **weight))
        view = _PredictionView(classes, classes[pred], proba)
        return float(func(view, np.arange(y_idx.size), classes[y_idx], **weight))

    def check_weighted(self) -> None:
        """Raise when sample weights are given to a callable that cannot take them."""
        if self.kind in ("accuracy", "neg_log_loss", "pairs") or self.func is None:
            return
        if not _takes_sample_weight(self.func, or_kwargs=True):
            msg = (
                f"scoring {self.name!r} does not take sample_weight, so it cannot score "
                "weighted samples: give it a sample_weight parameter, or tune without "
                "sample_weight"
            )
            raise PolicyError(msg)

    def weighted(self, classes: LabelArray, codes: IntArray, weights: FloatArray) -> float:
        """Score weighted (true, predicted) pairs, ``code = true * n_classes + predicted``."""
        n_classes = classes.size
        y_true, y_pred = classes[codes // n_classes], classes[codes % n_classes]
        func = self.func
        if func is None:  # pragma: no cover - accuracy never takes this path
            msg = "a score other than accuracy needs a function"
            raise PolicyError(msg)
        # The inputs are built here and valid: skip scikit-learn's per-call checks.
        with config_context(skip_parameter_validation=True):
            if self.is_metric:
                return float(func(y_true, y_pred, sample_weight=weights))
            view = _PredictionView(classes, y_pred, np.empty((0, n_classes)))
            return float(func(view, np.arange(codes.size), y_true, sample_weight=weights))


def _n_required_positional(func: Callable[..., Any]) -> int | None:
    """How many positional parameters ``func`` requires; ``None`` when unknown or variadic."""
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in parameters if p.kind in positional and p.default is p.empty)


def _takes_sample_weight(func: Callable[..., Any], *, or_kwargs: bool = False) -> bool:
    """Whether ``func`` has a ``sample_weight`` parameter (or, ``or_kwargs``, ``**kwargs``)."""
    try:
        parameters = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False
    return "sample_weight" in parameters or (
        or_kwargs and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    )


def _resolve_scoring(scoring: Scoring) -> _Score:
    """Resolve ``scoring`` to a `_Score`."""
    if isinstance(scoring, _Score):
        return scoring
    if scoring is None or (isinstance(scoring, str) and scoring == "accuracy"):
        return _Score("accuracy", "accuracy", None)
    if isinstance(scoring, str):
        try:
            scorer = get_scorer(scoring)
        except ValueError as exc:
            msg = f"{_INVALID}, got {scoring!r}"
            raise PolicyError(msg) from exc
        if scoring == "neg_log_loss":
            return _Score(scoring, "neg_log_loss", scorer)
        return _Score(scoring, "pairs" if scoring in _LABEL_ONLY_NAMES else "scorer", scorer)
    if callable(scoring):
        inner = scoring.func if isinstance(scoring, functools.partial) else scoring
        name = str(getattr(inner, "__name__", repr(scoring)))
        n_required = _n_required_positional(scoring)
        if n_required == 2:  # noqa: PLR2004 - metric(y_true, y_pred)
            kind: Literal["pairs", "metric"] = (
                "pairs" if _takes_sample_weight(scoring) else "metric"
            )
            return _Score(name, kind, scoring, is_metric=True)
        return _Score(name, "scorer", scoring)
    msg = f"{_INVALID}, got {scoring!r}"
    raise PolicyError(msg)


def _per_sample_scores(
    exit_proba: FloatArray, exit_pred: IntArray, y_idx: IntArray, score: _Score
) -> FloatArray | None:
    """Each sample's share of the score at each exit stage, when the score is a mean of them.

    Accuracy is the mean of 0/1 hits; ``neg_log_loss`` is the mean of the log of the true
    class's probability, clipped to ``[eps, 1 - eps]`` as :func:`sklearn.metrics.log_loss`
    clips float64 probabilities. For such scores a threshold sweep is a few cumulative sums
    instead of one scorer call per candidate. Returns an array of shape
    (n_stages, n_samples), or ``None`` for any other score.
    """
    if score.kind == "accuracy":
        hits: FloatArray = (exit_pred == y_idx[None, :]).astype(np.float64)
        return hits
    if score.kind == "neg_log_loss":
        eps = np.finfo(np.float64).eps
        cols = np.arange(y_idx.size)
        true_proba = exit_proba[:, cols, y_idx].astype(np.float64)
        return np.asarray(np.log(np.clip(true_proba, eps, 1 - eps)), dtype=np.float64)
    return None


def single_stage_scores(
    stage_proba: FloatArray,
    y: Any,
    *,
    classes: Any,
    scoring: Scoring = None,
    sample_weight: Any = None,
) -> FloatArray:
    """Score each stage used alone on cached probabilities.

    Args:
        stage_proba: array of shape (n_stages, n_samples, n_classes).
        y: array-like of shape (n_samples,), true labels.
        classes: array-like of shape (n_classes,), the labels of the columns.
        scoring: see [`Scoring`][cascademl.tuning.Scoring].
        sample_weight: array-like of shape (n_samples,), weights of the samples in the
            score (``None``: equal weights).

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
    score = _resolve_scoring(scoring)
    weights = _check_sample_weight(sample_weight, y_idx.size)
    if weights is not None:
        score.check_weighted()
    out = np.empty(p.shape[0], dtype=np.float64)
    for s in range(p.shape[0]):
        out[s] = score(labels, y_idx, np.argmax(p[s], axis=1), p[s], weights)
    return out


def _check_sample_weight(sample_weight: Any, n_samples: int) -> FloatArray | None:
    """Validated float64 weights; ``None`` stays ``None``.

    Raises:
        PolicyError: unless ``sample_weight`` holds ``n_samples`` finite numbers >= 0 with
            a positive sum.
    """
    if sample_weight is None:
        return None
    try:
        weights = np.asarray(sample_weight, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        msg = f"sample_weight must be numbers, got {sample_weight!r}"
        raise PolicyError(msg) from exc
    if weights.shape != (n_samples,):
        msg = (
            f"sample_weight must have shape ({n_samples},) (one weight per sample), got "
            f"{weights.shape}"
        )
        raise PolicyError(msg)
    if not np.all(np.isfinite(weights)) or np.any(weights < 0) or not weights.sum() > 0:
        bad = np.flatnonzero(~np.isfinite(weights) | (weights < 0))
        where = (
            f" (sample {int(bad[0])}: {float(weights[bad[0]])})" if bad.size else " (they sum to 0)"
        )
        msg = f"sample_weight must be finite numbers >= 0 with a positive sum{where}"
        raise PolicyError(msg)
    return np.asarray(weights, dtype=np.float64)
