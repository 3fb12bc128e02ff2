import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.datasets import load_iris
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression, Perceptron
from sklearn.naive_bayes import GaussianNB
from sklearn.tree import DecisionTreeClassifier

from cascademl import (
    CascadeClassifier,
    CascadeMLError,
    ClassMismatchError,
    ConfidencePolicy,
    InputError,
    NotFittedError,
    PolicyError,
    SklearnStage,
    StageInterfaceError,
    StageOutputError,
)
from strategies import TableStage, proba_tables, sample_ids, table_stages, thresholds

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _fit(tables, ts, **kwargs):
    stages = table_stages(tables)
    cascade = CascadeClassifier(stages, policy=ConfidencePolicy(thresholds=ts), **kwargs)
    ids = sample_ids(tables.shape[1])
    classes = stages[0][1].classes_
    return cascade.fit(ids, classes[np.arange(tables.shape[1]) % len(classes)]), ids


@PROPERTY
@given(tables=proba_tables(), data=st.data(), combine=st.sampled_from(["vote", "last", "mean"]))
def test_probabilities_sum_to_one_and_each_sample_ends_once(tables, data, combine):
    ts = data.draw(thresholds(tables.shape[0]))
    cascade, ids = _fit(tables, ts, combine=combine)
    result = cascade.route(ids)
    np.testing.assert_allclose(result.proba.sum(axis=1), 1.0)
    assert result.exit_counts.sum() == tables.shape[1]
    assert np.all((result.exit_stage >= 0) & (result.exit_stage < tables.shape[0]))
    exits_seen = result.visited.sum(axis=0) - 1
    np.testing.assert_array_equal(exits_seen, result.exit_stage)
    np.testing.assert_array_equal(result.labels, cascade.predict(ids))


@PROPERTY
@given(tables=proba_tables(min_stages=2), data=st.data())
def test_threshold_zero_at_stage_one_reproduces_stage_one(tables, data):
    ts = [0.0, *data.draw(thresholds(tables.shape[0] - 1))]
    cascade, ids = _fit(tables, ts)
    result = cascade.route(ids)
    assert np.all(result.exit_stage == 0)
    np.testing.assert_allclose(result.proba, tables[0])
    assert cascade.stages_[1].calls == []  # later stages never run


@PROPERTY
@given(tables=proba_tables(min_stages=2), combine=st.sampled_from(["vote", "last"]))
def test_thresholds_above_one_send_every_sample_to_the_last_stage(tables, combine):
    cascade, ids = _fit(tables, [1.01] * tables.shape[0], combine=combine)
    result = cascade.route(ids)
    assert np.all(result.exit_stage == tables.shape[0] - 1)
    assert result.visited.all()
    if combine == "last":
        np.testing.assert_allclose(result.proba, tables[-1])


@PROPERTY
@given(tables=proba_tables(min_stages=2), data=st.data())
def test_raising_a_threshold_never_lowers_escalations(tables, data):
    n_stages = tables.shape[0]
    low = data.draw(thresholds(n_stages))
    stage = data.draw(st.integers(0, n_stages - 1))
    high = list(low)
    high[stage] = data.draw(st.floats(low[stage], 1.5))
    before = _fit(tables, low)[0].route(sample_ids(tables.shape[1]))
    after = _fit(tables, high)[0].route(sample_ids(tables.shape[1]))
    assert np.all(after.exit_stage >= before.exit_stage)
    assert np.sum(after.exit_stage > 0) >= np.sum(before.exit_stage > 0)


@PROPERTY
@given(tables=proba_tables(), data=st.data())
def test_results_do_not_depend_on_batch_size(tables, data):
    ts = data.draw(thresholds(tables.shape[0]))
    batch = data.draw(st.integers(1, tables.shape[1] + 2))
    cascade, ids = _fit(tables, ts)
    whole = cascade.route(ids)
    chunked = cascade.route(ids, batch_size=batch)
    np.testing.assert_array_equal(whole.labels, chunked.labels)
    np.testing.assert_allclose(whole.proba, chunked.proba)
    np.testing.assert_array_equal(whole.exit_stage, chunked.exit_stage)
    np.testing.assert_array_equal(whole.visited, chunked.visited)


@PROPERTY
@given(tables=proba_tables(), data=st.data())
def test_permuting_inputs_permutes_outputs(tables, data):
    ts = data.draw(thresholds(tables.shape[0]))
    perm = np.array(data.draw(st.permutations(range(tables.shape[1]))))
    cascade, ids = _fit(tables, ts)
    whole = cascade.route(ids)
    shuffled = cascade.route(ids[perm])
    np.testing.assert_array_equal(whole.labels[perm], shuffled.labels)
    np.testing.assert_allclose(whole.proba[perm], shuffled.proba)
    np.testing.assert_array_equal(whole.exit_stage[perm], shuffled.exit_stage)


def test_each_stage_is_called_once_per_batch_with_only_escalated_samples():
    tables = np.array(
        [
            [[0.95, 0.05], [0.6, 0.4], [0.5, 0.5], [0.99, 0.01]],
            [[0.5, 0.5], [0.9, 0.1], [0.3, 0.7], [0.5, 0.5]],
            [[0.5, 0.5], [0.5, 0.5], [0.2, 0.8], [0.5, 0.5]],
        ]
    )
    cascade, ids = _fit(tables, [0.9, 0.9])
    result = cascade.route(ids)
    assert [s.calls for s in cascade.stages_] == [[4], [2], [1]]
    assert result.exit_stage.tolist() == [0, 1, 2, 0]
    assert result.calls_saved == pytest.approx(1 - 7 / 12)
    np.testing.assert_array_equal(np.isnan(result.stage_proba[:, :, 0]), ~result.visited)


def test_string_labels_and_column_reordering():
    classes_a = np.array(["b", "a"])  # a stage whose columns are in another order
    classes_b = np.array(["a", "b"])
    s1 = TableStage(np.array([[0.2, 0.8]]), classes_a)  # says "a" with 0.8
    s2 = TableStage(np.array([[0.9, 0.1]]), classes_b)
    cascade = CascadeClassifier([("one", s1), ("two", s2)], policy=ConfidencePolicy(thresholds=0.7))
    cascade.fit(np.zeros((1, 1), dtype=int), ["a"])
    assert cascade.classes_.tolist() == ["a", "b"]
    result = cascade.route(np.zeros((1, 1), dtype=int))
    assert result.labels.tolist() == ["a"]
    np.testing.assert_allclose(result.proba, [[0.8, 0.2]])


def test_route_result_is_frozen():
    X, y = load_iris(return_X_y=True)
    result = CascadeClassifier([("nb", GaussianNB())]).fit(X, y).route(X[:5])
    with pytest.raises(ValueError, match="read-only"):
        result.proba[0, 0] = 1.0
    with pytest.raises(AttributeError):
        result.labels = None  # type: ignore[misc]


def test_visited_proba_lists_only_visited_stages():
    tables = np.array([[[0.6, 0.4]], [[0.9, 0.1]], [[0.5, 0.5]]])
    cascade, ids = _fit(tables, [0.8, 0.8])
    result = cascade.route(ids)
    assert list(result.visited_proba(0)) == ["s0", "s1"]


# --------------------------------------------------------------- sklearn stages
@pytest.fixture(scope="module")
def iris():
    return load_iris(return_X_y=True)


def test_fitted_and_frozen_stages_are_never_refit(iris):
    X, y = iris
    fitted = LogisticRegression(max_iter=500).fit(X, y)
    coef = fitted.coef_.copy()
    frozen = FrozenEstimator(DecisionTreeClassifier(random_state=0).fit(X, y))
    cascade = CascadeClassifier([("lr", fitted), ("tree", frozen)]).fit(X[:20], y[:20])
    assert cascade.stages_[0].estimator_ is fitted
    assert cascade.stages_[1].estimator_ is frozen
    np.testing.assert_array_equal(fitted.coef_, coef)


def test_unfitted_stages_are_cloned_not_mutated(iris):
    X, y = iris
    lr = LogisticRegression(max_iter=500)
    cascade = CascadeClassifier([("lr", lr)]).fit(X, y)
    assert not hasattr(lr, "coef_")
    assert hasattr(cascade.named_stages_["lr"].estimator_, "coef_")


def test_clone_keeps_a_fitted_sklearnstage(iris):
    X, y = iris
    fitted = LogisticRegression(max_iter=500).fit(X, y)
    cascade = CascadeClassifier([("lr", SklearnStage(fitted))])
    copy = clone(cascade)
    assert copy.stages[0][1].estimator is fitted


def test_get_and_set_params_reach_into_stages(iris):
    X, y = iris
    cascade = CascadeClassifier([("lr", LogisticRegression()), ("nb", GaussianNB())])
    params = cascade.get_params()
    assert params["lr__C"] == 1.0
    cascade.set_params(lr__C=0.5, nb=DecisionTreeClassifier(max_depth=2), combine="last")
    assert cascade.stages[0][1].C == 0.5
    assert isinstance(cascade.stages[1][1], DecisionTreeClassifier)
    assert cascade.combine == "last"
    assert clone(cascade).get_params()["nb__max_depth"] == 2
    assert cascade.fit(X, y).score(X, y) > 0.8


# --------------------------------------------------------------- bad input
def test_predict_before_fit_raises_both_not_fitted_errors(iris):
    X, _ = iris
    cascade = CascadeClassifier([("nb", GaussianNB())])
    with pytest.raises(NotFittedError, match="not fitted yet"):
        cascade.predict(X)
    with pytest.raises(SklearnNotFittedError):
        cascade.route(X)


def test_stage_without_predict_proba_is_named(iris):
    X, y = iris
    cascade = CascadeClassifier([("nb", GaussianNB()), ("perc", Perceptron())])
    with pytest.raises(StageInterfaceError, match=r"stage 'perc' \(Perceptron\).*Calibrated"):
        cascade.fit(X, y)


def test_mismatched_class_sets_between_stages(iris):
    X, y = iris
    two_class = LogisticRegression().fit(X[y < 2], y[y < 2])
    cascade = CascadeClassifier([("all", GaussianNB()), ("two", two_class)])
    with pytest.raises(ClassMismatchError, match=r"stage 'two' has classes \[0, 1\]"):
        cascade.fit(X, y)


def test_labels_unknown_to_prefitted_stages(iris):
    X, y = iris
    two_class = LogisticRegression().fit(X[y < 2], y[y < 2])
    with pytest.raises(ClassMismatchError, match=r"y holds classes \[2\]"):
        CascadeClassifier([("two", two_class)]).fit(X, y)


@pytest.mark.parametrize("bad", [np.nan, -0.5])
def test_nan_or_negative_probabilities_from_a_stage(bad):
    table = np.array([[0.5, 0.5], [bad, 1.0 - bad]])
    stage = TableStage(table, np.array([0, 1]))
    cascade = CascadeClassifier([("bad", stage)]).fit(sample_ids(2), [0, 1])
    with pytest.raises(StageOutputError, match="stage 'bad'"):
        cascade.predict(sample_ids(2))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"policy": ConfidencePolicy(thresholds=(0.5, 0.5, 0.5))}, "3 values"),
        ({"policy": {"thresholds": 0.5}}, "ConfidencePolicy or None"),
        ({"combine": "median"}, "'median'"),
        ({"escalation_weight": 2.0}, r"\[0, 1\]"),
    ],
)
def test_invalid_parameters_raise_policy_error_in_fit(iris, kwargs, match):
    X, y = iris
    cascade = CascadeClassifier([("nb", GaussianNB()), ("lr", LogisticRegression())], **kwargs)
    with pytest.raises(PolicyError, match=match):
        cascade.fit(X, y)


def test_thresholds_out_of_range_raise_on_construction():
    with pytest.raises(PolicyError, match="must be >= 0"):
        ConfidencePolicy(thresholds=[0.5, -1.0])


@pytest.mark.parametrize(
    ("stages", "match"),
    [
        ([], "non-empty list"),
        ([GaussianNB()], r"\(name, stage\) pairs"),
        ([("a", GaussianNB()), ("a", GaussianNB())], "unique"),
        ([("a__b", GaussianNB())], "'__'"),
        ([("combine", GaussianNB())], "clashes"),
    ],
)
def test_malformed_stage_lists(iris, stages, match):
    X, y = iris
    with pytest.raises(StageInterfaceError, match=match):
        CascadeClassifier(stages).fit(X, y)


def test_invalid_batch_size(iris):
    X, y = iris
    cascade = CascadeClassifier([("nb", GaussianNB())]).fit(X, y)
    with pytest.raises(PolicyError, match="batch_size"):
        cascade.route(X, batch_size=0)


# --------------------------------------------------------------------------- bad stages in fit
class _FixedStage:
    """A fitted stage with the given ``classes_`` and uniform probabilities."""

    def __init__(self, classes):
        self.classes_ = classes

    def predict_proba(self, X):
        n = len(X)
        k = np.asarray(self.classes_).shape[-1]
        return np.full((n, k), 1.0 / k)


def test_duplicate_classes_in_a_stage_are_named(iris):
    X, y = iris
    stages = [("lr", LogisticRegression(max_iter=500)), ("dup", _FixedStage([0, 1, 1, 2]))]
    with pytest.raises(ClassMismatchError, match=r"stage 'dup' .*duplicate labels \[1\]"):
        CascadeClassifier(stages).fit(X, y)


def test_two_dimensional_classes_are_named(iris):
    X, y = iris
    stages = [("multi", _FixedStage(np.array([[0, 1, 2], [0, 1, 2]])))]
    with pytest.raises(ClassMismatchError, match=r"stage 'multi' .*shape \(2, 3\)"):
        CascadeClassifier(stages).fit(X, y)


def test_x_and_y_of_different_lengths_are_named_for_custom_stages():
    torch = pytest.importorskip("torch")
    stage = _FixedStage(np.array([0, 1]))
    cascade = CascadeClassifier([("net", stage)])
    with pytest.raises(PolicyError, match="X has 4 samples but y has 2 labels"):
        cascade.fit(torch.zeros(4, 3, 8, 8), [0, 1])
    with pytest.raises(PolicyError, match="X has 3 samples but y has 2 labels"):
        cascade.fit(["a.png", "b.png", "c.png"], [0, 1])


def test_fit_validates_batch_size_and_accepts_numpy_integers(iris):
    X, y = iris
    cascade = CascadeClassifier([("nb", GaussianNB())], batch_size=np.int64(7)).fit(X, y)
    assert cascade.batch_size == np.int64(7)  # stored unchanged
    with pytest.raises(PolicyError, match="batch_size must be a positive integer or None, got 0"):
        CascadeClassifier([("nb", GaussianNB())], batch_size=0).fit(X, y)


@pytest.mark.parametrize(
    ("method", "bad", "match"),
    [
        ("predict", np.zeros(4), "Expected a 2D array"),
        ("predict_proba", np.zeros(4), "Expected a 2D array"),
        ("route", np.zeros(4), "Expected a 2D array"),
        ("predict", np.zeros((3, 2)), "X has 2 features, but CascadeClassifier is expecting 4"),
        ("predict_or_abstain", np.zeros((3, 5)), "X has 5 features"),
    ],
)
def test_inputs_unlike_fit_raise_the_projects_error(method, bad, match):
    X, y = load_iris(return_X_y=True)
    cascade = CascadeClassifier([("nb", GaussianNB())], reject_threshold=0.5).fit(X, y)
    with pytest.raises(InputError, match=match) as info:
        getattr(cascade, method)(bad)
    # Both the project's error and the ValueError scikit-learn's checks expect.
    assert isinstance(info.value, CascadeMLError)
    assert isinstance(info.value, ValueError)
