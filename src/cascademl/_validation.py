"""Input checks shared across the package: row indexing, positive integers, fitted state.

These helpers keep one wording for one kind of error, so a message users have seen once
reads the same whichever function raised it.
"""

from __future__ import annotations

import numbers
import sys
import warnings
from typing import Any

import numpy as np
from sklearn.exceptions import NotFittedError as _SklearnNotFittedError
from sklearn.utils.validation import check_is_fitted as _sk_check_is_fitted

from cascademl.exceptions import NotFittedError, PolicyError

__all__ = [
    "check_batch_size",
    "check_fitted",
    "check_positive_int",
    "take_rows",
    "warn_data_ignored",
]


def take_rows(X: Any, idx: Any) -> Any:
    """Select the rows ``idx`` of ``X``, keeping the input's own type.

    numpy arrays and scipy sparse matrices are indexed with ``X[idx]``, pandas DataFrames and
    Series with ``X.iloc[idx]`` (so column names and dtypes survive), lists and tuples give a
    list of their items, and a torch tensor ``X[torch.as_tensor(idx)]`` (torch is imported
    only when ``X`` already is a tensor). Anything else is indexed with ``X[idx]``.

    Args:
        X: the inputs, one row per sample.
        idx: array-like of integer row positions.

    Returns:
        The selected rows, in the order of ``idx``.
    """
    rows = np.asarray(idx, dtype=np.intp)
    if hasattr(X, "iloc"):
        return X.iloc[rows]
    if isinstance(X, (list, tuple)):
        return [X[i] for i in rows.tolist()]
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(X, torch.Tensor):
        return X[torch.as_tensor(rows, dtype=torch.long, device=X.device)]
    if _is_sparse(X) and getattr(X, "format", "") in {"coo", "dia", "bsr"}:
        return X.tocsr()[rows]
    return X[rows]


def _is_sparse(X: Any) -> bool:
    sparse = sys.modules.get("scipy.sparse")
    return sparse is not None and bool(sparse.issparse(X))


def check_positive_int(value: object, name: str) -> int:
    """Return ``value`` as an ``int`` if it is an integer >= 1 (numpy integers included).

    Raises:
        PolicyError: naming ``name`` and the value, for booleans, non-integers and values
            below 1.
    """
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        msg = f"{name} must be a positive integer, got {value!r}"
        raise PolicyError(msg)
    number = int(value)
    if number < 1:
        msg = f"{name} must be a positive integer, got {value!r}"
        raise PolicyError(msg)
    return number


def check_batch_size(
    value: object, name: str = "batch_size", *, allow_none: bool = False
) -> int | None:
    """Return a batch size as an ``int`` (or ``None`` when ``allow_none``).

    Raises:
        PolicyError: naming ``name`` and the value, unless it is an integer >= 1 (or ``None``
            with ``allow_none=True``).
    """
    if value is None:
        if allow_none:
            return None
        msg = f"{name} must be a positive integer, got None"
        raise PolicyError(msg)
    try:
        return check_positive_int(value, name)
    except PolicyError:
        if not allow_none:
            raise
        msg = f"{name} must be a positive integer or None, got {value!r}"
        raise PolicyError(msg) from None


def check_fitted(estimator: object, *, attributes: str = "stages_", before: str = "") -> None:
    """Raise the package's `NotFittedError` unless ``estimator`` has been fitted.

    Args:
        estimator: the object to check (a cascade or any scikit-learn style estimator).
        attributes: the fitted attribute(s) whose presence means "fitted".
        before: what the caller was about to do, for the message (e.g. ``"save_cascade"``);
            empty for a generic message.

    Raises:
        NotFittedError: ``this <Class> is not fitted yet; call fit before <before>``, also
            scikit-learn's ``NotFittedError``.
    """
    try:
        _sk_check_is_fitted(estimator, attributes)
    except _SklearnNotFittedError as exc:
        raise NotFittedError(not_fitted_message(estimator, before)) from exc


def not_fitted_message(estimator: object, before: str = "") -> str:
    """The one "not fitted" message, naming the class and what the caller wanted to do."""
    what = before or "using it"
    return (
        f"this {type(estimator).__name__} is not fitted yet; call fit before {what} "
        "(stages that are already trained are not refit)"
    )


def warn_data_ignored(function: str, X: object, y: object) -> None:
    """Warn (``DeprecationWarning``) when ``X`` or ``y`` is passed to ``function``.

    For functions that once refit a cascade on data only to check its classes, and now
    build it from the trained stages (``CascadeClassifier.from_fitted``).
    """
    if X is None and y is None:
        return
    warnings.warn(
        f"{function}(..., X, y): X and y are ignored and deprecated; the cascade is built "
        f"from the trained stages without data, so call {function} without them",
        DeprecationWarning,
        stacklevel=3,
    )
