"""Abstention: a reject option on the cascade's final decision, and how to evaluate it.

A cascade with a ``reject_threshold`` abstains on a sample when the confidence of its final
(combined) probabilities is below the threshold. Abstained samples are marked with the
singleton [`ABSTAIN`][cascademl.abstention.ABSTAIN], which fits in an object array next to
labels of any type and is never equal to a label.

The evaluation functions are pure numpy: ``coverage`` (the share of samples decided),
``selective_accuracy`` (accuracy on the decided samples), ``selective_risk`` (its
complement) and the risk-coverage curve with its area (AURC).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, ClassVar, Final, final

import numpy as np
from sklearn.metrics import auc

from cascademl._routing import confidence_scores
from cascademl._typing import BoolArray, ConfidenceMeasure, FloatArray, LabelArray, ProbaArray
from cascademl.exceptions import PolicyError

__all__ = [
    "ABSTAIN",
    "AbstainType",
    "RiskCoverageCurve",
    "abstain_mask",
    "check_reject_threshold",
    "coverage",
    "is_abstained",
    "predict_with_abstention",
    "risk_coverage_curve",
    "selective_accuracy",
    "selective_risk",
]


@final
class AbstainType:
    """The type of [`ABSTAIN`][cascademl.abstention.ABSTAIN]; it has exactly one instance.

    Examples:
        >>> AbstainType() is ABSTAIN
        True
        >>> ABSTAIN
        ABSTAIN
    """

    __slots__ = ()
    _instance: ClassVar[AbstainType | None] = None

    def __new__(cls) -> AbstainType:
        """Return the one instance."""
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        """``ABSTAIN``."""
        return "ABSTAIN"

    def __reduce__(self) -> str:
        """Pickle by name, so that unpickling gives back the singleton."""
        return "ABSTAIN"

    def __copy__(self) -> AbstainType:
        """The singleton itself."""
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> AbstainType:
        """The singleton itself."""
        return self


ABSTAIN: Final = AbstainType()
"""Marks a sample the cascade abstained on, in an object array of predictions.

Compare with ``is``: ``pred is ABSTAIN``; for arrays use
[`is_abstained`][cascademl.abstention.is_abstained]."""


def check_reject_threshold(value: object, name: str = "reject_threshold") -> float | None:
    """Validate a reject threshold: ``None`` or a number in ``[0, 1]``.

    Raises:
        PolicyError: naming ``name`` and the value.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        msg = f"{name} must be None or a number in [0, 1], got {value!r}"
        raise PolicyError(msg)
    number = float(value)
    if math.isnan(number) or not 0.0 <= number <= 1.0:
        msg = f"{name} must be None or a number in [0, 1], got {value!r}"
        raise PolicyError(msg)
    return number


def abstain_mask(
    proba: ProbaArray, reject_threshold: float, *, measure: ConfidenceMeasure = "max_proba"
) -> BoolArray:
    """Which samples to abstain on: confidence of ``proba`` strictly below the threshold.

    Args:
        proba: array-like of shape (n_samples, n_classes), the final probabilities.
        reject_threshold: in ``[0, 1]``; 0 never abstains.
        measure: the confidence measure.

    Returns:
        bool ndarray of shape (n_samples,).

    Examples:
        >>> import numpy as np
        >>> abstain_mask(np.array([[0.9, 0.1], [0.55, 0.45]]), 0.6).tolist()
        [False, True]
    """
    threshold = check_reject_threshold(reject_threshold)
    if threshold is None:
        msg = "reject_threshold must be a number in [0, 1], got None"
        raise PolicyError(msg)
    conf = confidence_scores(np.asarray(proba, dtype=np.float64), measure)
    return np.asarray(conf < threshold, dtype=bool)


def predict_with_abstention(
    proba: ProbaArray,
    classes: Any,
    reject_threshold: float | None,
    *,
    measure: ConfidenceMeasure = "max_proba",
) -> LabelArray:
    """Labels from final probabilities, with [`ABSTAIN`][cascademl.abstention.ABSTAIN] where unsure.

    Args:
        proba: array-like of shape (n_samples, n_classes).
        classes: array-like of shape (n_classes,), the labels of the columns.
        reject_threshold: abstain below this confidence; ``None`` never abstains.
        measure: the confidence measure.

    Returns:
        object ndarray of shape (n_samples,) holding labels and ``ABSTAIN``.

    Examples:
        >>> import numpy as np
        >>> proba = np.array([[0.9, 0.1], [0.55, 0.45]])
        >>> predict_with_abstention(proba, ["cat", "dog"], 0.6).tolist()
        ['cat', ABSTAIN]
    """
    p = np.asarray(proba, dtype=np.float64)
    labels = np.asarray(classes)
    out = np.empty(p.shape[0], dtype=object)
    out[:] = labels[np.argmax(p, axis=1)].tolist() if p.shape[0] else []
    threshold = check_reject_threshold(reject_threshold)
    if threshold is not None:
        out[abstain_mask(p, threshold, measure=measure)] = ABSTAIN
    return out


def is_abstained(predictions: Any) -> BoolArray:
    """Which entries of ``predictions`` are ``ABSTAIN``.

    Examples:
        >>> is_abstained(["a", ABSTAIN, "b"]).tolist()
        [False, True, False]
    """
    values = np.asarray(predictions, dtype=object).ravel()
    return np.fromiter((v is ABSTAIN for v in values), dtype=bool, count=values.size)


def coverage(predictions: Any) -> float:
    """The share of samples that were decided (not ``ABSTAIN``); 0 for no samples.

    Examples:
        >>> coverage(["a", ABSTAIN, "b", "a"])
        0.75
    """
    mask = is_abstained(predictions)
    return float(1.0 - mask.mean()) if mask.size else 0.0


def selective_accuracy(y_true: Any, predictions: Any) -> float:
    """Accuracy on the samples that were decided; NaN when every sample was abstained on.

    Examples:
        >>> selective_accuracy(["a", "b", "b"], ["a", ABSTAIN, "a"])
        0.5
    """
    y = np.asarray(y_true, dtype=object).ravel()
    pred = np.asarray(predictions, dtype=object).ravel()
    if y.shape != pred.shape:
        msg = f"y_true has {y.size} labels but predictions has {pred.size}"
        raise PolicyError(msg)
    kept = ~is_abstained(pred)
    if not kept.any():
        return math.nan
    return float(np.mean(y[kept] == pred[kept]))


def selective_risk(y_true: Any, predictions: Any) -> float:
    """Error rate on the samples that were decided (``1 - selective_accuracy``)."""
    return 1.0 - selective_accuracy(y_true, predictions)


@dataclass(frozen=True, slots=True, eq=False)
class RiskCoverageCurve:
    """Selective risk as a function of coverage, from the most confident sample down.

    Attributes:
        coverage: ndarray of shape (n_points,), increasing, in ``(0, 1]``.
        risk: ndarray of shape (n_points,), the error rate on the covered samples.
        thresholds: ndarray of shape (n_points,), the reject threshold giving each point
            (samples with confidence at or above it are covered).
        aurc: area under the risk-coverage curve (lower is better).
    """

    coverage: FloatArray
    risk: FloatArray
    thresholds: FloatArray
    aurc: float


def risk_coverage_curve(
    y_true: Any,
    proba: ProbaArray,
    *,
    classes: Any,
    measure: ConfidenceMeasure = "max_proba",
) -> RiskCoverageCurve:
    """The risk-coverage curve of final probabilities, one point per distinct confidence.

    Args:
        y_true: array-like of shape (n_samples,), true labels.
        proba: array-like of shape (n_samples, n_classes), the final probabilities.
        classes: array-like of shape (n_classes,), the labels of the columns.
        measure: the confidence measure used for rejecting.

    Returns:
        The curve, with its area computed by the trapezoidal rule over coverage (the
        first point is extended to coverage 0 at its own risk).

    Examples:
        >>> import numpy as np
        >>> proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
        >>> curve = risk_coverage_curve(["a", "b", "a", "b"], proba, classes=["a", "b"])
        >>> curve.coverage.tolist(), curve.risk.tolist()
        ([0.25, 0.5, 0.75, 1.0], [0.0, 0.5, 0.3333333333333333, 0.25])
    """
    p = np.asarray(proba, dtype=np.float64)
    labels = np.asarray(classes)
    y = np.asarray(y_true, dtype=object).ravel()
    if p.ndim != 2 or p.shape[0] != y.size or y.size == 0:  # noqa: PLR2004
        msg = f"proba must have shape (len(y_true), n_classes) with samples, got {p.shape}"
        raise PolicyError(msg)
    wrong = labels[np.argmax(p, axis=1)].astype(object) != y
    conf = confidence_scores(p, measure)
    order = np.argsort(-conf, kind="stable")
    conf_sorted = conf[order]
    errors = np.cumsum(wrong[order])
    # One point per distinct confidence: the last index of each run of equal values.
    last = np.flatnonzero(np.r_[conf_sorted[1:] != conf_sorted[:-1], True])
    n_covered = last + 1
    cov = n_covered / y.size
    risk = errors[last] / n_covered
    area = float(auc(np.r_[0.0, cov], np.r_[risk[0], risk]))
    return RiskCoverageCurve(
        coverage=cov.astype(np.float64),
        risk=risk.astype(np.float64),
        thresholds=conf_sorted[last].astype(np.float64),
        aurc=area,
    )
