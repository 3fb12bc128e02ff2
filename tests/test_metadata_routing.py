"""sample_weight and scikit-learn's metadata routing reach the stages that ask for them."""

import numpy as np
import pytest
import sklearn
from sklearn.base import clone
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.tree import DecisionTreeClassifier

from cascademl import CascadeClassifier, ConfidencePolicy, StageInterfaceError


@pytest.fixture(scope="module")
def data():
    X, y = load_iris(return_X_y=True)
    weights = np.random.default_rng(0).uniform(0.1, 3.0, size=len(y))
    return X, y, weights


def _stages():
    return [
        ("tree", DecisionTreeClassifier(max_depth=2, random_state=0)),
        ("lr", LogisticRegression(max_iter=1000)),
    ]


def test_sample_weight_reaches_every_stage(data):
    X, y, w = data
    cascade = CascadeClassifier(_stages()).fit(X, y, sample_weight=w)
    lr = LogisticRegression(max_iter=1000).fit(X, y, sample_weight=w)
    np.testing.assert_allclose(cascade.named_stages_["lr"].estimator_.coef_, lr.coef_)
    unweighted = CascadeClassifier(_stages()).fit(X, y)
    assert not np.allclose(unweighted.named_stages_["lr"].estimator_.coef_, lr.coef_)


def test_a_stage_to_fit_without_sample_weight_is_named(data):
    X, y, w = data
    cascade = CascadeClassifier([("knn", KNeighborsClassifier()), ("lr", LogisticRegression())])
    with pytest.raises(StageInterfaceError, match=r"stage 'knn' .*does not accept sample_weight"):
        cascade.fit(X, y, sample_weight=w)
    # A fitted stage is never refit, so it needs no weights.
    fitted = KNeighborsClassifier().fit(X, y)
    CascadeClassifier([("knn", fitted), ("lr", LogisticRegression(max_iter=1000))]).fit(
        X, y, sample_weight=w
    )


def test_other_fit_parameters_need_metadata_routing(data):
    X, y, _ = data
    with pytest.raises(TypeError, match="enable_metadata_routing"):
        CascadeClassifier(_stages()).fit(X, y, groups=y)


def test_metadata_router_maps_fit_to_each_stage():
    routing = CascadeClassifier(_stages()).get_metadata_routing()
    text = str(routing)
    assert "tree" in text
    assert "lr" in text
    assert "'caller': 'fit'" in text


def test_cross_val_score_routes_sample_weight_to_fit_and_score(data):
    X, y, w = data
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    with sklearn.config_context(enable_metadata_routing=True):
        stages = [(name, est.set_fit_request(sample_weight=True)) for name, est in _stages()]
        cascade = CascadeClassifier(stages, policy=ConfidencePolicy(thresholds=0.8))
        cascade.set_score_request(sample_weight=True)
        scores = cross_val_score(cascade, X, y, cv=cv, params={"sample_weight": w})
        expected = []
        for train, test in cv.split(X, y):
            fitted = clone(cascade).fit(X[train], y[train], sample_weight=w[train])
            lr = LogisticRegression(max_iter=1000).fit(X[train], y[train], sample_weight=w[train])
            np.testing.assert_allclose(fitted.named_stages_["lr"].estimator_.coef_, lr.coef_)
            expected.append(fitted.score(X[test], y[test], sample_weight=w[test]))
        unweighted = cross_val_score(
            clone(cascade).set_score_request(sample_weight=False), X, y, cv=cv
        )
    np.testing.assert_allclose(scores, expected)
    assert not np.allclose(scores, unweighted)


def test_routing_refuses_weights_a_stage_did_not_ask_for(data):
    X, y, w = data
    with sklearn.config_context(enable_metadata_routing=True):
        cascade = CascadeClassifier(_stages())
        with pytest.raises(ValueError, match="sample_weight"):
            cascade.fit(X, y, sample_weight=w)
