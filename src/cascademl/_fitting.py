"""How `CascadeClassifier` takes its stages: checks, adoption of fitted ones, fitting.

Pure helpers of ``fit`` and ``from_fitted``: they train a stage only when it is not fitted
(a fitted one is adopted unchanged), check that the stages agree on the classes, and read
the feature count and names the stages were fitted on. Nothing here routes samples.
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Collection, Iterator
from typing import Any

import numpy as np
import sklearn
from sklearn.base import BaseEstimator, clone
from sklearn.utils import assert_all_finite
from sklearn.utils.metadata_routing import process_routing
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import column_or_1d

from cascademl._typing import IntArray, LabelArray
from cascademl.exceptions import ClassMismatchError, PolicyError, StageInterfaceError
from cascademl.stages import SklearnStage, check_stage, check_stage_classes, is_fitted

logger = logging.getLogger("cascademl.cascade")


def _stage_features(fitted: list[Any]) -> tuple[int | None, Any]:
    """``n_features_in_`` and ``feature_names_in_`` the fitted stages agree on, else None."""
    inner = [_inner(st) for st in fitted]
    counts = {getattr(est, "n_features_in_", None) for est in inner}
    n_features = int(counts.pop()) if len(counts) == 1 and None not in counts else None  # type: ignore[arg-type]
    names = [getattr(est, "feature_names_in_", None) for est in inner]
    if names[0] is not None and all(n is not None and np.array_equal(n, names[0]) for n in names):
        return n_features, np.asarray(names[0], dtype=object)
    return n_features, None


def _allow_nan(pairs: list[tuple[str, Any]]) -> bool:
    from sklearn.utils import get_tags  # noqa: PLC0415 - local: only needed for tags

    try:
        return all(get_tags(_inner(stage)).input_tags.allow_nan for _, stage in pairs)
    except (AttributeError, TypeError):
        return False


def _adopt_stage(owner: str, name: str, stage: Any, *, without_y: bool = False) -> Any:
    """A fitted stage as the cascade (class ``owner``) holds it; never trains."""
    if not is_fitted(stage):
        kind = type(_inner(stage)).__name__
        if without_y:
            msg = (
                f"{owner} requires y to be passed, but the target y is None "
                f"and stage {name!r} ({kind}) is not fitted; fit(X, None) needs every "
                "stage fitted already"
            )
            raise ClassMismatchError(msg)
        msg = f"stage {name!r} ({kind}) is not fitted; from_fitted needs fitted stages"
        raise StageInterfaceError(msg)
    adopted: Any = stage
    if isinstance(stage, SklearnStage):
        adopted = SklearnStage(stage.estimator, cost_per_sample=stage.cost_per_sample)
        adopted.estimator_ = getattr(stage, "estimator_", stage.estimator)
    elif isinstance(stage, BaseEstimator):
        adopted = SklearnStage(stage)
        adopted.estimator_ = stage
    check_stage(adopted, name, fitted=True)
    check_stage_classes(adopted, name)
    return adopted


def _fit_stage(name: str, stage: Any, X: Any, y: Any, params: dict[str, Any]) -> Any:
    if isinstance(stage, (SklearnStage, BaseEstimator)):
        inner = _inner(stage)
        cost = stage.cost_per_sample if isinstance(stage, SklearnStage) else None
        if is_fitted(inner):
            params = {}  # a fitted estimator is adopted, never refit
        _check_accepts(name, inner, params)
        fitted = SklearnStage(inner, cost_per_sample=cost).fit(X, y, **params)
    elif is_fitted(stage):
        check_stage(stage, name, fitted=True)
        fitted = stage
    else:
        logger.debug("fitting stage %r (%s)", name, type(stage).__name__)
        _check_accepts(name, stage, params)
        fitted = clone(stage).fit(X, y, **params)
        check_stage(fitted, name, fitted=True)
    check_stage_classes(fitted, name)
    return fitted


def _agreed_classes(
    pairs: list[tuple[str, Any]], fitted: list[Any], y: LabelArray | None
) -> LabelArray:
    """The stages' common classes, sorted; ``y`` must hold no other class."""
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
    if y is not None:
        unknown = set(np.unique(y).tolist()) - ref_set
        if unknown:
            msg = (
                f"y holds classes {sorted(unknown, key=str)} that the stages do not "
                f"predict (they know {sorted(ref_set, key=str)})"
            )
            raise ClassMismatchError(msg)
    return np.sort(reference)


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


def _check_accepts(name: str, estimator: Any, params: dict[str, Any]) -> None:
    if "sample_weight" not in params:
        return
    try:
        signature = inspect.signature(estimator.fit)
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return
    accepts = "sample_weight" in signature.parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
    )
    if not accepts:
        msg = (
            f"stage {name!r} ({type(estimator).__name__}) does not accept sample_weight in "
            "fit; give it a fitted estimator, or fit without sample_weight"
        )
        raise StageInterfaceError(msg)


def _check_y(y: Any) -> LabelArray:
    labels = np.asarray(y)
    if labels.dtype.kind in "fc":
        assert_all_finite(labels, input_name="y")
    check_classification_targets(y)
    return np.asarray(column_or_1d(y, warn=True))


def _check_lengths(X: Any, y: LabelArray) -> None:
    shape = getattr(X, "shape", None)
    if shape is not None and len(shape) > 0:
        n_samples: int | None = int(shape[0])
    elif isinstance(X, (list, tuple)):
        n_samples = len(X)
    else:
        n_samples = None  # a Dataset, a loader or a custom container: the stages decide
    if n_samples is not None and n_samples != len(y):
        msg = f"X has {n_samples} samples but y has {len(y)} labels; give one label per sample"
        raise PolicyError(msg)


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


def _check_pairs(stages: object, *, reserved: Collection[str]) -> list[tuple[str, Any]]:
    """``stages`` as a list of uniquely named ``(name, stage)`` pairs, or an error.

    A name must be non-empty, free of ``"__"`` (the nested-parameter separator) and must
    not be one of ``reserved`` (the owner's own parameters).
    """
    if not _is_pair_list(stages) or len(stages) == 0:  # type: ignore[arg-type]
        msg = f"stages must be a non-empty list of (name, stage) pairs, got {type(stages).__name__}"
        raise StageInterfaceError(msg)
    pairs = [(str(n), s) for n, s in stages]  # type: ignore[attr-defined]
    names = [n for n, _ in pairs]
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
    return pairs


def _stage_fit_params(
    owner: Any, pairs: list[tuple[str, Any]], fit_params: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """The ``fit`` metadata of each stage, by name.

    With metadata routing on, what each stage requested (scikit-learn's
    ``process_routing`` on ``owner``); otherwise ``sample_weight`` for every stage, and any
    other key is an error.
    """
    if sklearn.get_config().get("enable_metadata_routing", False):
        routed = process_routing(owner, "fit", **fit_params)
        # A stage outside scikit-learn's routing (no get_metadata_routing) gets nothing.
        return {name: dict(routed.get(name, {}).get("fit", {})) for name, _ in pairs}
    unknown = sorted(set(fit_params) - {"sample_weight"})
    if unknown:
        msg = (
            f"fit got unexpected parameters {unknown}; only sample_weight is passed to the "
            "stages unless metadata routing is on "
            "(sklearn.set_config(enable_metadata_routing=True))"
        )
        raise TypeError(msg)
    weight = fit_params.get("sample_weight")
    return {name: {} if weight is None else {"sample_weight": weight} for name, _ in pairs}
