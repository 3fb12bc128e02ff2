import dataclasses
import functools
import itertools
import math
import re
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits
from sklearn.metrics import balanced_accuracy_score, f1_score, get_scorer, log_loss
from sklearn.naive_bayes import GaussianNB
from sklearn.tree import DecisionTreeClassifier

from cascademl import (
    CascadeClassifier,
    ConfidencePolicy,
    NotFittedError,
    PolicyError,
    RoutingRule,
)
from cascademl.tuning import (
    FrontierPoint,
    OrderSearchResult,
    apply_tuning,
    order_by_accuracy,
    order_by_cost,
    score_thresholds,
    search_orders,
    search_orders_from_proba,
    single_stage_scores,
    stage_probabilities,
    tune_cascade,
    tune_cascade_from_proba,
)
from strategies import CLASS_LABELS, TableStage, sample_ids

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _rule(n_stages, combine="vote", escalation_weight=0.5, measure="max_proba"):
    return RoutingRule.from_params(
        ConfidencePolicy(measure),
        n_stages=n_stages,
        combine=combine,
        escalation_weight=escalation_weight,
    )


def tune_with(tables, y, *, combine="vote", escalation_weight=0.5, **kwargs):
    """`tune_cascade_from_proba` with the rule of ``combine`` and ``escalation_weight``."""
    rule = _rule(len(tables), combine, escalation_weight)
    return tune_cascade_from_proba(tables, y, rule=rule, **kwargs)


def search_with(tables, y, *, combine="vote", escalation_weight=0.5, **kwargs):
    """`search_orders_from_proba` with the rule of ``combine`` and ``escalation_weight``."""
    rule = _rule(len(tables), combine, escalation_weight)
    return search_orders_from_proba(tables, y, rule=rule, **kwargs)


def score_with(tables, y, thresholds, *, combine="vote", **kwargs):
    """`score_thresholds` with the rule of ``combine``."""
    return score_thresholds(tables, y, thresholds, rule=_rule(len(tables), combine), **kwargs)


def _synthetic(n_stages=4, n_samples=400, n_classes=3, seed=0):
    """Stages of rising accuracy, each with an informative confidence."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n_samples)
    tables = []
    for s in range(n_stages):
        skill = 0.5 + 2.5 * s / max(n_stages - 1, 1)
        logits = rng.normal(size=(n_samples, n_classes))
        logits[np.arange(n_samples), y] += skill * rng.random(n_samples) * 2
        p = np.exp(logits)
        tables.append(p / p.sum(axis=1, keepdims=True))
    classes = np.array(
        CLASS_LABELS[:n_classes] if n_classes <= len(CLASS_LABELS) else range(n_classes)
    )
    return np.stack(tables), classes[y], classes


def _cascade(tables, classes, thresholds=0.9, **kwargs):
    stages = [(f"s{i}", TableStage(t, classes)) for i, t in enumerate(tables)]
    policy = ConfidencePolicy("max_proba", thresholds)
    return CascadeClassifier(stages, policy=policy, **kwargs).fit(
        sample_ids(tables.shape[1]), classes[np.argmax(tables[-1], axis=1)]
    )


def _routed(tables, y, classes, thresholds, costs, **kwargs):
    """Score and mean cost of the real cascade under ``thresholds``."""
    cascade = _cascade(tables, classes, tuple(thresholds), **kwargs)
    stages = cascade.stages_
    for stage, cost in zip(stages, costs, strict=True):
        stage.cost_per_sample = cost
    result = cascade.route(sample_ids(tables.shape[1]))
    return float(np.mean(result.labels == y)), result.mean_cost


@pytest.mark.parametrize("combine", ["vote", "last", "mean"])
def test_every_frontier_point_matches_the_real_cascade(combine):
    tables, y, classes = _synthetic()
    costs = [1.0, 2.0, 5.0, 20.0]
    result = tune_with(tables, y, classes=classes, stage_cost=costs, combine=combine, max_cost=8.0)
    assert len(result.frontier) > 3
    for point in result.frontier:
        score, cost = _routed(tables, y, classes, point.thresholds, costs, combine=combine)
        assert score == pytest.approx(point.score, abs=1e-12)
        assert cost == pytest.approx(point.mean_cost, rel=1e-12)


@pytest.mark.parametrize("combine", ["vote", "last"])
def test_score_thresholds_matches_the_real_cascade_and_the_tuner(combine):
    tables, y, classes = _synthetic(seed=3)
    costs = [1.0, 2.0, 5.0, 20.0]
    tuned = tune_with(
        tables, y, classes=classes, stage_cost=costs, combine=combine, scoring="neg_log_loss"
    )
    for point in tuned.frontier:
        again = score_with(
            tables,
            y,
            point.thresholds,
            classes=classes,
            stage_cost=costs,
            combine=combine,
            scoring="neg_log_loss",
        )
        assert again.score == pytest.approx(point.score, rel=1e-12)
        assert again.mean_cost == pytest.approx(point.mean_cost, rel=1e-12)
        # Read in accuracy, the same thresholds score as the real cascade routes them.
        accuracy = score_with(
            tables, y, point.thresholds, classes=classes, stage_cost=costs, combine=combine
        )
        score, cost = _routed(tables, y, classes, point.thresholds, costs, combine=combine)
        assert accuracy.score == pytest.approx(score, abs=1e-12)
        assert accuracy.mean_cost == pytest.approx(cost, rel=1e-12)
        assert accuracy.thresholds == point.thresholds


@pytest.mark.parametrize("confidently_wrong", [False, True])
@pytest.mark.parametrize("combine", ["vote", "last", "mean"])
def test_log_loss_frontier_is_sklearns_log_loss_of_the_real_cascade(combine, confidently_wrong):
    # The tuner sweeps log-loss with cumulative sums; check it against sklearn on the routed
    # cascade's combined probabilities, not against the tuner's own evaluation.
    tables, y, classes = _synthetic(seed=5)
    if confidently_wrong:  # probability exactly 0 for the true class: sklearn's clipping
        y_idx = np.searchsorted(classes, y)
        wrong = np.eye(len(classes))[(y_idx + 1) % len(classes)]
        tables = tables.copy()
        tables[0, :40] = wrong[:40]
    costs = [1.0, 2.0, 5.0, 20.0]
    tuned = tune_with(
        tables, y, classes=classes, stage_cost=costs, combine=combine, scoring="neg_log_loss"
    )
    assert len(tuned.frontier) > 3
    for point in tuned.frontier:
        cascade = _cascade(tables, classes, point.thresholds, combine=combine)
        result = cascade.route(sample_ids(tables.shape[1]))
        expected = -log_loss(y, result.proba, labels=classes)
        assert point.score == pytest.approx(expected, rel=1e-9, abs=1e-12)


# The generic path calls sklearn once per configuration: a few small examples only.
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    n_stages=st.integers(2, 3),
    combine=st.sampled_from(["vote", "last"]),
    budget=st.sampled_from([None, 3.0, 6.0]),
)
def test_log_loss_fast_path_agrees_with_the_generic_scorer_path(seed, n_stages, combine, budget):
    tables, y, classes = _synthetic(n_stages=n_stages, n_samples=60, seed=seed)
    costs = [1.0, 2.0, 4.0][:n_stages]
    scorer = get_scorer("neg_log_loss")

    def generic(estimator, X, y_true):  # same score, but not recognised: one call per point
        return scorer(estimator, X, y_true)

    kwargs = {"classes": classes, "stage_cost": costs, "combine": combine}
    small = {"max_cost": budget, "n_candidates": 16, "n_lambdas": 4}
    fast = tune_with(tables, y, scoring="neg_log_loss", **small, **kwargs)
    slow = tune_with(tables, y, scoring=generic, **small, **kwargs)
    assert fast.score == pytest.approx(slow.score, rel=1e-9, abs=1e-12)
    for point in fast.frontier:
        again = score_with(tables, y, point.thresholds, scoring=generic, **kwargs)
        assert point.score == pytest.approx(again.score, rel=1e-9, abs=1e-12)


def test_score_thresholds_rejects_a_wrong_number_of_thresholds():
    tables, y, classes = _synthetic(n_stages=3)
    with pytest.raises(PolicyError, match="2 numbers"):
        score_thresholds(tables, y, [0.5], classes=classes)
    with pytest.raises(PolicyError, match="2 numbers"):
        score_thresholds(tables, y, [0.5, math.nan], classes=classes)


def test_budget_is_respected_and_beats_a_shared_threshold_grid():
    tables, y, classes = _synthetic(n_stages=5, n_samples=600)
    costs = [1.0, 2.0, 4.0, 8.0, 16.0]
    budget = 6.0
    result = tune_with(tables, y, classes=classes, stage_cost=costs, max_cost=budget)
    assert result.mean_cost <= budget
    assert result.feasible
    assert result.objective == "max_score_under_budget"
    best_grid = -math.inf
    for t in np.linspace(0.3, 1.0, 15):
        score, cost = _routed(tables, y, classes, (t,) * 4, costs)
        if cost <= budget:
            best_grid = max(best_grid, score)
    assert result.score >= best_grid


def test_min_score_best_stage_and_cost_minimisation():
    tables, y, classes = _synthetic()
    costs = [1.0, 2.0, 5.0, 20.0]
    stage_scores = single_stage_scores(tables, y, classes=classes)
    result = tune_with(tables, y, classes=classes, stage_cost=costs, min_score="best_stage")
    assert result.score >= stage_scores.max()
    assert result.objective == "min_cost_for_score"
    # The cheapest frontier point reaching the target is the one chosen.
    costs_f, scores_f = result.frontier_arrays()
    assert result.mean_cost == costs_f[scores_f >= stage_scores.max()].min()
    assert result.stage_scores == pytest.approx(tuple(stage_scores))


def test_unconstrained_picks_the_best_score():
    tables, y, classes = _synthetic()
    result = tune_with(tables, y, classes=classes)
    _, scores_f = result.frontier_arrays()
    assert result.score == scores_f.max()
    assert result.chosen_index == len(result.frontier) - 1


def test_infeasible_constraints_raise_with_the_best_found():
    tables, y, classes = _synthetic()
    with pytest.raises(PolicyError, match=r"max_cost=0\.5"):
        tune_with(tables, y, classes=classes, stage_cost=[1, 2, 3, 4], max_cost=0.5)
    with pytest.raises(PolicyError, match=r"min_score=1\.5"):
        tune_with(tables, y, classes=classes, min_score=1.5)
    with pytest.raises(PolicyError, match="not both"):
        tune_with(tables, y, classes=classes, min_score=0.5, max_cost=2.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stage_cost": [1.0, 2.0]}, "stage_cost"),
        ({"stage_cost": [1.0, -2.0, 1.0, 1.0]}, "stage_cost"),
        ({"n_candidates": 1}, "n_candidates"),
        ({"scoring": "not_a_scorer"}, "scoring"),
        ({"max_cost": math.nan}, "max_cost"),
        ({"min_score": "best"}, "min_score"),
        ({"stage_names": ["a"]}, "stage_names"),
    ],
)
def test_invalid_arguments(kwargs, match):
    tables, y, classes = _synthetic()
    with pytest.raises(PolicyError, match=match):
        tune_with(tables, y, classes=classes, **kwargs)


def test_unknown_labels_and_shapes_are_rejected():
    tables, y, classes = _synthetic()
    with pytest.raises(PolicyError, match="not in classes"):
        tune_with(tables, np.array(["zzz"] * len(y)), classes=classes)
    with pytest.raises(PolicyError, match="samples"):
        tune_with(tables, y[:-1], classes=classes)
    with pytest.raises(PolicyError, match="shape"):
        tune_with(tables[0], y, classes=classes)


def test_sklearn_scorer_matches_sklearn_on_the_routed_labels():
    tables, y, classes = _synthetic()
    costs = [1.0, 2.0, 5.0, 20.0]
    result = tune_with(
        tables, y, classes=classes, stage_cost=costs, max_cost=6.0, scoring="f1_macro"
    )
    assert result.scoring == "f1_macro"
    cascade = _cascade(tables, classes, result.thresholds)
    labels = cascade.predict(sample_ids(tables.shape[1]))
    assert result.score == pytest.approx(f1_score(y, labels, average="macro"), abs=1e-12)


def test_single_stage_and_tiny_inputs():
    tables, y, classes = _synthetic(n_stages=1)
    result = tune_with(tables, y, classes=classes)
    assert result.frontier[0].thresholds == ()
    assert result.score == pytest.approx(single_stage_scores(tables, y, classes=classes)[0])


@PROPERTY
@given(
    seed=st.integers(0, 10_000),
    n_stages=st.integers(2, 4),
    budget=st.floats(1.0, 12.0),
    combine=st.sampled_from(["vote", "last", "mean"]),
)
def test_properties_budget_frontier_determinism(seed, n_stages, budget, combine):
    tables, y, classes = _synthetic(n_stages=n_stages, n_samples=60, seed=seed)
    costs = [1.0, 3.0, 5.0, 7.0][:n_stages]
    kwargs = {"classes": classes, "stage_cost": costs, "combine": combine, "n_candidates": 16}
    result = tune_with(tables, y, max_cost=budget, **kwargs)
    again = tune_with(tables, y, max_cost=budget, **kwargs)
    # Respects the budget.
    assert result.mean_cost <= budget + 1e-9
    # Deterministic.
    assert result.frontier == again.frontier
    assert result.policy == again.policy
    # The frontier is strictly monotone: each extra unit of cost buys score.
    costs_f, scores_f = result.frontier_arrays()
    assert np.all(np.diff(costs_f) > 0)
    assert np.all(np.diff(scores_f) > 0)
    # The chosen point is the best frontier point within the budget.
    within = scores_f[costs_f <= budget + 1e-9]
    assert result.score == within.max()
    # The reported numbers are those of the real cascade.
    score, cost = _routed(tables, y, classes, result.thresholds, costs, combine=combine)
    assert score == pytest.approx(result.score, abs=1e-12)
    assert cost == pytest.approx(result.mean_cost, rel=1e-12)


@PROPERTY
@given(seed=st.integers(0, 10_000))
def test_frontier_is_not_dominated_by_any_grid_point(seed):
    tables, y, classes = _synthetic(n_stages=3, n_samples=50, seed=seed)
    costs = [1.0, 2.0, 6.0]
    result = tune_with(tables, y, classes=classes, stage_cost=costs)
    costs_f, scores_f = result.frontier_arrays()
    for t0, t1 in itertools.product([0.0, 0.5, 0.7, 0.9, math.inf], repeat=2):
        score, cost = _routed(tables, y, classes, (t0, t1), costs)
        # Some frontier point at most as expensive scores at least as well.
        assert scores_f[costs_f <= cost + 1e-9].max() >= score - 1e-12


def test_stage_probabilities_calls_each_stage_once_then_tuning_calls_none():
    tables, y, classes = _synthetic()
    cascade = _cascade(tables, classes)
    X = sample_ids(tables.shape[1])
    for stage in cascade.stages_:
        stage.calls.clear()
    proba = stage_probabilities(cascade, X)
    assert [stage.calls for stage in cascade.stages_] == [[400]] * 4
    np.testing.assert_allclose(proba, tables, rtol=1e-12)
    tune_with(proba, y, classes=cascade.classes_, max_cost=2.5)
    assert [stage.calls for stage in cascade.stages_] == [[400]] * 4


def test_stage_probabilities_batches_and_maps_columns():
    tables, y, classes = _synthetic(n_stages=2)
    reversed_stage = TableStage(tables[1][:, ::-1], classes[::-1])
    cascade = CascadeClassifier([("a", TableStage(tables[0], classes)), ("b", reversed_stage)]).fit(
        sample_ids(400), y
    )
    proba = stage_probabilities(cascade, sample_ids(400), batch_size=64)
    np.testing.assert_allclose(proba, tables)
    assert reversed_stage.calls == [64] * 6 + [16]
    with pytest.raises(NotFittedError):
        stage_probabilities(CascadeClassifier([("a", GaussianNB())]), sample_ids(3))
    with pytest.raises(PolicyError, match="batch_size"):
        stage_probabilities(cascade, sample_ids(3), batch_size=0)


def test_orders_helpers():
    tables, y, classes = _synthetic()
    scores = single_stage_scores(tables, y, classes=classes)
    assert order_by_accuracy(tables[::-1], y, classes=classes) == tuple(
        np.argsort(scores[::-1], kind="stable")
    )
    assert order_by_cost([3.0, 1.0, 2.0, 1.0]) == (1, 3, 2, 0)


def test_order_search_reports_each_order():
    tables, y, classes = _synthetic()
    costs = [20.0, 1.0, 5.0, 2.0]  # the given order is expensive-first
    search = search_with(
        tables,
        y,
        classes=classes,
        stage_cost=costs,
        max_cost=8.0,
        stage_names=["s0", "s1", "s2", "s3"],
    )
    assert isinstance(search, OrderSearchResult)
    orders = [r.order for r in search.results]
    assert orders[0] == (0, 1, 2, 3)
    assert (1, 3, 2, 0) in orders  # cheapest first
    cheap_first = search.for_order((1, 3, 2, 0))
    assert cheap_first.stage_names == ("s1", "s3", "s2", "s0")
    assert cheap_first.stage_cost == (1.0, 2.0, 5.0, 20.0)
    # The given order cannot go under the budget: its first stage alone costs 20.
    assert not search.for_order((0, 1, 2, 3)).feasible
    assert search.best.feasible
    assert search.best.score == max(r.score for r in search.results if r.feasible)
    with pytest.raises(KeyError):
        search.for_order((3, 2, 1, 0))
    everything = search_with(tables[:3], y, classes=classes, orders="all")
    assert len(everything.results) == 6
    with pytest.raises(PolicyError, match="permutation"):
        search_with(tables, y, classes=classes, orders=[(0, 0, 1, 2)])


@pytest.fixture(scope="module")
def digits_cascade():
    X, y = load_digits(return_X_y=True)
    cascade = CascadeClassifier(
        [
            ("nb", GaussianNB()),
            ("tree", DecisionTreeClassifier(max_depth=8, random_state=0)),
        ]
    ).fit(X[:900], y[:900])
    return cascade, X[900:1400], y[900:1400]


def test_tune_and_apply_on_a_real_cascade(digits_cascade):
    cascade, X_val, y_val = digits_cascade
    cascade.stages_[0].cost_per_sample = 1.0
    cascade.stages_[1].cost_per_sample = 3.0
    try:
        result = tune_cascade(cascade, X_val, y_val, max_cost=3.5)
        tuned = apply_tuning(cascade, result)
    finally:
        cascade.stages_[0].cost_per_sample = None
        cascade.stages_[1].cost_per_sample = None
    assert result.stage_names == ("nb", "tree")
    assert result.stage_cost == (1.0, 3.0)
    routed = tuned.route(X_val)
    assert float(np.mean(routed.labels == y_val)) == pytest.approx(result.score)
    assert routed.mean_cost == pytest.approx(result.mean_cost)
    # Trained stages are reused, not retrained.
    assert tuned.stages_[0].estimator_ is cascade.stages_[0].estimator_
    assert tuned.policy_ == result.policy
    search = search_orders(cascade, X_val, y_val, stage_cost=[1.0, 3.0], orders="all")
    reordered = apply_tuning(cascade, search.for_order((1, 0)))
    assert list(reordered.named_stages_) == ["tree", "nb"]


@pytest.mark.slow
def test_scales_to_many_stages_and_samples():
    tables, y, classes = _synthetic(n_stages=6, n_samples=20_000, n_classes=10)
    costs = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    result = tune_with(tables, y, classes=classes, stage_cost=costs, max_cost=10.0)
    assert result.mean_cost <= 10.0
    # Linear in the number of stages, not exponential (an exhaustive 64^5 grid would take
    # days); the time itself is measured by benchmarks, not asserted here.
    assert result.n_evaluations < 64**3


# ------------------------------------------------------------------- stage selection
_FAST = {"n_candidates": 8, "n_lambdas": 3}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    n_stages=st.integers(1, 5),
    budget=st.one_of(st.none(), st.floats(1.0, 12.0)),
)
def test_subsets_tunes_every_sub_sequence_once(seed, n_stages, budget):
    tables, y, classes = _synthetic(n_stages=n_stages, n_samples=40, seed=seed)
    costs = [1.0, 3.0, 2.0, 5.0, 4.0][:n_stages]
    search = search_with(
        tables, y, classes=classes, stage_cost=costs, orders="subsets", max_cost=budget, **_FAST
    )
    orders = [r.order for r in search.results]
    assert len(orders) == 2**n_stages - 1
    assert len(set(orders)) == len(orders)
    assert all(all(a < b for a, b in itertools.pairwise(o)) for o in orders)
    expected = {
        c for k in range(1, n_stages + 1) for c in itertools.combinations(range(n_stages), k)
    }
    assert set(orders) == expected
    for r in search.results:
        assert r.stage_cost == tuple(costs[i] for i in r.order)
        assert len(r.thresholds) == len(r.order) - 1
        assert search.for_order(list(r.order)) is r
    # The selection rule: the best score among feasible candidates, then the lower cost,
    # then the earlier candidate.
    feasible = [i for i, r in enumerate(search.results) if r.feasible]
    rank = {i: (-search.results[i].score, search.results[i].mean_cost, i) for i in feasible}
    assert search.best_index == min(feasible, key=rank.__getitem__)


def _cheap_wrong_problem(n_samples=300, seed=0):
    """Stage 0 is cheap and confidently wrong on over 60% of the samples (its confidence
    says nothing), stage 1 is right on 11 in 12 and unsure on its mistakes, stage 2 is
    always right but expensive."""
    rng = np.random.default_rng(seed)
    n_classes = 3
    y = rng.integers(0, n_classes, n_samples)
    other = (y + rng.integers(1, n_classes, n_samples)) % n_classes
    rows = np.arange(n_samples)

    def table(pred, confidence):
        p = np.tile(((1.0 - confidence) / (n_classes - 1))[:, None], (1, n_classes))
        p[rows, pred] = confidence
        return p

    wrong1 = rng.permutation(n_samples) < n_samples // 12
    # Stage 0 also errs, the same way, wherever stage 1 does: combining them cannot help.
    wrong0 = (rng.random(n_samples) < 0.6) | wrong1
    stage0 = table(np.where(wrong0, other, y), rng.uniform(0.85, 0.99, n_samples))
    stage1 = table(np.where(wrong1, other, y), np.where(wrong1, 0.5, 0.8))
    stage2 = table(y, np.full(n_samples, 0.9))
    return np.stack([stage0, stage1, stage2]), y, np.arange(n_classes)


@pytest.mark.parametrize("combine", ["vote", "last"])
def test_subsets_drops_a_cheap_confidently_wrong_stage(combine):
    tables, y, classes = _cheap_wrong_problem()
    costs = [1.0, 4.0, 10.0]
    budget = 5.0  # stage 1 alone fits; every sample through stages 0 and 1 as well, no more
    kwargs = {"classes": classes, "stage_cost": costs, "combine": combine, "max_cost": budget}
    subsets = search_with(tables, y, orders="subsets", **kwargs)
    best = subsets.best
    assert best.feasible
    assert 0 not in best.order
    assert best.mean_cost <= budget + 1e-9
    accuracy = single_stage_scores(tables, y, classes=classes)
    assert best.score > accuracy[1]  # stage 2 fixes stage 1's unsure mistakes
    # Every full order tried by default starts with stage 0 and scores less.
    auto = search_with(tables, y, **kwargs)
    assert all(r.order[0] == 0 for r in auto.results)
    assert best.score > max(r.score for r in auto.results)
    assert best.score > subsets.for_order((0, 1, 2)).score
    # No permutation of all three stages does better.
    everything = search_with(tables, y, orders="all", **kwargs)
    assert best.score >= max(r.score for r in everything.results if r.feasible)


@pytest.mark.parametrize("scoring", [None, "f1_macro", "neg_log_loss"])
def test_one_stage_candidates_score_and_cost_that_stage(scoring):
    tables, y, classes = _synthetic(n_stages=3, n_samples=200, seed=5)
    costs = [2.0, 3.0, 7.0]
    search = search_with(
        tables, y, classes=classes, stage_cost=costs, orders=[[2], [0], [1, 2]], scoring=scoring
    )
    alone = single_stage_scores(tables, y, classes=classes, scoring=scoring)
    for s in (0, 2):
        result = search.for_order((s,))
        assert result.score == pytest.approx(alone[s], abs=1e-12)
        assert result.mean_cost == costs[s]
        assert result.thresholds == ()
        assert result.stage_scores == pytest.approx((alone[s],))
        assert len(result.frontier) == 1
        assert result.feasible
        point = score_thresholds(
            tables[[s]], y, (), classes=classes, stage_cost=[costs[s]], scoring=scoring
        )
        assert point.score == pytest.approx(result.score, abs=1e-12)
    assert [r.order for r in search.results] == [(2,), (0,), (1, 2)]


def test_one_stage_candidates_under_constraints():
    tables, y, classes = _synthetic(n_stages=3, n_samples=200, seed=2)
    costs = [1.0, 2.0, 6.0]
    alone = single_stage_scores(tables, y, classes=classes)
    best_stage = int(np.argmax(alone))
    kwargs = {"classes": classes, "stage_cost": costs, "orders": "subsets", **_FAST}
    # "best_stage" is the best single stage over all the stages, for every candidate.
    target = search_with(tables, y, min_score="best_stage", **kwargs)
    assert target.best.score >= alone.max()
    assert target.best.objective == "min_cost_for_score"
    for s in range(3):
        one = target.for_order((s,))
        assert one.feasible == (alone[s] >= alone.max())
        assert one.objective == "min_cost_for_score"
    assert target.for_order((best_stage,)).feasible
    # A budget below one stage's cost rules that stage out on its own.
    budget = search_with(tables, y, max_cost=1.5, **kwargs)
    assert budget.for_order((0,)).feasible
    assert not budget.for_order((1,)).feasible
    assert budget.for_order((1,)).objective == "max_score_under_budget"
    assert budget.best.mean_cost <= 1.5


def test_apply_tuning_keeps_only_the_tuned_stages():
    tables, y, classes = _synthetic(n_stages=4, n_samples=300, seed=1)
    costs = [1.0, 2.0, 5.0, 20.0]
    weights = [0.1, 0.2, 0.3, 0.4]
    cascade = _cascade(tables, classes, escalation_weight=weights)
    for stage, cost in zip(cascade.stages_, costs, strict=True):
        stage.cost_per_sample = cost
    X = sample_ids(tables.shape[1])
    search = search_orders(cascade, X, y, orders="subsets", max_cost=6.0)
    assert len(search.results) == 15
    for order in [(1, 3), (2,), search.best.order]:
        result = search.for_order(order)
        tuned = apply_tuning(cascade, result)
        assert list(tuned.named_stages_) == [f"s{i}" for i in order]
        assert tuned.stages_ == [cascade.stages_[i] for i in order]
        assert tuned.escalation_weight == [weights[i] for i in order]
        routed = tuned.route(X)
        assert float(np.mean(routed.labels == y)) == pytest.approx(result.score, abs=1e-12)
        assert routed.mean_cost == pytest.approx(result.mean_cost, rel=1e-12)
    # An order search contributes its best order; the tuned cascade is left unchanged.
    best = apply_tuning(cascade, search)
    assert list(best.named_stages_) == [f"s{i}" for i in search.best.order]
    assert list(cascade.named_stages_) == ["s0", "s1", "s2", "s3"]
    single = apply_tuning(cascade, search.for_order((2,)))
    np.testing.assert_array_equal(single.predict(X), classes[np.argmax(tables[2], axis=1)])


def test_apply_tuning_drops_stages_of_a_real_cascade(digits_cascade):
    cascade, X_val, y_val = digits_cascade
    search = search_orders(cascade, X_val, y_val, orders=[(1,), (0, 1)])
    tree_alone = search.for_order([1])
    tuned = apply_tuning(cascade, tree_alone)
    assert list(tuned.named_stages_) == ["tree"]
    assert tuned.stages_[0].estimator_ is cascade.stages_[1].estimator_
    np.testing.assert_array_equal(tuned.predict(X_val), cascade.stages_[1].predict(X_val))
    assert tuned.score(X_val, y_val) == pytest.approx(tree_alone.score)


@pytest.mark.parametrize(
    ("orders", "match"),
    [
        ([(0, 1, 1)], r"got \[0, 1, 1\]: index 1 is repeated"),
        ([(0, 1), (3, 0)], r"range\(3\).*got \[3, 0\]: index 3 is out of range"),
        ([(0, 1), (-1,)], r"got \[-1\]: index -1 is out of range"),
        ([()], r"got \[\]: it is empty"),
        ([(0, 1.5)], r"1\.5 is not an integer"),
        ([0, 1, 2], "not a sequence of stage indices"),
        ([], "must not be empty"),
        ("some", "'subsets'"),
    ],
)
def test_invalid_orders_are_refused(orders, match):
    tables, y, classes = _synthetic(n_stages=3, n_samples=30)
    with pytest.raises(PolicyError, match=match):
        search_with(tables, y, classes=classes, orders=orders)


def test_subsets_refuses_too_many_stages():
    tables, y, classes = _synthetic(n_stages=13, n_samples=10)
    with pytest.raises(PolicyError, match=r"2\*\*13 - 1 = 8191 candidates.*12 stages"):
        search_with(tables, y, classes=classes, orders="subsets")


def test_order_search_reports_the_closest_candidate_when_none_is_feasible():
    tables, y, classes = _synthetic(n_stages=3, n_samples=60)
    with pytest.raises(PolicyError, match=r"cheapest policy found costs 0\.5 per sample"):
        search_with(
            tables, y, classes=classes, stage_cost=[3.0, 0.5, 2.0], orders="subsets", max_cost=0.1
        )


@pytest.mark.parametrize(
    ("order", "match"),
    [((0, 0), "index 0 is repeated"), ((1, 4), "index 4 is out of range"), ((), "empty")],
)
def test_apply_tuning_refuses_orders_that_do_not_fit(order, match):
    tables, y, classes = _synthetic(n_stages=3, n_samples=50)
    cascade = _cascade(tables, classes)
    result = tune_with(tables[:2], y, classes=classes)
    bad = dataclasses.replace(result, order=order)
    with pytest.raises(PolicyError, match=match):
        apply_tuning(cascade, bad)


def test_apply_tuning_refuses_a_result_tuned_on_another_number_of_stages():
    tables, y, classes = _synthetic(n_stages=3, n_samples=50)
    cascade = _cascade(tables, classes)
    result = tune_with(tables[:2], y, classes=classes)
    assert result.n_stages == 2
    with pytest.raises(PolicyError, match=r"\(0, 1\) does not fit .* tuned on 2 stages"):
        apply_tuning(cascade, result)


# --------------------------------------------------------------------------- the new API
def test_deprecated_names_warn_and_match_the_new_ones():
    tables, y, classes = _synthetic(n_stages=3, n_samples=200)
    kwargs = {"classes": classes, "stage_cost": [1.0, 2.0, 6.0], "max_cost": 3.0}
    from cascademl import tuning

    with pytest.deprecated_call(match="tune_cascade_from_proba"):
        old = tuning.tune_thresholds(tables, y, combine="last", **kwargs)
    new = tune_with(tables, y, combine="last", **kwargs)
    assert old.frontier == new.frontier
    assert old.rule == new.rule
    with pytest.deprecated_call(match="search_orders_from_proba"):
        old_search = tuning.search_stage_orders(tables, y, escalation_weight=0.2, **kwargs)
    new_search = search_with(tables, y, escalation_weight=0.2, **kwargs)
    assert [r.frontier for r in old_search.results] == [r.frontier for r in new_search.results]
    with pytest.deprecated_call(match="rule="):
        point = score_thresholds(
            tables, y, old.thresholds, combine="last", classes=classes, stage_cost=[1.0, 2.0, 6.0]
        )
    assert point.score == old.score


def test_result_rule_routes_like_the_result():
    tables, y, classes = _synthetic(n_stages=3, n_samples=300, seed=4)
    costs = [1.0, 2.0, 6.0]
    rule = _rule(3, "vote", [0.1, 0.2, 0.3], measure="margin")
    result = tune_cascade_from_proba(
        tables, y, classes=classes, rule=rule, stage_cost=costs, max_cost=4.0
    )
    assert result.rule == rule.with_thresholds(result.thresholds)
    assert result.rule.policy.thresholds[:-1] == result.thresholds
    again = score_thresholds(tables, y, result.rule, classes=classes, stage_cost=costs)
    assert (again.score, again.mean_cost) == (result.score, result.mean_cost)
    with pytest.raises(PolicyError, match="rule is for 2 stages but stage_proba has 3"):
        tune_cascade_from_proba(tables, y, classes=classes, rule=_rule(2))
    with pytest.raises(PolicyError, match="not both"):
        score_thresholds(tables, y, result.rule, classes=classes, rule=rule)


def test_escalation_weight_grid_picks_the_best_weight_and_zero_is_last():
    tables, y, classes = _synthetic(n_stages=4, n_samples=400, seed=6)
    costs = [1.0, 2.0, 5.0, 20.0]
    kwargs = {"classes": classes, "stage_cost": costs, "max_cost": 8.0}
    grid = (0.0, 0.25, 0.5)
    best = tune_cascade_from_proba(tables, y, combine="vote", escalation_weight_grid=grid, **kwargs)
    alone = {w: tune_with(tables, y, escalation_weight=w, **kwargs) for w in grid}
    assert best.score == max(r.score for r in alone.values())
    (weight,) = set(best.rule.escalation_weights)
    assert best.frontier == alone[weight].frontier
    # Weight 0 under "vote" is the exiting stage alone: combine="last".
    last = tune_with(tables, y, combine="last", **kwargs)
    assert [(p.score, p.mean_cost) for p in alone[0.0].frontier] == [
        (p.score, p.mean_cost) for p in last.frontier
    ]
    # The tuned weight is applied with the thresholds, and routes as tuned.
    cascade = _cascade(tables, classes)
    for stage, cost in zip(cascade.stages_, costs, strict=True):
        stage.cost_per_sample = cost
    X = sample_ids(tables.shape[1])
    tuned = apply_tuning(
        cascade,
        tune_cascade(cascade, X, y, max_cost=8.0, combine="vote", escalation_weight_grid=grid),
    )
    assert tuned.escalation_weight == weight
    assert tuned.score(X, y) == pytest.approx(best.score, abs=1e-12)
    with pytest.raises(PolicyError, match="combine='vote'"):
        tune_with(tables, y, combine="mean", escalation_weight_grid=grid, **kwargs)
    with pytest.raises(PolicyError, match="non-empty"):
        tune_cascade_from_proba(tables, y, escalation_weight_grid=(), **kwargs)


def test_empty_validation_set_raises(digits_cascade):
    cascade, X_val, y_val = digits_cascade
    with pytest.raises(PolicyError, match="no samples"):
        tune_cascade(cascade, X_val[:0], y_val[:0])
    tables, y, classes = _synthetic(n_stages=2)
    with pytest.raises(PolicyError, match="no samples"):
        tune_cascade_from_proba(tables[:, :0], y[:0], classes=classes)


@pytest.mark.parametrize(("value", "match"), [(3.0, "summing to"), (np.nan, "NaN"), (-1.0, "min")])
def test_rows_that_are_not_probabilities_name_the_stage_and_row(value, match):
    tables, y, classes = _synthetic(n_stages=3)
    tables = tables.copy()
    tables[1, 7] = value
    with pytest.raises(PolicyError, match=rf"stage_proba\[1\] \(stage 's1'\) row 7 .*{match}"):
        tune_cascade_from_proba(tables, y, classes=classes, stage_names=["s0", "s1", "s2"])
    with pytest.raises(PolicyError, match="row 7"):
        search_orders_from_proba(tables, y, classes=classes)


def test_scoring_takes_names_metrics_and_scorers_through_public_api_only():
    tables, y, classes = _synthetic(n_stages=3, n_samples=300, seed=8)
    # Few candidates: a plain metric is called once per candidate point (seconds, not a
    # minute); the routes through the scorer are the same as with the default 64.
    kwargs = {"classes": classes, "stage_cost": [1.0, 2.0, 6.0], "max_cost": 3.5}
    kwargs |= {"n_candidates": 12, "combine": "vote"}  # one combiner: the scorer is the subject
    by_name = tune_cascade_from_proba(tables, y, scoring="f1_macro", **kwargs)

    def f1_macro(y_true, y_pred):  # a plain metric without sample_weight: called per point
        return f1_score(y_true, y_pred, average="macro")

    read = []

    class PublicOnly:
        """A scorer that records every attribute the tuner tries to read from it."""

        def __init__(self):
            self.inner = get_scorer("f1_macro")

        def __call__(self, estimator, X, y_true):
            return self.inner(estimator, X, y_true)

        def __getattr__(self, name):
            read.append(name)
            raise AttributeError(name)

    for scoring in (functools.partial(f1_score, average="macro"), f1_macro, PublicOnly()):
        result = tune_cascade_from_proba(tables, y, scoring=scoring, **kwargs)
        assert result.score == pytest.approx(by_name.score, abs=1e-12)
        assert result.frontier == by_name.frontier
    assert not {"_response_method", "_score_func", "_sign", "_kwargs"} & set(read)
    assert tune_cascade_from_proba(tables, y, scoring=f1_macro, **kwargs).scoring == "f1_macro"


def test_numpy_integers_are_accepted_for_integer_settings():
    tables, y, classes = _synthetic(n_stages=3, n_samples=100)
    a = tune_cascade_from_proba(tables, y, classes=classes, n_candidates=np.int64(8))
    b = tune_cascade_from_proba(tables, y, classes=classes, n_candidates=8)
    assert a.frontier == b.frontier


def test_apply_tuning_needs_no_data_and_warns_when_given_some(digits_cascade):
    cascade, X_val, y_val = digits_cascade
    result = tune_cascade(cascade, X_val, y_val)
    tuned = apply_tuning(cascade, result)
    with pytest.warns(DeprecationWarning, match=r"apply_tuning\(\.\.\., X, y\)"):
        old_call = apply_tuning(cascade, result, X_val, y_val)
    assert tuned.n_features_in_ == cascade.n_features_in_ == X_val.shape[1]
    np.testing.assert_array_equal(tuned.classes_, cascade.classes_)
    np.testing.assert_array_equal(tuned.predict(X_val), old_call.predict(X_val))
    assert tuned.policy_ == result.policy


# ------------------------------------------------- the search against every policy by hand
# Small problems whose every routing is enumerated here: a threshold at each distinct
# confidence of a stage (or infinity) gives every split of its samples. With integer costs
# and weights, every score and mean cost is an exact ratio, so they compare with ==.
_HAND_COSTS = (1.0, 2.0, 5.0, 11.0, 23.0)


def _hand_tables(n_stages, n_samples, seed):
    """Stage probabilities of rising skill on three classes (no two confidences equal)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n_samples)
    tables = []
    for s in range(n_stages):
        logits = rng.normal(size=(n_samples, 3))
        logits[np.arange(n_samples), y] += (1 + 2 * s) * rng.random(n_samples)
        proba = np.exp(logits)
        tables.append(proba / proba.sum(axis=1, keepdims=True))
    return np.stack(tables), y


def _exits_by_hand(conf, thresholds):
    """Each sample stops at the first non-final stage whose confidence reaches its threshold."""
    n_stages, n_samples = conf.shape
    exits = np.full(n_samples, n_stages - 1)
    for s in reversed(range(n_stages - 1)):  # from the last, so that the first stop wins
        exits = np.where(conf[s] >= thresholds[s], s, exits)
    return exits


def _labels_by_hand(tables, exits, combine, weight=0.5):
    """The exiting stage votes 1, each stage before it ``weight`` (0: "last", 1: "mean")."""
    escalating = {"last": 0.0, "mean": 1.0}.get(combine, weight)
    before = np.cumsum(tables, axis=0) - tables  # the sum of the stages before each one
    samples = np.arange(tables.shape[1])
    votes = tables[exits, samples] + escalating * before[exits, samples]
    return np.argmax(votes, axis=1)


def _every_policy(tables, y, costs, combine="last", *, weight=0.5, sample_weight=None, metric=None):
    """(thresholds, accuracy or ``metric``, mean cost) of every routing of the samples."""
    n_stages, n_samples, _ = tables.shape
    conf = tables.max(axis=2)
    paid = np.cumsum(costs)
    w = np.ones(n_samples) if sample_weight is None else np.asarray(sample_weight, dtype=float)
    grids = [[*sorted(set(conf[s].tolist())), math.inf] for s in range(n_stages - 1)]
    # The label of each sample if it exits at each stage.
    label_at = np.array(
        [_labels_by_hand(tables, np.full(n_samples, e), combine, weight) for e in range(n_stages)]
    )
    policies = []
    for thresholds in itertools.product(*grids):
        exits = _exits_by_hand(conf, thresholds)
        labels = label_at[exits, np.arange(n_samples)]
        score = (w @ (labels == y)) / w.sum() if metric is None else metric(y, labels)
        policies.append((thresholds, score, (w @ paid[exits]) / w.sum()))
    return policies


def _front_by_hand(policies):
    """The (cost, score) pairs no policy beats: as cheap and better, or cheaper and as good."""
    pairs = sorted({(cost, score) for _, score, cost in policies})
    c2, s2 = np.array(pairs).T
    return [(c, s) for c, s in pairs if not np.any(((c2 <= c) & (s2 > s)) | ((c2 < c) & (s2 >= s)))]


def _hand_rule(n_stages, combine, weight=0.5):
    return RoutingRule.from_params(
        None, n_stages=n_stages, combine=combine, escalation_weight=weight
    )


@pytest.mark.parametrize(
    ("n_stages", "n_samples", "combine", "seed"),
    [
        (2, 9, "last", 0),
        (3, 12, "last", 0),
        (3, 12, "vote", 2),
        (3, 12, "mean", 1),
        (4, 10, "vote", 1),  # exhaustive: 11 * 11 candidate pairs before the last stage
        # Coordinate descent (more than 256 candidate combinations before the last stage):
        # on these problems it finds the whole front too, and a search with fewer penalties,
        # budgets, sweeps or restarts misses a point of it (the last four).
        (4, 16, "last", 2),
        (4, 16, "vote", 0),
        (4, 16, "mean", 1),
        (5, 8, "last", 0),
        (5, 8, "vote", 2),
        (4, 20, "last", 3),
        (4, 24, "vote", 0),
        (4, 24, "vote", 1),
        (4, 24, "vote", 3),
    ],
)
def test_frontier_is_the_exact_front_of_every_routing(n_stages, n_samples, combine, seed):
    tables, y = _hand_tables(n_stages, n_samples, seed)
    costs = _HAND_COSTS[:n_stages]
    policies = _every_policy(tables, y, costs, combine)
    result = tune_cascade_from_proba(
        tables, y, classes=[0, 1, 2], rule=_hand_rule(n_stages, combine), stage_cost=costs
    )
    assert [(p.mean_cost, p.score) for p in result.frontier] == _front_by_hand(policies)
    conf = tables.max(axis=2)
    paid = np.cumsum(costs)
    for point in result.frontier:  # each point's thresholds route as it says
        exits = _exits_by_hand(conf, point.thresholds)
        assert np.mean(_labels_by_hand(tables, exits, combine) == y) == point.score
        assert np.mean(paid[exits]) == point.mean_cost
    # Unconstrained: the best score, at the lowest cost that reaches it.
    best = max(score for _, score, _ in policies)
    assert result.score == best
    assert result.mean_cost == min(cost for _, score, cost in policies if score == best)
    assert result.chosen == result.frontier[result.chosen_index] == result.frontier[-1]
    assert result.thresholds == result.policy.thresholds == result.rule.thresholds[:-1]
    assert result.objective == "max_score"
    assert result.feasible
    assert result.stage_cost == costs
    assert result.order == tuple(range(n_stages))
    assert result.n_stages == n_stages
    assert result.stage_names == tuple(f"stage{s}" for s in range(n_stages))
    assert result.scoring == "accuracy"
    alone = [np.mean(np.argmax(t, axis=1) == y) for t in tables]
    assert result.stage_scores == tuple(alone)
    if n_stages == 2:  # each candidate threshold scored once: 0, 8 midpoints, infinity
        assert result.n_evaluations == n_samples + 1


@pytest.mark.parametrize(
    ("n_stages", "n_samples", "combine", "seed"),
    [(3, 12, "last", 3), (3, 12, "vote", 3), (4, 16, "vote", 0), (5, 8, "last", 0)],
)
def test_budget_and_target_choose_as_every_routing_says(n_stages, n_samples, combine, seed):
    tables, y = _hand_tables(n_stages, n_samples, seed)
    costs = _HAND_COSTS[:n_stages]
    policies = _every_policy(tables, y, costs, combine)
    front = _front_by_hand(policies)
    kwargs = {"classes": [0, 1, 2], "rule": _hand_rule(n_stages, combine), "stage_cost": costs}
    # Budgets at a frontier cost (which it meets exactly), between two, and past the last.
    middle = (front[1][0] + front[2][0]) / 2
    for budget in (front[0][0], front[1][0], middle, front[-2][0], 100.0):
        result = tune_cascade_from_proba(tables, y, max_cost=budget, **kwargs)
        best = max(score for _, score, cost in policies if cost <= budget)
        cheapest = min(cost for _, score, cost in policies if score == best and cost <= budget)
        assert (result.score, result.mean_cost) == (best, cheapest), budget
        assert result.objective == "max_score_under_budget"
        assert result.feasible
        assert result.frontier[result.chosen_index] == result.chosen
    # Targets at a frontier score (which it meets exactly), between two, and the lowest.
    for target in (front[0][1], front[1][1], (front[1][1] + front[2][1]) / 2, front[-1][1]):
        result = tune_cascade_from_proba(tables, y, min_score=target, **kwargs)
        cheapest = min(cost for _, score, cost in policies if score >= target)
        best = max(score for _, score, cost in policies if cost == cheapest)
        assert (result.mean_cost, result.score) == (cheapest, best), target
        assert result.objective == "min_cost_for_score"
        assert result.feasible
        assert result.frontier[result.chosen_index] == result.chosen


def test_integer_weights_and_zero_weights_tune_as_every_weighted_routing_says():
    tables, y = _hand_tables(3, 12, seed=9)
    costs = _HAND_COSTS[:3]
    weights = np.array([3, 0, 1, 2, 0, 1, 4, 1, 0, 2, 1, 1])
    policies = _every_policy(tables, y, costs, "vote", sample_weight=weights)
    kwargs = {"classes": [0, 1, 2], "rule": _hand_rule(3, "vote"), "stage_cost": costs}
    result = tune_cascade_from_proba(tables, y, sample_weight=weights, **kwargs)
    assert [(p.mean_cost, p.score) for p in result.frontier] == _front_by_hand(policies)
    # A sample of weight zero counts nowhere, not even in where the candidate thresholds
    # are: the frontier, thresholds included, is the one of the other samples alone.
    kept = weights > 0
    without = tune_cascade_from_proba(
        tables[:, kept], y[kept], sample_weight=weights[kept], **kwargs
    )
    assert result.frontier == without.frontier
    assert result.rule == without.rule
    # With two candidates per stage (0, infinity and the midpoint below the highest
    # confidence), the highest confidences are those of samples that count: here samples
    # 1 and 3, the most confident at stages 0 and 1, weigh nothing.
    sparse = np.array([3, 0, 1, 0, 0, 1, 4, 1, 0, 2, 1, 1])
    conf = tables.max(axis=2)[:, sparse > 0]
    few = tune_cascade_from_proba(tables, y, sample_weight=sparse, n_candidates=2, **kwargs)
    for s in range(2):
        second, top = sorted(conf[s])[-2:]
        used = {p.thresholds[s] for p in few.frontier}
        assert (second + top) / 2 in used
        assert used <= {0.0, (second + top) / 2, math.inf}
    # "best_stage" is the best weighted single-stage accuracy.
    alone = [(weights @ (np.argmax(t, axis=1) == y)) / weights.sum() for t in tables]
    target = tune_cascade_from_proba(
        tables, y, sample_weight=weights, min_score="best_stage", **kwargs
    )
    cheapest = min(cost for _, score, cost in policies if score >= max(alone))
    assert target.mean_cost == cheapest
    assert target.stage_scores == pytest.approx(alone, abs=1e-15)


# ------------------------------------------------------------ each input check, word for word
_SMALL = np.array(
    [
        [[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2]],
        [[0.7, 0.3], [0.2, 0.8], [0.1, 0.9], [0.6, 0.4]],
        [[0.95, 0.05], [0.1, 0.9], [0.05, 0.95], [0.1, 0.9]],
    ]
)
_SMALL_Y = np.array([0, 1, 1, 1])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"stage_proba": _SMALL[0]},
            "stage_proba must have shape (n_stages, n_samples, n_classes), got (4, 2)",
        ),
        ({"classes": [0, 1, 2]}, "classes must hold 2 labels (one per column), got shape (3,)"),
        ({"classes": [[0, 1]]}, "classes must hold 2 labels (one per column), got shape (1, 2)"),
        ({"y": [0, 1, 1]}, "y has 3 labels but stage_proba has 4 samples"),
        (
            {"stage_proba": _SMALL[:, :0], "y": []},
            "stage_proba and y hold no samples; tuning needs at least one validation sample",
        ),
        (
            {"stage_cost": [1.0, 2.0]},
            "stage_cost must hold 3 finite non-negative numbers (one per stage), got [1.0, 2.0]",
        ),
        (
            {"stage_cost": [1.0, math.inf, 2.0]},
            (
                "stage_cost must hold 3 finite non-negative numbers (one per stage), "
                "got [1.0, inf, 2.0]"
            ),
        ),
        (
            {"stage_cost": [math.nan, 1.0, 2.0]},
            (
                "stage_cost must hold 3 finite non-negative numbers (one per stage), "
                "got [nan, 1.0, 2.0]"
            ),
        ),
        (
            {"stage_cost": [1.0, -0.5, 2.0]},
            (
                "stage_cost must hold 3 finite non-negative numbers (one per stage), "
                "got [1.0, -0.5, 2.0]"
            ),
        ),
        ({"n_candidates": 1}, "n_candidates must be an integer >= 2, got 1"),
        ({"n_candidates": True}, "n_candidates must be an integer >= 2, got True"),
        ({"n_candidates": 8.0}, "n_candidates must be an integer >= 2, got 8.0"),
        ({"n_candidates": "8"}, "n_candidates must be an integer >= 2, got '8'"),
        ({"stage_names": ["a"]}, "stage_names has 1 names but there are 3 stages"),
        ({"rule": "vote"}, "rule must be a RoutingRule or None, got 'vote'"),
        ({"rule": _rule(2)}, "rule is for 2 stages but stage_proba has 3"),
        (
            {"max_cost": 2.0, "min_score": 0.5},
            (
                "give max_cost (maximise the score under a cost budget) or min_score (minimise the "
                "cost for a score target), not both"
            ),
        ),
        ({"max_cost": True}, "max_cost must be a finite number >= 0 or None, got True"),
        ({"max_cost": "2"}, "max_cost must be a finite number >= 0 or None, got '2'"),
        ({"max_cost": math.inf}, "max_cost must be a finite number >= 0 or None, got inf"),
        ({"max_cost": math.nan}, "max_cost must be a finite number >= 0 or None, got nan"),
        ({"max_cost": -0.5}, "max_cost must be a finite number >= 0 or None, got -0.5"),
        ({"min_score": True}, "min_score must be a number, 'best_stage' or None, got True"),
        ({"min_score": "best"}, "min_score must be a number, 'best_stage' or None, got 'best'"),
        ({"min_score": math.nan}, "min_score must be a number, 'best_stage' or None, got nan"),
        (
            {"combine": "max"},
            (
                "combine must be 'auto', one of ('vote', 'last', 'mean'), a non-empty sequence of "
                "them or None (the rule's own), got 'max'"
            ),
        ),
        (
            {"combine": []},
            (
                "combine must be 'auto', one of ('vote', 'last', 'mean'), a non-empty sequence of "
                "them or None (the rule's own), got []"
            ),
        ),
        (
            {"combine": ["vote", "max"]},
            (
                "combine must be 'auto', one of ('vote', 'last', 'mean'), a non-empty sequence of "
                "them or None (the rule's own), got ['vote', 'max']"
            ),
        ),
        (
            {"combine": b"vote"},
            (
                "combine must be 'auto', one of ('vote', 'last', 'mean'), a non-empty sequence of "
                "them or None (the rule's own), got b'vote'"
            ),
        ),
        (
            {"combine": ("last", "mean"), "escalation_weight_grid": [0.5]},
            (
                "escalation_weight_grid needs 'vote' among the combiners (the weights are the "
                "vote's), got combine=('last', 'mean')"
            ),
        ),
        (
            {"rule": _rule(3, "last"), "escalation_weight_grid": [0.5]},
            (
                "escalation_weight_grid needs the rule's combine='vote' (a weight of 0 is the "
                "exiting stage alone), got combine='last'"
            ),
        ),
        (
            {"escalation_weight_grid": "0.5"},
            "escalation_weight_grid must be a non-empty sequence of weights, got '0.5'",
        ),
        (
            {"escalation_weight_grid": {0.5}},
            "escalation_weight_grid must be a non-empty sequence of weights, got {0.5}",
        ),
        (
            {"escalation_weight_grid": ()},
            "escalation_weight_grid must be a non-empty sequence of weights, got ()",
        ),
        (
            {"escalation_weight_grid": [0.5, 1.5]},
            "escalation_weight must be a number in [0, 1] (or one per stage), got 1.5",
        ),
    ],
)
def test_each_input_check_names_its_parameter_and_value(change, message):
    inputs = {"stage_proba": _SMALL, "y": _SMALL_Y, "classes": [0, 1]} | change
    with pytest.raises(PolicyError, match=f"^{re.escape(message)}$"):
        tune_cascade_from_proba(inputs.pop("stage_proba"), inputs.pop("y"), **inputs)


@pytest.mark.parametrize(
    ("stage", "row", "values", "what"),
    [
        (0, 2, [0.3, 0.3], "values summing to 0.6 (min 0.3)"),
        (1, 0, [1.5, -0.5], "values summing to 1 (min -0.5)"),
        (2, 3, [2.5, 0.5], "values summing to 3 (min 0.5)"),
        (1, 1, [math.nan, 1.0], "NaN or infinite values"),
        (1, 2, [math.inf, 0.0], "NaN or infinite values"),
        (2, 1, [1.5, -0.5], "values summing to 1 (min -0.5)"),  # a later row's negative
    ],
)
def test_a_row_that_is_not_probabilities_is_named_with_its_stage(stage, row, values, what):
    tables = _SMALL.copy()
    tables[stage, row] = values
    if row < 3:  # a later bad row of the same stage is not the one named
        tables[stage, row + 1] = [3.0, 3.0]
    if stage < 2:  # nor one of a later stage
        tables[2, 0] = [3.0, 3.0]
    names = ["cheap", "mid", "big"]
    message = (
        f"stage_proba[{stage}] (stage {names[stage]!r}) row {row} holds {what}; each row must "
        "be probabilities (>= 0, summing to 1 within 0.001): compute them with "
        "stage_probabilities"
    )
    with pytest.raises(PolicyError, match=f"^{re.escape(message)}$"):
        tune_cascade_from_proba(tables, _SMALL_Y, classes=[0, 1], stage_names=names)


def test_rows_within_the_tolerance_and_edge_settings_are_accepted():
    tables = _SMALL.copy()
    tables[1, 0] = [0.7, 0.3009]  # sums to 1.0009: within 1e-3 of one
    tables[2, 0] = [0.0, 1.0]  # a probability of exactly 0 is one
    rule = _rule(3, "last")
    # Free stages: every sample stops at the first one, at cost 0, within a budget of 0.
    free = tune_cascade_from_proba(
        tables, _SMALL_Y, classes=[0, 1], rule=rule, stage_cost=[0, 0, 0], max_cost=0,
        n_candidates=2,
    )  # fmt: skip
    assert free.mean_cost == 0.0
    assert free.feasible
    # n_candidates=2 is the fewest: thresholds 0 and infinity, plus the midpoint below the
    # highest confidence, (0.8 + 0.9) / 2 on both free stages.
    few = tune_cascade_from_proba(tables, _SMALL_Y, classes=[0, 1], rule=rule, n_candidates=2)
    assert {t for p in few.frontier for t in p.thresholds} <= {0.0, (0.8 + 0.9) / 2, math.inf}
    # Without stage_cost every stage costs 1: the mean cost is the mean number of stages
    # visited, here 1 (everyone stops at the first stage), 3 (nobody stops) or between.
    default = tune_cascade_from_proba(tables, _SMALL_Y, classes=[0, 1], rule=rule)
    assert default.stage_cost == (1.0, 1.0, 1.0)
    costs, _ = default.frontier_arrays()
    assert set(costs * 4) <= set(range(4, 13))
    # The cascade's default rule is tuned when no rule and no combiner are given... and then
    # the combiners are tried too: every candidate's thresholds are for max-probability.
    auto = tune_cascade_from_proba(tables, _SMALL_Y, classes=[0, 1])
    assert auto.rule.measure == "max_proba"
    assert auto.stage_names == ("stage0", "stage1", "stage2")
    assert tune_cascade_from_proba(
        tables, _SMALL_Y, classes=[0, 1], stage_names=[7, 8, 9]
    ).stage_names == ("7", "8", "9")


# --------------------------------------------- choosing the combiner, ties, the message of failure
_AUTO_CANDIDATES = (("last", 0.0), ("vote", 0.25), ("vote", 0.5), ("vote", 0.75), ("mean", 1.0))


def _best_by_hand(policies, max_cost=None, min_score=None):
    """(score, cost) a tuner must choose from ``policies``, or None when none is feasible."""
    if min_score is not None:
        costs = [cost for _, score, cost in policies if score >= min_score]
        if not costs:
            return None
        return max(score for _, score, cost in policies if cost == min(costs)), min(costs)
    within = [(score, cost) for _, score, cost in policies if max_cost is None or cost <= max_cost]
    if not within:
        return None
    best = max(score for score, _ in within)
    return best, min(cost for score, cost in within if score == best)


def _combiner_by_hand(
    tables, y, costs, *, max_cost=None, min_score=None, candidates=_AUTO_CANDIDATES
):
    """The candidate to keep: the best score (or, for a target, the lowest cost), then the
    cheaper (the higher score), then the earlier."""
    chosen = [
        _best_by_hand(_every_policy(tables, y, costs, c, weight=w), max_cost, min_score)
        for c, w in candidates
    ]
    feasible = [i for i, point in enumerate(chosen) if point is not None]
    if min_score is not None:
        i = min(feasible, key=lambda i: (chosen[i][1], -chosen[i][0], i))
    else:
        i = min(feasible, key=lambda i: (-chosen[i][0], chosen[i][1], i))
    return candidates[i], chosen[i]


def _candidate_of(result):
    combine = result.rule.combine
    if combine != "vote":
        return combine, {"last": 0.0, "mean": 1.0}[combine]
    (weight,) = set(result.rule.escalation_weights)
    return combine, weight


@pytest.mark.parametrize(
    ("seed", "objective"),
    [
        (2, {}),  # vote at 0.5 alone reaches 1.0
        (2, {"max_cost": 3.0}),  # "last" ties two votes at 0.75; "mean" is cheaper but worse
        (5, {"max_cost": 3.0}),  # "mean" alone reaches 0.833 within the budget
        (6, {"min_score": 0.75}),  # vote at 0.75 and "mean" tie; the earlier is kept
        (6, {"max_cost": 3.0}),
        (0, {"min_score": 0.8}),  # three votes tie; the first (0.25) is kept
        (8, {}),  # the vote at 0.25 reaches 1.0 at a cost of 4.5; "last" 0.917 at 1.67
    ],
)
def test_auto_keeps_the_candidate_every_routing_says(seed, objective):
    tables, y = _hand_tables(3, 12, seed)
    costs = _HAND_COSTS[:3]
    result = tune_cascade_from_proba(tables, y, classes=[0, 1, 2], stage_cost=costs, **objective)
    candidate, (score, cost) = _combiner_by_hand(tables, y, costs, **objective)
    assert _candidate_of(result) == candidate
    assert (result.score, result.mean_cost) == (score, cost)
    # A list of combiners is tried in its order, repeats once: the same choice.
    listed = tune_cascade_from_proba(
        tables, y, classes=[0, 1, 2], stage_cost=costs, combine=["last", "vote", "mean", "last"],
        escalation_weight_grid=[0.25, 0.5, 0.25, 0.75], **objective,
    )  # fmt: skip
    assert _candidate_of(listed) == candidate


def test_a_score_target_keeps_the_cheapest_combiner_not_the_best_scoring():
    # Two stages, all labels 0, every sample wrong at the first stage. Sample a (first to
    # escalate: its first-stage confidence is lower) is right at the second stage under
    # "last" and a vote weight below 0.3 only; samples b and b' (same confidence) are right
    # at the second stage under every combiner. Escalating a alone costs 4/3 and scores
    # 1/3 with "last"; the other combiners need all three at stage 1: cost 2, score 2/3+.
    a = [[0.1, 0.9], [0.62, 0.38]]
    b = [[0.05, 0.95], [0.99, 0.01]]
    tables = np.transpose(np.array([a, b, b]), (1, 0, 2))
    y = np.zeros(3, dtype=int)
    kwargs = {"classes": [0, 1], "stage_cost": [1.0, 1.0]}
    for target in (1 / 3, 0.3):
        cheap = tune_cascade_from_proba(tables, y, min_score=target, **kwargs)
        assert _candidate_of(cheap) == ("last", 0.0)
        assert (cheap.score, cheap.mean_cost) == (1 / 3, 4 / 3)
        assert cheap.thresholds == ((0.9 + 0.95) / 2,)
    # Past 1/3, "last" needs every sample at stage 1 too, and scores best there.
    assert _candidate_of(tune_cascade_from_proba(tables, y, min_score=0.5, **kwargs)) == (
        "last",
        0.0,
    )
    best = tune_cascade_from_proba(tables, y, **kwargs)
    assert (best.score, best.mean_cost, best.thresholds) == (1.0, 2.0, (math.inf,))
    # Without "last" and the low vote weight, the target costs 2 at a score of 2/3.
    mean = tune_cascade_from_proba(tables, y, min_score=1 / 3, combine="mean", **kwargs)
    assert (mean.score, mean.mean_cost) == (2 / 3, 2.0)
    # The same with sample weights in place of the repeated sample.
    weighted = tune_cascade_from_proba(
        tables[:, :2], y[:2], min_score=1 / 3, sample_weight=[1, 2], **kwargs
    )
    assert _candidate_of(weighted) == ("last", 0.0)
    assert (weighted.score, weighted.mean_cost) == (1 / 3, 4 / 3)


def test_infeasible_constraints_name_the_closest_policy_found():
    tables, y = _hand_tables(3, 12, seed=2)
    kwargs = {"classes": [0, 1, 2], "stage_cost": [2.0, 1.0, 3.0]}
    message = (
        "no thresholds meet max_cost=1.5: the cheapest policy found costs 2 per sample (the "
        "first stage alone costs 2)"
    )
    with pytest.raises(PolicyError, match=f"^{re.escape(message)}$"):
        tune_cascade_from_proba(tables, y, max_cost=1.5, **kwargs)
    # The best score of any candidate of "auto" (here the vote at 0.5: 12 of 12).
    best = max(
        score
        for c, w in _AUTO_CANDIDATES
        for _, score, _ in _every_policy(tables, y, [1, 1, 1], c, weight=w)
    )
    assert best == 1.0
    message = "no thresholds reach min_score=1.5 (accuracy); the best found is 1"
    with pytest.raises(PolicyError, match=f"^{re.escape(message)}$"):
        tune_cascade_from_proba(tables, y, min_score=1.5, **kwargs)
    policies = _every_policy(tables, y, [1, 1, 1], "last", metric=balanced_accuracy_score)
    last = max(score for _, score, _ in policies)
    message = (
        f"no thresholds reach min_score=0.95 (balanced_accuracy); the best found is {last:.6g}"
    )
    with pytest.raises(PolicyError, match=f"^{re.escape(message)}$"):
        tune_cascade_from_proba(
            tables, y, min_score=0.95, scoring="balanced_accuracy", combine="last", **kwargs
        )


@pytest.mark.parametrize(
    ("seed", "combine", "grid", "rule", "candidates"),
    [
        # A list of combiners without a grid: the vote at the rule's weight only (here the
        # default 0.5), not the three weights of "auto" (the vote at 0.75 would win).
        (6, ("last", "vote", "mean"), None, None, (("last", 0.0), ("vote", 0.5), ("mean", 1.0))),
        # A grid weight of 1 is "mean" and 0 is "last": not searched again as votes, so the
        # combiner named is kept, not the vote listed before it that ties it.
        (5, ("vote", "mean"), (1.0, 0.5), None, (("vote", 0.5), ("mean", 1.0))),
        (9, ("vote", "last"), (0.0, 0.5), None, (("vote", 0.5), ("last", 0.0))),
        # Without a grid, the rule's own vote is searched even at weight 0: listed first, it
        # wins the tie with "last".
        (9, ("vote", "last"), None, 0.0, (("vote", 0.0), ("last", 0.0))),
    ],
)
def test_listed_combiners_and_grids_search_the_candidates_named(
    seed, combine, grid, rule, candidates
):
    tables, y = _hand_tables(3, 12, seed)
    costs = _HAND_COSTS[:3]
    result = tune_cascade_from_proba(
        tables, y, classes=[0, 1, 2], stage_cost=costs, max_cost=3.0, combine=combine,
        escalation_weight_grid=grid, rule=None if rule is None else _hand_rule(3, "vote", rule),
    )  # fmt: skip
    candidate, point = _combiner_by_hand(tables, y, costs, max_cost=3.0, candidates=candidates)
    assert _candidate_of(result) == candidate
    assert (result.score, result.mean_cost) == point


def test_a_budget_is_met_within_a_tolerance_of_1e_9():
    tables, y = _hand_tables(3, 12, seed=3)
    costs = _HAND_COSTS[:3]
    front = _front_by_hand(_every_policy(tables, y, costs, "last"))
    kwargs = {"classes": [0, 1, 2], "rule": _hand_rule(3, "last")}
    (_, below), (cost, score) = front[1], front[2]
    # 1e-10 short of a frontier cost still buys it (a rounding error of the mean cost)...
    result = tune_cascade_from_proba(tables, y, stage_cost=costs, max_cost=cost - 1e-10, **kwargs)
    assert (result.score, result.mean_cost) == (score, cost)
    assert result.feasible
    # ... 1e-6 short does not.
    result = tune_cascade_from_proba(tables, y, stage_cost=costs, max_cost=cost - 1e-6, **kwargs)
    assert result.score == below
    # A cost c fits a budget b when c <= b * (1 + 1e-9) + 1e-9: at the edge, it still fits.
    edge = (cost - 1e-9) / (1 + 1e-9)
    for _ in range(100):
        reach = edge * (1 + 1e-9) + 1e-9
        if reach == cost:
            break
        edge = np.nextafter(edge, math.inf if reach < cost else -math.inf)
    assert edge * (1 + 1e-9) + 1e-9 == cost
    result = tune_cascade_from_proba(tables, y, stage_cost=costs, max_cost=edge, **kwargs)
    assert (result.score, result.mean_cost) == (score, cost)
    # A budget of 0 buys a stage that costs less than 1e-9, and refuses one that costs more.
    tiny = tune_cascade_from_proba(tables, y, stage_cost=[5e-10, 1.0, 1.0], max_cost=0.0, **kwargs)
    assert (tiny.mean_cost, tiny.thresholds[0]) == (5e-10, 0.0)
    with pytest.raises(PolicyError, match=r"cheapest policy found costs 2e-09 per sample"):
        tune_cascade_from_proba(tables, y, stage_cost=[2e-9, 1.0, 1.0], max_cost=0.0, **kwargs)


def test_search_effort_is_counted_alike_on_every_scoring_path():
    tables, y = _hand_tables(3, 12, seed=1)
    kwargs = {"classes": [0, 1, 2], "rule": _hand_rule(3, "vote"), "stage_cost": _HAND_COSTS[:3]}

    def accuracy(y_true, y_pred):  # scored once per configuration, not swept
        return float(np.mean(y_true == y_pred))

    swept = tune_cascade_from_proba(tables, y, **kwargs)
    called = tune_cascade_from_proba(tables, y, scoring=accuracy, **kwargs)
    assert called.frontier == swept.frontier
    assert called.n_evaluations == swept.n_evaluations
    # The exhaustive sweep alone scores each of the 13 * 13 candidate pairs.
    assert swept.n_evaluations >= 13 * 13
    one = tune_cascade_from_proba(tables[:1], y, classes=[0, 1, 2], rule=_hand_rule(1, "vote"))
    assert one.n_evaluations == 1


def test_score_thresholds_routes_as_by_hand_with_its_default_rule():
    tables, y = _hand_tables(3, 12, seed=2)
    conf = tables.max(axis=2)
    weights = np.array([1, 2, 0, 1, 3, 1, 1, 2, 1, 0, 1, 1])
    for thresholds in [(0.6, 0.7), (0.0, 0.5), (math.inf, 0.8), (0.75, math.inf)]:
        exits = _exits_by_hand(conf, thresholds)
        hits = _labels_by_hand(tables, exits, "vote", 0.5) == y
        # Default rule: max-probability confidence, "vote" at 0.5; each stage costs 1.
        point = score_thresholds(tables, y, list(thresholds), classes=[0, 1, 2])
        assert point == FrontierPoint(thresholds, np.mean(hits), np.mean(exits + 1.0))
        weighted = score_thresholds(
            tables, y, thresholds, classes=[0, 1, 2], stage_cost=[1, 2, 4], sample_weight=weights
        )
        paid = np.array([1.0, 3.0, 7.0])[exits]
        assert weighted.score == pytest.approx((weights @ hits) / weights.sum(), abs=1e-15)
        assert weighted.mean_cost == pytest.approx((weights @ paid) / weights.sum(), rel=1e-15)
        # A whole rule: its thresholds (but the final one) and its combiner.
        rule = _hand_rule(3, "last").with_thresholds(thresholds)
        last = _labels_by_hand(tables, exits, "last") == y
        assert score_thresholds(tables, y, rule, classes=[0, 1, 2]).score == np.mean(last)


@pytest.mark.parametrize(
    ("keywords", "rule"),
    [
        ({"measure": "margin"}, RoutingRule.from_params(ConfidencePolicy("margin"), n_stages=3)),
        ({"combine": "last"}, _rule(3, "last")),
        ({"escalation_weight": 0.25}, _rule(3, "vote", 0.25)),
    ],
)
def test_score_thresholds_deprecated_keywords_default_to_the_cascades_rule(keywords, rule):
    tables, y = _hand_tables(3, 12, seed=2)
    expected = score_thresholds(tables, y, [0.7, 0.6], classes=[0, 1, 2], rule=rule)
    # Each keyword alone changes the score: the default rule scores otherwise.
    assert expected != score_thresholds(tables, y, [0.7, 0.6], classes=[0, 1, 2])
    measure = keywords.get("measure", "max_proba")
    combine = keywords.get("combine", "vote")
    message = (
        "score_thresholds: the measure, combine and escalation_weight keywords are deprecated; "
        f"pass rule=RoutingRule.from_params(ConfidencePolicy({measure!r}), n_stages=3, "
        f"combine={combine!r}, escalation_weight=...) instead"
    )
    with pytest.warns(DeprecationWarning, match=f"^{re.escape(message)}$"):
        point = score_thresholds(tables, y, [0.7, 0.6], classes=[0, 1, 2], **keywords)
    assert point == expected


@pytest.mark.parametrize(
    ("thresholds", "keywords", "message"),
    [
        ([0.5], {}, "thresholds must hold 2 numbers (one per non-final stage), got [0.5]"),
        (
            (0.5, math.nan),
            {},
            "thresholds must hold 2 numbers (one per non-final stage), got [0.5, nan]",
        ),
        (
            [0.5, 0.5, 0.5],
            {},
            "thresholds must hold 2 numbers (one per non-final stage), got [0.5, 0.5, 0.5]",
        ),
        (
            [0.5, 0.5],
            {"rule": _rule(3), "combine": "last"},
            "give rule= or the deprecated measure/combine/escalation_weight, not both",
        ),
        (
            _rule(3).with_thresholds([0.5, 0.5]),
            {"rule": _rule(3)},
            "give the thresholds as a RoutingRule or as numbers with rule=, not both",
        ),
        ([0.5, 0.5], {"rule": _rule(2)}, "rule is for 2 stages but stage_proba has 3"),
        (_rule(2), {}, "rule is for 2 stages but stage_proba has 3"),
        ([0.5, 0.5], {"stage_cost": [1, 2]}, "stage_cost must hold 3 finite non-negative "),
    ],
)
def test_score_thresholds_refuses_with_a_message_naming_the_value(thresholds, keywords, message):
    tables, y = _hand_tables(3, 12, seed=4)
    pattern = f"^{re.escape(message)}" + ("" if message.endswith(" ") else "$")
    with pytest.raises(PolicyError, match=pattern):
        score_thresholds(tables, y, thresholds, classes=[0, 1, 2], **keywords)


def test_a_metric_without_sample_weight_is_refused_with_weights_when_scoring_thresholds():
    tables, y = _hand_tables(3, 12, seed=4)

    def accuracy(y_true, y_pred):
        return float(np.mean(y_true == y_pred))

    message = (
        "scoring 'accuracy' does not take sample_weight, so it cannot score weighted samples: "
        "give it a sample_weight parameter, or tune without sample_weight"
    )
    for call in (score_thresholds, tune_cascade_from_proba):
        args = (tables, y, [0.5, 0.5]) if call is score_thresholds else (tables, y)
        with pytest.raises(PolicyError, match=f"^{re.escape(message)}$"):
            call(*args, classes=[0, 1, 2], scoring=accuracy, sample_weight=np.ones(12))


def test_one_stage_has_nothing_to_tune_and_reports_that_stage():
    tables, y = _hand_tables(1, 12, seed=7)
    accuracy = float(np.mean(np.argmax(tables[0], axis=1) == y))
    rule = RoutingRule.from_params(ConfidencePolicy("margin"), n_stages=1, combine="last")
    for objective, name in [
        ({}, "max_score"),
        ({"max_cost": 2.5}, "max_score_under_budget"),
        ({"min_score": "best_stage"}, "min_cost_for_score"),
    ]:
        result = tune_cascade_from_proba(
            tables, y, classes=[0, 1, 2], rule=rule, stage_cost=[2.5], stage_names=["only"],
            **objective,
        )  # fmt: skip
        # Every sample stops at the only stage: a threshold of 0.
        assert result.policy == ConfidencePolicy("margin", 0.0)
        assert result.rule == rule.with_thresholds(())
        assert result.frontier == (FrontierPoint((), accuracy, 2.5),)
        assert (result.chosen_index, result.chosen) == (0, result.frontier[0])
        assert (result.score, result.mean_cost, result.feasible) == (accuracy, 2.5, True)
        assert (result.objective, result.scoring, result.n_evaluations) == (name, "accuracy", 1)
        assert (result.stage_cost, result.stage_scores) == ((2.5,), (accuracy,))
        assert (result.stage_names, result.order, result.n_stages) == (("only",), (0,), 1)
    with pytest.raises(PolicyError, match=r"^no thresholds meet max_cost=2\.4: .* costs 2\.5 "):
        tune_cascade_from_proba(tables, y, classes=[0, 1, 2], stage_cost=[2.5], max_cost=2.4)
    with pytest.raises(PolicyError, match=rf"^no thresholds reach .* found is {accuracy:.6g}$"):
        tune_cascade_from_proba(tables, y, classes=[0, 1, 2], min_score=accuracy + 0.01)


def test_exact_fractions_are_probabilities_and_costs_like_their_floats():
    third, half = Fraction(1, 3), Fraction(1, 2)
    exact = [
        [[Fraction(9, 10), Fraction(1, 10)], [half, half], [third, 2 * third]],
        [[third, 2 * third], [Fraction(1, 5), Fraction(4, 5)], [Fraction(1, 10), Fraction(9, 10)]],
    ]
    floats = np.array(exact, dtype=float)
    y = [0, 1, 1]
    exact_costs, float_costs = [third, 2 * third], [1 / 3, 2 / 3]
    result = tune_cascade_from_proba(exact, y, classes=[0, 1], stage_cost=exact_costs)
    again = tune_cascade_from_proba(floats, y, classes=[0, 1], stage_cost=float_costs)
    assert result.frontier == again.frontier
    assert result.stage_cost == (1 / 3, 2 / 3)
    # All right when the undecided second sample alone goes on: (1/3 + 1/3 + 1) / 3.
    assert (result.score, result.mean_cost) == (1.0, pytest.approx(5 / 9, rel=1e-15))
    point = score_thresholds(exact, y, [0.7], classes=[0, 1], stage_cost=exact_costs)
    assert point == score_thresholds(floats, y, [0.7], classes=[0, 1], stage_cost=float_costs)


def test_best_stage_is_the_best_single_stage_in_the_score_tuned():
    tables, y = _hand_tables(3, 12, seed=5)
    alone = [-log_loss(y, t, labels=[0, 1, 2]) for t in tables]
    result = tune_cascade_from_proba(
        tables, y, classes=[0, 1, 2], rule=_hand_rule(3, "last"), stage_cost=_HAND_COSTS[:3],
        scoring="neg_log_loss", min_score="best_stage",
    )  # fmt: skip
    assert result.stage_scores == pytest.approx(alone, rel=1e-12)
    assert result.feasible
    assert result.score >= max(alone)
    costs, scores = result.frontier_arrays()
    assert result.mean_cost == costs[scores >= max(alone)].min()


def test_a_one_name_list_and_a_vote_over_a_rule_of_another_combiner():
    tables, y = _hand_tables(3, 12, seed=6)
    kwargs = {"classes": [0, 1, 2], "stage_cost": _HAND_COSTS[:3], "max_cost": 3.0}
    listed = tune_cascade_from_proba(tables, y, combine=["last"], **kwargs)
    named = tune_cascade_from_proba(tables, y, combine="last", **kwargs)
    assert _candidate_of(listed) == _candidate_of(named) == ("last", 0.0)
    assert listed.frontier == named.frontier
    # combine="vote" over a rule of "last" tunes the vote, with the rule's measure.
    last_margin = RoutingRule.from_params(ConfidencePolicy("margin"), n_stages=3, combine="last")
    vote = tune_cascade_from_proba(tables, y, rule=last_margin, combine="vote", **kwargs)
    assert (vote.rule.combine, vote.rule.measure) == ("vote", "margin")
    grid = tune_cascade_from_proba(
        tables, y, rule=last_margin, combine=["vote"], escalation_weight_grid=[0.25], **kwargs
    )
    assert (grid.rule.combine, grid.rule.escalation_weights) == ("vote", (0.25, 0.25, 0.25))


def test_order_search_names_the_closest_order_when_none_is_feasible():
    tables, y = _hand_tables(3, 12, seed=2)
    last = _hand_rule(3, "last")
    kwargs = {"classes": [0, 1, 2], "rule": last, "stage_cost": [3.0, 2.0, 5.0]}
    orders = [(0, 1, 2), (2,), (1, 0, 2), (0,)]
    message = (
        "no thresholds meet max_cost=1: the cheapest policy found costs 2 per sample (the "
        "first stage alone costs 2)"
    )
    with pytest.raises(PolicyError, match=f"^{re.escape(message)}$"):
        search_orders_from_proba(tables, y, orders=orders, max_cost=1, **kwargs)
    # The best score of any order, each routed by hand with its stages in that order.
    best = max(
        score
        for order in orders
        for _, score, _ in _every_policy(tables[list(order)], y, [1] * len(order), "last")
    )
    # Kept in an order search, an order that misses the budget reports its cheapest policy.
    search = search_orders_from_proba(tables, y, orders=orders, max_cost=2.5, **kwargs)
    over = search.for_order((0, 1, 2))
    assert (over.feasible, over.mean_cost, over.chosen_index) == (False, 3.0, 0)
    assert over.score == np.mean(np.argmax(tables[0], axis=1) == y)
    message = f"no thresholds reach min_score=2 (accuracy); the best found is {best:.6g}"
    with pytest.raises(PolicyError, match=f"^{re.escape(message)}$"):
        search_orders_from_proba(tables, y, orders=orders[::-1], min_score=2, **kwargs)


def test_default_candidates_and_penalties_are_64_and_12():
    tables, y, classes = _synthetic(n_stages=4, n_samples=150, seed=2)  # 150 confidences
    kwargs = {"classes": classes, "rule": _rule(4), "stage_cost": [1.0, 2.0, 5.0, 20.0]}
    default = tune_cascade_from_proba(tables, y, **kwargs)
    given = tune_cascade_from_proba(tables, y, n_candidates=64, n_lambdas=12, **kwargs)
    assert default.frontier == given.frontier
    assert default.n_evaluations == given.n_evaluations


def test_score_thresholds_with_a_label_scorer_is_sklearns_on_the_routed_labels():
    tables, y = _hand_tables(3, 12, seed=2)
    conf = tables.max(axis=2)
    for thresholds in [(0.6, 0.7), (math.inf, 0.5)]:
        labels = _labels_by_hand(tables, _exits_by_hand(conf, thresholds), "vote", 0.5)
        point = score_thresholds(
            tables, y, thresholds, classes=[0, 1, 2], scoring="balanced_accuracy"
        )
        assert point.score == pytest.approx(balanced_accuracy_score(y, labels), abs=1e-15)


def test_weights_reach_a_scorer_called_once_per_configuration():
    tables, y = _hand_tables(3, 12, seed=9)
    costs = _HAND_COSTS[:3]
    weights = np.array([3, 0, 1, 2, 0, 1, 4, 1, 0, 2, 1, 1])

    def weighted_accuracy(estimator, X, y_true, sample_weight=None):  # a scorer: not swept
        return float(np.average(estimator.predict(X) == y_true, weights=sample_weight))

    kwargs = {"classes": [0, 1, 2], "stage_cost": costs, "sample_weight": weights}
    policies = _every_policy(tables, y, costs, "vote", sample_weight=weights)
    result = tune_cascade_from_proba(
        tables, y, rule=_hand_rule(3, "vote"), scoring=weighted_accuracy, **kwargs
    )
    assert [(p.mean_cost, p.score) for p in result.frontier] == _front_by_hand(policies)
    for thresholds, score, cost in policies[::7]:
        point = score_thresholds(tables, y, thresholds, scoring=weighted_accuracy, **kwargs)
        assert (point.score, point.mean_cost) == (score, cost)


def test_one_validation_sample_is_scored_like_any_other():
    # The first stage is wrong about the only sample, the second right: stop at the second.
    tables = np.array([[[0.3, 0.7]], [[0.8, 0.2]]])
    kwargs = {"classes": [0, 1], "rule": _hand_rule(2, "last"), "stage_cost": [1.0, 4.0]}
    result = tune_cascade_from_proba(tables, [0], **kwargs)
    assert [(p.mean_cost, p.score) for p in result.frontier] == [(1.0, 0.0), (5.0, 1.0)]
    assert (result.score, result.mean_cost, result.thresholds) == (1.0, 5.0, (math.inf,))
    point = score_thresholds(tables, [0], [0.5], **kwargs)
    assert (point.score, point.mean_cost) == (0.0, 1.0)
    point = score_thresholds(tables, [0], [0.75], **kwargs)
    assert (point.score, point.mean_cost) == (1.0, 5.0)


def test_a_score_target_keeps_the_best_score_among_the_cheapest_policies():
    # With weights, two policies can cost the same least amount and both reach the target
    # (one sample moved to an earlier stage is worth more than the score's margin).
    tables, y = _hand_tables(3, 6, seed=25)
    weights = np.array([3, 3, 2, 2, 1, 1])
    costs = [1.0, 1.0, 1.0]
    policies = _every_policy(tables, y, costs, "last", sample_weight=weights)
    for target in (5 / 12, 8 / 12):
        score, cost = _best_by_hand(policies, min_score=target)
        assert len({s for _, s, c in policies if c == cost and s >= target}) == 2
        result = tune_cascade_from_proba(
            tables, y, classes=[0, 1, 2], rule=_hand_rule(3, "last"), stage_cost=costs,
            sample_weight=weights, min_score=target,
        )  # fmt: skip
        assert (result.score, result.mean_cost) == (score, cost)
        # Of two policies of equal cost, the frontier keeps only the better.
        assert [(p.mean_cost, p.score) for p in result.frontier] == _front_by_hand(policies)


@pytest.mark.parametrize("weighted", [False, True])
def test_a_label_scorer_sweeps_as_every_routing_says(weighted):
    # Scored from (true, predicted) pair counts: each configuration's count table.
    tables, y = _hand_tables(3, 12, seed=2)
    costs = _HAND_COSTS[:3]
    weights = np.array([3, 0, 1, 2, 0, 1, 4, 1, 0, 2, 1, 1]) if weighted else None

    def balanced(y_true, y_pred):
        return balanced_accuracy_score(y_true, y_pred, sample_weight=weights)

    policies = _every_policy(tables, y, costs, "vote", sample_weight=weights, metric=balanced)
    result = tune_cascade_from_proba(
        tables, y, classes=[0, 1, 2], rule=_hand_rule(3, "vote"), stage_cost=costs,
        scoring="balanced_accuracy", sample_weight=weights,
    )  # fmt: skip
    assert [(p.mean_cost, p.score) for p in result.frontier] == _front_by_hand(policies)


@pytest.mark.parametrize(
    ("n_samples", "combine", "scale", "n_lambdas"),
    [
        # Cheap stages (costs under 1 in all): the penalties scale with the costs.
        (24, "vote", 1 / 64, 12),
        (24, "last", 1 / 64, 12),
        # 16 * 16 = 256 candidate pairs before the last stage: still searched exhaustively,
        # which finds the front without any penalty.
        (15, "last", 1.0, 0),
    ],
)
def test_frontier_is_exact_with_cheap_stages_or_no_penalties(n_samples, combine, scale, n_lambdas):
    tables, y = _hand_tables(4, n_samples, seed=0)
    costs = [c * scale for c in _HAND_COSTS[:4]]
    result = tune_cascade_from_proba(
        tables, y, classes=[0, 1, 2], rule=_hand_rule(4, combine), stage_cost=costs,
        n_lambdas=n_lambdas,
    )  # fmt: skip
    front = _front_by_hand(_every_policy(tables, y, costs, combine))
    assert [(p.mean_cost, p.score) for p in result.frontier] == front


def test_equally_good_thresholds_resolve_to_the_highest():
    # Thresholds that route the samples alike (or differently, at the same score and cost)
    # are equally good; the chosen policy reports the highest of them, compared stage by
    # stage from the first (as tuples).
    tables, y = _hand_tables(3, 12, seed=3)
    costs = _HAND_COSTS[:3]
    conf = tables.max(axis=2)
    grids = []
    for s in range(2):  # the candidates: 0, the midpoints between confidences, infinity
        values = sorted(set(conf[s].tolist()))
        grids.append([0.0, *((a + b) / 2 for a, b in itertools.pairwise(values)), math.inf])
    paid = np.cumsum(costs)
    for objective in ({}, {"max_cost": 3.0}, {"min_score": 0.75}):
        result = tune_cascade_from_proba(
            tables, y, classes=[0, 1, 2], rule=_hand_rule(3, "last"), stage_cost=costs,
            **objective,
        )  # fmt: skip
        tied = []
        for thresholds in itertools.product(*grids):
            exits = _exits_by_hand(conf, thresholds)
            labels = _labels_by_hand(tables, exits, "last")
            if (np.mean(labels == y), np.mean(paid[exits])) == (result.score, result.mean_cost):
                tied.append(thresholds)
        assert len(tied) > 1
        assert result.thresholds == max(tied)
