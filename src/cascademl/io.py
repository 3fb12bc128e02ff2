"""Save and load a fitted cascade: a folder with a JSON config, safetensors and skops files.

Layout of a saved cascade (format version 2)::

    my_cascade/
    ├── cascade.json          policy, thresholds, combiner, classes, stage specs, checksums
    │                         (and the certificate of a certified cascade, as JSON)
    ├── tensors.safetensors   torch stages' weights (only when there are torch stages)
    └── stage_<i>.skops       scikit-learn stages (skops; stage_<i>.pkl with pickle)

``cascade.json`` holds ``"format": "cascademl.CascadeClassifier"`` and ``"format_version"``;
class labels keep their numpy dtype (strings, ints, floats or bools); temperatures of
[`TemperatureScaledStage`][cascademl.calibration.TemperatureScaledStage] stages and the
SHA-256 of every other file are in it too, and so is the
[`Certificate`][cascademl.certify.Certificate] of a cascade built by
[`apply_certificate`][cascademl.certify.apply_certificate] (``"certificate"``, optional:
folders without it load as before). Torch stages are stored with
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
import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cascademl import _files
from cascademl._io_folder import (
    _carry_over,
    _FolderReader,
    _FolderReplacedError,
    _saved_folder,
    _verified,
)
from cascademl._io_format import (
    _CONFIG_LIMIT,
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    TENSORS_FILE,
    SklearnFormat,
    _check_features,
    _check_files,
    _check_stage_features,
    _check_stages,
    _decode_abstain_label,
    _decode_classes,
    _decode_policy,
    _encode_abstain_label,
    _encode_classes,
    _json_weights,
    _parse_config,
)
from cascademl._io_stages import (
    _load_tensors,
    _LoadOptions,
    _require_safetensors,
    _stage_spec,
    _StageBuilder,
)
from cascademl._json_floats import _encode_float
from cascademl._validation import check_positive_int
from cascademl.cascade import CascadeClassifier
from cascademl.certify._certificate import Certificate
from cascademl.exceptions import (
    CascadeMLError,
    DeviceUnavailableError,
    NotFittedError,
    SerializationError,
)

if TYPE_CHECKING:  # loading a cascade without torch stages (an ONNX export) imports no torch
    import torch
    from torch import nn

__all__ = [
    "CONFIG_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "TENSORS_FILE",
    "load_cascade",
    "save_cascade",
]

_LOAD_ATTEMPTS = 3


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
    return _save(cascade, path, overwrite=overwrite, sklearn_format=sklearn_format)


def _save(
    cascade: CascadeClassifier,
    path: str | os.PathLike[str],
    *,
    overwrite: bool,
    sklearn_format: SklearnFormat,
    extra_files: Mapping[str, bytes] | None = None,
) -> Path:
    """`save_cascade`, with more files (listed and checksummed) for `cascademl.onnx`."""
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
    blobs = _serialize(cascade, sklearn_format, extra_files or {})
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


def _serialize(
    cascade: CascadeClassifier,
    sklearn_format: SklearnFormat,
    extra_files: Mapping[str, bytes],
) -> dict[str, bytes]:
    """Every file of the saved cascade, ``cascade.json`` last, as bytes (nothing written)."""
    tensors: dict[str, torch.Tensor] = {}
    blobs: dict[str, bytes] = dict(extra_files)
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
    certificate = getattr(cascade, "certificate_", None)
    if isinstance(certificate, Certificate):
        config["certificate"] = certificate.to_dict()
    try:
        text = json.dumps(config, indent=2, allow_nan=False)
    except (TypeError, ValueError) as exc:
        msg = f"the cascade's configuration is not JSON-able: {exc}"
        raise SerializationError(msg) from exc
    blobs[CONFIG_FILE] = (text + "\n").encode("utf-8")
    return blobs


# --------------------------------------------------------------------------- loading
def load_cascade(
    path: str | os.PathLike[str],
    *,
    allow_pickle: bool = False,
    trusted: Sequence[str] = (),
    modules: Mapping[str, nn.Module] | None = None,
    device: str | torch.device | None = None,
    providers: Sequence[Any] | str | None = None,
    intra_op_num_threads: int | None = None,
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
        device: overrides the saved device of torch stages (e.g. ``"cpu"``); ONNX stages
            ignore it (they run on ``providers``).
        providers: ONNX Runtime execution providers of the ONNX stages of a cascade
            exported by [`export_cascade`][cascademl.onnx.export_cascade] (``None``: the
            CPU; see [`OnnxStage`][cascademl.onnx.OnnxStage]).
        intra_op_num_threads: threads of each ONNX stage (``None``: ONNX Runtime's choice).

    Returns:
        A fitted cascade that predicts exactly as the saved one did.

    Raises:
        SerializationError: naming the file (and the key and value at fault), when a file
            is missing, corrupt (bad JSON, checksum mismatch, unreadable weights), outside
            the folder or unlisted, of another format or format version, holds pickled
            stages without ``allow_pickle=True`` or skops types not trusted, or names a
            torch architecture that loading would fetch from elsewhere.
        DeviceUnavailableError: if ``providers`` names an ONNX Runtime execution provider
            the installed onnxruntime does not have.
        PolicyError: if ``intra_op_num_threads`` is not a positive integer.
    """
    folder = Path(path)
    if intra_op_num_threads is not None:
        intra_op_num_threads = check_positive_int(intra_op_num_threads, "intra_op_num_threads")
    options = _LoadOptions(
        allow_pickle=allow_pickle,
        trusted=tuple(trusted),
        modules=modules or {},
        device=device,
        providers=providers,
        intra_op_num_threads=intra_op_num_threads,
    )
    for _ in range(_LOAD_ATTEMPTS):
        with contextlib.suppress(_FolderReplacedError):
            return _load(folder, options)
    msg = f"{folder}: replaced while being loaded, {_LOAD_ATTEMPTS} times in a row"
    raise SerializationError(msg)


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
        except (SerializationError, DeviceUnavailableError):
            raise  # a provider of load_cascade's that is not installed: not the folder's fault
        except (CascadeMLError, TypeError, ValueError, AttributeError) as exc:
            msg = f"{where}: invalid configuration: {exc}"
            raise SerializationError(msg) from exc
    adopted = _adopt(cascade, classes, n_features, feature_names, where)
    if config.get("certificate") is not None:
        adopted.certificate_ = Certificate.from_dict(config["certificate"], f"{where}: certificate")
    return adopted


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
