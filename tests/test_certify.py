import json
import math
import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB

from cascademl import CascadeClassifier, ConfidencePolicy, PolicyError, RoutingRule
from cascademl.abstention import coverage, selective_accuracy
from cascademl.certify import (
    Certificate,
    CertificationWarning,
    apply_certificate,
    binomial_p_value,
    certify_cascade,
    certify_cascade_from_proba,
    lower_confidence_bound,
    required_calibration_size,
    required_test_size,
)
from cascademl.certify._core import _fixed_sequence
from cascademl.exceptions import CascadeMLWarning, SerializationError
from cascademl.io import load_cascade, save_cascade
from cascademl.metrics import cascade_report
from cascademl.tuning import score_thresholds, stage_probabilities
from strategies import table_stages

CLASSES = np.arange(4)


def make_pool(seed, n, accuracies=(0.7, 0.8, 0.93), n_classes=4, *, informative=True):
    """Stage probabilities whose confidence is higher when the stage is right, and labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    tables = []
    for acc in accuracies:
        right = rng.random(n) < acc
        wrong = (y + rng.integers(1, n_classes, n)) % n_classes
        label = np.where(right, y, wrong)
        conf = np.where(right, rng.uniform(0.45, 1.0, n), rng.uniform(0.3, 0.75, n))
        if not informative:
            conf = rng.uniform(0.3, 0.9, n)
        table = np.repeat(((1 - conf) / (n_classes - 1))[:, None], n_classes, axis=1)
        table[np.arange(n), label] = conf
        tables.append(table)
    return np.stack(tables), y


def split(n, path_fraction=0.3, random_state=0):
    """The certifier's split (documented: a permutation from ``default_rng(random_state)``)."""
    order = np.random.default_rng(random_state).permutation(n)
    n_path = math.floor(path_fraction * n + 0.5)
    return np.sort(order[:n_path]), np.sort(order[n_path:])


def certify(tables, **kwargs):
    kwargs.setdefault("classes", CLASSES)
    kwargs.setdefault("stage_cost", [1.0, 3.0, 10.0])
    return certify_cascade_from_proba(tables, **kwargs)


# --------------------------------------------------------------------------- statistics
def test_required_test_size_is_the_smallest_passing_size():
    for target, delta in [(0.9, 0.05), (0.95, 0.1), (0.99, 0.05), (0.999, 0.01)]:
        n = required_test_size(target, delta)
        assert binomial_p_value(0, n, 1 - target) <= delta < binomial_p_value(0, n - 1, 1 - target)


def test_bound_and_test_agree():
    for n, k in [(300, 0), (300, 5), (1000, 40), (50, 49)]:
        for target in (0.8, 0.9, 0.95, 0.99):
            passes = binomial_p_value(k, n, 1 - target) <= 0.05
            assert passes == (lower_confidence_bound(n - k, n, 0.05) >= target - 1e-12)


@pytest.mark.parametrize(("n", "alpha"), [(1, 0.3), (7, 0.05), (59, 0.05), (200, 0.01)])
def test_binomial_p_value_is_the_binomial_lower_tail(n, alpha):
    """Closed forms: P(X <= 0) = (1 - a)^n, P(X <= 1) adds n a (1 - a)^(n - 1), P(X <= n) = 1."""
    assert binomial_p_value(0, n, alpha) == pytest.approx((1 - alpha) ** n, rel=1e-12)
    one = (1 - alpha) ** n + n * alpha * (1 - alpha) ** (n - 1)
    assert binomial_p_value(1, n, alpha) == pytest.approx(one, rel=1e-12)
    assert binomial_p_value(n, n, alpha) == pytest.approx(1.0, abs=1e-12)
    assert type(binomial_p_value(0, n, alpha)) is float


@pytest.mark.parametrize("n", [0, -1])
def test_no_samples_give_no_evidence(n):
    assert binomial_p_value(0, n, 0.05) == 1.0
    assert binomial_p_value(3, n, 0.05) == 1.0  # as documented (scipy gives NaN for 3 of 0)
    assert lower_confidence_bound(0, n, 0.05) == 0.0
    assert lower_confidence_bound(1, n, 0.05) == 0.0


@pytest.mark.parametrize(("successes", "n"), [(1, 1), (100, 100), (95, 100), (1, 40), (37, 40)])
def test_lower_bound_solves_the_clopper_pearson_equation(successes, n):
    """At the bound p, P(Binom(n, p) >= successes) = delta (the defining equation)."""
    from scipy.stats import binom

    delta = 0.05
    bound = lower_confidence_bound(successes, n, delta)
    assert type(bound) is float
    assert 0 < bound < successes / n or bound == pytest.approx(delta ** (1 / n))
    assert binom.sf(successes - 1, n, bound) == pytest.approx(delta, rel=1e-9)
    if successes == n:
        assert bound == pytest.approx(delta ** (1 / n), rel=1e-12)


def test_no_success_gives_a_zero_bound():
    assert lower_confidence_bound(0, 10, 0.05) == 0.0
    assert lower_confidence_bound(-1, 10, 0.05) == 0.0


@pytest.mark.parametrize(
    ("target", "delta", "n"),
    [(0.95, 0.05, 59), (0.99, 0.05, 299), (0.9, 0.1, 22), (0.5, 0.5, 1), (0.5, 0.25, 2)],
)
def test_required_test_size_known_values(target, delta, n):
    """The smallest n with target ** n <= delta: ceil(log delta / log target), computed here."""
    assert required_test_size(target, delta) == n == math.ceil(math.log(delta) / math.log(target))


@pytest.mark.parametrize(
    "delta",
    [
        2.0**-29,  # the closed-form start overshoots (30) by rounding: the search comes down
        float(np.nextafter(2.0**-4, 0)),  # the start (4) falls short: the search goes up
        float(np.nextafter(2.0**-9, 0)),
        0.3,
    ],
)
def test_required_test_size_survives_rounding_of_the_closed_form(delta):
    """For target 0.5, 0.5 ** n is exact in floating point: the answer is found by counting."""
    expected = next(n for n in range(1, 100) if 0.5**n <= delta)
    assert required_test_size(0.5, delta) == expected


def test_fixed_sequence_stops_at_first_failure():
    assert _fixed_sequence([0.01, 0.02, 0.2, 0.01, 0.0], 0.05) == [True, True, False, False, False]
    assert _fixed_sequence([0.5, 0.0], 0.05) == [False, False]


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target": 0.0}, "target must be a number strictly between 0 and 1, got 0.0"),
        ({"target": 1}, "target must be .* got 1"),
        ({"target": math.nan}, "target must be .* got nan"),
        ({"target": True}, "target must be .* got True"),
        ({"delta": 1.5}, "delta must be .* got 1.5"),
        ({"delta": 0}, "delta must be .* got 0"),
        ({"path_fraction": 1.0}, "path_fraction must be .* got 1.0"),
        ({"guarantee": "precision"}, "guarantee must be one of .* got 'precision'"),
        ({"guarantee": "accuracy"}, "guarantee='accuracy' needs the true labels y"),
        ({"guarantee": "selective"}, "guarantee='selective' needs the true labels y"),
        ({"guarantee": "accuracy", "y": [0, 1]}, "y has 2 labels but stage_proba has 600"),
        ({"guarantee": "accuracy", "y": np.full(600, 7)}, r"y holds labels \[7\]"),
        ({"classes": [0, 1]}, "classes must hold 4 labels"),
        ({"stage_cost": [1.0, 2.0]}, "stage_cost must hold 3 finite non-negative numbers"),
        ({"stage_names": ["a"]}, "stage_names has 1 names but there are 3 stages"),
        ({"random_state": 1.5}, "random_state must be an integer or None, got 1.5"),
        (
            {"rule": RoutingRule.from_params(None, n_stages=2)},
            "rule is for 2 stages but stage_proba has 3",
        ),
    ],
)
def test_bad_input_names_parameter_and_value(kwargs, match):
    tables, _ = make_pool(0, 600)
    kwargs.setdefault("target", 0.9)
    with pytest.raises(PolicyError, match=match):
        certify(tables, **kwargs)


def test_bad_probabilities_are_refused():
    tables, _ = make_pool(0, 600)
    with pytest.raises(PolicyError, match="shape"):
        certify(tables[0], target=0.9)
    bad = tables.copy()
    bad[1, 5, 0] = math.nan
    with pytest.raises(PolicyError, match=r"stage_proba\[1\] .* row 5 holds NaN"):
        certify(bad, target=0.9)
    bad = tables.copy()
    bad[2, 7] *= 2
    with pytest.raises(PolicyError, match=r"stage_proba\[2\] .* row 7 holds values summing to 2"):
        certify(bad, target=0.9)


def test_too_few_samples_says_how_many_are_needed():
    need = required_calibration_size(0.99, 0.05)
    assert need == 427  # 299 testing samples after a 30% path part
    tables, _ = make_pool(0, need)
    with pytest.raises(PolicyError, match=f"at least 299 samples .* at least {need} calibration"):
        certify(tables[:, : need - 1], target=0.99)
    with pytest.warns(CertificationWarning, match="only the last stage alone"):
        cert = certify(tables, target=0.99)  # exactly enough: the safe rule certifies
    assert cert.certified
    assert cert.n_test == 299


# --------------------------------------------------------------------------- results
def test_agreement_certifies_a_cheaper_rule_and_needs_no_y():
    tables, y = make_pool(1, 2000)
    cert = certify(tables, target=0.9)
    assert cert.certified
    assert cert.guarantee == "agreement"
    assert cert.bound >= 0.9
    assert cert.cost_share_last < 1.0
    assert cert.cost_share_all == pytest.approx(cert.mean_cost / 14.0)
    assert cert.n_calibration == 2000
    assert cert.n_path + cert.n_test == 2000
    assert cert.path[cert.chosen_index].passed
    assert cert.coverage == 1.0
    assert cert.reject_threshold is None
    # y is ignored for agreement.
    with_y = certify(tables, target=0.9, y=y)
    assert with_y.rule == cert.rule
    assert with_y.bound == cert.bound


def test_certified_estimate_and_bound_are_consistent():
    """bound <= the testing part's estimate; bound >= target when certified."""
    for seed in range(4):
        tables, y = make_pool(seed, 600 + 200 * seed)
        for guarantee, target in [("agreement", 0.85), ("accuracy", 0.8), ("selective", 0.9)]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CertificationWarning)
                cert = certify(tables, target=target, guarantee=guarantee, y=y, random_state=seed)
            _, test = split(y.size, random_state=seed)
            ref = y if guarantee != "agreement" else np.argmax(tables[-1], axis=1)
            if not cert.certified:
                assert cert.chosen_index is None
                continue
            assert cert.bound >= target - 1e-12
            point = score_thresholds(
                tables[:, test], ref[test], cert.rule, classes=CLASSES, stage_cost=[1, 3, 10]
            )
            if guarantee == "selective":
                assert cert.bound <= cert.estimate + 0.1
                continue
            assert cert.bound <= point.score
            whole = score_thresholds(tables, ref, cert.rule, classes=CLASSES, stage_cost=[1, 3, 10])
            assert cert.estimate == pytest.approx(whole.score)
            assert cert.mean_cost == pytest.approx(whole.mean_cost)


def test_path_is_tested_in_order_and_stops_at_the_first_failure():
    tables, y = make_pool(2, 1500)
    cert = certify(tables, target=0.85, guarantee="accuracy", y=y)
    passed = [p.passed for p in cert.path]
    first_fail = passed.index(False) if False in passed else len(passed)
    assert all(passed[:first_fail])
    assert not any(passed[first_fail:])
    assert all(p.p_value <= cert.delta for p in cert.path[:first_fail])
    if first_fail < len(passed):
        assert cert.path[first_fail].p_value > cert.delta
    # The chosen setting is the cheapest certified one.
    assert cert.mean_cost == min(p.mean_cost for p in cert.path[:first_fail])
    # The path runs from the safe rule towards cheaper settings.
    assert cert.path[0].combine == "last"
    assert all(math.isinf(t) for t in cert.path[0].thresholds)
    costs = [p.mean_cost for p in cert.path[1:]]
    assert costs[0] >= costs[-1]


@pytest.mark.parametrize("guarantee", ["accuracy", "selective"])
def test_path_does_not_look_at_the_testing_part(guarantee):
    tables, y = make_pool(3, 1200)
    _, test = split(y.size)
    shuffled = y.copy()
    shuffled[test] = np.random.default_rng(9).permutation(y[test])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CertificationWarning)
        a = certify(tables, target=0.8, guarantee=guarantee, y=y)
        b = certify(tables, target=0.8, guarantee=guarantee, y=shuffled)

    def settings(cert):
        return [(p.thresholds, p.combine, p.reject_threshold, p.mean_cost) for p in cert.path]

    assert settings(a) == settings(b)
    # ... while the tests on the testing part did see the change.
    assert [p.p_value for p in a.path] != [p.p_value for p in b.path]


def test_unreachable_accuracy_falls_back_to_the_safe_rule_with_a_warning():
    tables, y = make_pool(4, 1000)
    with pytest.warns(CertificationWarning, match="not certified") as record:
        cert = certify(tables, target=0.99, guarantee="accuracy", y=y)
    assert issubclass(record[0].category, CascadeMLWarning)
    assert not cert.certified
    assert cert.chosen_index is None
    assert cert.rule.combine == "last"
    assert all(math.isinf(t) for t in cert.rule.thresholds)
    assert 0.0 < cert.bound < 0.99  # the safe rule's own bound
    assert not any(p.passed for p in cert.path)
    assert cert.summary().startswith("not certified")


def test_unreachable_selective_target_falls_back_to_full_rejection():
    tables, y = make_pool(5, 600, informative=False)
    with pytest.warns(CertificationWarning, match="not certified"):
        cert = certify(tables, target=0.99, guarantee="selective", y=y)
    assert not cert.certified
    assert cert.reject_threshold == 1.0
    assert math.isnan(cert.bound)


def test_only_the_safe_rule_certified_warns_but_is_certified():
    tables, _ = make_pool(6, 600)
    with pytest.warns(CertificationWarning, match="only the last stage alone"):
        cert = certify(tables, target=0.995, delta=0.2)
    assert cert.certified
    assert cert.chosen_index == 0
    assert cert.estimate == 1.0


@pytest.mark.parametrize(("combine", "weight"), [("vote", 0.3), ("last", 0.5), ("mean", 0.5)])
def test_a_given_rule_keeps_its_combiner_measure_and_weights(combine, weight):
    tables, y = make_pool(7, 1500)
    rule = RoutingRule.from_params(
        ConfidencePolicy("margin"), n_stages=3, combine=combine, escalation_weight=weight
    )
    cert = certify(tables, target=0.8, guarantee="accuracy", y=y, rule=rule)
    assert cert.certified
    assert cert.chosen_index > 0
    assert (cert.rule.measure, cert.rule.combine) == ("margin", combine)
    assert cert.rule.escalation_weights == rule.escalation_weights
    assert all(p.combine == combine for p in cert.path[1:])


def test_selective_certifies_the_largest_coverage():
    tables, y = make_pool(8, 2000)
    cert = certify(tables, target=0.985, guarantee="selective", y=y)
    assert cert.certified
    assert 0.0 < cert.coverage < 1.0
    assert cert.bound >= 0.985
    passed = [p for p in cert.path if p.passed]
    assert cert.coverage == max(p.coverage for p in passed)
    thresholds = [p.reject_threshold for p in cert.path]
    assert thresholds == sorted(thresholds, reverse=True)
    assert "accurate on the samples it decides" in cert.summary()


def test_validity_on_a_known_population():
    """Over 200 calibration draws, the certified rule misses its target at most delta often."""
    tables, _ = make_pool(10, 5000, accuracies=(0.75, 0.95))
    ref = np.argmax(tables[-1], axis=1)
    # The pool is the population: with combine="last", a sample disagrees exactly when the
    # first stage is confident enough to answer and answers otherwise.
    conf0 = tables[0].max(axis=1)
    miss0 = np.argmax(tables[0], axis=1) != ref
    rng = np.random.default_rng(0)
    target, delta, n_draws = 0.93, 0.1, 200
    rule = RoutingRule.from_params(None, n_stages=2, combine="last")
    misses = 0
    shares = []
    for draw in range(n_draws):
        idx = rng.integers(0, ref.size, 400)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CertificationWarning)
            cert = certify_cascade_from_proba(
                tables[:, idx], classes=CLASSES, target=target, delta=delta, rule=rule,
                stage_cost=[1.0, 10.0], random_state=draw,
            )  # fmt: skip
        true = 1.0 - np.mean(miss0 & (conf0 >= cert.rule.thresholds[0]))
        if draw < 3:  # the shortcut is the routing's own agreement
            assert true == score_thresholds(tables, ref, cert.rule, classes=CLASSES).score
        misses += true < target
        shares.append(cert.cost_share_last)
    slack = 3 * math.sqrt(delta * (1 - delta) / n_draws)
    assert misses / n_draws <= delta + slack
    assert np.mean(shares) < 0.8  # it does certify savings


# --------------------------------------------------------------------------- serialisation
def test_certificate_round_trips_through_json():
    tables, y = make_pool(11, 800)
    for guarantee in ("agreement", "accuracy", "selective"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CertificationWarning)
            cert = certify(tables, target=0.85, guarantee=guarantee, y=y)
        back = Certificate.from_dict(json.loads(json.dumps(cert.to_dict(), allow_nan=False)))
        assert back.to_dict() == cert.to_dict()
        assert back.rule == cert.rule
        assert back.path == cert.path


def test_from_dict_refuses_what_is_not_a_certificate():
    tables, _ = make_pool(11, 800)
    data = certify(tables, target=0.85).to_dict()
    with pytest.raises(SerializationError, match="not a certificate"):
        Certificate.from_dict({"format": "other"})
    with pytest.raises(SerializationError, match="missing key 'bound'"):
        Certificate.from_dict({k: v for k, v in data.items() if k != "bound"})
    with pytest.raises(SerializationError, match="guarantee must be one of"):
        Certificate.from_dict({**data, "guarantee": "recall"})
    with pytest.raises(SerializationError, match=r"certificate.certified must be true or false"):
        Certificate.from_dict({**data, "certified": "yes"})


# --------------------------------------------------------------------------- cascades
@pytest.fixture(scope="module")
def digits_cascade():
    X, y = load_digits(return_X_y=True)
    cascade = CascadeClassifier(
        [
            ("nb", GaussianNB()),
            ("lda", LinearDiscriminantAnalysis()),
            ("lr", LogisticRegression(max_iter=300)),
        ]
    ).fit(X[:900], y[:900])
    return cascade, X[900:], y[900:]


def test_apply_certificate_routes_as_certified(digits_cascade):
    cascade, X, _ = digits_cascade
    cost = [1.0, 2.0, 8.0]
    cert = certify_cascade(cascade, X, target=0.9, stage_cost=cost)
    certified = apply_certificate(cascade, cert)
    assert certified.certificate_ is cert
    assert certified.routing_rule_ == cert.rule
    assert cert.matches(certified)
    assert not cert.matches(cascade)
    last = cascade.stages_[-1].predict(X)
    assert np.mean(certified.predict(X) == last) == pytest.approx(cert.estimate)
    proba = stage_probabilities(cascade, X)
    routed = score_thresholds(proba, last, cert.rule, classes=cascade.classes_, stage_cost=cost)
    assert routed.mean_cost == pytest.approx(cert.mean_cost)
    assert not hasattr(cascade, "certificate_")
    certified.set_params(policy=ConfidencePolicy(thresholds=0.5))
    assert not cert.matches(certified)


def test_selective_certificate_sets_the_reject_threshold(digits_cascade):
    cascade, X, y = digits_cascade
    cert = certify_cascade(cascade, X, y, target=0.97, guarantee="selective")
    assert cert.certified
    certified = apply_certificate(cascade, cert)
    assert certified.reject_threshold == cert.reject_threshold
    labels = certified.predict_or_abstain(X)
    abstain = certified.abstain_label_
    assert coverage(labels, abstain_label=abstain) == pytest.approx(cert.coverage)
    assert selective_accuracy(y, labels, abstain_label=abstain) == pytest.approx(cert.estimate)


def test_apply_certificate_refuses_other_stages(digits_cascade):
    cascade, X, _ = digits_cascade
    cert = certify_cascade(cascade, X, target=0.9)
    tables = stage_probabilities(cascade, X[:5])
    other = CascadeClassifier.from_fitted(table_stages(tables))
    with pytest.raises(PolicyError, match=r"certificate is for the stages \['nb', 'lda', 'lr'\]"):
        apply_certificate(other, cert)


@pytest.mark.parametrize("guarantee", ["agreement", "accuracy", "selective"])
def test_save_and_load_keep_the_certificate(digits_cascade, tmp_path, guarantee):
    cascade, X, y = digits_cascade
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CertificationWarning)
        cert = certify_cascade(cascade, X, y, target=0.95, guarantee=guarantee)
    certified = apply_certificate(cascade, cert)
    save_cascade(certified, tmp_path / "c")
    loaded = load_cascade(tmp_path / "c")
    assert loaded.certificate_.to_dict() == cert.to_dict()
    assert loaded.certificate_.matches(loaded)
    assert np.array_equal(loaded.predict_or_abstain(X), certified.predict_or_abstain(X))
    save_cascade(cascade, tmp_path / "plain")
    assert not hasattr(load_cascade(tmp_path / "plain"), "certificate_")


def test_a_corrupt_saved_certificate_is_refused(digits_cascade, tmp_path):
    cascade, X, _ = digits_cascade
    certified = apply_certificate(cascade, certify_cascade(cascade, X, target=0.9))
    folder = save_cascade(certified, tmp_path / "c")
    config = json.loads((folder / "cascade.json").read_text())
    config["certificate"]["target"] = "high"
    (folder / "cascade.json").write_text(json.dumps(config))
    with pytest.raises(SerializationError, match=r"certificate.target must be a number"):
        load_cascade(folder)


def test_cascade_report_shows_the_certificate(digits_cascade):
    cascade, X, y = digits_cascade
    cert = certify_cascade(cascade, X, target=0.9)
    certified = apply_certificate(cascade, cert)
    report = cascade_report(certified.route(X), y, certificate=certified.certificate_)
    assert report.certificate is cert
    assert "agrees with lr on at least 90.0%" in certified.summary()
    assert "no longer in force" not in certified.summary()
    assert "certificate" not in cascade.summary()
    certified.set_params(combine="mean")
    assert "no longer in force" in certified.summary()


# --------------------------------------------------------------------------- certify_cascade
def _table_cascade(costs):
    """A fitted cascade over make_pool's tables; stage i costs costs[i] (None: no hook)."""
    tables, y = make_pool(3, 600)
    stages = table_stages(tables)
    for (_, stage), cost in zip(stages, costs, strict=True):
        if cost is not None:
            stage.cost_per_sample = cost
    ids = np.arange(600).reshape(-1, 1)
    cascade = CascadeClassifier.from_fitted(stages)
    return cascade, tables, ids, cascade.classes_[y]


def test_certify_cascade_is_certify_from_proba_on_the_stage_tables():
    cascade, tables, ids, y = _table_cascade([2.0, None, 7.5])
    cert = certify_cascade(cascade, ids, y, target=0.8, delta=0.1, guarantee="accuracy")
    proba = stage_probabilities(cascade, ids)  # the tables, to the last bit of rounding
    np.testing.assert_allclose(proba, tables, rtol=1e-12)
    direct = certify_cascade_from_proba(
        proba,
        classes=cascade.classes_,
        target=0.8,
        delta=0.1,
        guarantee="accuracy",
        y=y,
        stage_cost=[2.0, 1.0, 7.5],  # a stage without cost_per_sample costs 1 per call
        stage_names=("s0", "s1", "s2"),
    )
    assert cert.to_dict() == direct.to_dict()
    assert cert.stage_cost == (2.0, 1.0, 7.5)
    assert cert.stage_names == ("s0", "s1", "s2")


def test_certify_cascade_passes_every_option_on():
    cascade, tables, ids, y = _table_cascade([None, None, None])
    rule = RoutingRule.from_params(ConfidencePolicy("margin", 0.5), n_stages=3, combine="mean")
    options = {"target": 0.75, "delta": 0.2, "path_fraction": 0.4, "random_state": 3}
    cert = certify_cascade(
        cascade, ids, y, guarantee="selective", rule=rule, stage_cost=[1, 2, 3], **options
    )
    proba = stage_probabilities(cascade, ids)  # the tables, to the last bit of rounding
    np.testing.assert_allclose(proba, tables, rtol=1e-12)
    direct = certify_cascade_from_proba(
        proba,
        classes=cascade.classes_,
        guarantee="selective",
        y=y,
        rule=rule,
        stage_cost=[1.0, 2.0, 3.0],
        stage_names=("s0", "s1", "s2"),
        **options,
    )
    assert cert.to_dict() == direct.to_dict()
    assert (cert.delta, cert.target, cert.guarantee) == (0.2, 0.75, "selective")


def test_apply_certificate_needs_a_certificate(digits_cascade):
    cascade, _, _ = digits_cascade
    with pytest.raises(PolicyError, match=r"^certificate must be a Certificate, got dict$"):
        apply_certificate(cascade, {"rule": None})


def test_apply_certificate_keeps_the_reject_threshold_unless_selective(digits_cascade):
    cascade, X, y = digits_cascade
    cascade = cascade.set_params(reject_threshold=0.3)
    try:
        cert = certify_cascade(cascade, X, y, target=0.8, guarantee="accuracy")
        assert cert.certified
        assert apply_certificate(cascade, cert).reject_threshold == 0.3
    finally:
        cascade.set_params(reject_threshold=None)


# --------------------------------------------------------------------------- the certificate
def _hand_certificate(**changes):
    """A certificate written by hand (no certifier involved), two path points."""
    from cascademl.certify import CertificatePoint

    rule = RoutingRule("margin", (0.4, math.inf), "mean", (0.25, 0.5))
    path = (
        CertificatePoint((math.inf, math.inf), "last", 11.0, 1.0, 0.0, passed=True),
        CertificatePoint(
            (0.4, math.inf),
            "mean",
            4.5,
            0.96,
            0.01,
            passed=True,
            coverage=0.8,
            reject_threshold=0.3,
        ),
    )
    fields = {
        "rule": rule,
        "guarantee": "selective",
        "target": 0.925,
        "delta": 0.05,
        "certified": True,
        "bound": 0.93,
        "estimate": 0.96,
        "n_calibration": 12345,
        "n_path": 3704,
        "n_test": 8641,
        "mean_cost": 4.5,
        "cost_share_last": 0.45,
        "cost_share_all": 4.5 / 11.0,
        "coverage": 0.8,
        "reject_threshold": 0.3,
        "method": "by hand",
        "stage_names": ("cheap", "strong"),
        "stage_cost": (1.0, 10.0),
        "path": path,
        "chosen_index": 1,
    }
    fields.update(changes)
    return Certificate(**fields)


HAND_DICT = {
    "format": "cascademl.Certificate",
    "version": 1,
    "rule": {
        "measure": "margin",
        "thresholds": [0.4, "inf"],
        "combine": "mean",
        "escalation_weights": [0.25, 0.5],
    },
    "guarantee": "selective",
    "target": 0.925,
    "delta": 0.05,
    "certified": True,
    "bound": 0.93,
    "estimate": 0.96,
    "n_calibration": 12345,
    "n_path": 3704,
    "n_test": 8641,
    "mean_cost": 4.5,
    "cost_share_last": 0.45,
    "cost_share_all": 4.5 / 11.0,
    "coverage": 0.8,
    "reject_threshold": 0.3,
    "method": "by hand",
    "stage_names": ["cheap", "strong"],
    "stage_cost": [1.0, 10.0],
    "path": [
        {
            "thresholds": ["inf", "inf"],
            "combine": "last",
            "mean_cost": 11.0,
            "estimate": 1.0,
            "p_value": 0.0,
            "passed": True,
            "coverage": 1.0,
            "reject_threshold": None,
        },
        {
            "thresholds": [0.4, "inf"],
            "combine": "mean",
            "mean_cost": 4.5,
            "estimate": 0.96,
            "p_value": 0.01,
            "passed": True,
            "coverage": 0.8,
            "reject_threshold": 0.3,
        },
    ],
    "chosen_index": 1,
}


def test_certificate_dict_is_the_documented_one_and_comes_back():
    cert = _hand_certificate()
    assert cert.to_dict() == HAND_DICT
    back = Certificate.from_dict(json.loads(json.dumps(HAND_DICT)))
    assert back.to_dict() == HAND_DICT
    for name in Certificate.__dataclass_fields__:
        assert getattr(back, name) == getattr(cert, name), name
    assert type(back.n_calibration) is int
    assert type(back.stage_names) is tuple
    assert type(back.path[0].thresholds) is tuple


def test_zero_counts_are_valid():
    data = json.loads(json.dumps(HAND_DICT))
    data.update(n_path=0, n_test=0, n_calibration=0)
    back = Certificate.from_dict(data)
    assert (back.n_path, back.n_test, back.n_calibration) == (0, 0, 0)


def test_a_point_without_reject_threshold_and_nan_bound_come_back():
    cert = _hand_certificate(reject_threshold=None, bound=math.nan, chosen_index=None)
    data = json.loads(json.dumps(cert.to_dict()))
    assert data["reject_threshold"] is None
    assert data["bound"] == "nan"
    assert data["chosen_index"] is None
    back = Certificate.from_dict(data)
    assert back.reject_threshold is None
    assert math.isnan(back.bound)
    assert back.chosen_index is None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.update(format="x"), r"^C: not a certificate \(format 'x', expected 'cascad"),
        (lambda d: d.pop("format"), r"^C: not a certificate \(format None, expected"),
        (lambda d: d.update(version=2), r"^C: certificate version 2 is not supported$"),
        (lambda d: d.update(guarantee="x"), r"^C: guarantee must be one of \('agreement', 'ac"),
        (lambda d: d.update(chosen_index=True), r"^C: chosen_index must be null or an integer, g"),
        (lambda d: d.update(chosen_index=1.0), r"^C: chosen_index must be null .* got 1\.0$"),
        (lambda d: d.pop("rule"), r"^C: missing key 'rule'$"),
        (lambda d: d["rule"].pop("combine"), r"^C: missing key 'combine'$"),
        (lambda d: d.pop("reject_threshold"), r"^C: missing key 'reject_threshold'$"),
        (lambda d: d.pop("stage_cost"), r"^C: missing key 'stage_cost'$"),
        (lambda d: d.update(n_test=-1), r"^C\.n_test must be a non-negative integer, got -1$"),
        (lambda d: d.update(n_path=True), r"^C\.n_path must be a non-negative integer, got True"),
        (lambda d: d.update(n_calibration=2.0), r"^C\.n_calibration must be a non-negative int"),
        (lambda d: d.update(certified=1), r"^C\.certified must be true or false, got 1$"),
        (lambda d: d.update(delta="x"), r"^C\.delta"),
        (lambda d: d["rule"].update(measure="x"), r"^C: invalid certificate \("),
        (lambda d: d.update(stage_names=5), r"^C: invalid certificate \("),
        (lambda d: d["path"][1].pop("coverage"), r"^C\.path\[1\]: missing key 'coverage'$"),
        (lambda d: d["path"][0].update(passed=0), r"^C\.path\[0\]\.passed must be true or false"),
        (lambda d: d["path"][1].update(thresholds=3), r"^C\.path\[1\]: invalid entry \("),
        (lambda d: d["path"][1].update(reject_threshold="a"), r"^C\.path\[1\]\.reject_threshold"),
        (lambda d: d["rule"].update(thresholds=["a"]), r"^C\.rule\.thresholds must be a number"),
        (lambda d: d["rule"].update(escalation_weights=["a"]), r"^C\.rule\.escalation_weights "),
        (lambda d: d.update(stage_cost=[1, "a"]), r"^C\.stage_cost must be a number, got 'a'$"),
        (lambda d: d["path"][0].update(thresholds=["a"]), r"^C\.path\[0\]\.thresholds must be a"),
        (lambda d: d["path"][0].update(mean_cost="a"), r"^C\.path\[0\]\.mean_cost must be a"),
        (lambda d: d["path"][0].update(estimate="a"), r"^C\.path\[0\]\.estimate must be a"),
        (lambda d: d["path"][0].update(p_value="a"), r"^C\.path\[0\]\.p_value must be a"),
        (lambda d: d["path"][0].update(coverage="a"), r"^C\.path\[0\]\.coverage must be a"),
    ],
)
def test_broken_certificate_dicts_name_the_key(change, expected):
    data = json.loads(json.dumps(HAND_DICT))
    change(data)
    with pytest.raises(SerializationError, match=expected):
        Certificate.from_dict(data, "C")


@pytest.mark.parametrize(
    "key",
    [
        "target",
        "delta",
        "bound",
        "estimate",
        "mean_cost",
        "cost_share_last",
        "cost_share_all",
        "coverage",
        "reject_threshold",
    ],
)
def test_every_number_of_a_certificate_is_named_when_broken(key):
    data = json.loads(json.dumps(HAND_DICT))
    data[key] = "a"
    with pytest.raises(SerializationError, match=rf"^C\.{key} must be a number, got 'a'$"):
        Certificate.from_dict(data, "C")


def test_not_a_mapping_is_not_a_certificate():
    with pytest.raises(SerializationError, match=r"^certificate: not a certificate \(format 'lis"):
        Certificate.from_dict([1])
    from cascademl.certify import CertificatePoint

    with pytest.raises(SerializationError, match=r"^path point: missing key 'reject_threshold'$"):
        CertificatePoint.from_dict({})


@pytest.mark.parametrize(
    ("changes", "text"),
    [
        (
            {"guarantee": "agreement", "target": 0.9, "coverage": 1.0},
            (
                "agrees with strong on at least 90.0% of samples with 95% confidence, at 45% of "
                "its cost (n=12,345 calibration samples)"
            ),
        ),
        (
            {"guarantee": "accuracy", "delta": 0.1},
            (
                "is at least 92.5% accurate with 90% confidence, at 45% of the cost of strong "
                "(n=12,345 calibration samples)"
            ),
        ),
        (
            {},
            (
                "is at least 92.5% accurate on the samples it decides (80% of calibration "
                "samples) with 95% confidence, at 45% of the cost of strong (n=12,345 "
                "calibration samples)"
            ),
        ),
        (
            {"certified": False, "bound": 0.91234, "guarantee": "accuracy"},
            (
                "not certified: no setting reached accuracy of 92.5% with 95% confidence "
                "(n=12,345 calibration samples); falls back to strong alone; its lower bound is "
                "0.9123"
            ),
        ),
        (
            {"certified": False, "bound": math.nan, "delta": 0.005},
            (
                "not certified: no setting reached selective accuracy of 92.5% with 99.5% "
                "confidence (n=12,345 calibration samples); falls back to strong alone"
            ),
        ),
        (
            {"certified": False, "bound": math.nan, "guarantee": "agreement", "target": 0.99},
            (
                "not certified: no setting reached agreement of 99.0% with 95% confidence "
                "(n=12,345 calibration samples); falls back to strong alone"
            ),
        ),
    ],
)
def test_summary_sentences(changes, text):
    assert _hand_certificate(**changes).summary() == text


def test_percent_keeps_only_the_decimals_needed():
    from cascademl.certify._certificate import _percent

    assert _percent(0.95, 0) == "95%"
    assert _percent(0.995, 0) == "99.5%"
    assert _percent(0.9, 1) == "90.0%"
    assert _percent(0.12345, 0) == "12.345%"
    assert _percent(1 / 3, 0) == "33.333%"
    assert _percent(math.nan, 1) == "nan%"
    assert _percent(0.123456, 0) == "12.346%"  # at most three more decimals


class _Routed:
    """Just what matches() reads from a cascade."""

    def __init__(self, names, rule, reject_threshold=None):
        self.named_stages_ = dict.fromkeys(names)
        self.routing_rule_ = rule
        self.reject_threshold = reject_threshold


def test_matches_needs_same_stages_rule_and_selective_reject_threshold():
    cert = _hand_certificate()
    rule = cert.rule
    assert cert.matches(_Routed(["cheap", "strong"], rule, 0.3))
    assert not cert.matches(_Routed(["cheap", "strong"], rule, 0.31))
    assert not cert.matches(_Routed(["strong", "cheap"], rule, 0.3))
    other = RoutingRule("margin", (0.41, math.inf), "mean", (0.25, 0.5))
    assert not cert.matches(_Routed(["cheap", "strong"], other, 0.3))
    assert not cert.matches(object())
    accuracy = _hand_certificate(guarantee="accuracy")
    assert accuracy.matches(_Routed(["cheap", "strong"], rule, 0.31))
    assert accuracy.matches(_Routed(["cheap", "strong"], rule, None))


def test_unfitted_cascades_are_refused_naming_the_call():
    from cascademl import NotFittedError

    unfitted = CascadeClassifier([("nb", GaussianNB())])
    with pytest.raises(NotFittedError, match=r"not fitted yet; call fit before certify_cascade "):
        certify_cascade(unfitted, np.zeros((3, 2)), target=0.9)
    cert = _hand_certificate()
    with pytest.raises(
        NotFittedError, match=r"not fitted yet; call fit before apply_certificate \("
    ):
        apply_certificate(unfitted, cert)
