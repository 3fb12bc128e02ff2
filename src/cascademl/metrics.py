"""The paper's evaluation report in one call.

[`classification_metrics`][cascademl.metrics.classification_metrics] reports accuracy,
error rate, per-class precision, recall and F1, Matthews' correlation coefficient, Cohen's
kappa and the confusion matrix, with seeded percentile-bootstrap confidence intervals.
Every metric is computed in float64 from the confusion matrix with torchmetrics'
definitions (the tests check them against torchmetrics and scikit-learn), and the
bootstrap draws all its resamples at once.
[`mcnemar_test`][cascademl.metrics.mcnemar_test] compares two classifiers on the same
samples (the cascade against any of its stages), and
[`routing_summary`][cascademl.metrics.routing_summary] summarises coverage, deferral and cost
from a [`CascadeResult`][cascademl.CascadeResult].
[`evaluate_cascade`][cascademl.metrics.evaluate_cascade] puts everything together.

Labels may be of any type: they are mapped to column indices through ``classes``.

McNemar's test follows torchmetrics' two layers: ``_mcnemar_update`` counts the
discordant pairs, ``_mcnemar_compute`` turns them into a statistic and a p-value (an exact
binomial test, or chi-square with continuity correction, from ``scipy.stats``), and both
the function and the [`McNemarTest`][cascademl.metrics.McNemarTest] metric class reuse them.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np
import torch
from scipy import stats  # type: ignore[import-untyped, unused-ignore]
from torchmetrics import Metric

from cascademl._bootstrap import _SCALARS, _bootstrap, _point_metrics
from cascademl._labels import label_indices
from cascademl._probabilities import stage_probabilities
from cascademl._typing import FloatArray, IntArray, LabelArray
from cascademl.cascade import CascadeClassifier
from cascademl.exceptions import PolicyError
from cascademl.results import CascadeResult

if TYPE_CHECKING:
    from cascademl.certify import Certificate

__all__ = [
    "CascadeReport",
    "ClassificationMetrics",
    "McNemarResult",
    "McNemarTest",
    "RoutingSummary",
    "cascade_report",
    "classification_metrics",
    "evaluate_cascade",
    "mcnemar_test",
    "routing_summary",
]

#: ``"auto"``: exact when there are fewer than this many discordant pairs, else chi-square.
EXACT_BELOW = 25

McNemarMethod: TypeAlias = Literal["auto", "exact", "chi2"]


# --------------------------------------------------------------------------- McNemar
def _mcnemar_format(
    preds_a: Any, preds_b: Any, target: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    a, b, t = (torch.as_tensor(np.asarray(v)).long().flatten() for v in (preds_a, preds_b, target))
    if not a.shape == b.shape == t.shape:
        msg = (
            f"preds_a, preds_b and target must have the same length, got "
            f"{a.numel()}, {b.numel()} and {t.numel()}"
        )
        raise PolicyError(msg)
    return a, b, t


def _mcnemar_update(
    preds_a: torch.Tensor, preds_b: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Count the discordant pairs: (a right and b wrong, a wrong and b right)."""
    right_a = preds_a == target
    right_b = preds_b == target
    return (right_a & ~right_b).sum(), (~right_a & right_b).sum()


def _mcnemar_compute(
    only_a: torch.Tensor, only_b: torch.Tensor, method: McNemarMethod = "auto"
) -> tuple[float, float, str]:
    """Statistic, two-sided p-value and method name from the discordant counts."""
    n01, n10 = int(only_a), int(only_b)
    n = n01 + n10
    if method not in {"auto", "exact", "chi2"}:
        msg = f"method must be 'auto', 'exact' or 'chi2', got {method!r}"
        raise PolicyError(msg)
    if n == 0:
        return 0.0, 1.0, "exact" if method == "auto" else method
    if method == "exact" or (method == "auto" and n < EXACT_BELOW):
        p_value = float(stats.binomtest(min(n01, n10), n, 0.5).pvalue)
        return float(min(n01, n10)), min(p_value, 1.0), "exact"
    statistic = (abs(n01 - n10) - 1.0) ** 2 / n
    return statistic, float(stats.chi2.sf(statistic, 1)), "chi2"


@dataclass(frozen=True, slots=True)
class McNemarResult:
    """McNemar's test of two classifiers on the same samples.

    Attributes:
        statistic: the smaller discordant count (exact test) or the continuity-corrected
            chi-square statistic.
        p_value: two-sided p-value of "both classifiers have the same error rate".
        only_a_correct: samples the first classifier got right and the second wrong.
        only_b_correct: samples the second classifier got right and the first wrong.
        method: ``"exact"`` (binomial) or ``"chi2"`` (with continuity correction).
    """

    statistic: float
    p_value: float
    only_a_correct: int
    only_b_correct: int
    method: str


def mcnemar_test(
    y_true: Any,
    pred_a: Any,
    pred_b: Any,
    *,
    classes: Any,
    method: McNemarMethod = "auto",
) -> McNemarResult:
    """McNemar's test: do two classifiers err on the same samples at the same rate?

    Args:
        y_true: array-like of shape (n_samples,), true labels.
        pred_a: array-like of shape (n_samples,), the first classifier's labels.
        pred_b: array-like of shape (n_samples,), the second classifier's labels.
        classes: array-like of shape (n_classes,), every label that may appear.
        method: ``"exact"`` binomial test, ``"chi2"`` with continuity correction, or
            ``"auto"``: exact below 25 discordant pairs.

    Returns:
        The test result.

    Examples:
        >>> y = ["a"] * 10
        >>> result = mcnemar_test(y, ["a"] * 10, ["b"] * 8 + ["a"] * 2, classes=["a", "b"])
        >>> result.only_a_correct, result.only_b_correct, result.method
        (8, 0, 'exact')
        >>> round(result.p_value, 4)
        0.0078
    """
    labels = np.asarray(classes)
    a, b, t = _mcnemar_format(
        label_indices(pred_a, labels, name="pred_a"),
        label_indices(pred_b, labels, name="pred_b"),
        label_indices(y_true, labels, name="y_true"),
    )
    only_a, only_b = _mcnemar_update(a, b, t)
    statistic, p_value, used = _mcnemar_compute(only_a, only_b, method)
    return McNemarResult(statistic, p_value, int(only_a), int(only_b), used)


class McNemarTest(Metric):
    """McNemar's test accumulated over batches (torchmetrics ``Metric``).

    ``update(preds_a, preds_b, target)`` takes class-index tensors; ``compute()`` returns a
    tensor ``[statistic, p_value]``.

    Args:
        method: see [`mcnemar_test`][cascademl.metrics.mcnemar_test].
        kwargs: passed to ``torchmetrics.Metric``.

    Examples:
        >>> import torch
        >>> metric = McNemarTest(method="chi2")
        >>> metric.update(torch.tensor([0] * 40), torch.tensor([1] * 30 + [0] * 10),
        ...               torch.tensor([0] * 40))
        >>> metric.compute().round(decimals=4)
        tensor([2.8033e+01, 0.0000e+00], dtype=torch.float64)
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False
    only_a: torch.Tensor
    only_b: torch.Tensor

    def __init__(self, method: McNemarMethod = "auto", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.method: McNemarMethod = method
        self.add_state("only_a", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("only_b", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds_a: torch.Tensor, preds_b: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of both classifiers' predictions (class indices)."""
        a, b, t = _mcnemar_format(preds_a.cpu(), preds_b.cpu(), target.cpu())
        only_a, only_b = _mcnemar_update(a, b, t)
        self.only_a += only_a.to(self.only_a.device)
        self.only_b += only_b.to(self.only_b.device)

    def compute(self) -> torch.Tensor:
        """``[statistic, p_value]`` over everything seen."""
        statistic, p_value, _ = _mcnemar_compute(self.only_a, self.only_b, self.method)
        return torch.tensor([statistic, p_value], dtype=torch.float64)


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True, slots=True, eq=False)
class ClassificationMetrics:
    """Classification metrics with bootstrap confidence intervals.

    Attributes:
        classes: ndarray of shape (n_classes,), the labels in the order of the per-class
            arrays and of the confusion matrix.
        n_samples: number of samples.
        accuracy: share of correct labels.
        error_rate: ``1 - accuracy``.
        precision: ndarray of shape (n_classes,), per-class precision (0 for a class never
            predicted).
        recall: ndarray of shape (n_classes,), per-class recall.
        f1: ndarray of shape (n_classes,), per-class F1.
        macro_precision: unweighted mean precision over the classes present.
        macro_recall: unweighted mean recall over the classes present.
        macro_f1: unweighted mean F1 over the classes present.
        mcc: Matthews' correlation coefficient.
        kappa: Cohen's kappa.
        confusion_matrix: int ndarray of shape (n_classes, n_classes), rows true, columns
            predicted.
        intervals: for each scalar metric (``"accuracy"``, ``"error_rate"``,
            ``"macro_precision"``, ``"macro_recall"``, ``"macro_f1"``, ``"mcc"``,
            ``"kappa"``) and per-class array (``"precision"``, ``"recall"``, ``"f1"``), the
            ``(low, high)`` percentile-bootstrap bounds (arrays of shape (n_classes,) for
            per-class metrics); empty without bootstrap.
        confidence_level: the intervals' level.
        n_bootstrap: the number of bootstrap resamples.
    """

    classes: LabelArray
    n_samples: int
    accuracy: float
    error_rate: float
    precision: FloatArray
    recall: FloatArray
    f1: FloatArray
    macro_precision: float
    macro_recall: float
    macro_f1: float
    mcc: float
    kappa: float
    confusion_matrix: IntArray
    intervals: Mapping[str, tuple[Any, Any]]
    confidence_level: float
    n_bootstrap: int

    def as_dict(self) -> dict[str, Any]:
        """Scalar metrics with their intervals, as plain Python values (for JSON or tables)."""
        out: dict[str, Any] = {"n_samples": self.n_samples}
        for name in _SCALARS:
            out[name] = getattr(self, name)
            if name in self.intervals:
                low, high = self.intervals[name]
                out[f"{name}_ci"] = (float(low), float(high))
        return out


def classification_metrics(
    y_true: Any,
    y_pred: Any,
    *,
    classes: Any,
    n_bootstrap: int = 1000,
    confidence_level: float = 0.95,
    random_state: int | np.random.Generator | None = 0,
) -> ClassificationMetrics:
    """Accuracy, per-class precision/recall/F1, MCC, kappa and the confusion matrix.

    Every metric is a Python ``float`` (or a float64 array) computed in float64 from the
    confusion matrix, with torchmetrics' definitions (0 where a ratio divides by zero;
    macro averages over the classes present or predicted). Confidence intervals are
    percentile bootstrap intervals over ``n_bootstrap`` resamples of the samples, drawn
    from a local generator seeded by ``random_state`` (the global seed is never touched).
    The resamples are drawn all at once as confusion-matrix counts (a multinomial over the
    observed cells, the same distribution as resampling the samples), so 1,000 resamples
    of 2,000 samples take milliseconds.

    Args:
        y_true: array-like of shape (n_samples,), true labels of any type.
        y_pred: array-like of shape (n_samples,), predicted labels.
        classes: array-like of shape (n_classes,), every label, in report order.
        n_bootstrap: resamples for the intervals; 0 for none.
        confidence_level: the intervals' level, in ``(0, 1)``.
        random_state: seed or generator for the resampling.

    Returns:
        The metrics.

    Raises:
        PolicyError: for unknown labels, mismatched lengths, no samples, or invalid
            bootstrap settings.

    Examples:
        >>> m = classification_metrics(["a", "b", "b", "a"], ["a", "b", "a", "a"],
        ...                            classes=["a", "b"], n_bootstrap=0)
        >>> m.accuracy, m.confusion_matrix.tolist()
        (0.75, [[2, 0], [1, 1]])
        >>> m.recall.tolist()
        [1.0, 0.5]
    """
    labels = np.asarray(classes)
    target = label_indices(y_true, labels, name="y_true")
    pred = label_indices(y_pred, labels, name="y_pred")
    if target.shape != pred.shape or target.size == 0:
        msg = (
            f"y_true and y_pred must be non-empty and of the same length, got "
            f"{target.size} and {pred.size}"
        )
        raise PolicyError(msg)
    if (
        isinstance(n_bootstrap, bool | np.bool_)
        or not isinstance(n_bootstrap, numbers.Integral)
        or n_bootstrap < 0
    ):
        msg = f"n_bootstrap must be an integer >= 0, got {n_bootstrap!r}"
        raise PolicyError(msg)
    n_bootstrap = int(n_bootstrap)
    if not 0.0 < confidence_level < 1.0:
        msg = f"confidence_level must be in (0, 1), got {confidence_level!r}"
        raise PolicyError(msg)
    k = labels.size
    confusion = np.bincount(target * k + pred, minlength=k * k).reshape(k, k).astype(np.intp)
    return ClassificationMetrics(
        classes=labels,
        n_samples=int(target.size),
        confusion_matrix=confusion,
        intervals=_bootstrap(confusion, n_bootstrap, confidence_level, random_state),
        confidence_level=confidence_level,
        n_bootstrap=n_bootstrap,
        **_point_metrics(confusion),
    )


# --------------------------------------------------------------------------- routing
@dataclass(frozen=True, slots=True, eq=False)
class RoutingSummary:
    """Coverage, deferral and cost of one routing.

    Attributes:
        stage_names: the stages, in order.
        exit_counts: int ndarray of shape (n_stages,): samples each stage ended.
        exit_rate: ndarray of shape (n_stages,): share of all samples each stage ended
            (its coverage); sums to one.
        reach_rate: ndarray of shape (n_stages,): share of all samples that reached each
            stage.
        deferral_rate: ndarray of shape (n_stages,): share of the samples reaching a stage
            that it escalated (0 for the last stage; NaN for a stage no sample reached).
        mean_cost: mean cost per sample.
        cost_ratio_all: ``mean_cost`` over the cost of every stage on every sample.
        cost_ratio_last: ``mean_cost`` over the cost of the last stage alone.
        calls_saved: share of stage calls saved against every stage on every sample.
        cost_unit: what the costs count.
    """

    stage_names: tuple[str, ...]
    exit_counts: IntArray
    exit_rate: FloatArray
    reach_rate: FloatArray
    deferral_rate: FloatArray
    mean_cost: float
    cost_ratio_all: float
    cost_ratio_last: float
    calls_saved: float
    cost_unit: str


def routing_summary(result: CascadeResult) -> RoutingSummary:
    """Summarise where samples ended and what they cost.

    Examples:
        >>> from sklearn.datasets import load_iris
        >>> from sklearn.naive_bayes import GaussianNB
        >>> from sklearn.tree import DecisionTreeClassifier
        >>> X, y = load_iris(return_X_y=True)
        >>> cascade = CascadeClassifier(
        ...     [("nb", GaussianNB()), ("tree", DecisionTreeClassifier(random_state=0))]
        ... ).fit(X, y)
        >>> summary = routing_summary(cascade.route(X))
        >>> float(summary.exit_rate.sum()), float(summary.deferral_rate[-1])
        (1.0, 0.0)
    """
    n = max(result.n_samples, 1)
    counts = result.exit_counts
    reached = result.stage_calls.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        deferral = np.where(reached > 0, (reached - counts) / reached, np.nan)
    return RoutingSummary(
        stage_names=result.stage_names,
        exit_counts=counts,
        exit_rate=counts / n,
        reach_rate=reached / n,
        deferral_rate=deferral,
        mean_cost=result.mean_cost,
        cost_ratio_all=result.cost_ratio_all,
        cost_ratio_last=result.cost_ratio_last,
        calls_saved=result.calls_saved,
        cost_unit=result.cost_unit,
    )


@dataclass(frozen=True, slots=True, eq=False)
class CascadeReport:
    """The paper's report: the cascade's metrics, each stage's, tests and routing.

    Attributes:
        cascade: metrics of the cascade's final labels.
        stages: metrics of each stage used alone on every sample, by name (empty when
            stage probabilities were not given).
        mcnemar: McNemar's test of the cascade (first) against each stage (second), by name.
        routing: where samples ended, and the cost.
        certificate: the cascade's [`Certificate`][cascademl.certify.Certificate] (its
            guarantee, bound and cost share on the calibration data), or ``None``.
    """

    cascade: ClassificationMetrics
    stages: Mapping[str, ClassificationMetrics]
    mcnemar: Mapping[str, McNemarResult]
    routing: RoutingSummary
    certificate: Certificate | None = None


def cascade_report(
    result: CascadeResult,
    y_true: Any,
    *,
    stage_proba: FloatArray | None = None,
    n_bootstrap: int = 1000,
    confidence_level: float = 0.95,
    random_state: int | None = 0,
    mcnemar_method: McNemarMethod = "auto",
    certificate: Certificate | None = None,
) -> CascadeReport:
    """Build the report from a routing result and, optionally, every stage's probabilities.

    Args:
        result: the cascade's [`CascadeResult`][cascademl.CascadeResult] on the test split.
        y_true: the test labels.
        stage_proba: array of shape (n_stages, n_samples, n_classes) of every stage on
            every test sample (from [`stage_probabilities`][cascademl.tuning.stage_probabilities]),
            needed for per-stage metrics and McNemar's tests.
        n_bootstrap: see [`classification_metrics`][cascademl.metrics.classification_metrics].
        confidence_level: see `classification_metrics`.
        random_state: see `classification_metrics`; each metric set uses the same seed.
        mcnemar_method: see [`mcnemar_test`][cascademl.metrics.mcnemar_test].
        certificate: the certificate of the cascade that produced ``result`` (its
            ``certificate_``), shown in the report beside the metrics measured here.

    Returns:
        The report.
    """
    classes = result.classes
    options: dict[str, Any] = {
        "classes": classes,
        "n_bootstrap": n_bootstrap,
        "confidence_level": confidence_level,
        "random_state": random_state,
    }
    overall = classification_metrics(y_true, result.labels, **options)
    per_stage: dict[str, ClassificationMetrics] = {}
    tests: dict[str, McNemarResult] = {}
    if stage_proba is not None:
        proba = np.asarray(stage_proba, dtype=np.float64)
        if proba.shape != (result.n_stages, result.n_samples, classes.size):
            msg = (
                f"stage_proba must have shape {(result.n_stages, result.n_samples, classes.size)}"
                f", got {proba.shape}"
            )
            raise PolicyError(msg)
        for s, name in enumerate(result.stage_names):
            labels = classes[np.argmax(proba[s], axis=1)]
            per_stage[name] = classification_metrics(y_true, labels, **options)
            tests[name] = mcnemar_test(
                y_true, result.labels, labels, classes=classes, method=mcnemar_method
            )
    return CascadeReport(overall, per_stage, tests, routing_summary(result), certificate)


def evaluate_cascade(
    cascade: CascadeClassifier,
    X_test: Any,
    y_test: Any,
    *,
    compare_stages: bool = True,
    n_bootstrap: int = 1000,
    confidence_level: float = 0.95,
    random_state: int | None = 0,
    mcnemar_method: McNemarMethod = "auto",
) -> CascadeReport:
    """Route the test split and report on it, with each stage alone for comparison.

    With ``compare_stages=True`` every stage also runs once on every test sample (for the
    per-stage metrics and McNemar's tests): that is extra model calls, for the report only.
    A certified cascade's ``certificate_`` is carried into the report.

    Args:
        cascade: a fitted cascade.
        X_test: test inputs.
        y_test: test labels.
        compare_stages: also evaluate each stage alone and test the cascade against it.
        n_bootstrap: see [`classification_metrics`][cascademl.metrics.classification_metrics].
        confidence_level: see `classification_metrics`.
        random_state: see `classification_metrics`.
        mcnemar_method: see [`mcnemar_test`][cascademl.metrics.mcnemar_test].

    Returns:
        The report.

    Examples:
        >>> from sklearn.datasets import load_iris
        >>> from sklearn.naive_bayes import GaussianNB
        >>> from sklearn.linear_model import LogisticRegression
        >>> X, y = load_iris(return_X_y=True)
        >>> cascade = CascadeClassifier(
        ...     [("nb", GaussianNB()), ("lr", LogisticRegression(max_iter=1000))]
        ... ).fit(X[::2], y[::2])
        >>> report = evaluate_cascade(cascade, X[1::2], y[1::2], n_bootstrap=50)
        >>> sorted(report.mcnemar), report.cascade.n_samples
        (['lr', 'nb'], 75)
    """
    result = cascade.route(X_test)
    proba = stage_probabilities(cascade, X_test) if compare_stages else None
    return cascade_report(
        result,
        y_test,
        stage_proba=proba,
        n_bootstrap=n_bootstrap,
        confidence_level=confidence_level,
        random_state=random_state,
        mcnemar_method=mcnemar_method,
        certificate=getattr(cascade, "certificate_", None),
    )
