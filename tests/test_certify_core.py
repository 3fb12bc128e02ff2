"""Certification on cached probabilities, checked against a reference written out here.

The reference routes every sample by hand (the first stage whose confidence reaches its
threshold answers, with the visited stages' votes), takes binomial tails and
Clopper-Pearson bounds from scipy and each combiner's frontier on the path part from the
public tuner, and rebuilds the split, the path's tests, the choice of the certified setting
and of the combiner, and every field of the certificate. The
probability tables hold multiples of 1/64, so sums and weighted votes are exact and the
reference routes bit for bit as the library does.
"""

import math
import os
import re
import warnings
from fractions import Fraction

import numpy as np
import pytest
from scipy.stats import beta, binom

from cascademl import ConfidencePolicy, PolicyError, RoutingRule
from cascademl.certify import (
    CertificationWarning,
    certify_cascade_from_proba,
    required_calibration_size,
)
from cascademl.tuning import tune_cascade_from_proba

CLASSES = np.array([10, 20, 30, 40])
METHOD = "learn-then-test, fixed-sequence testing, exact binomial p-values"
GRID = [("last", 0.5), ("vote", 0.25), ("vote", 0.5), ("vote", 0.75), ("mean", 0.5)]


def dyadic_pool(seed, n, accuracies, n_classes=4, *, informative=True):
    """Stage tables of multiples of 1/64, more confident when right, and the true labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    tables = []
    for acc in accuracies:
        right = rng.random(n) < acc
        label = np.where(right, y, (y + rng.integers(1, n_classes, n)) % n_classes)
        top = np.where(right, rng.integers(30, 65, n), rng.integers(24, 50, n))
        if not informative:
            top = rng.integers(24, 65, n)
        counts = np.zeros((n, n_classes), dtype=np.int64)
        rest = 64 - top
        for j in range(1, n_classes):  # the rest, split as evenly as integers allow
            share = rest // (n_classes - 1) + (j <= rest % (n_classes - 1))
            counts[np.arange(n), (label + j) % n_classes] = share
        counts[np.arange(n), label] = top
        tables.append(counts / 64.0)
    return np.stack(tables), y


# --------------------------------------------------------------------------- the reference
def confidence(proba, measure):
    ordered = np.sort(proba, axis=-1)
    if measure == "max_proba":
        return ordered[..., -1]
    assert measure == "margin"
    return ordered[..., -1] - ordered[..., -2]


def route(tables, rule, costs):
    """Exit stage, final probabilities and cost of each sample under ``rule``."""
    n_stages, n, _ = tables.shape
    exits = np.full(n, n_stages - 1)
    for s in range(n_stages - 2, -1, -1):
        stops = confidence(tables[s], rule.measure) >= rule.thresholds[s]
        exits[stops] = s
    escalating = {"last": [0.0] * n_stages, "mean": [1.0] * n_stages}.get(
        rule.combine, list(rule.escalation_weights)
    )
    scores = np.zeros(tables.shape[1:])
    for s in range(n_stages):
        w = np.where(exits == s, 1.0, np.where(exits > s, escalating[s], 0.0))
        scores += w[:, None] * tables[s]
    final = scores / scores.sum(axis=1, keepdims=True)
    return exits, final, np.cumsum(costs)[exits]


def split(n, path_fraction, random_state):
    n_path = math.floor(path_fraction * n + 0.5)
    order = np.random.default_rng(random_state).permutation(n)
    return np.sort(order[:n_path]), np.sort(order[n_path:])


def p_value(errors, n, alpha):
    return 1.0 if n == 0 else float(binom.cdf(errors, n, alpha))


def lower_bound(successes, n, delta):
    return 0.0 if successes == 0 else float(beta.ppf(delta, successes, n - successes + 1))


def fixed_sequence(p_values, delta):
    passed, ok = [], True
    for p in p_values:
        ok = ok and p <= delta
        passed.append(ok)
    return passed


def safe_rule(n_stages, measure="max_proba"):
    return RoutingRule(measure, (math.inf,) * n_stages, "last", (0.5,) * n_stages)


def path_frontier(tables, ref, path_idx, rule, costs):
    """The tuner's frontier of ``rule`` on the path part, by decreasing cost."""
    tuned = tune_cascade_from_proba(
        tables[:, path_idx], ref[path_idx], classes=np.arange(tables.shape[2]), rule=rule,
        stage_cost=costs,
    )  # fmt: skip
    return tuned, list(tuned.frontier)[::-1]


def grid_rules(n_stages):
    return [
        RoutingRule.from_params(
            ConfidencePolicy("max_proba"), n_stages=n_stages, combine=c, escalation_weight=w
        )
        for c, w in GRID
    ]


def check_common(cert, *, tables, costs, names, n_path, n_test, target, delta, guarantee):
    assert cert.guarantee == guarantee
    assert cert.target == target
    assert cert.delta == delta
    assert cert.n_calibration == tables.shape[1]
    assert (cert.n_path, cert.n_test) == (n_path, n_test)
    assert cert.stage_names == names
    assert cert.stage_cost == tuple(float(c) for c in costs)
    assert all(type(c) is float for c in cert.stage_cost)
    last, total = float(costs[-1]), float(sum(costs))
    share_last = cert.mean_cost / last if last > 0 else math.nan
    share_all = cert.mean_cost / total if total > 0 else math.nan
    np.testing.assert_equal(cert.cost_share_last, share_last)
    np.testing.assert_equal(cert.cost_share_all, share_all)


def rate_path(tables, ref, costs, given, *, path_idx, n_test, alpha, delta):
    """The tested rules: the safe one, then the path of the variant that reaches lowest."""
    n_stages = tables.shape[0]
    variants = grid_rules(n_stages) if given is None else [given]
    frontier = []
    if n_stages > 1:
        reaches, frontiers = [], []
        for v in variants:
            _, points = path_frontier(tables, ref, path_idx, v, costs)
            reach = math.inf
            for pt in points:  # while the path part's error share would pass at n_test
                if p_value(round((1.0 - pt.score) * n_test), n_test, alpha) > delta:
                    break
                reach = min(reach, pt.mean_cost)
            reaches.append(reach)
            frontiers.append(points)
        best = min(range(len(variants)), key=lambda i: (reaches[i], i))
        chosen_rule, frontier = variants[best], frontiers[best]
    else:
        chosen_rule = variants[0]
    safe = safe_rule(n_stages, chosen_rule.measure)
    return [safe] + [
        r for r in (chosen_rule.with_thresholds(pt.thresholds) for pt in frontier) if r != safe
    ]


def check_rate(cert, tables, ref, *, target, delta, costs, guarantee, given=None, fraction=0.3,
               random_state=0, names=None):  # fmt: skip
    """Rebuild an agreement or accuracy certificate from its inputs; compare every field."""
    n_stages, n, _ = tables.shape
    path_idx, test_idx = split(n, fraction, random_state)
    alpha = 1.0 - target
    rules = rate_path(
        tables, ref, costs, given, path_idx=path_idx, n_test=test_idx.size, alpha=alpha,
        delta=delta,
    )  # fmt: skip
    assert len(cert.path) == len(rules)
    hits_of = []
    p_values = []
    for r, point in zip(rules, cert.path, strict=True):
        _, final, cost = route(tables, r, costs)
        hits = np.argmax(final, axis=1) == ref
        hits_of.append(hits)
        assert point.thresholds == r.thresholds[:-1]
        assert point.combine == r.combine
        assert point.mean_cost == pytest.approx(cost.mean(), rel=1e-12)
        assert point.estimate == pytest.approx(hits.mean(), rel=1e-12)
        errors = test_idx.size - int(hits[test_idx].sum())
        p_values.append(p_value(errors, test_idx.size, alpha))
        assert point.p_value == pytest.approx(p_values[-1], rel=1e-9, abs=1e-300)
        assert (point.coverage, point.reject_threshold) == (1.0, None)
    passed = fixed_sequence(p_values, delta)
    assert [p.passed for p in cert.path] == passed
    ok = [i for i, flag in enumerate(passed) if flag]
    chosen = (
        min(ok, key=lambda i: (cert.path[i].mean_cost, -cert.path[i].estimate, i)) if ok else None
    )
    assert cert.chosen_index == chosen
    assert cert.certified is (chosen is not None)
    index = 0 if chosen is None else chosen
    assert cert.rule == rules[index]
    hits_test = int(hits_of[index][test_idx].sum())
    assert cert.bound == pytest.approx(lower_bound(hits_test, test_idx.size, delta), rel=1e-9)
    assert cert.estimate == cert.path[index].estimate
    assert cert.mean_cost == cert.path[index].mean_cost
    assert (cert.coverage, cert.reject_threshold) == (1.0, None)
    choice = "combiner chosen on the path part" if given is None else "rule given"
    assert cert.method == f"{METHOD} ({len(rules)} settings on the path; {choice})"
    names = tuple(names or (f"stage{i}" for i in range(n_stages)))
    check_common(
        cert, tables=tables, costs=costs, names=names, n_path=path_idx.size,
        n_test=test_idx.size, target=target, delta=delta, guarantee=guarantee,
    )  # fmt: skip
    return chosen


def candidates(conf, n_candidates=64):
    """The tuner's candidate thresholds: midpoints below quantiles of the distinct values."""
    values = np.unique(conf)
    picks = np.unique(np.round(np.linspace(0, values.size - 1, n_candidates)).astype(int))
    picks = picks[picks > 0]
    return np.unique(np.concatenate([[0.0], (values[picks - 1] + values[picks]) / 2.0]))


def reject_path(final, hits, rule, *, path_idx, n_test, alpha, delta):
    """Reject thresholds from high to low from the most convincing one, and the reach."""
    conf = confidence(final[path_idx], rule.measure)
    cands = candidates(conf)[::-1]
    p_pred, coverage = [], []
    for t in cands:
        decided = conf >= t
        m = int(decided.sum())
        coverage.append(m / path_idx.size)
        share = 1.0 - hits[path_idx][decided].mean()
        expected = round(coverage[-1] * n_test)
        p_pred.append(p_value(round(share * expected), expected, alpha))
    start = int(np.argmin(p_pred))
    reach = 0.0
    for j in range(start, cands.size):
        if p_pred[j] > delta:
            break
        reach = coverage[j]
    return cands[start:], reach


def selective_choice(tables, y, costs, given, *, path_idx, n_test, alpha, delta):
    """The routed rule whose reject path reaches the largest coverage, and that path."""
    n_stages = tables.shape[0]
    if given is not None:
        rules = [given]
    elif n_stages == 1:
        rules = grid_rules(1)[:1]
    else:
        rules = [path_frontier(tables, y, path_idx, v, costs)[0].rule for v in grid_rules(n_stages)]
    routed = []
    for r in rules:
        _, final, cost = route(tables, r, costs)
        hits = np.argmax(final, axis=1) == y
        cands, reach = reject_path(
            final, hits, r, path_idx=path_idx, n_test=n_test, alpha=alpha, delta=delta
        )
        routed.append((r, final, hits, cost.mean(), cands, reach))
    best = min(range(len(rules)), key=lambda i: (-routed[i][5], routed[i][3], i))
    return routed[best][:5]


def check_fallback(cert, tables, y, measure, costs):
    """Nothing certified: the safe rule, abstaining below a confidence of 1."""
    assert cert.rule == safe_rule(tables.shape[0], measure)
    decided = confidence(tables[-1], measure) >= 1.0
    right = np.argmax(tables[-1], axis=1) == y
    assert cert.reject_threshold == 1.0
    assert cert.coverage == decided.mean()
    np.testing.assert_equal(cert.estimate, right[decided].mean() if decided.any() else math.nan)
    assert cert.mean_cost == pytest.approx(float(sum(costs)), rel=1e-12)
    assert math.isnan(cert.bound)


def check_selective(cert, tables, y, *, target, delta, costs, given=None, random_state=0):
    """Rebuild a selective certificate from its inputs; compare every field."""
    n_stages, n, _ = tables.shape
    path_idx, test_idx = split(n, 0.3, random_state)
    alpha = 1.0 - target
    rule, final, hits, mean_cost, cands = selective_choice(
        tables, y, costs, given, path_idx=path_idx, n_test=test_idx.size, alpha=alpha,
        delta=delta,
    )  # fmt: skip
    conf = confidence(final, rule.measure)
    assert [p.reject_threshold for p in cert.path] == cands.tolist()
    p_values, counts = [], []
    for t, point in zip(cands, cert.path, strict=True):
        decided = conf >= t
        on_test = decided[test_idx]
        m = int(on_test.sum())
        k = m - int(hits[test_idx][on_test].sum())
        p_values.append(p_value(k, m, alpha))
        counts.append((m - k, m))
        assert point.thresholds == rule.thresholds[:-1]
        assert point.combine == rule.combine
        assert point.mean_cost == pytest.approx(mean_cost, rel=1e-12)
        assert point.coverage == decided.mean()
        assert point.estimate == pytest.approx(hits[decided].mean(), rel=1e-12)
        assert point.p_value == pytest.approx(p_values[-1], rel=1e-9, abs=1e-300)
    passed = fixed_sequence(p_values, delta)
    assert [p.passed for p in cert.path] == passed
    ok = [i for i, flag in enumerate(passed) if flag]
    chosen = max(ok, key=lambda i: (cert.path[i].coverage, i)) if ok else None
    assert cert.chosen_index == chosen
    assert cert.certified is (chosen is not None)
    choice = "combiner chosen on the path part" if given is None else "rule given"
    assert cert.method == f"{METHOD} ({len(cands)} settings on the path; {choice})"
    if chosen is not None:
        assert cert.rule == rule
        point = cert.path[chosen]
        assert (cert.reject_threshold, cert.coverage) == (point.reject_threshold, point.coverage)
        assert (cert.estimate, cert.mean_cost) == (point.estimate, point.mean_cost)
        assert cert.bound == pytest.approx(lower_bound(*counts[chosen], delta), rel=1e-9)
    else:
        check_fallback(cert, tables, y, rule.measure, costs)
    check_common(
        cert, tables=tables, costs=costs, names=tuple(f"stage{i}" for i in range(n_stages)),
        n_path=path_idx.size, n_test=test_idx.size, target=target, delta=delta,
        guarantee="selective",
    )  # fmt: skip
    return chosen


def certify(tables, **kwargs):
    if "classes" not in kwargs:
        kwargs["classes"] = np.arange(tables.shape[2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CertificationWarning)
        return certify_cascade_from_proba(tables, **kwargs)


# --------------------------------------------------------------------------- agreement, accuracy
@pytest.fixture(scope="module")
def pool():
    return dyadic_pool(0, 900, accuracies=(0.72, 0.82, 0.94))


def test_agreement_with_the_combiner_chosen_matches_the_reference(pool):
    tables, _ = pool
    costs = [1.0, 3.0, 10.0]
    cert = certify(tables, target=0.9, delta=0.1, stage_cost=costs, stage_names=["a", "b", "c"])
    ref = np.argmax(tables[-1], axis=1)
    chosen = check_rate(
        cert, tables, ref, target=0.9, delta=0.1, costs=costs, guarantee="agreement",
        names=["a", "b", "c"],
    )  # fmt: skip
    assert chosen > 0  # a cheaper rule than the last stage alone
    assert not all(p.passed for p in cert.path)  # and the testing part stopped the path


def test_accuracy_with_a_given_margin_rule_matches_the_reference(pool):
    tables, y = pool
    rule = RoutingRule.from_params(
        ConfidencePolicy("margin"), n_stages=3, combine="vote", escalation_weight=[0.25, 0.625, 1.0]
    )
    costs = [2.0, 2.5, 4.0]
    cert = certify(
        tables, target=0.8, delta=0.05, guarantee="accuracy", y=CLASSES[y], classes=CLASSES,
        rule=rule, stage_cost=costs, path_fraction=0.45, random_state=7,
    )  # fmt: skip
    chosen = check_rate(
        cert, tables, y, target=0.8, delta=0.05, costs=costs, guarantee="accuracy", given=rule,
        fraction=0.45, random_state=7,
    )  # fmt: skip
    assert chosen > 0
    assert cert.rule.measure == "margin"
    assert cert.path[0].thresholds == (math.inf, math.inf)


def test_an_unreachable_target_keeps_the_safe_rule_and_its_own_bound(pool):
    tables, y = pool
    costs = [1.0, 1.0, 0.0]  # the last stage is free: no cost share of it
    cert = certify(tables, target=0.97, guarantee="accuracy", y=y, stage_cost=costs)
    check_rate(cert, tables, y, target=0.97, delta=0.05, costs=costs, guarantee="accuracy")
    assert not cert.certified
    assert math.isnan(cert.cost_share_last)
    assert cert.cost_share_all == pytest.approx(cert.mean_cost / 2.0)


def test_accuracy_can_choose_a_vote_combiner():
    # The vote at 0.75 is predicted, on the path part, to reach the lowest cost.
    tables, y = dyadic_pool(3, 600, accuracies=(0.72, 0.82, 0.94))
    costs = [1.0, 3.0, 10.0]
    cert = certify(tables, target=0.85, guarantee="accuracy", y=y, stage_cost=costs)
    chosen = check_rate(
        cert, tables, y, target=0.85, delta=0.05, costs=costs, guarantee="accuracy"
    )  # fmt: skip
    assert chosen > 0
    assert (cert.rule.combine, cert.rule.escalation_weights) == ("vote", (0.75, 0.75, 0.75))


def test_an_unreachable_target_keeps_the_safe_rule_of_the_given_measure(pool):
    tables, y = pool
    rule = RoutingRule.from_params(ConfidencePolicy("margin"), n_stages=3, combine="last")
    cert = certify(tables, target=0.97, guarantee="accuracy", y=y, rule=rule)
    check_rate(
        cert, tables, y, target=0.97, delta=0.05, costs=[1.0, 1.0, 1.0], guarantee="accuracy",
        given=rule,
    )  # fmt: skip
    assert not cert.certified
    assert cert.rule == RoutingRule("margin", (math.inf,) * 3, "last", (0.5,) * 3)


def test_default_costs_are_one_per_stage_call():
    tables, _ = dyadic_pool(1, 700, accuracies=(0.8, 0.95))
    cert = certify(tables, target=0.9, random_state=3)
    ref = np.argmax(tables[-1], axis=1)
    chosen = check_rate(
        cert, tables, ref, target=0.9, delta=0.05, costs=[1.0, 1.0], guarantee="agreement",
        random_state=3,
    )  # fmt: skip
    assert chosen > 0
    assert cert.cost_share_last == cert.mean_cost
    assert cert.cost_share_all == cert.mean_cost / 2


def test_free_stages_have_no_cost_shares():
    tables, _ = dyadic_pool(2, 400, accuracies=(0.8, 0.95))
    rule = RoutingRule.from_params(None, n_stages=2, combine="vote")
    with pytest.warns(CertificationWarning, match="only the last stage alone"):
        cert = certify_cascade_from_proba(
            tables, classes=np.arange(4), target=0.9, stage_cost=[0, 0], rule=rule
        )
    ref = np.argmax(tables[-1], axis=1)
    chosen = check_rate(
        cert, tables, ref, target=0.9, delta=0.05, costs=[0.0, 0.0], guarantee="agreement",
        given=rule,
    )  # fmt: skip
    # Every setting costs nothing: of the two certified, the one with the higher estimate
    # (the last stage's agreement with itself, 1) is chosen: the last stage alone.
    assert [p.passed for p in cert.path] == [True, True]
    assert cert.path[1].estimate < cert.path[0].estimate == 1.0
    assert chosen == 0
    assert cert.mean_cost == 0.0
    assert math.isnan(cert.cost_share_last)
    assert math.isnan(cert.cost_share_all)
    assert cert.stage_cost == (0.0, 0.0)


@pytest.mark.parametrize("guarantee", ["agreement", "accuracy"])
def test_one_stage_has_a_path_of_the_safe_rule_alone(guarantee):
    tables, y = dyadic_pool(3, 400, accuracies=(0.97,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # certified at index 0 of a one-point path: no warning
        cert = certify_cascade_from_proba(
            tables, classes=np.arange(4), target=0.9, guarantee=guarantee, y=y
        )
    ref = np.argmax(tables[0], axis=1) if guarantee == "agreement" else y
    check_rate(cert, tables, ref, target=0.9, delta=0.05, costs=[1.0], guarantee=guarantee)
    assert len(cert.path) == 1
    assert cert.chosen_index == 0
    assert cert.rule == RoutingRule("max_proba", (math.inf,), "last", (0.5,))


def test_one_stage_with_a_given_rule():
    tables, y = dyadic_pool(3, 400, accuracies=(0.97,))
    rule = RoutingRule("margin", (0.5,), "vote", (0.25,))
    cert = certify(tables, target=0.9, guarantee="accuracy", y=y, rule=rule)
    check_rate(
        cert, tables, y, target=0.9, delta=0.05, costs=[1.0], guarantee="accuracy", given=rule
    )
    assert cert.rule == RoutingRule("margin", (math.inf,), "last", (0.5,))


@pytest.mark.parametrize(
    ("first", "last", "y", "guarantee"),
    [
        ([6, 20, 29, 62, 18], [14, 10, 32, 55, 41], [1, 1, 1, 0, 0], "accuracy"),
        ([34, 32, 12, 30, 63], [59, 39, 30, 55, 1], [1, 1, 1, 0, 1], "selective"),
    ],
)
def test_a_p_value_equal_to_delta_passes(first, last, y, guarantee):
    """Target 0.5 and delta 0.5 ** 3 with 3 testing samples: no error gives p = delta."""
    tables = np.stack([np.stack([a, 64 - np.array(a)], axis=1) / 64 for a in (first, last)])
    y = np.array(y)
    cert = certify(tables, target=0.5, delta=0.125, guarantee=guarantee, y=y, stage_cost=[1, 3])
    kwargs = {"target": 0.5, "delta": 0.125, "costs": [1.0, 3.0]}
    if guarantee == "selective":
        check_selective(cert, tables, y, **kwargs)
    else:
        check_rate(cert, tables, y, guarantee=guarantee, **kwargs)
    assert cert.n_test == 3
    if guarantee == "accuracy":
        assert [(p.p_value, p.passed) for p in cert.path[:1]] == [(0.125, True)]


# --------------------------------------------------------------------------- selective
def test_selective_with_the_combiner_chosen_matches_the_reference(pool):
    tables, y = pool
    costs = [1.0, 3.0, 10.0]
    cert = certify(tables, target=0.985, delta=0.1, guarantee="selective", y=y, stage_cost=costs)
    chosen = check_selective(cert, tables, y, target=0.985, delta=0.1, costs=costs)
    assert chosen is not None
    assert 0.0 < cert.coverage < 1.0


def test_selective_with_a_given_margin_rule_matches_the_reference(pool):
    tables, y = pool
    rule = RoutingRule.from_params(ConfidencePolicy("margin", 0.3), n_stages=3, combine="mean")
    costs = [1.0, 2.0, 3.0]
    cert = certify(
        tables, target=0.93, guarantee="selective", y=y, stage_cost=costs, rule=rule,
        random_state=5,
    )  # fmt: skip
    chosen = check_selective(
        cert, tables, y, target=0.93, delta=0.05, costs=costs, given=rule, random_state=5
    )
    assert chosen is not None
    assert cert.rule == rule  # thresholds and all: only the reject threshold is certified


def test_selective_skips_combiners_whose_path_part_predicts_nothing():
    # Confidences that say nothing about correctness: with "last" (and "mean", "vote" at
    # 0.75) no reject threshold of the path part predicts a pass at target 0.95; the
    # votes of the two stages do, so a vote variant is routed and tested.
    tables, y = dyadic_pool(3, 600, accuracies=(0.7, 0.9), informative=False)
    cert = certify(tables, target=0.95, guarantee="selective", y=y, stage_cost=[1.0, 4.0])
    check_selective(cert, tables, y, target=0.95, delta=0.05, costs=[1.0, 4.0])
    assert {p.combine for p in cert.path} == {"vote"}


def test_one_stage_selective_matches_the_reference():
    tables, y = dyadic_pool(4, 500, accuracies=(0.85,))
    cert = certify(tables, target=0.93, guarantee="selective", y=y)
    assert check_selective(cert, tables, y, target=0.93, delta=0.05, costs=[1.0]) is not None


def test_selective_certified_at_its_first_threshold_does_not_warn():
    tables, y = dyadic_pool(5, 300, accuracies=(0.7, 0.9))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cert = certify_cascade_from_proba(
            tables, classes=np.arange(4), target=0.95, guarantee="selective", y=y,
            stage_cost=[1, 3],
        )  # fmt: skip
    assert check_selective(cert, tables, y, target=0.95, delta=0.05, costs=[1, 3]) == 0
    assert len(cert.path) > 1


@pytest.mark.parametrize("measure", ["max_proba", "margin"])
def test_the_selective_fallback_abstains_by_the_rule_measure(measure):
    tables, y = dyadic_pool(5, 500, accuracies=(0.6, 0.7), informative=False)
    # A last-stage row whose runner-up is below half a unit in the last place of 1: its
    # largest probability is 1, its margin is not.
    tables[-1, 3] = [1.0, 8e-17, 0.0, 0.0]
    n_sure = int(np.sum(tables[-1].max(axis=1) == 1.0)) - 1  # the other rows of 64/64
    rule = RoutingRule.from_params(ConfidencePolicy(measure), n_stages=2, combine="last")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CertificationWarning)
        warnings.simplefilter("error", RuntimeWarning)  # no mean of an empty selection
        cert = certify_cascade_from_proba(
            tables, classes=np.arange(4), target=0.99, guarantee="selective", y=y, rule=rule
        )
    check_selective(cert, tables, y, target=0.99, delta=0.05, costs=[1.0, 1.0], given=rule)
    assert cert.rule.measure == measure
    assert cert.coverage == (n_sure + (measure == "max_proba")) / 500


def test_a_selective_fallback_that_decides_nothing_has_no_estimate():
    tables, y = dyadic_pool(5, 450, accuracies=(0.6, 0.7), informative=False)
    sure = tables[-1].max(axis=1) == 1.0
    tables[-1, sure] = [0.75, 0.25, 0.0, 0.0]  # no row of the last stage is sure
    with pytest.warns(CertificationWarning, match="not certified"):  # and no RuntimeWarning
        cert = certify_cascade_from_proba(
            tables, classes=np.arange(4), target=0.99, guarantee="selective", y=y
        )
    check_selective(cert, tables, y, target=0.99, delta=0.05, costs=[1.0, 1.0])
    assert cert.coverage == 0.0
    assert math.isnan(cert.estimate)


def test_unreachable_selective_target_abstains_below_full_confidence():
    tables, y = dyadic_pool(5, 500, accuracies=(0.6, 0.7), informative=False)
    # Some rows of the last stage are sure (confidence 1): the fallback decides those.
    sure = np.arange(0, 500, 7)
    tables[-1, sure] = np.eye(4)[y[sure]]
    tables[-1, sure[::3]] = np.eye(4)[(y[sure[::3]] + 1) % 4]
    cert = certify(tables, target=0.99, guarantee="selective", y=y, stage_cost=[1.0, 4.0])
    assert check_selective(cert, tables, y, target=0.99, delta=0.05, costs=[1.0, 4.0]) is None
    assert sure.size / 500 <= cert.coverage < 1.0  # the sure rows, and rows of 64/64
    assert 0.0 < cert.estimate < 1.0
    assert cert.path  # the tested points are kept


# --------------------------------------------------------------------------- warnings
def warn_twice(tables, y):
    """The two warnings: only the safe rule certified, then nothing certified."""
    first = certify_cascade_from_proba(
        tables[:, :427], classes=np.arange(4), target=0.99, stage_cost=[1, 3, 10]
    )
    second = certify_cascade_from_proba(
        tables, classes=np.arange(4), target=0.97, guarantee="accuracy", y=y
    )
    return first, second


def test_warnings_say_what_happened(pool, monkeypatch):
    calls = []
    monkeypatch.setattr(warnings, "warn", lambda *args, **kwargs: calls.append((args, kwargs)))
    first, second = warn_twice(*pool)
    assert (first.chosen_index, second.certified) == (0, False)
    assert len(first.path) > 1
    only_safe = (
        "only the last stage alone could be certified (agreement >= 0.99 at delta=0.05, "
        "n=427): no cheaper setting passed; more calibration samples or a lower target may help"
    )
    assert calls == [
        (
            (only_safe, CertificationWarning),
            {"stacklevel": 4},  # the caller of certify_cascade_from_proba: see the next test
        ),
        (
            (
                f"{second.summary()}; the returned rule is the safe fallback, not a certified one",
                CertificationWarning,
            ),
            {"stacklevel": 4},
        ),
    ]
    assert second.summary().startswith("not certified")


@pytest.mark.skipif(
    "MUTANT_UNDER_TEST" in os.environ, reason="mutmut's trampolines add stack frames"
)
def test_warnings_point_at_the_caller(pool):
    with pytest.warns(CertificationWarning) as record:
        warn_twice(*pool)
    assert [w.filename for w in record] == [__file__, __file__]


def test_thousands_are_grouped_in_the_warning():
    tables, _ = dyadic_pool(6, 1200, accuracies=(0.0, 1.0))  # the first stage is never right
    with pytest.warns(CertificationWarning, match=re.escape("delta=0.2, n=1,200)")):
        cert = certify_cascade_from_proba(tables, classes=np.arange(4), target=0.996, delta=0.2)
    assert cert.chosen_index == 0


# --------------------------------------------------------------------------- sizes, split, input
def fewest(target, delta, fraction):
    need = 1
    while target**need > delta:
        need += 1
    n = 1
    while True:
        n_path = math.floor(fraction * n + 0.5)
        if n_path >= 1 and n - n_path >= need:
            return n
        n += 1


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.3, 0.5, 0.6, 0.77, 0.8, 0.9, 0.95])
@pytest.mark.parametrize(
    ("target", "delta"), [(0.9, 0.05), (0.99, 0.05), (0.95, 0.2), (0.04, 0.05)]
)
def test_required_calibration_size_is_the_fewest_that_passes(target, delta, fraction):
    assert required_calibration_size(target, delta, fraction) == fewest(target, delta, fraction)


def test_required_calibration_size_small_cases():
    # One testing sample is enough when target <= delta; the path part needs one too.
    assert required_calibration_size(0.04, 0.05) == 2  # 0.6 + 0.5 rounds down: 1 + 1
    assert required_calibration_size(0.04, 0.05, 0.5) == 2  # floor(1 + 0.5) = 1 for the path
    assert required_calibration_size(0.04, 0.05, 0.9) == 6  # 5 samples would all go to the path
    assert required_calibration_size(0.9, 0.05, 0.01) == 50  # the path part: 0.01 * n >= 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": 1.5}, "target must be a number strictly between 0 and 1, got 1.5"),
        ({"target": "0.9"}, "target must be a number strictly between 0 and 1, got '0.9'"),
        ({"target": False}, "target must be a number strictly between 0 and 1, got False"),
        ({"delta": 0.0}, "delta must be a number strictly between 0 and 1, got 0.0"),
        ({"delta": None}, "delta must be a number strictly between 0 and 1, got None"),
        ({"delta": 1.0}, "delta must be a number strictly between 0 and 1, got 1.0"),
        ({"target": 1}, "target must be a number strictly between 0 and 1, got 1"),
        (
            {"path_fraction": 1.0},
            "path_fraction must be a number strictly between 0 and 1, got 1.0",
        ),
        ({"path_fraction": 0}, "path_fraction must be a number strictly between 0 and 1, got 0"),
        (
            {"path_fraction": math.nan},
            "path_fraction must be a number strictly between 0 and 1, got nan",
        ),
    ],
)
def test_required_calibration_size_names_the_bad_value(kwargs, message):
    args = {"target": 0.9, "delta": 0.05, "path_fraction": 0.3, **kwargs}
    with pytest.raises(PolicyError, match=f"^{re.escape(message)}$"):
        required_calibration_size(**args)


def test_too_few_samples_message_in_full():
    tables, _ = dyadic_pool(7, 60, accuracies=(0.9, 0.95))
    with pytest.raises(PolicyError) as info:
        certify_cascade_from_proba(
            tables, classes=np.arange(4), target=0.95, delta=0.05, path_fraction=0.25
        )
    assert str(info.value) == (
        "stage_proba holds 60 calibration samples, too few to certify target=0.95 at "
        "delta=0.05: even with no error, the testing part (1 - path_fraction = 0.75 of them, "
        "45 samples) must hold at least 59 samples (target ** n <= delta), so at least 79 "
        "calibration samples are needed"
    )
    assert required_calibration_size(0.95, 0.05, 0.25) == 79  # 59 + round(19.75) = 59 + 20


def test_a_path_part_of_one_sample_is_enough():
    # 2 samples, path_fraction 0.3: one for the path, one for testing; target <= delta.
    tables = np.array([[[1.0, 0.0], [0.25, 0.75]], [[1.0, 0.0], [0.0, 1.0]]])
    cert = certify(tables, target=0.04, delta=0.05, stage_cost=[1, 2])
    assert (cert.n_path, cert.n_test) == (1, 1)
    assert cert.certified


@pytest.mark.parametrize(("n", "fraction", "n_path"), [(10, 0.25, 3), (10, 0.35, 4), (10, 0.05, 1)])
def test_the_path_part_is_the_rounded_share(n, fraction, n_path):
    tables = np.tile(np.array([[0.75, 0.25]]), (2, n, 1))
    cert = certify(tables, target=0.5, delta=0.5, path_fraction=fraction)
    assert (cert.n_path, cert.n_test) == (n_path, n - n_path)


def test_random_state_draws_the_documented_split():
    tables, y = dyadic_pool(8, 300, accuracies=(0.7, 0.9))
    # The last stage answers the label (not y) on the samples of part 0 only, so only the
    # split that sends exactly those samples to the testing part sees no error there.
    path_idx, test_idx = split(300, 0.3, 11)
    tables[-1] = np.eye(4)[y] * 0.75 + 0.0625
    wrong = path_idx
    tables[-1, wrong] = np.eye(4)[(y[wrong] + 1) % 4] * 0.75 + 0.0625
    cert = certify(tables, target=0.95, guarantee="accuracy", y=y, random_state=np.int64(11))
    assert cert.path[0].p_value == pytest.approx(p_value(0, test_idx.size, 0.05), rel=1e-12)
    assert cert.certified
    other = certify(tables, target=0.95, guarantee="accuracy", y=y, random_state=12)
    assert other.path[0].p_value > 0.05
    fresh = {
        certify(tables, target=0.95, guarantee="accuracy", y=y, random_state=None).bound
        for _ in range(4)
    }
    assert len(fresh) > 1  # fresh draws


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": 2}, "target must be a number strictly between 0 and 1, got 2"),
        ({"delta": "0.1"}, "delta must be a number strictly between 0 and 1, got '0.1'"),
        (
            {"path_fraction": 1.5},
            "path_fraction must be a number strictly between 0 and 1, got 1.5",
        ),
        (
            {"guarantee": "recall"},
            "guarantee must be one of ('agreement', 'accuracy', 'selective'), got 'recall'",
        ),
        (
            {"guarantee": "accuracy"},
            (
                "guarantee='accuracy' needs the true labels y of the calibration samples, got "
                "y=None (guarantee='agreement' needs none)"
            ),
        ),
        ({"random_state": True}, "random_state must be an integer or None, got True"),
        ({"random_state": "1"}, "random_state must be an integer or None, got '1'"),
        ({"classes": [0, 1, 2]}, "classes must hold 4 labels (one per column), got shape (3,)"),
        (
            {"guarantee": "selective", "y": [0] * 199},
            "y has 199 labels but stage_proba has 200 samples",
        ),
        (
            {"stage_cost": [1.0, -1.0]},
            "stage_cost must hold 2 finite non-negative numbers (one per stage), got [1.0, -1.0]",
        ),
        (
            {"stage_cost": [1.0, math.inf]},
            "stage_cost must hold 2 finite non-negative numbers (one per stage), got [1.0, inf]",
        ),
        (
            {"stage_cost": [[1.0, 2.0]]},
            "stage_cost must hold 2 finite non-negative numbers (one per stage), got [[1.0, 2.0]]",
        ),
    ],
)
def test_bad_input_messages_in_full(kwargs, message):
    tables, _ = dyadic_pool(9, 200, accuracies=(0.8, 0.9))
    args = {"classes": np.arange(4), "target": 0.9, **kwargs}
    with pytest.raises(PolicyError, match=f"^{re.escape(message)}$"):
        certify_cascade_from_proba(tables, **args)


@pytest.mark.parametrize("shape", [(200, 4), (0, 200, 4), (1, 2, 200, 4)])
def test_stage_proba_of_another_shape_is_refused(shape):
    message = (
        "stage_proba must have shape (n_stages, n_samples, n_classes) with at least one "
        f"stage, got {shape}"
    )
    with pytest.raises(PolicyError, match=f"^{re.escape(message)}$"):
        certify_cascade_from_proba(np.full(shape, 0.25), classes=np.arange(4), target=0.9)


def test_exact_fractions_are_read_as_floats():
    tables, y = dyadic_pool(11, 300, accuracies=(0.8, 0.9))
    as_fractions = [[[Fraction(int(v * 64), 64) for v in row] for row in t] for t in tables]
    costs = [Fraction(1, 2), Fraction(3)]
    a = certify(
        as_fractions, classes=np.arange(4), target=0.9, guarantee="accuracy", y=y, stage_cost=costs
    )
    b = certify(tables, target=0.9, guarantee="accuracy", y=y, stage_cost=[0.5, 3.0])
    assert a.to_dict() == b.to_dict()
    assert a.stage_cost == (0.5, 3.0)


def test_a_row_that_is_not_probabilities_is_named():
    tables, _ = dyadic_pool(12, 200, accuracies=(0.8, 0.9))
    tables[1, 4] = [0.5, 0.5, 0.5, 0.5]
    with pytest.raises(PolicyError) as info:
        certify(tables, target=0.9, stage_names=["small", "large"])
    assert str(info.value).startswith(
        "stage_proba[1] (stage 'large') row 4 holds values summing to 2 (min 0.5); each row "
        "must be probabilities (>= 0, summing to 1 within"
    )


def test_agreement_ignores_y_and_its_length():
    tables, _ = dyadic_pool(10, 300, accuracies=(0.8, 0.9))
    a = certify(tables, target=0.9)
    b = certify(tables, target=0.9, y=[0, 1, 2])
    assert a.to_dict() == b.to_dict()
