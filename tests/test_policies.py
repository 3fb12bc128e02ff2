import math

import numpy as np
import pytest

from cascademl import ConfidencePolicy, PolicyError, RoutingRule


def test_defaults():
    policy = ConfidencePolicy()
    assert policy.measure == "max_proba"
    assert policy.thresholds_for(3) == (0.9, 0.9, math.inf)


def test_sequence_thresholds_are_stored_as_a_tuple_and_expanded():
    policy = ConfidencePolicy("margin", thresholds=[0.2, 0.4])
    assert policy.thresholds == (0.2, 0.4)
    assert policy.thresholds_for(3) == (0.2, 0.4, math.inf)
    assert policy.thresholds_for(2) == (0.2, 0.4)


def test_wrong_number_of_thresholds_names_both_counts():
    with pytest.raises(PolicyError, match=r"3 values but the cascade has 5 stages"):
        ConfidencePolicy(thresholds=(0.1, 0.2, 0.3)).thresholds_for(5)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (-0.1, "must be >= 0"),
        (float("nan"), "must be >= 0"),
        ("0.5", "number or a sequence"),
        (True, "real number"),
        ((0.5, None), r"thresholds\[1\] must be a real number"),
        ((), "empty"),
    ],
)
def test_invalid_thresholds_are_rejected_on_construction(value, match):
    with pytest.raises(PolicyError, match=match):
        ConfidencePolicy(thresholds=value)


def test_unknown_measure_is_rejected_on_construction():
    with pytest.raises(PolicyError, match="'top5'"):
        ConfidencePolicy("top5")  # type: ignore[arg-type]


def test_policy_is_frozen_and_hashable():
    policy = ConfidencePolicy(thresholds=[0.5, 0.6])
    with pytest.raises(AttributeError):
        policy.measure = "margin"  # type: ignore[misc]
    assert hash(policy) == hash(ConfidencePolicy(thresholds=(0.5, 0.6)))


def test_with_thresholds_returns_a_new_policy():
    policy = ConfidencePolicy("entropy", 0.5)
    other = policy.with_thresholds([0.1, 0.2])
    assert other.measure == "entropy"
    assert other.thresholds == (0.1, 0.2)
    assert policy.thresholds == 0.5


def test_exits_uses_the_stage_threshold_and_last_stage_always_exits():
    policy = ConfidencePolicy(thresholds=[0.95, 0.6])
    proba = np.array([[0.9, 0.1], [0.55, 0.45]])
    assert policy.exits(proba, stage_index=0, n_stages=3).tolist() == [False, False]
    assert policy.exits(proba, stage_index=1, n_stages=3).tolist() == [True, False]
    assert policy.exits(proba, stage_index=2, n_stages=3).tolist() == [True, True]


def test_routing_rule_from_params_fills_weights_and_last_threshold():
    from cascademl import ConfidencePolicy, RoutingRule

    rule = RoutingRule.from_params(
        ConfidencePolicy("margin", thresholds=(0.3, 0.6)), n_stages=3, combine="last"
    )
    assert rule.thresholds[:2] == (0.3, 0.6)
    assert rule.thresholds[2] == float("inf")
    assert rule.escalation_weights == (0.5, 0.5, 0.5)
    assert rule.policy.measure == "margin"
    assert rule.with_thresholds((0.1, 0.2)).thresholds[:2] == (0.1, 0.2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"measure": "nope", "thresholds": (0.5,)}, "measure"),
        ({"measure": "max_proba", "thresholds": ()}, "at least one stage"),
        ({"measure": "max_proba", "thresholds": (0.5,), "combine": "max"}, "combine"),
        (
            {"measure": "max_proba", "thresholds": (0.5, 0.5), "escalation_weights": (0.1,)},
            "escalation_weight",
        ),
    ],
)
def test_routing_rule_rejects_bad_fields(kwargs, match):
    from cascademl import PolicyError, RoutingRule

    with pytest.raises(PolicyError, match=match):
        RoutingRule(**kwargs)


# --------------------------------------------------- messages, defaults and fields kept
def test_confidence_policy_messages_name_the_field():
    with pytest.raises(PolicyError, match=r"^thresholds must not be an empty sequence$"):
        ConfidencePolicy("max_proba", [])
    with pytest.raises(PolicyError, match=r"^thresholds must be >= 0 .*got -0.5$"):
        ConfidencePolicy("max_proba", -0.5)
    with pytest.raises(PolicyError, match=r"give 2 \(one per non-final stage\) or 3$"):
        ConfidencePolicy("max_proba", (0.5, 0.5, 0.5, 0.5)).thresholds_for(3)


def test_confidence_policy_params_and_copies():
    policy = ConfidencePolicy("margin", (0.2, 0.4))
    assert policy.get_params() == {"measure": "margin", "thresholds": (0.2, 0.4)}
    assert policy.with_thresholds(0.7) == ConfidencePolicy("margin", 0.7)
    assert policy.with_thresholds([0.1, 0.3]).thresholds == (0.1, 0.3)


def test_routing_rule_messages_name_the_field():
    with pytest.raises(PolicyError, match=r"^thresholds must be a sequence, one number per stage"):
        RoutingRule("max_proba", 0.5, "vote")
    with pytest.raises(PolicyError, match=r"^thresholds\[1\] must be >= 0"):
        RoutingRule("max_proba", (0.5, -1.0), "vote")
    with pytest.raises(PolicyError, match=r"^a cascade needs at least one stage"):
        RoutingRule("max_proba", (), "vote")
    with pytest.raises(PolicyError, match=r"^policy must be a ConfidencePolicy or None"):
        RoutingRule.from_params("max_proba", n_stages=2)
    rule = RoutingRule("max_proba", (0.5, 0.5, math.inf), "vote")
    with pytest.raises(
        PolicyError, match=r"^thresholds has 4 values but the rule has 3 stages; give 2 or 3$"
    ):
        rule.with_thresholds((0.1, 0.2, 0.3, 0.4))


def test_from_params_defaults_and_weights():
    rule = RoutingRule.from_params(None, n_stages=2)
    assert rule == RoutingRule("max_proba", (0.9, math.inf), "vote", (0.5, 0.5))
    weighted = RoutingRule.from_params(
        ConfidencePolicy("margin", 0.3), n_stages=3, escalation_weight=0.25
    )
    assert weighted.escalation_weights == (0.25, 0.25, 0.25)
    assert weighted.with_thresholds((0.1, 0.2)).escalation_weights == (0.25, 0.25, 0.25)


def test_only_the_last_stage_of_a_rule_ends_every_sample():
    rule = RoutingRule("max_proba", (0.8, 0.8, 0.8), "vote")
    low = np.array([0.3, 0.9])
    np.testing.assert_array_equal(rule.exits(low, 0), [False, True])
    np.testing.assert_array_equal(rule.exits(low, 1), [False, True])
    np.testing.assert_array_equal(rule.exits(low, 2), [True, True])
