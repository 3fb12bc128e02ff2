import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC

from cascademl import NotFittedError, SklearnStage, Stage, StageInterfaceError
from cascademl.stages import check_stage, is_fitted, stage_cost
from strategies import TableStage


def test_protocol_is_structural():
    stage = TableStage(np.ones((1, 2)) / 2, np.array([0, 1]))
    assert isinstance(stage, Stage)
    assert not isinstance(object(), Stage)


def test_sklearn_stage_fits_a_clone_and_predicts():
    X, y = load_iris(return_X_y=True)
    inner = LogisticRegression(max_iter=500)
    stage = SklearnStage(inner).fit(X, y)
    assert not hasattr(inner, "coef_")
    assert stage.classes_.tolist() == [0, 1, 2]
    proba = stage.predict_proba(X[:3])
    assert proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert stage.predict(X[:3]).tolist() == [0, 0, 0]


def test_sklearn_stage_adopts_a_fitted_estimator_without_refitting():
    X, y = load_iris(return_X_y=True)
    inner = LogisticRegression(max_iter=500).fit(X, y)
    stage = SklearnStage(inner)
    assert is_fitted(stage)
    assert stage.fit(X[:10], y[:10]).estimator_ is inner
    assert stage.classes_.tolist() == [0, 1, 2]


def test_unfitted_sklearn_stage_raises_not_fitted():
    with pytest.raises(NotFittedError, match="LogisticRegression"):
        SklearnStage(LogisticRegression()).predict_proba(np.zeros((1, 4)))


def test_check_stage_hints_at_calibration_for_decision_function_models():
    with pytest.raises(StageInterfaceError, match=r"CalibratedClassifierCV\(SVC\(\)"):
        check_stage(SVC(), "svm", fitted=False)


def test_check_stage_requires_classes_when_fitted():
    class NoClasses:
        def predict_proba(self, X):
            return np.ones((len(X), 2)) / 2

    with pytest.raises(StageInterfaceError, match="no classes_"):
        check_stage(NoClasses(), "x", fitted=True)


def test_stage_cost_hook():
    assert stage_cost(object()) == 1.0
    assert stage_cost(SklearnStage(LogisticRegression(), cost_per_sample=2.5)) == 2.5
