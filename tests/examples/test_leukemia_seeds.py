"""The summary over seeds, on synthetic run folders (no training)."""

import io
import json
from contextlib import redirect_stdout
from dataclasses import asdict

import numpy as np
import pytest
from examples.leukemia.__main__ import main
from examples.leukemia.presets import get_preset
from examples.leukemia.seeds import SeedRunError, run_seeds, settings_differences, summarize_seeds

CLASSES = ["Benign", "Early", "Pre", "Pro"]
STAGES = ["A", "B"]


def _onehot(labels):
    proba = np.full((len(labels), 4), 0.02)
    proba[np.arange(len(labels)), [CLASSES.index(v) for v in labels]] = 0.94
    return proba


def fake_run(folder, seed, *, cascade_errors, best_errors, n=40):
    """A finished run: stage B is the best on validation; the cascade errs on given rows."""
    rng = np.random.default_rng(seed)
    y = np.array(CLASSES * (n // 4))
    wrong = {i: CLASSES[(CLASSES.index(y[i]) + 1) % 4] for i in range(n)}
    b = y.copy()
    b[list(best_errors)] = [wrong[i] for i in best_errors]
    a = np.where(rng.random(n) < 0.3, np.roll(y, 1), y)
    cascade = y.copy()
    cascade[list(cascade_errors)] = [wrong[i] for i in cascade_errors]
    folder.mkdir(parents=True)
    np.savez(
        folder / "probabilities.npz",
        stages=np.array(STAGES),
        classes=np.array(CLASSES),
        val=np.stack([_onehot(y), _onehot(y)]),
        test=np.stack([_onehot(a), _onehot(b)]),
        val_labels=y,
        test_labels=y,
    )

    def test_metrics(labels):
        return {"accuracy": float(np.mean(labels == y)), "mcc": 0.5}

    alt = {
        "order": ["A", "B"],
        "val_accuracy": 0.9,
        "test_accuracy": float(np.mean(cascade == y)),
        "test_mcc": 0.6,
        "cascade_flops_ratio_all": 0.3,
    }
    metrics = {
        "order_rule": "accuracy",
        "order": ["A", "B"],
        "val_accuracy": {"A": 0.7, "B": 0.95},
        "tuning": {"val_accuracy": 0.96},
        "test": {
            "Cascade": test_metrics(cascade),
            "A": test_metrics(a),
            "B": test_metrics(b),
        },
        "cost": {"flops_per_image": {"A": 1.0, "B": 3.0}, "cascade_flops_ratio_all": 0.4},
        "alternatives": {"cost": alt, "selected": {**alt, "order": ["B"]}},
        "test_predictions": {rule: [str(v) for v in cascade] for rule in ("accuracy", "cost")}
        | {"selected": [str(v) for v in b]},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_summary_means_and_pooled_mcnemar(tmp_path):
    runs = [
        fake_run(tmp_path / "seed-0", 0, cascade_errors=[0], best_errors=[1, 2, 3]),
        fake_run(tmp_path / "seed-1", 1, cascade_errors=[4, 5], best_errors=[6, 7, 8, 9]),
    ]
    summary = summarize_seeds(runs)
    rows = summary["rows"]
    paper = rows["Cascade, paper's order"]
    assert paper["test_accuracy"]["mean"] == pytest.approx((39 / 40 + 38 / 40) / 2)
    assert paper["test_accuracy"]["sd"] == pytest.approx(np.std([39 / 40, 38 / 40], ddof=1))
    assert paper["cost"]["mean"] == pytest.approx(0.4)
    assert rows["Cascade, cheapest first"]["cost"]["mean"] == pytest.approx(0.3)
    assert rows["B"]["cost"]["mean"] == pytest.approx(0.75)
    assert rows["B"]["test_accuracy"]["mean"] == pytest.approx((37 / 40 + 36 / 40) / 2)
    # Pooled over both seeds: the cascade alone right on 3 + 4 rows, B alone right on 1 + 2.
    test = summary["mcnemar"]["Cascade, paper's order"]
    assert (test["only_a_correct"], test["only_b_correct"]) == (7, 3)
    assert test["best_stage_per_seed"] == ["B", "B"]
    assert test["seeds_at_least_as_accurate"] == 2
    assert test["n_test_pooled"] == 80
    # Stage selection kept B alone and predicts as B: no discordant pair.
    selected = summary["mcnemar"]["Cascade, stage selection"]
    assert (selected["only_a_correct"], selected["only_b_correct"]) == (0, 0)
    assert selected["p_value"] == 1.0


def test_run_seeds_reuses_finished_runs_and_runs_the_rest(tmp_path):
    fake_run(tmp_path / "seed-0", 0, cascade_errors=[0], best_errors=[1])
    ran = []

    def run(seed, folder):
        ran.append(seed)
        fake_run(folder, seed, cascade_errors=[2], best_errors=[3])

    summary = run_seeds([0, 5], tmp_path, run)
    assert ran == [5]
    assert len(summary["runs"]) == 2
    assert (tmp_path / "seeds.md").is_file()
    assert "± " in (tmp_path / "seeds.md").read_text()
    assert json.loads((tmp_path / "seeds.json").read_text())["rows"]["A"]["cost"]["n"] == 2
    with pytest.raises(SeedRunError, match="must differ"):
        run_seeds([1, 1], tmp_path, run)


def test_unfinished_run_is_named(tmp_path):
    (tmp_path / "seed-0").mkdir()
    with pytest.raises(SeedRunError, match="seed-0 is not a finished run"):
        summarize_seeds([tmp_path / "seed-0"])


def test_seeds_command_summarizes_only(tmp_path, caplog):
    fake_run(tmp_path / "seed-0", 0, cascade_errors=[0], best_errors=[1])
    fake_run(tmp_path / "seed-1", 1, cascade_errors=[0], best_errors=[1])
    argv = ["seeds", "--data-root", str(tmp_path), "--out", str(tmp_path), "--summarize-only"]
    with redirect_stdout(io.StringIO()) as printed:
        assert main([*argv, "--seeds", "0,1"]) == 0
    assert "Cascade, stage selection" in printed.getvalue()
    assert main([*argv, "--seeds", "0,2"]) == 2
    assert "no finished run for seed 2" in caplog.text


def _record_settings(folder, preset, *, scoring="neg_log_loss", ratio=0.35):
    """Record in a fake run what a real one records: its preset, scoring and budget."""
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["preset"] = json.loads(json.dumps(asdict(preset)))
    metrics["tuning"] |= {"scoring": scoring, "budget_flops": ratio * 4.0}  # FLOPs 1 + 3
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_a_finished_run_made_with_other_settings_is_not_summarized(tmp_path, caplog):
    smoke = get_preset("smoke")
    for seed in (0, 1):
        folder = fake_run(tmp_path / f"seed-{seed}", seed, cascade_errors=[0], best_errors=[1])
        _record_settings(folder, smoke.with_overrides(seed=seed))
    argv = ["seeds", "--data-root", str(tmp_path), "--out", str(tmp_path), "--seeds", "0,1"]
    argv += ["--preset", "smoke"]
    with redirect_stdout(io.StringIO()):
        assert main(argv) == 0  # the same settings: both runs reused, nothing trained
    # Another budget, score or training setting: an error naming each, and nothing mixed.
    (tmp_path / "seeds.md").unlink()
    assert main([*argv, "--max-cost-ratio", "0.25", "--set", "epochs=9"]) == 2
    assert "max_cost_ratio: the run has 0.35, asked 0.25" in caplog.text
    assert "epochs: the run has 1, asked 9" in caplog.text
    assert "seed-0" in caplog.text
    assert "seed-1" in caplog.text
    assert "delete those runs' metrics.json" in caplog.text
    assert not (tmp_path / "seeds.md").exists()
    assert main([*argv, "--scoring", "accuracy"]) == 2
    assert "scoring: the run has 'neg_log_loss', asked 'accuracy'" in caplog.text
    # A setting that only changes speed does not count; --summarize-only takes the runs
    # as they are.
    with redirect_stdout(io.StringIO()):
        assert main([*argv, "--set", "num_workers=2"]) == 0
        assert main([*argv, "--scoring", "accuracy", "--summarize-only"]) == 0


def test_settings_differences_lists_nothing_for_the_asked_settings(tmp_path):
    folder = fake_run(tmp_path / "seed-3", 3, cascade_errors=[0], best_errors=[1])
    preset = get_preset("smoke").with_overrides(seed=3)
    _record_settings(folder, preset, ratio=0.2)
    asked = asdict(preset)
    assert settings_differences(folder, asked, max_cost_ratio=0.2, scoring="neg_log_loss") == []
    assert settings_differences(
        folder, asdict(preset.with_overrides(seed=4)), max_cost_ratio=0.2, scoring="neg_log_loss"
    ) == ["seed: the run has 3, asked 4"]
