import numpy as np
import pytest
from examples.leukemia import report
from examples.leukemia.pipeline import validation_check

from cascademl.metrics import classification_metrics

CLASSES = ("Benign", "Early", "Pre", "Pro")


@pytest.fixture
def predictions():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, 80)
    noisy = y_true.copy()
    noisy[:12] = (noisy[:12] + 1) % 4
    return {"Cascade": (y_true, y_true.copy()), "DenseNet201": (y_true, noisy)}


def _metrics(y_true, y_pred):
    return classification_metrics(y_true, y_pred, classes=[0, 1, 2, 3], n_bootstrap=0)


def test_confusion_matrix_shape_is_checked(tmp_path):
    with pytest.raises(ValueError, match=r"shape \(4, 4\)"):
        report.plot_confusion_matrix(np.eye(3), CLASSES, tmp_path / "cm.png", title="x")


def test_figures_are_written(predictions, tmp_path):
    metrics = {name: _metrics(t, p) for name, (t, p) in predictions.items()}
    history = [
        {
            "epoch": e,
            "train_acc": 0.5 + e / 10,
            "val_acc": 0.4 + e / 10,
            "train_loss": 1 / e,
            "val_loss": 1.2 / e,
        }
        for e in range(1, 4)
    ]
    written = [
        report.plot_training_curves(history, tmp_path / "curves.png", title="ResNet50"),
        report.plot_confusion_matrix(
            metrics["DenseNet201"].confusion_matrix, CLASSES, tmp_path / "cm.png", title="D"
        ),
        report.plot_per_class_bars(metrics, CLASSES, tmp_path / "per_class.png"),
        report.plot_summary_bars(metrics, tmp_path / "summary.png"),
        report.plot_cost_frontier(
            [(1.0, 0.9), (2.0, 0.95), (3.0, 0.93), (5.0, 0.99)],
            tmp_path / "frontier.png",
            chosen=(2.0, 0.95),
            references={"DenseNet201": (5.0, 0.97)},
        ),
    ]
    for path in written:
        assert path.is_file()
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="empty"):
        report.plot_training_curves([], tmp_path / "none.png", title="x")


def test_pareto_front_keeps_only_undominated_points():
    points = [(3.0, 0.93), (1.0, 0.9), (2.0, 0.95), (5.0, 0.99), (2.0, 0.94)]
    assert report.pareto_front(points) == [(1.0, 0.9), (2.0, 0.95), (5.0, 0.99)]


def test_markdown_report_has_table_one(predictions, tmp_path):
    metrics = {name: _metrics(t, p) for name, (t, p) in predictions.items()}
    figure = report.plot_summary_bars(metrics, tmp_path / "figs" / "summary.png")
    path = report.write_markdown_report(
        tmp_path / "report.md",
        metrics,
        CLASSES,
        sections={"Skipped files": "none"},
        figures={"Accuracy, kappa, MCC, error rate": figure},
    )
    text = path.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0] == "| Metric | Cascade | DenseNet201 | Paper: Cascade |"
    labels = [row.split(" | ")[0].removeprefix("| ") for row in rows[1:]]
    expected = [f"{m}: {c}" for m in ("Precision", "Recall", "F1") for c in CLASSES]
    expected += ["Accuracy", "Kappa", "MCC", "Error rate", "Paper accuracy"]
    assert labels == expected
    assert "| Accuracy | 100.00% | 85.00% | 98.15% |" in text
    assert "| MCC | 1.000 |" in text
    assert "| Paper accuracy | 98.15% | 95.80% | - |" in text
    assert "| Precision: Benign | 1.000 |" in text
    assert "0.940 |" in rows[1]
    assert "## Skipped files" in text
    assert "![Accuracy, kappa, MCC, error rate](figs/summary.png)" in text


def test_validation_check_names_the_better_backbone():
    payload = {
        "tuning": {"val_accuracy": 0.9685},
        "val_accuracy": {"InceptionV3": 0.9231, "DenseNet201": 0.9825, "ResNet50": 0.979},
    }
    below = validation_check(payload)
    assert "below DenseNet201 alone (98.25%)" in below
    assert "stage-selection section below" in below
    assert "leukemia_stage_subsets.py" in below
    payload["tuning"]["val_accuracy"] = 0.9825
    assert "at or above the best backbone alone (DenseNet201, 98.25%)" in validation_check(payload)
