from typing import ClassVar

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.model_selection import StratifiedKFold, cross_val_predict, train_test_split
from sklearn.naive_bayes import GaussianNB
from sklearn.tree import DecisionTreeClassifier

import cascademl
from cascademl import (
    CascadeClassifier,
    CascadeClassifierCV,
    NotFittedError,
    PolicyError,
    SklearnStage,
    StageInterfaceError,
)
from cascademl.tuning import score_thresholds

COSTS = [1.0, 2.0, 8.0]


class CountingTree(DecisionTreeClassifier):
    """A decision tree that counts its fits (class-wide, since stages are cloned)."""

    fits = 0

    def fit(self, X, y, sample_weight=None, check_input=True):
        type(self).fits += 1
        return super().fit(X, y, sample_weight=sample_weight, check_input=check_input)


def _data(n_samples=900, seed=0):
    return make_classification(
        n_samples=n_samples,
        n_features=12,
        n_informative=6,
        n_classes=3,
        n_clusters_per_class=1,
        random_state=seed,
    )


def _stages():
    return [
        ("nb", GaussianNB()),
        ("shallow", DecisionTreeClassifier(max_depth=2, random_state=0)),
        ("deep", DecisionTreeClassifier(max_depth=8, min_samples_leaf=5, random_state=0)),
    ]


@pytest.fixture(scope="module")
def fitted():
    X, y = _data()
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.4, random_state=0)
    model = CascadeClassifierCV(_stages(), cv=3, stage_cost=COSTS, max_cost=5.0).fit(
        X_train, y_train
    )
    return model, X_train, y_train, X_test, y_test


def test_is_exported():
    assert cascademl.CascadeClassifierCV is CascadeClassifierCV
    assert "CascadeClassifierCV" in cascademl.__all__


def test_fits_and_exposes_the_tuned_rule_and_frontier(fitted):
    model, _, y_train, _, _ = fitted
    assert isinstance(model.cascade_, CascadeClassifier)
    np.testing.assert_array_equal(model.classes_, np.unique(y_train))
    assert list(model.named_stages_) == ["nb", "shallow", "deep"]
    result = model.tuning_result_
    assert result.mean_cost <= 5.0 + 1e-9
    assert model.rule_ == result.rule
    assert model.policy_ == result.policy
    assert model.cascade_.combine == model.rule_.combine
    # The frontier as a cv_results_-style dict of equally long arrays.
    n = len(result.frontier)
    assert n > 1
    assert {k: len(v) for k, v in model.cv_results_.items()} == dict.fromkeys(
        ("thresholds", "score", "mean_cost", "is_chosen"), n
    )
    assert int(model.cv_results_["is_chosen"].sum()) == 1
    assert model.cv_results_["is_chosen"][model.best_index_]
    assert model.best_score_ == result.score
    assert np.all(np.diff(model.cv_results_["mean_cost"]) > 0)


def test_the_rule_is_tuned_on_out_of_fold_probabilities(fitted):
    model, X_train, y_train, _, _ = fitted
    folds = StratifiedKFold(3)
    expected = cross_val_predict(GaussianNB(), X_train, y_train, cv=folds, method="predict_proba")
    np.testing.assert_allclose(model.oof_proba_[0], expected)
    point = score_thresholds(
        model.oof_proba_, y_train, model.rule_, classes=model.classes_, stage_cost=COSTS
    )
    assert point.score == pytest.approx(model.best_score_, abs=1e-12)


def test_budget_is_respected_on_held_out_data(fitted):
    model, _, _, X_test, y_test = fitted
    result = model.route(X_test)
    assert result.mean_cost <= 5.0 * 1.1
    np.testing.assert_array_equal(model.predict(X_test), result.labels)
    np.testing.assert_allclose(model.predict_proba(X_test), result.proba)
    # Better than the cheap stages, and close to the deep stage alone.
    assert model.score(X_test, y_test) >= model.stages_[-1].score(X_test, y_test) - 0.05


def test_each_stage_is_fitted_once_per_fold_and_once_on_all_data():
    X, y = _data(300)
    CountingTree.fits = 0
    CascadeClassifierCV(
        [("nb", GaussianNB()), ("tree", CountingTree(max_depth=4, random_state=0))], cv=4
    ).fit(X, y)
    assert CountingTree.fits == 4 + 1


def test_clone_and_get_params_round_trip():
    model = CascadeClassifierCV(_stages(), cv=4, max_cost=3.0, escalation_weight_grid=(0, 0.5))
    params = model.get_params(deep=False)
    copy = clone(model)
    assert copy.get_params(deep=False).keys() == params.keys()
    assert copy.cv == 4
    assert copy.max_cost == 3.0
    assert copy.escalation_weight_grid == (0, 0.5)
    assert [name for name, _ in copy.stages] == ["nb", "shallow", "deep"]
    assert copy.set_params(max_cost=2.0).max_cost == 2.0
    assert not hasattr(copy, "cascade_")


def test_escalation_weight_grid_picks_a_weight_from_the_grid():
    X, y = _data(400, seed=1)
    model = CascadeClassifierCV(
        _stages(),
        cv=3,
        stage_cost=COSTS,
        max_cost=4.0,
        combine="vote",
        escalation_weight_grid=(0.0, 0.25, 0.5),
    ).fit(X, y)
    assert model.combine_ == "vote"
    (weight,) = set(model.rule_.escalation_weights)
    assert weight in (0.0, 0.25, 0.5)
    assert model.cascade_.escalation_weight == weight


def test_sklearn_stage_costs_are_used():
    X, y = _data(300)
    stages = [
        ("nb", SklearnStage(GaussianNB(), cost_per_sample=1.0)),
        ("tree", SklearnStage(DecisionTreeClassifier(random_state=0), cost_per_sample=9.0)),
    ]
    model = CascadeClassifierCV(stages, cv=3, max_cost=4.0).fit(X, y)
    assert model.tuning_result_.stage_cost == (1.0, 9.0)
    assert model.route(X).stage_cost.tolist() == [1.0, 9.0]


def test_infeasible_budget_and_bad_stages_raise():
    X, y = _data(200)
    with pytest.raises(PolicyError, match="max_cost"):
        CascadeClassifierCV(_stages(), cv=3, stage_cost=COSTS, max_cost=0.5).fit(X, y)
    with pytest.raises(StageInterfaceError, match="predict_proba"):
        CascadeClassifierCV([("a", object())], cv=3).fit(X, y)
    with pytest.raises(StageInterfaceError, match="unique"):
        CascadeClassifierCV([("a", GaussianNB()), ("a", GaussianNB())], cv=3).fit(X, y)
    with pytest.raises(NotFittedError, match="not fitted"):
        CascadeClassifierCV(_stages()).predict(X)


def test_works_on_a_dataframe():
    pd = pytest.importorskip("pandas")
    X, y = _data(300)
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    model = CascadeClassifierCV(_stages(), cv=3).fit(frame, y)
    assert list(model.feature_names_in_) == list(frame.columns)
    assert model.predict(frame).shape == (300,)


# --------------------------------------------------------------------------- fit metadata, n_jobs
def _weights(n, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.2, 3.0, size=n)
    w[rng.random(n) < 0.3] = 0.0  # rows left out by their weight: visible in every stage
    return w


def _oof(estimator, X, y, splits, **params):
    return cross_val_predict(estimator, X, y, cv=splits, method="predict_proba", params=params)


def test_sample_weight_reaches_every_stage_in_every_fold_and_the_refit():
    X, y = _data(300)
    w = _weights(len(y))
    splits = list(StratifiedKFold(3).split(X, y))
    model = CascadeClassifierCV(_stages(), cv=3).fit(X, y, sample_weight=w)
    for s, (name, estimator) in enumerate(_stages()):
        weighted = _oof(clone(estimator), X, y, splits, sample_weight=w)
        np.testing.assert_allclose(model.oof_proba_[s], weighted, err_msg=name)
        refit = clone(estimator).fit(X, y, sample_weight=w)
        np.testing.assert_allclose(model.stages_[s].predict_proba(X), refit.predict_proba(X))
    assert not np.allclose(model.oof_proba_[0], _oof(GaussianNB(), X, y, splits))


def test_a_stage_that_takes_no_sample_weight_is_named():
    from sklearn.neighbors import KNeighborsClassifier

    X, y = _data(120)
    stages = [("nb", GaussianNB()), ("knn", KNeighborsClassifier())]
    with pytest.raises(StageInterfaceError, match=r"stage 'knn' .*does not accept sample_weight"):
        CascadeClassifierCV(stages, cv=3).fit(X, y, sample_weight=np.ones(len(y)))
    with pytest.raises(TypeError, match="enable_metadata_routing"):
        CascadeClassifierCV(_stages(), cv=3).fit(X, y, groups=np.arange(len(y)) % 4)


def test_metadata_routing_sends_weights_to_the_stages_that_ask_and_groups_to_the_splitter():
    import sklearn
    from sklearn.model_selection import GroupKFold

    X, y = _data(300)
    w = _weights(len(y), seed=1)
    groups = np.arange(len(y)) % 7
    with sklearn.config_context(enable_metadata_routing=True):
        nb = GaussianNB().set_fit_request(sample_weight=True)
        tree = DecisionTreeClassifier(max_depth=4, random_state=0).set_fit_request(
            sample_weight=False
        )
        model = CascadeClassifierCV([("nb", nb), ("tree", tree)], cv=GroupKFold(3)).fit(
            X, y, sample_weight=w, groups=groups
        )
        splits = list(GroupKFold(3).split(X, y, groups))
        np.testing.assert_allclose(
            model.oof_proba_[0], _oof(clone(nb), X, y, splits, sample_weight=w)
        )
        np.testing.assert_allclose(model.oof_proba_[1], _oof(clone(tree), X, y, splits))
        refit = GaussianNB().fit(X, y, sample_weight=w)
        np.testing.assert_allclose(model.stages_[0].predict_proba(X), refit.predict_proba(X))
        # A stage that did not say whether it wants the weights: scikit-learn's error.
        with pytest.raises(ValueError, match="sample_weight"):
            CascadeClassifierCV([("nb", GaussianNB())], cv=3).fit(X, y, sample_weight=w)
    for train, test in splits:
        assert not set(groups[train]) & set(groups[test])


class ThreadRecordingTree(DecisionTreeClassifier):
    """A decision tree that records the thread each fit runs in."""

    threads: ClassVar[list[str]] = []

    def fit(self, X, y, sample_weight=None, check_input=True):
        import threading

        type(self).threads.append(threading.current_thread().name)
        return super().fit(X, y, sample_weight=sample_weight, check_input=check_input)


@pytest.mark.parametrize("n_jobs", [None, 2])
def test_n_jobs_runs_the_folds_in_parallel_with_the_same_result(n_jobs):
    from joblib import parallel_config

    X, y = _data(300)
    stages = [("nb", GaussianNB()), ("tree", ThreadRecordingTree(max_depth=4, random_state=0))]
    ThreadRecordingTree.threads = []
    with parallel_config(backend="threading"):
        model = CascadeClassifierCV(stages, cv=4, n_jobs=n_jobs).fit(X, y)
    serial = CascadeClassifierCV(stages, cv=4).fit(X, y)
    np.testing.assert_array_equal(model.oof_proba_, serial.oof_proba_)
    in_workers = [t for t in ThreadRecordingTree.threads[:4] if t != "MainThread"]
    assert len(ThreadRecordingTree.threads) == 4 + 1 + 4 + 1
    assert (len(in_workers) > 0) == (n_jobs == 2)


def test_cross_val_score_routes_sample_weight_to_fit_and_score():
    import sklearn
    from sklearn.model_selection import KFold, cross_val_score

    X, y = _data(240)
    w = _weights(len(y), seed=2)
    outer = KFold(3, shuffle=True, random_state=0)
    with sklearn.config_context(enable_metadata_routing=True):
        model = CascadeClassifierCV(
            [("nb", GaussianNB().set_fit_request(sample_weight=True))], cv=3
        ).set_score_request(sample_weight=True)
        scores = cross_val_score(model, X, y, cv=outer, params={"sample_weight": w})
        expected = [
            clone(model)
            .fit(X[train], y[train], sample_weight=w[train])
            .score(X[test], y[test], sample_weight=w[test])
            for train, test in outer.split(X)
        ]
    np.testing.assert_allclose(scores, expected)
