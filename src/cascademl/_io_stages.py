"""Stages to and from their saved form: skops or pickle files, safetensors, configs.

Saving turns each stage into a JSON spec (plus the bytes of its file, or its tensors);
loading rebuilds it from a spec already checked by `cascademl._io_format` and from files
already read and verified.
"""

from __future__ import annotations

import dataclasses
import pickle
import sys
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cascademl._io_format import TENSORS_FILE, SklearnFormat, _decode_classes
from cascademl._json_floats import _decode_float
from cascademl._optional import require
from cascademl.calibration import TemperatureScaledStage
from cascademl.exceptions import SerializationError, StageInterfaceError
from cascademl.stages import SklearnStage

if TYPE_CHECKING:  # torch is imported only for torch stages (see _torch_stage_class)
    import torch
    from torch import nn

#: Errors unpickling a corrupt or incompatible file can raise (no bare ``except``).
_UNPICKLE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    ImportError,
    KeyError,
    IndexError,
)
#: Errors serializing an estimator that cannot be stored.
_DUMP_ERRORS = (
    pickle.PicklingError,
    TypeError,
    AttributeError,
    ValueError,
    NotImplementedError,
    RecursionError,
)
#: Errors reading a corrupt or incompatible skops file.
_SKOPS_ERRORS = (
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    ImportError,
    OSError,
    zipfile.BadZipFile,
)


@dataclasses.dataclass(frozen=True)
class _LoadOptions:
    allow_pickle: bool
    trusted: tuple[str, ...]
    modules: Mapping[str, nn.Module]
    device: str | torch.device | None
    providers: Sequence[Any] | str | None = None
    intra_op_num_threads: int | None = None


def _torch_stage_class() -> type[Any]:
    from cascademl.torch_stage import TorchStage  # noqa: PLC0415 - imported on use

    return TorchStage


def _onnx_stage_class() -> type[Any]:
    from cascademl.onnx import OnnxStage  # noqa: PLC0415 - numpy only until a stage runs

    return OnnxStage


def _require_safetensors() -> Any:
    return require("safetensors.torch", "io", purpose="saving or loading torch stages")


def _require_skops() -> Any:
    return require(
        "skops.io",
        "io",
        purpose=(
            "storing scikit-learn stages with skops (or save with sklearn_format='pickle', "
            "which loading refuses without allow_pickle)"
        ),
    )


def _stage_spec(
    stage: Any,
    *,
    index: int,
    name: str,
    tensors: dict[str, torch.Tensor],
    blobs: dict[str, bytes],
    sklearn_format: SklearnFormat,
) -> dict[str, Any]:
    if isinstance(stage, TemperatureScaledStage):
        inner = _stage_spec(
            stage.stage,
            index=index,
            name=name,
            tensors=tensors,
            blobs=blobs,
            sklearn_format=sklearn_format,
        )
        return {"kind": "temperature", "temperature": stage.temperature, "stage": inner}
    if isinstance(stage, SklearnStage):
        estimator = stage.estimator_ if hasattr(stage, "estimator_") else stage.estimator
        filename = f"stage_{index}.{sklearn_format if sklearn_format == 'skops' else 'pkl'}"
        blobs[filename] = _dump_estimator(estimator, name, sklearn_format)
        return {
            "kind": "sklearn",
            "file": filename,
            "serializer": sklearn_format,
            "estimator": f"{type(estimator).__module__}.{type(estimator).__qualname__}",
            "cost_per_sample": stage.cost_per_sample,
        }
    if isinstance(stage, _onnx_stage_class()):
        from cascademl.onnx import _spec  # noqa: PLC0415

        filename = f"stage_{index}.onnx"
        blobs[filename] = bytes(stage.model_bytes_)
        return {**_spec(stage), "file": filename}
    # Without torch imported, the stage cannot be a TorchStage: do not import it to check.
    torch_stage = _torch_stage_class() if "torch" in sys.modules else None
    if torch_stage is not None and isinstance(stage, torch_stage):
        prefix = f"stage_{index}."
        for key, value in stage.state_dict().items():
            tensors[prefix + key] = value.detach().to("cpu").contiguous().clone()
        return {"kind": "torch", "config": stage.to_config(), "tensor_prefix": prefix}
    msg = (
        f"stage {name!r} ({type(stage).__name__}) cannot be saved: supported stages are "
        "scikit-learn estimators (SklearnStage), TorchStage, and TemperatureScaledStage "
        "around either"
    )
    raise SerializationError(msg)


def _dump_estimator(estimator: Any, name: str, sklearn_format: SklearnFormat) -> bytes:
    what = f"stage {name!r} ({type(estimator).__name__})"
    if sklearn_format == "skops":
        sio = _require_skops()
        try:
            return bytes(sio.dumps(estimator))
        except _DUMP_ERRORS as exc:
            msg = (
                f"{what} cannot be stored with skops ({type(exc).__name__}: {exc}); "
                "save_cascade(..., sklearn_format='pickle') stores it with pickle"
            )
            raise SerializationError(msg) from exc
    try:
        return pickle.dumps(estimator, protocol=pickle.HIGHEST_PROTOCOL)
    except _DUMP_ERRORS as exc:
        msg = f"{what} cannot be pickled ({type(exc).__name__}: {exc})"
        raise SerializationError(msg) from exc


def _load_tensors(folder: Path, blobs: Mapping[str, bytes]) -> dict[str, torch.Tensor]:
    if TENSORS_FILE not in blobs:
        return {}
    st = _require_safetensors()
    import safetensors  # noqa: PLC0415 - optional dependency, checked above

    try:
        return dict(st.load(blobs[TENSORS_FILE]))
    except (safetensors.SafetensorError, OSError, ValueError, RuntimeError) as exc:
        msg = f"{folder / TENSORS_FILE}: unreadable safetensors file ({exc})"
        raise SerializationError(msg) from exc


class _StageBuilder:
    """Rebuilds stages from checked specs and the files already read and verified."""

    def __init__(
        self,
        folder: Path,
        blobs: Mapping[str, bytes],
        tensors: Mapping[str, torch.Tensor],
        options: _LoadOptions,
    ) -> None:
        self.folder = folder
        self.blobs = blobs
        self.tensors = tensors
        self.options = options

    def build(self, spec: Mapping[str, Any], name: str) -> Any:
        kind = spec["kind"]
        if kind == "temperature":
            inner = self.build(spec["stage"], name)
            return TemperatureScaledStage(inner, _decode_float(spec["temperature"], "temperature"))
        if kind == "sklearn":
            return SklearnStage(
                self._estimator(spec, name), cost_per_sample=spec["cost_per_sample"]
            )
        if kind == "onnx":
            return self._onnx(spec, name)
        return self._torch(spec, name)

    def _onnx(self, spec: Mapping[str, Any], name: str) -> Any:
        filename = str(spec["file"])
        path = self.folder / filename
        try:
            stage = _onnx_stage_class()(
                self.blobs[filename],
                classes=_decode_classes(spec["classes"], f"{path}: stage {name!r}"),
                output=spec["output"],
                batch_size=spec["batch_size"],
                providers=self.options.providers,
                intra_op_num_threads=self.options.intra_op_num_threads,
                cost_per_sample=spec["cost_per_sample"],
            )
        except (SerializationError, StageInterfaceError) as exc:
            msg = f"{path}: stage {name!r}: {exc}"
            raise SerializationError(msg) from exc
        stage._origin = str(path)  # noqa: SLF001 - errors name the file
        return stage

    def _estimator(self, spec: Mapping[str, Any], name: str) -> Any:
        filename = str(spec["file"])
        path = self.folder / filename
        data = self.blobs[filename]
        if spec.get("serializer", "pickle") == "skops":
            return _load_skops(path, data, name, self.options.trusted)
        if not self.options.allow_pickle:
            msg = (
                f"{path}: stage {name!r} is a pickled scikit-learn estimator "
                f"({spec.get('estimator')}); unpickling can run arbitrary code, so it is "
                "refused by default. Pass allow_pickle=True to load_cascade only if you trust "
                "this file."
            )
            raise SerializationError(msg)
        try:
            return pickle.loads(data)  # noqa: S301 - opted in with allow_pickle=True
        except _UNPICKLE_ERRORS as exc:
            msg = f"{path}: cannot unpickle stage {name!r} ({type(exc).__name__}: {exc})"
            raise SerializationError(msg) from exc

    def _torch(self, spec: Mapping[str, Any], name: str) -> Any:
        prefix = str(spec["tensor_prefix"])
        state = {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}
        where = self.folder / TENSORS_FILE
        try:
            stage = _torch_stage_class().from_config(
                spec["config"],
                state,
                module=self.options.modules.get(name),
                device=self.options.device,
            )
        except SerializationError as exc:
            msg = f"{where}: stage {name!r}: {exc}"
            raise SerializationError(msg) from exc
        expected = stage.module_.state_dict()
        for key, saved in state.items():
            want = expected[key].dtype
            if (saved.dtype.is_floating_point, saved.dtype.is_complex) != (
                want.is_floating_point,
                want.is_complex,
            ) or (not want.is_floating_point and saved.dtype != want):
                msg = (
                    f"{where}: tensor {prefix + key!r} is {saved.dtype} but stage {name!r}'s "
                    f"module holds {want} there; refusing to cast it (the file was not "
                    "written by save_cascade, or was changed)"
                )
                raise SerializationError(msg)
        return stage


def _load_skops(path: Path, data: bytes, name: str, trusted: Sequence[str]) -> Any:
    sio = _require_skops()
    try:
        untrusted = [t for t in sio.get_untrusted_types(data=data) if t not in trusted]
    except _SKOPS_ERRORS as exc:
        msg = f"{path}: stage {name!r}: not a readable skops file ({type(exc).__name__}: {exc})"
        raise SerializationError(msg) from exc
    if untrusted:
        msg = (
            f"{path}: stage {name!r} holds types that skops does not trust by default: "
            f"{untrusted}. If you trust this file, pass them to load_cascade: "
            f"trusted={untrusted!r}"
        )
        raise SerializationError(msg)
    try:
        return sio.loads(data, trusted=list(trusted) or None)
    except _SKOPS_ERRORS as exc:
        msg = f"{path}: cannot load stage {name!r} ({type(exc).__name__}: {exc})"
        raise SerializationError(msg) from exc
