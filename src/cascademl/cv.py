"""`CascadeClassifierCV`: thresholds tuned on out-of-fold probabilities, stages refit on all data.

Tuning on a separate validation split costs training data. `CascadeClassifierCV` instead
fits each stage once per cross-validation fold, collects every stage's out-of-fold
probabilities (each sample is predicted by the models that did not see it), tunes the
routing rule on them with [`tune_cascade_from_proba`][cascademl.tuning.tune_cascade_from_proba],
and finally refits every stage on all the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import numpy as np
import sklearn
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.model_selection import check_cv, cross_val_predict
from sklearn.utils.metadata_routing import MetadataRouter, MethodMapping, process_routing
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import column_or_1d

from cascademl._fitting import (
    _check_accepts,
    _check_pairs,
    _inner,
    _is_pair_list,
    _stage_fit_params,
)
from cascademl._typing import ConfidenceMeasure, LabelArray, ProbaArray
from cascademl._validation import check_fitted
from cascademl.cascade import CascadeClassifier
from cascademl.exceptions import StageInterfaceError
from cascademl.policies import ConfidencePolicy, RoutingRule
from cascademl.results import CascadeResult
from cascademl.stages import SklearnStage
from cascademl.tuning import CombineArg, MinScore, Scoring, TuningResult, tune_cascade_from_proba
from cascademl.tuning._apply import _rule_params
from cascademl.voting import COMBINE_METHODS

__all__ = ["CascadeClassifierCV"]


class CascadeClassifierCV(ClassifierMixin, BaseEstimator):
    """A cascade whose thresholds are tuned by cross-validation, without a validation split.

    ``fit`` runs ``cv`` folds: in each, every stage is fitted on the training folds and
    predicts probabilities for the held-out fold (``cross_val_predict`` with
    ``method="predict_proba"``, so each stage is fitted once per fold, in parallel over the
    folds with ``n_jobs``). The routing rule is tuned on these out-of-fold probabilities:
    the thresholds and, with the default ``combine="auto"``, the combiner and the vote's
    escalation weight (``"last"``, ``"vote"`` at escalation weights 0.25, 0.5 and 0.75, or
    ``"mean"``, whichever is best under the same objective). Then every stage is refit on
    all of ``X, y`` and the tuned rule is applied to a
    [`CascadeClassifier`][cascademl.CascadeClassifier] of the refit stages, which answers
    `predict`, `predict_proba` and `route`.

    The default differs from `CascadeClassifier`'s ``combine="vote"``, the paper's rule:
    `CascadeClassifier` has no data to choose with, while here the out-of-fold
    probabilities are at hand and the choice costs no model call (five threshold searches
    instead of one). ``combine="vote"`` tunes the thresholds of the paper's vote alone, as
    before ``"auto"`` existed.

    Args:
        stages: list of ``(name, classifier)`` pairs, cheapest or least accurate first: unfitted
            scikit-learn classifiers with ``predict_proba``, or
            [`SklearnStage`][cascademl.SklearnStage] wrappers (for their ``cost_per_sample``).
            Each is cloned and fitted ``cv + 1`` times.
        cv: the folds, as for ``sklearn.model_selection.cross_val_predict``: an integer
            (stratified k-fold), a splitter or an iterable of splits that partition the data.
        max_cost: the mean-cost budget per sample (see
            [`tune_cascade_from_proba`][cascademl.tuning.tune_cascade_from_proba]).
        min_score: the score target, or ``"best_stage"``; not with ``max_cost``.
        stage_cost: cost per sample of each stage; defaults to each `SklearnStage`'s
            ``cost_per_sample``, and 1 per stage call otherwise.
        scoring: what to maximise (see [`Scoring`][cascademl.tuning.Scoring]); accuracy
            by default.
        measure: the confidence measure (``"max_proba"``, ``"margin"`` or ``"entropy"``).
        combine: ``"auto"`` (the default: chosen on the out-of-fold probabilities among
            ``"last"``, ``"vote"`` and ``"mean"``), one of those names (fixed, as in
            `CascadeClassifier`) or a sequence of them to choose from (see
            [`CombineArg`][cascademl.tuning.CombineArg]).
        escalation_weight: the escalation weight of ``"vote"`` (a number or one per stage),
            when it is not tuned: with an explicit ``"vote"`` (or a sequence holding it) and
            no ``escalation_weight_grid``. ``"auto"`` tunes the weight.
        escalation_weight_grid: candidate escalation weights of ``"vote"`` tuned with the
            thresholds (``0`` is the exiting stage alone); ``None`` keeps
            ``escalation_weight``, or with ``"auto"`` tries 0.25, 0.5 and 0.75.
        n_candidates: candidate thresholds per stage.
        n_lambdas: cost penalties used to trace the frontier.
        n_jobs: parallel jobs over the folds (``None``: one, ``-1``: all cores).
        batch_size: the refit cascade's ``batch_size``.

    Attributes:
        cascade_: the fitted [`CascadeClassifier`][cascademl.CascadeClassifier] of the refit
            stages with the tuned rule.
        classes_: ndarray of shape (n_classes,), the class labels.
        stages_: the refit stages, in order.
        named_stages_: the refit stages by name.
        rule_: the tuned [`RoutingRule`][cascademl.RoutingRule].
        combine_: the combiner chosen (``rule_.combine``): ``"vote"``, ``"last"`` or
            ``"mean"``; with ``"vote"``, ``rule_.escalation_weights`` holds the weight.
        policy_: the tuned [`ConfidencePolicy`][cascademl.ConfidencePolicy].
        tuning_result_: the [`TuningResult`][cascademl.tuning.TuningResult] on the
            out-of-fold probabilities, with the frontier.
        oof_proba_: ndarray of shape (n_stages, n_samples, n_classes), each stage's
            out-of-fold probabilities.
        cv_results_: dict of arrays, one entry per frontier point (loadable as a
            DataFrame): ``"thresholds"``, ``"score"`` (out-of-fold), ``"mean_cost"``,
            ``"is_chosen"``.
        best_index_: the chosen frontier point's index in ``cv_results_``.
        best_score_: its out-of-fold score.
        n_features_in_: number of features seen by ``fit``, when the stages record it.
        feature_names_in_: feature names seen by ``fit``, when ``X`` has them.

    Examples:
        >>> from sklearn.datasets import load_iris
        >>> from sklearn.linear_model import LogisticRegression
        >>> from sklearn.naive_bayes import GaussianNB
        >>> X, y = load_iris(return_X_y=True)
        >>> model = CascadeClassifierCV(
        ...     [("nb", GaussianNB()), ("lr", LogisticRegression(max_iter=1000))],
        ...     cv=3, stage_cost=[1.0, 5.0], max_cost=3.0,
        ... ).fit(X, y)
        >>> model.tuning_result_.mean_cost <= 3.0
        True
        >>> model.combine_ in ("vote", "last", "mean")  # chosen on out-of-fold data
        True
        >>> model.predict(X[:3]).shape
        (3,)
    """

    def __init__(
        self,
        stages: Sequence[tuple[str, Any]],
        *,
        cv: Any = 5,
        max_cost: float | None = None,
        min_score: MinScore | None = None,
        stage_cost: Sequence[float] | None = None,
        scoring: Scoring = None,
        measure: ConfidenceMeasure = "max_proba",
        combine: CombineArg = "auto",
        escalation_weight: float | Sequence[float] = 0.5,
        escalation_weight_grid: Sequence[float] | None = None,
        n_candidates: int = 64,
        n_lambdas: int = 12,
        n_jobs: int | None = None,
        batch_size: int | None = None,
    ) -> None:
        self.stages = stages
        self.cv = cv
        self.max_cost = max_cost
        self.min_score = min_score
        self.stage_cost = stage_cost
        self.scoring = scoring
        self.measure = measure
        self.combine = combine
        self.escalation_weight = escalation_weight
        self.escalation_weight_grid = escalation_weight_grid
        self.n_candidates = n_candidates
        self.n_lambdas = n_lambdas
        self.n_jobs = n_jobs
        self.batch_size = batch_size

    def fit(self, X: Any, y: Any, **fit_params: Any) -> Self:
        """Collect out-of-fold probabilities, tune the rule on them, refit on all data.

        Args:
            X: array-like of shape (n_samples, n_features), or a DataFrame.
            y: array-like of shape (n_samples,), labels.
            **fit_params: ``sample_weight``, passed to every stage's ``fit`` in every fold
                (the training folds' rows) and in the final refit; with
                ``sklearn.set_config(enable_metadata_routing=True)``, any metadata the
                stages request (``stage.set_fit_request(sample_weight=True)``), and
                ``groups`` for a ``cv`` splitter that takes them. With ``sample_weight``,
                the thresholds are tuned on the weighted out-of-fold score and mean cost
                (see [`tune_cascade_from_proba`][cascademl.tuning.tune_cascade_from_proba]).

        Returns:
            The fitted estimator.

        Raises:
            StageInterfaceError: if ``stages`` is not a list of uniquely named
                ``(name, classifier)`` pairs with ``fit`` and ``predict_proba``, or a stage
                does not accept ``sample_weight``.
            TypeError: for fit parameters other than ``sample_weight`` without metadata
                routing.
            PolicyError: for invalid tuning parameters, or when no thresholds meet
                ``max_cost`` or ``min_score`` on the out-of-fold probabilities.
        """
        pairs = self._validate_stages()
        check_classification_targets(y)
        y = column_or_1d(y, warn=True)
        classes = np.unique(y)
        stage_params, split_params = self._route_fit_params(pairs, fit_params)
        splits = list(check_cv(self.cv, y, classifier=True).split(X, y, **split_params))
        oof = np.stack(
            [
                cross_val_predict(
                    clone(estimator),
                    X,
                    y,
                    cv=splits,
                    method="predict_proba",
                    n_jobs=self.n_jobs,
                    params=stage_params[name],
                )
                for name, estimator, _ in pairs
            ]
        )
        costs = (
            [float(c) for c in self.stage_cost]
            if self.stage_cost is not None
            else [1.0 if c is None else float(c) for _, _, c in pairs]
        )
        rule = RoutingRule.from_params(
            ConfidencePolicy(self.measure),
            n_stages=len(pairs),
            # The tuner validates ``combine`` and puts each candidate combiner in the rule.
            combine=self.combine
            if isinstance(self.combine, str) and self.combine in COMBINE_METHODS
            else "vote",
            escalation_weight=self.escalation_weight,
        )
        result = tune_cascade_from_proba(
            oof,
            y,
            classes=classes,
            rule=rule,
            stage_cost=costs,
            max_cost=self.max_cost,
            min_score=self.min_score,
            scoring=self.scoring,
            combine=self.combine,
            escalation_weight_grid=self.escalation_weight_grid,
            n_candidates=self.n_candidates,
            n_lambdas=self.n_lambdas,
            stage_names=[name for name, _, _ in pairs],
            sample_weight=fit_params.get("sample_weight"),
        )
        as_list = isinstance(self.escalation_weight, Sequence)
        cascade = CascadeClassifier(
            [
                (name, SklearnStage(clone(estimator), cost_per_sample=cost))
                for (name, estimator, _), cost in zip(pairs, costs, strict=True)
            ],
            batch_size=self.batch_size,
            **_rule_params(result.rule, as_list=as_list),
        ).fit(X, y, **{k: v for k, v in fit_params.items() if k != "groups"})
        self.cascade_ = cascade
        self.classes_ = cascade.classes_
        self.stages_ = cascade.stages_
        self.named_stages_ = cascade.named_stages_
        self.rule_ = result.rule
        self.combine_ = result.rule.combine
        self.policy_ = result.policy
        self.tuning_result_ = result
        self.oof_proba_ = oof
        self.cv_results_ = _cv_results(result)
        self.best_index_ = result.chosen_index
        self.best_score_ = result.score
        for name in ("n_features_in_", "feature_names_in_"):
            if hasattr(cascade, name):
                setattr(self, name, getattr(cascade, name))
        return self

    def get_metadata_routing(self) -> MetadataRouter:
        """How fit metadata reaches the stages and the splitter (metadata routing).

        Each stage receives, in each fold's ``fit`` and in the final refit, the metadata it
        requested; a ``cv`` splitter receives ``groups`` in ``split``.

        Returns:
            A ``MetadataRouter`` with a ``fit -> fit`` mapping per stage and
            ``fit -> split`` for the splitter.
        """
        router = MetadataRouter(owner=type(self).__name__).add_self_request(self)
        stages = self.stages if _is_pair_list(self.stages) else []
        for name, stage in stages:
            inner = _inner(stage)
            if hasattr(inner, "get_metadata_routing"):
                router.add(
                    **{name: inner}, method_mapping=MethodMapping().add(callee="fit", caller="fit")
                )
        router.add(
            splitter=check_cv(self.cv, classifier=True),
            method_mapping=MethodMapping().add(callee="split", caller="fit"),
        )
        return router

    def _route_fit_params(
        self, pairs: list[tuple[str, Any, float | None]], fit_params: dict[str, Any]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        """Each stage's fit metadata by name, and the splitter's ``split`` metadata."""
        if sklearn.get_config().get("enable_metadata_routing", False):
            routed = process_routing(self, "fit", **fit_params)
            by_stage = {name: dict(routed.get(name, {}).get("fit", {})) for name, _, _ in pairs}
            return by_stage, dict(routed.splitter.split)
        by_stage = _stage_fit_params(self, [(n, e) for n, e, _ in pairs], fit_params)
        for name, estimator, _ in pairs:
            _check_accepts(name, estimator, by_stage[name])
        return by_stage, {}

    def route(self, X: Any, **kwargs: Any) -> CascadeResult:
        """Route samples through the refit stages; see `CascadeClassifier.route`."""
        return self._fitted_cascade().route(X, **kwargs)

    def predict_proba(self, X: Any) -> ProbaArray:
        """Final probabilities, array of shape (n_samples, n_classes)."""
        return self._fitted_cascade().predict_proba(X)

    def predict(self, X: Any) -> LabelArray:
        """Final labels, array of shape (n_samples,)."""
        return self._fitted_cascade().predict(X)

    def _fitted_cascade(self) -> CascadeClassifier:
        check_fitted(self, attributes="cascade_", before="predicting")
        return self.cascade_

    def _validate_stages(self) -> list[tuple[str, Any, float | None]]:
        """``(name, estimator, cost_per_sample)`` for each stage."""
        out = []
        for name, stage in _check_pairs(self.stages, reserved=set(self.get_params(deep=False))):
            estimator, cost = (
                (stage.estimator, stage.cost_per_sample)
                if isinstance(stage, SklearnStage)
                else (stage, None)
            )
            if not (hasattr(estimator, "fit") and hasattr(estimator, "predict_proba")):
                msg = (
                    f"stage {name!r} ({type(estimator).__name__}) must be a scikit-learn "
                    "classifier with fit and predict_proba: it is fitted once per fold"
                )
                raise StageInterfaceError(msg)
            out.append((name, estimator, cost))
        return out


def _cv_results(result: TuningResult) -> dict[str, Any]:
    """The frontier as a dict of equally long arrays, one entry per point."""
    costs, scores = result.frontier_arrays()
    thresholds = np.empty(len(result.frontier), dtype=object)
    thresholds[:] = [point.thresholds for point in result.frontier]
    is_chosen = np.zeros(len(result.frontier), dtype=bool)
    is_chosen[result.chosen_index] = True
    return {"thresholds": thresholds, "score": scores, "mean_cost": costs, "is_chosen": is_chosen}
