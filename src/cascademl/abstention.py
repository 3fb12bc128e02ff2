"""Abstention: a reject option on the cascade's final decision, and how to evaluate it.

A cascade with a ``reject_threshold`` abstains on a sample when the confidence of its final
(combined) probabilities is below the threshold. Abstained samples get an *abstain label*
of the classes' own type (``abstain_label``, for example ``-1`` or ``"abstain"``), so the
predictions stay a plain array that scikit-learn's metrics accept
(``classification_report`` lists the abstain label as one more row). Without a label, one
is picked by [`resolve_abstain_label`][cascademl.abstention.resolve_abstain_label]. The
singleton [`ABSTAIN`][cascademl.abstention.ABSTAIN] can still be asked for explicitly
(``abstain_label=ABSTAIN``); it needs an object array.

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
    "resolve_abstain_label",
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

Only used when asked for (``abstain_label=ABSTAIN``): the default abstain label has the
classes' type. Compare with ``is``: ``pred is ABSTAIN``; for arrays use
[`is_abstained`][cascademl.abstention.is_abstained]."""


def resolve_abstain_label(abstain_label: Any, classes: Any) -> Any:
    """The label to give abstained samples, checked against the classes.

    ``None`` picks a default of the classes' type: ``-1`` for signed integer classes (one
    below the smallest class when ``-1`` is a class, one above the largest when that
    overflows the dtype), the dtype's largest value for unsigned integer classes (255 for
    ``uint8``; the next one down while it is a class), ``"abstain"`` for string classes and
    NaN for float classes. Other classes (booleans, mixed objects) need an explicit label.

    Args:
        abstain_label: the label asked for, ``None`` or [`ABSTAIN`][cascademl.abstention.ABSTAIN].
        classes: array-like of shape (n_classes,), the class labels.

    Returns:
        The abstain label.

    Raises:
        PolicyError: if the label is one of the classes, is not of the classes' type, or
            ``None`` has no default for these classes.

    Examples:
        >>> resolve_abstain_label(None, [0, 1, 2])
        -1
        >>> resolve_abstain_label(None, [-1, 0, 1])
        -2
        >>> resolve_abstain_label(None, np.array([0, 1, 2], dtype=np.uint8))
        255
        >>> resolve_abstain_label(None, ["cat", "dog"])
        'abstain'
    """
    labels = np.asarray(classes)
    if abstain_label is ABSTAIN:
        return ABSTAIN
    label = _default_label(labels) if abstain_label is None else abstain_label
    if not _same_type(label, labels):
        msg = (
            f"abstain_label must be of the classes' type ({_describe(labels)}), got "
            f"{label!r} ({type(label).__name__})"
        )
        raise PolicyError(msg)
    if any(_equal(label, c) for c in labels.tolist()):
        msg = (
            f"abstain_label {label!r} is one of the classes {labels.tolist()[:10]}; pick a "
            "label that no class uses"
        )
        raise PolicyError(msg)
    return label


def _default_label(labels: np.ndarray[Any, Any]) -> Any:
    values = labels.tolist()
    kind = labels.dtype.kind
    if kind == "O" and values and all(isinstance(v, str) for v in values):
        kind = "U"
    elif kind == "O" and values and all(_is_int(v) for v in values):
        kind = "i"
    if kind in "iu":
        candidate = _default_int_label(labels, values)
        if candidate is not None:
            return candidate
    elif kind in "US":
        if "abstain" not in values:
            return "abstain"
    elif kind == "f":
        return math.nan
    msg = (
        f"abstain_label=None has no default for classes {values[:10]} ({_describe(labels)}); "
        "give abstain_label, a value of the classes' type that is not a class "
        "(for example -1 or 'abstain')"
    )
    raise PolicyError(msg)


def _default_int_label(labels: np.ndarray[Any, Any], values: list[Any]) -> int | None:
    """The default abstain label of integer classes, or ``None`` when there is none.

    Signed: -1, else one below the smallest class, else one above the largest. Unsigned:
    the dtype's largest value that is not a class.
    """
    taken = set(values)
    if labels.dtype.kind == "u":
        top = int(np.iinfo(labels.dtype).max)
        # At most len(taken) steps down from the dtype's maximum (255 for uint8).
        for candidate in range(top, max(top - len(taken), -1), -1):
            if candidate not in taken:
                return candidate
        return None
    low, high = (
        (int(np.iinfo(labels.dtype).min), int(np.iinfo(labels.dtype).max))
        if labels.dtype.kind == "i"
        else (-math.inf, math.inf)  # Python integers in an object array: unbounded
    )
    for candidate in (-1, min(values) - 1, max(values) + 1):
        if candidate not in taken and low <= candidate <= high:
            return int(candidate)
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def _describe(labels: np.ndarray[Any, Any]) -> str:
    return f"dtype {labels.dtype}"


def _same_type(label: object, labels: np.ndarray[Any, Any]) -> bool:
    kind = labels.dtype.kind
    values = labels.tolist()
    if kind == "O" and values and all(isinstance(v, str) for v in values):
        kind = "U"
    elif kind == "O" and values and all(_is_int(v) for v in values):
        kind = "o"  # Python integers of any size
    if kind in "iu":
        info = np.iinfo(labels.dtype)
        ok = _is_int(label) and info.min <= int(label) <= info.max  # type: ignore[call-overload]
    elif kind == "o":
        ok = _is_int(label)
    elif kind == "f":
        ok = isinstance(label, numbers.Real) and not isinstance(label, bool | np.bool_)
    elif kind in "US":
        ok = isinstance(label, str)
    else:
        ok = kind == "O"  # mixed objects: any label that is not a class
    return ok


def _equal(a: object, b: object) -> bool:
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def _output_dtype(label: object, labels: np.ndarray[Any, Any]) -> np.dtype[Any]:
    dtype: np.dtype[Any] = labels.dtype
    if label is ABSTAIN:
        dtype = np.dtype(object)
    elif dtype.kind in "US":
        dtype = np.result_type(dtype, np.asarray(label).dtype)
    return dtype


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
    abstain_label: Any = None,
) -> LabelArray:
    """Labels from final probabilities, with ``abstain_label`` where unsure.

    Args:
        proba: array-like of shape (n_samples, n_classes).
        classes: array-like of shape (n_classes,), the labels of the columns.
        reject_threshold: abstain below this confidence; ``None`` never abstains.
        measure: the confidence measure.
        abstain_label: the label of abstained samples, of the classes' type; ``None``
            picks one with [`resolve_abstain_label`][cascademl.abstention.resolve_abstain_label];
            [`ABSTAIN`][cascademl.abstention.ABSTAIN] gives an object array.

    Returns:
        ndarray of shape (n_samples,) with the classes' dtype (a string dtype is widened
        to hold the label; object with ``ABSTAIN``).

    Raises:
        PolicyError: for an invalid ``reject_threshold`` or ``abstain_label``.

    Examples:
        >>> import numpy as np
        >>> proba = np.array([[0.9, 0.1], [0.55, 0.45]])
        >>> predict_with_abstention(proba, ["cat", "dog"], 0.6).tolist()
        ['cat', 'abstain']
        >>> predict_with_abstention(proba, [3, 7], 0.6, abstain_label=-9)
        array([ 3, -9])
    """
    p = np.asarray(proba, dtype=np.float64)
    labels = np.asarray(classes)
    threshold = check_reject_threshold(reject_threshold)
    if threshold is None:
        return np.asarray(labels[np.argmax(p, axis=1)] if p.shape[0] else labels[:0])
    label = resolve_abstain_label(abstain_label, labels)
    out = np.empty(p.shape[0], dtype=_output_dtype(label, labels))
    if p.shape[0]:
        out[:] = (
            labels[np.argmax(p, axis=1)].tolist()
            if label is ABSTAIN
            else labels[np.argmax(p, axis=1)]
        )
        out[abstain_mask(p, threshold, measure=measure)] = label
    return out


def is_abstained(predictions: Any, *, abstain_label: Any = ABSTAIN) -> BoolArray:
    """Which entries of ``predictions`` are the abstain label.

    Args:
        predictions: array-like of shape (n_samples,), as `predict_or_abstain` returns.
        abstain_label: the label that marks abstentions (``cascade.abstain_label_``); NaN
            matches NaN. The default, [`ABSTAIN`][cascademl.abstention.ABSTAIN], needs
            predictions in an object array (or a list).

    Raises:
        PolicyError: with the default ``abstain_label`` and predictions that are not an
            object array: they cannot hold ``ABSTAIN``, so the label must be named.

    Examples:
        >>> is_abstained(["a", ABSTAIN, "b"]).tolist()
        [False, True, False]
        >>> is_abstained(np.array([3, -1, 7]), abstain_label=-1).tolist()
        [False, True, False]
    """
    if abstain_label is ABSTAIN:
        if not isinstance(predictions, (list, tuple)) and np.asarray(predictions).dtype != object:
            msg = (
                f"predictions have dtype {np.asarray(predictions).dtype}, which cannot hold "
                "ABSTAIN; pass abstain_label= the label predict_or_abstain used "
                "(cascade.abstain_label_)"
            )
            raise PolicyError(msg)
        values = np.asarray(predictions, dtype=object).ravel()
        return np.fromiter((v is ABSTAIN for v in values), dtype=bool, count=values.size)
    values = np.asarray(predictions, dtype=object).ravel()
    if isinstance(abstain_label, float) and math.isnan(abstain_label):
        return np.fromiter(
            (isinstance(v, numbers.Real) and math.isnan(float(v)) for v in values),
            dtype=bool,
            count=values.size,
        )
    return np.fromiter((_equal(v, abstain_label) for v in values), dtype=bool, count=values.size)


def coverage(predictions: Any, *, abstain_label: Any = ABSTAIN) -> float:
    """The share of samples that were decided (not abstained on); 0 for no samples.

    ``abstain_label`` is as in [`is_abstained`][cascademl.abstention.is_abstained].

    Examples:
        >>> coverage(["a", ABSTAIN, "b", "a"])
        0.75
        >>> coverage(np.array(["a", "abstain"]), abstain_label="abstain")
        0.5
    """
    mask = is_abstained(predictions, abstain_label=abstain_label)
    return float(1.0 - mask.mean()) if mask.size else 0.0


def selective_accuracy(y_true: Any, predictions: Any, *, abstain_label: Any = ABSTAIN) -> float:
    """Accuracy on the samples that were decided; NaN when every sample was abstained on.

    ``abstain_label`` is as in [`is_abstained`][cascademl.abstention.is_abstained].

    Examples:
        >>> selective_accuracy(["a", "b", "b"], ["a", ABSTAIN, "a"])
        0.5
    """
    y = np.asarray(y_true, dtype=object).ravel()
    kept = ~is_abstained(predictions, abstain_label=abstain_label)
    pred = np.asarray(predictions, dtype=object).ravel()
    if y.shape != pred.shape:
        msg = f"y_true has {y.size} labels but predictions has {pred.size}"
        raise PolicyError(msg)
    if not kept.any():
        return math.nan
    return float(np.mean(y[kept] == pred[kept]))


def selective_risk(y_true: Any, predictions: Any, *, abstain_label: Any = ABSTAIN) -> float:
    """Error rate on the samples that were decided (``1 - selective_accuracy``)."""
    return 1.0 - selective_accuracy(y_true, predictions, abstain_label=abstain_label)


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
