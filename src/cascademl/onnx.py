"""ONNX export of a fitted cascade, and `OnnxStage`: a stage run by ONNX Runtime.

[`export_cascade`][cascademl.onnx.export_cascade] writes a folder that
[`load_cascade`][cascademl.io.load_cascade] opens: every
[`TorchStage`][cascademl.torch_stage.TorchStage] becomes an ONNX graph (``stage_<i>.onnx``)
with a dynamic batch axis and the stage's preprocessing inside it (resize, centre crop and
normalisation, as the stage does them), scikit-learn stages go through skl2onnx (or stay
in the skops file `save_cascade` writes, with ``sklearn="keep"``), and the routing rule,
classes, costs, temperatures and any ``certificate_`` are saved by `save_cascade`'s own
code, unchanged. The folder's ``cascade.json`` lists every file with its SHA-256, as for
any saved cascade, so a graph changed after export is refused on loading.

The loaded stages are [`OnnxStage`][cascademl.onnx.OnnxStage] objects. Loading and routing
an exported cascade imports neither torch nor the ``onnx`` package: numpy, scikit-learn and
``onnxruntime`` are all it needs. The export itself needs torch, ``onnx`` (and skl2onnx
for scikit-learn stages): ``pip install 'cascademl[onnx]'``.

What an exported image stage takes: the graph's input is float32 images in ``[0, 1]`` of
one source size, ``(n, channels, height, width)``, which is the size of the ``sample`` given
to the export (or the model's own input size without one); the export's report records it
(``StageExport.input_shape``, in ``onnx_export.json``) and the loaded stage has it as
``input_shape_``. Because the source size is fixed, the stage's antialiased resize is a
fixed linear map of each axis, written as two ``MatMul`` with matrices read off torch's
own resize (exact to float32 rounding). `OnnxStage` reads the same
inputs as `TorchStage` (numpy arrays or torch tensors, ``uint8`` in ``[0, 255]`` or float in
``[0, 1]``, channels first or last, lists of same-size PIL images) and scales ``uint8`` to
``[0, 1]`` before the graph; an image of another size or channel count is refused with an
error that names the size the graph takes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np

from cascademl._optional import require
from cascademl._typing import LabelArray, ProbaArray
from cascademl._validation import check_positive_int
from cascademl.exceptions import (
    DeviceUnavailableError,
    NotFittedError,
    PolicyError,
    SerializationError,
    StageInterfaceError,
    StageOutputError,
)

if TYPE_CHECKING:
    from cascademl.cascade import CascadeClassifier

__all__ = [
    "DEFAULT_OPSET",
    "DEFAULT_TOLERANCE",
    "EXPORT_FILE",
    "ExportReport",
    "OnnxStage",
    "Provider",
    "QuantizationReport",
    "StageExport",
    "available_providers",
    "export_cascade",
]

#: The ONNX opset of exported graphs, and the oldest the export is checked with (the
#: stages' antialiased resizes are written as matrix products, which any opset has).
DEFAULT_OPSET = 18
#: Largest absolute difference allowed, at export, between a float32 graph's
#: probabilities and the source stage's (run in float32) on the check inputs.
DEFAULT_TOLERANCE = 1e-4
#: The export's report in the folder (listed with its checksum in ``cascade.json``).
EXPORT_FILE = "onnx_export.json"
#: An execution provider: its name (``"CPUExecutionProvider"``, or the short ``"cpu"``,
#: ``"cuda"``, ``"tensorrt"``, ``"openvino"``) or ``(name, options)``.
Provider: TypeAlias = str | tuple[str, Mapping[str, Any]]
#: What a graph returns: logits (a softmax is applied, in float64) or probabilities.
GraphOutput: TypeAlias = Literal["logits", "probabilities"]

_PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}
_PROVIDER_PACKAGES = {
    "CUDAExecutionProvider": "onnxruntime-gpu",
    "TensorrtExecutionProvider": "onnxruntime-gpu, with TensorRT",
    "OpenVINOExecutionProvider": "onnxruntime-openvino",
}
_IMAGE_NDIM = 4
_FEATURES_NDIM = 2
_UINT8_SCALE = np.float32(1.0 / 255.0)
_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64}
_CHECK_SAMPLES = 8  # synthetic check inputs when no sample is given


def _require_ort() -> Any:
    return require("onnxruntime", "onnx", purpose="running ONNX stages")


def available_providers() -> list[str]:
    """The execution providers of the installed onnxruntime, in its order of preference.

    Raises:
        ImportError: if onnxruntime is not installed (``pip install 'cascademl[onnx]'``).
    """
    return list(_require_ort().get_available_providers())


def _resolve_providers(providers: Provider | Sequence[Provider] | None) -> list[Any]:
    if providers is None:
        return ["CPUExecutionProvider"]
    items = [providers] if isinstance(providers, (str, tuple)) else list(providers)
    if not items:
        msg = "providers must name at least one execution provider, got an empty list"
        raise PolicyError(msg)
    available = available_providers()
    out: list[Any] = []
    for item in items:
        name, options = (item, None) if isinstance(item, str) else (item[0], dict(item[1]))
        if not isinstance(name, str):
            msg = f"providers: expected a provider name or (name, options), got {item!r}"
            raise PolicyError(msg)
        full = _PROVIDER_ALIASES.get(name.lower(), name)
        if full not in available:
            package = _PROVIDER_PACKAGES.get(full)
            hint = f"; it comes with the {package} package" if package else ""
            msg = (
                f"providers: {name!r} ({full}) is not available in the installed "
                f"onnxruntime {_require_ort().__version__}, which has {available}{hint}"
            )
            raise DeviceUnavailableError(msg)
        out.append(full if options is None else (full, options))
    return out


def _softmax(logits: np.ndarray[Any, Any]) -> ProbaArray:
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return np.asarray(z / z.sum(axis=1, keepdims=True))


class OnnxStage:
    """A classifier stored as an ONNX graph, run by ONNX Runtime, as a cascade stage.

    Follows the [`Stage`][cascademl.Stage] protocol and has no ``fit``: a cascade adopts it
    as it is, and ``sklearn.base.clone`` returns it unchanged. Graphs written by
    [`export_cascade`][cascademl.onnx.export_cascade] take images (see the module's
    description) or, for scikit-learn stages, feature matrices; any graph with one input of
    shape ``(batch, channels, height, width)`` or ``(batch, n_features)`` and a first
    output of shape ``(batch, n_classes)`` works.

    Image inputs are numpy arrays or torch tensors of shape (n, channels, height, width) or
    (n, height, width, channels), ``uint8`` in ``[0, 255]`` (scaled to ``[0, 1]``) or float
    in ``[0, 1]``, or lists of same-size PIL images or single images, as
    [`TorchStage`][cascademl.torch_stage.TorchStage] takes them.

    Args:
        model: the graph, as the bytes of an ``.onnx`` file or its path.
        classes: array-like of shape (n_classes,), the label of each output column.
        output: ``"logits"`` (softmax applied here, in float64, as `TorchStage` does) or
            ``"probabilities"`` (the graph's rows already sum to one).
        batch_size: samples per run of the graph.
        providers: ONNX Runtime execution providers in order of preference; ``None`` is
            the CPU. ``"cuda"``, ``"tensorrt"`` and ``"openvino"`` need the onnxruntime
            build that has them (see [`available_providers`][cascademl.onnx.available_providers]).
        intra_op_num_threads: threads of one graph run; ``None`` lets ONNX Runtime choose
            (one per physical core).
        cost_per_sample: this stage's cost for one sample, for cost accounting.

    Attributes:
        classes_: ndarray of shape (n_classes,).
        input_shape_: the shape one sample must have, e.g. ``(3, 224, 224)``.
        input_kind_: ``"images"`` or ``"features"``.
        providers_: the providers the session runs on.
        model_bytes_: the graph's bytes (what `save_cascade` writes).

    Raises:
        ImportError: if onnxruntime is not installed.
        DeviceUnavailableError: for a provider the installed onnxruntime lacks.
        SerializationError: if ``model`` is not a graph ONNX Runtime can load (the message
            names the file).
        StageInterfaceError: if the graph's input or output is not as described above.

    Examples:
        >>> import numpy as np
        >>> from sklearn.linear_model import LogisticRegression
        >>> from skl2onnx import to_onnx
        >>> X = np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.9], [0.9, 0.1]])
        >>> clf = LogisticRegression().fit(X, ["a", "b", "a", "b"])
        >>> graph = to_onnx(clf, X, options={"zipmap": False}).SerializeToString()
        >>> stage = OnnxStage(graph, classes=clf.classes_, output="probabilities")
        >>> stage.predict(X).tolist()
        ['a', 'b', 'a', 'b']
    """

    def __init__(
        self,
        model: bytes | str | os.PathLike[str],
        *,
        classes: Any,
        output: GraphOutput = "logits",
        batch_size: int = 64,
        providers: Provider | Sequence[Provider] | None = None,
        intra_op_num_threads: int | None = None,
        cost_per_sample: float | None = None,
    ) -> None:
        labels = np.asarray(classes)
        if labels.ndim != 1 or labels.size == 0:
            msg = f"classes must be a non-empty 1-d array-like, got shape {labels.shape}"
            raise StageInterfaceError(msg)
        if output not in ("logits", "probabilities"):
            msg = f"output must be 'logits' or 'probabilities', got {output!r}"
            raise PolicyError(msg)
        batch_size = check_positive_int(batch_size, "batch_size")
        if intra_op_num_threads is not None:
            intra_op_num_threads = check_positive_int(intra_op_num_threads, "intra_op_num_threads")
        self.model = model
        self.classes = classes
        self.output = output
        self.batch_size = batch_size
        self.providers = providers
        self.intra_op_num_threads = intra_op_num_threads
        self.cost_per_sample = cost_per_sample
        self.classes_: LabelArray = labels
        if isinstance(model, bytes):
            self.model_bytes_ = model
            self._origin = "the ONNX graph"
        else:
            path = Path(model)
            try:
                self.model_bytes_ = path.read_bytes()
            except OSError as exc:
                msg = f"model {os.fspath(model)!r}: cannot read the ONNX file ({exc})"
                raise SerializationError(msg) from exc
            self._origin = str(path)
        self._session: Any = None
        self._start()

    # ----------------------------------------------------------------- session
    def _start(self) -> None:
        ort = _require_ort()
        providers = _resolve_providers(self.providers)
        options = ort.SessionOptions()
        if self.intra_op_num_threads is not None:
            options.intra_op_num_threads = self.intra_op_num_threads
        try:
            # From bytes, with no model path: a graph that points at external data files
            # cannot make ONNX Runtime read files beside it.
            session = ort.InferenceSession(
                self.model_bytes_, sess_options=options, providers=providers
            )
        except (RuntimeError, ValueError) as exc:  # onnxruntime's Fail/InvalidGraph errors
            msg = f"{self._origin}: ONNX Runtime cannot load this graph ({exc})"
            raise SerializationError(msg) from exc
        inputs = session.get_inputs()
        outputs = session.get_outputs()
        if len(inputs) != 1 or not outputs:
            msg = (
                f"{self._origin}: an ONNX stage's graph has one input and an output of "
                f"class scores; this one has inputs {[i.name for i in inputs]}"
            )
            raise StageInterfaceError(msg)
        graph_input = inputs[0]
        shape = tuple(graph_input.shape)
        dtype = _ORT_DTYPES.get(graph_input.type)
        if (
            dtype is None
            or len(shape) not in (_FEATURES_NDIM, _IMAGE_NDIM)
            or not all(isinstance(v, int) and v > 0 for v in shape[1:])
        ):
            msg = (
                f"{self._origin}: the graph's input {graph_input.name!r} is {graph_input.type} "
                f"of shape {list(shape)}; an ONNX stage takes float or double input of shape "
                "(batch, channels, height, width) or (batch, n_features), with fixed sizes "
                "but the batch"
            )
            raise StageInterfaceError(msg)
        self._session = session
        self._input_name = str(graph_input.name)
        # The class scores: the first output of rank 2 (skl2onnx's graphs give the labels
        # first, then the probabilities).
        scores = next((o for o in outputs if len(o.shape or ()) == _FEATURES_NDIM), outputs[0])
        self._output_name = str(scores.name)
        self._dtype = dtype
        self.input_shape_: tuple[int, ...] = tuple(int(v) for v in shape[1:])
        self.input_kind_: Literal["images", "features"] = (
            "images" if len(shape) == _IMAGE_NDIM else "features"
        )
        self.providers_: list[str] = list(session.get_providers())

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the ONNX Runtime session (rebuilt on unpickling)."""
        state = self.__dict__.copy()
        state["_session"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore the attributes and start a new session."""
        self.__dict__.update(state)
        self._start()

    def __sklearn_clone__(self) -> OnnxStage:
        """A trained graph is never refit or copied: cloning returns the stage itself."""
        return self

    def __repr__(self) -> str:
        """The class, the input shape and the classes."""
        return (
            f"OnnxStage(input={list(self.input_shape_)}, classes={self.classes_.tolist()!r:.60}, "
            f"providers={self.providers_})"
        )

    # ----------------------------------------------------------------- inference
    def predict_proba_batched(self, X: Any) -> Iterator[ProbaArray]:
        """Yield probabilities batch by batch, float64 arrays of shape (n_batch, n_classes).

        Args:
            X: images or features, as the class describes.
        """
        data = self._as_input(X)
        for start in range(0, data.shape[0], self.batch_size):
            yield self._run(data[start : start + self.batch_size])

    def predict_proba(self, X: Any) -> ProbaArray:
        """Class probabilities, float64 ndarray of shape (n_samples, n_classes).

        Args:
            X: images or features, as the class describes.

        Raises:
            StageInterfaceError: for inputs of a size, channel count or feature count the
                graph does not take (the message names the shape it takes).
            StageOutputError: if the graph's output is not (n_samples, n_classes).
        """
        parts = list(self.predict_proba_batched(X))
        if not parts:
            return np.empty((0, len(self.classes_)), dtype=np.float64)
        return np.concatenate(parts)

    def predict(self, X: Any) -> LabelArray:
        """Most probable class per sample, ndarray of shape (n_samples,)."""
        return np.asarray(self.classes_[np.argmax(self.predict_proba(X), axis=1)])

    def _run(self, batch: np.ndarray[Any, Any]) -> ProbaArray:
        if batch.dtype == np.uint8 and self.input_kind_ == "images":
            # One pass, no intermediate float copy of the (uint8) batch.
            feed = np.multiply(batch, _UINT8_SCALE, dtype=np.float32)
        else:
            feed = np.ascontiguousarray(batch, dtype=self._dtype)
        out = np.asarray(self._session.run([self._output_name], {self._input_name: feed})[0])
        n_classes = len(self.classes_)
        if out.shape != (batch.shape[0], n_classes):
            msg = (
                f"{self._origin}: the graph returned shape {out.shape}; expected "
                f"({batch.shape[0]}, {n_classes}) for its {n_classes} classes"
            )
            raise StageOutputError(msg)
        return _softmax(out) if self.output == "logits" else out.astype(np.float64)

    def _as_input(self, X: Any) -> np.ndarray[Any, Any]:
        if self.input_kind_ == "features":
            data = _to_numpy(X)
            if data.ndim != _FEATURES_NDIM or data.shape[1] != self.input_shape_[0]:
                msg = (
                    f"{self._origin}: the graph takes (n_samples, {self.input_shape_[0]}) "
                    f"features, got shape {data.shape}"
                )
                raise StageInterfaceError(msg)
            return data
        channels, height, width = self.input_shape_
        data = _image_array(X, channels)
        if data.ndim != _IMAGE_NDIM or data.shape[1:] != self.input_shape_:
            msg = (
                f"{self._origin}: the graph takes images of shape (n_samples, {channels}, "
                f"{height}, {width}) (or (n_samples, {height}, {width}, {channels})), got "
                f"shape {data.shape}. Its size is the source size given to export_cascade "
                f"(its sample); resize the images to {height}x{width} first, or export again "
                "with a sample of the size you feed"
            )
            raise StageInterfaceError(msg)
        if data.dtype.kind not in "biuf":
            msg = f"{self._origin}: images must be numbers, got dtype {data.dtype}"
            raise StageInterfaceError(msg)
        return data


def _image_array(X: Any, channels: int) -> np.ndarray[Any, Any]:
    """Images as a numpy array (n, c, h, w), read as `TorchStage` reads them."""
    data = _to_numpy(_stack_images(X, channels) if isinstance(X, (list, tuple)) else X)
    if data.ndim == _IMAGE_NDIM and data.shape[1] != channels and data.shape[3] == channels:
        data = data.transpose(0, 3, 1, 2)
    return data


def _to_numpy(X: Any) -> np.ndarray[Any, Any]:
    if type(X).__module__.startswith("torch"):  # a tensor: no torch import needed here
        return np.asarray(X.detach().cpu().numpy())
    return np.asarray(X)


def _stack_images(images: Sequence[Any], channels: int) -> np.ndarray[Any, Any]:
    if not images:
        msg = "got an empty list of images"
        raise StageInterfaceError(msg)
    pil = sys.modules.get("PIL.Image")
    if pil is not None and all(isinstance(im, pil.Image) for im in images):
        from cascademl._images import to_uint8_image  # noqa: PLC0415 - numpy only

        mode = {1: "L", 3: "RGB"}.get(channels)
        arrays = [np.asarray(im if mode is None else to_uint8_image(im, mode)) for im in images]
        arrays = [a[:, :, None] if a.ndim == _FEATURES_NDIM else a for a in arrays]
    else:
        arrays = [_to_numpy(im) for im in images]
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        msg = f"the {len(images)} images have different shapes {shapes[:5]}: resize them first"
        raise StageInterfaceError(msg)
    return np.stack(arrays)


# =========================================================================== export
@dataclass(frozen=True, slots=True)
class StageExport:
    """How one stage was exported and how close its graph came to it.

    Attributes:
        name: the stage's name in the cascade.
        source: the source stage's class (``"TorchStage"``, ``"SklearnStage"``), with
            ``"TemperatureScaledStage(...)"`` around it when wrapped.
        file: the graph's file in the folder, or ``None`` when the stage was kept as it
            is saved by `save_cascade` (``sklearn="keep"``).
        input_shape: one sample's shape the graph takes.
        max_abs_diff: the largest absolute difference between the float32 graph's
            probabilities and the source stage's (run in float32) on the check inputs.
        torch_precision: the source `TorchStage`'s ``precision`` (the graph is float32
            whatever it is), or ``None``.
        quantized: ``"dynamic"``, ``"static"`` or ``None``.
        int8_label_agreement: for a quantized stage, the share of the check inputs its
            int8 graph labels as its float32 graph does (the stage alone, every input,
            whatever the routing): which stage int8 changes, to keep it float32 with
            ``keep_float32``.
        int8_max_abs_diff: the largest absolute difference of those two graphs'
            probabilities on the check inputs.
    """

    name: str
    source: str
    file: str | None
    input_shape: tuple[int, ...]
    max_abs_diff: float
    torch_precision: str | None = None
    quantized: str | None = None
    int8_label_agreement: float | None = None
    int8_max_abs_diff: float | None = None


@dataclass(frozen=True, slots=True)
class QuantizationReport:
    """What int8 quantization changed, measured on the check inputs at export.

    Attributes:
        mode: ``"dynamic"`` or ``"static"``.
        n_samples: check inputs routed by both cascades.
        n_calibration: samples static quantization was calibrated on (0 for dynamic).
        label_agreement: share of the samples whose label the int8 cascade gives as the
            float32 one does.
        exit_agreement: share of the samples that leave at the same stage.
        max_abs_proba_diff: largest absolute difference of the cascades' probabilities.
        accuracy_float32: accuracy of the float32 export, when labels were given.
        accuracy_int8: accuracy of the int8 export, when labels were given.
    """

    mode: str
    n_samples: int
    n_calibration: int
    label_agreement: float
    exit_agreement: float
    max_abs_proba_diff: float
    accuracy_float32: float | None
    accuracy_int8: float | None

    @property
    def accuracy_change(self) -> float | None:
        """``accuracy_int8 - accuracy_float32`` in percentage points (``None`` without labels)."""
        if self.accuracy_float32 is None or self.accuracy_int8 is None:
            return None
        return 100.0 * (self.accuracy_int8 - self.accuracy_float32)


@dataclass(frozen=True, slots=True)
class ExportReport:
    """What [`export_cascade`][cascademl.onnx.export_cascade] wrote and measured.

    The same values are in the folder's ``onnx_export.json``.

    Attributes:
        folder: the exported folder.
        opset: the ONNX opset of the graphs.
        tolerance: the largest ``max_abs_diff`` allowed for a float32 graph.
        n_check: the check inputs the graphs and the cascades were compared on.
        synthetic_check: whether those were random images (no ``sample`` given).
        stages: one [`StageExport`][cascademl.onnx.StageExport] per stage.
        label_agreement: share of the check inputs the float32 export labels as the
            source cascade does (both routed by the cascade's engine).
        exit_agreement: share that leave at the same stage.
        max_abs_proba_diff: largest absolute difference of the two cascades' probabilities.
        quantization: what int8 changed, or ``None``.
        versions: the versions of the packages that wrote and checked the graphs.
    """

    folder: Path
    opset: int
    tolerance: float
    n_check: int
    synthetic_check: bool
    stages: tuple[StageExport, ...]
    label_agreement: float
    exit_agreement: float
    max_abs_proba_diff: float
    quantization: QuantizationReport | None
    versions: Mapping[str, str]

    def to_dict(self, *, folder: bool = True) -> dict[str, Any]:
        """The report as JSON-able values (``onnx_export.json`` holds it without ``folder``)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["folder"] = str(self.folder)
        if not folder:
            del out["folder"]
        out["stages"] = [
            {**dataclasses.asdict(s), "input_shape": list(s.input_shape)} for s in self.stages
        ]
        if self.quantization is not None:
            q = self.quantization
            out["quantization"] = {**dataclasses.asdict(q), "accuracy_change": q.accuracy_change}
        out["versions"] = dict(self.versions)
        return out


def export_cascade(
    cascade: CascadeClassifier,
    folder: str | os.PathLike[str],
    *,
    sample: Any = None,
    sample_labels: Any = None,
    opset: int | None = None,
    quantize: Literal["dynamic", "static"] | None = None,
    calibration: Any = None,
    keep_float32: Collection[str] = (),
    sklearn: Literal["convert", "keep"] = "convert",
    tolerance: float = DEFAULT_TOLERANCE,
    overwrite: bool = False,
) -> ExportReport:
    """Export a fitted cascade to a folder of ONNX graphs that `load_cascade` opens.

    Each `TorchStage` is traced on the CPU in float32 (``torch.onnx.export`` with the
    TorchScript exporter) together with its preprocessing; each `SklearnStage` is converted
    by skl2onnx; a `TemperatureScaledStage` keeps its temperature around its exported
    stage. Every graph is checked against its source stage on the check inputs (``sample``,
    or a few random images of the stages' input size without one): a float32 graph whose
    probabilities differ by more than ``tolerance`` stops the export. Both cascades are then
    routed on the check inputs by the library's engine and their agreement recorded. With
    ``quantize``, the torch stages' graphs are quantized to int8 by
    ``onnxruntime.quantization``, and the int8 cascade is compared with the float32 one on
    the check inputs (accuracy too when ``sample_labels`` are given): the change is in the
    returned report and in the folder's ``onnx_export.json``, never hidden.

    Args:
        cascade: a fitted cascade of `TorchStage` and `SklearnStage` stages (or either in
            a `TemperatureScaledStage`).
        folder: where to write; written as `save_cascade` writes (atomically).
        sample: inputs of the size the exported cascade will be fed (e.g. a few images of
            the source size, ``(n, c, h, w)`` or ``(n, h, w, c)``); the image graphs take
            this size. ``None``: random images of the torch stages' input size (they
            must agree), or random features for scikit-learn stages.
        sample_labels: true labels of ``sample``, to report accuracy with ``quantize``.
        opset: ONNX opset of the graphs (at least 18, the default).
        quantize: ``"dynamic"`` (weights int8, activations quantized at run time) or
            ``"static"`` (QDQ: per-channel int8 weights, uint8 activations calibrated on
            ``calibration``; the in-graph preprocessing stays float32), or ``None``.
        calibration: inputs for static quantization's calibration (required with
            ``quantize="static"``); keep them apart from ``sample`` to measure honestly.
        keep_float32: names of torch stages whose graphs stay float32 with ``quantize``
            (a network that int8 changes too much, or speeds up too little); their
            `StageExport.quantized` is ``None``.
        sklearn: ``"convert"`` scikit-learn stages with skl2onnx (an estimator it cannot
            convert raises an error naming the stage) or ``"keep"`` them in the skops
            file `save_cascade` writes (loading then needs skops).
        tolerance: largest absolute probability difference allowed for a float32 graph.
        overwrite: replace an existing saved cascade at ``folder``.

    Returns:
        The [`ExportReport`][cascademl.onnx.ExportReport].

    Raises:
        NotFittedError: if the cascade is not fitted.
        PolicyError: for an invalid ``opset``, ``quantize``, ``sklearn`` or
            ``tolerance``, ``quantize="static"`` without ``calibration``, or
            ``keep_float32`` naming no stage of the cascade or given without ``quantize``.
        SerializationError: naming the stage, when it cannot be exported or its graph is
            not within ``tolerance`` of it.
        ImportError: if torch, onnx, onnxruntime or skl2onnx (for scikit-learn stages)
            is missing: ``pip install 'cascademl[onnx]'``.
    """
    from cascademl import _onnx_export  # noqa: PLC0415 - imports torch and onnx

    if not hasattr(cascade, "stages_"):
        msg = f"this {type(cascade).__name__} is not fitted yet; call fit before export_cascade"
        raise NotFittedError(msg)
    opset = _check_options(opset, quantize, calibration, sklearn, tolerance)
    kept = _check_keep_float32(keep_float32, quantize, [str(n) for n in cascade.named_stages_])
    return _onnx_export.export(
        cascade,
        Path(folder),
        _onnx_export.Options(
            opset=opset,
            quantize=quantize,
            sklearn=sklearn,
            tolerance=float(tolerance),
            overwrite=overwrite,
            keep_float32=kept,
        ),
        sample=sample,
        sample_labels=sample_labels,
        calibration=calibration,
    )


def _check_options(
    opset: int | None,
    quantize: object,
    calibration: object,
    sklearn: object,
    tolerance: float,
) -> int:
    if opset is None:
        opset = DEFAULT_OPSET
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < DEFAULT_OPSET:
        msg = (
            f"opset must be an integer >= {DEFAULT_OPSET} (the oldest the export is checked "
            f"with), got {opset!r}"
        )
        raise PolicyError(msg)
    if quantize not in (None, "dynamic", "static"):
        msg = f"quantize must be None, 'dynamic' or 'static', got {quantize!r}"
        raise PolicyError(msg)
    if quantize == "static" and calibration is None:
        msg = (
            "quantize='static' needs calibration= samples (inputs as the cascade takes "
            "them, apart from the sample the change is measured on)"
        )
        raise PolicyError(msg)
    if sklearn not in ("convert", "keep"):
        msg = f"sklearn must be 'convert' or 'keep', got {sklearn!r}"
        raise PolicyError(msg)
    if not (isinstance(tolerance, (int, float)) and 0 < tolerance < 1):
        msg = f"tolerance must be a number in (0, 1), got {tolerance!r}"
        raise PolicyError(msg)
    return opset


def _check_keep_float32(names: object, quantize: object, stages: list[str]) -> frozenset[str]:
    if isinstance(names, str) or not isinstance(names, Collection):
        msg = f"keep_float32 must be a collection of stage names, got {names!r}"
        raise PolicyError(msg)
    kept = frozenset(str(name) for name in names)
    if kept and quantize is None:
        msg = f"keep_float32={sorted(kept)} is given without quantize: nothing is quantized"
        raise PolicyError(msg)
    unknown = sorted(kept - set(stages))
    if unknown:
        msg = f"keep_float32 names no stage of the cascade: {unknown}; its stages are {stages}"
        raise PolicyError(msg)
    return kept


def _spec(stage: OnnxStage) -> dict[str, Any]:
    """The ``cascade.json`` entry of an ONNX stage (its graph's file is added by the caller)."""
    from cascademl._io_format import _encode_classes  # noqa: PLC0415 - avoids a cycle

    return {
        "kind": "onnx",
        "classes": _encode_classes(np.asarray(stage.classes_)),
        "output": stage.output,
        "batch_size": stage.batch_size,
        "cost_per_sample": stage.cost_per_sample,
    }


def _report_bytes(report: dict[str, Any]) -> bytes:
    return (json.dumps(report, indent=2, allow_nan=False) + "\n").encode("utf-8")
