"""cascademl.onnx: the resize written as matrix products, the source size, int8 preprocessing."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx
import torch

from cascademl import CascadeClassifier
from cascademl._onnx_export import resize_matrix
from cascademl.exceptions import StageInterfaceError
from cascademl.io import load_cascade
from cascademl.onnx import EXPORT_FILE, export_cascade
from cascademl.torch_stage import TorchStage
from onnx_nets import conv_net, uint8_images

CLASSES = np.array(["a", "b", "c"])
PROBA_ATOL = 1e-5


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize(
    ("source", "target"),
    [
        ((224, 224), (32, 32)),  # the leukemia stages' downsampling
        ((47, 30), (20, 25)),  # non-square, one axis down, one up
        ((13, 9), (20, 31)),  # upsampling both axes
        ((64, 96), (64, 40)),  # one axis unchanged
    ],
)
def test_resize_matrices_give_torchs_resize(mode, source, target):
    x = torch.rand(2, 3, *source, generator=torch.Generator().manual_seed(0))
    want = torch.nn.functional.interpolate(
        x, size=target, mode=mode, align_corners=False, antialias=True
    )
    rows = torch.from_numpy(resize_matrix(source[0], target[0], mode))
    cols = torch.from_numpy(resize_matrix(source[1], target[1], mode))
    assert rows.shape == target[:1] + source[:1]
    got = rows @ x @ cols.T
    assert float((got - want).abs().max()) < 1e-5


def _graph_ops(folder, index: int) -> list[str]:
    model = onnx.load_from_string((folder / f"stage_{index}.onnx").read_bytes())
    return [node.op_type for node in model.graph.node]


@pytest.mark.parametrize(
    ("mode", "source", "crop_pct"),
    [("bilinear", (40, 28), 1.0), ("bicubic", (13, 9), 0.875), ("bilinear", (48, 48), 0.875)],
)
def test_exported_resize_is_two_matmuls_and_matches_torch(tmp_path, mode, source, crop_pct):
    stage = TorchStage(
        conv_net(1),
        classes=CLASSES,
        input_size=(3, 20, 20),
        interpolation=mode,
        crop_pct=crop_pct,
        device="cpu",
    )
    cascade = CascadeClassifier.from_fitted([("only", stage)], classes=CLASSES)
    x = uint8_images(6, *source)
    report = export_cascade(cascade, tmp_path / "f", sample=x)
    ops = _graph_ops(tmp_path / "f", 0)
    assert "Resize" not in ops
    assert ops.count("MatMul") >= 2  # rows and columns
    got = load_cascade(tmp_path / "f").stages_[0].predict_proba(x)
    np.testing.assert_allclose(got, stage.predict_proba(x), atol=PROBA_ATOL)
    assert report.stages[0].max_abs_diff < PROBA_ATOL


def test_the_source_size_is_recorded_and_other_sizes_refused(tmp_path):
    stage = TorchStage(conv_net(2), classes=CLASSES, input_size=(3, 16, 16), device="cpu")
    cascade = CascadeClassifier.from_fitted([("only", stage)], classes=CLASSES)
    report = export_cascade(cascade, tmp_path / "f", sample=uint8_images(4, 40, 28))
    assert report.stages[0].input_shape == (3, 40, 28)
    written = json.loads((tmp_path / "f" / EXPORT_FILE).read_text())
    assert written["stages"][0]["input_shape"] == [3, 40, 28]
    loaded = load_cascade(tmp_path / "f").stages_[0]
    assert loaded.input_shape_ == (3, 40, 28)
    with pytest.raises(
        StageInterfaceError, match=r"\(n_samples, 3, 40, 28\).*shape \(2, 3, 28, 40\)"
    ):
        loaded.predict_proba(uint8_images(2, 28, 40))
