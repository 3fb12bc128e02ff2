"""Every stage's probabilities on every sample, cached for tuning, calibration and reports.

This module imports neither the tuner nor the calibration code, so both (and
`cascademl.metrics`) can use it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cascademl._fitting import _column_map
from cascademl._routing import check_stage_proba
from cascademl._typing import FloatArray
from cascademl._validation import check_batch_size, check_fitted, take_rows
from cascademl.cascade import CascadeClassifier

__all__ = ["stage_probabilities"]


def stage_probabilities(
    cascade: CascadeClassifier, X: Any, *, batch_size: int | None = None
) -> FloatArray:
    """Run every stage of a fitted cascade once on every sample; no routing.

    Args:
        cascade: a fitted [`CascadeClassifier`][cascademl.CascadeClassifier].
        X: the samples (a validation or calibration split, never the test split).
        batch_size: at most this many samples per stage call; defaults to the cascade's
            ``batch_size`` (all at once when ``None``).

    Returns:
        ndarray of shape (n_stages, n_samples, n_classes), columns in the order of
        ``cascade.classes_``.

    Raises:
        NotFittedError: if the cascade is not fitted.
        StageOutputError: if a stage returns invalid probabilities.

    Examples:
        >>> from sklearn.datasets import load_iris
        >>> from sklearn.naive_bayes import GaussianNB
        >>> from sklearn.tree import DecisionTreeClassifier
        >>> X, y = load_iris(return_X_y=True)
        >>> cascade = CascadeClassifier(
        ...     [("nb", GaussianNB()), ("tree", DecisionTreeClassifier(random_state=0))]
        ... ).fit(X, y)
        >>> stage_probabilities(cascade, X[:5]).shape
        (2, 5, 3)
    """
    check_fitted(cascade, before="stage_probabilities")
    classes = cascade.classes_
    names = tuple(cascade.named_stages_.keys())
    n_samples = X.shape[0] if hasattr(X, "shape") else len(X)
    size = check_batch_size(
        cascade.batch_size if batch_size is None else batch_size, allow_none=True
    )
    step = max(n_samples, 1) if size is None else size
    out = np.empty((len(cascade.stages_), n_samples, len(classes)), dtype=np.float64)
    for s, stage in enumerate(cascade.stages_):
        columns = _column_map(stage.classes_, classes)
        for start in range(0, n_samples, step):
            rows = np.arange(start, min(start + step, n_samples), dtype=np.intp)
            proba = check_stage_proba(
                stage.predict_proba(take_rows(X, rows)),
                n_samples=rows.size,
                n_classes=len(classes),
                stage_name=names[s],
            )
            out[s, rows] = proba[:, columns]
    return out
