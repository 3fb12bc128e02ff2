"""Plots of a cascade: its accuracy-cost frontier and where its samples exit.

Two displays in scikit-learn's convention (as ``sklearn.metrics.ConfusionMatrixDisplay``
and ``sklearn.calibration.CalibrationDisplay``): a class method computes what to draw
(``from_estimator``, ``from_proba``, ``from_tuning``, ``from_result``) and calls
``plot``; ``plot(ax=None, ...)`` draws on the given axes (new ones by default) and returns
the display, which keeps the axes (``ax_``), the figure (``figure_``) and every artist it
drew, so a figure can be restyled or checked afterwards.

* [`CostAccuracyDisplay`][cascademl.plot.CostAccuracyDisplay]: the accuracy-cost frontier
  found by the tuner, each stage used alone as a point, a marked rule (the cascade's
  current one, or the tuner's choice), and optionally a certified rule with its lower
  confidence bound and its target.
* [`ExitDisplay`][cascademl.plot.ExitDisplay]: how many samples each stage ends (bars)
  and the accuracy of the samples it ends (points on a second axis).

A fitted cascade is a scikit-learn classifier, so scikit-learn's own displays work on it
as they are, and cascademl does not draw them again:

* ``sklearn.metrics.ConfusionMatrixDisplay.from_estimator(cascade, X_test, y_test)``: the
  cascade's confusion matrix;
* ``sklearn.calibration.CalibrationDisplay.from_estimator(cascade, X_test, y_test)``: the
  reliability diagram of its final probabilities (binary problems), or of one stage with
  ``CalibrationDisplay.from_estimator(cascade.named_stages_["nb"], X_test, y_test)``.

matplotlib is an optional dependency (``pip install 'cascademl[plot]'``). It is imported
when a figure is drawn, not when this module is imported; without it, drawing raises an
``ImportError`` that names the extra to install.

Examples:
    >>> import numpy as np
    >>> from cascademl.tuning import tune_cascade_from_proba
    >>> from cascademl.plot import CostAccuracyDisplay
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 200)
    >>> weak = np.eye(2)[np.where(rng.random(200) < 0.3, 1 - y, y)] * 0.6 + 0.2
    >>> strong = np.eye(2)[y] * 0.8 + 0.1
    >>> result = tune_cascade_from_proba(
    ...     np.stack([weak, strong]), y, classes=[0, 1], stage_cost=[1.0, 10.0],
    ...     stage_names=["weak", "strong"],
    ... )
    >>> display = CostAccuracyDisplay.from_tuning(result)
    >>> display.stage_points_.get_offsets().tolist()
    [[1.0, 0.745], [10.0, 1.0]]
    >>> display.ax_.get_ylabel()
    'accuracy'
    >>> import matplotlib.pyplot as plt
    >>> plt.close(display.figure_)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, Self

import numpy as np

from cascademl._optional import require
from cascademl._probabilities import stage_probabilities
from cascademl._typing import FloatArray, IntArray
from cascademl._validation import check_fitted
from cascademl.cascade import CascadeClassifier
from cascademl.exceptions import PolicyError
from cascademl.policies import RoutingRule
from cascademl.results import CascadeResult
from cascademl.stages import stage_cost as _stage_cost
from cascademl.tuning import (
    OrderSearchResult,
    Scoring,
    TuningResult,
    score_thresholds,
    tune_cascade_from_proba,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.collections import PathCollection
    from matplotlib.container import BarContainer, ErrorbarContainer
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.text import Annotation, Text

__all__ = ["CertificateLike", "CostAccuracyDisplay", "ExitDisplay"]


class CertificateLike(Protocol):
    """What [`CostAccuracyDisplay`][cascademl.plot.CostAccuracyDisplay] reads of a certificate.

    A ``cascademl.certify.Certificate`` has these attributes; any object that has them can
    be drawn.

    Attributes:
        guarantee: what is guaranteed (``"agreement"``, ``"accuracy"``, ``"selective"``).
        target: the guaranteed level.
        delta: the error probability of the guarantee (it holds with probability at
            least ``1 - delta``).
        certified: whether the guarantee could be certified.
        bound: the lower confidence bound of the guaranteed quantity at the rule.
        estimate: the guaranteed quantity measured on the calibration data.
        mean_cost: the rule's mean cost per calibration sample.
    """

    @property
    def guarantee(self) -> str:
        """What is guaranteed."""

    @property
    def target(self) -> float:
        """The guaranteed level."""

    @property
    def delta(self) -> float:
        """The error probability of the guarantee."""

    @property
    def certified(self) -> bool:
        """Whether the guarantee could be certified."""

    @property
    def bound(self) -> float:
        """The lower confidence bound at the rule."""

    @property
    def estimate(self) -> float:
        """The guaranteed quantity on the calibration data."""

    @property
    def mean_cost(self) -> float:
        """The rule's mean cost per calibration sample."""


# --------------------------------------------------------------------------- helpers
def _check_matplotlib(what: str) -> None:
    """Raise the extra's install hint when matplotlib cannot be imported."""
    require("matplotlib.pyplot", "plot", purpose=what)


def _axes(ax: Axes | None, what: str) -> Axes:
    """``ax``, or the axes of a new figure."""
    _check_matplotlib(what)
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt  # noqa: PLC0415 - matplotlib is an optional extra

    _, new = plt.subplots()
    return new


def _figure(ax: Axes) -> Figure:
    """The figure that holds ``ax`` (the root figure when ``ax`` is in a sub-figure)."""
    return ax.figure.figure


def _vector(values: Any, name: str, *, size: int | None = None) -> FloatArray:
    """``values`` as a 1-d float array, checked for its length."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or (size is not None and array.size != size):
        expected = "a 1-d array" if size is None else f"{size} values"
        msg = f"{name} must hold {expected}, got shape {array.shape}"
        raise PolicyError(msg)
    return array


def _merge(defaults: dict[str, Any], given: Mapping[str, Any] | None) -> dict[str, Any]:
    """Matplotlib keywords: the defaults, overridden by the caller's."""
    return {**defaults, **(dict(given) if given is not None else {})}


def _certificate_label(certificate: CertificateLike) -> str:
    confidence = f"{1 - float(certificate.delta):.0%}"
    if certificate.certified:
        return (
            f"certified rule ({certificate.guarantee} >= {float(certificate.bound):.3f} "
            f"with {confidence} confidence)"
        )
    return f"not certified ({certificate.guarantee}, {confidence}): safe rule"


# --------------------------------------------------------------------------- frontier
class CostAccuracyDisplay:
    """The accuracy-cost frontier of a cascade, its stages alone, and a marked rule.

    Build it with [`from_estimator`][cascademl.plot.CostAccuracyDisplay.from_estimator]
    (a fitted cascade and data), [`from_proba`][cascademl.plot.CostAccuracyDisplay.from_proba]
    (cached stage probabilities) or
    [`from_tuning`][cascademl.plot.CostAccuracyDisplay.from_tuning] (a tuning result); the
    constructor only stores the values to draw.

    Args:
        frontier_cost: array-like of shape (n_points,), the mean cost per sample of each
            frontier point, increasing.
        frontier_score: array-like of shape (n_points,), the score of each frontier point.
        stage_cost: array-like of shape (n_stages,), the cost of one sample at each stage;
            also the mean cost of each stage used alone.
        stage_score: array-like of shape (n_stages,), the score of each stage used alone.
        stage_names: the stages' names, for their labels.
        rule_cost: the mean cost of the marked rule; ``None`` marks none.
        rule_score: the score of the marked rule.
        rule_name: the marked rule's label.
        certificate: a certificate (see [`CertificateLike`][cascademl.plot.CertificateLike])
            to mark at ``(mean_cost, estimate)`` with an error bar down to its lower bound
            and its target as a horizontal line; ``None`` for none.
        scoring: the score's name, for the y axis.
        name: the frontier's label in the legend (e.g. the cascade's name).

    Attributes:
        ax_: the matplotlib ``Axes`` drawn on.
        figure_: the ``Figure`` holding ``ax_``.
        line_: the frontier, a ``Line2D`` (x: mean cost, y: score).
        stage_points_: the stages alone, a ``PathCollection`` (offsets: cost, score).
        stage_labels_: one ``Annotation`` per stage, its name.
        rule_point_: the marked rule, a ``Line2D`` with one point, or ``None``.
        certificate_: the certified rule and its bound, an ``ErrorbarContainer``, or ``None``.
        target_line_: the certificate's target, a horizontal ``Line2D``, or ``None``.
        relative_: whether the x axis was drawn as a share of running every stage.
    """

    ax_: Axes
    figure_: Figure
    line_: Line2D
    stage_points_: PathCollection
    stage_labels_: list[Annotation]
    rule_point_: Line2D | None
    certificate_: ErrorbarContainer | None
    target_line_: Line2D | None
    relative_: bool

    def __init__(
        self,
        frontier_cost: Any,
        frontier_score: Any,
        stage_cost: Any,
        stage_score: Any,
        stage_names: Sequence[str],
        *,
        rule_cost: float | None = None,
        rule_score: float | None = None,
        rule_name: str = "rule",
        certificate: CertificateLike | None = None,
        scoring: str = "accuracy",
        name: str | None = None,
    ) -> None:
        self.frontier_cost = frontier_cost
        self.frontier_score = frontier_score
        self.stage_cost = stage_cost
        self.stage_score = stage_score
        self.stage_names = stage_names
        self.rule_cost = rule_cost
        self.rule_score = rule_score
        self.rule_name = rule_name
        self.certificate = certificate
        self.scoring = scoring
        self.name = name

    # ----------------------------------------------------------------- builders
    @classmethod
    def from_tuning(
        cls,
        result: TuningResult | OrderSearchResult,
        *,
        certificate: CertificateLike | None = None,
        relative: bool = False,
        name: str | None = None,
        ax: Axes | None = None,
    ) -> Self:
        """Draw a tuning result: its frontier, its stages alone and its chosen rule.

        Args:
            result: from [`tune_cascade`][cascademl.tuning.tune_cascade] or
                [`tune_cascade_from_proba`][cascademl.tuning.tune_cascade_from_proba]; an
                order search contributes its best order.
            certificate: a certificate to mark with its bound and target (see
                [`CertificateLike`][cascademl.plot.CertificateLike]).
            relative: draw costs as a share of running every stage on every sample.
            name: the frontier's label in the legend.
            ax: the axes to draw on; a new figure by default.

        Returns:
            The display, drawn.
        """
        _check_matplotlib(f"{cls.__name__}.from_tuning")
        tuned = result.best if isinstance(result, OrderSearchResult) else result
        costs, scores = tuned.frontier_arrays()
        display = cls(
            costs,
            scores,
            np.asarray(tuned.stage_cost, dtype=np.float64),
            np.asarray(tuned.stage_scores, dtype=np.float64),
            tuned.stage_names,
            rule_cost=tuned.mean_cost,
            rule_score=tuned.score,
            rule_name="tuned rule",
            certificate=certificate,
            scoring=tuned.scoring,
            name=name,
        )
        return display.plot(ax=ax, relative=relative)

    @classmethod
    def from_proba(
        cls,
        stage_proba: Any,
        y: Any,
        *,
        classes: Any,
        rule: RoutingRule | None = None,
        stage_cost: Sequence[float] | None = None,
        stage_names: Sequence[str] | None = None,
        scoring: Scoring = None,
        sample_weight: Any = None,
        n_candidates: int = 64,
        n_lambdas: int = 12,
        certificate: CertificateLike | None = None,
        relative: bool = False,
        name: str | None = None,
        rule_name: str = "given rule",
        ax: Axes | None = None,
    ) -> Self:
        """Trace the frontier on cached probabilities and mark a rule on it.

        The frontier is the tuner's
        ([`tune_cascade_from_proba`][cascademl.tuning.tune_cascade_from_proba]) with the
        rule's measure, combiner and escalation weights; the rule's own thresholds are
        scored with [`score_thresholds`][cascademl.tuning.score_thresholds] and marked.

        Args:
            stage_proba: array of shape (n_stages, n_samples, n_classes) from
                [`stage_probabilities`][cascademl.tuning.stage_probabilities].
            y: array-like of shape (n_samples,), the true labels.
            classes: array-like of shape (n_classes,), the labels of the columns.
            rule: the [`RoutingRule`][cascademl.RoutingRule] to trace the frontier for and
                to mark; ``None``: the tuner's default rule, and no point is marked.
            stage_cost: the cost of one sample at each stage; 1 per stage call by default.
            stage_names: the stages' names; ``stage0``, ``stage1``... by default.
            scoring: see [`Scoring`][cascademl.tuning.Scoring]; accuracy by default.
            sample_weight: array-like of shape (n_samples,), weights of the samples in the
                score and the mean cost.
            n_candidates: candidate thresholds per stage, as for the tuner.
            n_lambdas: cost penalties used to trace the frontier, as for the tuner.
            certificate: a certificate to mark with its bound and target.
            relative: draw costs as a share of running every stage on every sample.
            name: the frontier's label in the legend.
            rule_name: the marked rule's label.
            ax: the axes to draw on; a new figure by default.

        Returns:
            The display, drawn.

        Raises:
            PolicyError: for invalid probabilities, labels, costs or rule (see the tuner).
        """
        _check_matplotlib(f"{cls.__name__}.from_proba")
        tuned = tune_cascade_from_proba(
            stage_proba,
            y,
            classes=classes,
            rule=rule,
            stage_cost=stage_cost,
            scoring=scoring,
            n_candidates=n_candidates,
            n_lambdas=n_lambdas,
            stage_names=stage_names,
            sample_weight=sample_weight,
        )
        costs, scores = tuned.frontier_arrays()
        point = None
        if rule is not None:
            point = score_thresholds(
                stage_proba,
                y,
                rule,
                classes=classes,
                stage_cost=stage_cost,
                scoring=scoring,
                sample_weight=sample_weight,
            )
        display = cls(
            costs,
            scores,
            np.asarray(tuned.stage_cost, dtype=np.float64),
            np.asarray(tuned.stage_scores, dtype=np.float64),
            tuned.stage_names,
            rule_cost=None if point is None else point.mean_cost,
            rule_score=None if point is None else point.score,
            rule_name=rule_name,
            certificate=certificate,
            scoring=tuned.scoring,
            name=name,
        )
        return display.plot(ax=ax, relative=relative)

    @classmethod
    def from_estimator(
        cls,
        cascade: CascadeClassifier,
        X: Any,
        y: Any,
        *,
        scoring: Scoring = None,
        stage_cost: Sequence[float] | None = None,
        sample_weight: Any = None,
        batch_size: int | None = None,
        n_candidates: int = 64,
        n_lambdas: int = 12,
        certificate: CertificateLike | None = None,
        relative: bool = False,
        name: str | None = None,
        ax: Axes | None = None,
    ) -> Self:
        """Draw a fitted cascade's frontier on data, with its current rule marked.

        Every stage runs once on every sample
        ([`stage_probabilities`][cascademl.tuning.stage_probabilities]); the frontier,
        the stages alone and the current rule (``cascade.routing_rule_``) are then scored
        on those probabilities, as [`from_proba`][cascademl.plot.CostAccuracyDisplay.from_proba]
        does. Use a validation or test split, not the training data.

        Args:
            cascade: a fitted [`CascadeClassifier`][cascademl.CascadeClassifier].
            X: the samples.
            y: array-like of shape (n_samples,), their labels.
            scoring: see [`Scoring`][cascademl.tuning.Scoring]; accuracy by default.
            stage_cost: the cost of one sample at each stage; defaults to each stage's
                ``cost_per_sample`` (1 per stage call when it has none).
            sample_weight: array-like of shape (n_samples,), weights of the samples.
            batch_size: at most this many samples per stage call; the cascade's by default.
            n_candidates: candidate thresholds per stage, as for the tuner.
            n_lambdas: cost penalties used to trace the frontier, as for the tuner.
            certificate: a certificate to mark with its bound and target.
            relative: draw costs as a share of running every stage on every sample.
            name: the frontier's label in the legend.
            ax: the axes to draw on; a new figure by default.

        Returns:
            The display, drawn.

        Raises:
            NotFittedError: if the cascade is not fitted.
            PolicyError: for labels that are not the cascade's classes, or invalid costs.
        """
        _check_matplotlib(f"{cls.__name__}.from_estimator")
        check_fitted(cascade, before="CostAccuracyDisplay.from_estimator")
        costs = (
            [float(c) for c in stage_cost]
            if stage_cost is not None
            else [_stage_cost(s) for s in cascade.stages_]
        )
        return cls.from_proba(
            stage_probabilities(cascade, X, batch_size=batch_size),
            y,
            classes=cascade.classes_,
            rule=cascade.routing_rule_,
            stage_cost=costs,
            stage_names=tuple(cascade.named_stages_.keys()),
            scoring=scoring,
            sample_weight=sample_weight,
            n_candidates=n_candidates,
            n_lambdas=n_lambdas,
            certificate=certificate,
            relative=relative,
            name=name,
            rule_name="current rule",
            ax=ax,
        )

    # ----------------------------------------------------------------- drawing
    def plot(
        self,
        *,
        ax: Axes | None = None,
        relative: bool = False,
        name: str | None = None,
        annotate: bool = True,
        frontier_kwargs: Mapping[str, Any] | None = None,
        stage_kwargs: Mapping[str, Any] | None = None,
        rule_kwargs: Mapping[str, Any] | None = None,
        certificate_kwargs: Mapping[str, Any] | None = None,
    ) -> Self:
        """Draw the frontier, the stages alone, the marked rule and the certificate.

        The frontier is drawn as steps: at a mean cost between two frontier points, the
        best score reachable is the cheaper point's.

        Args:
            ax: the axes to draw on; a new figure by default.
            relative: draw costs as a share of running every stage on every sample (the
                sum of ``stage_cost``).
            name: the frontier's label; ``self.name`` by default, else ``"frontier"``.
            annotate: write each stage's name beside its point.
            frontier_kwargs: keywords for ``Axes.plot`` of the frontier.
            stage_kwargs: keywords for ``Axes.scatter`` of the stages alone.
            rule_kwargs: keywords for ``Axes.plot`` of the marked rule.
            certificate_kwargs: keywords for ``Axes.errorbar`` of the certified rule.

        Returns:
            The display.

        Raises:
            PolicyError: if the arrays' lengths disagree, or ``relative`` with a total
                stage cost that is not positive.
            ImportError: if matplotlib is not installed.
        """
        frontier_cost = _vector(self.frontier_cost, "frontier_cost")
        frontier_score = _vector(self.frontier_score, "frontier_score", size=frontier_cost.size)
        stage_cost = _vector(self.stage_cost, "stage_cost")
        stage_score = _vector(self.stage_score, "stage_score", size=stage_cost.size)
        names = [str(n) for n in self.stage_names]
        if len(names) != stage_cost.size:
            msg = f"stage_names must hold {stage_cost.size} names, got {len(names)}"
            raise PolicyError(msg)
        scale = 1.0
        if relative:
            total = math.fsum(stage_cost.tolist())
            if not total > 0:
                msg = f"relative=True needs a positive total stage cost, got {total}"
                raise PolicyError(msg)
            scale = total
        ax = _axes(ax, f"{type(self).__name__}.plot")

        label = name if name is not None else (self.name or "frontier")
        frontier = _merge(
            {"drawstyle": "steps-post", "marker": ".", "label": label}, frontier_kwargs
        )
        self.line_ = ax.plot(frontier_cost / scale, frontier_score, **frontier)[0]
        stages = _merge(
            {"marker": "o", "color": "black", "zorder": 3, "label": "stage alone"}, stage_kwargs
        )
        self.stage_points_ = ax.scatter(stage_cost / scale, stage_score, **stages)
        self.stage_labels_ = []
        if annotate:
            for stage_name, x, y in zip(names, stage_cost / scale, stage_score, strict=True):
                self.stage_labels_.append(
                    ax.annotate(
                        stage_name,
                        (x, y),
                        xytext=(5, 3),
                        textcoords="offset points",
                        fontsize="small",
                    )
                )
        self.rule_point_ = None
        if self.rule_cost is not None and self.rule_score is not None:
            marked = _merge(
                {
                    "marker": "*",
                    "markersize": 14,
                    "linestyle": "none",
                    "zorder": 4,
                    "label": self.rule_name,
                },
                rule_kwargs,
            )
            self.rule_point_ = ax.plot(
                [float(self.rule_cost) / scale], [float(self.rule_score)], **marked
            )[0]
        self._plot_certificate(ax, scale, certificate_kwargs)

        xlabel = "mean cost per sample"
        if relative:
            xlabel += " (share of running every stage)"
        ax.set(xlabel=xlabel, ylabel=self.scoring)
        ax.margins(x=0.05, y=0.08)  # room for the stages' names at the edges
        ax.legend(loc="best", fontsize="small")
        self.ax_ = ax
        self.figure_ = _figure(ax)
        self.relative_ = relative
        return self

    def _plot_certificate(
        self, ax: Axes, scale: float, certificate_kwargs: Mapping[str, Any] | None
    ) -> None:
        """Mark the certified rule, its lower bound and its target."""
        self.certificate_ = None
        self.target_line_ = None
        certificate = self.certificate
        if certificate is None:
            return
        x = float(certificate.mean_cost) / scale
        estimate = float(certificate.estimate)
        bound = float(certificate.bound)
        below = max(estimate - bound, 0.0) if math.isfinite(bound) else 0.0
        kwargs = _merge(
            {
                "fmt": "D" if certificate.certified else "X",
                "capsize": 4,
                "zorder": 5,
                "color": "tab:green" if certificate.certified else "tab:red",
                "label": _certificate_label(certificate),
            },
            certificate_kwargs,
        )
        self.certificate_ = ax.errorbar([x], [estimate], yerr=[[below], [0.0]], **kwargs)
        self.target_line_ = ax.axhline(
            float(certificate.target),
            color=kwargs["color"],
            linestyle="--",
            linewidth=1,
            label=f"target {certificate.guarantee} {float(certificate.target):g}",
        )


# --------------------------------------------------------------------------- exits
class ExitDisplay:
    """How many samples each stage ends, and the accuracy of the samples it ends.

    Build it with [`from_estimator`][cascademl.plot.ExitDisplay.from_estimator] (a fitted
    cascade and data) or [`from_result`][cascademl.plot.ExitDisplay.from_result] (a
    [`CascadeResult`][cascademl.CascadeResult] and the labels); the constructor only
    stores the values to draw.

    Args:
        exit_counts: array-like of shape (n_stages,), how many samples each stage ended.
        exit_accuracy: array-like of shape (n_stages,), the accuracy of the samples each
            stage ended (NaN for a stage that ended none); ``None`` draws the bars alone.
        stage_names: the stages' names, in cascade order.

    Attributes:
        ax_: the ``Axes`` of the bars.
        figure_: the ``Figure`` holding ``ax_``.
        bars_: the bars, a ``BarContainer`` (heights: the exit counts).
        bar_labels_: the text above each bar (its count and share of samples).
        ax_accuracy_: the second y axis (``ax_.twinx()``) of the accuracy, or ``None``.
        accuracy_points_: the accuracy of the samples each stage ended, a ``Line2D`` on
            ``ax_accuracy_`` (x: bar positions), or ``None``.
    """

    ax_: Axes
    figure_: Figure
    bars_: BarContainer
    bar_labels_: list[Text]
    ax_accuracy_: Axes | None
    accuracy_points_: Line2D | None

    def __init__(self, exit_counts: Any, exit_accuracy: Any, stage_names: Sequence[str]) -> None:
        self.exit_counts = exit_counts
        self.exit_accuracy = exit_accuracy
        self.stage_names = stage_names

    @classmethod
    def from_result(cls, result: CascadeResult, y: Any = None, *, ax: Axes | None = None) -> Self:
        """Draw where the samples of a routing result exited.

        Args:
            result: from [`CascadeClassifier.route`][cascademl.CascadeClassifier.route].
            y: array-like of shape (n_samples,), the true labels; ``None`` draws the exit
                counts alone.
            ax: the axes to draw on; a new figure by default.

        Returns:
            The display, drawn.

        Raises:
            PolicyError: if ``y`` does not hold one label per routed sample.
        """
        _check_matplotlib(f"{cls.__name__}.from_result")
        accuracy = None
        if y is not None:
            labels = np.asarray(y)
            if labels.ndim != 1 or labels.shape[0] != result.n_samples:
                msg = (
                    f"y must hold one label per routed sample ({result.n_samples}), "
                    f"got shape {labels.shape}"
                )
                raise PolicyError(msg)
            hits = [a == b for a, b in zip(result.labels.tolist(), labels.tolist(), strict=True)]
            accuracy = _exit_accuracy(result.exit_stage, hits, result.n_stages)
        display = cls(result.exit_counts, accuracy, result.stage_names)
        return display.plot(ax=ax)

    @classmethod
    def from_estimator(
        cls,
        cascade: CascadeClassifier,
        X: Any,
        y: Any = None,
        *,
        batch_size: int | None = None,
        ax: Axes | None = None,
    ) -> Self:
        """Route ``X`` through a fitted cascade and draw where its samples exited.

        Args:
            cascade: a fitted [`CascadeClassifier`][cascademl.CascadeClassifier].
            X: the samples.
            y: array-like of shape (n_samples,), their labels; ``None`` draws the exit
                counts alone.
            batch_size: as for [`route`][cascademl.CascadeClassifier.route].
            ax: the axes to draw on; a new figure by default.

        Returns:
            The display, drawn.

        Raises:
            NotFittedError: if the cascade is not fitted.
            PolicyError: if ``y`` does not hold one label per sample.
        """
        _check_matplotlib(f"{cls.__name__}.from_estimator")
        result = cascade.route(X, batch_size=batch_size, keep="none")
        return cls.from_result(result, y, ax=ax)

    def plot(
        self,
        *,
        ax: Axes | None = None,
        annotate: bool = True,
        bar_kwargs: Mapping[str, Any] | None = None,
        accuracy_kwargs: Mapping[str, Any] | None = None,
    ) -> Self:
        """Draw one bar per stage (samples ended) and their accuracy on a second axis.

        Args:
            ax: the axes to draw on; a new figure by default.
            annotate: write each bar's count and share of samples above it.
            bar_kwargs: keywords for ``Axes.bar``.
            accuracy_kwargs: keywords for ``Axes.plot`` of the accuracy points.

        Returns:
            The display.

        Raises:
            PolicyError: if the arrays' lengths disagree.
            ImportError: if matplotlib is not installed.
        """
        names = [str(n) for n in self.stage_names]
        counts = _vector(self.exit_counts, "exit_counts", size=len(names))
        accuracy = (
            None
            if self.exit_accuracy is None
            else _vector(self.exit_accuracy, "exit_accuracy", size=len(names))
        )
        ax = _axes(ax, f"{type(self).__name__}.plot")
        positions = np.arange(len(names), dtype=np.float64)
        self.bars_ = ax.bar(
            positions, counts, **_merge({"color": "tab:blue", "label": "samples ended"}, bar_kwargs)
        )
        ax.set_xticks(positions, names)
        ax.set(xlabel="stage", ylabel="samples ended")
        self.bar_labels_ = []
        if annotate:
            total = float(counts.sum())
            texts = [f"{int(c)} ({c / total:.0%})" if total else "0" for c in counts]
            self.bar_labels_ = list(ax.bar_label(self.bars_, labels=texts, fontsize="small"))
            ax.margins(y=0.15)
        self.ax_accuracy_ = None
        self.accuracy_points_ = None
        if accuracy is not None:
            twin = ax.twinx()
            points = _merge(
                {"color": "tab:orange", "marker": "o", "linestyle": "none", "label": "accuracy"},
                accuracy_kwargs,
            )
            self.accuracy_points_ = twin.plot(positions, accuracy, **points)[0]
            twin.set_ylim(0.0, 1.05)
            twin.set_ylabel("accuracy of the samples it ends", color=points["color"])
            self.ax_accuracy_ = twin
        self.ax_ = ax
        self.figure_ = _figure(ax)
        return self


def _exit_accuracy(exit_stage: IntArray, hits: Any, n_stages: int) -> FloatArray:
    """The share of hits among the samples each stage ended; NaN where it ended none."""
    stages = np.asarray(exit_stage, dtype=np.intp)
    right = np.bincount(stages, weights=np.asarray(hits, dtype=np.float64), minlength=n_stages)
    ended = np.bincount(stages, minlength=n_stages).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(np.where(ended > 0, right / ended, np.nan), dtype=np.float64)
