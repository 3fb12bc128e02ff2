"""The tuners choose the combiner (``combine="auto"``) on the tuning data, or keep the one named."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.naive_bayes import GaussianNB
from sklearn.tree import DecisionTreeClassifier

from cascademl import (
    CascadeClassifier,
    CascadeClassifierCV,
    ConfidencePolicy,
    PolicyError,
    RoutingRule,
)
from cascademl.tuning import (
    apply_tuning,
    score_thresholds,
    search_orders_from_proba,
    tune_cascade,
    tune_cascade_from_proba,
)
from strategies import TableStage, sample_ids

CLASSES = np.array([0, 1])
COSTS = [1.0, 4.0]


def _rows(right: int, conf: float, n: int) -> np.ndarray:
    """``n`` rows giving ``conf`` to class ``right`` of two (so ``1 - conf`` to the other)."""
    row = np.full(2, 1.0 - conf)
    row[right] = conf
    return np.tile(row, (n, 1))


# Two stages, all labels 0, two blocks of samples with the same first-stage confidence (so
# no threshold tells them apart). Block A (40 samples) is where the combiners disagree;
# block B (60 samples) is wrong at stage 0 and right at stage 1 under every combiner, so the
# best policy sends every sample to stage 1 and only the combiner decides block A:
# * "last": stage 0 wrong at 0.6, stage 1 right at 0.52; every vote (w >= 0.25) and the mean
#   follow stage 0 (0.48 + 0.6 w > 0.52 + 0.4 w).
# * "vote": stage 0 right at 0.6, stage 1 wrong at 0.52; every weight >= 0.25 and the mean
#   are right, "last" is wrong; ties go to the first candidate, the vote at 0.25.
# * "mean": stage 0 right at 0.9, stage 1 wrong at 0.85; right only when the first stage
#   counts more than 0.875 of the second (w = 1): the mean.
BLOCKS = {
    "last": ((1, 0.6), (0, 0.52), (1, 0.6), (0, 0.9)),
    "vote": ((0, 0.6), (1, 0.52), (1, 0.6), (0, 0.9)),
    "mean": ((0, 0.9), (1, 0.85), (1, 0.9), (0, 0.99)),
}


def _winner_data(winner: str) -> tuple[np.ndarray, np.ndarray]:
    (a0, a1, b0, b1) = BLOCKS[winner]
    first = np.concatenate([_rows(*a0, 40), _rows(*b0, 60)])
    second = np.concatenate([_rows(*a1, 40), _rows(*b1, 60)])
    return np.stack([first, second]), np.zeros(100, dtype=int)


def _alone(tables, y, combine, weight=0.5, **kwargs):
    rule = RoutingRule.from_params(None, n_stages=2, combine=combine, escalation_weight=weight)
    return tune_cascade_from_proba(tables, y, classes=CLASSES, rule=rule, **kwargs)


@pytest.mark.parametrize("winner", ["last", "vote", "mean"])
def test_auto_picks_the_combiner_that_wins_on_the_tuning_data(winner):
    tables, y = _winner_data(winner)
    result = tune_cascade_from_proba(tables, y, classes=CLASSES, stage_cost=COSTS)
    assert result.rule.combine == winner
    assert result.score == 1.0
    # Each candidate alone: the winner is strictly better than every other combiner.
    alone = {
        "last": _alone(tables, y, "last", stage_cost=COSTS),
        "mean": _alone(tables, y, "mean", stage_cost=COSTS),
        **{w: _alone(tables, y, "vote", w, stage_cost=COSTS) for w in (0.25, 0.5, 0.75)},
    }
    assert result.score == max(r.score for r in alone.values())
    others = [r.score for key, r in alone.items() if key != winner and isinstance(key, str)]
    if winner != "vote":
        others += [alone[w].score for w in (0.25, 0.5, 0.75)]
    else:  # the mean is also right here, and comes after the vote
        others.remove(alone["mean"].score)
    assert max(others) < 1.0
    if winner == "vote":
        assert result.rule.escalation_weights == (0.25, 0.25)  # the first of the tied weights
    # The recorded rule scores what the tuner reported.
    point = score_thresholds(tables, y, result.rule, classes=CLASSES, stage_cost=COSTS)
    assert (point.score, point.mean_cost) == (result.score, result.mean_cost)


def test_a_named_combiner_or_a_given_rule_is_kept():
    tables, y = _winner_data("mean")
    # A rule given without combine: its combiner, as before "auto" existed.
    last = RoutingRule.from_params(None, n_stages=2, combine="last")
    kept = tune_cascade_from_proba(tables, y, classes=CLASSES, rule=last, stage_cost=COSTS)
    assert kept.rule.combine == "last"
    assert kept.score < 1.0
    # combine="vote" without a rule is exactly the former default (vote, weight 0.5).
    vote = tune_cascade_from_proba(tables, y, classes=CLASSES, combine="vote", stage_cost=COSTS)
    former = _alone(tables, y, "vote", stage_cost=COSTS)
    assert vote.rule == former.rule
    assert vote.frontier == former.frontier
    assert vote.n_evaluations == former.n_evaluations
    # A sequence chooses among the named combiners only.
    some = tune_cascade_from_proba(
        tables, y, classes=CLASSES, combine=("last", "vote"), stage_cost=COSTS
    )
    assert some.rule.combine in ("last", "vote")
    assert some.score < 1.0
    # "auto" overrides a given rule's combiner but keeps its measure.
    margin = RoutingRule.from_params(ConfidencePolicy("margin"), n_stages=2, combine="last")
    auto = tune_cascade_from_proba(
        tables, y, classes=CLASSES, rule=margin, combine="auto", stage_cost=COSTS
    )
    assert (auto.rule.combine, auto.rule.measure) == ("mean", "margin")


def test_the_weight_grid_is_the_votes_under_auto():
    tables, y = _winner_data("vote")
    result = tune_cascade_from_proba(
        tables, y, classes=CLASSES, escalation_weight_grid=(0.0, 0.4, 1.0), stage_cost=COSTS
    )
    assert (result.rule.combine, result.rule.escalation_weights) == ("vote", (0.4, 0.4))
    with pytest.raises(PolicyError, match=r"escalation_weight_grid needs 'vote'"):
        tune_cascade_from_proba(
            tables, y, classes=CLASSES, combine=("last", "mean"), escalation_weight_grid=(0.5,)
        )


@pytest.mark.parametrize("bad", ["median", "", (), ("last", "max"), 3, None])
def test_an_unknown_combiner_is_refused_naming_the_parameter(bad):
    tables, y = _winner_data("last")
    if bad is None:  # None is valid: the rule's combiner
        assert tune_cascade_from_proba(tables, y, classes=CLASSES, combine=None).rule
        return
    with pytest.raises(PolicyError, match=r"combine must be 'auto', one of \('vote'"):
        tune_cascade_from_proba(tables, y, classes=CLASSES, combine=bad)


def test_tune_cascade_chooses_by_default_and_apply_tuning_routes_with_the_choice():
    tables, y = _winner_data("mean")
    stages = [(f"s{i}", TableStage(t, CLASSES)) for i, t in enumerate(tables)]
    cascade = CascadeClassifier.from_fitted(stages, classes=CLASSES)
    X = sample_ids(100)
    result = tune_cascade(cascade, X, y, stage_cost=COSTS)
    assert result.rule.combine == "mean"
    tuned = apply_tuning(cascade, result)
    assert tuned.combine == "mean"
    assert cascade.combine == "vote"  # left unchanged
    assert tuned.score(X, y) == result.score == 1.0
    # None keeps the cascade's own combiner.
    assert tune_cascade(cascade, X, y, stage_cost=COSTS, combine=None).rule.combine == "vote"


def test_order_searches_keep_the_rules_combiner_unless_asked():
    tables, y = _winner_data("mean")
    kwargs = {"classes": CLASSES, "stage_cost": COSTS, "orders": [(0, 1)]}
    assert search_orders_from_proba(tables, y, **kwargs).best.rule.combine == "vote"
    chosen = search_orders_from_proba(tables, y, combine="auto", **kwargs)
    assert chosen.best.rule.combine == "mean"


# --------------------------------------------------------------------------- CascadeClassifierCV
def _cv_data():
    return make_classification(
        n_samples=300, n_features=10, n_informative=5, n_classes=3, random_state=3
    )


def _cv_stages():
    return [("nb", GaussianNB()), ("tree", DecisionTreeClassifier(max_depth=5, random_state=0))]


def test_cv_default_chooses_on_out_of_fold_data_and_records_the_choice():
    X, y = _cv_data()
    model = CascadeClassifierCV(_cv_stages(), cv=3, stage_cost=COSTS, max_cost=3.0).fit(X, y)
    expected = tune_cascade_from_proba(
        model.oof_proba_, y, classes=model.classes_, stage_cost=COSTS, max_cost=3.0
    )
    assert model.rule_ == expected.rule
    assert model.combine_ == model.rule_.combine == model.cascade_.combine
    assert model.best_score_ == expected.score
    for combine in ("vote", "last", "mean"):
        alone = tune_cascade_from_proba(
            model.oof_proba_, y, classes=model.classes_, stage_cost=COSTS, max_cost=3.0,
            combine=combine,
        )  # fmt: skip
        assert model.best_score_ >= alone.score


def test_cv_explicit_vote_is_the_former_default():
    X, y = _cv_data()
    model = CascadeClassifierCV(
        _cv_stages(), cv=3, stage_cost=COSTS, max_cost=3.0, combine="vote", escalation_weight=0.3
    ).fit(X, y)
    assert model.combine_ == "vote"
    assert model.rule_.escalation_weights == (0.3, 0.3)
    former = tune_cascade_from_proba(
        model.oof_proba_,
        y,
        classes=model.classes_,
        rule=RoutingRule.from_params(None, n_stages=2, escalation_weight=0.3),
        stage_cost=COSTS,
        max_cost=3.0,
    )
    assert model.rule_ == former.rule
    with pytest.raises(PolicyError, match="combine must be"):
        CascadeClassifierCV(_cv_stages(), cv=3, combine="median").fit(X, y)


def test_cv_combine_round_trips_through_get_params_clone_and_repr():
    model = CascadeClassifierCV(_cv_stages())
    assert model.get_params()["combine"] == "auto"
    assert "combine" not in repr(model)  # the default is not shown
    named = CascadeClassifierCV(_cv_stages(), combine=("last", "mean"))
    copy = clone(named)
    assert copy.get_params(deep=False)["combine"] == ("last", "mean")
    assert "combine=('last', 'mean')" in repr(copy)
    assert copy.set_params(combine="last").combine == "last"
    assert not hasattr(copy, "combine_")
