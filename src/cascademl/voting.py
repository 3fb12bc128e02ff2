"""Combiners: turn the probabilities of the stages a sample visited into one decision."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

from cascademl._typing import BoolArray, CombineMethod, FloatArray, IntArray, ProbaArray
from cascademl.exceptions import PolicyError

__all__ = [
    "COMBINE_METHODS",
    "combine_votes",
    "escalating_vote_weights",
    "escalation_weights",
    "vote_weights",
]

COMBINE_METHODS: tuple[CombineMethod, ...] = ("vote", "last", "mean")


def vote_weights(
    visited: BoolArray,
    exit_stage: IntArray,
    *,
    method: CombineMethod,
    escalation_weight: float | Sequence[float] = 0.5,
) -> FloatArray:
    """Weight of each stage's vote for each sample.

    * ``"vote"`` (the paper's rule, sections 3.6-3.7): the stage that ends a sample votes
      with weight 1; each earlier stage the sample visited, and left for lack of
      confidence, votes with its lowered ``escalation_weight``.
    * ``"last"`` (a classic cascade): only the exiting stage votes.
    * ``"mean"``: every visited stage votes with weight 1.

    Args:
        visited: bool array of shape (n_stages, n_samples).
        exit_stage: int array of shape (n_samples,).
        method: the combiner's name.
        escalation_weight: a weight in ``[0, 1]`` for every escalating stage, or one per stage.

    Returns:
        ndarray of shape (n_stages, n_samples), zero where a stage was not visited.

    Raises:
        PolicyError: for an unknown method or invalid weights.
    """
    n_stages, n_samples = visited.shape
    weights = escalating_vote_weights(method, escalation_weight, n_stages)
    is_exit = np.zeros((n_stages, n_samples), dtype=bool)
    is_exit[exit_stage, np.arange(n_samples)] = True
    return np.where(is_exit, 1.0, np.where(visited, weights[:, None], 0.0))


def escalating_vote_weights(
    method: CombineMethod, escalation_weight: float | Sequence[float], n_stages: int
) -> FloatArray:
    """Per stage, the weight of the vote of a stage that escalated a sample.

    The stage that ends a sample always votes with weight 1. An escalating stage votes with
    its ``escalation_weight`` under ``"vote"``, with 1 under ``"mean"`` and with 0 under
    ``"last"``. [`vote_weights`][cascademl.voting.vote_weights] and the routing engine,
    which folds the votes batch by batch, both take the weights from here.

    Args:
        method: ``"vote"``, ``"last"`` or ``"mean"``.
        escalation_weight: a weight in ``[0, 1]`` for every stage, or one per stage.
        n_stages: the number of stages.

    Returns:
        ndarray of shape (n_stages,).

    Raises:
        PolicyError: for an unknown method or invalid weights.

    Examples:
        >>> escalating_vote_weights("vote", 0.25, 3).tolist()
        [0.25, 0.25, 0.25]
        >>> escalating_vote_weights("last", 0.25, 2).tolist()
        [0.0, 0.0]
    """
    if method == "vote":
        return escalation_weights(escalation_weight, n_stages)
    if method == "mean":
        return np.ones(n_stages)
    if method == "last":
        return np.zeros(n_stages)
    msg = f"combine must be one of {COMBINE_METHODS}, got {method!r}"
    raise PolicyError(msg)


def combine_votes(
    stage_proba: FloatArray,
    visited: BoolArray,
    exit_stage: IntArray,
    *,
    method: CombineMethod,
    escalation_weight: float | Sequence[float] = 0.5,
) -> ProbaArray:
    """Accumulate the weighted probabilities of the visited stages into final probabilities.

    The final decision is the class with the highest accumulated confidence; the returned
    rows are that accumulated confidence normalised to sum to one.

    Args:
        stage_proba: array of shape (n_stages, n_samples, n_classes); entries for stages a
            sample did not visit are ignored (they may be NaN).
        visited: bool array of shape (n_stages, n_samples).
        exit_stage: int array of shape (n_samples,).
        method: ``"vote"``, ``"last"`` or ``"mean"``
            (see [`vote_weights`][cascademl.voting.vote_weights]).
        escalation_weight: the weight schedule of ``"vote"``.

    Returns:
        ndarray of shape (n_samples, n_classes) whose rows sum to one.

    Examples:
        >>> import numpy as np
        >>> proba = np.array([[[0.6, 0.4]], [[0.1, 0.9]]])  # 2 stages, 1 sample, 2 classes
        >>> visited = np.array([[True], [True]])
        >>> combine_votes(proba, visited, np.array([1]), method="vote", escalation_weight=0.5)
        array([[0.26666667, 0.73333333]])
    """
    weights = vote_weights(visited, exit_stage, method=method, escalation_weight=escalation_weight)
    safe = np.where(visited[:, :, None], stage_proba, 0.0)
    scores = np.einsum("sn,snk->nk", weights, safe)
    return np.asarray(scores / scores.sum(axis=1, keepdims=True), dtype=np.float64)


def escalation_weights(value: float | Sequence[float], n_stages: int) -> FloatArray:
    """One escalation weight per stage from a number or a per-stage sequence.

    Raises:
        PolicyError: if a weight is not a number in ``[0, 1]`` or the sequence has another
            length than ``n_stages``.
    """
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        if len(value) != n_stages:
            msg = f"escalation_weight has {len(value)} values but the cascade has {n_stages} stages"
            raise PolicyError(msg)
        items: list[object] = list(value)
    else:
        items = [value] * n_stages
    out = np.empty(n_stages)
    for i, w in enumerate(items):
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not 0.0 <= float(w) <= 1.0:
            msg = f"escalation_weight must be a number in [0, 1] (or one per stage), got {w!r}"
            raise PolicyError(msg)
        out[i] = float(w)
    return out
