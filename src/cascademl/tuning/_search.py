"""The threshold search: cached exits, vectorised sweeps, coordinate descent, frontier."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import TypeAlias

import numpy as np

from cascademl._routing import exit_mask
from cascademl._typing import BoolArray, FloatArray, IntArray, LabelArray
from cascademl.policies import ConfidencePolicy, RoutingRule
from cascademl.tuning._results import FrontierPoint, TuningResult
from cascademl.tuning._scoring import _per_sample_scores, _Score, single_stage_scores
from cascademl.voting import combine_votes

_COST_RTOL = 1e-9
_MAX_SWEEPS = 20
#: Up to this many sweeps, the candidate grid is searched exhaustively.
_EXHAUSTIVE_SWEEPS = 256


class _Problem:
    """Cached arrays for fast evaluation of threshold vectors on one stage order."""

    def __init__(
        self,
        stage_proba: FloatArray,
        y_idx: IntArray,
        classes: LabelArray,
        costs: FloatArray,
        *,
        rule: RoutingRule,
        score: _Score,
        n_candidates: int,
        weights: FloatArray | None = None,
    ) -> None:
        n_stages, n_samples, _ = stage_proba.shape
        self.n_stages = n_stages
        self.n_samples = n_samples
        self.classes = classes
        self.y_idx = y_idx
        self.score = score
        self.pairs_only = score.kind == "pairs"
        # Sample weights, or None; every mean is a sum of weighted values over their total,
        # so integer weights give exactly the means of repeated samples.
        self.weights = weights
        self.w = np.ones(n_samples) if weights is None else weights
        self.total = float(self.w.sum())
        self.conf = np.stack([rule.confidence(p) for p in stage_proba])
        self.cum_cost = np.cumsum(costs)
        # Final probabilities if a sample exits at stage e (visiting stages 0..e).
        visited_upto = np.arange(n_stages)[:, None] <= np.arange(n_stages)[None, :]
        self.exit_proba = np.stack(
            [_combine_at_exit(stage_proba, visited_upto[:, e], e, rule) for e in range(n_stages)]
        )
        self.exit_pred = np.argmax(self.exit_proba, axis=2)
        # Accuracy or log-loss: a mean of per-sample values, swept with cumulative sums.
        self.exit_value = _per_sample_scores(self.exit_proba, self.exit_pred, y_idx, score)
        if self.exit_value is not None and weights is not None:
            self.exit_value *= weights[None, :]
        # A sample of weight zero counts nowhere, so it does not place candidates either.
        counted = slice(None) if weights is None else weights > 0
        self.candidates = [
            _candidates(self.conf[s, counted], n_candidates) for s in range(n_stages - 1)
        ]
        self.n_evaluations = 0
        self._sweeps: dict[tuple[int, ...], tuple[FloatArray, FloatArray]] = {}
        self._pair_cache: dict[bytes, float] = {}

    def thresholds(self, idx: IntArray | Sequence[int]) -> tuple[float, ...]:
        return tuple(float(self.candidates[s][i]) for s, i in enumerate(idx))

    def exit_stages(self, thresholds: Sequence[float]) -> IntArray:
        """Exit stage of each sample under ``thresholds`` (one per non-final stage)."""
        exit_stage = np.full(self.n_samples, self.n_stages - 1, dtype=np.intp)
        pending = np.ones(self.n_samples, dtype=bool)
        for s in range(self.n_stages - 1):
            done = exit_mask(self.conf[s], thresholds[s], is_last=False) & pending
            exit_stage[done] = s
            pending &= ~done
        return exit_stage

    def evaluate(self, exit_stage: IntArray) -> tuple[float, float]:
        self.n_evaluations += 1
        if self.n_samples == 0:
            return 0.0, 0.0
        cols = np.arange(self.n_samples)
        cost = float((self.cum_cost[exit_stage] * self.w).sum() / self.total)
        if self.exit_value is not None:
            return float(self.exit_value[exit_stage, cols].sum() / self.total), cost
        pred = self.exit_pred[exit_stage, cols]
        proba = self.exit_proba[exit_stage, cols]
        return self.score(self.classes, self.y_idx, pred, proba, self.weights), cost

    def sweep(self, s: int, idx: IntArray | Sequence[int]) -> tuple[FloatArray, FloatArray]:
        """Scores and costs of every candidate threshold of stage ``s``, the others fixed."""
        key = (s, *(int(i) if j != s else -1 for j, i in enumerate(idx)))
        if key not in self._sweeps:
            self._sweeps[key] = self._sweep(s, idx)
        return self._sweeps[key]

    def _sweep(self, s: int, idx: IntArray | Sequence[int]) -> tuple[FloatArray, FloatArray]:
        cands = self.candidates[s]
        t = list(self.thresholds(idx))
        t[s] = math.inf  # stage s exits nobody: gives the exits before and after s
        base = self.exit_stages(t)
        before = base < s
        if self.exit_value is None and not self.pairs_only:
            scores = np.empty(cands.size)
            costs = np.empty(cands.size)
            for j, c in enumerate(cands):
                exit_stage = np.where(
                    ~before & exit_mask(self.conf[s], float(c), is_last=False), s, base
                )
                scores[j], costs[j] = self.evaluate(exit_stage)
            return scores, costs
        self.n_evaluations += cands.size
        if self.n_samples == 0:
            return np.zeros(cands.size), np.zeros(cands.size)
        cols = np.arange(self.n_samples)
        rest = np.flatnonzero(~before)
        order = rest[np.argsort(self.conf[s, rest], kind="stable")]
        # Candidates ascend, so k ascends: the k least confident samples escalate (their
        # confidence is below the threshold), the others exit at stage s.
        k = np.searchsorted(self.conf[s, order], cands, side="left")
        w = self.w
        esc_cost = np.concatenate([[0.0], np.cumsum(self.cum_cost[base[order]] * w[order])])
        # Weight of the samples that exit at stage s: all of ``order`` past the first k.
        w_here = np.concatenate([[0.0], np.cumsum(w[order])])
        exiting = w_here[-1] - w_here[k]
        fixed_cost = (self.cum_cost[base[before]] * w[before]).sum()
        cost = fixed_cost + esc_cost[k] + exiting * self.cum_cost[s]
        if self.exit_value is not None:
            value = self.exit_value
            fixed = value[base[before], cols[before]].sum()
            escalated = np.concatenate([[0.0], np.cumsum(value[base[order], order])])
            here = np.concatenate([[0.0], np.cumsum(value[s, order])])
            total = fixed + escalated[k] + (here[-1] - here[k])
            return total / self.total, cost / self.total
        return self._pair_scores(s, base, before, order, k), cost / self.total

    def _pair_scores(
        self, s: int, base: IntArray, before: BoolArray, order: IntArray, k: IntArray
    ) -> FloatArray:
        """Scores of label-only scorers from (true, predicted) pair counts per candidate.

        A scorer that reads only ``predict`` depends on the multiset of (true, predicted)
        pairs, so each candidate is scored on at most ``n_classes**2`` weighted pairs.
        """
        n_classes = self.classes.size
        n_pairs = n_classes * n_classes
        y = self.y_idx
        fixed_codes = y[before] * n_classes + self.exit_pred[base[before], np.flatnonzero(before)]
        w = self.w
        fixed = np.bincount(fixed_codes, weights=w[before], minlength=n_pairs)
        # Position i of ``order`` is below k[j] exactly for j >= segment[i].
        segment = np.searchsorted(k, np.arange(order.size), side="right")
        n_seg = k.size + 1

        def prefix(codes: IntArray) -> FloatArray:
            counts = np.asarray(
                np.bincount(segment * n_pairs + codes, weights=w[order], minlength=n_seg * n_pairs),
                dtype=np.float64,
            )
            return np.cumsum(counts.reshape(n_seg, n_pairs), axis=0)[: k.size]

        esc = prefix(y[order] * n_classes + self.exit_pred[base[order], order])
        here = prefix(y[order] * n_classes + self.exit_pred[s, order])
        here_codes = y[order] * n_classes + self.exit_pred[s, order]
        here_total = np.bincount(here_codes, weights=w[order], minlength=n_pairs)
        counts = fixed[None, :] + esc + (here_total[None, :] - here)
        scores = np.empty(k.size)
        for j in range(k.size):
            key = counts[j].tobytes()
            if key not in self._pair_cache:
                codes = np.flatnonzero(counts[j])
                self._pair_cache[key] = self.score.weighted(self.classes, codes, counts[j, codes])
            scores[j] = self._pair_cache[key]
        return scores


def _candidates(conf: FloatArray, n_candidates: int) -> FloatArray:
    """Candidate thresholds: 0, midpoints below quantiles of ``conf``, and infinity.

    Midpoints between consecutive distinct confidences, never a confidence itself, keep a
    sample's side of a threshold stable under rounding of its probabilities.
    """
    values = np.unique(conf)
    if values.size == 0:
        return np.array([0.0, math.inf])
    picks = np.unique(np.round(np.linspace(0, values.size - 1, n_candidates)).astype(np.intp))
    picks = picks[picks > 0]
    midpoints = (values[picks - 1] + values[picks]) / 2.0
    return np.unique(np.concatenate([[0.0, math.inf], midpoints]))


def _combine_at_exit(
    stage_proba: FloatArray,
    visited_column: BoolArray,
    exit_at: int,
    rule: RoutingRule,
) -> FloatArray:
    n_samples = stage_proba.shape[1]
    visited = np.repeat(visited_column[:, None], n_samples, axis=1)
    exit_stage = np.full(n_samples, exit_at, dtype=np.intp)
    return combine_votes(
        stage_proba,
        visited,
        exit_stage,
        method=rule.combine,
        escalation_weight=rule.escalation_weights,
    )


# Keys: larger tuples are better; compared lexicographically.
_KeyFn: TypeAlias = Callable[[FloatArray, FloatArray], tuple[FloatArray, ...]]


def _feasible_cost(costs: FloatArray, budget: float) -> BoolArray:
    return np.asarray(costs <= budget * (1 + _COST_RTOL) + _COST_RTOL, dtype=bool)


def _key_max_score() -> _KeyFn:
    return lambda scores, costs: (scores, -costs)


def _key_lagrangian(lam: float) -> _KeyFn:
    return lambda scores, costs: (scores - lam * costs, scores, -costs)


def _key_budget(budget: float) -> _KeyFn:
    def key(scores: FloatArray, costs: FloatArray) -> tuple[FloatArray, ...]:
        ok = _feasible_cost(costs, budget)
        return ok.astype(float), np.where(ok, scores, -costs), np.where(ok, -costs, scores)

    return key


def _key_target(target: float) -> _KeyFn:
    def key(scores: FloatArray, costs: FloatArray) -> tuple[FloatArray, ...]:
        ok = scores >= target
        return ok.astype(float), np.where(ok, -costs, scores), np.where(ok, scores, -costs)

    return key


def _best(keys: tuple[FloatArray, ...], current: int) -> int:
    best = int(np.lexsort(keys[::-1])[-1])
    best_key = tuple(float(k[best]) for k in keys)
    current_key = tuple(float(k[current]) for k in keys)
    return current if current_key >= best_key else best


class _Archive:
    """Every configuration scored, as candidate-index rows with their score and cost."""

    def __init__(self) -> None:
        self.rows: list[IntArray] = []
        self.scores: list[FloatArray] = []
        self.costs: list[FloatArray] = []

    def add(self, idx: IntArray, scores: FloatArray, costs: FloatArray) -> None:
        self.rows.append(idx)
        self.scores.append(scores)
        self.costs.append(costs)

    def arrays(self) -> tuple[IntArray, FloatArray, FloatArray]:
        rows = np.concatenate(self.rows)
        scores = np.concatenate(self.scores)
        costs = np.concatenate(self.costs)
        rows, first = np.unique(rows, axis=0, return_index=True)
        return rows, scores[first], costs[first]


def _descend(problem: _Problem, start: IntArray, key: _KeyFn, archive: _Archive) -> IntArray:
    idx = start.copy()
    for _ in range(_MAX_SWEEPS):
        changed = False
        for s in range(problem.n_stages - 1):
            scores, costs = problem.sweep(s, idx)
            rows = np.repeat(idx[None, :], scores.size, axis=0)
            rows[:, s] = np.arange(scores.size)
            archive.add(rows, scores, costs)
            new = _best(key(scores, costs), int(idx[s]))
            if new != idx[s]:
                idx[s] = new
                changed = True
        if not changed:
            break
    return idx


def _pareto(scores: FloatArray, costs: FloatArray) -> IntArray:
    """Indices of the non-dominated points, by increasing cost and strictly rising score."""
    order = np.lexsort((-scores, costs))
    keep: list[int] = []
    best = -math.inf
    for i in order.tolist():
        if scores[i] > best:
            keep.append(i)
            best = float(scores[i])
    return np.array(keep, dtype=np.intp)


def _lambdas(costs: FloatArray, n_lambdas: int) -> list[float]:
    span = float(costs.sum() - costs[0])
    if span <= 0 or n_lambdas <= 0:
        return [0.0]
    return [0.0, *(np.geomspace(1e-3, 10.0, n_lambdas) / span).tolist()]


def _explore(problem: _Problem, costs: FloatArray, n_lambdas: int) -> _Archive:
    """Search the grid for good trade-offs; every configuration scored is archived."""
    archive = _Archive()
    n_free = problem.n_stages - 1
    # Trace the frontier: penalised descents, warm-started from the most expensive policy.
    idx = np.array([problem.candidates[s].size - 1 for s in range(n_free)], dtype=np.intp)
    for lam in _lambdas(costs, n_lambdas):
        idx = _descend(problem, idx, _key_lagrangian(lam), archive)
    # Small problems: sweep the last free stage for every combination of the others, which
    # is exhaustive over the candidate grid (two or three stages, with default settings).
    sizes = [problem.candidates[s].size for s in range(n_free - 1)]
    if math.prod(sizes) <= _EXHAUSTIVE_SWEEPS:
        for head in itertools.product(*(range(n) for n in sizes)):
            row = np.array([*head, 0], dtype=np.intp)
            scores_s, costs_s = problem.sweep(n_free - 1, row)
            rows_s = np.repeat(row[None, :], scores_s.size, axis=0)
            rows_s[:, -1] = np.arange(scores_s.size)
            archive.add(rows_s, scores_s, costs_s)
    # Penalties only reach the convex hull of the frontier; budget-constrained descents
    # at evenly spaced budgets fill in the points between.
    rows, scores, costs_seen = archive.arrays()
    for budget in np.linspace(costs_seen.min(), costs_seen.max(), n_lambdas + 2)[1:-1]:
        budget_key = _key_budget(float(budget))
        start = int(np.lexsort(budget_key(scores, costs_seen)[::-1])[-1])
        _descend(problem, rows[start], budget_key, archive)
    return archive


def _tune_one(
    p: FloatArray,
    y_idx: IntArray,
    labels: LabelArray,
    costs: FloatArray,
    *,
    names: tuple[str, ...],
    order: tuple[int, ...],
    n_stages: int,
    rule: RoutingRule,
    score: _Score,
    max_cost: float | None,
    min_score: float | None,
    n_candidates: int,
    n_lambdas: int,
    weights: FloatArray | None = None,
) -> TuningResult:
    """Tune the thresholds of ``rule`` (which must have ``p.shape[0]`` stages)."""
    stage_scores = single_stage_scores(
        p, labels[y_idx], classes=labels, scoring=score, sample_weight=weights
    )
    target = min_score
    key, objective = _objective(max_cost, target)
    problem = _Problem(
        p, y_idx, labels, costs, rule=rule, score=score, n_candidates=n_candidates, weights=weights
    )
    if p.shape[0] == 1:
        # One stage: nothing to tune; every sample ends at that stage.
        value, cost = problem.evaluate(np.zeros(problem.n_samples, dtype=np.intp))
        return TuningResult(
            policy=ConfidencePolicy(rule.measure, 0.0),
            score=value,
            mean_cost=cost,
            frontier=(FrontierPoint((), value, cost),),
            chosen_index=0,
            feasible=_is_feasible(value, cost, max_cost, target),
            stage_names=names,
            order=order,
            stage_cost=(float(costs[0]),),
            stage_scores=(float(stage_scores[0]),),
            scoring=score.name,
            objective=objective,
            n_evaluations=problem.n_evaluations,
            n_stages=n_stages,
            rule=rule.with_thresholds(()),
        )
    archive = _explore(problem, costs, n_lambdas)
    # Refine on the real objective, from the best archived points.
    rows, scores, costs_seen = archive.arrays()
    ranking = np.lexsort(key(scores, costs_seen)[::-1])[::-1][:3]
    for r in ranking.tolist():
        _descend(problem, rows[r], key, archive)
    rows, scores, costs_seen = archive.arrays()
    best = int(np.lexsort(key(scores, costs_seen)[::-1])[-1])
    feasible = _is_feasible(float(scores[best]), float(costs_seen[best]), max_cost, target)
    front = _pareto(scores, costs_seen)
    # The chosen point is non-dominated by construction of the keys; among configurations
    # with the same score and cost, report the chosen one's thresholds.
    same = (scores[front] == scores[best]) & (costs_seen[front] == costs_seen[best])
    chosen = int(np.flatnonzero(same)[0])
    front[chosen] = best
    points = tuple(
        FrontierPoint(problem.thresholds(rows[i]), float(scores[i]), float(costs_seen[i]))
        for i in front.tolist()
    )
    return TuningResult(
        policy=ConfidencePolicy(rule.measure, points[chosen].thresholds),
        score=points[chosen].score,
        mean_cost=points[chosen].mean_cost,
        frontier=points,
        chosen_index=chosen,
        feasible=feasible,
        stage_names=names,
        order=order,
        stage_cost=tuple(float(c) for c in costs),
        stage_scores=tuple(float(s) for s in stage_scores),
        scoring=score.name,
        objective=objective,
        n_evaluations=problem.n_evaluations,
        n_stages=n_stages,
        rule=rule.with_thresholds(points[chosen].thresholds),
    )


def _objective(max_cost: float | None, target: float | None) -> tuple[_KeyFn, str]:
    """The ranking key of the tuning objective, and its name."""
    if max_cost is not None:
        return _key_budget(float(max_cost)), "max_score_under_budget"
    if target is not None:
        return _key_target(target), "min_cost_for_score"
    return _key_max_score(), "max_score"


def _is_feasible(score: float, cost: float, max_cost: float | None, target: float | None) -> bool:
    if max_cost is not None:
        return bool(_feasible_cost(np.array([cost]), float(max_cost))[0])
    if target is not None:
        return score >= target
    return True
