"""The export side of `cascademl.onnx`: tracing, conversion, checks and quantization.

Imports torch (and, on use, onnxruntime's quantization and skl2onnx); `cascademl.onnx`
imports this module only inside `export_cascade`, so loading an exported cascade never
does.
"""

from __future__ import annotations

import contextlib
import copy
import io
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.onnx import symbolic_helper

from cascademl import __version__
from cascademl._optional import require
from cascademl.calibration import TemperatureScaledStage
from cascademl.cascade import CascadeClassifier
from cascademl.exceptions import PolicyError, SerializationError
from cascademl.onnx import (
    _CHECK_SAMPLES,
    _IMAGE_NDIM,
    _UINT8_SCALE,
    EXPORT_FILE,
    ExportReport,
    OnnxStage,
    QuantizationReport,
    StageExport,
    _image_array,
    _report_bytes,
)
from cascademl.stages import SklearnStage
from cascademl.torch_stage import Preprocessing, TorchStage

_SKLEARN_BATCH = 4096  # rows per run of a converted scikit-learn graph
_CALIBRATION_BATCH = 16
_SEED = 0


@dataclass(frozen=True, slots=True)
class Options:
    """The checked options of one export."""

    opset: int
    quantize: str | None
    sklearn: str
    tolerance: float
    overwrite: bool
    keep_float32: frozenset[str] = frozenset()


class _Graph(nn.Module):
    """What an image stage's graph computes: the stage's preprocessing, then its module."""

    def __init__(self, module: nn.Module, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.module = module
        self.preprocessing = preprocessing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.module(self.preprocessing(x))
        return out


# --------------------------------------------------------------------------- symbolics
def resize_matrix(source: int, target: int, mode: str) -> np.ndarray[Any, Any]:
    """(target, source): torch's antialiased resize of one axis, as a matrix.

    Row ``i`` holds the weights of output ``i`` over the ``source`` inputs. They are read
    off torch's own kernel (``F.interpolate`` with ``antialias=True``, ``align_corners=False``)
    applied to the ``source`` one-hot rows in float64, so a resize of ``(n, c, h, w)``
    images to a fixed size is ``rows @ x @ cols.T`` with ``rows = resize_matrix(h, ...)``
    and ``cols = resize_matrix(w, ...)``: torch's result to float rounding (the kernels
    are separable), downsampling or upsampling.

    Args:
        source: input length along the axis.
        target: output length.
        mode: ``"bilinear"`` or ``"bicubic"``.

    Examples:
        Halving 4 values: each output weighs the triangle filter's taps (3, 3, 1) / 7.

        >>> (7 * resize_matrix(4, 2, "bilinear")).round(4).tolist()
        [[3.0, 3.0, 1.0, 0.0], [0.0, 1.0, 3.0, 3.0]]
    """
    eye = torch.eye(source, dtype=torch.float64).view(source, 1, 1, source)
    with torch.no_grad():
        out = torch.nn.functional.interpolate(
            eye, size=(1, target), mode=mode, align_corners=False, antialias=True
        )
    return np.ascontiguousarray(out.reshape(source, target).numpy().T.astype(np.float32))


def _resize_aa(mode: str) -> Any:
    """Torch's antialiased ``mode`` resize to a fixed size, as two ``MatMul`` in the graph.

    The source size is fixed in the graph (only the batch is free), so the resize is a
    linear map of each axis: ``rows @ x @ cols.T`` with the matrices of
    [`resize_matrix`][cascademl._onnx_export.resize_matrix]. That is exact to float32
    rounding (about 1e-6 on ``[0, 1]`` images), runs on every execution provider (antialiased
    ``Resize`` does not) and stays float32 when the network is quantized. It is not faster:
    the dense matrices multiply mostly zeros, so it takes about twice the time of
    onnxruntime's antialiased ``Resize`` (docs/benchmarks/onnx.md), a few percent of a
    stage's time.
    """

    def symbolic(g: Any, x: Any, output_size: Any, align_corners: Any, scales: Any) -> Any:
        del align_corners, scales  # the stages resize with align_corners=False, to a size
        height, width = symbolic_helper._get_const(  # type: ignore[no-untyped-call]  # noqa: SLF001
            output_size, "is", "output_size"
        )
        src_h, src_w = x.type().varyingSizes()[2:]
        height, width = int(height), int(width)
        rows = g.op("Constant", value_t=torch.from_numpy(resize_matrix(src_h, height, mode)))
        cols = g.op(
            "Constant", value_t=torch.from_numpy(resize_matrix(src_w, width, mode).T.copy())
        )
        # The cheaper order: width first costs (H*W + h*H) * w, height first (H*W + h*W) * h.
        if (src_h * src_w + height * src_h) * width <= (src_h * src_w + height * src_w) * height:
            return g.op("MatMul", rows, g.op("MatMul", x, cols))
        return g.op("MatMul", g.op("MatMul", rows, x), cols)

    return symbolic


def _nearest(g: Any, x: Any, output_size: Any, scales: Any) -> Any:
    """The ``nearest`` resize of torch as two ``Gather`` of the source rows and columns.

    The indices are torch's own (``floor(dst * (src / dst_size))`` in float32): exact,
    where ``Resize``'s float coordinates can land on the other side of an integer.
    """
    del scales
    height, width = symbolic_helper._get_const(  # type: ignore[no-untyped-call]  # noqa: SLF001
        output_size, "is", "output_size"
    )
    src_h, src_w = x.type().varyingSizes()[2:]
    for axis, source, target in ((2, src_h, int(height)), (3, src_w, int(width))):
        scale = np.float32(source) / np.float32(target)
        index = np.minimum(np.floor(np.arange(target, dtype=np.float32) * scale), source - 1)
        x = g.op(
            "Gather",
            x,
            g.op("Constant", value_t=torch.from_numpy(index.astype(np.int64))),
            axis_i=axis,
        )
    return x


def _pool_matrix(source: int, target: int) -> np.ndarray[Any, Any]:
    """(target, source): row i averages torch's adaptive-pooling bin i of ``source`` values."""
    matrix = np.zeros((target, source), dtype=np.float32)
    for i in range(target):
        start = (i * source) // target
        end = -((-(i + 1) * source) // target)  # ceil
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def _adaptive_avg_pool(g: Any, x: Any, output_size: Any) -> Any:
    """Adaptive average pooling to a static size, also to sizes that do not divide the input.

    Global pooling stays ``GlobalAveragePool``; other sizes (timm's VGG head pools a 1x1 map
    up to 7x7 at small inputs, which torch's exporter refuses) become two ``MatMul`` with
    the bins' averaging matrices.
    """
    height, width = symbolic_helper._get_const(  # type: ignore[no-untyped-call]  # noqa: SLF001
        output_size, "is", "output_size"
    )
    if (int(height), int(width)) == (1, 1):
        return g.op("GlobalAveragePool", x)
    src_h, src_w = x.type().varyingSizes()[2:]
    rows = g.op("Constant", value_t=torch.from_numpy(_pool_matrix(src_h, int(height))))
    cols = g.op("Constant", value_t=torch.from_numpy(_pool_matrix(src_w, int(width)).T.copy()))
    return g.op("MatMul", rows, g.op("MatMul", x, cols))


_SYMBOLICS = {
    "aten::adaptive_avg_pool2d": _adaptive_avg_pool,
    "aten::_upsample_bilinear2d_aa": _resize_aa("bilinear"),
    "aten::_upsample_bicubic2d_aa": _resize_aa("bicubic"),
    "aten::upsample_nearest2d": _nearest,
}


@contextlib.contextmanager
def _symbolics(opset: int) -> Iterator[None]:
    """Our resize symbolics, registered for one export only (then torch's own again)."""
    onnx_api: Any = torch.onnx
    for name, function in _SYMBOLICS.items():
        onnx_api.register_custom_op_symbolic(name, function, opset)
    try:
        yield
    finally:
        for name in _SYMBOLICS:
            onnx_api.unregister_custom_op_symbolic(name, opset)


def _trace(module: nn.Module, example: torch.Tensor, opset: int, name: str) -> bytes:
    buffer = io.BytesIO()
    try:
        with _symbolics(opset), warnings.catch_warnings():
            # The TorchScript exporter warns that it is deprecated, and its tracer notes
            # Python values it bakes in (the image sizes, fixed by design).
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                buffer,  # type: ignore[arg-type]  # a file object works, as documented
                dynamo=False,
                opset_version=opset,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                do_constant_folding=True,
            )
    except (RuntimeError, TypeError, ValueError, torch.onnx.errors.OnnxExporterError) as exc:
        msg = f"stage {name!r}: torch.onnx.export (opset {opset}) failed: {exc}"
        raise SerializationError(msg) from exc
    return buffer.getvalue()


# --------------------------------------------------------------------------- inputs
def _check_inputs(cascade: CascadeClassifier, sample: Any) -> tuple[Any, bool]:
    """The inputs every check runs on: ``sample``, or random ones of the stages' size."""
    if sample is not None:
        if isinstance(sample, (list, tuple)) or np.asarray(sample).ndim == _IMAGE_NDIM:
            channels = _channels(cascade)
            images = _image_array(sample, channels) if channels else np.asarray(sample)
            return np.ascontiguousarray(images), False
        return sample, False
    rng = np.random.default_rng(_SEED)
    sizes = {_base(s).preprocessing_.input_size for s in cascade.stages_ if _is_torch(s)}
    if len(sizes) > 1 or None in sizes:
        msg = (
            "sample=None, but the torch stages take different input sizes "
            f"{sorted(map(str, sizes))}: pass sample= with a few inputs of the size the "
            "exported cascade will be fed (the graphs take that size)"
        )
        raise PolicyError(msg)
    if sizes:
        shape = sizes.pop()
        assert shape is not None  # noqa: S101 - excluded above; for mypy
        return rng.integers(0, 256, (_CHECK_SAMPLES, *shape), dtype=np.uint8), True
    n_features = getattr(cascade, "n_features_in_", None)
    if n_features is None:
        msg = "sample=None, but the cascade does not know its feature count: pass sample="
        raise PolicyError(msg)
    return rng.standard_normal((_CHECK_SAMPLES, int(n_features))), True


def _base(stage: Any) -> Any:
    while isinstance(stage, TemperatureScaledStage):
        stage = stage.stage
    return stage


def _is_torch(stage: Any) -> bool:
    return isinstance(_base(stage), TorchStage)


def _channels(cascade: CascadeClassifier) -> int | None:
    for stage in cascade.stages_:
        if _is_torch(stage) and _base(stage).preprocessing_.input_size is not None:
            return int(_base(stage).preprocessing_.input_size[0])
    return None


def _unit_float(images: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Images as the graphs take them: float32 in [0, 1] (uint8 scaled as OnnxStage does)."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) * _UINT8_SCALE
    return np.ascontiguousarray(images, dtype=np.float32)


# --------------------------------------------------------------------------- stages
@dataclass
class _Exported:
    stage: Any
    report: StageExport
    float_graph: bytes | None = None  # a torch stage's float32 graph, for quantization


def _export_stage(stage: Any, name: str, index: int, x: Any, options: Options) -> _Exported:
    if isinstance(stage, TemperatureScaledStage):
        inner = _export_stage(stage.stage, name, index, x, options)
        wrapped = TemperatureScaledStage(inner.stage, stage.temperature)
        source = f"TemperatureScaledStage({inner.report.source})"
        report = _replace(inner.report, source=source)
        return _Exported(wrapped, report, inner.float_graph)
    if isinstance(stage, TorchStage):
        return _export_torch(stage, name, index, x, options)
    if isinstance(stage, SklearnStage):
        return _export_sklearn(stage, name, index, x, options)
    msg = (
        f"stage {name!r} ({type(stage).__name__}) cannot be exported: export_cascade "
        "exports TorchStage and SklearnStage stages, and TemperatureScaledStage around either"
    )
    raise SerializationError(msg)


def _replace(report: StageExport, **changes: Any) -> StageExport:
    values = {name: getattr(report, name) for name in report.__slots__}
    values.update(changes)
    return StageExport(**values)


def _export_torch(stage: TorchStage, name: str, index: int, x: Any, options: Options) -> _Exported:
    prep = stage.preprocessing_
    images = np.asarray(x)
    if images.ndim != _IMAGE_NDIM:
        msg = f"stage {name!r} is a TorchStage: sample must hold images, got shape {images.shape}"
        raise PolicyError(msg)
    module = copy.deepcopy(stage.module_).to("cpu", torch.float32).eval()
    graph_module = _Graph(module, prep).eval()
    example = torch.from_numpy(_unit_float(images[:2]))
    graph = _trace(graph_module, example, options.opset, name)
    exported = OnnxStage(
        graph,
        classes=stage.classes_,
        output="logits",
        batch_size=stage.batch_size,
        cost_per_sample=stage.cost_per_sample,
    )
    reference = TorchStage(
        module,
        classes=stage.classes_,
        input_size=prep.input_size,
        interpolation=prep.interpolation,
        mean=prep.mean,
        std=prep.std,
        crop_pct=prep.crop_pct,
        batch_size=stage.batch_size,
        device="cpu",
        precision="fp32",
    )
    diff = _max_diff(reference.predict_proba(images), exported.predict_proba(images))
    _check_tolerance(diff, name, options.tolerance)
    report = StageExport(
        name=name,
        source="TorchStage",
        file=f"stage_{index}.onnx",
        input_shape=tuple(int(v) for v in images.shape[1:]),
        max_abs_diff=diff,
        torch_precision=str(stage.precision),
    )
    return _Exported(exported, report, graph)


def _export_sklearn(
    stage: SklearnStage, name: str, index: int, x: Any, options: Options
) -> _Exported:
    estimator = stage.estimator_ if hasattr(stage, "estimator_") else stage.estimator
    features = np.asarray(x)
    if options.sklearn == "keep":
        report = StageExport(name, "SklearnStage", None, tuple(features.shape[1:]), 0.0)
        return _Exported(stage, report)
    if features.ndim != 2:  # noqa: PLR2004 - (n_samples, n_features)
        msg = (
            f"stage {name!r} is a scikit-learn stage: sample must be a (n_samples, "
            f"n_features) matrix, got shape {features.shape}"
        )
        raise PolicyError(msg)
    graph = _convert_sklearn(estimator, name, features, options.opset)
    exported = OnnxStage(
        graph,
        classes=np.asarray(estimator.classes_),
        output="probabilities",
        batch_size=_SKLEARN_BATCH,
        cost_per_sample=stage.cost_per_sample,
    )
    diff = _max_diff(stage.predict_proba(features), exported.predict_proba(features))
    _check_tolerance(diff, name, options.tolerance)
    report = StageExport(
        name=name,
        source="SklearnStage",
        file=f"stage_{index}.onnx",
        input_shape=(int(features.shape[1]),),
        max_abs_diff=diff,
    )
    return _Exported(exported, report)


def _convert_sklearn(estimator: Any, name: str, features: Any, opset: int) -> bytes:
    skl2onnx = require("skl2onnx", "onnx", purpose="exporting scikit-learn stages")
    from skl2onnx.common.data_types import (  # noqa: PLC0415 - optional dependency
        DoubleTensorType,
        FloatTensorType,
    )

    ort = require("onnxruntime", "onnx", purpose="exporting scikit-learn stages")
    errors: list[str] = []
    n_features = int(features.shape[1])
    # float64 first (the estimator's own precision); float32 where a converter lacks it.
    for tensor_type in (DoubleTensorType, FloatTensorType):
        try:
            model = skl2onnx.convert_sklearn(
                estimator,
                initial_types=[("features", tensor_type([None, n_features]))],
                options={id(estimator): {"zipmap": False}},
                target_opset={"": opset, "ai.onnx.ml": 3},
            )
            graph = bytes(model.SerializeToString())
            ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
        except (RuntimeError, ValueError, TypeError, NotImplementedError, KeyError) as exc:
            first_line = (str(exc).strip().splitlines() or [""])[0]
            errors.append(f"{tensor_type.__name__}: {type(exc).__name__}: {first_line}")
            continue
        return graph
    msg = (
        f"stage {name!r} ({type(estimator).__name__}): skl2onnx cannot convert it "
        f"({'; '.join(errors)[:600]}); export_cascade(..., sklearn='keep') keeps it in the "
        "skops file save_cascade writes"
    )
    raise SerializationError(msg)


def _max_diff(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b)), initial=0.0))


def _check_tolerance(diff: float, name: str, tolerance: float) -> None:
    if not diff <= tolerance:
        msg = (
            f"stage {name!r}: the exported graph's probabilities differ from the stage's by "
            f"up to {diff:.3g} on the check inputs, more than tolerance={tolerance:g}"
        )
        raise SerializationError(msg)


# --------------------------------------------------------------------------- quantization
class _Batches:
    """``onnxruntime.quantization.CalibrationDataReader``: calibration images in batches."""

    def __init__(self, images: np.ndarray[Any, Any]) -> None:
        self._batches: Iterator[np.ndarray[Any, Any]] = iter(
            _unit_float(images[i : i + _CALIBRATION_BATCH])
            for i in range(0, images.shape[0], _CALIBRATION_BATCH)
        )

    def get_next(self) -> dict[str, np.ndarray[Any, Any]] | None:
        batch = next(self._batches, None)
        return None if batch is None else {"images": batch}


def _preprocessing_nodes(graph_path: Path) -> list[str]:
    """The names of the nodes that compute the stage's preprocessing (left in float32).

    The traced graph runs the preprocessing (resize, crop, normalisation) before the
    module: those are the nodes the first ``Conv`` depends on. Quantizing them would round
    the images themselves; they cost little next to the network.
    """
    onnx = require("onnx", "onnx", purpose="int8 quantization")
    model = onnx.load(str(graph_path))
    nodes = list(model.graph.node)
    first = next((n for n in nodes if n.op_type == "Conv"), None)
    if first is None:
        return []
    producer = {out: node for node in nodes for out in node.output}
    names: list[str] = []
    pending = [name for name in first.input[:1] if name in producer]
    seen: set[str] = set()
    while pending:
        node = producer[pending.pop()]
        if node.name in seen:
            continue
        seen.add(node.name)
        names.append(node.name)
        pending.extend(name for name in node.input if name in producer)
    return names


def _quantize(graph: bytes, mode: str, calibration: np.ndarray[Any, Any] | None) -> bytes:
    quantization = require("onnxruntime.quantization", "onnx", purpose="int8 quantization")
    with tempfile.TemporaryDirectory(prefix="cascademl-quantize-") as tmp:
        source = Path(tmp) / "float32.onnx"
        source.write_bytes(graph)
        prepared = Path(tmp) / "prepared.onnx"
        quantization.shape_inference.quant_pre_process(str(source), str(prepared))
        target = Path(tmp) / "int8.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # notes on the pre-processing advice, etc.
            if mode == "dynamic":
                quantization.quantize_dynamic(
                    prepared, target, weight_type=quantization.QuantType.QInt8
                )
            else:
                assert calibration is not None  # noqa: S101 - checked by the caller
                # QDQ with per-channel int8 weights and uint8 activations: onnxruntime's
                # fast int8 path on x86-64 (u8 x s8 dot products, VNNI where the CPU has
                # it), fused into QLinearConv / QGemm when the session loads the graph.
                quantization.quantize_static(
                    prepared,
                    target,
                    _Batches(calibration),
                    quant_format=quantization.QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=quantization.QuantType.QUInt8,
                    weight_type=quantization.QuantType.QInt8,
                    nodes_to_exclude=_preprocessing_nodes(prepared),
                )
        return target.read_bytes()


# --------------------------------------------------------------------------- cascade
def _rebuild(cascade: CascadeClassifier, stages: list[tuple[str, Any]]) -> CascadeClassifier:
    """The cascade with other stages: same policy, combiner, classes and attributes."""
    rebuilt = CascadeClassifier.from_fitted(
        stages,
        classes=cascade.classes_,
        policy=cascade.policy_,
        combine=cascade.combine,
        escalation_weight=cascade.escalation_weight,
        batch_size=cascade.batch_size,
        reject_threshold=getattr(cascade, "reject_threshold", None),
        abstain_label=getattr(cascade, "abstain_label", None),
    )
    for attr in ("n_features_in_", "feature_names_in_", "certificate_"):
        if hasattr(rebuilt, attr):
            delattr(rebuilt, attr)
        if hasattr(cascade, attr):
            setattr(rebuilt, attr, getattr(cascade, attr))
    return rebuilt


def _agreement(a: Any, b: Any) -> tuple[float, float, float]:
    labels = float(np.mean(np.asarray(a.labels) == np.asarray(b.labels)))
    exits = float(np.mean(np.asarray(a.exit_stage) == np.asarray(b.exit_stage)))
    return labels, exits, _max_diff(a.proba, b.proba)


def _accuracy(result: Any, y: Any) -> float | None:
    if y is None:
        return None
    return float(np.mean(np.asarray(result.labels) == np.asarray(y)))


def export(
    cascade: CascadeClassifier,
    folder: Path,
    options: Options,
    *,
    sample: Any,
    sample_labels: Any,
    calibration: Any,
) -> ExportReport:
    """`cascademl.onnx.export_cascade`, once its arguments are checked."""
    onnx = require("onnx", "onnx", purpose="exporting a cascade to ONNX")
    ort = require("onnxruntime", "onnx", purpose="exporting a cascade to ONNX")
    x, synthetic = _check_inputs(cascade, sample)
    n_check = len(x)
    if sample_labels is not None and len(sample_labels) != n_check:
        msg = f"sample_labels has {len(sample_labels)} labels for {n_check} samples"
        raise PolicyError(msg)
    exported = [
        _export_stage(stage, str(name), i, x, options)
        for i, (name, stage) in enumerate(cascade.named_stages_.items())
    ]
    names = [str(name) for name in cascade.named_stages_]
    float_cascade = _rebuild(cascade, list(zip(names, [e.stage for e in exported], strict=True)))
    float_result = float_cascade.route(x)
    labels, exits, proba_diff = _agreement(cascade.route(x), float_result)
    final, quantization = float_cascade, None
    changes: dict[str, tuple[float, float]] = {}
    if options.quantize is not None:
        final, n_calibration, changes = _quantized(
            cascade,
            names,
            exported,
            mode=options.quantize,
            calibration=calibration,
            keep_float32=options.keep_float32,
            x=x,
        )
        int8_result = final.route(x)
        q_labels, q_exits, q_diff = _agreement(float_result, int8_result)
        quantization = QuantizationReport(
            mode=options.quantize,
            n_samples=n_check,
            n_calibration=n_calibration,
            label_agreement=q_labels,
            exit_agreement=q_exits,
            max_abs_proba_diff=q_diff,
            accuracy_float32=_accuracy(float_result, sample_labels),
            accuracy_int8=_accuracy(int8_result, sample_labels),
        )
    stages = tuple(
        _replace(
            e.report,
            quantized=options.quantize,
            int8_label_agreement=changes[name][0],
            int8_max_abs_diff=changes[name][1],
        )
        if name in changes
        else e.report
        for name, e in zip(names, exported, strict=True)
    )
    report = ExportReport(
        folder=folder,
        opset=options.opset,
        tolerance=options.tolerance,
        n_check=n_check,
        synthetic_check=synthetic,
        stages=stages,
        label_agreement=labels,
        exit_agreement=exits,
        max_abs_proba_diff=proba_diff,
        quantization=quantization,
        versions={
            "cascademl": __version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
        },
    )
    from cascademl.io import _save  # noqa: PLC0415 - io imports this module's parent

    _save(
        final,
        folder,
        overwrite=options.overwrite,
        sklearn_format="skops",
        extra_files={EXPORT_FILE: _report_bytes(report.to_dict(folder=False))},
    )
    return report


def _quantized(
    cascade: CascadeClassifier,
    names: list[str],
    exported: list[_Exported],
    *,
    mode: str,
    calibration: Any,
    keep_float32: frozenset[str],
    x: Any,
) -> tuple[CascadeClassifier, int, dict[str, tuple[float, float]]]:
    """The cascade with its torch stages' graphs in int8 (but those kept), and more.

    Also the count of calibration samples (0 for dynamic quantization), and for each
    quantized stage its int8 graph's label agreement and largest probability difference
    with its float32 graph on the check inputs ``x``.
    """
    images = None
    if mode == "static":
        channels = _channels(cascade)
        images = np.ascontiguousarray(
            _image_array(calibration, channels) if channels else np.asarray(calibration)
        )
    stages = []
    changes: dict[str, tuple[float, float]] = {}
    for name, entry in zip(names, exported, strict=True):
        if entry.float_graph is None or name in keep_float32:
            stages.append(entry.stage)
            continue
        base = _base(entry.stage)
        stage: Any = OnnxStage(
            _quantize(entry.float_graph, mode, images),
            classes=base.classes_,
            output="logits",
            batch_size=base.batch_size,
            cost_per_sample=base.cost_per_sample,
        )
        float_p, int8_p = base.predict_proba(x), stage.predict_proba(x)
        agreement = float(np.mean(np.argmax(float_p, axis=1) == np.argmax(int8_p, axis=1)))
        changes[name] = (agreement, _max_diff(float_p, int8_p))
        if isinstance(entry.stage, TemperatureScaledStage):
            stage = TemperatureScaledStage(stage, entry.stage.temperature)
        stages.append(stage)
    final = _rebuild(cascade, list(zip(names, stages, strict=True)))
    return final, 0 if images is None else int(images.shape[0]), changes
