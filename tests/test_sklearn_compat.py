"""scikit-learn's estimator checks on a cascade of cheap sklearn stages."""

import math

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.naive_bayes import GaussianNB
from sklearn.tree import DecisionTreeClassifier
from sklearn.utils.estimator_checks import parametrize_with_checks

from cascademl import (
    CascadeClassifier,
    ClassMismatchError,
    ConfidencePolicy,
    NotFittedError,
    PolicyError,
    RoutingRule,
    StageInterfaceError,
)

# Each expected failure, with the reason it is expected. Only one: with sample weights that
# remove a class, GaussianNB itself takes log(0) of that class's prior and warns (a
# VotingClassifier of a GaussianNB fails the same check); the cascade passes the weights on.
EXPECTED_FAILED_CHECKS: dict[str, str] = {
    "check_classifiers_one_label_sample_weights": (
        "the GaussianNB stage warns 'divide by zero encountered in log' when a sample "
        "weight of zero removes a class; the cascade only passes the weights on"
    ),
}


def _expected_failures(estimator):
    names = [name for name, _ in estimator.stages]
    return EXPECTED_FAILED_CHECKS if names[0] == "nb" else {}


def _cascades():
    return [
        CascadeClassifier(
            [("nb", GaussianNB()), ("tree", DecisionTreeClassifier(random_state=0))],
            policy=ConfidencePolicy(thresholds=0.9),
        ),
        CascadeClassifier(
            [("lr", LogisticRegression(max_iter=200)), ("nb", GaussianNB())],
            policy=ConfidencePolicy("margin", thresholds=0.3),
            combine="last",
        ),
    ]


@parametrize_with_checks(_cascades(), expected_failed_checks=_expected_failures)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# --------------------------------------------------------------------------- parameters
@pytest.fixture(scope="module")
def iris():
    return load_iris(return_X_y=True)


FIT_CALLS: list[str] = []


class CountingNB(GaussianNB):
    """GaussianNB that records each fit, to show that set_params refits nothing."""

    def fit(self, X, y, sample_weight=None):
        FIT_CALLS.append("nb")
        return super().fit(X, y, sample_weight=sample_weight)


def _two_stages(**kwargs):
    return CascadeClassifier(
        [("nb", CountingNB()), ("lr", LogisticRegression(max_iter=500))], **kwargs
    )


def test_deep_params_expose_the_policy_fields_but_not_the_routing_rule():
    policy = ConfidencePolicy("margin", thresholds=(0.2, 0.4))
    params = _two_stages(policy=policy).get_params(deep=True)
    assert params["policy__measure"] == "margin"
    assert params["policy__thresholds"] == (0.2, 0.4)
    assert not any("routing" in key for key in params)
    assert "policy__measure" not in _two_stages().get_params(deep=True)  # policy=None


def test_set_params_replaces_the_frozen_policy_with_a_copy():
    policy = ConfidencePolicy("margin", thresholds=0.2)
    cascade = _two_stages(policy=policy)
    assert cascade.set_params(policy__thresholds=0.7) is cascade
    assert cascade.policy == ConfidencePolicy("margin", thresholds=0.7)
    assert policy.thresholds == 0.2  # the original is untouched
    default = _two_stages().set_params(policy__thresholds=[0.3, 0.5])
    assert default.policy == ConfidencePolicy("max_proba", thresholds=(0.3, 0.5))
    both = _two_stages().set_params(policy=policy, policy__measure="entropy")
    assert both.policy == ConfidencePolicy("entropy", thresholds=0.2)
    with pytest.raises(PolicyError, match="policy__bogus"):
        _two_stages().set_params(policy__bogus=1)
    with pytest.raises(PolicyError, match="thresholds"):
        _two_stages().set_params(policy__thresholds=-1.0)


def test_clone_round_trips_the_policy():
    policy = ConfidencePolicy("entropy", thresholds=(0.1, 0.2))
    cascade = _two_stages(policy=policy, escalation_weight=[0.2, 1.0])
    copy = clone(cascade)
    assert copy.policy is policy  # frozen, so safely shared
    assert copy.get_params(deep=False).keys() == cascade.get_params(deep=False).keys()
    assert copy.get_params()["policy__thresholds"] == (0.1, 0.2)
    assert copy.escalation_weight == [0.2, 1.0]


def test_grid_search_over_thresholds(iris):
    X, y = iris
    search = GridSearchCV(
        _two_stages(policy=ConfidencePolicy(thresholds=0.5)),
        {"policy__thresholds": [0.0, 0.8, 1.1]},
        cv=3,
    ).fit(X, y)
    assert len(search.cv_results_["params"]) == 3
    best = search.best_params_["policy__thresholds"]
    assert search.best_estimator_.thresholds_[0] == best
    assert search.best_estimator_.policy_.thresholds == best
    # Threshold 0 stops every sample at the naive Bayes stage, 1.1 at the logistic one.
    scores = search.cv_results_["mean_test_score"]
    assert scores[0] != scores[2]


def test_set_params_after_fit_takes_effect_without_refitting(iris):
    X, y = iris
    FIT_CALLS.clear()
    cascade = _two_stages(policy=ConfidencePolicy(thresholds=0.0)).fit(X, y)
    assert FIT_CALLS == ["nb"]
    assert np.all(cascade.route(X).exit_stage == 0)
    assert cascade.thresholds_ == (0.0, math.inf)

    cascade.set_params(policy__thresholds=1.1)
    assert np.all(cascade.route(X).exit_stage == 1)
    assert cascade.thresholds_ == (1.1, math.inf)
    assert cascade.policy_ == ConfidencePolicy(thresholds=1.1)
    assert cascade.routing_rule_ == RoutingRule.from_params(
        ConfidencePolicy(thresholds=1.1), n_stages=2, combine="vote", escalation_weight=0.5
    )

    vote = cascade.predict_proba(X)
    cascade.set_params(combine="last")
    np.testing.assert_allclose(cascade.predict_proba(X), cascade.stages_[1].predict_proba(X))
    assert not np.allclose(vote, cascade.predict_proba(X))
    cascade.set_params(combine="vote", escalation_weight=0.0)
    np.testing.assert_allclose(cascade.predict_proba(X), cascade.stages_[1].predict_proba(X))
    cascade.set_params(policy=ConfidencePolicy("margin", thresholds=0.5))
    assert cascade.routing_rule_.measure == "margin"
    assert FIT_CALLS == ["nb"]  # no stage was refit


def test_fitted_properties_raise_before_fit():
    cascade = _two_stages()
    for name in ("routing_rule_", "thresholds_", "policy_", "abstain_label_"):
        with pytest.raises(NotFittedError, match="not fitted yet"):
            getattr(cascade, name)
        assert not hasattr(cascade, name)


def test_a_bad_policy_set_after_fit_is_reported_at_predict(iris):
    X, y = iris
    cascade = _two_stages().fit(X, y)
    cascade.set_params(policy__thresholds=(0.1, 0.2, 0.3))
    with pytest.raises(PolicyError, match="thresholds has 3 values but the cascade has 2"):
        cascade.predict(X)


# --------------------------------------------------------------------------- fitted stages
def test_fit_without_y_adopts_fitted_stages(iris):
    X, y = iris
    nb = GaussianNB().fit(X, y)
    lr = LogisticRegression(max_iter=500).fit(X, y)
    cascade = CascadeClassifier([("nb", nb), ("lr", lr)]).fit(X, None)
    assert cascade.classes_.tolist() == [0, 1, 2]
    assert cascade.stages_[0].estimator_ is nb
    assert cascade.n_features_in_ == 4
    reference = CascadeClassifier([("nb", nb), ("lr", lr)]).fit(X, y)
    np.testing.assert_array_equal(cascade.predict_proba(X), reference.predict_proba(X))


def test_fit_without_y_needs_fitted_stages(iris):
    X, y = iris
    nb = GaussianNB().fit(X, y)
    cascade = CascadeClassifier([("nb", nb), ("lr", LogisticRegression())])
    with pytest.raises(ValueError, match="y is None and stage 'lr' \\(LogisticRegression\\)"):
        cascade.fit(X, None)


def test_from_fitted_builds_a_fitted_cascade_without_data(iris):
    X, y = iris
    labels = np.array(["a", "b", "c"])[y]
    nb = GaussianNB().fit(X, labels)
    tree = DecisionTreeClassifier(random_state=0).fit(X, labels)
    FIT_CALLS.clear()
    cascade = CascadeClassifier.from_fitted(
        [("nb", nb), ("tree", tree)], policy=ConfidencePolicy(thresholds=0.8), combine="last"
    )
    assert cascade.combine == "last"
    assert cascade.classes_.tolist() == ["a", "b", "c"]
    assert cascade.n_features_in_ == 4
    assert not hasattr(cascade, "feature_names_in_")
    reference = CascadeClassifier(
        [("nb", nb), ("tree", tree)], policy=ConfidencePolicy(thresholds=0.8), combine="last"
    ).fit(X, labels)
    np.testing.assert_array_equal(cascade.predict(X), reference.predict(X))
    wide = CascadeClassifier.from_fitted([("nb", nb)], classes=np.array(["a", "b", "c"], "U8"))
    assert wide.classes_.dtype == np.dtype("U8")


def test_from_fitted_checks_stages_and_classes(iris):
    X, y = iris
    nb = GaussianNB().fit(X, y)
    with pytest.raises(StageInterfaceError, match="stage 'lr' \\(LogisticRegression\\) is not"):
        CascadeClassifier.from_fitted([("nb", nb), ("lr", LogisticRegression())])
    with pytest.raises(ClassMismatchError, match="differ from the stages' classes"):
        CascadeClassifier.from_fitted([("nb", nb)], classes=[0, 1, 5])
    with pytest.raises(ClassMismatchError, match="distinct labels"):
        CascadeClassifier.from_fitted([("nb", nb)], classes=[0, 1, 1, 2])
    with pytest.raises(PolicyError, match="combine"):
        CascadeClassifier.from_fitted([("nb", nb)], combine="max")


def test_with_temperatures_needs_no_data(iris):
    from cascademl.calibration import TemperatureScaledStage, with_temperatures

    X, y = iris
    labels = np.array([10, 20, 30], dtype=np.int32)[y]
    cascade = _two_stages(policy=ConfidencePolicy(thresholds=0.7)).fit(X, labels)
    FIT_CALLS.clear()
    scaled = with_temperatures(cascade, [2.0, 1.0])
    assert FIT_CALLS == []
    assert isinstance(scaled.stages_[0], TemperatureScaledStage)
    assert scaled.classes_.dtype == np.int32
    assert scaled.policy == cascade.policy
    with pytest.warns(DeprecationWarning, match=r"with_temperatures\(\.\.\., X, y\): X and y"):
        old_call = with_temperatures(cascade, [2.0, 1.0], X, labels)
    np.testing.assert_allclose(scaled.predict_proba(X), old_call.predict_proba(X))
    assert FIT_CALLS == []
