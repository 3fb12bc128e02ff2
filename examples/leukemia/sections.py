"""The run's report: its figures and the Markdown sections of ``report.md``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from cascademl.metrics import ClassificationMetrics

from . import report
from .certification import certification_markdown
from .ordering import RECOMMENDED, OrderResult, TunedOrder
from .results import ExperimentResults

__all__ = [
    "report_sections",
    "validation_check",
    "write_figures",
]


def write_figures(
    folder: Path,
    *,
    histories: Mapping[str, list[dict[str, float]]],
    metrics: Mapping[str, ClassificationMetrics],
    class_names: list[str],
    tuned: TunedOrder,
    references: Mapping[str, tuple[float, float]],
) -> dict[str, Path]:
    """The paper's figures: curves (8-13), confusion matrices, bars (14-15), the frontier."""
    files: dict[str, Path] = {}
    for name, history in histories.items():
        files[f"Training curves: {name}"] = report.plot_training_curves(
            history, folder / f"curves-{name}.png", title=name
        )
    for name, m in metrics.items():
        files[f"Confusion matrix: {name}"] = report.plot_confusion_matrix(
            m.confusion_matrix, class_names, folder / f"confusion-{name}.png", title=name
        )
    files["Per-class precision, recall and F1"] = report.plot_per_class_bars(
        metrics, class_names, folder / "per-class.png"
    )
    files["Accuracy, kappa, MCC and error rate"] = report.plot_summary_bars(
        metrics, folder / "summary.png"
    )
    giga = 1e9
    files["Accuracy-cost frontier (validation)"] = report.plot_cost_frontier(
        [(cost / giga, accuracy) for cost, accuracy in tuned.frontier],
        folder / "frontier.png",
        chosen=(tuned.tuning.mean_cost / giga, tuned.val_accuracy),
        references={k: (c / giga, a) for k, (c, a) in references.items()},
        cost_label="mean GFLOPs per image (validation)",
    )
    return files


def report_sections(results: ExperimentResults) -> dict[str, str]:
    """The report's sections of a run, besides Table 1 and the figures (and the audit's)."""
    cascade = results.cascade
    low, high = cascade.intervals.get("accuracy", (float("nan"), float("nan")))
    split_lines = [
        "| split | " + " | ".join(results.classes) + " | total |",
        "|---|" + "---|" * (len(results.classes) + 1),
    ]
    for split, per_class in results.split_counts.items():
        split_lines.append(
            f"| {split} | "
            + " | ".join(str(per_class[c]) for c in results.classes)
            + f" | {sum(per_class.values())} |"
        )
    order = " -> ".join(results.order)
    order_rule = _RULE_TEXT[results.order_rule]
    thresholds = ", ".join(f"{t:.4g}" for t in results.thresholds)
    objective = _objective(results.tuned.tuning.scoring, results.tuned.budget)
    exits = ", ".join(f"{k}: {v}" for k, v in results.exit_counts.items())
    cost = results.cost
    val_lines = "\n".join(f"- {k}: {v:.2%}" for k, v in results.val_accuracy.items())
    mcn = "\n".join(
        f"- vs {k}: only the cascade right on {v.only_a_correct}, only {k} right on "
        f"{v.only_b_correct}, p = {v.p_value:.3g} ({v.method})"
        for k, v in results.mcnemar.items()
    )
    latency = "\n".join(f"- {k}: {1e3 * v:.2f} ms" for k, v in cost.latency_per_image_s.items())
    scan = results.scan
    skipped = scan.skipped if scan is not None else ()
    data_notes = [
        (
            f"- exact-duplicate groups: {len(scan.duplicates)} (kept on one "
            "side of the split, with near duplicates, by grouping)"
            if scan is not None
            else "- the split was reused from split.csv (duplicates were grouped when it was made)"
        ),
        (
            "- stain normalization fell back to the original image for "
            f"{len(results.stain_fallbacks)} image(s)"
        ),
        f"- skipped files: {len(skipped)}"
        + "".join(f"\n  - {s.path}: {s.reason}" for s in skipped),
    ]
    best_name = results.best_backbone
    train_seconds = sum(t.train_seconds for t in results.training.values())
    certified = (
        {
            "Certified cascades": certification_markdown(
                results.certification,
                tuned={
                    "test_accuracy": cascade.accuracy,
                    "test_agreement": (results.order_choice or {}).get(
                        "tuned_test_agreement", float("nan")
                    ),
                    "cost_share_all": cost.cascade_flops_ratio_all,
                },
            )
        }
        if results.certification
        else {}
    )
    return {
        "Cascade": (
            f"Order ({order_rule}): {order}.{_choice_sentence(results)}\n\n"
            f"Thresholds (max probability), tuned for {objective}: {thresholds} "
            f"(validation accuracy {results.tuned.val_accuracy:.2%}). "
            f"{_validation_sentence(results.tuned.val_accuracy, results.val_accuracy)}\n\n"
            f"Test accuracy {cascade.accuracy:.2%} (95% bootstrap CI {low:.2%}-{high:.2%}), "
            f"MCC {cascade.mcc:.4f}, kappa {cascade.kappa:.4f}. Best single backbone: "
            f"{best_name}, {results.test[best_name].accuracy:.2%}. All backbones averaged: "
            f"{results.ensemble_accuracy:.2%}.\n\n"
            f"Samples ended per stage (test): {exits}.\n\n"
            f"Mean cost: {cost.cascade_mean_flops / 1e9:.3f} GFLOPs per image, "
            f"{cost.cascade_flops_ratio_all:.1%} of running every backbone, "
            f"{cost.cascade_flops_ratio_last:.1%} of the last stage alone."
        ),
        **certified,
        **{
            _RULE_HEADING[rule]: _alternative_section(alt)
            for rule, alt in results.alternatives.items()
        },
        "Validation accuracy per backbone": val_lines,
        "McNemar's test, cascade against each backbone (test split)": mcn,
        "Inference time per image": (
            latency + f"\n- Cascade (measured wall time over the test split): "
            f"{1e3 * cost.cascade_wall_seconds_per_image:.2f} ms\n\n```text\n"
            + cost.table
            + "\n```"
        ),
        "Data": "\n".join(split_lines) + "\n\n" + "\n".join(data_notes),
        "Run": (
            f"Wall time of this invocation {results.seconds / 60:.1f} min on "
            f"{results.device}; training time of the backbones, summed over every epoch "
            "(including epochs of an earlier, interrupted or finished run that this one "
            f"reused): {train_seconds / 60:.1f}"
            " min."
        ),
    }


def _choice_sentence(results: ExperimentResults) -> str:
    """Why this order is the saved one, and how to get the paper's."""
    choice = results.order_choice
    if not choice or choice.get("asked") != RECOMMENDED:
        return ""
    scores = ", ".join(f"{rule} {score:.4g}" for rule, score in choice["val_score"].items())
    paper = (
        " It is the paper's order."
        if results.order_rule == "accuracy"
        else " The paper's order is reported below and saved with `--order accuracy`."
    )
    certified = choice.get("certified_rule_saved")
    routed = f" The saved model routes with the certified rule ({certified})." if certified else ""
    return (
        f" Saved for `predict` as the order recommended from validation: the best tuning "
        f"score of the three orders ({scores}).{paper}{routed}"
    )


def validation_check(payload: Mapping[str, Any]) -> str:
    """Compare the tuned cascade with the best backbone alone, on validation only.

    Args:
        payload: The run's ``metrics.json`` content (``tuning.val_accuracy`` and
            ``val_accuracy`` per backbone).

    Returns:
        One sentence for the report: whether the cascade reaches the best backbone's
        validation accuracy, and where to look when it does not.
    """
    return _validation_sentence(float(payload["tuning"]["val_accuracy"]), payload["val_accuracy"])


def _validation_sentence(cascade: float, backbones: Mapping[str, float]) -> str:
    best_name, best = max(backbones.items(), key=lambda item: item[1])
    if cascade >= best:
        return (
            f"On validation that is at or above the best backbone alone ({best_name}, {best:.2%})."
        )
    return (
        f"On validation that is below {best_name} alone ({best:.2%}): within this budget "
        "the cascade does not pay for all its stages; the stage-selection section below "
        "keeps only the backbones that do, and `python benchmarks/leukemia_stage_subsets.py "
        "OUT` ranks every subset on validation."
    )


def _objective(scoring: str, budget: float | None) -> str:
    score = {
        "neg_log_loss": "the lowest validation log-loss",
        "accuracy": "the best validation accuracy",
    }.get(scoring, f"the best validation {scoring}")
    if budget is None:
        return f"{score} (no budget: a first stage alone would exceed it)"
    return f"{score} at a mean cost of at most {budget / 1e9:.3f} GFLOPs"


#: How the report names each ordering rule, in a sentence and as a section heading.
_RULE_TEXT: Final = {
    "accuracy": "least accurate on validation first, as in the paper",
    "cost": "cheapest first (FLOPs per image)",
    "selected": (
        "least accurate on validation first, keeping the sub-sequence of the backbones "
        "that scores best on validation within the budget (stage selection)"
    ),
}
_RULE_HEADING: Final = {
    "accuracy": "The paper's stage order",
    "cost": "Other stage order: cheapest first",
    "selected": "Stage selection: only the backbones that pay",
}


def _alternative_section(alt: OrderResult) -> str:
    objective = _objective(alt.scoring, alt.budget_flops)
    exits = ", ".join(f"{k}: {v}" for k, v in alt.exit_counts.items())
    thresholds = ", ".join(f"{t:.4g}" for t in alt.thresholds) or "none (one stage)"
    return (
        f"Backbones ordered {_RULE_TEXT[alt.rule]}: {' -> '.join(alt.order)}; "
        f"thresholds tuned on validation for {objective}: {thresholds}"
        f" (validation accuracy {alt.val_accuracy:.2%})"
        f".\n\nTest accuracy {alt.test_accuracy:.2%}, MCC {alt.test_mcc:.4f}, "
        f"kappa {alt.test_kappa:.4f}; mean cost {alt.cascade_mean_flops / 1e9:.3f} "
        f"GFLOPs per image, {alt.cascade_flops_ratio_all:.1%} of running every backbone. "
        f"Samples ended per stage (test): {exits}."
    )
