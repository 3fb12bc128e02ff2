"""Save and load a fitted cascade: a folder with a JSON config, safetensors and skops files.

Layout of a saved cascade (format version 2)::

    my_cascade/
    ├── cascade.json          policy, thresholds, combiner, classes, stage specs, checksums
    ├── tensors.safetensors   torch stages' weights (only when there are torch stages)
    └── stage_<i>.skops       scikit-learn stages (skops; stage_<i>.pkl with pickle)

``cascade.json`` holds ``"format": "cascademl.CascadeClassifier"`` and ``"format_version"``;
class labels keep their numpy dtype (strings, ints, floats or bools); temperatures of
[`TemperatureScaledStage`][cascademl.calibration.TemperatureScaledStage] stages and the
SHA-256 of every other file are in it too. Torch stages are stored with
``TorchStage.to_config()`` and their ``state_dict`` in safetensors, which holds only
tensors: loading them runs no code. Format version 1 (cascademl 0.1: scikit-learn stages
always pickled) is still read.

scikit-learn stages are stored with [skops](https://skops.readthedocs.io) (``pip install
'cascademl[io]'``), which rebuilds an estimator from data and refuses types it does not
trust instead of running their code. skops trusts scikit-learn's estimators and numpy;
other types found in a file (e.g. ``sklearn.tree._tree.Tree``, whose node indices
scikit-learn does not bounds-check) make `load_cascade` raise an error that lists them;
pass them as ``trusted=[...]`` once you trust the file. ``save_cascade(...,
sklearn_format="pickle")`` stores estimators skops cannot with pickle instead; unpickling
can run arbitrary code, so `load_cascade` refuses such folders unless
``allow_pickle=True``.

!!! warning "Checksums detect corruption, not tampering"
    Whoever can edit a stage file can edit ``cascade.json`` too. Pass ``allow_pickle=True``
    or ``trusted=`` only for folders you trust.

## Saving: the old model or the new one, never a mix

`save_cascade` serializes every stage in memory first, so a stage that cannot be saved
fails before anything is written. It then writes the files into a new hidden folder beside
the target (``.<name>.new-<pid>-<token>``, unique per process), flushes each file and the
folder to disk (``fsync``), and swaps it in: with ``overwrite=True`` the old folder is
renamed aside (``.<name>.old-<pid>-<token>``), the new one renamed to ``<name>``, and the
old one removed. A failure before the swap (an error, a full disk) removes the new folder
and leaves the old one untouched. Files in the old folder that are not part of the saved
cascade are carried into the new one (hard links where possible). Between the two renames
(microseconds) ``<name>`` does not exist; if the process dies there, the old cascade stays
under its aside name and `load_cascade` loads it from there, with a warning. Saved files
and the folder get the permissions of the process's umask, as ``open`` gives.

## What loading will and will not do

`load_cascade` reads ``cascade.json``, then only files that ``cascade.json`` lists under
``"files"`` with their SHA-256. Before reading any of them it checks:

* every name (``"files"`` keys, a stage's ``"file"``) is a plain file name in the folder:
  no folders, absolute paths, ``..`` or hidden names; a stage's file must be listed (so
  checksummed); symbolic links and anything but a regular file are refused;
* a torch stage built from timm names a model timm knows, with no ``hf-hub:`` prefix, URL
  or path, and no keyword that points at weights (``pretrained``, ``checkpoint_path``,
  ``pretrained_cfg``, files, URLs, caches); the model is built with ``pretrained=False`` and
  its weights come only from ``tensors.safetensors``, whose dtypes must match the model's
  (an integer tensor is not cast silently into float weights);
* ``n_features_in`` is a positive integer matching the stages and ``feature_names_in``.

Each failed check raises `SerializationError` naming the file, the key and the value. All
files are read through one open handle on the folder, so a `save_cascade` that replaces the
folder while it is being loaded gives the old cascade or the new one (loading retries when
the folder was swapped under it). Loading never unpickles without ``allow_pickle=True``,
never loads a skops type you did not trust, never downloads, and writes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import importlib.util
import json
import math
import os
import pickle
import re
import shutil
import stat
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from cascademl import _files
from cascademl.abstention import ABSTAIN
from cascademl.calibration import TemperatureScaledStage
from cascademl.cascade import CascadeClassifier
from cascademl.exceptions import (
    CascadeMLError,
    CascadeMLWarning,
    NotFittedError,
    SerializationError,
)
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
#: The ``"format_version"`` this version of cascademl writes (it reads 1 and 2).
FORMAT_VERSION = 2
#: The configuration file in a saved cascade's folder.
CONFIG_FILE = "cascade.json"
#: The weights file of torch stages.
TENSORS_FILE = "tensors.safetensors"

#: How scikit-learn stages are stored: skops (no code runs on loading) or pickle.
SklearnFormat = Literal["skops", "pickle"]

_READ_VERSIONS = (1, 2)
_LOAD_ATTEMPTS = 3
_CONFIG_LIMIT = 64 << 20  # bytes; a cascade.json is a few kilobytes
_MAX_WRAPPERS = 8  # temperature stages around one stage
_MAX_FEATURES = 2**31 - 1
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254}")
_OWN_STAGE_FILE = re.compile(r"stage_[0-9]+\.(pkl|skops)")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TIMM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
#: timm keywords that point at weights to read or download.
_FORBIDDEN_KEY = re.compile(r"pretrain|checkpoint|file|path|url|hub|cache|download", re.IGNORECASE)
_FORBIDDEN_VALUE = re.compile(r"://|^hf[-_]hub:|^timm:|^local-dir:", re.IGNORECASE)
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


def _torch_stage_class() -> type[Any]:
    from cascademl.torch_stage import TorchStage  # noqa: PLC0415 - imported on use

    return TorchStage


def _require_safetensors() -> Any:
    if importlib.util.find_spec("safetensors") is None:  # pragma: no cover - in dev env
        msg = "saving or loading torch stages needs safetensors: pip install 'cascademl[io]'"
        raise ImportError(msg)
    import safetensors.torch  # noqa: PLC0415 - optional dependency

    return safetensors.torch


def _require_skops() -> Any:
    if importlib.util.find_spec("skops") is None:  # pragma: no cover - in dev env
        msg = (
            "scikit-learn stages are stored with skops: pip install 'cascademl[io]' (or "
            "save with sklearn_format='pickle', which loading refuses without allow_pickle)"
        )
        raise ImportError(msg)
    import skops.io  # noqa: PLC0415 - optional dependency

    return skops.io


def _import_timm() -> Any:
    from cascademl.torch_stage import _import_timm as import_timm  # noqa: PLC0415

    return import_timm()


# --------------------------------------------------------------------------- saving
def save_cascade(
    cascade: CascadeClassifier,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    sklearn_format: SklearnFormat = "skops",
) -> Path:
    """Save a fitted cascade to a folder, atomically.

    The files are written into a new folder beside ``path`` and moved in with one rename,
    so a reader sees the old cascade or the new one, never a mix, and a failure leaves the
    old folder as it was (see the module's description).

    Args:
        cascade: a fitted [`CascadeClassifier`][cascademl.CascadeClassifier] whose stages
            are scikit-learn stages, `TorchStage` stages, or either wrapped in a
            `TemperatureScaledStage`.
        path: the folder; created if needed (with its parents).
        overwrite: replace an existing folder at ``path`` (files in it that are not part
            of the old saved cascade are kept).
        sklearn_format: ``"skops"`` (loading runs no code) or ``"pickle"`` (for
            estimators skops cannot store; loading then needs ``allow_pickle=True``).

    Returns:
        The folder's path.

    Raises:
        NotFittedError: if the cascade is not fitted.
        FileExistsError: if ``path`` already holds a saved cascade and ``overwrite`` is False.
        SerializationError: if a stage or a parameter cannot be saved.
        ImportError: if ``sklearn_format="skops"`` and skops is not installed.

    Examples:
        >>> import tempfile
        >>> from sklearn.datasets import load_iris
        >>> from sklearn.naive_bayes import GaussianNB
        >>> X, y = load_iris(return_X_y=True)
        >>> cascade = CascadeClassifier([("nb", GaussianNB())]).fit(X, y)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = save_cascade(cascade, folder, overwrite=True)
        ...     loaded = load_cascade(folder)
        >>> bool((loaded.predict(X) == cascade.predict(X)).all())
        True
    """
    if not hasattr(cascade, "stages_"):
        msg = f"this {type(cascade).__name__} is not fitted yet; call fit before save_cascade"
        raise NotFittedError(msg)
    if sklearn_format not in ("skops", "pickle"):
        msg = f"sklearn_format must be 'skops' or 'pickle', got {sklearn_format!r}"
        raise ValueError(msg)
    folder = Path(path)
    config_path = folder / CONFIG_FILE
    if folder.exists() and not folder.is_dir():
        msg = f"{folder} exists and is not a folder"
        raise FileExistsError(msg)
    if config_path.exists() and not overwrite:
        msg = f"{config_path} exists; pass overwrite=True to replace it"
        raise FileExistsError(msg)
    blobs = _serialize(cascade, sklearn_format)
    folder.parent.mkdir(parents=True, exist_ok=True)
    new = _files.temporary_sibling(folder, "new")
    new.mkdir(mode=0o777)
    try:
        for filename, data in blobs.items():
            _files.write_new_file(new / filename, data)
        if folder.is_dir():
            _carry_over(folder, new, skip=set(blobs))
        _files.replace_folder(new, folder)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    return folder


def _serialize(cascade: CascadeClassifier, sklearn_format: SklearnFormat) -> dict[str, bytes]:
    """Every file of the saved cascade, ``cascade.json`` last, as bytes (nothing written)."""
    tensors: dict[str, torch.Tensor] = {}
    blobs: dict[str, bytes] = {}
    stages = []
    for i, (name, stage) in enumerate(cascade.named_stages_.items()):
        spec = _stage_spec(
            stage, index=i, name=name, tensors=tensors, blobs=blobs, sklearn_format=sklearn_format
        )
        stages.append({"name": name, "spec": spec})
    if tensors:
        blobs[TENSORS_FILE] = bytes(_require_safetensors().save(tensors))
    files = {filename: hashlib.sha256(data).hexdigest() for filename, data in blobs.items()}
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
            "abstain_label": _encode_abstain_label(getattr(cascade, "abstain_label", None)),
        },
        "stages": stages,
        "files": files,
    }
    try:
        text = json.dumps(config, indent=2, allow_nan=False)
    except (TypeError, ValueError) as exc:
        msg = f"the cascade's configuration is not JSON-able: {exc}"
        raise SerializationError(msg) from exc
    blobs[CONFIG_FILE] = (text + "\n").encode("utf-8")
    return blobs


def _carry_over(old: Path, new: Path, *, skip: set[str]) -> None:
    """Link (or copy) into ``new`` what ``old`` holds besides its saved cascade's files."""
    own = {CONFIG_FILE, TENSORS_FILE, *skip}
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        own.update(json.loads((old / CONFIG_FILE).read_text(encoding="utf-8"))["files"])
    for entry in os.scandir(old):
        if entry.name in own or _OWN_STAGE_FILE.fullmatch(entry.name):
            continue
        target = new / entry.name
        if entry.is_symlink():
            target.symlink_to(Path(entry.path).readlink())
        elif entry.is_dir():
            shutil.copytree(entry.path, target, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry.path, target)


def _link_or_copy(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _json_weights(value: float | Sequence[float]) -> float | list[float]:
    if isinstance(value, Sequence):
        return [float(v) for v in value]
    return float(value)


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


# --------------------------------------------------------------------------- loading
def load_cascade(
    path: str | os.PathLike[str],
    *,
    allow_pickle: bool = False,
    trusted: Sequence[str] = (),
    modules: Mapping[str, nn.Module] | None = None,
    device: str | torch.device | None = None,
) -> CascadeClassifier:
    """Load a cascade saved by [`save_cascade`][cascademl.io.save_cascade], ready to predict.

    Loading reads only files inside ``path`` that ``cascade.json`` lists with a checksum,
    runs no code from them unless ``allow_pickle=True``, and never downloads (see "What
    loading will and will not do" above).

    Args:
        path: the folder.
        allow_pickle: allow unpickling scikit-learn stages saved with
            ``sklearn_format="pickle"`` (or by cascademl 0.1). Unpickling can run arbitrary
            code: only set it for files you trust. Without it, such a folder raises
            `SerializationError`.
        trusted: fully qualified type names to trust in skops files beyond skops's
            defaults (scikit-learn estimators, numpy), e.g. ``["sklearn.tree._tree.Tree"]``
            for decision trees; the error for an untrusted type lists what to pass.
        modules: for torch stages that were not built from timm, a freshly built module
            per stage name (the weights are then loaded into it).
        device: overrides the saved device of torch stages (e.g. ``"cpu"``).

    Returns:
        A fitted cascade that predicts exactly as the saved one did.

    Raises:
        SerializationError: naming the file (and the key and value at fault), when a file
            is missing, corrupt (bad JSON, checksum mismatch, unreadable weights), outside
            the folder or unlisted, of another format or format version, holds pickled
            stages without ``allow_pickle=True`` or skops types not trusted, or names a
            torch architecture that loading would fetch from elsewhere.
    """
    folder = Path(path)
    options = _LoadOptions(
        allow_pickle=allow_pickle, trusted=tuple(trusted), modules=modules or {}, device=device
    )
    for _ in range(_LOAD_ATTEMPTS):
        with contextlib.suppress(_FolderReplacedError):
            return _load(folder, options)
    msg = f"{folder}: replaced while being loaded, {_LOAD_ATTEMPTS} times in a row"
    raise SerializationError(msg)


class _FolderReplacedError(Exception):
    """A file vanished because a save replaced the folder while it was read: try again."""


@dataclasses.dataclass(frozen=True)
class _LoadOptions:
    allow_pickle: bool
    trusted: tuple[str, ...]
    modules: Mapping[str, nn.Module]
    device: str | torch.device | None


def _load(folder: Path, options: _LoadOptions) -> CascadeClassifier:
    with _FolderReader.open(_saved_folder(folder)) as reader:
        where = str(reader.folder / CONFIG_FILE)
        config = _parse_config(reader.read(CONFIG_FILE, limit=_CONFIG_LIMIT), where)
        try:
            classes = _decode_classes(config["classes"], where)
            params = config["params"]
            files = _check_files(config["files"], where)
            stage_entries = _check_stages(config["stages"], where, files)
            n_features, feature_names = _check_features(config, where)
            policy = _decode_policy(params["policy"], where)
            blobs = {filename: _verified(reader, filename, files[filename]) for filename in files}
            tensors = _load_tensors(reader.folder, blobs)
            builder = _StageBuilder(reader.folder, blobs, tensors, options)
            stages = [
                (str(entry["name"]), builder.build(entry["spec"], str(entry["name"])))
                for entry in stage_entries
            ]
            _check_stage_features(stages, n_features, where)
            cascade = CascadeClassifier(
                stages,
                policy=policy,
                combine=params["combine"],
                escalation_weight=params["escalation_weight"],
                batch_size=params["batch_size"],
                reject_threshold=params.get("reject_threshold"),
                abstain_label=_decode_abstain_label(params.get("abstain_label"), where),
            )
        except KeyError as exc:
            msg = f"{where}: missing key {exc.args[0]!r}"
            raise SerializationError(msg) from exc
        except SerializationError:
            raise
        except (CascadeMLError, TypeError, ValueError, AttributeError) as exc:
            msg = f"{where}: invalid configuration: {exc}"
            raise SerializationError(msg) from exc
    return _adopt(cascade, classes, n_features, feature_names, where)


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


def _verified(reader: _FolderReader, filename: str, digest: str) -> bytes:
    data = reader.read(filename)
    if hashlib.sha256(data).hexdigest() != digest:
        msg = (
            f"{reader.folder / filename}: checksum mismatch, the file is corrupt or was "
            "changed after saving"
        )
        raise SerializationError(msg)
    return data


def _saved_folder(folder: Path) -> Path:
    """``folder``, or the previous cascade an interrupted save left aside (with a warning)."""
    if (folder / CONFIG_FILE).is_file() or folder.is_dir():
        return folder
    pattern = f".{glob.escape(folder.name)}.old-*"
    aside = sorted(
        (p for p in folder.parent.glob(pattern) if (p / CONFIG_FILE).is_file()),
        key=_mtime,
    )
    if not aside:
        return folder
    warnings.warn(
        f"{folder} does not exist, but {aside[-1]} holds the cascade that an interrupted "
        f"save_cascade was replacing; loading that one (rename it to {folder.name} to keep it)",
        CascadeMLWarning,
        stacklevel=4,
    )
    return aside[-1]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile
        return -math.inf


class _FolderReader:
    """Reads regular files of one folder through one open handle on it.

    Names are opened relative to the folder's handle (``dir_fd``) without following
    symbolic links, so every file comes from the folder that was opened first, even when a
    save renames another folder into its place meanwhile.
    """

    def __init__(self, folder: Path, fd: int | None) -> None:
        self.folder = folder
        self._fd = fd

    @classmethod
    @contextlib.contextmanager
    def open(cls, folder: Path) -> Iterator[_FolderReader]:
        if not (folder / CONFIG_FILE).is_file():
            msg = f"{folder / CONFIG_FILE}: not found; is {folder} a folder saved by save_cascade?"
            raise SerializationError(msg)
        fd: int | None = None
        if os.open in os.supports_dir_fd:
            try:
                fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            except OSError as exc:
                msg = f"{folder}: cannot open the folder ({exc})"
                raise SerializationError(msg) from exc
        try:
            yield cls(folder, fd)
        finally:
            if fd is not None:
                os.close(fd)

    def read(self, name: str, *, limit: int | None = None) -> bytes:
        path = self.folder / name
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        flags |= getattr(os, "O_BINARY", 0)
        try:
            if self._fd is None:  # pragma: no cover - platforms without dir_fd (Windows)
                if path.is_symlink():
                    msg = f"{path}: is a symbolic link; a saved cascade holds regular files only"
                    raise SerializationError(msg)
                fd = os.open(path, flags)
            else:
                fd = os.open(name, flags, dir_fd=self._fd)
        except FileNotFoundError as exc:
            if self._replaced():
                raise _FolderReplacedError from exc
            msg = f"{path}: missing (listed in {CONFIG_FILE})"
            raise SerializationError(msg) from exc
        except OSError as exc:
            kind = "is a symbolic link" if os.path.islink(path) else "cannot be opened"  # noqa: PTH114
            msg = f"{path}: {kind} ({exc}); a saved cascade holds regular files only"
            raise SerializationError(msg) from exc
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                msg = f"{path}: not a regular file; a saved cascade holds regular files only"
                raise SerializationError(msg)
            if limit is not None and info.st_size > limit:
                msg = f"{path}: {info.st_size} bytes, more than the {limit} a config may have"
                raise SerializationError(msg)
            chunks = []
            while chunk := os.read(fd, 1 << 24):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def _replaced(self) -> bool:
        if self._fd is None:  # pragma: no cover - platforms without dir_fd (Windows)
            return False
        try:
            now = self.folder.stat()
        except OSError:
            return True
        then = os.fstat(self._fd)
        return (now.st_dev, now.st_ino) != (then.st_dev, then.st_ino)


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
    else:
        msg = f"{where}: {key}.kind must be 'sklearn', 'torch' or 'temperature', got {kind!r}"
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


def _decode_policy(spec: Mapping[str, Any], where: str) -> ConfidencePolicy:
    raw = spec["thresholds"]
    thresholds: float | tuple[float, ...] = (
        tuple(_decode_float(t, f"{where}: thresholds") for t in raw)
        if isinstance(raw, list)
        else _decode_float(raw, f"{where}: thresholds")
    )
    return ConfidencePolicy(spec["measure"], thresholds)


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
        return self._torch(spec, name)

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
