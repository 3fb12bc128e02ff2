"""Per-stage temperature scaling, fitted on a held-out calibration split.

Temperature scaling (Guo et al., 2017) divides a stage's log-probabilities by one number
``T`` per stage before the softmax: ``T > 1`` softens over-confident stages, ``T < 1``
sharpens under-confident ones, and the predicted class never changes. Since cascade exits
compare confidences with thresholds, calibrated stages make thresholds mean the same thing
from one stage to the next.

The temperature is the minimiser of the negative log-likelihood on a calibration split,
an explicit input that must be neither the training nor the test split. The likelihood is
torch's ``cross_entropy``, minimised over ``log T`` by L-BFGS in float64 on the CPU, which is
deterministic; the NLL is convex in ``1 / T``, so the minimum is the global one. Expected
calibration error, before and after, comes from torchmetrics'
``multiclass_calibration_error``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cascademl._labels import label_indices
from cascademl._probabilities import stage_probabilities
from cascademl._typing import FloatArray, IntArray, LabelArray, ProbaArray
from cascademl._validation import check_fitted, warn_data_ignored
from cascademl.cascade import CascadeClassifier
from cascademl.exceptions import PolicyError
from cascademl.stages import check_stage

if TYPE_CHECKING:
    import torch

__all__ = [
    "CalibrationReport",
    "TemperatureScaledStage",
    "apply_temperature",
    "calibrate_cascade",
    "expected_calibration_error",
    "fit_temperature",
    "fit_temperatures",
    "with_temperatures",
]

#: Temperatures are searched in this range (a factor of 100 either way).
TEMPERATURE_BOUNDS = (0.01, 100.0)
#: Probabilities are clipped to at least this before the log: a stage that puts exactly
#: zero on the true class would otherwise have an infinite likelihood loss.
PROBA_FLOOR = 1e-12


def _log_proba(proba: ProbaArray) -> FloatArray:
    return np.asarray(np.log(np.clip(np.asarray(proba, np.float64), PROBA_FLOOR, 1.0)))


def _softmax(logits: FloatArray) -> FloatArray:
    # numpy, not torch: routing a loaded cascade through a temperature stage must not import
    # torch (an exported ONNX cascade routes without it).
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return np.asarray(z / z.sum(axis=1, keepdims=True))


def apply_temperature(
    proba: ProbaArray, temperature: float, *, from_logits: bool = False
) -> ProbaArray:
    """Rescale probabilities (or logits) by a temperature: ``softmax(log(p) / T)``.

    Args:
        proba: array-like of shape (n_samples, n_classes): probabilities, or logits with
            ``from_logits=True``.
        temperature: a positive number; 1 leaves probabilities unchanged.
        from_logits: whether ``proba`` holds logits (or log-probabilities).

    Returns:
        ndarray of shape (n_samples, n_classes) whose rows sum to one.

    Raises:
        PolicyError: if ``temperature`` is not a positive finite number.

    Examples:
        >>> import numpy as np
        >>> apply_temperature(np.array([[0.8, 0.2]]), 2.0).round(3)
        array([[0.667, 0.333]])
    """
    t = _check_temperature(temperature, "temperature")
    logits = np.asarray(proba, dtype=np.float64) if from_logits else _log_proba(proba)
    return _softmax(logits / t)


def _check_temperature(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        msg = f"{name} must be a positive finite number, got {value!r}"
        raise PolicyError(msg)
    t = float(value)
    if not math.isfinite(t) or t <= 0:
        msg = f"{name} must be a positive finite number, got {value!r}"
        raise PolicyError(msg)
    return t


def _nll(logits: FloatArray, y_idx: IntArray, temperature: float) -> float:
    import torch  # noqa: PLC0415 - fitting needs torch; loading and routing do not

    t = torch.as_tensor(logits, dtype=torch.float64) / temperature
    return float(torch.nn.functional.cross_entropy(t, torch.as_tensor(y_idx)))


def _minimise_nll(logits: FloatArray, y_idx: IntArray, low: float, high: float) -> float:
    import torch  # noqa: PLC0415 - fitting needs torch; loading and routing do not

    z = torch.as_tensor(logits, dtype=torch.float64)
    target = torch.as_tensor(y_idx, dtype=torch.long)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [log_t], lr=1.0, max_iter=200, tolerance_grad=1e-10, line_search_fn="strong_wolfe"
    )
    bound_low, bound_high = math.log(low), math.log(high)

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        clamped = log_t.clamp(bound_low, bound_high)
        loss = torch.nn.functional.cross_entropy(z / clamped.exp(), target)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimiser.step(closure)  # type: ignore[no-untyped-call]
    return float(min(max(math.exp(float(log_t.detach())), low), high))


def fit_temperature(
    proba: ProbaArray,
    y: Any,
    *,
    classes: Any,
    from_logits: bool = False,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
) -> float:
    """Fit one temperature by minimising the negative log-likelihood of ``y``.

    Args:
        proba: array-like of shape (n_samples, n_classes) from one stage on the calibration
            split: probabilities, or logits with ``from_logits=True``.
        y: array-like of shape (n_samples,), the calibration labels.
        classes: array-like of shape (n_classes,), the labels of the columns.
        from_logits: whether ``proba`` holds logits.
        bounds: the search range of the temperature.

    Returns:
        The temperature, within ``bounds``.

    Raises:
        PolicyError: for empty or mismatched inputs, NaN or infinite values (negative
            ones for probabilities), or invalid bounds.

    Examples:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 2, 500)
        >>> right = rng.random(500) < 0.7  # a stage right 70% of the time...
        >>> pred = np.where(right, y, 1 - y)
        >>> proba = np.eye(2)[pred] * 0.98 + 0.01  # ...that claims 99% confidence
        >>> fit_temperature(proba, y, classes=[0, 1]) > 1  # so it is softened
        True
    """
    low, high = (_check_temperature(b, "bounds") for b in bounds)
    if low >= high:
        msg = f"bounds must be (low, high) with low < high, got {bounds!r}"
        raise PolicyError(msg)
    p = np.asarray(proba, dtype=np.float64)
    y_idx = label_indices(y, np.asarray(classes))
    if p.ndim != 2 or p.shape[0] != y_idx.size or p.shape[0] == 0:  # noqa: PLR2004
        msg = (
            f"proba must have shape (n_samples, n_classes) with n_samples = len(y) = "
            f"{y_idx.size} > 0, got {p.shape}"
        )
        raise PolicyError(msg)
    bad = ~np.isfinite(p).all(axis=1)
    if not from_logits:
        bad |= (p < 0).any(axis=1)
    if np.any(bad):
        row = int(np.flatnonzero(bad)[0])
        kind = "logits" if from_logits else "probabilities"
        msg = (
            f"proba holds NaN, infinite or negative {kind} in {int(bad.sum())} row(s), "
            f"first at row {row}: {p[row].tolist()!r}"
        )
        raise PolicyError(msg)
    logits = p if from_logits else _log_proba(p)
    import torch  # noqa: PLC0415 - fitting needs torch; loading and routing do not

    with torch.enable_grad():
        return _minimise_nll(logits, y_idx, low, high)


def expected_calibration_error(
    proba: ProbaArray, y: Any, *, classes: Any, n_bins: int = 15, norm: str = "l1"
) -> float:
    """Expected calibration error of probabilities, from torchmetrics.

    Args:
        proba: array-like of shape (n_samples, n_classes).
        y: array-like of shape (n_samples,), true labels.
        classes: array-like of shape (n_classes,), the labels of the columns.
        n_bins: the number of confidence bins.
        norm: ``"l1"`` (ECE), ``"l2"`` (RMS calibration error) or ``"max"`` (MCE).

    Returns:
        The calibration error, in ``[0, 1]``.

    Examples:
        >>> import numpy as np
        >>> proba = np.array([[0.9, 0.1], [0.9, 0.1]])
        >>> round(expected_calibration_error(proba, [0, 1], classes=[0, 1]), 3)
        0.4
    """
    # Imported here: torchmetrics (and the torchvision it loads) take seconds to import, and
    # every process that loads a saved cascade imports this module (each Ray actor, say).
    import torch  # noqa: PLC0415
    from torchmetrics.functional.classification import (  # noqa: PLC0415
        multiclass_calibration_error,
    )

    classes_arr = np.asarray(classes)
    y_idx = label_indices(y, classes_arr)
    p = torch.as_tensor(np.asarray(proba, dtype=np.float64), dtype=torch.float64)
    value = multiclass_calibration_error(
        p,
        torch.as_tensor(y_idx, dtype=torch.long),
        num_classes=classes_arr.size,
        n_bins=n_bins,
        norm=norm,  # type: ignore[arg-type]
    )
    return float(value)


@dataclass(frozen=True, slots=True)
class CalibrationReport:
    """Per-stage temperatures and calibration quality before and after.

    Attributes:
        stage_names: the stages' names, in cascade order.
        temperatures: one temperature per stage.
        ece_before: expected calibration error of each stage before scaling.
        ece_after: expected calibration error of each stage after scaling.
        nll_before: mean negative log-likelihood of each stage before scaling.
        nll_after: mean negative log-likelihood of each stage after scaling.
        n_samples: the size of the calibration split.
    """

    stage_names: tuple[str, ...]
    temperatures: tuple[float, ...]
    ece_before: tuple[float, ...]
    ece_after: tuple[float, ...]
    nll_before: tuple[float, ...]
    nll_after: tuple[float, ...]
    n_samples: int


def fit_temperatures(
    stage_proba: FloatArray,
    y: Any,
    *,
    classes: Any,
    stage_names: Sequence[str] | None = None,
    n_bins: int = 15,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
) -> CalibrationReport:
    """Fit one temperature per stage on cached calibration probabilities.

    Args:
        stage_proba: array of shape (n_stages, n_samples, n_classes), for example from
            [`stage_probabilities`][cascademl.tuning.stage_probabilities] on a calibration
            split.
        y: array-like of shape (n_samples,), the calibration labels.
        classes: array-like of shape (n_classes,), the labels of the columns.
        stage_names: names for the report.
        n_bins: bins of the calibration error.
        bounds: the search range of each temperature.

    Returns:
        The temperatures with ECE and NLL before and after, per stage.
    """
    p = np.asarray(stage_proba, dtype=np.float64)
    if p.ndim != 3:  # noqa: PLR2004 - (n_stages, n_samples, n_classes)
        msg = f"stage_proba must have shape (n_stages, n_samples, n_classes), got {p.shape}"
        raise PolicyError(msg)
    names = (
        tuple(f"stage{i}" for i in range(p.shape[0]))
        if stage_names is None
        else tuple(str(n) for n in stage_names)
    )
    if len(names) != p.shape[0]:
        msg = f"stage_names has {len(names)} names but there are {p.shape[0]} stages"
        raise PolicyError(msg)
    y_idx = label_indices(y, np.asarray(classes))
    temps, ece_b, ece_a, nll_b, nll_a = [], [], [], [], []
    for proba in p:
        t = fit_temperature(proba, y, classes=classes, bounds=bounds)
        scaled = apply_temperature(proba, t)
        temps.append(t)
        ece_b.append(expected_calibration_error(proba, y, classes=classes, n_bins=n_bins))
        ece_a.append(expected_calibration_error(scaled, y, classes=classes, n_bins=n_bins))
        nll_b.append(_nll(_log_proba(proba), y_idx, 1.0))
        nll_a.append(_nll(_log_proba(proba), y_idx, t))
    return CalibrationReport(
        stage_names=names,
        temperatures=tuple(temps),
        ece_before=tuple(ece_b),
        ece_after=tuple(ece_a),
        nll_before=tuple(nll_b),
        nll_after=tuple(nll_a),
        n_samples=int(y_idx.size),
    )


class TemperatureScaledStage:
    """A fitted stage whose probabilities are rescaled by a temperature.

    Follows the [`Stage`][cascademl.Stage] protocol. It has no ``fit``: a cascade adopts it
    as it is and never retrains the wrapped stage.

    Args:
        stage: a fitted stage (``classes_`` and ``predict_proba``).
        temperature: a positive number; 1 changes nothing.

    Attributes:
        classes_: the wrapped stage's classes.
        cost_per_sample: the wrapped stage's cost per sample (``None`` when it has none).

    Examples:
        >>> import numpy as np
        >>> from sklearn.linear_model import LogisticRegression
        >>> lr = LogisticRegression().fit([[0.0], [1.0]], [0, 1])
        >>> stage = TemperatureScaledStage(lr, 1e6)  # very soft
        >>> stage.predict_proba([[0.0]]).round(2)
        array([[0.5, 0.5]])
    """

    def __init__(self, stage: Any, temperature: float) -> None:
        check_stage(stage, type(stage).__name__, fitted=True)
        self.stage = stage
        self.temperature = _check_temperature(temperature, "temperature")

    @property
    def classes_(self) -> LabelArray:
        """The wrapped stage's class labels."""
        return np.asarray(self.stage.classes_)

    @property
    def cost_per_sample(self) -> float | None:
        """The wrapped stage's cost per sample, if it reports one."""
        cost = getattr(self.stage, "cost_per_sample", None)
        return None if cost is None else float(cost)

    def predict_proba(self, X: Any) -> ProbaArray:
        """Temperature-scaled probabilities of the wrapped stage, shape (n_samples, n_classes)."""
        raw = np.asarray(self.stage.predict_proba(X), dtype=np.float64)
        return apply_temperature(raw, self.temperature)

    def __repr__(self) -> str:
        """Show the wrapped stage and the temperature."""
        return f"TemperatureScaledStage({self.stage!r}, temperature={self.temperature:.4g})"


def with_temperatures(
    cascade: CascadeClassifier,
    temperatures: Sequence[float],
    X: Any = None,
    y: Any = None,
) -> CascadeClassifier:
    """Return a new fitted cascade whose stages are wrapped in `TemperatureScaledStage`.

    No stage is retrained and no data is needed: the new cascade is built with
    [`CascadeClassifier.from_fitted`][cascademl.CascadeClassifier.from_fitted] and keeps the
    classes of ``cascade``. A stage that is already temperature-scaled is rewrapped
    with the product of both temperatures (scaling twice is scaling once by the product).
    ``cascade`` is left unchanged.

    Args:
        cascade: a fitted cascade.
        temperatures: one temperature per stage.
        X: deprecated and ignored (it was once used to check the classes); passing it
            emits a ``DeprecationWarning``.
        y: deprecated and ignored, as ``X``.

    Returns:
        The calibrated cascade, with the same policy and combiner.

    Raises:
        NotFittedError: if ``cascade`` is not fitted.
        PolicyError: if the number of temperatures does not match the stages.
    """
    warn_data_ignored("with_temperatures", X, y)
    check_fitted(cascade, before="calibrating")
    names = list(cascade.named_stages_.keys())
    temps = [_check_temperature(t, "temperatures") for t in temperatures]
    if len(temps) != len(names):
        msg = f"temperatures has {len(temps)} values but the cascade has {len(names)} stages"
        raise PolicyError(msg)
    stages = []
    for name, stage, t in zip(names, cascade.stages_, temps, strict=True):
        if isinstance(stage, TemperatureScaledStage):
            stages.append((name, TemperatureScaledStage(stage.stage, stage.temperature * t)))
        else:
            stages.append((name, TemperatureScaledStage(stage, t)))
    params = cascade.get_params(deep=False)
    del params["stages"]
    return type(cascade).from_fitted(stages, classes=cascade.classes_, **params)


def calibrate_cascade(
    cascade: CascadeClassifier,
    X_cal: Any,
    y_cal: Any,
    *,
    n_bins: int = 15,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
) -> tuple[CascadeClassifier, CalibrationReport]:
    """Fit per-stage temperatures on a calibration split and return a calibrated cascade.

    Every stage runs once on every calibration sample; no stage is retrained.

    Args:
        cascade: a fitted cascade.
        X_cal: calibration inputs (held out from training and from the test split).
        y_cal: calibration labels.
        n_bins: bins of the calibration error.
        bounds: the search range of each temperature.

    Returns:
        The calibrated cascade (``cascade`` itself is unchanged) and the report.

    Examples:
        >>> from sklearn.datasets import load_digits
        >>> from sklearn.naive_bayes import GaussianNB
        >>> from sklearn.linear_model import LogisticRegression
        >>> X, y = load_digits(return_X_y=True)
        >>> cascade = CascadeClassifier(
        ...     [("nb", GaussianNB()), ("lr", LogisticRegression(max_iter=2000))]
        ... ).fit(X[:900], y[:900])
        >>> calibrated, report = calibrate_cascade(cascade, X[900:1300], y[900:1300])
        >>> all(a <= b for a, b in zip(report.nll_after, report.nll_before))
        True
        >>> report.temperatures[0] > 1  # naive Bayes is over-confident: softened
        True
    """
    proba = stage_probabilities(cascade, X_cal)
    report = fit_temperatures(
        proba,
        y_cal,
        classes=cascade.classes_,
        stage_names=tuple(cascade.named_stages_.keys()),
        n_bins=n_bins,
        bounds=bounds,
    )
    return with_temperatures(cascade, report.temperatures), report
