from dataclasses import dataclass

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from sklearn.calibration import CalibrationDisplay, calibration_curve  # noqa: E402
from sklearn.datasets import make_classification  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix  # noqa: E402
from sklearn.naive_bayes import GaussianNB  # noqa: E402
from sklearn.tree import DecisionTreeClassifier  # noqa: E402

from cascademl import CascadeClassifier, ConfidencePolicy, PolicyError, SklearnStage  # noqa: E402
from cascademl.plot import CostAccuracyDisplay, ExitDisplay  # noqa: E402
from cascademl.tuning import (  # noqa: E402
    search_orders,
    single_stage_scores,
    stage_probabilities,
    tune_cascade,
)

COSTS = [1.0, 2.0, 5.0]
NAMES = ["nb", "tree", "lr"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _data(n_classes):
    X, y = make_classification(
        n_samples=600,
        n_features=10,
        n_informative=5,
        n_classes=n_classes,
        random_state=0,
    )
    return X[:300], y[:300], X[300:], y[300:]


def _cascade(X, y, threshold=0.8):
    stages = [
        ("nb", SklearnStage(GaussianNB(), cost_per_sample=1.0)),
        (
            "tree",
            SklearnStage(DecisionTreeClassifier(max_depth=3, random_state=0), cost_per_sample=2.0),
        ),
        ("lr", SklearnStage(LogisticRegression(max_iter=500), cost_per_sample=5.0)),
    ]
    return CascadeClassifier(stages, policy=ConfidencePolicy(thresholds=threshold)).fit(X, y)


@pytest.fixture(scope="module")
def fitted():
    X_train, y_train, X_val, y_val = _data(3)
    return _cascade(X_train, y_train), X_val, y_val


@dataclass(frozen=True)
class _PathPoint:
    mean_cost: float
    estimate: float
    passed: bool


@dataclass(frozen=True)
class _Certificate:
    """The fields of cascademl.certify.Certificate that the display reads."""

    rule: object
    guarantee: str
    target: float
    delta: float
    certified: bool
    bound: float
    estimate: float
    mean_cost: float
    path: tuple[_PathPoint, ...]


def _certificate(*, certified=True):
    return _Certificate(
        rule=None,
        guarantee="accuracy",
        target=0.8,
        delta=0.05,
        certified=certified,
        bound=0.82,
        estimate=0.86,
        mean_cost=2.5,
        path=(_PathPoint(mean_cost=2.5, estimate=0.86, passed=True),),
    )


# --------------------------------------------------------------------------- frontier
def test_frontier_from_estimator_draws_tuner_frontier_stages_and_current_rule(fitted):
    cascade, X, y = fitted
    display = CostAccuracyDisplay.from_estimator(cascade, X, y)
    costs, scores = tune_cascade(cascade, X, y).frontier_arrays()
    np.testing.assert_allclose(display.line_.get_xdata(), costs)
    np.testing.assert_allclose(display.line_.get_ydata(), scores)
    alone = single_stage_scores(stage_probabilities(cascade, X), y, classes=cascade.classes_)
    np.testing.assert_allclose(display.stage_points_.get_offsets(), np.column_stack([COSTS, alone]))
    assert [t.get_text() for t in display.stage_labels_] == NAMES
    # The current rule is where the cascade itself lands on this data.
    result = cascade.route(X)
    ((x, score),) = display.rule_point_.get_xydata()
    assert score == pytest.approx(cascade.score(X, y))
    assert x == pytest.approx(result.mean_cost)
    assert display.rule_point_.get_label() == "current rule"
    assert display.certificate_ is None
    assert display.target_line_ is None
    assert display.ax_.get_xlabel() == "mean cost per sample"
    assert display.ax_.get_ylabel() == "accuracy"
    assert display.figure_ is display.ax_.figure
    legend = [t.get_text() for t in display.ax_.get_legend().get_texts()]
    assert legend == ["frontier", "stage alone", "current rule"]


def test_frontier_relative_costs_are_shares_of_every_stage(fitted):
    cascade, X, y = fitted
    display = CostAccuracyDisplay.from_estimator(cascade, X, y, relative=True, name="digits")
    costs, _ = tune_cascade(cascade, X, y).frontier_arrays()
    np.testing.assert_allclose(display.line_.get_xdata(), costs / sum(COSTS))
    np.testing.assert_allclose(display.stage_points_.get_offsets()[:, 0], np.array(COSTS) / 8.0)
    assert display.relative_ is True
    assert "share of running every stage" in display.ax_.get_xlabel()
    assert display.line_.get_label() == "digits"


def test_frontier_from_tuning_marks_the_chosen_point(fitted):
    cascade, X, y = fitted
    result = tune_cascade(cascade, X, y, max_cost=2.0, scoring="balanced_accuracy")
    display = CostAccuracyDisplay.from_tuning(result)
    costs, scores = result.frontier_arrays()
    np.testing.assert_allclose(display.line_.get_xydata(), np.column_stack([costs, scores]))
    np.testing.assert_allclose(display.rule_point_.get_xydata(), [[result.mean_cost, result.score]])
    assert display.rule_point_.get_label() == "tuned rule"
    np.testing.assert_allclose(
        display.stage_points_.get_offsets(),
        np.column_stack([result.stage_cost, result.stage_scores]),
    )
    assert display.ax_.get_ylabel() == "balanced_accuracy"


def test_frontier_from_order_search_draws_the_best_order(fitted):
    cascade, X, y = fitted
    search = search_orders(cascade, X, y, orders=[(0, 1, 2), (2, 1, 0)])
    display = CostAccuracyDisplay.from_tuning(search)
    np.testing.assert_allclose(display.line_.get_xdata(), search.best.frontier_arrays()[0])
    assert [t.get_text() for t in display.stage_labels_] == list(search.best.stage_names)


def test_frontier_from_proba_without_rule_marks_nothing(fitted):
    cascade, X, y = fitted
    proba = stage_probabilities(cascade, X)
    display = CostAccuracyDisplay.from_proba(proba, y, classes=cascade.classes_)
    assert display.rule_point_ is None
    assert [t.get_text() for t in display.stage_labels_] == ["stage0", "stage1", "stage2"]
    np.testing.assert_allclose(display.stage_points_.get_offsets()[:, 0], [1.0, 1.0, 1.0])


def test_certificate_is_marked_with_its_bound_and_target(fitted):
    cascade, X, y = fitted
    display = CostAccuracyDisplay.from_estimator(cascade, X, y, certificate=_certificate())
    data_line, _, (bars,) = display.certificate_.lines
    np.testing.assert_allclose(data_line.get_xydata(), [[2.5, 0.86]])
    np.testing.assert_allclose(bars.get_segments()[0], [[2.5, 0.82], [2.5, 0.86]])
    np.testing.assert_allclose(display.target_line_.get_ydata(), [0.8, 0.8])
    assert display.certificate_.get_label() == (
        "certified rule (accuracy >= 0.820 with 95% confidence)"
    )
    assert display.target_line_.get_label() == "target accuracy 0.8"


def test_certificate_in_relative_costs_and_uncertified(fitted):
    cascade, X, y = fitted
    result = tune_cascade(cascade, X, y)
    display = CostAccuracyDisplay.from_tuning(
        result, certificate=_certificate(certified=False), relative=True
    )
    data_line, _, _ = display.certificate_.lines
    np.testing.assert_allclose(data_line.get_xydata(), [[2.5 / 8.0, 0.86]])
    assert display.certificate_.get_label().startswith("not certified")


def test_frontier_draws_on_given_axes_and_overlays(fitted):
    cascade, X, y = fitted
    fig, ax = plt.subplots()
    first = CostAccuracyDisplay.from_estimator(cascade, X, y, ax=ax, name="vote")
    cascade_last = _cascade(*_data(3)[:2]).set_params(combine="last")
    second = CostAccuracyDisplay.from_estimator(cascade_last, X, y, ax=ax, name="last")
    assert first.ax_ is ax
    assert second.ax_ is ax
    assert first.figure_ is fig
    assert {line.get_label() for line in ax.get_lines()} >= {"vote", "last"}


def test_frontier_plot_rejects_mismatched_arrays():
    display = CostAccuracyDisplay([1.0, 2.0], [0.5], [1.0], [0.5], ["a"])
    with pytest.raises(PolicyError, match=r"frontier_score must hold 2 values"):
        display.plot()
    display = CostAccuracyDisplay([1.0], [0.5], [1.0, 2.0], [0.5, 0.6], ["a"])
    with pytest.raises(PolicyError, match=r"stage_names must hold 2 names, got 1"):
        display.plot()
    display = CostAccuracyDisplay([0.0], [0.5], [0.0], [0.5], ["a"])
    with pytest.raises(PolicyError, match=r"positive total stage cost, got 0"):
        display.plot(relative=True)


def test_frontier_plot_keywords_reach_the_artists():
    display = CostAccuracyDisplay(
        [1.0, 3.0], [0.5, 0.9], [1.0, 2.0], [0.5, 0.8], ["a", "b"], rule_cost=1.0, rule_score=0.5
    ).plot(annotate=False, frontier_kwargs={"color": "red"}, rule_kwargs={"label": "mine"})
    assert display.stage_labels_ == []
    assert display.line_.get_color() == "red"
    assert display.rule_point_.get_label() == "mine"
    assert display.line_.get_drawstyle() == "steps-post"


# --------------------------------------------------------------------------- exits
def test_exits_from_estimator_draw_counts_and_accuracy(fitted):
    cascade, X, y = fitted
    display = ExitDisplay.from_estimator(cascade, X, y)
    result = cascade.route(X)
    counts = result.exit_counts
    assert [bar.get_height() for bar in display.bars_] == counts.tolist()
    assert counts.sum() == len(y)
    right = result.labels == y
    expected = [right[result.exit_stage == s].mean() for s in range(3)]
    np.testing.assert_allclose(display.accuracy_points_.get_ydata(), expected)
    np.testing.assert_allclose(display.accuracy_points_.get_xdata(), [0, 1, 2])
    assert [t.get_text() for t in display.ax_.get_xticklabels()] == NAMES
    n = len(y)
    assert [t.get_text() for t in display.bar_labels_] == [f"{c} ({c / n:.0%})" for c in counts]
    assert display.ax_accuracy_ is not None
    assert display.ax_accuracy_.get_ylabel() == "accuracy of the samples it ends"
    assert display.ax_.get_ylabel() == "samples ended"


def test_exits_from_result_with_string_labels_and_an_unused_stage():
    X_train, y_train, X_val, y_val = _data(2)
    names = np.array(["benign", "malignant"])
    cascade = _cascade(X_train, names[y_train], threshold=0.0)  # the first stage ends all
    result = cascade.route(X_val)
    display = ExitDisplay.from_result(result, names[y_val])
    assert [bar.get_height() for bar in display.bars_] == [len(y_val), 0, 0]
    accuracy = display.accuracy_points_.get_ydata()
    assert accuracy[0] == pytest.approx(np.mean(result.labels == names[y_val]))
    assert np.isnan(accuracy[1:]).all()


def test_exits_without_labels_draw_bars_only(fitted):
    cascade, X, _ = fitted
    display = ExitDisplay.from_result(cascade.route(X))
    assert display.accuracy_points_ is None
    assert display.ax_accuracy_ is None
    assert sum(bar.get_height() for bar in display.bars_) == X.shape[0]


def test_exits_reject_labels_of_another_length(fitted):
    cascade, X, y = fitted
    with pytest.raises(PolicyError, match=r"y must hold one label per routed sample \(300\)"):
        ExitDisplay.from_estimator(cascade, X, y[:10])
    with pytest.raises(PolicyError, match=r"exit_counts must hold 2 values"):
        ExitDisplay([1, 2, 3], None, ["a", "b"]).plot()


# --------------------------------------------------------------------------- scikit-learn's
def test_sklearn_confusion_matrix_display_works_on_a_cascade(fitted):
    cascade, X, y = fitted
    display = ConfusionMatrixDisplay.from_estimator(cascade, X, y)
    np.testing.assert_array_equal(display.confusion_matrix, confusion_matrix(y, cascade.predict(X)))


def test_sklearn_calibration_display_works_on_a_cascade():
    X_train, y_train, X_val, y_val = _data(2)
    cascade = _cascade(X_train, y_train)
    display = CalibrationDisplay.from_estimator(cascade, X_val, y_val, n_bins=5)
    prob_true, prob_pred = calibration_curve(y_val, cascade.predict_proba(X_val)[:, 1], n_bins=5)
    np.testing.assert_allclose(display.line_.get_xdata(), prob_pred)
    np.testing.assert_allclose(display.line_.get_ydata(), prob_true)


def test_real_certificates_are_marked_where_they_say(fitted):
    certify = pytest.importorskip("cascademl.certify")
    cascade, X, y = fitted
    rule = cascade.routing_rule_
    cert = certify.certify_cascade(cascade, X, y, target=0.6, guarantee="accuracy", rule=rule)
    assert cert.certified
    display = CostAccuracyDisplay.from_estimator(cascade, X, y, certificate=cert)
    data_line, _, (bars,) = display.certificate_.lines
    np.testing.assert_allclose(data_line.get_xydata(), [[cert.mean_cost, cert.estimate]])
    np.testing.assert_allclose(
        bars.get_segments()[0], [[cert.mean_cost, cert.bound], [cert.mean_cost, cert.estimate]]
    )
    np.testing.assert_allclose(display.target_line_.get_ydata(), [0.6, 0.6])
    assert display.certificate_.get_label().startswith("certified rule (accuracy >= ")
    with pytest.warns(certify.CertificationWarning, match="not certified"):
        failed = certify.certify_cascade(cascade, X, y, target=0.9, guarantee="accuracy", rule=rule)
    display = CostAccuracyDisplay.from_estimator(cascade, X, y, certificate=failed)
    assert display.certificate_.get_label().startswith("not certified (accuracy, 95%)")
    assert display.certificate_.lines[0].get_marker() == "X"
