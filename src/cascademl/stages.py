"""Stages: the classifiers a cascade runs in order.

Anything with a ``classes_`` attribute and a ``predict_proba(X)`` method is a
[`Stage`][cascademl.Stage]; no base class is needed. scikit-learn classifiers are adapted by
[`SklearnStage`][cascademl.SklearnStage], which fits a clone of an unfitted estimator and
never refits a fitted one (or one wrapped in ``sklearn.frozen.FrozenEstimator``).

Optional hooks a stage may offer, which the cascade uses when present:

* ``fit(X, y)``: called by `CascadeClassifier.fit` on stages that are not yet fitted
  (objects without it, such as pre-trained torch stages, are used as they are);
* ``cost_per_sample``: a float, the stage's cost for one sample (FLOPs, seconds, or any unit
  the user picks) used for cost accounting in [`CascadeResult`][cascademl.CascadeResult].
"""

from __future__ import annotations

from typing import Any, Protocol, Self, runtime_checkable

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import NotFittedError as _SklearnNotFittedError
from sklearn.utils.validation import check_is_fitted

from cascademl._typing import LabelArray, ProbaArray
from cascademl.exceptions import ClassMismatchError, NotFittedError, StageInterfaceError

__all__ = [
    "SklearnStage",
    "Stage",
    "check_stage",
    "check_stage_classes",
    "is_fitted",
    "stage_cost",
]


@runtime_checkable
class Stage(Protocol):
    """What a cascade needs from a stage.

    Attributes:
        classes_: ndarray of shape (n_classes,), the labels of ``predict_proba``'s columns.
    """

    classes_: LabelArray

    def predict_proba(self, X: Any) -> ProbaArray:
        """Return an array-like of shape (n_samples, n_classes) whose rows sum to one."""
        ...


def is_fitted(estimator: object) -> bool:
    """Whether a scikit-learn style estimator is fitted (a `Stage` without ``fit`` always is)."""
    if not hasattr(estimator, "fit"):
        return True
    try:
        check_is_fitted(estimator)
    except (_SklearnNotFittedError, TypeError):
        return False
    return True


def check_stage(stage: object, name: str, *, fitted: bool) -> None:
    """Raise `StageInterfaceError` unless ``stage`` can serve as a cascade stage.

    Args:
        stage: the candidate.
        name: the stage's name, used in the message.
        fitted: whether ``classes_`` must already be present.
    """
    if not callable(getattr(stage, "predict_proba", None)):
        hint = ""
        if callable(getattr(stage, "decision_function", None)):
            hint = (
                "; wrap it in sklearn.calibration.CalibratedClassifierCV (for an SVC: "
                "CalibratedClassifierCV(SVC(), ensemble=False))"
            )
        msg = f"stage {name!r} ({type(stage).__name__}) has no predict_proba method{hint}"
        raise StageInterfaceError(msg)
    if fitted and getattr(stage, "classes_", None) is None:
        msg = f"stage {name!r} ({type(stage).__name__}) has no classes_ attribute"
        raise StageInterfaceError(msg)


def check_stage_classes(stage: object, name: str) -> None:
    """Raise `ClassMismatchError` unless the stage's ``classes_`` is a 1-d array of distinct labels.

    Args:
        stage: a fitted stage.
        name: the stage's name, used in the message.

    Examples:
        >>> class Odd:
        ...     classes_ = ["a", "b", "a"]
        >>> try:
        ...     check_stage_classes(Odd(), "odd")
        ... except ClassMismatchError as exc:
        ...     print(str(exc)[:44])
        stage 'odd' (Odd) has duplicate labels ['a']
    """
    classes = np.asarray(getattr(stage, "classes_", None))
    kind = type(stage).__name__
    if classes.ndim != 1 or classes.size == 0:
        msg = (
            f"stage {name!r} ({kind}) has classes_ of shape {classes.shape}; a stage's "
            "classes_ must be a non-empty 1-d array of labels (multi-output stages are "
            "not supported)"
        )
        raise ClassMismatchError(msg)
    values = classes.tolist()
    seen: set[Any] = set()
    duplicates: list[Any] = []
    for value in values:
        if value in seen and value not in duplicates:
            duplicates.append(value)
        seen.add(value)
    if duplicates:
        msg = (
            f"stage {name!r} ({kind}) has duplicate labels {duplicates[:5]} in classes_ "
            f"{values[:10]}; each column of predict_proba needs its own label"
        )
        raise ClassMismatchError(msg)


def stage_cost(stage: object) -> float:
    """The stage's ``cost_per_sample`` hook, or 1.0 (one stage call) when it has none."""
    cost = getattr(stage, "cost_per_sample", None)
    return 1.0 if cost is None else float(cost)


class SklearnStage(ClassifierMixin, BaseEstimator):
    """Adapt a scikit-learn classifier to the `Stage` protocol.

    ``fit`` trains a clone of ``estimator``, unless ``estimator`` is already fitted (or is a
    ``FrozenEstimator``): then it is used as it is and never refit, and cloning this stage
    keeps it (so ``sklearn.base.clone`` of a cascade does not throw trained stages away).

    Args:
        estimator: a classifier with ``predict_proba``.
        cost_per_sample: this stage's cost for one sample, in any unit (for cost accounting).

    Attributes:
        estimator_: the fitted estimator that answers ``predict_proba``.
        classes_: ndarray of shape (n_classes,).

    Examples:
        >>> from sklearn.linear_model import LogisticRegression
        >>> stage = SklearnStage(LogisticRegression()).fit([[0.0], [1.0]], ["a", "b"])
        >>> stage.classes_.tolist()
        ['a', 'b']
    """

    def __init__(self, estimator: Any, *, cost_per_sample: float | None = None) -> None:
        self.estimator = estimator
        self.cost_per_sample = cost_per_sample

    def fit(self, X: Any, y: Any, **fit_params: Any) -> Self:
        """Fit a clone of the estimator, or adopt it unchanged when it is already fitted.

        ``fit_params`` (such as ``sample_weight``) go to the estimator's ``fit``; they are
        ignored when the estimator is adopted.
        """
        check_stage(self.estimator, type(self.estimator).__name__, fitted=False)
        if is_fitted(self.estimator):
            self.estimator_ = self.estimator
        else:
            self.estimator_ = clone(self.estimator).fit(X, y, **fit_params)
        return self

    def __sklearn_clone__(self) -> SklearnStage:
        """Clone the parameters but keep a fitted estimator, which is never refit."""
        if is_fitted(self.estimator):
            return SklearnStage(self.estimator, cost_per_sample=self.cost_per_sample)
        return SklearnStage(clone(self.estimator), cost_per_sample=self.cost_per_sample)

    def __sklearn_is_fitted__(self) -> bool:
        """Fitted once ``fit`` ran, or when the wrapped estimator was fitted from the start."""
        return hasattr(self, "estimator_") or is_fitted(self.estimator)

    @property
    def classes_(self) -> LabelArray:
        """The class labels of the fitted estimator."""
        return np.asarray(self._fitted().classes_)

    def predict_proba(self, X: Any) -> ProbaArray:
        """Class probabilities of the fitted estimator, of shape (n_samples, n_classes)."""
        return np.asarray(self._fitted().predict_proba(X), dtype=np.float64)

    def predict(self, X: Any) -> LabelArray:
        """Most probable class per sample."""
        proba = self.predict_proba(X)
        return np.asarray(self.classes_[np.argmax(proba, axis=1)])

    def _fitted(self) -> Any:
        if hasattr(self, "estimator_"):
            return self.estimator_
        if is_fitted(self.estimator):
            return self.estimator
        msg = f"this SklearnStage({type(self.estimator).__name__}) is not fitted; call fit first"
        raise NotFittedError(msg)
