"""Certify a fitted cascade and apply a certificate: the cascade-level entry points."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cascademl._probabilities import stage_probabilities
from cascademl._validation import check_fitted
from cascademl.cascade import CascadeClassifier
from cascademl.certify._certificate import Certificate, Guarantee
from cascademl.certify._core import certify_cascade_from_proba
from cascademl.exceptions import PolicyError
from cascademl.policies import RoutingRule
from cascademl.stages import stage_cost as _stage_cost
from cascademl.tuning._apply import _adopt_rule

__all__ = ["apply_certificate", "certify_cascade"]


def certify_cascade(
    cascade: CascadeClassifier,
    X: Any,
    y: Any = None,
    *,
    target: float,
    delta: float = 0.05,
    guarantee: Guarantee = "agreement",
    rule: RoutingRule | None = None,
    stage_cost: Sequence[float] | None = None,
    path_fraction: float = 0.3,
    random_state: int | None = 0,
) -> Certificate:
    """Certify a fitted cascade on calibration data (each stage runs once on every sample).

    See [`certify_cascade_from_proba`][cascademl.certify.certify_cascade_from_proba] for the
    method and the guarantee. Apply the result with
    [`apply_certificate`][cascademl.certify.apply_certificate].

    Args:
        cascade: a fitted cascade.
        X: calibration inputs: drawn like the data the cascade will see, never used to
            train a stage, and never reused to choose among certificates.
        y: the true labels of ``X``; needed for ``"accuracy"`` and ``"selective"``.
        target: the guaranteed level, in (0, 1).
        delta: the allowed probability that the guarantee fails, in (0, 1).
        guarantee: ``"agreement"``, ``"accuracy"`` or ``"selective"``.
        rule: the rule whose thresholds are certified; ``None`` chooses the combiner and
            escalation weight too. Pass ``cascade.routing_rule_`` to keep the cascade's.
        stage_cost: cost per sample of each stage; defaults to each stage's
            ``cost_per_sample`` (1 per stage call when it has none).
        path_fraction: see `certify_cascade_from_proba`.
        random_state: see `certify_cascade_from_proba`.

    Returns:
        The certificate.

    Raises:
        NotFittedError: if the cascade is not fitted.
        PolicyError: see `certify_cascade_from_proba`.

    Examples:
        >>> from sklearn.datasets import load_digits
        >>> from sklearn.linear_model import LogisticRegression
        >>> from sklearn.naive_bayes import GaussianNB
        >>> X, y = load_digits(return_X_y=True)
        >>> cascade = CascadeClassifier(
        ...     [("nb", GaussianNB()), ("lr", LogisticRegression(max_iter=2000))]
        ... ).fit(X[:800], y[:800])
        >>> cert = certify_cascade(cascade, X[800:], target=0.9, stage_cost=[1, 5])
        >>> certified = apply_certificate(cascade, cert)
        >>> cert.certified, certified.certificate_ is cert
        (True, True)
    """
    check_fitted(cascade, before="certify_cascade")
    costs = (
        [float(c) for c in stage_cost]
        if stage_cost is not None
        else [_stage_cost(s) for s in cascade.stages_]
    )
    return certify_cascade_from_proba(
        stage_probabilities(cascade, X),
        classes=cascade.classes_,
        target=target,
        delta=delta,
        guarantee=guarantee,
        y=y,
        rule=rule,
        stage_cost=costs,
        stage_names=tuple(cascade.named_stages_.keys()),
        path_fraction=path_fraction,
        random_state=random_state,
    )


def apply_certificate(cascade: CascadeClassifier, certificate: Certificate) -> CascadeClassifier:
    """Return a new fitted cascade that routes with the certificate's rule, and keeps it.

    The stages are reused, never retrained. The new cascade's policy, combiner and
    escalation weights are those of ``certificate.rule``; for a ``"selective"``
    certificate its ``reject_threshold`` is the certified one (its guarantee is about
    `predict_or_abstain`). The certificate is kept as ``certificate_``, saved and loaded
    with the cascade by [`save_cascade`][cascademl.io.save_cascade].

    Args:
        cascade: the fitted cascade that was certified.
        certificate: its certificate (certified or not: an uncertified one carries the
            safe rule, and says so).

    Returns:
        A fitted cascade; ``cascade`` is left unchanged.

    Raises:
        NotFittedError: if the cascade is not fitted.
        PolicyError: if the certificate was made for other stages (names, in order).
    """
    check_fitted(cascade, before="apply_certificate")
    if not isinstance(certificate, Certificate):
        msg = f"certificate must be a Certificate, got {type(certificate).__name__}"
        raise PolicyError(msg)
    names = tuple(cascade.named_stages_.keys())
    if names != certificate.stage_names:
        msg = (
            f"certificate is for the stages {list(certificate.stage_names)} but the cascade "
            f"has {list(names)}; certify this cascade instead"
        )
        raise PolicyError(msg)
    overrides: dict[str, Any] = {}
    if certificate.guarantee == "selective":
        overrides["reject_threshold"] = certificate.reject_threshold
    adopted = _adopt_rule(
        cascade, list(cascade.named_stages_.items()), certificate.rule, **overrides
    )
    adopted.certificate_ = certificate
    return adopted
