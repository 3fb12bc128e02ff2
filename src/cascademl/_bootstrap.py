"""Classification metrics from confusion counts, and their vectorised bootstrap.

The numerical layer of [`classification_metrics`][cascademl.metrics.classification_metrics]:
``_metrics_reduce`` computes every metric in float64 from confusion counts over any
leading batch axes (torchmetrics' definitions), and ``_bootstrap`` draws all resamples'
cell counts at once from a multinomial and reduces them in one pass. No ``self``, no I/O.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cascademl._typing import FloatArray, IntArray

_SCALARS = ("accuracy", "error_rate", "macro_precision", "macro_recall", "macro_f1", "mcc", "kappa")
_PER_CLASS = ("precision", "recall", "f1")

#: Resampled cells held at once by the bootstrap (bounds its memory to about 160 MB).
_BOOTSTRAP_CELLS = 20_000_000


def _divide(num: FloatArray, denom: FloatArray) -> FloatArray:
    """``num / denom``, 0 where ``denom`` is 0 (torchmetrics' ``zero_division=0``)."""
    out = np.zeros(np.broadcast(num, denom).shape)
    np.divide(num, denom, out=out, where=denom != 0)
    return out


def _binary_mcc(tp: FloatArray, pred: FloatArray, true: FloatArray) -> FloatArray:
    """MCC for two classes where the general formula divides by 0, as torchmetrics does."""
    tn, tp1 = tp[..., 0], tp[..., 1]
    fp, fn = pred[..., 1] - tp1, true[..., 1] - tp1
    eps = float(np.finfo(np.float32).eps)
    root = math.sqrt(eps)
    numerator = np.select(
        [
            (fn == 0) & (tn == 0),
            (fp == 0) & (tn == 0),
            (tp1 == 0) & (fn == 0),
            (tp1 == 0) & (fp == 0),
            tp1 == 0,
            tn == 0,
            (fp == 0) | (fn == 0),
        ],
        [
            root * (tp1 - fp),
            root * (tp1 - fn),
            root * (tn - fp),
            root * (tn - fn),
            tn - fp * fn,
            tp1 - fp * fn,
            tp1 * tn,
        ],
        default=0.0,
    )
    denom = (tp1 + fp + eps) * (tp1 + fn + eps) * (tn + fp + eps) * (tn + fn + eps)
    value: FloatArray = numerator / np.sqrt(denom)
    value = np.where((tp1 + tn == 0) & (fp + fn != 0), -1.0, value)
    return np.where((tp1 + tn != 0) & (fp + fn == 0), 1.0, value)


def _metrics_reduce(tp: FloatArray, true: FloatArray, pred: FloatArray) -> dict[str, FloatArray]:
    """Every metric from confusion counts, in float64, over any leading batch axes.

    ``tp``, ``true`` and ``pred`` have shape (..., n_classes): the confusion matrix's
    diagonal, row sums (support) and column sums. The definitions are torchmetrics'
    (``zero_division=0``; macro averages skip classes neither present nor predicted;
    its special cases of MCC for two classes), computed without its float32 rounding.
    """
    tp, true, pred = (np.asarray(a, dtype=np.float64) for a in (tp, true, pred))
    n = true.sum(axis=-1)
    correct = tp.sum(axis=-1)
    fp, fn = pred - tp, true - tp
    precision = _divide(tp, pred)
    recall = _divide(tp, true)
    f1 = _divide(2.0 * tp, 2.0 * tp + fp + fn)
    present = (tp + fp + fn > 0).astype(np.float64)
    n_present = present.sum(axis=-1)
    agreement = (true * pred).sum(axis=-1)
    cov_tp = correct * n - agreement
    cov_pp = n**2 - (pred**2).sum(axis=-1)
    cov_tt = n**2 - (true**2).sum(axis=-1)
    denom = cov_pp * cov_tt
    mcc = _divide(cov_tp, np.sqrt(denom))
    if tp.shape[-1] == 2:  # noqa: PLR2004 - torchmetrics' binary special cases
        mcc = np.where(denom == 0, _binary_mcc(tp, pred, true), mcc)
    accuracy = _divide(correct, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        # NaN when every sample is one class, both true and predicted (torchmetrics too).
        kappa = 1.0 - (n - correct) / (n - agreement / n)
    return {
        "accuracy": accuracy,
        "error_rate": 1.0 - accuracy,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "macro_precision": _divide((precision * present).sum(axis=-1), n_present),
        "macro_recall": _divide((recall * present).sum(axis=-1), n_present),
        "macro_f1": _divide((f1 * present).sum(axis=-1), n_present),
        "mcc": mcc,
        "kappa": kappa,
    }


def _point_metrics(confusion: IntArray) -> dict[str, Any]:
    cm = confusion.astype(np.float64)
    values = _metrics_reduce(np.diagonal(cm), cm.sum(axis=1), cm.sum(axis=0))
    return {
        name: value.copy() if name in _PER_CLASS else float(value) for name, value in values.items()
    }


def _sum_cells(drawn: FloatArray, index: IntArray, k: int) -> FloatArray:
    """Sum the columns of ``drawn`` (resamples x cells) into ``k`` classes by ``index``."""
    b = drawn.shape[0]
    flat = (np.arange(b)[:, None] * k + index[None, :]).ravel()
    sums = np.bincount(flat, weights=drawn.ravel(), minlength=b * k)  # float64 with weights
    return sums.reshape(b, k).astype(np.float64, copy=False)


def _bootstrap(
    confusion: IntArray,
    n_bootstrap: int,
    confidence_level: float,
    random_state: int | np.random.Generator | None,
) -> dict[str, tuple[Any, Any]]:
    """Percentile-bootstrap intervals of every metric, all resamples at once.

    Resampling the ``n`` samples with replacement and counting each (true, predicted)
    cell is the same as drawing the cell counts from a multinomial with ``n`` trials and
    the observed cell shares as probabilities: only the non-empty cells are drawn, every
    resample in one call, so the cost is ``n_bootstrap x`` (non-empty cells), not a
    Python loop over resamples.
    """
    if n_bootstrap == 0:
        return {}
    rng = np.random.default_rng(random_state)
    k = confusion.shape[0]
    rows, cols = np.nonzero(confusion)
    counts = confusion[rows, cols]
    n = int(counts.sum())
    share = counts / n
    on_diagonal = rows == cols
    chunk = max(1, _BOOTSTRAP_CELLS // rows.size)
    parts: list[dict[str, FloatArray]] = []
    for start in range(0, n_bootstrap, chunk):
        drawn = rng.multinomial(n, share, size=min(chunk, n_bootstrap - start)).astype(np.float64)
        tp = _sum_cells(drawn[:, on_diagonal], rows[on_diagonal], k)
        parts.append(_metrics_reduce(tp, _sum_cells(drawn, rows, k), _sum_cells(drawn, cols, k)))
    alpha = (1.0 - confidence_level) / 2.0
    out: dict[str, tuple[Any, Any]] = {}
    for name in parts[0]:
        draws = np.concatenate([part[name] for part in parts])
        if np.all(np.isnan(draws)):
            out[name] = (math.nan, math.nan)
            continue
        low, high = np.nanquantile(draws, [alpha, 1.0 - alpha], axis=0)
        out[name] = (float(low), float(high)) if draws.ndim == 1 else (low, high)
    return out
