"""`CascadeClassifier`: stages in order, early exit, confidence-weighted voting."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from typing import Any, Self

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils import Bunch
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import column_or_1d, validate_data

from cascademl import _engine
from cascademl._engine import Keep
from cascademl._typing import CombineMethod, IntArray, LabelArray, ProbaArray
from cascademl._validation import check_fitted, take_rows
from cascademl.abstention import check_reject_threshold, predict_with_abstention
from cascademl.exceptions import (
    ClassMismatchError,
    PolicyError,
    StageInterfaceError,
)
from cascademl.policies import ConfidencePolicy, RoutingRule
from cascademl.results import CascadeResult
from cascademl.stages import SklearnStage, check_stage, is_fitted
from cascademl.voting import COMBINE_METHODS, vote_weights

__all__ = ["CascadeClassifier"]

logger = logging.getLogger(__name__)


class CascadeClassifier(ClassifierMixin, BaseEstimator):
    """Run stages in order; each sample stops at the first stage confident enough.

    Each sample goes through the stages in order. A stage whose confidence (under
    ``policy``) is at or above its threshold ends the sample there; otherwise the sample
    escalates and, with ``combine="vote"``, that stage's vote is carried forward with the
    lowered weight ``escalation_weight``. The final decision is the class with the highest
    accumulated confidence over the stages the sample visited (sections 3.6-3.7 of
    Kalaiyarasi et al.). Each stage is called once per batch, with only the samples that
    reached it.

    Args:
        stages: list of ``(name, stage)`` pairs, cheapest or least accurate first. A stage is
            a scikit-learn classifier (fitted ones, ``FrozenEstimator`` and `SklearnStage`
            wrapping a fitted one are never refit; unfitted ones are cloned and fitted), or
            any object following the [`Stage`][cascademl.Stage] protocol, used as it is.
        policy: the [`ConfidencePolicy`][cascademl.ConfidencePolicy]; defaults to
            ``ConfidencePolicy("max_proba", thresholds=0.9)``.
        combine: ``"vote"`` (the paper's rule), ``"last"`` (the exiting stage decides) or
            ``"mean"`` (unweighted mean of the visited stages).
        escalation_weight: with ``combine="vote"``, the weight in ``[0, 1]`` of the vote of a
            stage that escalated a sample (the exiting stage votes with weight 1); a number,
            or one per stage as a weight schedule.
        batch_size: route at most this many samples at a time (bounds memory); results do
            not depend on it. ``None`` routes everything at once.
        reject_threshold: a number in ``[0, 1]``: `predict_or_abstain` returns
            ``cascademl.abstention.ABSTAIN`` for samples whose final confidence
            (under the policy's measure) is below it. ``None`` never abstains; `predict`
            never abstains.

    Attributes:
        classes_: ndarray of shape (n_classes,), the class labels.
        stages_: list of the fitted stages, in order.
        named_stages_: `sklearn.utils.Bunch` of the fitted stages by name.
        policy_: the policy in use.
        thresholds_: tuple of one threshold per stage (the last is never consulted).
        n_features_in_: number of features, when every stage is a scikit-learn estimator.

    Examples:
        >>> from sklearn.datasets import load_iris
        >>> from sklearn.linear_model import LogisticRegression
        >>> from sklearn.naive_bayes import GaussianNB
        >>> X, y = load_iris(return_X_y=True)
        >>> cascade = CascadeClassifier(
        ...     [("nb", GaussianNB()), ("lr", LogisticRegression(max_iter=1000))],
        ...     policy=ConfidencePolicy("max_proba", thresholds=0.95),
        ... ).fit(X, y)
        >>> result = cascade.route(X)
        >>> int(result.exit_counts.sum()) == len(X)
        True
        >>> round(cascade.score(X, y), 2)
        0.96
    """

    def __init__(
        self,
        stages: Sequence[tuple[str, Any]],
        *,
        policy: ConfidencePolicy | None = None,
        combine: CombineMethod = "vote",
        escalation_weight: float | Sequence[float] = 0.5,
        batch_size: int | None = None,
        reject_threshold: float | None = None,
    ) -> None:
        self.stages = stages
        self.policy = policy
        self.combine = combine
        self.escalation_weight = escalation_weight
        self.batch_size = batch_size
        self.reject_threshold = reject_threshold

    # ----------------------------------------------------------------- parameters
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Parameters; with ``deep=True`` also ``<stage>`` and ``<stage>__<param>`` entries."""
        params: dict[str, Any] = super().get_params(deep=False)
        if not deep:
            return params
        stages = self.stages
        if isinstance(stages, Sequence):
            for item in stages:
                if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):  # noqa: PLR2004
                    name, stage = item
                    params[name] = stage
                    if hasattr(stage, "get_params") and not isinstance(stage, type):
                        for key, value in stage.get_params(deep=True).items():
                            params[f"{name}__{key}"] = value
        return params

    def set_params(self, **params: Any) -> Self:
        """Set parameters: ``<stage>=est`` replaces a stage, ``<stage>__<param>`` reaches in."""
        if "stages" in params:
            self.stages = params.pop("stages")
        names = [n for n, _ in self.stages] if _is_pair_list(self.stages) else []
        replaced = [key for key in params if key in names]
        if replaced:
            new = list(self.stages)
            for key in replaced:
                index = names.index(key)
                new[index] = (key, params.pop(key))
            self.stages = new
        nested: dict[str, dict[str, Any]] = {}
        own: dict[str, Any] = {}
        for key, value in params.items():
            head, sep, tail = key.partition("__")
            if sep and head in names:
                nested.setdefault(head, {})[tail] = value
            else:
                own[key] = value
        for head, sub in nested.items():
            dict(self.stages)[head].set_params(**sub)
        if own:
            super().set_params(**own)
        return self

    # ----------------------------------------------------------------- fitting
    def fit(self, X: Any, y: Any) -> Self:
        """Fit the unfitted stages on ``(X, y)`` and check that all stages agree on the classes.

        Args:
            X: inputs every stage accepts: array-like of shape (n_samples, n_features) for
                scikit-learn stages, or whatever custom stages take (images, tensors, ...).
            y: array-like of shape (n_samples,), labels of any type.

        Returns:
            The fitted cascade.

        Raises:
            StageInterfaceError: if a stage lacks ``predict_proba`` or ``classes_``, or the
                stages are not a list of uniquely named ``(name, stage)`` pairs.
            ClassMismatchError: if stages disagree on the classes or ``y`` holds a class
                the stages do not know.
            PolicyError: if the policy, thresholds, ``combine`` or weights are invalid.
        """
        pairs = self._validate_stages()
        policy = self._validate_policy(len(pairs))
        check_reject_threshold(self.reject_threshold)
        if _all_sklearn(pairs):
            X, y = validate_data(self, X, y, ensure_all_finite=not self._allow_nan(pairs))
        elif hasattr(self, "n_features_in_"):
            del self.n_features_in_
        check_classification_targets(y)
        y = column_or_1d(y, warn=True)
        fitted = [self._fit_stage(name, stage, X, y) for name, stage in pairs]
        classes = self._agreed_classes(pairs, fitted, y)
        self.classes_ = classes
        self.stages_ = fitted
        self.named_stages_ = Bunch(
            **{name: st for (name, _), st in zip(pairs, fitted, strict=True)}
        )
        self.policy_ = policy
        self.thresholds_ = policy.thresholds_for(len(pairs))
        self._columns = [_column_map(st.classes_, classes) for st in fitted]
        return self

    # ----------------------------------------------------------------- inference
    @property
    def routing_rule_(self) -> RoutingRule:
        """The [`RoutingRule`][cascademl.RoutingRule] of the current parameters.

        Built at every call from ``policy``, ``combine`` and ``escalation_weight`` as they
        are now, so ``set_params`` after ``fit`` takes effect at the next ``route`` or
        ``predict`` without refitting a stage.

        Raises:
            NotFittedError: if the cascade is not fitted.
            PolicyError: if the current parameters are invalid.
        """
        self._check_fitted()
        return RoutingRule.from_params(
            self.policy,
            n_stages=len(self.stages_),
            combine=self.combine,
            escalation_weight=self.escalation_weight,
        )

    def route(
        self,
        X: Any,
        *,
        batch_size: int | None = None,
        progress: bool = False,
        keep: Keep = "all",
    ) -> CascadeResult:
        """Route samples through the stages and return everything that happened.

        In-memory inputs (arrays, DataFrames, lists, tensors) and streams (a torch
        ``Dataset`` or ``DataLoader``, or an iterator of image batches) go through the same
        engine: each stage runs on full batches of its own ``batch_size`` (a stage's
        attribute, else this call's or the cascade's ``batch_size``) made of the samples
        that escalated to it, and the result carries a ``cost_report``. Streams are read
        batch by batch ([`stream_route`][cascademl.inference.stream_route]), so memory
        stays bounded by the batch sizes.

        Args:
            X: the inputs, as for `fit`; or a ``Dataset``, ``DataLoader`` or iterator of
                image batches (items or batches that are ``(images, targets)`` tuples use
                the images).
            batch_size: overrides the ``batch_size`` parameter for this call (the batch
                size of stages that have none of their own; ``None`` routes in-memory
                inputs all at once and streams in batches of 64).
            progress: show a tqdm progress bar over the samples decided.
            keep: ``"all"`` (the default) keeps every visited stage's probabilities in
                ``result.stage_proba``, an array of shape (n_stages, n_samples, n_classes);
                ``"none"`` keeps only the final probabilities and each stage's confidence
                (``stage_proba`` is ``None``). `predict`, `predict_proba` and `score` keep
                nothing per stage.

        Returns:
            A frozen [`CascadeResult`][cascademl.CascadeResult] with, per sample, the final
            label and probabilities, the exit stage and each visited stage's confidence
            (and probabilities with ``keep="all"``), and a
            [`CostReport`][cascademl.cost.CostReport].

        Raises:
            NotFittedError: if the cascade is not fitted.
            PolicyError: for an invalid ``batch_size`` or ``keep``.
            StageOutputError: if a stage returns NaN, negative or malformed probabilities.
        """
        outcome = self._route(X, batch_size=batch_size, progress=progress, want="result", keep=keep)
        if outcome.result is None:  # pragma: no cover - want="result" always builds one
            msg = "the routing engine returned no result"
            raise RuntimeError(msg)
        return outcome.result

    def predict_proba(self, X: Any) -> ProbaArray:
        """Final probabilities, array of shape (n_samples, n_classes).

        Memory is bounded by the batch sizes: no stage's probabilities are kept.
        """
        proba = self._route(X, want="proba").proba
        if proba is None:  # pragma: no cover - want="proba" always fills it
            msg = "the routing engine returned no probabilities"
            raise RuntimeError(msg)
        return proba

    def predict(self, X: Any) -> LabelArray:
        """Final labels, array of shape (n_samples,); memory bounded by the batch sizes."""
        return self._route(X, want="labels").labels

    def predict_or_abstain(self, X: Any) -> LabelArray:
        """Final labels, or `ABSTAIN` below ``reject_threshold``; object array (n_samples,)."""
        result = self.route(X)
        return predict_with_abstention(
            result.proba, self.classes_, self.reject_threshold, measure=self.policy_.measure
        )

    # ----------------------------------------------------------------- helpers
    def __sklearn_tags__(self) -> Any:
        """Tags: a classifier that accepts NaN only when every stage does."""
        tags = super().__sklearn_tags__()
        try:
            pairs = self._validate_stages()
        except StageInterfaceError:
            return tags
        tags.input_tags.allow_nan = self._allow_nan(pairs)
        return tags

    def _check_fitted(self) -> None:
        check_fitted(self, before="route, predict or predict_proba")

    def _validate_stages(self) -> list[tuple[str, Any]]:
        if not _is_pair_list(self.stages) or len(self.stages) == 0:
            msg = (
                "stages must be a non-empty list of (name, stage) pairs, got "
                f"{type(self.stages).__name__}"
            )
            raise StageInterfaceError(msg)
        pairs = [(str(n), s) for n, s in self.stages]
        names = [n for n, _ in pairs]
        reserved = set(super().get_params(deep=False))
        for name in names:
            if names.count(name) > 1:
                msg = f"stage names must be unique, {name!r} appears {names.count(name)} times"
                raise StageInterfaceError(msg)
            if "__" in name or not name:
                msg = f"stage name {name!r} must be non-empty and must not contain '__'"
                raise StageInterfaceError(msg)
            if name in reserved:
                msg = f"stage name {name!r} clashes with the parameter of the same name"
                raise StageInterfaceError(msg)
        for name, stage in pairs:
            check_stage(stage, name, fitted=False)
        return pairs

    def _validate_policy(self, n_stages: int) -> ConfidencePolicy:
        policy = ConfidencePolicy() if self.policy is None else self.policy
        if not isinstance(policy, ConfidencePolicy):
            msg = f"policy must be a ConfidencePolicy or None, got {type(policy).__name__}"
            raise PolicyError(msg)
        policy.thresholds_for(n_stages)
        if self.combine not in COMBINE_METHODS:
            msg = f"combine must be one of {COMBINE_METHODS}, got {self.combine!r}"
            raise PolicyError(msg)
        # Validate the weight schedule once, on a dummy routing.
        vote_weights(
            np.ones((n_stages, 1), dtype=bool),
            np.zeros(1, dtype=np.intp),
            method=self.combine,
            escalation_weight=self.escalation_weight,
        )
        return policy

    @staticmethod
    def _allow_nan(pairs: list[tuple[str, Any]]) -> bool:
        from sklearn.utils import get_tags  # noqa: PLC0415 - local: only needed for tags

        try:
            return all(get_tags(_inner(stage)).input_tags.allow_nan for _, stage in pairs)
        except (AttributeError, TypeError):
            return False

    @staticmethod
    def _fit_stage(name: str, stage: Any, X: Any, y: Any) -> Any:
        if isinstance(stage, SklearnStage):
            fitted = SklearnStage(stage.estimator, cost_per_sample=stage.cost_per_sample)
            return fitted.fit(X, y)
        if isinstance(stage, BaseEstimator):
            return SklearnStage(stage).fit(X, y)
        if is_fitted(stage):
            check_stage(stage, name, fitted=True)
            return stage
        logger.debug("fitting stage %r (%s)", name, type(stage).__name__)
        fitted = clone(stage).fit(X, y)
        check_stage(fitted, name, fitted=True)
        return fitted

    @staticmethod
    def _agreed_classes(
        pairs: list[tuple[str, Any]], fitted: list[Any], y: LabelArray
    ) -> LabelArray:
        reference = np.asarray(fitted[0].classes_)
        ref_set = set(reference.tolist())
        for (name, _), stage in zip(pairs[1:], fitted[1:], strict=True):
            classes = set(np.asarray(stage.classes_).tolist())
            if classes != ref_set:
                msg = (
                    f"stage {name!r} has classes {sorted(classes, key=str)} but stage "
                    f"{pairs[0][0]!r} has {sorted(ref_set, key=str)}; all stages must "
                    "predict the same set of classes"
                )
                raise ClassMismatchError(msg)
        unknown = set(np.unique(y).tolist()) - ref_set
        if unknown:
            msg = (
                f"y holds classes {sorted(unknown, key=str)} that the stages do not "
                f"predict (they know {sorted(ref_set, key=str)})"
            )
            raise ClassMismatchError(msg)
        return np.sort(reference)

    def _route(
        self,
        X: Any,
        *,
        want: _engine.Want,
        batch_size: int | None = None,
        progress: bool = False,
        keep: Keep = "none",
    ) -> _engine.Outcome:
        """Run the routing engine on ``X``: a stream, or an in-memory source."""
        rule = self.routing_rule_
        options: dict[str, Any] = {
            "rule": rule,
            "stage_names": tuple(self.named_stages_.keys()),
            "classes": self.classes_,
            "columns": self._columns,
            "batch_size": self.batch_size if batch_size is None else batch_size,
            "want": want,
            "keep": keep,
            "progress": progress,
        }
        if _is_stream(X):
            from cascademl import inference  # noqa: PLC0415 - imports torch only when needed

            return _engine.run(self.stages_, inference._TensorStream(X), **options)  # noqa: SLF001
        if hasattr(self, "n_features_in_"):  # set by fit when every stage is from sklearn
            allow_nan = self._allow_nan(self._validate_stages())
            X = validate_data(self, X, reset=False, ensure_all_finite=not allow_nan)
        source = _engine.MemorySource(X, _n_rows(X))
        return _engine.run(self.stages_, source, **options)


def _is_pair_list(stages: object) -> bool:
    return isinstance(stages, (list, tuple)) and all(
        isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)  # noqa: PLR2004
        for item in stages
    )


def _inner(stage: Any) -> Any:
    return stage.estimator if isinstance(stage, SklearnStage) else stage


def _all_sklearn(pairs: list[tuple[str, Any]]) -> bool:
    return all(isinstance(_inner(stage), BaseEstimator) for _, stage in pairs)


def _column_map(stage_classes: Any, classes: LabelArray) -> IntArray:
    position = {label: i for i, label in enumerate(np.asarray(stage_classes).tolist())}
    return np.array([position[label] for label in classes.tolist()], dtype=np.intp)


def _take(X: Any, idx: IntArray) -> Any:
    return take_rows(X, idx)


def _n_rows(X: Any) -> int:
    shape = getattr(X, "shape", None)
    if shape is not None and len(shape) > 0:
        return int(shape[0])
    return len(X)


def _is_stream(X: object) -> bool:
    """Whether ``X`` is streamed: an iterator, or a torch ``Dataset``/``DataLoader``."""
    if isinstance(X, (np.ndarray, list, tuple)) or hasattr(X, "iloc"):
        return False
    if isinstance(X, Iterator):
        return True
    if "torch" not in sys.modules:  # no torch object can exist: nothing to import
        return False
    from cascademl import inference  # noqa: PLC0415 - torch is loaded already

    return inference.is_stream(X)
