"""Scores of routed predictions: scikit-learn scorers and metrics on cached arrays."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import get_scorer, log_loss

from cascademl._labels import label_indices
from cascademl._typing import FloatArray, IntArray, LabelArray
from cascademl.exceptions import PolicyError
from cascademl.tuning._results import Scoring

__all__ = ["single_stage_scores"]


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
