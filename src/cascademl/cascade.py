"""`CascadeClassifier`: stages in order, early exit, confidence-weighted voting."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any, Self

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import Bunch
from sklearn.utils.metadata_routing import MetadataRouter, MethodMapping
from sklearn.utils.validation import validate_data

from cascademl import _engine
from cascademl._engine import Keep
from cascademl._fitting import (
    _adopt_stage,
    _agreed_classes,
    _all_sklearn,
    _allow_nan,
    _check_lengths,
    _check_pairs,
    _check_y,
    _column_map,
    _fit_stage,
    _inner,
    _is_pair_list,
    _is_stream,
    _n_rows,
    _stage_features,
    _stage_fit_params,
)
from cascademl._typing import CombineMethod, LabelArray, ProbaArray
from cascademl._validation import check_batch_size, check_fitted
from cascademl.abstention import (
    check_reject_threshold,
    predict_with_abstention,
    resolve_abstain_label,
)
from cascademl.exceptions import (
    ClassMismatchError,
    PolicyError,
    StageInterfaceError,
)
from cascademl.policies import ConfidencePolicy, RoutingRule
from cascademl.results import CascadeResult
from cascademl.stages import check_stage
from cascademl.voting import COMBINE_METHODS

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

    Inputs reach the stages as given, as in scikit-learn's ``VotingClassifier``: a pandas
    DataFrame stays a DataFrame (so a stage can be a ``Pipeline`` selecting columns by
    name), and the samples escalated to a stage are taken in the input's own type.

    ``policy``, ``combine`` and ``escalation_weight`` are read at every call, so
    ``set_params(policy=...)`` (or ``policy__thresholds=...``) after `fit` takes effect at
    the next ``predict`` without refitting a stage.

    Args:
        stages: list of ``(name, stage)`` pairs, cheapest or least accurate first. A stage is
            a scikit-learn classifier (fitted ones, ``FrozenEstimator`` and `SklearnStage`
            wrapping a fitted one are never refit; unfitted ones are cloned and fitted), or
            any object following the [`Stage`][cascademl.Stage] protocol, used as it is.
        policy: the [`ConfidencePolicy`][cascademl.ConfidencePolicy]; defaults to
            ``ConfidencePolicy("max_proba", thresholds=0.9)``. Its fields are the nested
            parameters ``policy__measure`` and ``policy__thresholds`` (for ``GridSearchCV``).
        combine: ``"vote"`` (the paper's rule), ``"last"`` (the exiting stage decides) or
            ``"mean"`` (unweighted mean of the visited stages).
        escalation_weight: with ``combine="vote"``, the weight in ``[0, 1]`` of the vote of a
            stage that escalated a sample (the exiting stage votes with weight 1); a number,
            or one per stage as a weight schedule.
        batch_size: route at most this many samples at a time (bounds memory); results do
            not depend on it. ``None`` routes everything at once.
        reject_threshold: a number in ``[0, 1]``: `predict_or_abstain` returns
            ``abstain_label`` for samples whose final confidence (under the policy's
            measure) is below it. ``None`` never abstains; `predict` never abstains.
        abstain_label: the label `predict_or_abstain` gives abstained samples, of the same
            type as the classes (for example ``-1`` or ``"abstain"``); it must not be one of
            the classes. ``None`` picks one (see
            [`resolve_abstain_label`][cascademl.abstention.resolve_abstain_label]): ``-1``
            for integer classes, ``"abstain"`` for string classes, NaN for float classes.

    Attributes:
        classes_: ndarray of shape (n_classes,), the class labels.
        stages_: list of the fitted stages, in order.
        named_stages_: `sklearn.utils.Bunch` of the fitted stages by name.
        routing_rule_: the [`RoutingRule`][cascademl.RoutingRule] built from the current
            ``policy``, ``combine`` and ``escalation_weight``.
        policy_: the policy in use (``policy``, or the default one).
        thresholds_: tuple of one threshold per stage (the last is never consulted).
        n_features_in_: number of features, when every stage is a scikit-learn estimator.
        feature_names_in_: the column names of a DataFrame given to `fit`, when every stage
            is a scikit-learn estimator.
        certificate_: the [`Certificate`][cascademl.certify.Certificate] of a cascade
            built by [`apply_certificate`][cascademl.certify.apply_certificate] (absent
            otherwise); shown by `summary`, saved by `save_cascade`.

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
        abstain_label: Any = None,
    ) -> None:
        self.stages = stages
        self.policy = policy
        self.combine = combine
        self.escalation_weight = escalation_weight
        self.batch_size = batch_size
        self.reject_threshold = reject_threshold
        self.abstain_label = abstain_label

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_fitted(
        cls, stages: Sequence[tuple[str, Any]], *, classes: Any = None, **params: Any
    ) -> Self:
        """Build a fitted cascade from stages that are all fitted already, without data.

        No stage is trained. ``n_features_in_`` and ``feature_names_in_`` are taken from
        the stages when every stage is a scikit-learn estimator and they agree.

        Args:
            stages: list of ``(name, stage)`` pairs of fitted stages.
            classes: array-like of shape (n_classes,), the class labels, in the order of
                ``classes_``; it must hold the same set as the stages' ``classes_``.
                ``None`` takes the sorted classes of the stages.
            **params: the other parameters (``policy``, ``combine``, ...).

        Returns:
            The fitted cascade.

        Raises:
            StageInterfaceError: if a stage is not fitted or lacks the stage interface.
            ClassMismatchError: if the stages disagree on the classes, or ``classes``
                differs from them.
            PolicyError: if a parameter is invalid.

        Examples:
            >>> from sklearn.datasets import load_iris
            >>> from sklearn.naive_bayes import GaussianNB
            >>> X, y = load_iris(return_X_y=True)
            >>> nb = GaussianNB().fit(X, y)
            >>> cascade = CascadeClassifier.from_fitted([("nb", nb)])
            >>> cascade.classes_.tolist(), cascade.n_features_in_
            ([0, 1, 2], 4)
        """
        cascade = cls(stages, **params)
        pairs = cascade._validate_params()
        fitted = [_adopt_stage(cls.__name__, name, stage) for name, stage in pairs]
        agreed = _agreed_classes(pairs, fitted, None)
        if classes is not None:
            given = np.asarray(classes)
            if given.ndim != 1 or given.size != np.unique(given).size:
                msg = f"classes must be a 1-d array of distinct labels, got {given!r}"
                raise ClassMismatchError(msg)
            if set(given.tolist()) != set(agreed.tolist()):
                msg = (
                    f"classes {given.tolist()!r} differ from the stages' classes "
                    f"{agreed.tolist()!r}"
                )
                raise ClassMismatchError(msg)
            agreed = given
        cascade._set_fitted(pairs, fitted, agreed)
        if _all_sklearn(pairs):
            n_features, names = _stage_features(fitted)
            if n_features is not None:
                cascade.n_features_in_ = n_features
            if names is not None:
                cascade.feature_names_in_ = names
        return cascade

    # ----------------------------------------------------------------- parameters
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Parameters; ``deep=True`` adds ``policy__<field>``, ``<stage>``, ``<stage>__<param>``."""
        params: dict[str, Any] = super().get_params(deep=False)
        if not deep:
            return params
        if isinstance(self.policy, ConfidencePolicy):
            for key, value in self.policy.get_params().items():
                params[f"policy__{key}"] = value
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
        """Set parameters: ``<stage>=est`` replaces a stage, ``<stage>__<param>`` reaches in.

        ``policy__measure`` and ``policy__thresholds`` replace the (frozen) policy with a
        copy holding the new value; with ``policy=None`` they start from the default policy.
        """
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
        policy_fields: dict[str, Any] = {}
        own: dict[str, Any] = {}
        for key, value in params.items():
            head, sep, tail = key.partition("__")
            if sep and head == "policy" and "policy" not in names:
                policy_fields[tail] = value
            elif sep and head in names:
                nested.setdefault(head, {})[tail] = value
            else:
                own[key] = value
        if own:
            super().set_params(**own)
        if policy_fields:
            self._set_policy_fields(policy_fields)
        for head, sub in nested.items():
            dict(self.stages)[head].set_params(**sub)
        return self

    def _set_policy_fields(self, fields: dict[str, Any]) -> None:
        base = ConfidencePolicy() if self.policy is None else self.policy
        if not isinstance(base, ConfidencePolicy):
            msg = (
                f"cannot set {', '.join('policy__' + k for k in fields)}: policy is a "
                f"{type(base).__name__}, not a ConfidencePolicy"
            )
            raise PolicyError(msg)
        valid = base.get_params()
        unknown = sorted(set(fields) - set(valid))
        if unknown:
            msg = (
                f"invalid parameter policy__{unknown[0]} for {type(self).__name__}; "
                f"the policy's parameters are {sorted('policy__' + k for k in valid)}"
            )
            raise PolicyError(msg)
        self.policy = dataclasses.replace(base, **fields)

    # ----------------------------------------------------------------- fitted state
    @property
    def routing_rule_(self) -> RoutingRule:
        """The [`RoutingRule`][cascademl.RoutingRule] of the current parameters.

        Built at every access from ``policy``, ``combine`` and ``escalation_weight``, so
        ``set_params`` after `fit` takes effect at the next ``predict``.

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

    @property
    def policy_(self) -> ConfidencePolicy:
        """The policy in use: ``policy``, or the default policy when it is ``None``."""
        self.routing_rule_  # noqa: B018 - checks fitted state and the current parameters
        return ConfidencePolicy() if self.policy is None else self.policy

    @property
    def thresholds_(self) -> tuple[float, ...]:
        """One threshold per stage under the current policy (the last is never consulted)."""
        return self.routing_rule_.thresholds

    def summary(self) -> str:
        """A few lines on the fitted cascade: stages, routing rule, reject option, certificate.

        The certificate line says when the current routing no longer is the certified one
        (after ``set_params`` changed the policy, combiner or weights).

        Raises:
            NotFittedError: if the cascade is not fitted.

        Examples:
            >>> from sklearn.datasets import load_iris
            >>> from sklearn.naive_bayes import GaussianNB
            >>> X, y = load_iris(return_X_y=True)
            >>> print(CascadeClassifier([("nb", GaussianNB())]).fit(X, y).summary())
            CascadeClassifier of 1 stage: nb
            routing: max_proba, thresholds [inf], combine='vote'
        """
        rule = self.routing_rule_
        names = list(self.named_stages_.keys())
        plural = "s" if len(names) != 1 else ""
        thresholds = ", ".join(f"{t:.4g}" for t in rule.thresholds)
        routing = f"routing: {rule.measure}, thresholds [{thresholds}], combine={rule.combine!r}"
        if rule.combine == "vote" and len(names) > 1:
            weights = ", ".join(f"{w:g}" for w in rule.escalation_weights)
            routing += f", escalation weights [{weights}]"
        lines = [
            f"{type(self).__name__} of {len(names)} stage{plural}: {', '.join(names)}",
            routing,
        ]
        if self.reject_threshold is not None:
            lines.append(f"reject_threshold: {self.reject_threshold:.4g}")
        certificate = getattr(self, "certificate_", None)
        if certificate is not None:
            line = f"certificate ({certificate.guarantee}): {certificate.summary()}"
            if not certificate.matches(self):
                line += " [no longer in force: the routing changed since it was certified]"
            lines.append(line)
        return "\n".join(lines)

    @property
    def abstain_label_(self) -> Any:
        """The label `predict_or_abstain` gives abstained samples (``abstain_label`` or default)."""
        self._check_fitted()
        return resolve_abstain_label(self.abstain_label, self.classes_)

    # ----------------------------------------------------------------- fitting
    def fit(self, X: Any, y: Any = None, **fit_params: Any) -> Self:
        """Fit the unfitted stages on ``(X, y)`` and check that all stages agree on the classes.

        ``X`` reaches the stages as given (a DataFrame stays a DataFrame). Stages that are
        already fitted are never refit.

        Args:
            X: inputs every stage accepts: array-like or DataFrame of shape
                (n_samples, n_features) for scikit-learn stages, or whatever custom stages
                take (images, tensors, ...).
            y: array-like of shape (n_samples,), labels of any type. ``None`` when every
                stage is fitted already: the classes come from the stages.
            **fit_params: ``sample_weight`` (passed to the stages that are fitted, as
                ``VotingClassifier`` does); with
                ``sklearn.set_config(enable_metadata_routing=True)``, any metadata the
                stages request (``stage.set_fit_request(sample_weight=True)``).

        Returns:
            The fitted cascade.

        Raises:
            StageInterfaceError: if a stage lacks ``predict_proba`` or ``classes_``, the
                stages are not a list of uniquely named ``(name, stage)`` pairs, ``y`` is
                ``None`` while a stage is not fitted, or a stage to fit does not accept
                ``sample_weight``.
            ClassMismatchError: if stages disagree on the classes, a stage's ``classes_``
                is not a 1-d array of distinct labels, or ``y`` holds a class the stages do
                not know.
            PolicyError: if the policy, thresholds, ``combine``, weights or ``batch_size``
                are invalid, or ``X`` and ``y`` have different lengths.
        """
        pairs = self._validate_params()
        routed = _stage_fit_params(self, pairs, fit_params)
        self._forget_features()
        if not hasattr(X, "__len__") and not hasattr(X, "shape") and hasattr(X, "__array__"):
            X = np.asarray(X)
        if _all_sklearn(pairs):
            validate_data(self, X, skip_check_array=True)
        if y is None:
            owner = type(self).__name__
            fitted = [_adopt_stage(owner, name, stage, without_y=True) for name, stage in pairs]
            classes = _agreed_classes(pairs, fitted, None)
        else:
            y = _check_y(y)
            _check_lengths(X, y)
            fitted = [_fit_stage(name, stage, X, y, routed[name]) for name, stage in pairs]
            classes = _agreed_classes(pairs, fitted, y)
        self._set_fitted(pairs, fitted, classes)
        return self

    def get_metadata_routing(self) -> MetadataRouter:
        """How fit metadata reaches the stages (scikit-learn's metadata routing).

        Each stage receives, in its ``fit``, the metadata it requested (for example with
        ``LogisticRegression().set_fit_request(sample_weight=True)``); the cascade's own
        ``score`` consumes ``sample_weight`` when ``set_score_request`` asks for it.

        Returns:
            A ``MetadataRouter`` with one ``fit -> fit`` mapping per stage.
        """
        router = MetadataRouter(owner=type(self).__name__).add_self_request(self)
        pairs = self.stages if _is_pair_list(self.stages) else []
        for name, stage in pairs:
            inner = _inner(stage)
            if hasattr(inner, "get_metadata_routing"):
                router.add(
                    **{name: inner}, method_mapping=MethodMapping().add(callee="fit", caller="fit")
                )
        return router

    # ----------------------------------------------------------------- inference
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
        """Final labels, or ``abstain_label`` below ``reject_threshold``.

        Returns:
            ndarray of shape (n_samples,) with the classes' dtype (widened only to hold a
            longer string label), so scikit-learn's metrics accept it.

        Raises:
            PolicyError: if ``abstain_label`` is one of the classes or of another type, or
                no default exists for the classes' type.
        """
        result = self.route(X)
        return predict_with_abstention(
            result.proba,
            self.classes_,
            self.reject_threshold,
            measure=self.routing_rule_.measure,
            abstain_label=self.abstain_label,
        )

    # ----------------------------------------------------------------- helpers
    def _check_input(self, X: Any) -> Any:
        """Check ``X`` against what `fit` saw (feature count and names); return it unchanged.

        DataFrames stay DataFrames: only ``n_features_in_`` and ``feature_names_in_`` are
        compared, with scikit-learn's ``validate_data(..., skip_check_array=True)``; the
        stages check values themselves. An array-like that can be neither indexed nor
        measured (it only offers ``__array__``) is converted with ``numpy.asarray``.

        Raises:
            ValueError: if ``X`` is 1-d, or has another number of features than at `fit`,
                or other column names.
        """
        if not hasattr(X, "__len__") and not hasattr(X, "shape") and hasattr(X, "__array__"):
            X = np.asarray(X)
        if not (hasattr(self, "n_features_in_") or hasattr(self, "feature_names_in_")):
            return X
        if isinstance(X, np.ndarray) and X.ndim == 1:
            msg = (
                f"Expected a 2D array, got a 1D array instead: array={X!r}.\nReshape your "
                "data either using array.reshape(-1, 1) if your data has a single feature "
                "or array.reshape(1, -1) if it contains a single sample."
            )
            raise ValueError(msg)
        validate_data(self, X, reset=False, skip_check_array=True)
        return X

    def __sklearn_tags__(self) -> Any:
        """Tags: a classifier that accepts NaN only when every stage does."""
        tags = super().__sklearn_tags__()
        try:
            pairs = self._validate_stages()
        except StageInterfaceError:
            return tags
        tags.input_tags.allow_nan = _allow_nan(pairs)
        return tags

    def _check_fitted(self) -> None:
        check_fitted(self, before="route, predict or predict_proba")

    def _validate_params(self) -> list[tuple[str, Any]]:
        pairs = self._validate_stages()
        self._validate_policy(len(pairs))
        check_reject_threshold(self.reject_threshold)
        check_batch_size(self.batch_size, "batch_size", allow_none=True)
        return pairs

    def _set_fitted(
        self, pairs: list[tuple[str, Any]], fitted: list[Any], classes: LabelArray
    ) -> None:
        self.classes_ = classes
        self.stages_ = fitted
        self.named_stages_ = Bunch(
            **{name: st for (name, _), st in zip(pairs, fitted, strict=True)}
        )
        self._columns = [_column_map(st.classes_, classes) for st in fitted]
        if self.abstain_label is not None:
            resolve_abstain_label(self.abstain_label, classes)

    def _forget_features(self) -> None:
        for name in ("n_features_in_", "feature_names_in_"):
            if hasattr(self, name):
                delattr(self, name)

    def _validate_stages(self) -> list[tuple[str, Any]]:
        pairs = _check_pairs(self.stages, reserved=set(super().get_params(deep=False)))
        for name, stage in pairs:
            check_stage(stage, name, fitted=False)
        return pairs

    def _validate_policy(self, n_stages: int) -> ConfidencePolicy:
        policy = ConfidencePolicy() if self.policy is None else self.policy
        if not isinstance(policy, ConfidencePolicy):
            msg = f"policy must be a ConfidencePolicy or None, got {type(policy).__name__}"
            raise PolicyError(msg)
        if self.combine not in COMBINE_METHODS:
            msg = f"combine must be one of {COMBINE_METHODS}, got {self.combine!r}"
            raise PolicyError(msg)
        # The rule validates the thresholds against the stage count and the weight schedule.
        RoutingRule.from_params(
            policy,
            n_stages=n_stages,
            combine=self.combine,
            escalation_weight=self.escalation_weight,
        )
        return policy

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
        X = self._check_input(X)
        source = _engine.MemorySource(X, _n_rows(X))
        return _engine.run(self.stages_, source, **options)
