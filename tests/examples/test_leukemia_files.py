"""Result files are written atomically, one run per results folder, settings are checked."""

import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from examples.leukemia import __main__ as cli
from examples.leukemia import backbones, pipeline, predict, training
from examples.leukemia.data import LeukemiaDataError
from examples.leukemia.runlock import (
    LOCK_NAME,
    OutputFolderBusyError,
    lock_output,
    locked_output,
)
from sklearn.naive_bayes import GaussianNB

from cascademl import CascadeClassifier, SerializationError
from cascademl.io import load_cascade

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- the run lock
def test_a_second_holder_fails_at_once_naming_the_first(tmp_path):
    # A lock that waited instead of failing would hang here (the lock is not reentrant).
    with (
        locked_output(tmp_path / "out"),
        pytest.raises(OutputFolderBusyError) as info,
        locked_output(tmp_path / "out"),
    ):
        pass
    message = str(info.value)
    assert f"pid {os.getpid()}" in message
    assert socket.gethostname() in message
    assert "started 20" in message  # an ISO date
    assert sys.executable in message
    with locked_output(tmp_path / "out"):  # released on exit; the stale file is harmless
        assert (tmp_path / "out" / LOCK_NAME).is_file()


def test_the_lock_dies_with_its_holder(tmp_path):
    out = tmp_path / "out"
    code = (
        "import sys, time\n"
        "from examples.leukemia.runlock import locked_output\n"
        f"with locked_output({str(out)!r}):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    child = subprocess.Popen(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(OutputFolderBusyError, match=f"pid {child.pid} "), locked_output(out):
            pass
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    with locked_output(out):  # the killed holder's lock went with it
        pass


def test_a_second_run_into_the_same_out_stops_before_any_work(tmp_path, caplog, leukemia_root):
    out = tmp_path / "out"
    argv = ["run", "--data-root", str(leukemia_root), "--preset", "smoke", "--out", str(out)]
    with locked_output(out), caplog.at_level(logging.ERROR):
        assert cli.main([*argv, "--seed", "1", "--no-progress"]) == 2
    assert "in use by another run" in caplog.text
    assert f"pid {os.getpid()}" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # no split, no figures


def test_a_missing_data_root_writes_nothing(tmp_path, caplog):
    out = tmp_path / "out"
    argv = ["run", "--data-root", str(tmp_path / "absent"), "--preset", "smoke", "--out", str(out)]
    with caplog.at_level(logging.ERROR):
        assert cli.main([*argv, "--no-progress"]) == 2
    assert "absent is not a folder" in caplog.text
    assert not out.exists()


def test_lock_output_outside_a_scope_is_refused(tmp_path):
    with pytest.raises(RuntimeError, match="releases_output_locks"):
        lock_output(tmp_path)


# --------------------------------------------------------------------------- outputs
def test_predict_output_that_is_a_folder_fails_before_loading(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(cli, "load_predictor", lambda *a, **k: pytest.fail("loaded the model"))
    argv = ["predict", "--model", str(tmp_path), str(tmp_path), "--output", str(tmp_path)]
    with caplog.at_level(logging.ERROR):
        assert cli.main(argv) == 2
    assert "is a folder" in caplog.text


def test_evaluate_output_in_a_missing_folder_fails_before_the_work(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(cli, "evaluate_folder", lambda *a, **k: pytest.fail("evaluated"))
    output = tmp_path / "nowhere" / "evaluate.json"
    argv = ["evaluate", "--model", str(tmp_path), "--data-root", str(tmp_path)]
    with caplog.at_level(logging.ERROR):
        assert cli.main([*argv, "--output", str(output)]) == 2
    assert "does not exist" in caplog.text
    assert str(output) in caplog.text


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_evaluate_into_a_read_only_folder_fails_before_the_work(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(cli, "evaluate_folder", lambda *a, **k: pytest.fail("evaluated"))
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    argv = ["evaluate", "--model", str(tmp_path), "--data-root", str(tmp_path)]
    with caplog.at_level(logging.ERROR):
        assert cli.main([*argv, "--output", str(folder / "e.json")]) == 2
    assert "not writable" in caplog.text


def _fitted(c=1.0):
    X = np.arange(40, dtype=float).reshape(20, 2)
    return CascadeClassifier([("nb", GaussianNB(var_smoothing=c))]).fit(X, [0, 1] * 10), X


def test_the_model_and_its_settings_are_replaced_together_or_not_at_all(tmp_path):
    folder = tmp_path / "cascade"
    old, X = _fitted()
    predict._save_model(old, {"cache_size": 8}, folder)
    assert json.loads((folder / pipeline.SETTINGS_FILE).read_text()) == {"cache_size": 8}
    broken, _ = _fitted(0.5)
    broken.stages_[0].estimator_.hook = (i for i in range(2))  # cannot be stored
    with pytest.raises(SerializationError):
        predict._save_model(broken, {"cache_size": 16}, folder)
    assert json.loads((folder / pipeline.SETTINGS_FILE).read_text()) == {"cache_size": 8}
    np.testing.assert_array_equal(load_cascade(folder).predict_proba(X), old.predict_proba(X))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cascade"]
    new, _ = _fitted(0.5)
    predict._save_model(new, {"cache_size": 16}, folder)
    assert json.loads((folder / pipeline.SETTINGS_FILE).read_text()) == {"cache_size": 16}
    np.testing.assert_array_equal(load_cascade(folder).predict_proba(X), new.predict_proba(X))


def test_probabilities_file_is_written_whole(tmp_path, monkeypatch):
    stages = [("a", object())]
    fake = type("C", (), {"from_fitted": classmethod(lambda cls, *a, **k: cls())})
    monkeypatch.setattr(backbones, "CascadeClassifier", fake)
    monkeypatch.setattr(backbones, "stage_probabilities", lambda full, x: np.full((1, 2, 2), 0.5))
    y = {"val": np.array(["A", "B"]), "test": np.array(["A", "B"])}
    x = {"val": torch.zeros(2), "test": torch.zeros(2)}
    backbones._backbone_probabilities(stages, x, y, np.array(["A", "B"]), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [pipeline.PROBABILITIES_FILE]
    with np.load(tmp_path / pipeline.PROBABILITIES_FILE) as saved:
        assert saved["val"].shape == (1, 2, 2)


# --------------------------------------------------------------------------- leukemia.json
def _settings(**stain):
    state = {
        "io": 240.0,
        "alpha": 1.0,
        "beta": 0.15,
        "min_stained_pixels": 64,
        "nonnegative": True,
        "reference_paths": [],
        "he_ref": [[0.5, 0.2], [0.7, 0.6], [0.3, 0.7]],
        "max_c_ref": [1.2, 0.8],
    }
    state.update(stain)
    return {"classes": ["A"], "cache_size": 32, "stain_normalizer": state}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"he_ref": [[math.nan, 0.2], [0.7, 0.6], [0.3, 0.7]]}, "stain_normalizer.he_ref"),
        ({"he_ref": [[0.5, 0.2], [0.7, 0.6]]}, "stain_normalizer.he_ref"),
        ({"he_ref": "x"}, "stain_normalizer.he_ref"),
        ({"max_c_ref": [0.0, 0.8]}, "stain_normalizer.max_c_ref"),
        ({"max_c_ref": 0}, "stain_normalizer.max_c_ref"),
        ({"max_c_ref": [1.0, math.inf]}, "stain_normalizer.max_c_ref"),
        ({"io": -1}, "stain_normalizer.io"),
    ],
)
def test_an_invalid_stain_reference_is_named_at_load(tmp_path, change, expected):
    path = tmp_path / pipeline.SETTINGS_FILE
    path.write_text(json.dumps(_settings(**change)))
    with pytest.raises(LeukemiaDataError, match=expected) as info:
        predict._read_settings(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"cache_size": 0}', "cache_size"),
        ('{"cache_size": true}', "cache_size"),
        ("[1]", "expected a JSON object"),
        ("{", "not valid JSON"),
        ("[" * 100_000, "not valid JSON"),
        ('{"cache_size": 8, "stain_normalizer": 3}', "stain_normalizer must be"),
    ],
)
def test_a_malformed_settings_file_is_named(tmp_path, text, expected):
    path = tmp_path / pipeline.SETTINGS_FILE
    path.write_text(text)
    with pytest.raises(LeukemiaDataError, match=expected):
        predict._read_settings(path)


def test_a_valid_settings_file_reads(tmp_path):
    path = tmp_path / pipeline.SETTINGS_FILE
    path.write_text(json.dumps(_settings()))
    assert predict._read_settings(path)["cache_size"] == 32
    path.write_text(json.dumps({"cache_size": 8, "stain_normalizer": None}))
    assert predict._read_settings(path)["stain_normalizer"] is None


# --------------------------------------------------------------------------- odd files
@pytest.mark.skipif(os.name != "posix", reason="symbolic links")
@pytest.mark.parametrize("kind", ["loop", "dangling", "folder"])
def test_predict_names_or_skips_files_that_are_not_images(tmp_path, monkeypatch, caplog, kind):
    monkeypatch.setattr(cli, "load_predictor", lambda *a, **k: None)
    folder = tmp_path / "images"
    folder.mkdir()
    odd = folder / "x.jpg"
    if kind == "loop":
        odd.symlink_to(odd)
    elif kind == "dangling":
        odd.symlink_to(tmp_path / "nowhere.jpg")
    else:
        odd.mkdir()
    argv = ["predict", "--model", str(tmp_path), str(folder)]
    with caplog.at_level(logging.WARNING):
        assert cli.main(argv) == 2
    assert str(odd) in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert cli.main([*argv, "--skip-bad"]) == 2
    assert "skipped" in caplog.text
    assert "all 1 image files were unreadable" in caplog.text


def test_a_full_disk_while_checkpointing_is_named(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    training._atomic_save({"epoch": 1}, target)

    def full(obj, path):
        Path(path).write_bytes(b"half")
        raise RuntimeError("basic_ios::clear: iostream error")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(training.TrainingError, match="disk full") as info:
        training._atomic_save({"epoch": 2}, target)
    assert str(target) in str(info.value)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
