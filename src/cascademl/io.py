"""Save and load a fitted cascade: a folder with a JSON config and safetensors weights.

Layout of a saved cascade (format version 1)::

    my_cascade/
    ├── cascade.json          policy, thresholds, combiner, classes, stage specs, checksums
    ├── tensors.safetensors   torch stages' weights (only when there are torch stages)
    └── stage_<i>.pkl         scikit-learn stages (pickled: see the warning below)

``cascade.json`` holds ``"format": "cascademl.CascadeClassifier"`` and ``"format_version"``;
class labels keep their numpy dtype (strings, ints, floats or bools); temperatures of
[`TemperatureScaledStage`][cascademl.calibration.TemperatureScaledStage] stages and the
SHA-256 of every other file are in it too. Torch stages are stored with
``TorchStage.to_config()`` and their ``state_dict`` in safetensors, which holds only
tensors: loading them runs no code.

!!! warning "scikit-learn stages are pickled"
    A scikit-learn estimator can only be stored with pickle, and
    unpickling a file can run arbitrary code. `load_cascade` therefore refuses such a
    folder unless ``allow_pickle=True``: pass it only for files you trust. The checksums in
    ``cascade.json`` detect corruption, not tampering (whoever can edit the pickle can edit
    the JSON too). Everything else, torch weights included, loads without unpickling.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cascademl.calibration import TemperatureScaledStage
from cascademl.cascade import CascadeClassifier
from cascademl.exceptions import CascadeMLError, NotFittedError, SerializationError
from cascademl.policies import ConfidencePolicy
from cascademl.stages import SklearnStage

__all__ = [
    "CONFIG_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "TENSORS_FILE",
    "load_cascade",
    "save_cascade",
]

#: The ``"format"`` key of ``cascade.json``.
FORMAT = "cascademl.CascadeClassifier"
#: The ``"format_version"`` this version of cascademl writes and reads.
FORMAT_VERSION = 1
#: The configuration file in a saved cascade's folder.
CONFIG_FILE = "cascade.json"
#: The weights file of torch stages.
TENSORS_FILE = "tensors.safetensors"

_LABEL_KINDS = "biufUO"  # bool, int, uint, float, str, object (of JSON-able values)
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


# --------------------------------------------------------------------------- encoding
def _encode_float(value: float) -> float | str:
    number = float(value)
    return number if math.isfinite(number) else str(number)  # "inf", "-inf", "nan"


def _decode_float(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        msg = f"{where} must be a number, got {value!r}"
        raise SerializationError(msg)
    try:
        return float(value)
    except ValueError as exc:
        msg = f"{where} must be a number, got {value!r}"
        raise SerializationError(msg) from exc


def _encode_classes(classes: np.ndarray[Any, Any]) -> dict[str, Any]:
    if classes.dtype.kind not in _LABEL_KINDS:
        msg = f"class labels of dtype {classes.dtype} cannot be saved as JSON"
        raise SerializationError(msg)
    values = classes.tolist()
    try:
        json.dumps(values, allow_nan=False)
    except (TypeError, ValueError) as exc:
        msg = f"class labels {values[:5]!r}... are not JSON-able: {exc}"
        raise SerializationError(msg) from exc
    return {"dtype": classes.dtype.str, "values": values}


def _decode_classes(spec: Mapping[str, Any], where: str) -> np.ndarray[Any, Any]:
    try:
        dtype = np.dtype(spec["dtype"])
        if dtype.kind not in _LABEL_KINDS:
            msg = f"{where}: class dtype {dtype} is not supported"
            raise SerializationError(msg)
        if dtype.kind == "O":
            out = np.empty(len(spec["values"]), dtype=object)
            out[:] = list(spec["values"])
            return out
        return np.asarray(spec["values"], dtype=dtype)
    except (TypeError, ValueError, KeyError) as exc:
        msg = f"{where}: invalid classes entry {spec!r} ({exc})"
        raise SerializationError(msg) from exc


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _torch_stage_class() -> type[Any]:
    from cascademl.torch_stage import TorchStage  # noqa: PLC0415 - imported on use

    return TorchStage


def _require_safetensors() -> Any:
    if importlib.util.find_spec("safetensors") is None:  # pragma: no cover - in dev env
        msg = "saving or loading torch stages needs safetensors: pip install 'cascademl[io]'"
        raise ImportError(msg)
    import safetensors.torch  # noqa: PLC0415 - optional dependency

    return safetensors.torch


# --------------------------------------------------------------------------- saving
def save_cascade(
    cascade: CascadeClassifier, path: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Save a fitted cascade to a folder.

    Args:
        cascade: a fitted [`CascadeClassifier`][cascademl.CascadeClassifier] whose stages
            are scikit-learn stages, `TorchStage` stages, or either wrapped in a
            `TemperatureScaledStage`.
        path: the folder; created if needed.
        overwrite: replace the files of an existing saved cascade in ``path``.

    Returns:
        The folder's path.

    Raises:
        NotFittedError: if the cascade is not fitted.
        FileExistsError: if ``path`` already holds a saved cascade and ``overwrite`` is False.
        SerializationError: if a stage or a parameter cannot be saved.

    Examples:
        >>> import tempfile
        >>> from sklearn.datasets import load_iris
        >>> from sklearn.naive_bayes import GaussianNB
        >>> X, y = load_iris(return_X_y=True)
        >>> cascade = CascadeClassifier([("nb", GaussianNB())]).fit(X, y)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = save_cascade(cascade, folder, overwrite=True)
        ...     loaded = load_cascade(folder, allow_pickle=True)
        >>> bool((loaded.predict(X) == cascade.predict(X)).all())
        True
    """
    if not hasattr(cascade, "stages_"):
        msg = f"this {type(cascade).__name__} is not fitted yet; call fit before save_cascade"
        raise NotFittedError(msg)
    folder = Path(path)
    config_path = folder / CONFIG_FILE
    if config_path.exists() and not overwrite:
        msg = f"{config_path} exists; pass overwrite=True to replace it"
        raise FileExistsError(msg)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    files: dict[str, str] = {}
    stages = []
    for i, (name, stage) in enumerate(cascade.named_stages_.items()):
        spec = _stage_spec(stage, index=i, name=name, folder=folder, tensors=tensors, files=files)
        stages.append({"name": name, "spec": spec})
    if tensors:
        tensors_path = folder / TENSORS_FILE
        _require_safetensors().save_file(tensors, str(tensors_path))
        files[TENSORS_FILE] = _sha256(tensors_path)
    policy = cascade.policy_
    thresholds = policy.thresholds
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "classes": _encode_classes(np.asarray(cascade.classes_)),
        "n_features_in": int(cascade.n_features_in_)
        if hasattr(cascade, "n_features_in_")
        else None,
        "feature_names_in": np.asarray(cascade.feature_names_in_).tolist()
        if hasattr(cascade, "feature_names_in_")
        else None,
        "params": {
            "policy": {
                "measure": policy.measure,
                "thresholds": [_encode_float(t) for t in thresholds]
                if isinstance(thresholds, tuple)
                else _encode_float(thresholds),
            },
            "combine": cascade.combine,
            "escalation_weight": _json_weights(cascade.escalation_weight),
            "batch_size": cascade.batch_size,
            "reject_threshold": getattr(cascade, "reject_threshold", None),
        },
        "stages": stages,
        "files": files,
    }
    try:
        text = json.dumps(config, indent=2, allow_nan=False)
    except (TypeError, ValueError) as exc:
        msg = f"the cascade's configuration is not JSON-able: {exc}"
        raise SerializationError(msg) from exc
    config_path.write_text(text + "\n", encoding="utf-8")
    return folder


def _json_weights(value: float | Sequence[float]) -> float | list[float]:
    if isinstance(value, Sequence):
        return [float(v) for v in value]
    return float(value)


def _stage_spec(
    stage: Any,
    *,
    index: int,
    name: str,
    folder: Path,
    tensors: dict[str, torch.Tensor],
    files: dict[str, str],
) -> dict[str, Any]:
    if isinstance(stage, TemperatureScaledStage):
        inner = _stage_spec(
            stage.stage, index=index, name=name, folder=folder, tensors=tensors, files=files
        )
        return {"kind": "temperature", "temperature": stage.temperature, "stage": inner}
    if isinstance(stage, SklearnStage):
        estimator = stage.estimator_ if hasattr(stage, "estimator_") else stage.estimator
        filename = f"stage_{index}.pkl"
        with (folder / filename).open("wb") as handle:
            pickle.dump(estimator, handle, protocol=pickle.HIGHEST_PROTOCOL)
        files[filename] = _sha256(folder / filename)
        return {
            "kind": "sklearn",
            "file": filename,
            "estimator": f"{type(estimator).__module__}.{type(estimator).__qualname__}",
            "cost_per_sample": stage.cost_per_sample,
        }
    torch_stage = _torch_stage_class()
    if isinstance(stage, torch_stage):
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


# --------------------------------------------------------------------------- loading
def load_cascade(
    path: str | os.PathLike[str],
    *,
    allow_pickle: bool = False,
    modules: Mapping[str, nn.Module] | None = None,
    device: str | torch.device | None = None,
) -> CascadeClassifier:
    """Load a cascade saved by [`save_cascade`][cascademl.io.save_cascade], ready to predict.

    Args:
        path: the folder.
        allow_pickle: allow unpickling scikit-learn stages. Unpickling can run arbitrary
            code: only set it for files you trust. Without it, a folder with scikit-learn
            stages raises `SerializationError`.
        modules: for torch stages that were not built from timm, a freshly built module
            per stage name (the weights are then loaded into it).
        device: overrides the saved device of torch stages (e.g. ``"cpu"``).

    Returns:
        A fitted cascade that predicts exactly as the saved one did.

    Raises:
        SerializationError: naming the file, when a file is missing, corrupt (bad JSON,
            checksum mismatch, unreadable weights), of another format or format version,
            or holds pickled stages without ``allow_pickle=True``.
    """
    folder = Path(path)
    config_path = folder / CONFIG_FILE
    config = _read_config(config_path)
    where = str(config_path)
    try:
        classes = _decode_classes(config["classes"], where)
        params = config["params"]
        files = dict(config["files"])
        stage_entries = list(config["stages"])
        n_features = config.get("n_features_in")
        feature_names = config.get("feature_names_in")
        policy_spec = params["policy"]
        raw_thresholds = policy_spec["thresholds"]
        thresholds: float | tuple[float, ...] = (
            tuple(_decode_float(t, f"{where}: thresholds") for t in raw_thresholds)
            if isinstance(raw_thresholds, list)
            else _decode_float(raw_thresholds, f"{where}: thresholds")
        )
        policy = ConfidencePolicy(policy_spec["measure"], thresholds)
        for filename, digest in files.items():
            _check_file(folder / filename, digest)
        tensors = _load_tensors(folder, files)
        stages = [
            (
                str(entry["name"]),
                _build_stage(
                    entry["spec"],
                    str(entry["name"]),
                    folder,
                    tensors,
                    allow_pickle=allow_pickle,
                    modules=modules or {},
                    device=device,
                ),
            )
            for entry in stage_entries
        ]
        cascade = CascadeClassifier(
            stages,
            policy=policy,
            combine=params["combine"],
            escalation_weight=params["escalation_weight"],
            batch_size=params["batch_size"],
            reject_threshold=params.get("reject_threshold"),
        )
    except KeyError as exc:
        msg = f"{where}: missing key {exc.args[0]!r}"
        raise SerializationError(msg) from exc
    except SerializationError:
        raise
    except (CascadeMLError, TypeError, ValueError) as exc:
        msg = f"{where}: invalid configuration: {exc}"
        raise SerializationError(msg) from exc
    return _adopt(cascade, classes, n_features, feature_names, where)


def _read_config(config_path: Path) -> dict[str, Any]:
    if not config_path.is_file():
        msg = f"{config_path}: not found; is {config_path.parent} a folder saved by save_cascade?"
        raise SerializationError(msg)
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        msg = f"{config_path}: not valid JSON ({exc})"
        raise SerializationError(msg) from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        msg = f"{config_path}: not a saved cascade (format {found!r}, expected {FORMAT!r})"
        raise SerializationError(msg)
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        msg = (
            f"{config_path}: format_version {version!r} is not supported; this version of "
            f"cascademl reads format_version {FORMAT_VERSION}"
        )
        raise SerializationError(msg)
    return config


def _check_file(path: Path, digest: object) -> None:
    if not path.is_file():
        msg = f"{path}: missing (listed in {CONFIG_FILE})"
        raise SerializationError(msg)
    if _sha256(path) != digest:
        msg = f"{path}: checksum mismatch, the file is corrupt or was changed after saving"
        raise SerializationError(msg)


def _load_tensors(folder: Path, files: Mapping[str, str]) -> dict[str, torch.Tensor]:
    if TENSORS_FILE not in files:
        return {}
    path = folder / TENSORS_FILE
    st = _require_safetensors()
    import safetensors  # noqa: PLC0415 - optional dependency, checked above

    try:
        return dict(st.load_file(str(path), device="cpu"))
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        msg = f"{path}: unreadable safetensors file ({exc})"
        raise SerializationError(msg) from exc


def _build_stage(
    spec: Mapping[str, Any],
    name: str,
    folder: Path,
    tensors: Mapping[str, torch.Tensor],
    *,
    allow_pickle: bool,
    modules: Mapping[str, nn.Module],
    device: str | torch.device | None,
) -> Any:
    kind = spec["kind"]
    if kind == "temperature":
        inner = _build_stage(
            spec["stage"],
            name,
            folder,
            tensors,
            allow_pickle=allow_pickle,
            modules=modules,
            device=device,
        )
        return TemperatureScaledStage(inner, _decode_float(spec["temperature"], "temperature"))
    if kind == "sklearn":
        return SklearnStage(
            _unpickle(folder / str(spec["file"]), name, spec, allow_pickle=allow_pickle),
            cost_per_sample=spec["cost_per_sample"],
        )
    if kind == "torch":
        prefix = str(spec["tensor_prefix"])
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            return _torch_stage_class().from_config(
                spec["config"], state, module=modules.get(name), device=device
            )
        except SerializationError as exc:
            msg = f"{folder / TENSORS_FILE}: stage {name!r}: {exc}"
            raise SerializationError(msg) from exc
    msg = f"stage {name!r} has an unknown kind {kind!r}"
    raise SerializationError(msg)


def _unpickle(path: Path, name: str, spec: Mapping[str, Any], *, allow_pickle: bool) -> Any:
    if not allow_pickle:
        msg = (
            f"{path}: stage {name!r} is a pickled scikit-learn estimator "
            f"({spec.get('estimator')}); unpickling can run arbitrary code, so it is "
            "refused by default. Pass allow_pickle=True to load_cascade only if you trust "
            "this file."
        )
        raise SerializationError(msg)
    try:
        with path.open("rb") as handle:
            return pickle.load(handle)  # noqa: S301 - opted in with allow_pickle=True
    except _UNPICKLE_ERRORS as exc:
        msg = f"{path}: cannot unpickle stage {name!r} ({type(exc).__name__}: {exc})"
        raise SerializationError(msg) from exc


def _adopt(
    cascade: CascadeClassifier,
    classes: np.ndarray[Any, Any],
    n_features: int | None,
    feature_names: list[str] | None,
    where: str,
) -> CascadeClassifier:
    """Build the fitted cascade from its trained stages (nothing is retrained, no data)."""
    params = cascade.get_params(deep=False)
    stages = params.pop("stages")
    try:
        adopted = type(cascade).from_fitted(stages, classes=classes, **params)
    except CascadeMLError as exc:
        msg = f"{where}: the saved stages do not form a valid cascade: {exc}"
        raise SerializationError(msg) from exc
    for name in ("n_features_in_", "feature_names_in_"):
        if hasattr(adopted, name):
            delattr(adopted, name)
    if n_features is not None:
        adopted.n_features_in_ = int(n_features)
    if feature_names is not None:
        adopted.feature_names_in_ = np.asarray(feature_names, dtype=object)
    return adopted
