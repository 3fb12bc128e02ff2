"""The ``cascademl`` command: ``cascademl demo`` runs a three-stage cascade on sklearn digits.

``cascademl --version`` prints the installed version and the Python running it.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, cohen_kappa_score, matthews_corrcoef
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from cascademl import __version__
from cascademl.cascade import CascadeClassifier
from cascademl.certify import CertificationWarning, apply_certificate, certify_cascade
from cascademl.policies import ConfidencePolicy

__all__ = ["main"]

logger = logging.getLogger("cascademl")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cascademl", description=__doc__)
    parser.add_argument(
        "--version",
        action="version",
        version=f"cascademl {__version__} (Python {platform.python_version()})",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="three-stage cascade of sklearn classifiers on the digits dataset",
        description=(
            "Fit logistic regression -> calibrated RBF SVM -> random forest on sklearn's "
            "digits, route the held-out quarter through the cascade and print what each stage did."
        ),
    )
    demo.add_argument("--threshold", type=float, default=0.9, help="exit threshold (0.9)")
    demo.add_argument(
        "--measure",
        choices=("max_proba", "margin", "entropy"),
        default="max_proba",
        help="confidence measure (max_proba)",
    )
    demo.add_argument(
        "--combine", choices=("vote", "last", "mean"), default="vote", help="combiner (vote)"
    )
    demo.add_argument(
        "--escalation-weight", type=float, default=0.5, help="vote weight of escalating stages"
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed for split and models")
    return parser


def run_demo(
    *,
    threshold: float = 0.9,
    measure: str = "max_proba",
    combine: str = "vote",
    escalation_weight: float = 0.5,
    seed: int = 0,
) -> dict[str, object]:
    """Fit and evaluate the demo cascade; return its figures (also what ``main`` prints).

    Returns:
        A dict with ``stage_accuracy`` (name to test accuracy of the stage alone),
        ``accuracy``, ``mcc``, ``kappa``, ``exit_counts`` (name to samples ended there),
        ``calls_saved``, ``n_test``, and the certified cascade's figures: ``certificate``
        (its one-line summary: agreement with the last stage of at least 0.9, with 95%
        confidence, certified on one half of the held-out quarter),
        ``certified`` (whether a cheaper rule than the last stage alone passed),
        ``certified_agreement`` and ``certified_calls_share`` (agreement with the last stage
        and stage calls per sample over running every stage, on the other half).
    """
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, stratify=y, random_state=seed
    )
    stages = [
        ("logreg", make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))),
        (
            "svm",
            make_pipeline(
                StandardScaler(), CalibratedClassifierCV(SVC(random_state=seed), ensemble=False)
            ),
        ),
        ("forest", RandomForestClassifier(n_estimators=300, random_state=seed)),
    ]
    cascade = CascadeClassifier(
        stages,
        policy=ConfidencePolicy(measure, thresholds=threshold),  # type: ignore[arg-type]
        combine=combine,  # type: ignore[arg-type]
        escalation_weight=escalation_weight,
    ).fit(X_train, y_train)
    result = cascade.route(X_test)
    stage_accuracy = {
        name: float(accuracy_score(y_test, stage.predict(X_test)))
        for name, stage in cascade.named_stages_.items()
    }
    # Certify on one half of the held-out quarter, check on the other half.
    half = np.random.default_rng(seed).permutation(len(y_test))
    cal, check = half[: len(half) // 2], half[len(half) // 2 :]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=CertificationWarning)
        certificate = certify_cascade(cascade, X_test[cal], target=0.9, delta=0.05)
    certified = apply_certificate(cascade, certificate).route(X_test[check])
    last = list(cascade.named_stages_.values())[-1]
    return {
        "stage_accuracy": stage_accuracy,
        "accuracy": float(accuracy_score(y_test, result.labels)),
        "mcc": float(matthews_corrcoef(y_test, result.labels)),
        "kappa": float(cohen_kappa_score(y_test, result.labels)),
        "exit_counts": dict(zip(result.stage_names, result.exit_counts.tolist(), strict=True)),
        "stage_calls": dict(zip(result.stage_names, result.stage_calls.tolist(), strict=True)),
        "calls_saved": result.calls_saved,
        "n_test": result.n_samples,
        "certificate": certificate.summary(),
        "certified": certificate.certified,
        "certified_agreement": float(np.mean(certified.labels == last.predict(X_test[check]))),
        "certified_calls_share": 1.0 - certified.calls_saved,
    }


def _print_demo(figures: dict[str, object], threshold: float) -> None:
    stage_accuracy = figures["stage_accuracy"]
    exit_counts = figures["exit_counts"]
    stage_calls = figures["stage_calls"]
    if not (
        isinstance(stage_accuracy, dict)
        and isinstance(exit_counts, dict)
        and isinstance(stage_calls, dict)
    ):
        raise TypeError("run_demo returned malformed figures")
    n = figures["n_test"]
    print(f"cascademl demo: digits, 3 stages, threshold {threshold}, {n} test samples\n")
    print(f"{'stage':<10}{'accuracy alone':>16}{'samples seen':>14}{'samples ended':>15}")
    for name, acc in stage_accuracy.items():
        print(f"{name:<10}{acc:>16.4f}{stage_calls[name]:>14}{exit_counts[name]:>15}")
    print()
    print(f"cascade accuracy   {figures['accuracy']:.4f}")
    print(f"cascade MCC        {figures['mcc']:.4f}")
    print(f"cascade kappa      {figures['kappa']:.4f}")
    saved = figures["calls_saved"]
    if isinstance(saved, float):
        print(f"stage calls saved  {saved:.1%} (against running every stage on every sample)")
    half = int(str(n)) - int(str(n)) // 2
    print(f"certified          {figures['certificate']}, on half of the test samples")
    print(
        f"                   on the other {half}: agreement {figures['certified_agreement']:.4f}, "
        f"{figures['certified_calls_share']:.1%} of the stage calls"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cascademl`` command; returns the exit status."""
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "demo":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)
            figures = run_demo(
                threshold=args.threshold,
                measure=args.measure,
                combine=args.combine,
                escalation_weight=args.escalation_weight,
                seed=args.seed,
            )
        _print_demo(figures, args.threshold)
        return 0
    return 2  # pragma: no cover - argparse rejects unknown commands first


if __name__ == "__main__":
    sys.exit(main())
