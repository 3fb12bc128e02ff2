"""Certify a three-stage cascade on scikit-learn's digits, and check it on held-out data.

Run with ``python -m examples.certify_digits``. The digits are split three ways: the
stages train on one part, the certifier calibrates on another (unlabelled for the
agreement guarantee), and a test part that neither saw checks what the certified cascades
actually reach. The "Certified cascades" page quotes this script's output.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cascademl import CascadeClassifier, SklearnStage
from cascademl.certify import (
    CertificationWarning,
    Guarantee,
    apply_certificate,
    certify_cascade,
)

SEED = 0


def main() -> None:
    """Train, certify three guarantees, and print each certificate beside its test result."""
    X, y = load_digits(return_X_y=True)
    X_train, X_rest, y_train, y_rest = train_test_split(X, y, test_size=0.65, random_state=SEED)
    X_cal, X_test, y_cal, y_test = train_test_split(
        X_rest, y_rest, test_size=0.35, random_state=SEED
    )

    def logistic(n_components: int | None) -> Any:
        steps: list[Any] = [StandardScaler()]
        if n_components is not None:
            steps.append(PCA(n_components, random_state=SEED))
        return make_pipeline(*steps, LogisticRegression(max_iter=2000))

    cascade = CascadeClassifier(
        [
            ("pca6", SklearnStage(logistic(6), cost_per_sample=1.0)),
            ("pca16", SklearnStage(logistic(16), cost_per_sample=2.0)),
            ("lr", SklearnStage(logistic(None), cost_per_sample=5.0)),
        ]
    ).fit(X_train, y_train)
    last = cascade.stages_[-1].predict(X_test)
    print(
        f"train {len(y_train)}, calibration {len(y_cal)}, test {len(y_test)}; "
        f"lr alone: test accuracy {np.mean(last == y_test):.4f}"
    )
    runs: list[tuple[Guarantee, float, Any]] = [
        ("agreement", 0.95, None),
        ("agreement", 0.99, None),
        ("accuracy", 0.90, y_cal),
        ("accuracy", 0.95, y_cal),
        ("selective", 0.98, y_cal),
    ]
    for guarantee, target, labels in runs:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CertificationWarning)
            cert = certify_cascade(
                cascade, X_cal, labels, target=target, delta=0.05, guarantee=guarantee
            )
        certified = apply_certificate(cascade, cert)
        pred = certified.predict(X_test)
        if guarantee == "agreement":
            reached = f"test agreement {np.mean(pred == last):.4f}"
        elif guarantee == "accuracy":
            reached = f"test accuracy {np.mean(pred == y_test):.4f}"
        else:
            decided = certified.predict_or_abstain(X_test) != certified.abstain_label_
            accuracy = np.mean(pred[decided] == y_test[decided]) if decided.any() else np.nan
            reached = f"test coverage {decided.mean():.4f}, accuracy on decided {accuracy:.4f}"
        cost = certified.route(X_test).mean_cost / 5.0
        print(f"\n{guarantee} >= {target}: {cert.summary()}")
        print(
            f"  rule: combine={cert.rule.combine!r}, thresholds "
            f"{[round(t, 4) for t in cert.rule.thresholds[:-1]]}, bound {cert.bound:.4f}, "
            f"calibration estimate {cert.estimate:.4f}, {len(cert.path)} settings on the path"
        )
        print(f"  held-out: {reached}, cost share of lr {cost:.2f}")
        for warning in caught:
            print(f"  warning: {warning.message}")


if __name__ == "__main__":
    main()
