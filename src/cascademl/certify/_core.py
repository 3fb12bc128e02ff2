"""Certification on cached probabilities: paths chosen on one part, tested on the other."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cascademl._labels import label_indices
from cascademl._typing import CombineMethod, FloatArray, IntArray, LabelArray
from cascademl.abstention import abstain_mask
from cascademl.certify._certificate import GUARANTEES, Certificate, CertificatePoint, Guarantee
from cascademl.certify._stats import (
    binomial_p_value,
    lower_confidence_bound,
    required_test_size,
)
from cascademl.exceptions import CertificationWarning, PolicyError
from cascademl.policies import ConfidencePolicy, RoutingRule
from cascademl.tuning._results import FrontierPoint, TuningResult
from cascademl.tuning._scoring import _resolve_scoring
from cascademl.tuning._search import _candidates, _Problem, _tune_one
from cascademl.tuning._thresholds import _check_rows, _check_rule, _names

__all__ = ["certify_cascade_from_proba"]

#: The combiners and escalation weights tried when ``rule=None``, in order of preference.
COMBINER_GRID: tuple[tuple[CombineMethod, float], ...] = (
    ("last", 0.5),
    ("vote", 0.25),
    ("vote", 0.5),
    ("vote", 0.75),
    ("mean", 0.5),
)
_N_CANDIDATES = 64  # candidate thresholds per stage on the path part (the tuner's default)
_N_LAMBDAS = 12  # cost penalties tracing the path part's frontier (the tuner's default)
_ACCURACY = _resolve_scoring(None)
METHOD = "learn-then-test, fixed-sequence testing, exact binomial p-values"


@dataclass(frozen=True, slots=True)
class _Data:
    """Validated inputs: probabilities, reference labels and the split."""

    p: FloatArray
    labels: LabelArray
    ref: IntArray  # the reference label of each sample: the last stage's, or y
    costs: FloatArray
    names: tuple[str, ...]
    path_idx: IntArray
    test_idx: IntArray
    alpha: float
    delta: float

    @property
    def n_stages(self) -> int:
        return int(self.p.shape[0])

    def problem(self, rule: RoutingRule) -> _Problem:
        """The tuner's cached exits of ``rule`` on the whole calibration set."""
        return _Problem(
            self.p, self.ref, self.labels, self.costs, rule=rule, score=_ACCURACY, n_candidates=2
        )

    def tune_path_part(self, rule: RoutingRule) -> TuningResult:
        """The tuner's frontier of ``rule`` on the path part only."""
        return _tune_one(
            self.p[:, self.path_idx],
            self.ref[self.path_idx],
            self.labels,
            self.costs,
            names=self.names,
            order=tuple(range(self.n_stages)),
            n_stages=self.n_stages,
            rule=rule,
            score=_ACCURACY,
            max_cost=None,
            min_score=None,
            n_candidates=_N_CANDIDATES,
            n_lambdas=_N_LAMBDAS,
        )

    def predicted_pass(self, errors_share: float, n: float) -> bool:
        """Whether the testing part would pass with this error share on ``n`` samples."""
        m = round(n)
        return binomial_p_value(round(errors_share * m), m, self.alpha) <= self.delta


def certify_cascade_from_proba(
    stage_proba: Any,
    *,
    classes: Any,
    target: float,
    delta: float = 0.05,
    guarantee: Guarantee = "agreement",
    y: Any = None,
    rule: RoutingRule | None = None,
    stage_cost: Sequence[float] | None = None,
    stage_names: Sequence[str] | None = None,
    path_fraction: float = 0.3,
    random_state: int | None = 0,
) -> Certificate:
    """Certify a cascade's routing from cached calibration probabilities (Learn then Test).

    The calibration samples are split at random (``random_state``) into a *path* part
    (``path_fraction`` of them) and a *testing* part. On the path part only, an ordered
    path of candidate settings is built, from the safest (every sample to the last stage,
    whose answer it keeps) towards the cheapest: the tuner's accuracy-cost frontier (scored
    against the last stage's labels for ``"agreement"`` and against ``y`` for
    ``"accuracy"``), by decreasing cost; for ``"selective"``, reject thresholds on the
    final confidence from high to low. The path does not depend on the testing part. On the
    testing part, each setting's hypothesis "it misses the target" is tested in order with
    the exact binomial p-value ``P(Binom(n, 1 - target) <= errors)`` at level ``delta``,
    stopping at the first setting that does not pass; every setting before it is certified
    at once (the family-wise error rate is at most ``delta``), and the certified setting
    with the lowest mean cost on the whole calibration set is returned (the largest
    coverage for ``"selective"``).

    With ``rule=None`` the combiner and escalation weight are chosen too (``"last"``,
    ``"vote"`` with weight 0.25, 0.5 or 0.75, ``"mean"``; max-probability confidence), on
    the path part only: the variant whose path is predicted to reach the lowest cost (the
    largest coverage) while its path-part estimate would still pass at the testing part's
    size; only that variant's path is tested. A given ``rule`` keeps its measure, combiner
    and weights; its thresholds are certified (for ``"selective"`` they are kept too, and
    only the reject threshold is certified).

    The guarantee holds for data exchangeable with the calibration samples, routed by
    the same fitted stages: see the "Certified cascades" page for what voids it.

    Args:
        stage_proba: array of shape (n_stages, n_samples, n_classes) of every stage on every
            calibration sample (from [`stage_probabilities`][cascademl.tuning.stage_probabilities]).
            Never the data the stages were trained on.
        classes: array-like of shape (n_classes,), the labels of the columns.
        target: the guaranteed level, in (0, 1) (agreement or accuracy).
        delta: the allowed probability that the guarantee fails, in (0, 1).
        guarantee: ``"agreement"`` (with the last stage's label; needs no ``y``),
            ``"accuracy"`` or ``"selective"`` (accuracy among the samples the cascade
            decides, the rest abstained on); see [`Guarantee`][cascademl.certify.Guarantee].
        y: array-like of shape (n_samples,), the true labels; needed for ``"accuracy"`` and
            ``"selective"``, ignored for ``"agreement"``.
        rule: the [`RoutingRule`][cascademl.RoutingRule] to certify, or ``None`` to choose
            the combiner and escalation weight as well.
        stage_cost: the cost of one sample at each stage; 1 per stage call by default.
        stage_names: names for the certificate; ``stage0``, ``stage1``... by default.
        path_fraction: the share of calibration samples used to build the path, in (0, 1).
        random_state: seed of the split (``None``: a fresh one).

    Returns:
        The certificate; ``certificate.certified`` is ``False`` (with a
        `CertificationWarning`, and the safe rule) when no setting could be certified.

    Raises:
        PolicyError: for a ``target``, ``delta`` or ``path_fraction`` outside (0, 1), an
            unknown ``guarantee``, a missing ``y``, probabilities that are NaN or do not
            sum to one, mismatched shapes, or a calibration set too small for any
            certificate (the message says how many samples it would need).

    Warns:
        CertificationWarning: when nothing was certified, or nothing cheaper than the
            last stage alone.

    Examples:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 2, 3000)
        >>> strong = np.eye(2)[y] * 0.9 + 0.05
        >>> flip = rng.random((3000, 1)) < 0.2
        >>> cheap = np.where(flip, 1 - strong, strong) * 0.5 + np.where(flip, 0.25, 0.2)
        >>> cheap = cheap / cheap.sum(axis=1, keepdims=True)
        >>> cert = certify_cascade_from_proba(
        ...     np.stack([cheap, strong]), classes=[0, 1], target=0.95, stage_cost=[1, 10],
        ... )
        >>> cert.certified, cert.bound >= 0.95, cert.cost_share_last < 1
        (True, True, True)
    """
    data = _validate(
        stage_proba, classes, target, delta, guarantee, y, stage_cost, stage_names,
        path_fraction, random_state,
    )  # fmt: skip
    base = None if rule is None else _check_rule(rule, data.n_stages)
    target = float(target)
    if guarantee == "selective":
        return _certify_selective(data, base, target)
    return _certify_rate(data, base, target, guarantee)


# --------------------------------------------------------------------------- validation
def _check_unit(value: object, name: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0.0 < float(value) < 1.0  # NaN fails too
    ):
        msg = f"{name} must be a number strictly between 0 and 1, got {value!r}"
        raise PolicyError(msg)
    return float(value)


def _split_sizes(n: int, path_fraction: float) -> tuple[int, int]:
    n_path = math.floor(path_fraction * n + 0.5)
    return n_path, n - n_path


def required_calibration_size(target: float, delta: float, path_fraction: float = 0.3) -> int:
    """The fewest calibration samples with which anything can be certified.

    The testing part (``1 - path_fraction`` of them) must hold at least
    [`required_test_size`][cascademl.certify.required_test_size]``(target, delta)`` samples,
    and the path part at least one.

    Examples:
        >>> required_calibration_size(0.99, 0.05)
        427
    """
    target = _check_unit(target, "target")
    delta = _check_unit(delta, "delta")
    path_fraction = _check_unit(path_fraction, "path_fraction")
    need = required_test_size(target, delta)
    # n samples leave n - floor(path_fraction * n + 0.5) <= (1 - path_fraction) * n + 0.5 for
    # testing, so no n below (need - 0.5) / (1 - path_fraction) passes; both parts only grow
    # with n, so the first n that passes, searching up from there, is the fewest.
    n = max(2, math.floor((need - 0.5) / (1.0 - path_fraction)))
    while True:
        n_path, n_test = _split_sizes(n, path_fraction)
        if n_path >= 1 and n_test >= need:
            return n
        n += 1


def _validate(  # noqa: PLR0917 - private; one call site passes them all
    stage_proba: Any,
    classes: Any,
    target: object,
    delta: object,
    guarantee: object,
    y: Any,
    stage_cost: Sequence[float] | None,
    stage_names: Sequence[str] | None,
    path_fraction: object,
    random_state: int | None,
) -> _Data:
    target_f = _check_unit(target, "target")
    delta_f = _check_unit(delta, "delta")
    fraction = _check_unit(path_fraction, "path_fraction")
    if guarantee not in GUARANTEES:
        msg = f"guarantee must be one of {GUARANTEES}, got {guarantee!r}"
        raise PolicyError(msg)
    if guarantee != "agreement" and y is None:
        msg = (
            f"guarantee={guarantee!r} needs the true labels y of the calibration samples, got "
            "y=None (guarantee='agreement' needs none)"
        )
        raise PolicyError(msg)
    if random_state is not None and (
        isinstance(random_state, bool) or not isinstance(random_state, numbers.Integral)
    ):
        msg = f"random_state must be an integer or None, got {random_state!r}"
        raise PolicyError(msg)
    p = np.asarray(stage_proba, dtype=np.float64)
    if p.ndim != 3 or p.shape[0] == 0:  # noqa: PLR2004 - (n_stages, n_samples, n_classes)
        msg = (
            "stage_proba must have shape (n_stages, n_samples, n_classes) with at least one "
            f"stage, got {p.shape}"
        )
        raise PolicyError(msg)
    names = _names(stage_names, p.shape[0])
    labels = np.asarray(classes)
    if labels.shape != (p.shape[2],):
        msg = f"classes must hold {p.shape[2]} labels (one per column), got shape {labels.shape}"
        raise PolicyError(msg)
    _check_rows(p, names)
    n = int(p.shape[1])
    if guarantee == "agreement":
        ref = np.asarray(np.argmax(p[-1], axis=1), dtype=np.intp)
    else:
        ref = label_indices(y, labels)
        if ref.size != n:
            msg = f"y has {ref.size} labels but stage_proba has {n} samples"
            raise PolicyError(msg)
    costs = np.ones(p.shape[0]) if stage_cost is None else np.asarray(stage_cost, dtype=float)
    if costs.shape != (p.shape[0],) or not np.all(np.isfinite(costs)) or np.any(costs < 0):
        msg = (
            f"stage_cost must hold {p.shape[0]} finite non-negative numbers (one per "
            f"stage), got {stage_cost!r}"
        )
        raise PolicyError(msg)
    n_path, n_test = _split_sizes(n, fraction)
    need = required_test_size(target_f, delta_f)
    if n_path < 1 or n_test < need:
        total = required_calibration_size(target_f, delta_f, fraction)
        msg = (
            f"stage_proba holds {n} calibration samples, too few to certify target={target!r} "
            f"at delta={delta!r}: even with no error, the testing part (1 - path_fraction = "
            f"{1 - fraction:g} of them, {n_test} samples) must hold at least {need} samples "
            f"(target ** n <= delta), so at least {total} calibration samples are needed"
        )
        raise PolicyError(msg)
    order = np.random.default_rng(random_state).permutation(n)
    return _Data(
        p=p,
        labels=labels,
        ref=ref,
        costs=costs,
        names=names,
        path_idx=np.sort(order[:n_path]),
        test_idx=np.sort(order[n_path:]),
        alpha=1.0 - target_f,
        delta=delta_f,
    )


# --------------------------------------------------------------------------- agreement, accuracy
def _safe_rule(data: _Data, measure: str = "max_proba") -> RoutingRule:
    """Every sample to the last stage, which alone answers."""
    return RoutingRule.from_params(
        ConfidencePolicy(measure, math.inf),  # type: ignore[arg-type]
        n_stages=data.n_stages,
        combine="last",
    )


def _variants(data: _Data, base: RoutingRule | None) -> list[RoutingRule]:
    if base is not None:
        return [base]
    return [
        RoutingRule.from_params(
            ConfidencePolicy("max_proba"),
            n_stages=data.n_stages,
            combine=combine,
            escalation_weight=weight,
        )
        for combine, weight in COMBINER_GRID
    ]


@dataclass(frozen=True, slots=True)
class _Evaluated:
    """A path setting evaluated on the whole calibration set and on the testing part."""

    rule: RoutingRule
    hits: np.ndarray[Any, np.dtype[np.bool_]]
    mean_cost: float
    p_value: float


def _evaluate(data: _Data, problem: _Problem, rule: RoutingRule) -> _Evaluated:
    exits = problem.exit_stages(rule.thresholds[:-1])
    cols = np.arange(problem.n_samples)
    hits = problem.exit_pred[exits, cols] == data.ref
    errors = int(data.test_idx.size - hits[data.test_idx].sum())
    return _Evaluated(
        rule=rule,
        hits=hits,
        mean_cost=float(problem.cum_cost[exits].mean()),
        p_value=binomial_p_value(errors, int(data.test_idx.size), data.alpha),
    )


def _predicted_reach(data: _Data, frontier: Sequence[FrontierPoint]) -> float:
    """The lowest path-part cost the path would reach if the testing part looked the same."""
    reach = math.inf
    n_test = float(data.test_idx.size)
    for point in frontier:
        if not data.predicted_pass(1.0 - point.score, n_test):
            break
        reach = min(reach, point.mean_cost)
    return reach


def _certify_rate(
    data: _Data, base: RoutingRule | None, target: float, guarantee: Guarantee
) -> Certificate:
    variants = _variants(data, base)
    frontier: Sequence[FrontierPoint] = ()
    if data.n_stages == 1:
        chosen_rule = variants[0]
    else:
        tuned = [data.tune_path_part(v) for v in variants]
        paths = [r.frontier[::-1] for r in tuned]  # by decreasing cost
        reach = [_predicted_reach(data, f) for f in paths]
        best = min(range(len(variants)), key=lambda i: (reach[i], i))
        chosen_rule, frontier = variants[best], paths[best]
    safe = _safe_rule(data, chosen_rule.measure)
    rules = [safe] + [
        r for r in (chosen_rule.with_thresholds(pt.thresholds) for pt in frontier) if r != safe
    ]
    problems: dict[tuple[str, tuple[float, ...]], _Problem] = {}
    evaluated = []
    for r in rules:
        key = (r.combine, r.escalation_weights)
        if key not in problems:
            problems[key] = data.problem(r)
        evaluated.append(_evaluate(data, problems[key], r))
    passed = _fixed_sequence([e.p_value for e in evaluated], data.delta)
    path = tuple(
        CertificatePoint(
            thresholds=e.rule.thresholds[:-1],
            combine=e.rule.combine,
            mean_cost=e.mean_cost,
            estimate=float(e.hits.mean()),
            p_value=e.p_value,
            passed=ok,
        )
        for e, ok in zip(evaluated, passed, strict=True)
    )
    certified = [i for i, ok in enumerate(passed) if ok]
    n_test = int(data.test_idx.size)
    if certified:
        chosen: int | None = min(certified, key=lambda i: (path[i].mean_cost, -path[i].estimate, i))
    else:
        chosen = None
    index = 0 if chosen is None else chosen
    hits_test = int(evaluated[index].hits[data.test_idx].sum())
    bound = lower_confidence_bound(hits_test, n_test, data.delta)
    cert = _certificate(
        data,
        rule=evaluated[index].rule,
        guarantee=guarantee,
        target=target,
        certified=chosen is not None,
        bound=bound,
        point=path[index],
        path=path,
        chosen_index=chosen,
        chose_rule=base is None,
    )
    _warn(cert)
    return cert


def _fixed_sequence(p_values: Sequence[float], delta: float) -> list[bool]:
    """Fixed-sequence testing: reject in order while each p-value is at most ``delta``."""
    passed = []
    ok = True
    for p in p_values:
        ok = ok and p <= delta
        passed.append(ok)
    return passed


# --------------------------------------------------------------------------- selective
@dataclass(frozen=True, slots=True)
class _Selective:
    """A routing rule with its final confidences and hits on the whole calibration set."""

    rule: RoutingRule
    proba: FloatArray
    hits: np.ndarray[Any, np.dtype[np.bool_]]
    mean_cost: float


def _routed(data: _Data, rule: RoutingRule) -> _Selective:
    problem = data.problem(rule)
    exits = problem.exit_stages(rule.thresholds[:-1])
    cols = np.arange(problem.n_samples)
    return _Selective(
        rule=rule,
        proba=problem.exit_proba[exits, cols],
        hits=problem.exit_pred[exits, cols] == data.ref,
        mean_cost=float(problem.cum_cost[exits].mean()),
    )


def _reject_path(data: _Data, routed: _Selective) -> tuple[FloatArray, float]:
    """Reject thresholds from high to low, starting where the path part is most convincing.

    Returns the thresholds and the path part's predicted largest certifiable coverage.
    """
    idx = data.path_idx
    conf = routed.rule.confidence(routed.proba[idx])
    cands = _candidates(conf, _N_CANDIDATES)
    cands = np.sort(cands[np.isfinite(cands)])[::-1]
    hits = routed.hits[idx]
    n_test = float(data.test_idx.size)
    p_pred = np.empty(cands.size)
    coverage = np.empty(cands.size)
    for j, t in enumerate(cands):
        decided = ~abstain_mask(routed.proba[idx], float(t), measure=routed.rule.measure)
        m = int(decided.sum())
        coverage[j] = m / idx.size
        share = 1.0 - float(hits[decided].mean()) if m else 1.0
        expected = round(coverage[j] * n_test)
        p_pred[j] = binomial_p_value(round(share * expected), expected, data.alpha)
    start = int(np.argmin(p_pred))
    reach = 0.0
    for j in range(start, cands.size):
        if p_pred[j] > data.delta:
            break
        reach = float(coverage[j])
    return cands[start:], reach


def _certify_selective(data: _Data, base: RoutingRule | None, target: float) -> Certificate:
    if base is not None:
        candidates = [_routed(data, base)]
    elif data.n_stages == 1:
        candidates = [_routed(data, _variants(data, None)[0])]
    else:
        candidates = [_routed(data, data.tune_path_part(v).rule) for v in _variants(data, None)]
    paths = [_reject_path(data, c) for c in candidates]
    best = min(range(len(candidates)), key=lambda i: (-paths[i][1], candidates[i].mean_cost, i))
    routed, (thresholds, _) = candidates[best], paths[best]
    points = []
    p_values = []
    stats = []
    for t in thresholds.tolist():
        decided = ~abstain_mask(routed.proba, t, measure=routed.rule.measure)
        test_decided = decided[data.test_idx]
        m = int(test_decided.sum())
        k = int(m - routed.hits[data.test_idx][test_decided].sum())
        p_values.append(binomial_p_value(k, m, data.alpha))
        stats.append((m - k, m))
        points.append((t, decided))
    passed = _fixed_sequence(p_values, data.delta)
    path = tuple(
        CertificatePoint(
            thresholds=routed.rule.thresholds[:-1],
            combine=routed.rule.combine,
            mean_cost=routed.mean_cost,
            estimate=float(routed.hits[decided].mean()) if decided.any() else math.nan,
            p_value=p,
            passed=ok,
            coverage=float(decided.mean()),
            reject_threshold=float(t),
        )
        for (t, decided), p, ok in zip(points, p_values, passed, strict=True)
    )
    certified = [i for i, ok in enumerate(passed) if ok]
    if certified:
        chosen = max(certified, key=lambda i: (path[i].coverage, i))
        successes, m = stats[chosen]
        cert = _certificate(
            data,
            rule=routed.rule,
            guarantee="selective",
            target=target,
            certified=True,
            bound=lower_confidence_bound(successes, m, data.delta),
            point=path[chosen],
            path=path,
            chosen_index=chosen,
            chose_rule=base is None,
        )
    else:
        safe = _routed(data, _safe_rule(data, routed.rule.measure))
        decided = ~abstain_mask(safe.proba, 1.0, measure=safe.rule.measure)
        fallback = CertificatePoint(
            thresholds=safe.rule.thresholds[:-1],
            combine="last",
            mean_cost=safe.mean_cost,
            estimate=float(safe.hits[decided].mean()) if decided.any() else math.nan,
            p_value=math.nan,
            passed=False,
            coverage=float(decided.mean()),
            reject_threshold=1.0,
        )
        cert = _certificate(
            data,
            rule=safe.rule,
            guarantee="selective",
            target=target,
            certified=False,
            bound=math.nan,
            point=fallback,
            path=path,
            chosen_index=None,
            chose_rule=base is None,
        )
    _warn(cert)
    return cert


# --------------------------------------------------------------------------- result
def _certificate(
    data: _Data,
    *,
    rule: RoutingRule,
    guarantee: Guarantee,
    target: float,
    certified: bool,
    bound: float,
    point: CertificatePoint,
    path: tuple[CertificatePoint, ...],
    chosen_index: int | None,
    chose_rule: bool,
) -> Certificate:
    total = float(data.costs.sum())
    last = float(data.costs[-1])
    choice = "combiner chosen on the path part" if chose_rule else "rule given"
    return Certificate(
        rule=rule,
        guarantee=guarantee,
        target=target,
        delta=data.delta,
        certified=certified,
        bound=bound,
        estimate=point.estimate,
        n_calibration=int(data.p.shape[1]),
        n_path=int(data.path_idx.size),
        n_test=int(data.test_idx.size),
        mean_cost=point.mean_cost,
        cost_share_last=point.mean_cost / last if last > 0 else math.nan,
        cost_share_all=point.mean_cost / total if total > 0 else math.nan,
        coverage=point.coverage,
        reject_threshold=point.reject_threshold,
        method=f"{METHOD} ({len(path)} settings on the path; {choice})",
        stage_names=data.names,
        stage_cost=tuple(float(c) for c in data.costs),
        path=path,
        chosen_index=chosen_index,
    )


def _warn(cert: Certificate) -> None:
    if not cert.certified:
        warnings.warn(
            f"{cert.summary()}; the returned rule is the safe fallback, not a certified one",
            CertificationWarning,
            stacklevel=4,
        )
    elif cert.guarantee != "selective" and cert.chosen_index == 0 and len(cert.path) > 1:
        warnings.warn(
            f"only the last stage alone could be certified ({cert.guarantee} >= "
            f"{cert.target:g} at delta={cert.delta:g}, n={cert.n_calibration:,}): no "
            "cheaper setting passed; more calibration samples or a lower target may help",
            CertificationWarning,
            stacklevel=4,
        )
