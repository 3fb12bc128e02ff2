"""Sample weights in threshold tuning: a weight of k counts as k copies of the sample."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.datasets import make_classification
from sklearn.metrics import accuracy_score, f1_score

from cascademl import CascadeClassifierCV, ConfidencePolicy, PolicyError, RoutingRule
from cascademl.tuning import (
    order_by_accuracy,
    score_thresholds,
    search_orders_from_proba,
    single_stage_scores,
    tune_cascade_from_proba,
)

PROPERTY = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLASSES = np.array([0, 1, 2])


def _tables(seed, n_samples=40, n_stages=3):
    """Stage probabilities of rising accuracy, and the labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n_samples)
    tables = []
    for s in range(n_stages):
        noisy = np.where(rng.random(n_samples) < 0.45 - 0.15 * s, rng.integers(0, 3, n_samples), y)
        logits = 2.5 * np.eye(3)[noisy] + rng.normal(0, 1.0, (n_samples, 3))
        proba = np.exp(logits)
        tables.append(proba / proba.sum(axis=1, keepdims=True))
    return np.stack(tables), y


def _repeated(tables, y, counts):
    """The same data with sample i repeated counts[i] times."""
    idx = np.repeat(np.arange(y.size), counts)
    return tables[:, idx], y[idx]


def _rule(combine="vote"):
    return RoutingRule.from_params(ConfidencePolicy("max_proba"), n_stages=3, combine=combine)


def _f1_macro(y_true, y_pred, sample_weight=None):
    return f1_score(y_true, y_pred, average="macro", sample_weight=sample_weight)


def _f1_macro_unweighted(y_true, y_pred):
    return f1_score(y_true, y_pred, average="macro")


@PROPERTY
@given(
    seed=st.integers(0, 10_000),
    scoring=st.sampled_from([None, "neg_log_loss", "f1_macro", _f1_macro]),
    combine=st.sampled_from(["vote", "last"]),
    budget=st.sampled_from([None, 2.0, 4.0]),
)
def test_integer_weights_tune_as_repeated_samples(seed, scoring, combine, budget):
    tables, y = _tables(seed)
    counts = np.random.default_rng(seed + 1).integers(0, 4, y.size)
    counts[0] = max(counts[0], 1)
    options = {
        "classes": CLASSES,
        "rule": _rule(combine),
        "stage_cost": [1.0, 2.0, 4.0],
        "max_cost": budget,
        "scoring": scoring,
        "n_candidates": 16,
    }
    weighted = tune_cascade_from_proba(tables, y, sample_weight=counts, **options)
    rep_tables, rep_y = _repeated(tables, y, counts)
    repeated = tune_cascade_from_proba(rep_tables, rep_y, **options)
    assert weighted.score == pytest.approx(repeated.score, rel=1e-9, abs=1e-12)
    assert weighted.mean_cost == pytest.approx(repeated.mean_cost, rel=1e-9)
    # The same chosen policy scores the same on the repeated samples.
    point = score_thresholds(
        rep_tables, rep_y, weighted.rule, classes=CLASSES, stage_cost=[1, 2, 4], scoring=scoring
    )
    assert point.score == pytest.approx(weighted.score, rel=1e-9, abs=1e-12)
    assert point.mean_cost == pytest.approx(weighted.mean_cost, rel=1e-9)


@PROPERTY
@given(seed=st.integers(0, 10_000), scoring=st.sampled_from([None, "neg_log_loss", _f1_macro]))
def test_score_thresholds_weights_as_repeated_samples(seed, scoring):
    tables, y = _tables(seed)
    counts = np.random.default_rng(seed).integers(1, 5, y.size)
    rep_tables, rep_y = _repeated(tables, y, counts)
    options = {"classes": CLASSES, "rule": _rule(), "stage_cost": [1, 3, 9], "scoring": scoring}
    weighted = score_thresholds(tables, y, [0.6, 0.7], sample_weight=counts, **options)
    repeated = score_thresholds(rep_tables, rep_y, [0.6, 0.7], **options)
    assert weighted.score == pytest.approx(repeated.score, rel=1e-9, abs=1e-12)
    assert weighted.mean_cost == pytest.approx(repeated.mean_cost, rel=1e-9)


def test_weights_change_the_chosen_thresholds():
    # Stage 0 is right on class 0 (confidence 0.95) and wrong on class 1 (0.9); stage 1
    # is always right and costs 10 more.
    y = np.array([0] * 50 + [1] * 50)
    first = np.where((y == 0)[:, None], [0.95, 0.05], [0.9, 0.1])
    last = np.eye(2)[y] * 0.8 + 0.1
    tables = np.stack([first, last])
    options = {
        "classes": [0, 1],
        "rule": RoutingRule.from_params(None, n_stages=2, combine="last"),
        "stage_cost": [1.0, 10.0],
        "max_cost": 6.0,
    }
    # Unweighted, class 1 escalates: all right at a mean cost of (50 * 1 + 50 * 11) / 100.
    plain = tune_cascade_from_proba(tables, y, **options)
    assert (plain.score, plain.mean_cost) == (1.0, 6.0)
    # Class 1 weighs 9: escalating it costs (50 * 1 + 450 * 11) / 500 = 10 > 6, so the
    # only affordable policy ends everyone at stage 0 (weighted accuracy 50 / 500).
    weights = np.where(y == 1, 9.0, 1.0)
    weighted = tune_cascade_from_proba(tables, y, sample_weight=weights, **options)
    assert weighted.rule != plain.rule
    assert (weighted.score, weighted.mean_cost) == (pytest.approx(0.1), 1.0)
    plain_weighted = score_thresholds(
        tables, y, plain.rule, classes=[0, 1], stage_cost=[1.0, 10.0], sample_weight=weights
    )
    assert plain_weighted.mean_cost == pytest.approx(10.0)


def test_single_stage_scores_and_order_by_accuracy_take_weights():
    y = np.array([0, 0, 0, 1])
    good_on_0 = np.array([[0.9, 0.1]] * 3 + [[0.9, 0.1]])  # right on the three 0s
    good_on_1 = np.array([[0.1, 0.9]] * 3 + [[0.1, 0.9]])  # right on the one 1
    tables = np.stack([good_on_0, good_on_1])
    weights = np.array([1.0, 1.0, 1.0, 10.0])
    plain = single_stage_scores(tables, y, classes=[0, 1])
    weighted = single_stage_scores(tables, y, classes=[0, 1], sample_weight=weights)
    assert plain.tolist() == [0.75, 0.25]
    assert weighted.tolist() == pytest.approx([3 / 13, 10 / 13])
    assert order_by_accuracy(tables, y, classes=[0, 1]) == (1, 0)
    assert order_by_accuracy(tables, y, classes=[0, 1], sample_weight=weights) == (0, 1)
    f1 = single_stage_scores(tables, y, classes=[0, 1], scoring="f1_macro", sample_weight=weights)
    expected = [
        f1_score(y, [0, 0, 0, 0], average="macro", sample_weight=weights),
        f1_score(y, [1, 1, 1, 1], average="macro", sample_weight=weights),
    ]
    assert f1.tolist() == pytest.approx(expected)


def test_search_orders_ranks_auto_orders_by_weighted_accuracy():
    tables, y = _tables(3)
    weights = np.random.default_rng(0).integers(1, 5, y.size)
    search = search_orders_from_proba(
        tables, y, classes=CLASSES, orders="auto", sample_weight=weights, max_cost=3.0
    )
    by_weighted = order_by_accuracy(tables, y, classes=CLASSES, sample_weight=weights)
    assert by_weighted in [r.order for r in search.results]
    rep_tables, rep_y = _repeated(tables, y, weights)
    repeated = search_orders_from_proba(
        rep_tables, rep_y, classes=CLASSES, orders="auto", max_cost=3.0
    )
    assert search.best.order == repeated.best.order
    assert search.best.score == pytest.approx(repeated.best.score, rel=1e-9)


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        (np.ones(39), r"sample_weight must have shape \(40,\)"),
        (np.r_[np.ones(39), -1.0], r"finite numbers >= 0 .*sample 39: -1\.0"),
        (np.r_[np.ones(39), np.nan], r"sample 39: nan"),
        (np.zeros(40), "they sum to 0"),
        (["a"] * 40, "sample_weight must be numbers"),
    ],
)
def test_bad_weights_are_named(weights, match):
    tables, y = _tables(0)
    with pytest.raises(PolicyError, match=match):
        tune_cascade_from_proba(tables, y, classes=CLASSES, sample_weight=weights)


def test_a_metric_without_sample_weight_is_refused_only_with_weights():
    tables, y = _tables(1)
    # Without weights it tunes as before.
    result = tune_cascade_from_proba(
        tables,
        y,
        classes=CLASSES,
        scoring=_f1_macro_unweighted,
        combine="vote",
        n_candidates=4,
        n_lambdas=2,
    )
    assert result.scoring == "_f1_macro_unweighted"
    with pytest.raises(PolicyError, match=r"'_f1_macro_unweighted' does not take sample_weight"):
        tune_cascade_from_proba(
            tables, y, classes=CLASSES, scoring=_f1_macro_unweighted, sample_weight=np.ones(40)
        )


def test_unit_weights_leave_the_result_unchanged():
    tables, y = _tables(5)
    options = {"classes": CLASSES, "stage_cost": [1.0, 2.0, 4.0], "max_cost": 3.0}
    options |= {"combine": "vote"}
    for scoring in (None, "neg_log_loss", "f1_macro"):
        plain = tune_cascade_from_proba(tables, y, scoring=scoring, **options)
        unit = tune_cascade_from_proba(
            tables, y, scoring=scoring, sample_weight=np.full(40, 2.5), **options
        )
        assert unit.rule == plain.rule
        assert unit.score == pytest.approx(plain.score, rel=1e-12)
        assert unit.mean_cost == pytest.approx(plain.mean_cost, rel=1e-12)


def test_cascade_classifier_cv_tunes_on_the_weighted_out_of_fold_score():
    X, y = make_classification(
        n_samples=600, n_features=10, n_informative=5, n_classes=3, random_state=0
    )
    weights = np.where(y == 2, 5.0, 1.0)
    from sklearn.naive_bayes import GaussianNB
    from sklearn.tree import DecisionTreeClassifier

    stages = [
        ("nb", GaussianNB()),
        ("tree", DecisionTreeClassifier(max_depth=6, random_state=0)),
    ]
    model = CascadeClassifierCV(stages, cv=3, stage_cost=[1.0, 4.0], max_cost=3.0)
    model.fit(X, y, sample_weight=weights)
    expected = tune_cascade_from_proba(
        model.oof_proba_,
        y,
        classes=model.classes_,
        rule=RoutingRule.from_params(None, n_stages=2),
        combine="auto",  # the estimator's default: the combiner is chosen on the same data
        stage_cost=[1.0, 4.0],
        max_cost=3.0,
        sample_weight=weights,
    )
    assert model.rule_ == expected.rule
    assert model.combine_ == expected.rule.combine
    assert model.best_score_ == pytest.approx(expected.score)
    oof_labels = model.classes_[np.argmax(model.oof_proba_[1], axis=1)]
    assert model.tuning_result_.stage_scores[1] == pytest.approx(
        accuracy_score(y, oof_labels, sample_weight=weights)
    )
