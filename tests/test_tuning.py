import itertools
import math
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits
from sklearn.metrics import f1_score
from sklearn.naive_bayes import GaussianNB
from sklearn.tree import DecisionTreeClassifier

from cascademl import CascadeClassifier, ConfidencePolicy, NotFittedError, PolicyError
from cascademl.tuning import (
    OrderSearchResult,
    apply_tuning,
    order_by_accuracy,
    order_by_cost,
    score_thresholds,
    search_orders,
    search_stage_orders,
    single_stage_scores,
    stage_probabilities,
    tune_cascade,
    tune_thresholds,
)
from strategies import CLASS_LABELS, TableStage, sample_ids

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


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
    result = tune_thresholds(
        tables, y, classes=classes, stage_cost=costs, combine=combine, max_cost=8.0
    )
    assert len(result.frontier) > 3
    for point in result.frontier:
        score, cost = _routed(tables, y, classes, point.thresholds, costs, combine=combine)
        assert score == pytest.approx(point.score, abs=1e-12)
        assert cost == pytest.approx(point.mean_cost, rel=1e-12)


@pytest.mark.parametrize("combine", ["vote", "last"])
def test_score_thresholds_matches_the_real_cascade_and_the_tuner(combine):
    tables, y, classes = _synthetic(seed=3)
    costs = [1.0, 2.0, 5.0, 20.0]
    tuned = tune_thresholds(
        tables, y, classes=classes, stage_cost=costs, combine=combine, scoring="neg_log_loss"
    )
    for point in tuned.frontier:
        again = score_thresholds(
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
        accuracy = score_thresholds(
            tables, y, point.thresholds, classes=classes, stage_cost=costs, combine=combine
        )
        score, cost = _routed(tables, y, classes, point.thresholds, costs, combine=combine)
        assert accuracy.score == pytest.approx(score, abs=1e-12)
        assert accuracy.mean_cost == pytest.approx(cost, rel=1e-12)
        assert accuracy.thresholds == point.thresholds


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
    result = tune_thresholds(tables, y, classes=classes, stage_cost=costs, max_cost=budget)
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
    result = tune_thresholds(tables, y, classes=classes, stage_cost=costs, min_score="best_stage")
    assert result.score >= stage_scores.max()
    assert result.objective == "min_cost_for_score"
    # The cheapest frontier point reaching the target is the one chosen.
    costs_f, scores_f = result.frontier_arrays()
    assert result.mean_cost == costs_f[scores_f >= stage_scores.max()].min()
    assert result.stage_scores == pytest.approx(tuple(stage_scores))


def test_unconstrained_picks_the_best_score():
    tables, y, classes = _synthetic()
    result = tune_thresholds(tables, y, classes=classes)
    _, scores_f = result.frontier_arrays()
    assert result.score == scores_f.max()
    assert result.chosen_index == len(result.frontier) - 1


def test_infeasible_constraints_raise_with_the_best_found():
    tables, y, classes = _synthetic()
    with pytest.raises(PolicyError, match=r"max_cost=0\.5"):
        tune_thresholds(tables, y, classes=classes, stage_cost=[1, 2, 3, 4], max_cost=0.5)
    with pytest.raises(PolicyError, match=r"min_score=1\.5"):
        tune_thresholds(tables, y, classes=classes, min_score=1.5)
    with pytest.raises(PolicyError, match="not both"):
        tune_thresholds(tables, y, classes=classes, min_score=0.5, max_cost=2.0)


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
        tune_thresholds(tables, y, classes=classes, **kwargs)


def test_unknown_labels_and_shapes_are_rejected():
    tables, y, classes = _synthetic()
    with pytest.raises(PolicyError, match="not in classes"):
        tune_thresholds(tables, np.array(["zzz"] * len(y)), classes=classes)
    with pytest.raises(PolicyError, match="samples"):
        tune_thresholds(tables, y[:-1], classes=classes)
    with pytest.raises(PolicyError, match="shape"):
        tune_thresholds(tables[0], y, classes=classes)


def test_sklearn_scorer_matches_sklearn_on_the_routed_labels():
    tables, y, classes = _synthetic()
    costs = [1.0, 2.0, 5.0, 20.0]
    result = tune_thresholds(
        tables, y, classes=classes, stage_cost=costs, max_cost=6.0, scoring="f1_macro"
    )
    assert result.scoring == "f1_macro"
    cascade = _cascade(tables, classes, result.thresholds)
    labels = cascade.predict(sample_ids(tables.shape[1]))
    assert result.score == pytest.approx(f1_score(y, labels, average="macro"), abs=1e-12)


def test_single_stage_and_tiny_inputs():
    tables, y, classes = _synthetic(n_stages=1)
    result = tune_thresholds(tables, y, classes=classes)
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
    result = tune_thresholds(tables, y, max_cost=budget, **kwargs)
    again = tune_thresholds(tables, y, max_cost=budget, **kwargs)
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
    result = tune_thresholds(tables, y, classes=classes, stage_cost=costs)
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
    tune_thresholds(proba, y, classes=cascade.classes_, max_cost=2.5)
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
    search = search_stage_orders(
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
    everything = search_stage_orders(tables[:3], y, classes=classes, orders="all")
    assert len(everything.results) == 6
    with pytest.raises(PolicyError, match="permutation"):
        search_stage_orders(tables, y, classes=classes, orders=[(0, 0, 1, 2)])


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
        tuned = apply_tuning(cascade, result, X_val, y_val)
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
    reordered = apply_tuning(cascade, search.for_order((1, 0)), X_val, y_val)
    assert list(reordered.named_stages_) == ["tree", "nb"]


@pytest.mark.slow
def test_scales_to_many_stages_and_samples():
    tables, y, classes = _synthetic(n_stages=6, n_samples=20_000, n_classes=10)
    costs = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    start = time.perf_counter()
    result = tune_thresholds(tables, y, classes=classes, stage_cost=costs, max_cost=10.0)
    elapsed = time.perf_counter() - start
    assert result.mean_cost <= 10.0
    assert elapsed < 30.0  # an exhaustive 64^5 grid would take days
    # Linear in the number of stages, not exponential.
    assert result.n_evaluations < 64**3
