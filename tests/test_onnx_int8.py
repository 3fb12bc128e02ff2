"""cascademl.onnx: static int8 as onnxruntime runs it fast, stages kept in float32."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx

from cascademl import CascadeClassifier, ConfidencePolicy
from cascademl.exceptions import PolicyError
from cascademl.io import load_cascade
from cascademl.onnx import export_cascade
from cascademl.torch_stage import TorchStage
from onnx_nets import conv_net, uint8_images

CLASSES = np.array(["a", "b", "c"])


def _graph(folder, index: int):
    return onnx.load_from_string((folder / f"stage_{index}.onnx").read_bytes())


def test_static_int8_keeps_the_preprocessing_in_float32(tmp_path):
    stage = TorchStage(
        conv_net(3),
        classes=CLASSES,
        input_size=(3, 12, 12),
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        device="cpu",
    )
    cascade = CascadeClassifier.from_fitted([("only", stage)], classes=CLASSES)
    report = export_cascade(
        cascade,
        tmp_path / "int8",
        sample=uint8_images(8, 20, 20, seed=1),
        quantize="static",
        calibration=uint8_images(8, 20, 20, seed=2),
    )
    assert report.quantization is not None
    model = _graph(tmp_path / "int8", 0)
    nodes = list(model.graph.node)
    producer = {out: node for node in nodes for out in node.output}
    first_conv = next(n for n in nodes if n.op_type == "Conv")
    # the Conv reads dequantized uint8 activations, quantized after the preprocessing
    dequantize = producer[first_conv.input[0]]
    assert dequantize.op_type == "DequantizeLinear"
    quantize = producer[dequantize.input[0]]
    assert quantize.op_type == "QuantizeLinear"
    before = producer[quantize.input[0]]
    assert before.op_type not in ("QuantizeLinear", "DequantizeLinear")
    # nothing between the graph's input and that point is quantized
    pending, upstream = [before], []
    while pending:
        node = pending.pop()
        upstream.append(node.op_type)
        pending.extend(producer[name] for name in node.input if name in producer)
    assert "MatMul" in upstream  # the resize
    assert not {"QuantizeLinear", "DequantizeLinear"} & set(upstream)
    zero_points = {init.name: init.data_type for init in model.graph.initializer}
    assert zero_points[quantize.input[2]] == onnx.TensorProto.UINT8


def test_stages_kept_in_float32_and_each_stages_int8_change(tmp_path):
    stages = [
        (name, TorchStage(conv_net(seed), classes=CLASSES, input_size=(3, 12, 12), device="cpu"))
        for seed, name in enumerate(("first", "second"))
    ]
    cascade = CascadeClassifier.from_fitted(
        stages, classes=CLASSES, policy=ConfidencePolicy("max_proba", 0.5)
    )
    x = uint8_images(12, 12, 12, seed=3)
    report = export_cascade(
        cascade,
        tmp_path / "mixed",
        sample=x,
        quantize="static",
        calibration=uint8_images(8, 12, 12, seed=4),
        keep_float32=["second"],
    )
    first, second = report.stages
    assert first.quantized == "static"
    assert 0.0 <= first.int8_label_agreement <= 1.0
    assert first.int8_max_abs_diff is not None
    assert second.quantized is None
    assert second.int8_label_agreement is None
    ops = [{node.op_type for node in _graph(tmp_path / "mixed", i).graph.node} for i in (0, 1)]
    assert "QuantizeLinear" in ops[0]
    assert "QuantizeLinear" not in ops[1]
    loaded = load_cascade(tmp_path / "mixed")
    np.testing.assert_allclose(  # the kept stage is the float32 graph
        loaded.stages_[1].predict_proba(x), stages[1][1].predict_proba(x), atol=1e-5
    )
    want = np.mean(
        loaded.stages_[0].predict(x) == stages[0][1].predict(x)
    )  # int8 graph against the float32 stage
    assert first.int8_label_agreement == pytest.approx(want)


def test_keep_float32_errors(tmp_path):
    stage = TorchStage(conv_net(5), classes=CLASSES, input_size=(3, 12, 12), device="cpu")
    cascade = CascadeClassifier.from_fitted([("only", stage)], classes=CLASSES)
    x = uint8_images(4, 12, 12)
    with pytest.raises(PolicyError, match=r"keep_float32 names no stage.*\['other'\].*\['only'\]"):
        export_cascade(
            cascade, tmp_path / "a", sample=x, quantize="dynamic", keep_float32=["other"]
        )
    with pytest.raises(PolicyError, match="without quantize"):
        export_cascade(cascade, tmp_path / "a", sample=x, keep_float32=["only"])
    with pytest.raises(PolicyError, match="collection of stage names"):
        export_cascade(cascade, tmp_path / "a", sample=x, quantize="dynamic", keep_float32="only")
