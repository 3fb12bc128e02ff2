"""The leukemia example's certification: specs, the certify command, the recommended order."""

import argparse
import io
import json
from contextlib import redirect_stdout
from types import SimpleNamespace

import numpy as np
import pytest
from examples.leukemia.__main__ import main
from examples.leukemia.certification import CertifySpec, parse_certify_spec
from examples.leukemia.ordering import recommended_order

CLASSES = ("Benign", "Early", "Pre", "Pro")


def test_certify_spec_parses_and_rejects():
    assert parse_certify_spec("agreement=0.99") == CertifySpec("agreement", 0.99)
    assert str(parse_certify_spec("selective=0.9")) == "selective=0.9"
    for bad in ("agreement", "agreement=1", "accuracy=0", "recall=0.9", "accuracy=high"):
        with pytest.raises(argparse.ArgumentTypeError, match="GUARANTEE=TARGET"):
            parse_certify_spec(bad)


def test_recommended_order_is_the_best_validation_score_paper_first_on_ties():
    def tuned(**scores):
        return {r: SimpleNamespace(tuning=SimpleNamespace(score=v)) for r, v in scores.items()}

    assert recommended_order(tuned(accuracy=-0.9, cost=-0.2, selected=-0.3)) == "cost"
    assert recommended_order(tuned(accuracy=-0.2, cost=-0.2, selected=-0.2)) == "accuracy"
    assert recommended_order(tuned(accuracy=-0.5, cost=-0.4, selected=-0.1)) == "selected"


def _stage(rng, y, accuracy):
    """Probabilities of a stage that is right on about ``accuracy`` of the images."""
    n = y.shape[0]
    wrong = rng.random(n) > accuracy
    label = np.where(wrong, (y + rng.integers(1, 4, n)) % 4, y)
    confidence = np.where(wrong, rng.uniform(0.3, 0.7, n), rng.uniform(0.6, 1.0, n))
    proba = np.tile(((1 - confidence) / 3)[:, None], (1, 4))
    proba[np.arange(n), label] = confidence
    return proba


@pytest.fixture
def finished_run(tmp_path):
    """A finished run's probabilities.npz and metrics.json, without any model."""
    rng = np.random.default_rng(0)
    names = ["Small", "Medium", "Large"]
    splits = {}
    for split, n in (("val", 1500), ("test", 1500)):
        y = rng.integers(0, 4, n)
        splits[split] = (np.stack([_stage(rng, y, a) for a in (0.7, 0.85, 0.97)]), y)
    np.savez(
        tmp_path / "probabilities.npz",
        stages=np.array(names),
        classes=np.array(CLASSES),
        val=splits["val"][0],
        test=splits["test"][0],
        val_labels=np.array(CLASSES)[splits["val"][1]],
        test_labels=np.array(CLASSES)[splits["test"][1]],
    )
    last = np.array(CLASSES)[splits["test"][0][2].argmax(1)]
    metrics = {
        "order": names,
        "order_rule": "accuracy",
        "test": {"Cascade": {"accuracy": 0.9}},
        "cost": {
            "flops_per_image": {"Small": 1e8, "Medium": 1e9, "Large": 4e9},
            "cascade_flops_ratio_all": 0.4,
        },
        "test_predictions": {"accuracy": last.tolist()},
    }
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "report.md").write_text("# Report\n\n## Cascade\n\ntext\n")
    return tmp_path


def test_certify_command_certifies_on_validation_and_checks_on_test(finished_run):
    run = finished_run
    argv = ["certify", str(run), "--certify", "agreement=0.95", "--certify", "accuracy=0.999"]
    argv += ["--delta", "0.1"]
    for _ in range(2):  # a second call replaces the first one's results
        with redirect_stdout(io.StringIO()) as printed:
            assert main(argv) == 0
    assert "agreement=0.95 (delta 0.1): certified" in printed.getvalue()
    saved = json.loads((run / "certification.json").read_text())
    agreement, accuracy = saved
    assert agreement["certified"] is True
    assert agreement["bound"] >= 0.95
    assert agreement["n_calibration"] == 1500
    assert agreement["stage_names"] == ["Small", "Medium", "Large"]
    assert agreement["val_cost_share_last"] < 1  # cheaper than the last stage alone
    # On test, exchangeable with validation here, the certified rule meets its target.
    assert agreement["test_agreement"] >= 0.95
    assert agreement["test_met_target"] is True
    # 1,500 images cannot certify 0.999 at delta 0.1; it says how many it would take.
    assert accuracy["certified"] is False
    assert "needs at least" in accuracy["summary"]
    assert json.loads((run / "metrics.json").read_text())["certification"] == saved
    report = (run / "report.md").read_text()
    assert report.count("## Certified cascades") == 1
    assert "## Cascade" in report
    assert "another lab's images" in report


def test_certify_command_names_a_folder_that_is_not_a_run(tmp_path, caplog):
    assert main(["certify", str(tmp_path), "--certify", "agreement=0.9"]) == 2
    assert "metrics.json is missing" in caplog.text
