"""cascademl.onnx: export, the ONNX stage, loading without torch, quantization, bad input."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import torch
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier

from cascademl import CascadeClassifier, ConfidencePolicy
from cascademl.calibration import TemperatureScaledStage
from cascademl.exceptions import (
    DeviceUnavailableError,
    PolicyError,
    SerializationError,
    StageInterfaceError,
)
from cascademl.io import load_cascade
from cascademl.onnx import EXPORT_FILE, OnnxStage, export_cascade
from cascademl.torch_stage import TorchStage

CLASSES = np.array(["a", "b", "c"])
#: float32 graphs against torch float32: probabilities agree to this (measured: ~1e-8).
PROBA_ATOL = 1e-5
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1),
        torch.nn.BatchNorm2d(6),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(24, 3),
    ).eval()


def _torch_cascade(threshold: float | None = None) -> CascadeClassifier:
    small = TorchStage(
        _net(0),
        classes=CLASSES,
        input_size=(3, 16, 16),
        mean=(0.5, 0.4, 0.3),
        std=(0.25, 0.2, 0.3),
        batch_size=7,
        device="cpu",
        cost_per_sample=1.0,
    )
    big = TorchStage(
        _net(1),
        classes=CLASSES,
        input_size=(3, 24, 24),
        interpolation="bicubic",
        crop_pct=0.875,
        mean=(0.45, 0.45, 0.45),
        std=(0.2, 0.2, 0.2),
        device="cpu",
        cost_per_sample=4.0,
    )
    first = TemperatureScaledStage(small, 0.25)
    if threshold is None:  # about half the samples leave at the first stage
        threshold = float(np.median(first.predict_proba(_images(48)).max(axis=1)))
    return CascadeClassifier.from_fitted(
        [("small", first), ("big", big)],
        classes=CLASSES,
        policy=ConfidencePolicy("max_proba", threshold),
    )


def _images(n: int, size: int = 32, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cascade = _torch_cascade()
    x = _images(48)
    folder = tmp_path_factory.mktemp("onnx") / "exported"
    report = export_cascade(cascade, folder, sample=x[:16])
    return cascade, folder, report, x


def test_exported_cascade_routes_as_the_torch_one(exported):
    cascade, folder, report, x = exported
    loaded = load_cascade(folder)
    want, got = cascade.route(x), loaded.route(x)
    assert all(isinstance(s, OnnxStage) for s in (loaded.stages_[0].stage, loaded.stages_[1]))
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_array_equal(got.exit_stage, want.exit_stage)
    np.testing.assert_allclose(got.proba, want.proba, atol=PROBA_ATOL)
    assert 0 < want.exit_counts[0] < x.shape[0]  # both stages decide some samples
    assert got.stage_names == ("small", "big")
    assert [s.cost_per_sample for s in loaded.stages_] == [1.0, 4.0]
    assert loaded.stages_[0].stage.cost_per_sample == 1.0
    assert loaded.stages_[0].temperature == 0.25
    assert loaded.policy_ == cascade.policy_
    # the report, returned and written into the folder
    assert report.label_agreement == 1.0
    assert report.exit_agreement == 1.0
    assert max(s.max_abs_diff for s in report.stages) < PROBA_ATOL
    assert report.stages[0].source == "TemperatureScaledStage(TorchStage)"
    written = json.loads((folder / EXPORT_FILE).read_text())
    assert written["stages"][1]["input_shape"] == [3, 32, 32]
    assert written["tolerance"] == report.tolerance
    assert "folder" not in written


def test_streaming_engine_and_input_layouts(exported):
    cascade, folder, _, x = exported
    loaded = load_cascade(folder)
    want = cascade.route(x)
    batches = iter([torch.from_numpy(x[i : i + 10]) for i in range(0, len(x), 10)])
    streamed = loaded.route(batches)
    np.testing.assert_array_equal(streamed.labels, want.labels)
    np.testing.assert_array_equal(streamed.exit_stage, want.exit_stage)
    channels_last = loaded.route(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    np.testing.assert_array_equal(channels_last.labels, want.labels)
    as_float = loaded.stages_[1].predict_proba(x[:5].astype(np.float32) / 255)
    np.testing.assert_allclose(as_float, loaded.stages_[1].predict_proba(x[:5]), atol=1e-6)


def test_pil_images_and_pickling(exported):
    from PIL import Image

    _, folder, _, x = exported
    stage = load_cascade(folder).stages_[1]
    pil = [Image.fromarray(np.ascontiguousarray(im.transpose(1, 2, 0))) for im in x[:4]]
    np.testing.assert_allclose(stage.predict_proba(pil), stage.predict_proba(x[:4]), atol=1e-7)
    again = pickle.loads(pickle.dumps(stage))  # noqa: S301 - our own bytes
    np.testing.assert_array_equal(again.predict_proba(x[:4]), stage.predict_proba(x[:4]))


def test_loading_and_routing_an_export_imports_no_torch(exported):
    _, folder, _, x = exported
    np.save(folder.parent / "x.npy", x)
    code = (
        "import sys, numpy as np\n"
        "from cascademl.io import load_cascade\n"
        f"cascade = load_cascade({str(folder)!r})\n"
        f"result = cascade.route(np.load({str(folder.parent / 'x.npy')!r}))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx')))\n"
        "print(result.labels.tolist())\n"
    )
    out = subprocess.run(  # noqa: S603 - this interpreter, our own code
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
    )
    modules, labels = out.stdout.strip().splitlines()
    assert modules == "[]"  # neither torch nor the onnx package (onnxruntime only)
    assert labels == str(exported[0].route(x).labels.tolist())


def test_a_graph_changed_after_export_is_refused(exported, tmp_path):
    _, folder, _, _ = exported
    copy = tmp_path / "changed"
    copy.mkdir()
    for path in folder.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    graph = bytearray((copy / "stage_1.onnx").read_bytes())
    graph[-20] ^= 0xFF
    (copy / "stage_1.onnx").write_bytes(bytes(graph))
    with pytest.raises(SerializationError, match=r"stage_1\.onnx.*(checksum|SHA-256)"):
        load_cascade(copy)


def test_inputs_the_graph_does_not_take(exported):
    _, folder, _, x = exported
    stage = load_cascade(folder).stages_[1]
    with pytest.raises(StageInterfaceError, match=r"stage_1\.onnx.*\(n_samples, 3, 32, 32\)"):
        stage.predict_proba(_images(2, size=28))
    with pytest.raises(StageInterfaceError, match=r"shape \(2, 1, 32, 32\)"):
        stage.predict_proba(x[:2, :1])


def test_providers(exported):
    _, folder, _, _ = exported
    with pytest.raises(DeviceUnavailableError, match=r"providers: 'NoSuchExecutionProvider'"):
        load_cascade(folder, providers=["NoSuchExecutionProvider"])
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(DeviceUnavailableError, match=r"'cuda'.*onnxruntime-gpu"):
            load_cascade(folder, providers="cuda")
    loaded = load_cascade(folder, providers="cpu", intra_op_num_threads=1)
    assert loaded.stages_[1].providers_ == ["CPUExecutionProvider"]
    assert loaded.stages_[1].intra_op_num_threads == 1
    with pytest.raises(PolicyError, match="intra_op_num_threads"):
        OnnxStage(loaded.stages_[1].model_bytes_, classes=CLASSES, intra_op_num_threads=0)


def test_resize_up_and_down_matches_torch(tmp_path):
    """Antialiased bilinear and bicubic, smaller and larger sources, nearest: as torch."""
    for mode, size in (("bilinear", 13), ("bilinear", 47), ("bicubic", 47), ("nearest", 47)):
        stage = TorchStage(
            _net(2), classes=CLASSES, input_size=(3, 20, 20), interpolation=mode, device="cpu"
        )
        cascade = CascadeClassifier.from_fitted([("only", stage)], classes=CLASSES)
        x = _images(6, size=size, seed=size)
        report = export_cascade(cascade, tmp_path / f"{mode}{size}", sample=x)
        got = load_cascade(tmp_path / f"{mode}{size}").stages_[0].predict_proba(x)
        np.testing.assert_allclose(got, stage.predict_proba(x), atol=PROBA_ATOL)
        assert report.stages[0].max_abs_diff < PROBA_ATOL


def test_adaptive_pooling_to_sizes_that_do_not_divide_the_input(tmp_path):
    """As timm's VGG head at small inputs: a 2x2 map pooled up to 3x3 (torch's exporter refuses)."""
    torch.manual_seed(4)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, stride=4),
        torch.nn.AdaptiveAvgPool2d(3),
        torch.nn.Flatten(),
        torch.nn.Linear(36, 3),
    )
    stage = TorchStage(net, classes=CLASSES, input_size=(3, 9, 9), device="cpu")
    cascade = CascadeClassifier.from_fitted([("only", stage)], classes=CLASSES)
    x = _images(5, size=9)
    report = export_cascade(cascade, tmp_path / "pool", sample=x)
    got = load_cascade(tmp_path / "pool").stages_[0].predict_proba(x)
    np.testing.assert_allclose(got, stage.predict_proba(x), atol=PROBA_ATOL)
    assert report.stages[0].max_abs_diff < PROBA_ATOL


def test_quantized_export_reports_its_change(tmp_path):
    cascade = _torch_cascade()
    x = _images(24)
    y = cascade.predict(x)
    report = export_cascade(
        cascade, tmp_path / "int8", sample=x, sample_labels=y, quantize="dynamic"
    )
    q = report.quantization
    assert q is not None
    assert q.mode == "dynamic"
    assert q.n_samples == 24
    assert q.accuracy_float32 == 1.0  # labels are the float32 cascade's own
    assert q.accuracy_int8 == pytest.approx(q.label_agreement)
    assert q.accuracy_change == pytest.approx(100 * (q.accuracy_int8 - 1.0))
    written = json.loads((tmp_path / "int8" / EXPORT_FILE).read_text())
    assert written["quantization"]["label_agreement"] == q.label_agreement
    assert written["stages"][1]["quantized"] == "dynamic"
    loaded = load_cascade(tmp_path / "int8")
    assert np.mean(loaded.predict(x) == y) == pytest.approx(q.accuracy_int8)
    with pytest.raises(PolicyError, match="calibration"):
        export_cascade(cascade, tmp_path / "static", sample=x, quantize="static")


def test_static_quantization_is_calibrated(tmp_path):
    stage = TorchStage(_net(3), classes=CLASSES, input_size=(3, 16, 16), device="cpu")
    cascade = CascadeClassifier.from_fitted([("only", stage)], classes=CLASSES)
    x = _images(16, size=16)
    report = export_cascade(
        cascade, tmp_path / "static", sample=x, quantize="static", calibration=_images(8, 16, 9)
    )
    assert report.quantization is not None
    assert report.quantization.n_calibration == 8
    assert report.quantization.max_abs_proba_diff < 0.1
    # the int8 graph is the one saved
    graph = (tmp_path / "static" / "stage_0.onnx").read_bytes()
    assert b"QuantizeLinear" in graph


def test_sklearn_stages_convert_or_are_kept(tmp_path):
    X, y = load_iris(return_X_y=True)
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    cascade = CascadeClassifier(
        [("nb", GaussianNB()), ("lr", LogisticRegression(max_iter=500))],
        policy=ConfidencePolicy("max_proba", 0.9),
    ).fit(X, names)
    report = export_cascade(cascade, tmp_path / "sk", sample=X)
    loaded = load_cascade(tmp_path / "sk")
    want, got = cascade.route(X), loaded.route(X)
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_array_equal(got.exit_stage, want.exit_stage)
    np.testing.assert_allclose(got.proba, want.proba, atol=PROBA_ATOL)
    assert [s.file for s in report.stages] == ["stage_0.onnx", "stage_1.onnx"]
    assert loaded.n_features_in_ == 4
    with pytest.raises(StageInterfaceError, match=r"\(n_samples, 4\) features"):
        loaded.stages_[0].predict_proba(X[:, :3])


def test_an_estimator_skl2onnx_cannot_convert(tmp_path):
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Odd(ClassifierMixin, BaseEstimator):
        def fit(self, X, y):
            self.classes_ = np.unique(y)
            return self

        def predict_proba(self, X):
            return np.full((len(X), len(self.classes_)), 1 / len(self.classes_))

    X, y = load_iris(return_X_y=True)
    cascade = CascadeClassifier(
        [("knn", KNeighborsClassifier()), ("odd", Odd())], policy=ConfidencePolicy("max_proba", 1)
    ).fit(X, y)
    with pytest.raises(SerializationError, match=r"stage 'odd' \(Odd\).*sklearn='keep'"):
        export_cascade(cascade, tmp_path / "odd", sample=X[:10])
    assert not (tmp_path / "odd").exists()
    plain = CascadeClassifier([("lr", LogisticRegression(max_iter=300))]).fit(X, y)
    report = export_cascade(plain, tmp_path / "kept", sample=X[:10], sklearn="keep")
    assert report.stages[0].file is None
    assert (tmp_path / "kept" / "stage_0.skops").is_file()
    np.testing.assert_array_equal(load_cascade(tmp_path / "kept").predict(X), plain.predict(X))


def test_bad_options(tmp_path):
    cascade = _torch_cascade()
    with pytest.raises(PolicyError, match=r"opset must be an integer >= 18 .*, got 17"):
        export_cascade(cascade, tmp_path / "a", opset=17)
    with pytest.raises(PolicyError, match="quantize must be"):
        export_cascade(cascade, tmp_path / "a", quantize="int4")
    with pytest.raises(PolicyError, match="different input sizes"):
        export_cascade(cascade, tmp_path / "a")  # no sample: the stages' sizes differ
