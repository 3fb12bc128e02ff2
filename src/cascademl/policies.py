"""Confidence policies: how sure a stage is, and whether a sample stops there."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cascademl._routing import CONFIDENCE_MEASURES, confidence_scores, exit_mask
from cascademl._typing import (
    BoolArray,
    CombineMethod,
    ConfidenceMeasure,
    FloatArray,
    ProbaArray,
)
from cascademl.exceptions import PolicyError
from cascademl.voting import COMBINE_METHODS, escalation_weights

__all__ = ["ConfidencePolicy", "RoutingRule"]


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

    def get_params(self, deep: bool = True) -> dict[str, object]:  # noqa: ARG002 - sklearn's signature
        """The fields, as scikit-learn's ``get_params`` gives them.

        A cascade exposes them as ``policy__measure`` and ``policy__thresholds``, so
        ``GridSearchCV`` can search thresholds; ``set_params`` on the cascade replaces the
        policy with a copy (the policy itself is frozen and has no ``set_params``).

        Examples:
            >>> ConfidencePolicy("margin", 0.3).get_params()
            {'measure': 'margin', 'thresholds': 0.3}
        """
        return {"measure": self.measure, "thresholds": self.thresholds}

    def __sklearn_clone__(self) -> ConfidencePolicy:
        """The policy itself: it is frozen, so ``sklearn.base.clone`` may share it."""
        return self

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


@dataclass(frozen=True, slots=True)
class RoutingRule:
    """Everything that decides where a sample exits and what the cascade answers.

    One frozen object carries the confidence measure, one threshold per stage, the combiner
    and one escalation weight per stage. The cascade builds it from its parameters at every
    call (so ``set_params`` takes effect at the next ``predict``), and the routing engine and
    the tuner take it instead of loose keywords.

    Args:
        measure: ``"max_proba"``, ``"margin"`` or ``"entropy"``.
        thresholds: one threshold per stage; the last is never consulted.
        combine: ``"vote"``, ``"last"`` or ``"mean"``.
        escalation_weights: one weight in ``[0, 1]`` per stage (used by ``"vote"``).

    Raises:
        PolicyError: for an unknown measure or combiner, an invalid threshold or weight, or
            weights and thresholds of different lengths.

    Examples:
        >>> rule = RoutingRule.from_params(ConfidencePolicy(thresholds=0.8), n_stages=3)
        >>> rule.thresholds
        (0.8, 0.8, inf)
        >>> rule.escalation_weights
        (0.5, 0.5, 0.5)
    """

    measure: ConfidenceMeasure
    thresholds: tuple[float, ...]
    combine: CombineMethod = "vote"
    escalation_weights: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        """Validate every field; default the weights to 0.5 per stage."""
        if self.measure not in CONFIDENCE_MEASURES:
            msg = f"measure must be one of {CONFIDENCE_MEASURES}, got {self.measure!r}"
            raise PolicyError(msg)
        if self.combine not in COMBINE_METHODS:
            msg = f"combine must be one of {COMBINE_METHODS}, got {self.combine!r}"
            raise PolicyError(msg)
        if isinstance(self.thresholds, (str, bytes)) or not isinstance(self.thresholds, Sequence):
            msg = f"thresholds must be a sequence, one number per stage; got {self.thresholds!r}"
            raise PolicyError(msg)
        values = tuple(
            _check_threshold(t, f"thresholds[{i}]") for i, t in enumerate(self.thresholds)
        )
        if not values:
            msg = "a cascade needs at least one stage: thresholds is empty"
            raise PolicyError(msg)
        object.__setattr__(self, "thresholds", values)
        raw = self.escalation_weights if self.escalation_weights != () else 0.5
        weights = escalation_weights(raw, len(values))
        object.__setattr__(self, "escalation_weights", tuple(float(w) for w in weights))

    @classmethod
    def from_params(
        cls,
        policy: ConfidencePolicy | None,
        *,
        n_stages: int,
        combine: CombineMethod = "vote",
        escalation_weight: float | Sequence[float] = 0.5,
    ) -> RoutingRule:
        """Build the rule of a cascade from its ``policy``, ``combine`` and ``escalation_weight``.

        ``None`` stands for the default policy, ``ConfidencePolicy("max_proba", 0.9)``.
        """
        policy = ConfidencePolicy() if policy is None else policy
        if not isinstance(policy, ConfidencePolicy):
            msg = f"policy must be a ConfidencePolicy or None, got {policy!r}"
            raise PolicyError(msg)
        weights = escalation_weights(escalation_weight, n_stages)
        return cls(
            policy.measure,
            policy.thresholds_for(n_stages),
            combine,
            tuple(float(w) for w in weights),
        )

    @property
    def n_stages(self) -> int:
        """Number of stages the rule is for."""
        return len(self.thresholds)

    @property
    def policy(self) -> ConfidencePolicy:
        """The [`ConfidencePolicy`][cascademl.ConfidencePolicy] of this measure and thresholds."""
        return ConfidencePolicy(self.measure, self.thresholds)

    def with_thresholds(self, thresholds: Sequence[float]) -> RoutingRule:
        """Return a copy with other thresholds (one per stage, or one per non-final stage)."""
        values = tuple(thresholds)
        if len(values) == self.n_stages - 1:
            values = (*values, math.inf)
        if len(values) != self.n_stages:
            msg = (
                f"thresholds has {len(values)} values but the rule has {self.n_stages} "
                f"stages; give {self.n_stages - 1} or {self.n_stages}"
            )
            raise PolicyError(msg)
        return RoutingRule(self.measure, values, self.combine, self.escalation_weights)

    def confidence(self, proba: ProbaArray) -> FloatArray:
        """Confidence of each row of ``proba`` under this rule's measure."""
        return confidence_scores(np.asarray(proba, dtype=np.float64), self.measure)

    def exits(self, confidence: FloatArray, stage_index: int) -> BoolArray:
        """Which samples with this ``confidence`` at stage ``stage_index`` stop there."""
        return exit_mask(
            confidence, self.thresholds[stage_index], is_last=stage_index == self.n_stages - 1
        )
