"""The smoke preset end to end: train, tune, evaluate, save, load, predict (on CPU)."""

import csv
import io
import json
import logging
from contextlib import redirect_stdout

import numpy as np
import pytest
from examples.leukemia.__main__ import main
from examples.leukemia.pipeline import load_predictor, validation_check


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, leukemia_root):
    out = tmp_path_factory.mktemp("smoke-run")
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        status = main(
            [
                "run",
                "--data-root",
                str(leukemia_root),
                "--preset",
                "smoke",
                "--out",
                str(out),
                "--no-progress",
                "--order",
                "accuracy",
                "--certify",
                "agreement=0.9",
                "--delta",
                "0.2",
            ]
        )
    assert status == 0
    return out, buffer.getvalue()


def test_run_writes_the_results_folder(smoke_run):
    out, printed = smoke_run
    assert "cascade accuracy" in printed
    for name in (
        "split.csv",
        "metrics.json",
        "report.md",
        "cascade/cascade.json",
        "cascade/leukemia.json",
        "figures/frontier.png",
        "figures/per-class.png",
        "figures/summary.png",
        "figures/confusion-Cascade.png",
    ):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) == {
        "Cascade",
        "TestResNet",
        "TestEfficientNet",
        "Colour statistics (no cell)",
    }
    assert sum(metrics["exit_counts"].values()) == sum(metrics["split_counts"]["test"].values())
    assert 0 <= metrics["test"]["Cascade"]["accuracy"] <= 1
    report = (out / "report.md").read_text()
    assert (
        "| Metric | Cascade | TestResNet | TestEfficientNet | Colour statistics (no cell) "
        "| Paper: Cascade |" in report
    )
    assert "## McNemar's test" in report
    # Thresholds tuned for the validation log-loss, reported in accuracy as well.
    tuning = metrics["tuning"]
    assert tuning["scoring"] == "neg_log_loss"
    assert tuning["val_score"] <= 0
    assert 0 <= tuning["val_accuracy"] <= 1
    assert all(0 <= point["accuracy"] <= 1 for point in tuning["frontier"])
    assert "lowest validation log-loss" in report
    # The other orderings, tuned on validation alone, reported next to the paper's.
    alternatives = metrics["alternatives"]
    assert set(alternatives) == {"cost", "selected"}
    selected = alternatives["selected"]["order"]
    assert selected
    assert selected == [name for name in metrics["order"] if name in selected]
    if alternatives["selected"]["budget_flops"] == tuning["budget_flops"]:
        # The paper's full order is one of the candidates of the stage selection.
        assert alternatives["selected"]["val_score"] >= tuning["val_score"] - 1e-12
    assert "## Stage selection: only the backbones that pay" in report
    # Cost shares are of all the backbones trained, also for a cascade that drops some.
    flops = metrics["cost"]["flops_per_image"]
    for alt in alternatives.values():
        share = alt["cascade_mean_flops"] / sum(flops.values())
        assert alt["cascade_flops_ratio_all"] == pytest.approx(share)
        assert alt["cascade_flops_ratio_all"] <= 1 + 1e-9
    kept = alternatives["selected"]["order"]
    if len(kept) == 1:
        assert alternatives["selected"]["cascade_flops_ratio_all"] == pytest.approx(
            flops[kept[0]] / sum(flops.values())
        )
    assert "## Other stage order: cheapest first" in report
    _check_shortcut_audit(out, metrics)
    saved = np.load(out / "probabilities.npz")
    n_val = sum(metrics["split_counts"]["val"].values())
    n_test = sum(metrics["split_counts"]["test"].values())
    assert saved["val"].shape == (2, n_val, 4)
    assert saved["test"].shape == (2, n_test, 4)
    np.testing.assert_allclose(saved["val"].sum(axis=2), 1.0, rtol=1e-5)
    assert list(saved["stages"]) == ["TestResNet", "TestEfficientNet"]
    assert len(saved["test_labels"]) == n_test


def test_metrics_json_keeps_the_keys_that_earlier_runs_have(smoke_run):
    """Finished runs and the seed summaries read these keys; the file keeps them, in order."""
    out, _ = smoke_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == [
        "preset",
        "device",
        "split_counts",
        "skipped",
        "exact_duplicate_groups",
        "stain_fallbacks",
        "training",
        "histories",
        "val_accuracy",
        "order",
        "order_rule",
        "alternatives",
        "thresholds",
        "tuning",
        "test",
        "ensemble_all_five_test_accuracy",
        "mcnemar_cascade_vs",
        "exit_counts",
        "cost",
        "shortcut_audit",
        "test_predictions",
        "order_choice",
        "certification",
        "seconds",
    ]
    assert list(metrics["training"]["TestResNet"]) == [
        "best_epoch",
        "best_val_acc",
        "epochs_run",
        "stopped_early",
        "resumed_from",
        "train_seconds",
    ]
    assert list(metrics["tuning"]) == [
        "objective",
        "scoring",
        "budget_flops",
        "val_score",
        "val_accuracy",
        "val_mean_flops",
        "frontier",
    ]
    assert list(metrics["alternatives"]["cost"]) == [
        "rule",
        "order",
        "thresholds",
        "budget_flops",
        "scoring",
        "val_score",
        "val_accuracy",
        "test_accuracy",
        "test_mcc",
        "test_kappa",
        "cascade_mean_flops",
        "cascade_flops_ratio_all",
        "exit_counts",
    ]
    assert list(metrics["cost"]) == [
        "flops_per_image",
        "latency_per_image_s",
        "cascade_mean_flops",
        "cascade_flops_ratio_all",
        "cascade_flops_ratio_last",
        "cascade_wall_seconds_per_image",
        "table",
    ]
    assert list(metrics["shortcut_audit"]) == [
        "trained_variant",
        "mask_bottom",
        "colour_baseline",
        "test_accuracy",
        "exits_per_class",
        "n_test",
        "seconds",
    ]
    assert list(metrics["mcnemar_cascade_vs"]["TestResNet"]) == [
        "statistic",
        "p_value",
        "only_a_correct",
        "only_b_correct",
        "method",
    ]
    # The report's validation sentence reads the file as the run read its typed results.
    report = (out / "report.md").read_text()
    assert validation_check(metrics) in report


def _check_shortcut_audit(out, metrics):
    shortcut = metrics["shortcut_audit"]
    n_test = sum(metrics["split_counts"]["test"].values())
    variants = ["original", "masked", "normalized", "normalized + masked", "greyscale + masked"]
    assert shortcut["trained_variant"] == "normalized + masked"
    assert list(shortcut["colour_baseline"]) == variants
    table = shortcut["test_accuracy"]
    assert set(table) == {
        "TestResNet",
        "TestEfficientNet",
        "Cascade, paper's order",
        "Cascade, cheapest first",
        "Cascade, stage selection",
        "Colour statistics (no cell)",
    }
    assert all(list(row) == variants for row in table.values())
    # The cascade replayed on cached probabilities is the cascade that was tested.
    trained = shortcut["trained_variant"]
    assert table["Cascade, paper's order"][trained] == pytest.approx(
        metrics["test"]["Cascade"]["accuracy"]
    )
    assert table["TestResNet"][trained] == pytest.approx(metrics["test"]["TestResNet"]["accuracy"])
    for rule, alt in metrics["alternatives"].items():
        name = {"cost": "Cascade, cheapest first", "selected": "Cascade, stage selection"}[rule]
        assert table[name][trained] == pytest.approx(alt["test_accuracy"])
        exits = shortcut["exits_per_class"][name]
        assert {k: sum(v.values()) for k, v in exits.items()} == alt["exit_counts"]
    for exits in shortcut["exits_per_class"].values():
        assert sum(sum(per_class.values()) for per_class in exits.values()) == n_test
    assert set(metrics["test_predictions"]) == {"accuracy", "cost", "selected", *table} - {
        "TestResNet",
        "TestEfficientNet",
        "Cascade, paper's order",
        "Cascade, cheapest first",
        "Cascade, stage selection",
    }
    assert all(len(labels) == n_test for labels in metrics["test_predictions"].values())
    settings = json.loads((out / "cascade" / "leukemia.json").read_text())
    assert settings["mask_bottom"] == 0.125
    report = (out / "report.md").read_text()
    assert "## Shortcut table: test accuracy under each preprocessing" in report
    assert "## Samples ended per stage and class (test)" in report
    assert "no patient ids" in report


def test_run_certifies_on_validation_and_says_what_it_covers(smoke_run):
    """--certify on a split too small for the target: no rule is certified, and it says why."""
    out, _ = smoke_run
    metrics = json.loads((out / "metrics.json").read_text())
    n_val = sum(metrics["split_counts"]["val"].values())
    (entry,) = metrics["certification"]
    assert entry["asked"] == "agreement=0.9"
    assert entry["delta"] == 0.2
    assert entry["certified"] is False
    assert f"on {n_val} validation images" in entry["summary"]
    assert metrics["order_choice"]["asked"] == "accuracy"
    assert metrics["order_choice"]["certified_rule_saved"] is None
    report = (out / "report.md").read_text()
    assert "## Certified cascades" in report
    assert "says nothing about another lab's images" in report


def test_rerun_reuses_split_and_checkpoints(smoke_run, leukemia_root, caplog):
    """A rerun with the default --order saves the order recommended from validation."""
    out, _ = smoke_run
    before = (out / "split.csv").read_text()
    with caplog.at_level(logging.INFO), redirect_stdout(io.StringIO()):
        assert (
            main(
                [
                    "run",
                    "--data-root",
                    str(leukemia_root),
                    "--preset",
                    "smoke",
                    "--out",
                    str(out),
                    "--no-progress",
                ]
            )
            == 0
        )
    assert (out / "split.csv").read_text() == before
    assert "reusing split" in caplog.text
    assert "after epoch 1" in caplog.text  # resumed or reused, not retrained
    metrics = json.loads((out / "metrics.json").read_text())
    choice = metrics["order_choice"]
    assert choice["asked"] == "recommended"
    assert set(choice["val_score"]) == {"accuracy", "cost", "selected"}
    best = max(choice["val_score"].values())
    assert choice["saved"] == metrics["order_rule"]
    assert choice["val_score"][choice["saved"]] == best
    assert metrics["tuning"]["val_score"] == pytest.approx(best)
    assert set(metrics["alternatives"]) == {"accuracy", "cost", "selected"} - {choice["saved"]}
    assert "order recommended from validation" in (out / "report.md").read_text()


def test_saved_cascade_loads_and_predicts(smoke_run, leukemia_root, tmp_path):
    out, _ = smoke_run
    predictor = load_predictor(out / "cascade")
    assert predictor.cascade.classes_.tolist() == ["Benign", "Early", "Pre", "Pro"]
    csv_file = tmp_path / "pred.csv"
    status = main(
        [
            "predict",
            "--model",
            str(out / "cascade"),
            str(leukemia_root / "Pre"),
            str(leukemia_root / "Benign" / "Benign-001.png"),
            "--output",
            str(csv_file),
        ]
    )
    assert status == 0
    rows = list(csv.DictReader(csv_file.read_text().splitlines()))
    assert list(rows[0]) == ["path", "label", "confidence", "exit_stage"]
    assert len(rows) == 13
    stage_names = {"TestResNet", "TestEfficientNet"}
    for row in rows:
        assert row["label"] in {"Benign", "Early", "Pre", "Pro"}
        assert 0 < float(row["confidence"]) <= 1
        assert row["exit_stage"] in stage_names


def test_evaluate_saves_metrics(smoke_run, leukemia_root, tmp_path):
    out, _ = smoke_run
    target = tmp_path / "eval.json"
    with redirect_stdout(io.StringIO()) as printed:
        status = main(
            [
                "evaluate",
                "--model",
                str(out / "cascade"),
                "--data-root",
                str(leukemia_root),
                "--output",
                str(target),
            ]
        )
    assert status == 0
    result = json.loads(target.read_text())
    assert result["n_images"] == 48
    assert "accuracy" in printed.getvalue()


def test_predict_names_a_corrupt_image(smoke_run, tmp_path, caplog):
    out, _ = smoke_run
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert main(["predict", "--model", str(out / "cascade"), str(bad)]) == 2
    assert "bad.png" in caplog.text
    assert "--skip-bad skips such files" in caplog.text  # and the way out


def test_missing_model_folder_is_named(tmp_path, caplog):
    assert main(["predict", "--model", str(tmp_path / "nothing"), str(tmp_path)]) == 2
    assert "leukemia.json" in caplog.text
    assert "did you mean" not in caplog.text


def test_the_run_folder_given_as_model_points_to_its_cascade(smoke_run, tmp_path, caplog):
    out, _ = smoke_run
    assert main(["predict", "--model", str(out), str(tmp_path)]) == 2
    assert f"did you mean --model {out / 'cascade'}?" in caplog.text


def test_predict_without_images_is_an_error(smoke_run, tmp_path, caplog):
    out, _ = smoke_run
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    assert main(["predict", "--model", str(out / "cascade"), str(empty)]) == 2
    assert f"no image files in {empty}" in caplog.text
    (empty / "bad.png").write_bytes(b"not an image")
    argv = ["predict", "--model", str(out / "cascade"), str(empty), "--skip-bad"]
    assert main(argv) == 2
    assert "all 1 image files were unreadable" in caplog.text


def test_absent_device_stops_the_run_at_once(leukemia_root, tmp_path, caplog):
    out = tmp_path / "run"
    argv = ["run", "--data-root", str(leukemia_root), "--preset", "smoke", "--out", str(out)]
    assert main([*argv, "--device", "cuda:99", "--no-progress"]) == 2
    assert "'cuda:99' was requested" in caplog.text
    assert not out.exists(), "nothing may be written before the device is checked"


# Ray Data warns about its own deprecated settings when it starts (not ours to fix).
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
def test_predict_on_ray_writes_the_same_csv(smoke_run, leukemia_root, tmp_path):
    pytest.importorskip("ray.data")
    out, _ = smoke_run
    args = ["predict", "--model", str(out / "cascade"), str(leukemia_root / "Pre")]
    plain, on_ray = tmp_path / "plain.csv", tmp_path / "ray.csv"
    assert main([*args, "--output", str(plain)]) == 0
    assert main([*args, "--output", str(on_ray), "--ray", "local"]) == 0
    expected = list(csv.DictReader(plain.read_text().splitlines()))
    got = list(csv.DictReader(on_ray.read_text().splitlines()))
    assert len(got) == len(expected) == 12
    for row, want in zip(got, expected, strict=True):
        assert (row["path"], row["label"], row["exit_stage"]) == (
            want["path"],
            want["label"],
            want["exit_stage"],
        )
        assert float(row["confidence"]) == pytest.approx(float(want["confidence"]), abs=2e-6)
