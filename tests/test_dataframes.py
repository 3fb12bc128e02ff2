"""DataFrames reach the stages as given: column selection by name, string columns, names kept."""

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_iris
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from cascademl import CascadeClassifier, ConfidencePolicy

pd = pytest.importorskip("pandas")

SEEN: list[type] = []


class RecordingLR(LogisticRegression):
    """LogisticRegression that records the type of every ``predict_proba`` input."""

    def predict_proba(self, X):
        SEEN.append(type(X))
        return super().predict_proba(X)


@pytest.fixture(scope="module")
def frame():
    data = load_iris(as_frame=True)
    X = data.frame.drop(columns="target").rename(columns=lambda c: c.replace(" (cm)", ""))
    X["colour"] = np.where(data.target.to_numpy() == 0, "red", "blue")
    X.index = X.index * 10 + 5  # labels that are not positions
    return X, data.target_names[data.target.to_numpy()]


def _by_name():
    columns = ColumnTransformer(
        [
            ("num", StandardScaler(), ["petal length", "petal width"]),
            ("cat", OneHotEncoder(), ["colour"]),
        ]
    )
    return make_pipeline(columns, LogisticRegression(max_iter=500))


def test_pipeline_selecting_columns_by_name_with_a_string_column(frame):
    X, y = frame
    cascade = CascadeClassifier(
        [("petals", _by_name()), ("all", make_pipeline(_by_name()))],
        policy=ConfidencePolicy(thresholds=0.95),
        batch_size=40,
    ).fit(X, y)
    result = cascade.route(X)
    assert 0 < result.exit_counts[0] < len(X)  # some rows escalate, as a DataFrame slice
    assert cascade.score(X, y) > 0.9
    np.testing.assert_array_equal(cascade.feature_names_in_, X.columns.to_numpy())
    assert cascade.n_features_in_ == 5


def test_escalated_rows_reach_the_stage_as_a_dataframe(frame):
    X, y = frame
    numeric = X.drop(columns="colour")
    SEEN.clear()
    cascade = CascadeClassifier(
        [("nb", GaussianNB()), ("lr", RecordingLR(max_iter=500))],
        policy=ConfidencePolicy(thresholds=0.99),
    ).fit(numeric, y)
    SEEN.clear()
    result = cascade.route(numeric)
    assert result.exit_counts[1] > 0
    assert [pd.DataFrame] == SEEN


def test_frozen_stage_fitted_on_a_dataframe_does_not_warn(frame):
    X, y = frame
    numeric = X.drop(columns="colour")
    frozen = FrozenEstimator(GaussianNB().fit(numeric, y))
    # The suite turns warnings into errors: a feature-name warning would fail here.
    cascade = CascadeClassifier([("frozen", frozen), ("lr", LogisticRegression(max_iter=500))]).fit(
        numeric, y
    )
    cascade.predict(numeric)
    np.testing.assert_array_equal(cascade.feature_names_in_, numeric.columns.to_numpy())


def test_columns_must_match_those_seen_in_fit(frame):
    X, y = frame
    numeric = X.drop(columns="colour")
    cascade = CascadeClassifier([("nb", GaussianNB())]).fit(numeric, y)
    renamed = numeric.rename(columns={"sepal length": "length"})
    with pytest.raises(ValueError, match="feature names should match"):
        cascade.predict(renamed)
    with (
        pytest.warns(UserWarning, match="fitted with feature names"),
        pytest.raises(ValueError, match="has 3 features"),
    ):
        cascade.predict(numeric.iloc[:, :3].to_numpy())


class OnlyFrames(ClassifierMixin, BaseEstimator):
    """A classifier that refuses anything but a DataFrame, as a column-name stage would."""

    def fit(self, X, y):
        if not isinstance(X, pd.DataFrame):
            msg = f"expected a DataFrame, got {type(X).__name__}"
            raise TypeError(msg)
        self.inner_ = GaussianNB().fit(X.select_dtypes("number"), y)
        self.classes_ = self.inner_.classes_
        return self

    def predict_proba(self, X):
        if not isinstance(X, pd.DataFrame):
            msg = f"expected a DataFrame, got {type(X).__name__}"
            raise TypeError(msg)
        return self.inner_.predict_proba(X.select_dtypes("number"))


def test_fit_and_predict_keep_the_dataframe(frame):
    X, y = frame
    cascade = CascadeClassifier([("frames", OnlyFrames()), ("again", OnlyFrames())]).fit(X, y)
    assert cascade.predict(X).shape == (len(X),)
