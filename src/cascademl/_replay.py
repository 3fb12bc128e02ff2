"""A routing rule replayed on cached stage probabilities.

Benchmarks and the leukemia example measure a rule (a certificate's, a tuner's) on
probabilities computed once, without calling the stages again. The decisions come from the
rule's own exit test and ``combine_votes``, so they are those of the routing engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cascademl._typing import BoolArray, FloatArray, IntArray
from cascademl.abstention import abstain_mask
from cascademl.policies import RoutingRule
from cascademl.voting import combine_votes

__all__ = ["Replayed", "replay"]


@dataclass(frozen=True, slots=True)
class Replayed:
    """What a rule decided for each row of cached probabilities.

    Attributes:
        final: the combined probabilities, shape (n_samples, n_classes).
        exit_stage: the stage each sample left at.
        decided: whether the sample was decided (``False``: abstained under the reject
            threshold).
    """

    final: FloatArray
    exit_stage: IntArray
    decided: BoolArray

    @property
    def label_index(self) -> IntArray:
        """Index of the predicted class of each sample."""
        return np.asarray(np.argmax(self.final, axis=1), dtype=np.intp)


def replay(proba: FloatArray, rule: RoutingRule, reject_threshold: float | None = None) -> Replayed:
    """Replay ``rule`` on ``proba`` of shape (n_stages, n_samples, n_classes).

    A falsy ``reject_threshold`` (``None`` or 0) decides every sample.
    """
    k, n, _ = proba.shape
    exit_stage = np.full(n, k - 1)
    pending = np.ones(n, dtype=bool)
    for s in range(k - 1):
        stop = pending & rule.exits(rule.confidence(proba[s]), s)
        exit_stage[stop] = s
        pending &= ~stop
    visited = np.arange(k)[:, None] <= exit_stage[None, :]
    final = combine_votes(
        proba, visited, exit_stage, method=rule.combine, escalation_weight=rule.escalation_weights
    )
    decided = np.ones(n, dtype=bool)
    if reject_threshold:
        decided = ~abstain_mask(final, reject_threshold, measure=rule.measure)
    return Replayed(final=final, exit_stage=exit_stage, decided=decided)
