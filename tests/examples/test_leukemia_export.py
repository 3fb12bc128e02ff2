"""The ``export`` command: an exported run's cascade, taken by ``predict`` and ``evaluate``."""

from __future__ import annotations

import csv
import io
import json
from contextlib import redirect_stdout

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from examples.leukemia.__main__ import main
from examples.leukemia.predict import SETTINGS_FILE, load_predictor, read_images

from cascademl import CascadeClassifier, ConfidencePolicy
from cascademl.io import load_cascade, save_cascade
from cascademl.onnx import OnnxStage
from cascademl.torch_stage import TorchStage

CLASSES = ["Benign", "Early", "Pre", "Pro"]


@pytest.fixture(scope="module")
def run_cascade(tmp_path_factory):
    """A run's ``cascade`` folder: two tiny timm models, cache size 48, no stain reference."""
    stages = [
        (
            name,
            TorchStage.from_timm(
                model, num_classes=4, classes=CLASSES, input_size=(3, 32, 32), device="cpu"
            ),
        )
        for name, model in (
            ("TestResNet", "test_resnet"),
            ("TestEfficientNet", "test_efficientnet"),
        )
    ]
    cascade = CascadeClassifier.from_fitted(
        stages, classes=CLASSES, policy=ConfidencePolicy("max_proba", 0.27)
    )
    folder = tmp_path_factory.mktemp("run") / "cascade"
    save_cascade(cascade, folder)
    (folder / SETTINGS_FILE).write_text(json.dumps({"cache_size": 48, "stain_normalizer": None}))
    return folder


def test_export_then_predict_and_evaluate(run_cascade, leukemia_root, tmp_path):
    out = tmp_path / "onnx"
    check = [leukemia_root / "Pre", leukemia_root / "Benign"]
    with redirect_stdout(io.StringIO()) as printed:
        status = main(
            ["export", "--model", str(run_cascade), "--out", str(out), "--check", *map(str, check)]
        )
    assert status == 0, printed.getvalue()
    assert "labels 100.00% and exits 100.00%" in printed.getvalue()
    assert (out / SETTINGS_FILE).is_file()
    exported = load_cascade(out)
    assert all(isinstance(stage, OnnxStage) for stage in exported.stages_)
    torch_predictor, onnx_predictor = load_predictor(run_cascade), load_predictor(out)
    paths = sorted((leukemia_root / "Early").iterdir())
    x, _ = read_images(paths, torch_predictor)
    want, got = torch_predictor.cascade.route(x), onnx_predictor.cascade.route(x)
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_array_equal(got.exit_stage, want.exit_stage)
    csv_file = tmp_path / "pred.csv"
    assert (
        main(
            [
                "predict",
                "--model",
                str(out),
                str(leukemia_root / "Early"),
                "--output",
                str(csv_file),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(csv_file.read_text().splitlines()))
    assert [r["label"] for r in rows] == [str(v) for v in want.labels]
    with redirect_stdout(io.StringIO()):
        assert main(["evaluate", "--model", str(out), "--data-root", str(leukemia_root)]) == 0
    assert (out.parent / "evaluate-data.json").is_file()
    with redirect_stdout(io.StringIO()):
        assert main(["export", "--model", str(run_cascade), "--out", str(out)]) == 2  # exists


def test_export_static_int8_keeps_named_stages_float32(
    run_cascade, leukemia_root, tmp_path, caplog
):
    out = tmp_path / "int8"
    args = ["export", "--model", str(run_cascade), "--out", str(out), "--quantize", "static"]
    args += ["--calibration", str(leukemia_root / "Pro"), "--keep-float32", "TestEfficientNet"]
    with redirect_stdout(io.StringIO()) as printed:
        assert main(args) == 0, printed.getvalue()
    lines = printed.getvalue().splitlines()
    resnet = next(line for line in lines if line.lstrip().startswith("TestResNet"))
    effnet = next(line for line in lines if line.lstrip().startswith("TestEfficientNet"))
    assert "int8 labels as float32" in resnet
    assert "int8" not in effnet
    report = json.loads((out / "onnx_export.json").read_text())
    kinds = {s["name"]: s.get("int8_label_agreement") for s in report["stages"]}
    assert kinds["TestResNet"] is not None
    assert kinds["TestEfficientNet"] is None
    with redirect_stdout(io.StringIO()) as printed:
        bad = [*args[:-1], "NoSuchStage"]
        bad[bad.index(str(out))] = str(tmp_path / "other")
        assert main(bad) == 2
    assert "NoSuchStage" in caplog.text
    assert not (tmp_path / "other").exists()
