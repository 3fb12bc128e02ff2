"""Confidence policies: how sure a stage is, and whether a sample stops there."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cascademl._routing import CONFIDENCE_MEASURES, confidence_scores, exit_mask
from cascademl._typing import BoolArray, ConfidenceMeasure, FloatArray, ProbaArray
from cascademl.exceptions import PolicyError

__all__ = ["ConfidencePolicy"]


@dataclass(frozen=True, slots=True)
class ConfidencePolicy:
    """Decide, per stage, whether a sample is confident enough to stop there.

    A sample stops at stage ``s`` when ``confidence(proba) >= thresholds[s]``; otherwise it
    escalates to stage ``s + 1``. The last stage always ends the samples that reach it, so
    its threshold is never consulted. A threshold of 0 stops every sample at that stage; a
    threshold above 1 (``math.inf`` included) sends every sample on, since confidences lie
    in ``[0, 1]``.

    The policy is frozen: to change a threshold, build a new policy (for example with
    [`with_thresholds`][cascademl.ConfidencePolicy.with_thresholds]).

    Args:
        measure: ``"max_proba"``, ``"margin"`` (top-1 minus top-2 probability) or
            ``"entropy"`` (one minus normalised entropy).
        thresholds: one threshold for every non-final stage, or a sequence with one per
            stage (``n_stages`` values) or one per non-final stage (``n_stages - 1``).

    Raises:
        PolicyError: if ``measure`` is unknown or a threshold is NaN, negative or not a number.

    Examples:
        >>> import numpy as np
        >>> policy = ConfidencePolicy("max_proba", thresholds=0.8)
        >>> policy.exits(np.array([[0.9, 0.1], [0.6, 0.4]]), stage_index=0, n_stages=3)
        array([ True, False])
    """

    measure: ConfidenceMeasure = "max_proba"
    thresholds: float | tuple[float, ...] = 0.9

    def __post_init__(self) -> None:
        """Validate the measure and thresholds; store a sequence as a tuple."""
        if self.measure not in CONFIDENCE_MEASURES:
            msg = f"measure must be one of {CONFIDENCE_MEASURES}, got {self.measure!r}"
            raise PolicyError(msg)
        raw = self.thresholds
        if isinstance(raw, (str, bytes)) or not isinstance(raw, (numbers.Real, Sequence)):
            msg = f"thresholds must be a number or a sequence of numbers, got {raw!r}"
            raise PolicyError(msg)
        if isinstance(raw, Sequence):
            values = tuple(_check_threshold(t, f"thresholds[{i}]") for i, t in enumerate(raw))
            if not values:
                msg = "thresholds must not be an empty sequence"
                raise PolicyError(msg)
            object.__setattr__(self, "thresholds", values)
        else:
            object.__setattr__(self, "thresholds", _check_threshold(raw, "thresholds"))

    def thresholds_for(self, n_stages: int) -> tuple[float, ...]:
        """Return one threshold per stage for a cascade of ``n_stages`` stages.

        The last entry is ``math.inf`` when the policy gave ``n_stages - 1`` values; it is
        never consulted either way.

        Raises:
            PolicyError: if the policy holds a sequence of another length.
        """
        if isinstance(self.thresholds, tuple):
            n = len(self.thresholds)
            if n == n_stages:
                return self.thresholds
            if n == n_stages - 1:
                return (*self.thresholds, math.inf)
            msg = (
                f"thresholds has {n} values but the cascade has {n_stages} stages; "
                f"give {n_stages - 1} (one per non-final stage) or {n_stages}"
            )
            raise PolicyError(msg)
        return (float(self.thresholds),) * (n_stages - 1) + (math.inf,)

    def with_thresholds(self, thresholds: float | Sequence[float]) -> ConfidencePolicy:
        """Return a copy of this policy with other thresholds."""
        value = tuple(thresholds) if isinstance(thresholds, Sequence) else thresholds
        return ConfidencePolicy(self.measure, value)

    def confidence(self, proba: ProbaArray) -> FloatArray:
        """Confidence of each row of ``proba`` under this policy's measure, in ``[0, 1]``."""
        return confidence_scores(proba, self.measure)

    def exits(self, proba: ProbaArray, *, stage_index: int, n_stages: int) -> BoolArray:
        """Return which rows of ``proba`` (from stage ``stage_index``) stop at that stage."""
        threshold = self.thresholds_for(n_stages)[stage_index]
        conf = self.confidence(np.asarray(proba, dtype=np.float64))
        return exit_mask(conf, threshold, is_last=stage_index == n_stages - 1)


def _check_threshold(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        msg = f"{name} must be a real number, got {value!r}"
        raise PolicyError(msg)
    number = float(value)
    if math.isnan(number) or number < 0:
        msg = f"{name} must be >= 0 (values above 1 mean 'never stop here'), got {value!r}"
        raise PolicyError(msg)
    return number
