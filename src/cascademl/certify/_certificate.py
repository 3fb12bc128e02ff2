"""The result of a certification: a frozen, JSON-able certificate and its tested path."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from cascademl._json_floats import _decode_float, _encode_float
from cascademl.exceptions import CascadeMLError, SerializationError
from cascademl.policies import RoutingRule

__all__ = ["Certificate", "CertificatePoint", "Guarantee"]

Guarantee: TypeAlias = Literal["agreement", "accuracy", "selective"]
"""What a certificate guarantees about the population the calibration data came from:

* ``"agreement"``: P(cascade label == last stage's label) >= target (needs no labels);
* ``"accuracy"``: P(cascade label == true label) >= target;
* ``"selective"``: P(cascade label == true label | the cascade decides) >= target, with the
  cascade abstaining below its ``reject_threshold``."""

GUARANTEES: tuple[Guarantee, ...] = ("agreement", "accuracy", "selective")

#: The ``"format"`` key of a certificate's dictionary.
_FORMAT = "cascademl.Certificate"
_VERSION = 1


@dataclass(frozen=True, slots=True)
class CertificatePoint:
    """One setting on a certificate's path, in the order it was tested.

    Attributes:
        thresholds: one routing threshold per non-final stage (``math.inf``: never stop).
        combine: the combiner of this setting's rule.
        mean_cost: the mean cost per calibration sample (abstained samples pay too).
        estimate: the guaranteed quantity on the whole calibration set (agreement,
            accuracy, or accuracy among decided samples).
        p_value: the exact binomial p-value on the testing part of "this setting misses
            the target"; computed for every point, also past the first failure.
        passed: whether the setting is certified: its p-value and those of every point
            before it are at most ``delta`` (fixed-sequence testing).
        coverage: the share of calibration samples decided (1.0 unless selective).
        reject_threshold: the reject threshold of a selective setting, else ``None``.
    """

    thresholds: tuple[float, ...]
    combine: str
    mean_cost: float
    estimate: float
    p_value: float
    passed: bool
    coverage: float = 1.0
    reject_threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dictionary (non-finite floats as strings)."""
        return {
            "thresholds": [_encode_float(t) for t in self.thresholds],
            "combine": self.combine,
            "mean_cost": _encode_float(self.mean_cost),
            "estimate": _encode_float(self.estimate),
            "p_value": _encode_float(self.p_value),
            "passed": self.passed,
            "coverage": _encode_float(self.coverage),
            "reject_threshold": None
            if self.reject_threshold is None
            else _encode_float(self.reject_threshold),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "path point") -> CertificatePoint:
        """Rebuild a point from `to_dict`'s output.

        Raises:
            SerializationError: for a missing key or a value of the wrong type.
        """
        try:
            reject = data["reject_threshold"]
            return cls(
                thresholds=tuple(
                    _decode_float(t, f"{where}.thresholds") for t in data["thresholds"]
                ),
                combine=str(data["combine"]),
                mean_cost=_decode_float(data["mean_cost"], f"{where}.mean_cost"),
                estimate=_decode_float(data["estimate"], f"{where}.estimate"),
                p_value=_decode_float(data["p_value"], f"{where}.p_value"),
                passed=_decode_bool(data["passed"], f"{where}.passed"),
                coverage=_decode_float(data["coverage"], f"{where}.coverage"),
                reject_threshold=None
                if reject is None
                else _decode_float(reject, f"{where}.reject_threshold"),
            )
        except KeyError as exc:
            msg = f"{where}: missing key {exc.args[0]!r}"
            raise SerializationError(msg) from exc
        except TypeError as exc:
            msg = f"{where}: invalid entry ({exc})"
            raise SerializationError(msg) from exc


@dataclass(frozen=True, slots=True, eq=False)
class Certificate:
    """A routing rule with a finite-sample guarantee, and how it was obtained.

    The statement, when ``certified``: with probability at least ``1 - delta`` over the
    draw of the calibration samples, the guaranteed quantity (see
    [`Guarantee`][cascademl.certify.Guarantee]) of ``rule`` is at least ``target`` on the
    population the calibration samples were drawn from, provided future samples are
    exchangeable with them and the stages are the same fitted models.

    Attributes:
        rule: the certified [`RoutingRule`][cascademl.RoutingRule] (or the safe rule when
            nothing could be certified).
        guarantee: ``"agreement"``, ``"accuracy"`` or ``"selective"``.
        target: the guaranteed level, in (0, 1).
        delta: the allowed probability that the guarantee fails, in (0, 1).
        certified: whether the guarantee holds for ``rule``. When ``False``, ``rule`` is
            the safe rule, returned with a `CertificationWarning`, and nothing is claimed.
        bound: the one-sided Clopper-Pearson lower confidence bound (level ``1 - delta``)
            of the guaranteed quantity at the chosen setting, on the testing part; at or
            above ``target`` when certified. For an uncertified ``"accuracy"`` certificate
            it is the safe rule's bound; NaN when no bound applies.
        estimate: the plain estimate of the guaranteed quantity at the chosen setting on
            the whole calibration set.
        n_calibration: the number of calibration samples.
        n_path: how many of them chose the path (never used in the tests).
        n_test: how many of them tested the path.
        mean_cost: the expected cost per sample on the calibration set.
        cost_share_last: ``mean_cost`` over the cost of the last stage alone.
        cost_share_all: ``mean_cost`` over the sum of all stage costs.
        coverage: the share of calibration samples decided (1.0 unless selective).
        reject_threshold: the certified reject threshold (``"selective"``), else ``None``.
        method: how the certificate was computed.
        stage_names: the stages' names, in order.
        stage_cost: the cost of one sample at each stage.
        path: the settings tested, in order (the frontier of tested settings).
        chosen_index: the position of ``rule``'s setting in ``path``; ``None`` when
            nothing was certified.
    """

    rule: RoutingRule
    guarantee: Guarantee
    target: float
    delta: float
    certified: bool
    bound: float
    estimate: float
    n_calibration: int
    n_path: int
    n_test: int
    mean_cost: float
    cost_share_last: float
    cost_share_all: float
    coverage: float
    reject_threshold: float | None
    method: str
    stage_names: tuple[str, ...]
    stage_cost: tuple[float, ...]
    path: tuple[CertificatePoint, ...]
    chosen_index: int | None

    def summary(self) -> str:
        """One readable sentence: what is guaranteed, at what confidence and cost.

        Examples:
            >>> import numpy as np
            >>> from cascademl.certify import certify_cascade_from_proba
            >>> rng = np.random.default_rng(0)
            >>> strong = np.eye(2)[rng.integers(0, 2, 3000)] * 0.9 + 0.05
            >>> flip = rng.random((3000, 1)) < 0.2  # the cheap stage is unsure when wrong
            >>> cheap = np.where(flip, 1 - strong, strong) * 0.5 + np.where(flip, 0.25, 0.2)
            >>> cheap = cheap / cheap.sum(axis=1, keepdims=True)
            >>> cert = certify_cascade_from_proba(
            ...     np.stack([cheap, strong]), classes=[0, 1], target=0.9,
            ...     stage_cost=[1, 10], stage_names=["cheap", "strong"],
            ... )
            >>> cert.summary()  # doctest: +ELLIPSIS
            'agrees with strong on at least 90.0% of samples with 95% confidence, at ...'
        """
        last = self.stage_names[-1]
        conf = _percent(1.0 - self.delta, 0)
        n = f"n={self.n_calibration:,} calibration samples"
        target = _percent(self.target, 1)
        if not self.certified:
            bound = "" if math.isnan(self.bound) else f"; its lower bound is {self.bound:.4f}"
            quantity = "selective accuracy" if self.guarantee == "selective" else self.guarantee
            return (
                f"not certified: no setting reached {quantity} of {target} with {conf} "
                f"confidence ({n}); falls back to {last} alone{bound}"
            )
        cost = f"{self.cost_share_last:.0%}"
        if self.guarantee == "agreement":
            return (
                f"agrees with {last} on at least {target} of samples with {conf} confidence, "
                f"at {cost} of its cost ({n})"
            )
        if self.guarantee == "accuracy":
            return (
                f"is at least {target} accurate with {conf} confidence, at {cost} of the cost "
                f"of {last} ({n})"
            )
        return (
            f"is at least {target} accurate on the samples it decides "
            f"({self.coverage:.0%} of calibration samples) with {conf} confidence, at "
            f"{cost} of the cost of {last} ({n})"
        )

    def matches(self, cascade: Any) -> bool:
        """Whether a fitted cascade routes with this certificate's rule and stages.

        A certificate speaks for one rule on one sequence of fitted stages: after
        ``set_params`` changes the policy, combiner or weights (or the reject threshold of a
        selective certificate), it no longer applies.
        """
        try:
            names = tuple(cascade.named_stages_.keys())
            rule = cascade.routing_rule_
        except (AttributeError, CascadeMLError):
            return False
        if names != self.stage_names or rule != self.rule:
            return False
        return self.guarantee != "selective" or cascade.reject_threshold == self.reject_threshold

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dictionary; `from_dict` rebuilds the certificate (inf and NaN too).

        Examples:
            >>> import json, math
            >>> from cascademl import RoutingRule
            >>> rule = RoutingRule("max_proba", (math.inf, math.inf), "last")
            >>> cert = Certificate(
            ...     rule, "accuracy", 0.99, 0.05, False, math.nan, 0.97, 500, 150, 350,
            ...     10.0, 1.0, 0.9, 1.0, None, "example", ("a", "b"), (1.0, 10.0), (), None,
            ... )
            >>> back = Certificate.from_dict(json.loads(json.dumps(cert.to_dict())))
            >>> back.rule == rule, math.isnan(back.bound)
            (True, True)
        """
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "rule": {
                "measure": self.rule.measure,
                "thresholds": [_encode_float(t) for t in self.rule.thresholds],
                "combine": self.rule.combine,
                "escalation_weights": [float(w) for w in self.rule.escalation_weights],
            },
            "guarantee": self.guarantee,
            "target": float(self.target),
            "delta": float(self.delta),
            "certified": self.certified,
            "bound": _encode_float(self.bound),
            "estimate": _encode_float(self.estimate),
            "n_calibration": self.n_calibration,
            "n_path": self.n_path,
            "n_test": self.n_test,
            "mean_cost": _encode_float(self.mean_cost),
            "cost_share_last": _encode_float(self.cost_share_last),
            "cost_share_all": _encode_float(self.cost_share_all),
            "coverage": _encode_float(self.coverage),
            "reject_threshold": None
            if self.reject_threshold is None
            else _encode_float(self.reject_threshold),
            "method": self.method,
            "stage_names": list(self.stage_names),
            "stage_cost": [_encode_float(c) for c in self.stage_cost],
            "path": [p.to_dict() for p in self.path],
            "chosen_index": self.chosen_index,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "certificate") -> Certificate:
        """Rebuild a certificate from `to_dict`'s output.

        Raises:
            SerializationError: naming ``where`` and the key, for a dictionary that is not a
                certificate (another format or version, a missing key, a bad value).
        """
        if not isinstance(data, Mapping) or data.get("format") != _FORMAT:
            found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            msg = f"{where}: not a certificate (format {found!r}, expected {_FORMAT!r})"
            raise SerializationError(msg)
        if data.get("version") != _VERSION:
            msg = f"{where}: certificate version {data.get('version')!r} is not supported"
            raise SerializationError(msg)
        guarantee = data.get("guarantee")
        if guarantee not in GUARANTEES:
            msg = f"{where}: guarantee must be one of {GUARANTEES}, got {guarantee!r}"
            raise SerializationError(msg)
        chosen = data.get("chosen_index")
        if chosen is not None and (isinstance(chosen, bool) or not isinstance(chosen, int)):
            msg = f"{where}: chosen_index must be null or an integer, got {chosen!r}"
            raise SerializationError(msg)
        try:
            raw_rule = data["rule"]
            rule = RoutingRule(
                raw_rule["measure"],
                tuple(_decode_float(t, f"{where}.rule.thresholds") for t in raw_rule["thresholds"]),
                raw_rule["combine"],
                tuple(
                    _decode_float(w, f"{where}.rule.escalation_weights")
                    for w in raw_rule["escalation_weights"]
                ),
            )
            reject = data["reject_threshold"]
            return cls(
                rule=rule,
                guarantee=guarantee,
                target=_decode_float(data["target"], f"{where}.target"),
                delta=_decode_float(data["delta"], f"{where}.delta"),
                certified=_decode_bool(data["certified"], f"{where}.certified"),
                bound=_decode_float(data["bound"], f"{where}.bound"),
                estimate=_decode_float(data["estimate"], f"{where}.estimate"),
                n_calibration=_decode_int(data["n_calibration"], f"{where}.n_calibration"),
                n_path=_decode_int(data["n_path"], f"{where}.n_path"),
                n_test=_decode_int(data["n_test"], f"{where}.n_test"),
                mean_cost=_decode_float(data["mean_cost"], f"{where}.mean_cost"),
                cost_share_last=_decode_float(data["cost_share_last"], f"{where}.cost_share_last"),
                cost_share_all=_decode_float(data["cost_share_all"], f"{where}.cost_share_all"),
                coverage=_decode_float(data["coverage"], f"{where}.coverage"),
                reject_threshold=None
                if reject is None
                else _decode_float(reject, f"{where}.reject_threshold"),
                method=str(data["method"]),
                stage_names=tuple(str(n) for n in data["stage_names"]),
                stage_cost=tuple(
                    _decode_float(c, f"{where}.stage_cost") for c in data["stage_cost"]
                ),
                path=tuple(
                    CertificatePoint.from_dict(p, f"{where}.path[{i}]")
                    for i, p in enumerate(data["path"])
                ),
                chosen_index=chosen,
            )
        except KeyError as exc:
            msg = f"{where}: missing key {exc.args[0]!r}"
            raise SerializationError(msg) from exc
        except SerializationError:
            raise
        except (CascadeMLError, TypeError, ValueError) as exc:
            msg = f"{where}: invalid certificate ({exc})"
            raise SerializationError(msg) from exc


def _decode_bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        msg = f"{where} must be true or false, got {value!r}"
        raise SerializationError(msg)
    return value


def _decode_int(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        msg = f"{where} must be a non-negative integer, got {value!r}"
        raise SerializationError(msg)
    return value


def _percent(value: float, decimals: int) -> str:
    """``value`` as a percentage, with more decimals only where they are needed."""
    if math.isnan(value):
        return "nan%"
    for d in range(decimals, decimals + 4):
        text = f"{value:.{d}%}"
        if abs(float(text[:-1]) / 100.0 - value) < 1e-9:  # noqa: PLR2004
            return text
    return f"{value:.{decimals + 3}%}"
