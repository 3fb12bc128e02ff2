"""Certified cascades in the example: certify on validation, check on test.

``run --certify agreement=0.99 --certify accuracy=0.95 --delta 0.05`` (and the ``certify``
command on a finished run's ``probabilities.npz`` and ``metrics.json``, without the models)
certifies the saved cascade's stage order on the **validation** split with
[`certify_cascade_from_proba`][cascademl.certify.certify_cascade_from_proba], then replays
each certified rule on the **test** split's cached probabilities to report what it actually
reached there. The test split never enters the certificate.

A certificate is a statement about images like the validation images (the same lab,
scanner, staining and class mix): it says nothing about another lab's images.
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from cascademl import _files
from cascademl._replay import replay
from cascademl.certify import (
    Certificate,
    certify_cascade_from_proba,
    required_calibration_size,
)

from .backbones import PROBABILITIES_FILE

__all__ = [
    "CERTIFICATION_FILE",
    "CertifiedResult",
    "CertifySpec",
    "certification_markdown",
    "certify_finished_run",
    "certify_probabilities",
    "parse_certify_spec",
]

#: The ``certify`` command's output beside ``metrics.json``.
CERTIFICATION_FILE: Final = "certification.json"
_GUARANTEES: Final = ("agreement", "accuracy", "selective")
_START, _END = "<!-- certification:start -->", "<!-- certification:end -->"
SCOPE_NOTE: Final = (
    "A certificate holds only for images like the validation images it was computed on "
    "(the same lab, microscope, staining and class mix, drawn the same way). It says "
    "nothing about another lab's images: on an external set from another lab these "
    "models sit near chance, and no bound computed here covers that."
)


@dataclass(frozen=True)
class CertifySpec:
    """One ``--certify GUARANTEE=TARGET``."""

    guarantee: str
    target: float

    def __str__(self) -> str:
        """``agreement=0.99``."""
        return f"{self.guarantee}={self.target:g}"


def parse_certify_spec(value: str) -> CertifySpec:
    """Parse ``--certify agreement=0.99`` (also ``accuracy=`` and ``selective=``)."""
    guarantee, sep, raw = value.partition("=")
    try:
        target = float(raw)
    except ValueError:
        target = math.nan
    if not sep or guarantee not in _GUARANTEES or not 0 < target < 1:
        msg = (
            f"expected GUARANTEE=TARGET with GUARANTEE one of {', '.join(_GUARANTEES)} and "
            f"TARGET in (0, 1), e.g. agreement=0.99; got {value!r}"
        )
        raise argparse.ArgumentTypeError(msg)
    return CertifySpec(guarantee, target)


@dataclass(frozen=True)
class CertifiedResult:
    """A certificate from validation and what its rule reached on test.

    Attributes:
        spec: What was asked.
        certificate: The certificate (validation only), or ``None`` when the validation
            split is too small for the target (``reason`` says how many images it needs).
        test_agreement: Share of test images where the cascade agrees with its last stage.
        test_accuracy: Test accuracy (of the decided images, for ``selective``).
        test_coverage: Share of test images decided (1 unless ``selective``).
        test_cost_share_last: Mean FLOPs per test image over the last stage's alone.
        test_cost_share_all: Mean FLOPs per test image over all the backbones'.
    """

    spec: CertifySpec
    certificate: Certificate | None
    test_agreement: float
    test_accuracy: float
    test_coverage: float
    test_cost_share_last: float
    test_cost_share_all: float
    reason: str = ""
    delta: float = math.nan

    @property
    def certified(self) -> bool:
        """Whether a rule was certified."""
        return self.certificate is not None and self.certificate.certified

    @property
    def summary(self) -> str:
        """The certificate's sentence, or why there is none."""
        return self.reason if self.certificate is None else self.certificate.summary()

    @property
    def test_quantity(self) -> float:
        """The guaranteed quantity measured on test (NaN without a certificate)."""
        return self.test_agreement if self.spec.guarantee == "agreement" else self.test_accuracy

    def to_json(self) -> dict[str, Any]:
        """The entry of ``certification`` in ``metrics.json``."""
        c = self.certificate
        if c is None:
            return {
                "asked": str(self.spec),
                "guarantee": self.spec.guarantee,
                "target": self.spec.target,
                "delta": self.delta,
                "certified": False,
                "summary": self.reason,
            }
        return {
            "asked": str(self.spec),
            "guarantee": c.guarantee,
            "target": c.target,
            "delta": c.delta,
            "certified": c.certified,
            "bound": c.bound,
            "estimate": c.estimate,
            "method": c.method,
            "n_calibration": c.n_calibration,
            "stage_names": list(c.stage_names),
            "thresholds": list(c.rule.thresholds[:-1]),
            "combine": c.rule.combine,
            "reject_threshold": c.reject_threshold,
            "val_cost_share_last": c.cost_share_last,
            "val_cost_share_all": c.cost_share_all,
            "val_coverage": c.coverage,
            "test_agreement": self.test_agreement,
            "test_accuracy": self.test_accuracy,
            "test_coverage": self.test_coverage,
            "test_cost_share_last": self.test_cost_share_last,
            "test_cost_share_all": self.test_cost_share_all,
            "test_met_target": bool(self.test_quantity >= c.target),
            "summary": c.summary(),
        }


def certify_probabilities(
    specs: Sequence[CertifySpec],
    *,
    val_proba: np.ndarray[Any, Any],
    test_proba: np.ndarray[Any, Any],
    y_val: np.ndarray[Any, Any],
    y_test: np.ndarray[Any, Any],
    classes: np.ndarray[Any, Any],
    flops: Sequence[float],
    stage_names: Sequence[str],
    total_flops: float,
    delta: float,
) -> list[CertifiedResult]:
    """Certify each spec on validation, then measure its rule on test.

    Args:
        specs: What to certify.
        val_proba: (n_stages, n_val, n_classes), in cascade order.
        test_proba: (n_stages, n_test, n_classes), in cascade order.
        y_val: Validation labels (class names).
        y_test: Test labels.
        classes: The class names, in column order.
        flops: FLOPs per image of each stage, in cascade order.
        stage_names: The stages' names, in cascade order.
        total_flops: FLOPs of running every backbone (for the share of all).
        delta: The allowed probability that a certificate is wrong.

    Returns:
        One result per spec, in order.
    """
    results = []
    last_test = np.argmax(test_proba[-1], axis=1)
    column = {str(c): i for i, c in enumerate(classes)}
    y_idx = np.array([column[str(label)] for label in y_test], dtype=int)
    for spec in specs:
        need = required_calibration_size(spec.target, delta)
        if val_proba.shape[1] < need:
            reason = _too_few(spec, delta, val_proba.shape[1], need)
            nan = math.nan
            results.append(CertifiedResult(spec, None, nan, nan, nan, nan, nan, reason, delta))
            continue
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            cert = certify_cascade_from_proba(
                val_proba,
                classes=classes,
                target=spec.target,
                delta=delta,
                guarantee=spec.guarantee,  # type: ignore[arg-type]
                y=None if spec.guarantee == "agreement" else y_val,
                stage_cost=list(flops),
                stage_names=list(stage_names),
            )
        replayed = replay(test_proba, cert.rule, cert.reject_threshold)
        labels, decided, exit_stage = (
            replayed.label_index,
            replayed.decided,
            replayed.exit_stage,
        )
        cost = np.cumsum(np.asarray(flops, dtype=np.float64))[exit_stage]
        results.append(
            CertifiedResult(
                spec=spec,
                certificate=cert,
                test_agreement=float(np.mean(labels == last_test)),
                test_accuracy=float(np.mean((labels == y_idx)[decided])) if decided.any() else 1.0,
                test_coverage=float(decided.mean()),
                test_cost_share_last=float(cost.mean() / flops[-1]),
                test_cost_share_all=float(cost.mean() / total_flops),
                delta=delta,
            )
        )
    return results


def _too_few(spec: CertifySpec, delta: float, n: int, need: int) -> str:
    """Why ``spec`` cannot be certified on ``n`` images, and the highest target that can."""
    n_test = n - math.floor(0.3 * n + 0.5)  # the testing part (path_fraction 0.3)
    reachable = delta ** (1 / n_test) if n_test > 0 else 0.0
    return (
        f"{spec} cannot be certified at delta={delta:g} on {n} validation images: even "
        f"with no error it needs at least {need}; on {n} images no target above "
        f"{math.floor(reachable * 1000) / 1000:.3f} can be certified"
    )


def certification_markdown(
    results: Sequence[CertifiedResult], *, tuned: Mapping[str, float] | None = None
) -> str:
    """The report's section: one row per certificate, beside the tuned cascade."""
    lines = [
        (
            "Certified on the validation split, measured on the test split (which the "
            "certificates never saw). *Bound*: the lower confidence bound on validation; "
            "*cost*: mean FLOPs per image as a share of the last stage alone and of all the "
            "backbones."
        ),
        "",
        (
            "| asked | delta | certified | bound (val) | cost, share of last (val / test) | "
            "cost, share of all (test) | test agreement | test accuracy | coverage (test) | "
            "target met on test |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r.certificate
        if c is None:
            lines.append(
                f"| {r.spec} | {r.delta:g} | **no** (too few images) | - | - | - | - | - | - | - |"
            )
            continue
        lines.append(
            f"| {r.spec} | {c.delta:g} | {'yes' if c.certified else '**no**'} | "
            f"{c.bound:.4f} | {c.cost_share_last:.1%} / {r.test_cost_share_last:.1%} | "
            f"{r.test_cost_share_all:.1%} | {r.test_agreement:.2%} | {r.test_accuracy:.2%} | "
            f"{r.test_coverage:.1%} | {'yes' if r.test_quantity >= c.target else 'no'} |"
        )
    if tuned:
        lines += [
            "",
            (
                f"The tuned cascade (not certified) beside them: test accuracy "
                f"{tuned['test_accuracy']:.2%}, test agreement with its last stage "
                f"{tuned['test_agreement']:.2%}, cost {tuned['cost_share_all']:.1%} of all "
                "the backbones."
            ),
        ]
    lines += ["", *(f"- {r.summary}" for r in results), "", SCOPE_NOTE]
    return "\n".join(lines)


def _load_run(run: Path) -> tuple[dict[str, Any], Any]:
    metrics_file, proba_file = run / "metrics.json", run / PROBABILITIES_FILE
    for path in (metrics_file, proba_file):
        if not path.is_file():
            msg = f"{path} is missing: certify needs a finished run (metrics.json and "
            msg += f"{PROBABILITIES_FILE})"
            raise FileNotFoundError(msg)
    metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    for key in ("order", "cost", "test"):
        if key not in metrics:
            msg = f"{metrics_file} has no {key!r} entry; is it a run of this example?"
            raise KeyError(msg)
    return metrics, np.load(proba_file, allow_pickle=False)


def certify_finished_run(
    run: str | Path, specs: Sequence[CertifySpec], *, delta: float
) -> list[CertifiedResult]:
    """Certify a finished run's saved cascade order from its cached probabilities.

    Reads ``probabilities.npz`` and ``metrics.json`` (no model is loaded), writes
    ``certification.json``, adds a ``certification`` entry to ``metrics.json`` and a
    section to ``report.md`` (replacing those of an earlier call).

    Raises:
        FileNotFoundError: The folder is not a finished run.
        KeyError: ``metrics.json`` lacks what is needed, or names a backbone the
            probabilities do not have.
    """
    folder = Path(run)
    metrics, saved = _load_run(folder)
    names = [str(n) for n in saved["stages"]]
    missing = [n for n in metrics["order"] if n not in names]
    if missing:
        msg = f"{folder}: metrics.json orders {missing}, absent from {PROBABILITIES_FILE}"
        raise KeyError(msg)
    index = [names.index(n) for n in metrics["order"]]
    flops_all = metrics["cost"]["flops_per_image"]
    classes = np.array([str(c) for c in saved["classes"]])
    results = certify_probabilities(
        specs,
        val_proba=np.asarray(saved["val"], dtype=np.float64)[index],
        test_proba=np.asarray(saved["test"], dtype=np.float64)[index],
        y_val=np.array([str(v) for v in saved["val_labels"]]),
        y_test=np.array([str(v) for v in saved["test_labels"]]),
        classes=classes,
        flops=[float(flops_all[n]) for n in metrics["order"]],
        stage_names=list(metrics["order"]),
        total_flops=float(sum(flops_all.values())),
        delta=delta,
    )
    payload = [r.to_json() for r in results]
    _files.write_text(folder / CERTIFICATION_FILE, json.dumps(payload, indent=2))
    metrics["certification"] = payload
    _files.write_text(folder / "metrics.json", json.dumps(metrics, indent=2, default=str))
    report = folder / "report.md"
    if report.is_file():
        tuned = tuned_reference(metrics, saved)
        section = certification_markdown(results, tuned=tuned)
        text = report.read_text(encoding="utf-8")
        if _START in text:
            text = text[: text.index(_START)] + text[text.index(_END) + len(_END) :].lstrip("\n")
        block = f"{_START}\n## Certified cascades\n\n{section}\n{_END}\n"
        _files.write_text(report, text.rstrip("\n") + "\n\n" + block)
    return results


def tuned_reference(metrics: Mapping[str, Any], saved: Any) -> dict[str, float]:
    """The tuned cascade's test accuracy, agreement with its last stage and cost share."""
    names = [str(n) for n in saved["stages"]]
    last = names.index(metrics["order"][-1])
    classes = np.array([str(c) for c in saved["classes"]])
    last_labels = classes[np.argmax(saved["test"][last], axis=1)]
    cascade = metrics.get("test_predictions", {}).get(metrics.get("order_rule"))
    agreement = (
        float(np.mean(np.asarray(cascade, dtype=str) == last_labels))
        if cascade is not None and len(cascade) == len(last_labels)
        else math.nan
    )
    return {
        "test_accuracy": float(metrics["test"]["Cascade"]["accuracy"]),
        "test_agreement": agreement,
        "cost_share_all": float(metrics["cost"]["cascade_flops_ratio_all"]),
    }
