"""The ``cascade.json`` side of a saved cascade: names, encodings and checks.

Constants of the format, the JSON encodings of floats, class labels and the policy, and
every check `load_cascade` makes on ``cascade.json`` before any other file is read (file
names, checksums, stage specs, torch architectures, feature counts). Nothing here reads or
writes a file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from cascademl._json_floats import _decode_float
from cascademl.abstention import ABSTAIN
from cascademl.calibration import TemperatureScaledStage
from cascademl.exceptions import SerializationError
from cascademl.policies import ConfidencePolicy

#: The ``"format"`` key of ``cascade.json``.
FORMAT = "cascademl.CascadeClassifier"
#: The ``"format_version"`` this version of cascademl writes (it reads 1 and 2).
FORMAT_VERSION = 2
#: The configuration file in a saved cascade's folder.
CONFIG_FILE = "cascade.json"
#: The weights file of torch stages.
TENSORS_FILE = "tensors.safetensors"

#: How scikit-learn stages are stored: skops (no code runs on loading) or pickle.
SklearnFormat = Literal["skops", "pickle"]

_READ_VERSIONS = (1, 2)
_CONFIG_LIMIT = 64 << 20  # bytes; a cascade.json is a few kilobytes
_MAX_WRAPPERS = 8  # temperature stages around one stage
_MAX_FEATURES = 2**31 - 1
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TIMM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
#: timm keywords that point at weights to read or download.
_FORBIDDEN_KEY = re.compile(r"pretrain|checkpoint|file|path|url|hub|cache|download", re.IGNORECASE)
_FORBIDDEN_VALUE = re.compile(r"://|^hf[-_]hub:|^timm:|^local-dir:", re.IGNORECASE)
_LABEL_KINDS = "biufUO"  # bool, int, uint, float, str, object (of JSON-able values)


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


def _encode_abstain_label(label: object) -> dict[str, Any] | None:
    """``None``, the ``ABSTAIN`` sentinel, or a label saved like the classes (dtype kept)."""
    if label is None:
        return None
    if label is ABSTAIN:
        return {"sentinel": "ABSTAIN"}
    return _encode_classes(np.asarray([label]))


def _decode_abstain_label(spec: object, where: str) -> Any:
    if spec is None:
        return None
    if spec == {"sentinel": "ABSTAIN"}:
        return ABSTAIN
    if not isinstance(spec, Mapping):
        msg = f"{where}: params.abstain_label must be null or an object, got {spec!r}"
        raise SerializationError(msg)
    values = _decode_classes(spec, f"{where}: params.abstain_label")
    if values.shape != (1,):
        msg = f"{where}: params.abstain_label must hold one label, got {spec!r}"
        raise SerializationError(msg)
    return values[0]


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


def _json_weights(value: float | Sequence[float]) -> float | list[float]:
    if isinstance(value, Sequence):
        return [float(v) for v in value]
    return float(value)


def _decode_policy(spec: Mapping[str, Any], where: str) -> ConfidencePolicy:
    raw = spec["thresholds"]
    thresholds: float | tuple[float, ...] = (
        tuple(_decode_float(t, f"{where}: thresholds") for t in raw)
        if isinstance(raw, list)
        else _decode_float(raw, f"{where}: thresholds")
    )
    return ConfidencePolicy(spec["measure"], thresholds)


def _parse_config(data: bytes, where: str) -> dict[str, Any]:
    try:
        config = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        msg = f"{where}: not valid JSON ({exc})"
        raise SerializationError(msg) from exc
    except RecursionError as exc:
        msg = f"{where}: nested too deeply to be a saved cascade's configuration"
        raise SerializationError(msg) from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        msg = f"{where}: not a saved cascade (format {found!r}, expected {FORMAT!r})"
        raise SerializationError(msg)
    version = config.get("format_version")
    if isinstance(version, bool) or version not in _READ_VERSIONS:
        msg = (
            f"{where}: format_version {version!r} is not supported; this version of "
            f"cascademl reads format_version {', '.join(map(str, _READ_VERSIONS))}"
        )
        raise SerializationError(msg)
    return config


def _check_name(value: object, key: str, where: str) -> str:
    if not isinstance(value, str) or not _FILE_NAME.fullmatch(value) or value == CONFIG_FILE:
        msg = (
            f"{where}: {key} {value!r} is not the name of a file inside the folder (a saved "
            "cascade's files are plain names: no folders, absolute paths, '..' or hidden "
            "names); refusing to read it"
        )
        raise SerializationError(msg)
    return value


def _check_files(files: object, where: str) -> dict[str, str]:
    if not isinstance(files, dict):
        msg = f"{where}: 'files' must map file names to SHA-256 digests, got {files!r:.80}"
        raise SerializationError(msg)
    for name, digest in files.items():
        _check_name(name, "a 'files' key", where)
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            msg = f"{where}: files[{name!r}] must be a SHA-256 hex digest, got {digest!r:.80}"
            raise SerializationError(msg)
    return dict(files)


def _check_spec(spec: object, key: str, where: str, files: Mapping[str, str], depth: int) -> None:
    """Check a stage spec (before any file is read): its files and its torch architecture."""
    if not isinstance(spec, dict):
        msg = f"{where}: {key} must be an object, got {spec!r:.80}"
        raise SerializationError(msg)
    kind = spec.get("kind")
    if kind == "temperature":
        if depth >= _MAX_WRAPPERS:
            msg = f"{where}: {key} nests more than {_MAX_WRAPPERS} temperature stages"
            raise SerializationError(msg)
        _check_spec(spec.get("stage"), f"{key}.stage", where, files, depth + 1)
    elif kind == "sklearn":
        filename = _check_name(spec.get("file"), f"{key}.file", where)
        if filename not in files:
            msg = (
                f"{where}: {key}.file {filename!r} is not listed (with its checksum) under "
                "'files'; refusing to read it"
            )
            raise SerializationError(msg)
        serializer = spec.get("serializer", "pickle")
        if serializer not in ("skops", "pickle"):
            msg = f"{where}: {key}.serializer must be 'skops' or 'pickle', got {serializer!r}"
            raise SerializationError(msg)
    elif kind == "torch":
        _check_torch_config(spec.get("config"), f"{key}.config", where)
    elif kind == "onnx":
        _check_onnx_spec(spec, key, where, files)
    else:
        msg = (
            f"{where}: {key}.kind must be 'sklearn', 'torch', 'onnx' or 'temperature', got {kind!r}"
        )
        raise SerializationError(msg)


def _check_onnx_spec(
    spec: Mapping[str, Any], key: str, where: str, files: Mapping[str, str]
) -> None:
    """An exported stage (`cascademl.onnx`): its graph's file is listed, its output known."""
    filename = _check_name(spec.get("file"), f"{key}.file", where)
    if filename not in files:
        msg = (
            f"{where}: {key}.file {filename!r} is not listed (with its checksum) under "
            "'files'; refusing to read it"
        )
        raise SerializationError(msg)
    output = spec.get("output")
    if output not in ("logits", "probabilities"):
        msg = f"{where}: {key}.output must be 'logits' or 'probabilities', got {output!r}"
        raise SerializationError(msg)


def _check_torch_config(config: object, key: str, where: str) -> None:
    """Refuse a torch stage config that would make loading read other files or download."""
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), dict):
        msg = f"{where}: {key} must be an object with an 'architecture' object"
        raise SerializationError(msg)
    arch = config["architecture"]
    source = arch.get("source")
    if source == "module":
        return
    if source != "timm":
        msg = f"{where}: {key}.architecture.source must be 'timm' or 'module', got {source!r}"
        raise SerializationError(msg)
    name = arch.get("name")
    if not isinstance(name, str) or not _TIMM_NAME.fullmatch(name):
        msg = (
            f"{where}: {key}.architecture.name {name!r} is not a timm model name; loading "
            "builds timm models by name only (no 'hf-hub:' prefix, URL or path) and reads "
            "weights only from the folder"
        )
        raise SerializationError(msg)
    timm = _import_timm()
    if not timm.is_model(name):
        msg = (
            f"{where}: {key}.architecture.name {name!r} is not a model of the installed timm "
            f"{timm.__version__}"
        )
        raise SerializationError(msg)
    num_classes = arch.get("num_classes")
    classes = config.get("classes")
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, int)
        or not isinstance(classes, list)
        or num_classes != len(classes)
        or num_classes < 1
    ):
        msg = (
            f"{where}: {key}.architecture.num_classes must be the number of classes "
            f"({len(classes) if isinstance(classes, list) else '?'}), got {num_classes!r}"
        )
        raise SerializationError(msg)
    kwargs = arch.get("kwargs", {})
    if not isinstance(kwargs, dict):
        msg = f"{where}: {key}.architecture.kwargs must be an object, got {kwargs!r:.80}"
        raise SerializationError(msg)
    for path, value in _walk(kwargs, f"{key}.architecture.kwargs"):
        if _FORBIDDEN_KEY.search(path.rsplit(".", 1)[-1]) or (
            isinstance(value, str) and _FORBIDDEN_VALUE.search(value)
        ):
            msg = (
                f"{where}: {path} = {value!r:.80} would make loading read weights from "
                "elsewhere or download them; a saved stage's weights come only from "
                f"{TENSORS_FILE}"
            )
            raise SerializationError(msg)


def _walk(value: object, path: str) -> Iterator[tuple[str, object]]:
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}[{i}]")


def _check_features(config: Mapping[str, Any], where: str) -> tuple[int | None, list[str] | None]:
    n_features = config.get("n_features_in")
    names = config.get("feature_names_in")
    if n_features is not None and (
        isinstance(n_features, bool)
        or not isinstance(n_features, int)
        or not 1 <= n_features <= _MAX_FEATURES
    ):
        msg = (
            f"{where}: n_features_in must be null or an integer in [1, {_MAX_FEATURES}], "
            f"got {n_features!r}"
        )
        raise SerializationError(msg)
    if names is not None and (
        not isinstance(names, list)
        or not all(isinstance(n, str) for n in names)
        or len(names) != n_features
    ):
        msg = (
            f"{where}: feature_names_in must be null or a list of n_features_in "
            f"({n_features}) strings, got {names!r:.80}"
        )
        raise SerializationError(msg)
    return n_features, names


def _check_stage_features(
    stages: list[tuple[str, Any]], n_features: int | None, where: str
) -> None:
    for name, stage in stages:
        inner = stage.stage if isinstance(stage, TemperatureScaledStage) else stage
        expected = getattr(getattr(inner, "estimator", None), "n_features_in_", None)
        if expected is not None and n_features is not None and int(expected) != n_features:
            msg = (
                f"{where}: n_features_in is {n_features} but stage {name!r} was fitted on "
                f"{int(expected)} features"
            )
            raise SerializationError(msg)


def _check_stages(entries: object, where: str, files: Mapping[str, str]) -> list[Any]:
    if not isinstance(entries, list) or not entries:
        msg = f"{where}: 'stages' must be a non-empty list, got {entries!r:.80}"
        raise SerializationError(msg)
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            msg = f"{where}: stages[{i}] must be an object, got {entry!r:.80}"
            raise SerializationError(msg)
        _check_spec(entry["spec"], f"stages[{i}].spec", where, files, depth=0)
    return entries


def _import_timm() -> Any:
    from cascademl._preprocessing import _import_timm as import_timm  # noqa: PLC0415

    return import_timm()
