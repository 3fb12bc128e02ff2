"""Run a saved cascade over a Ray Data ``Dataset``: many processes, GPUs or machines.

[`route_dataset`][cascademl.ray_data.route_dataset] adds the cascade to a
``ray.data.Dataset`` as ``map_batches`` over a pool of actors (``pip install
'cascademl[ray]'``). Each actor loads the saved cascade once, with
[`load_cascade`][cascademl.io.load_cascade], from a folder every node can read or from a
URI (``s3://``, ``gs://``, ``file://``, anything ``pyarrow.fs`` opens), and routes the
batches it is given. Nothing is computed until the dataset is consumed (``take_all``,
``iter_batches``, ``write_parquet``...), and Ray streams the rows through.

Two modes:

* ``mode="cascade"`` (whole cascade): one actor pool; each actor holds every stage and
  routes its batches with the library's own engine (`CascadeClassifier.route`).
* ``mode="stages"`` (stage-parallel): one actor pool per stage, chained, each with its own
  ``concurrency``, ``num_gpus`` and ``batch_size``, so an expensive late stage gets its own
  replicas or GPUs. A stage's actors run only the rows that reached it; rows that exited
  earlier travel on as a few numbers, their input dropped. The running combined vote of
  each row travels with it, and each stage folds its vote in with the engine's own
  [`fold_stage`][cascademl._engine.fold_stage], so both modes return what
  `CascadeClassifier.route` returns on the same rows (labels and exit stages equal,
  probabilities equal to floating-point rounding of the stages themselves).

Output columns, one row per input row: the passed-through columns, then

* ``label``: the final label;
* ``confidence``: the exiting stage's confidence under the cascade's measure (as in
  [`CascadeResult.to_frame`][cascademl.CascadeResult.to_frame]);
* ``exit_stage``: the index of the stage that ended the row, and ``stage_name`` its name;
* ``cost``: the summed ``cost_per_sample`` of the stages the row visited (one per stage
  call when stages report no cost);
* ``proba`` (with ``proba=True``): the final combined probabilities, in ``classes_`` order;
* ``error`` (when the input has an ``error`` column, as
  [`read_images`][cascademl.ray_data.read_images] with ``skip_bad=True`` gives): rows with
  a non-empty error are not routed; their ``label`` is null and ``exit_stage`` is -1.

Examples:
    ```python
    import ray
    from cascademl.ray_data import read_images, route_dataset

    ray.init()  # or ray.init("ray://head:10001") for a cluster
    images = read_images("s3://bucket/slides/", size=(224, 224))
    out = route_dataset(images, "s3://bucket/models/cascade", concurrency=4, num_gpus=1)
    out.write_parquet("s3://bucket/predictions/")
    ```
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np

from cascademl import _engine, _routing
from cascademl._optional import require
from cascademl._validation import check_positive_int
from cascademl.exceptions import PolicyError, SerializationError
from cascademl.stages import stage_cost
from cascademl.voting import escalating_vote_weights

__all__ = ["OUTPUT_COLUMNS", "Mode", "read_images", "route_dataset"]

logger = logging.getLogger(__name__)

#: ``"cascade"``: one actor pool, every stage in each actor; ``"stages"``: a pool per stage.
Mode: TypeAlias = Literal["cascade", "stages"]
_MODES: tuple[Mode, ...] = ("cascade", "stages")
#: The columns `route_dataset` adds, in order (``proba`` and ``error`` only when asked for).
OUTPUT_COLUMNS = ("label", "confidence", "exit_stage", "stage_name", "cost")
#: The file suffixes `read_images` reads unless told otherwise.
_IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "tif", "tiff", "bmp", "gif", "webp")
#: The column of `read_images` rows that could not be decoded.
ERROR_COLUMN = "error"

# Per-row state that travels between the stage pools of mode="stages".
_SCORES = "__cascademl_scores"
_EXIT = "__cascademl_exit"
_CONF = "__cascademl_confidence"
_COST = "__cascademl_cost"
_STATE = (_SCORES, _EXIT, _CONF, _COST)
_PENDING = -1  # not decided yet
_SKIPPED = -2  # a row with an error: never routed

_CONFIG_FILE = "cascade.json"  # as cascademl.io.CONFIG_FILE, without importing torch here


def _ray() -> Any:
    return require("ray", "ray", purpose="cascademl.ray_data")


# --------------------------------------------------------------------------- loading
def _is_uri(model: str | os.PathLike[str]) -> bool:
    return isinstance(model, str) and "://" in model


def _local_copy(uri: str) -> Path:
    """Copy a saved cascade at ``uri`` into a new local temporary folder."""
    fs = require("pyarrow.fs", "ray", purpose="loading a cascade from a URI")
    target = Path(tempfile.mkdtemp(prefix="cascademl-model-"))
    try:
        fs.copy_files(uri, str(target))
    except (OSError, ValueError) as exc:
        msg = f"model {uri!r}: cannot copy the saved cascade from there ({exc})"
        raise SerializationError(msg) from exc
    return target


def _load(model: str | os.PathLike[str], options: Mapping[str, Any]) -> Any:
    from cascademl.io import load_cascade  # noqa: PLC0415 - imports torch: in the actor only

    folder = _local_copy(str(model)) if _is_uri(model) else Path(model)
    return load_cascade(folder, **options)


def _stage_count(model: str | os.PathLike[str]) -> int:
    """Number of stages of the saved cascade, read from its config without loading it."""
    name = str(model).rstrip("/") + "/" + _CONFIG_FILE
    try:
        if _is_uri(model):
            fs = require("pyarrow.fs", "ray", purpose="loading a cascade from a URI")
            filesystem, path = fs.FileSystem.from_uri(name)
            with filesystem.open_input_stream(path) as handle:
                data = handle.read()
        else:
            data = Path(name).read_bytes()
        stages = json.loads(data)["stages"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        msg = f"model {os.fspath(model)!r}: no saved cascade there ({name}: {exc})"
        raise SerializationError(msg) from exc
    if not isinstance(stages, list) or not stages:
        msg = f"{name}: 'stages' must be a non-empty list, got {stages!r:.80}"
        raise SerializationError(msg)
    return len(stages)


# --------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class _Spec:
    """What every actor needs: picklable, shipped to the actors."""

    model: str
    load_options: dict[str, Any]
    input_columns: tuple[str, ...]
    passthrough: tuple[str, ...] | None
    proba: bool
    extra: dict[str, Any] = field(default_factory=dict)


def _n_rows(batch: Mapping[str, Any]) -> int:
    return len(next(iter(batch.values()))) if batch else 0


def _bad_rows(batch: Mapping[str, Any]) -> np.ndarray[Any, Any]:
    errors = batch.get(ERROR_COLUMN)
    if errors is None:
        return np.zeros(_n_rows(batch), dtype=bool)
    return np.array([bool(e) for e in errors], dtype=bool)


def _groups(
    batch: Mapping[str, Any], spec: _Spec, rows: np.ndarray[Any, Any], feature_names: Any
) -> Iterator[tuple[np.ndarray[Any, Any], Any]]:
    """``(row indices, inputs)`` per group of ``rows`` the stages can take in one call.

    One column of fixed-shape arrays is one group. One column of arrays of several shapes
    (images of different sizes, or rows whose input was dropped) is split by shape. Several
    columns become one 2-d array, or a DataFrame when the cascade knows feature names.
    """
    if rows.size == 0:
        return
    columns = spec.input_columns
    if len(columns) > 1:
        if feature_names is not None:
            pd = require("pandas", "ray", purpose="named input columns")
            yield rows, pd.DataFrame({c: np.asarray(batch[c])[rows] for c in columns})
        else:
            yield rows, np.column_stack([np.asarray(batch[c])[rows] for c in columns])
        return
    values = batch[columns[0]]
    if isinstance(values, np.ndarray) and values.dtype != object:
        yield rows, values[rows]
        return
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i in rows.tolist():
        by_shape.setdefault(tuple(np.shape(values[i])), []).append(i)
    for members in by_shape.values():
        idx = np.asarray(members, dtype=np.intp)
        yield idx, np.stack([np.asarray(values[i]) for i in members])


def _passthrough(batch: Mapping[str, Any], spec: _Spec) -> dict[str, Any]:
    if spec.passthrough is None:
        skip = {*spec.input_columns, *_STATE, ERROR_COLUMN}
        return {k: v for k, v in batch.items() if k not in skip}
    return {k: batch[k] for k in spec.passthrough}


def _labels(classes: Any, index: np.ndarray[Any, Any], bad: np.ndarray[Any, Any]) -> Any:
    labels = np.asarray(classes)[np.where(bad, 0, index)]
    if not bad.any():
        return labels
    out = labels.astype(object)
    out[bad] = None
    return out


def _output(
    batch: Mapping[str, Any],
    spec: _Spec,
    *,
    labels: Any,
    confidence: np.ndarray[Any, Any],
    exit_stage: np.ndarray[Any, Any],
    names: Sequence[str],
    cost: np.ndarray[Any, Any],
    proba: np.ndarray[Any, Any] | None,
) -> dict[str, Any]:
    out = _passthrough(batch, spec)
    stage_names = np.asarray([*names, ""], dtype=object)  # -1 (not routed): ""
    out.update(
        label=labels,
        confidence=confidence,
        exit_stage=exit_stage,
        stage_name=stage_names[exit_stage],
        cost=cost,
    )
    if proba is not None:
        out["proba"] = proba
    if ERROR_COLUMN in batch:
        out[ERROR_COLUMN] = np.asarray(batch[ERROR_COLUMN], dtype=object)
    return out


# --------------------------------------------------------------------------- actors
class _CascadeRouter:
    """Actor of ``mode="cascade"``: the whole cascade, routed by its own engine."""

    def __init__(self, spec: _Spec) -> None:
        self.spec = spec
        self.cascade = _load(spec.model, spec.load_options)
        self.names = tuple(str(n) for n in self.cascade.named_stages_)
        self.cumulative_cost = np.cumsum([stage_cost(s) for s in self.cascade.stages_])

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        n = _n_rows(batch)
        bad = _bad_rows(batch)
        n_classes = len(self.cascade.classes_)
        index = np.zeros(n, dtype=np.intp)
        confidence = np.full(n, np.nan)
        exit_stage = np.full(n, -1, dtype=np.intp)
        proba = np.full((n, n_classes), np.nan) if self.spec.proba else None
        feature_names = getattr(self.cascade, "feature_names_in_", None)
        for rows, X in _groups(batch, self.spec, np.flatnonzero(~bad), feature_names):
            result = self.cascade.route(X, keep="none")
            exits = np.asarray(result.exit_stage)
            index[rows] = _class_index(self.cascade.classes_, result.labels)
            confidence[rows] = result.stage_confidence[exits, np.arange(exits.size)]
            exit_stage[rows] = exits
            if proba is not None:
                proba[rows] = result.proba
        cost = np.where(exit_stage >= 0, self.cumulative_cost[np.maximum(exit_stage, 0)], 0.0)
        return _output(
            batch,
            self.spec,
            labels=_labels(self.cascade.classes_, index, bad),
            confidence=confidence,
            exit_stage=exit_stage,
            names=self.names,
            cost=cost,
            proba=proba,
        )


def _class_index(classes: Any, labels: Any) -> np.ndarray[Any, Any]:
    position = {label: i for i, label in enumerate(np.asarray(classes).tolist())}
    return np.array([position[v] for v in np.asarray(labels).tolist()], dtype=np.intp)


class _StageRunner:
    """Actor of ``mode="stages"``: one stage, and the running votes of the rows."""

    def __init__(self, spec: _Spec, stage_index: int) -> None:
        cascade = _load(spec.model, spec.load_options)
        n_stages = len(cascade.stages_)
        rule = cascade.routing_rule_
        self.spec = spec
        self.s = stage_index
        self.last = stage_index == n_stages - 1
        self.stage = cascade.stages_[stage_index]
        self.names = tuple(str(n) for n in cascade.named_stages_)
        self.columns = cascade._columns[stage_index]  # noqa: SLF001 - the engine's own map
        self.classes = np.asarray(cascade.classes_)
        self.rule = rule
        self.weight = float(
            escalating_vote_weights(rule.combine, rule.escalation_weights, n_stages)[stage_index]
        )
        self.cost = stage_cost(self.stage)
        self.feature_names = getattr(cascade, "feature_names_in_", None)
        del cascade  # keep only this stage's model in memory

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        n = _n_rows(batch)
        n_classes = self.classes.size
        if self.s == 0:
            exit_stage = np.where(_bad_rows(batch), _SKIPPED, _PENDING).astype(np.intp)
            scores = np.zeros((n, n_classes))
            confidence = np.full(n, np.nan)
            cost = np.zeros(n)
        else:
            exit_stage = np.array(batch[_EXIT], dtype=np.intp)
            scores = np.array(batch[_SCORES], dtype=np.float64).reshape(n, n_classes)
            confidence = np.array(batch[_CONF], dtype=np.float64)
            cost = np.array(batch[_COST], dtype=np.float64)
        pending = np.flatnonzero(exit_stage == _PENDING)
        for rows, X in _groups(batch, self.spec, pending, self.feature_names):
            raw = self.stage.predict_proba(X)
            proba = _routing.check_stage_proba(
                raw,
                n_samples=rows.size,
                n_classes=n_classes,
                stage_name=self.names[self.s],
                columns=self.columns,
            )
            step = _engine.fold_stage(self.rule, self.s, proba, scores[rows], self.weight)
            cost[rows] += self.cost
            done, stay = rows[step.done], rows[~step.done]
            exit_stage[done] = self.s
            confidence[done] = step.confidence[step.done]
            scores[done] = step.decided
            if step.carried is not None:
                scores[stay] = step.carried
        if self.last:
            return self._finish(batch, exit_stage, scores, confidence, cost)
        out = dict(batch)
        out.update({_SCORES: scores, _EXIT: exit_stage, _CONF: confidence, _COST: cost})
        if len(self.spec.input_columns) == 1:
            out[self.spec.input_columns[0]] = _drop_decided(
                batch[self.spec.input_columns[0]], exit_stage != _PENDING
            )
        return out

    def _finish(
        self,
        batch: Mapping[str, Any],
        exit_stage: np.ndarray[Any, Any],
        scores: np.ndarray[Any, Any],
        confidence: np.ndarray[Any, Any],
        cost: np.ndarray[Any, Any],
    ) -> dict[str, Any]:
        bad = exit_stage == _SKIPPED
        routed = np.flatnonzero(~bad)
        index = np.zeros(exit_stage.size, dtype=np.intp)
        proba = np.full(scores.shape, np.nan)
        if routed.size:
            index[routed], proba[routed] = _engine.decide(scores[routed])
        return _output(
            batch,
            self.spec,
            labels=_labels(self.classes, index, bad),
            confidence=confidence,
            exit_stage=np.where(bad, -1, exit_stage),
            names=self.names,
            cost=cost,
            proba=proba if self.spec.proba else None,
        )


def _drop_decided(values: Any, decided: np.ndarray[Any, Any]) -> Any:
    """The input column with the rows already decided replaced by empty arrays."""
    if not decided.any():
        return values
    out = np.empty(len(values), dtype=object)
    for i in range(len(values)):
        item = np.asarray(values[i])
        out[i] = np.empty((0,) * item.ndim, dtype=item.dtype) if decided[i] else item
    return out


# --------------------------------------------------------------------------- entry points
def _per_stage(value: Any, n_stages: int, name: str) -> list[Any]:
    if isinstance(value, list):
        if len(value) != n_stages:
            msg = f"{name} has {len(value)} values but the cascade has {n_stages} stages"
            raise PolicyError(msg)
        return value
    return [value] * n_stages


def _check_concurrency(value: Any, name: str) -> int | tuple[int, int]:
    if isinstance(value, tuple):
        low, high = (check_positive_int(v, name) for v in value)
        if len(value) != 2 or low > high:  # noqa: PLR2004 - (min, max)
            msg = f"{name} must be a number of actors or (min, max) with min <= max, got {value!r}"
            raise PolicyError(msg)
        return (low, high)
    return check_positive_int(value, name)


def _check_resource(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        msg = f"{name} must be a number >= 0, got {value!r}"
        raise PolicyError(msg)
    return float(value)


def route_dataset(
    dataset: Any,
    model: str | os.PathLike[str],
    *,
    input_columns: str | Sequence[str] = "image",
    passthrough: Sequence[str] | None = None,
    mode: Mode = "cascade",
    concurrency: int | tuple[int, int] | list[int | tuple[int, int]] = 1,
    batch_size: int | list[int] = 64,
    num_gpus: float | list[float] = 0,
    num_cpus: float | list[float] = 1,
    proba: bool = False,
    device: str | None = None,
    load_options: Mapping[str, Any] | None = None,
    ray_remote_args: Mapping[str, Any] | None = None,
) -> Any:
    """Add a saved cascade to a Ray ``Dataset``: one output row per input row, lazily.

    Args:
        dataset: a ``ray.data.Dataset`` (for example from
            [`read_images`][cascademl.ray_data.read_images] or ``ray.data.read_images(...,
            include_paths=True)``).
        model: the folder of a cascade saved with
            [`save_cascade`][cascademl.io.save_cascade], readable on every node (a shared
            file system), or a URI ``pyarrow.fs`` opens (``s3://``, ``gs://``, ``file://``),
            copied into a temporary folder by each actor.
        input_columns: the column the stages take (images: uint8 arrays of shape (height,
            width, channels), as Ray reads them, or (channels, height, width)); or several
            columns of numbers, joined into the feature matrix (a DataFrame when the
            cascade was fitted with feature names).
        passthrough: the columns copied to the output (ids, paths); ``None`` copies every
            column except the input columns.
        mode: ``"cascade"`` (one actor pool) or ``"stages"`` (a pool per stage).
        concurrency: actors per pool, or ``(min, max)`` for an autoscaling pool; with
            ``mode="stages"``, one value for every stage or a list with one per stage.
        batch_size: rows per batch handed to an actor (per stage as a list with
            ``mode="stages"``).
        num_gpus: GPUs reserved per actor (fractions share a GPU), per stage as a list.
        num_cpus: CPUs reserved per actor, per stage as a list.
        proba: add the ``proba`` column (final combined probabilities).
        device: torch device of the stages in the actors (``"cuda"`` with ``num_gpus``);
            ``None`` keeps the saved one.
        load_options: more keywords for [`load_cascade`][cascademl.io.load_cascade]
            (``trusted``, ``allow_pickle``).
        ray_remote_args: more Ray actor options for ``map_batches`` (e.g.
            ``{"max_restarts": 0}``; by default Ray restarts a dead actor and retries its
            batches).

    Returns:
        The output ``ray.data.Dataset`` (see the module's description for its columns).

    Raises:
        ImportError: if Ray Data is not installed.
        PolicyError: for an invalid mode, count, batch size or resource.
        SerializationError: with ``mode="stages"``, if ``model`` holds no saved cascade
            (with ``mode="cascade"`` the actors report it when the dataset runs).
    """
    _ray()
    require("ray.data", "ray", purpose="cascademl.ray_data")
    if mode not in _MODES:
        msg = f"mode must be one of {_MODES}, got {mode!r}"
        raise PolicyError(msg)
    columns = (input_columns,) if isinstance(input_columns, str) else tuple(input_columns)
    if not columns or not all(isinstance(c, str) for c in columns):
        msg = f"input_columns must be a column name or a list of names, got {input_columns!r}"
        raise PolicyError(msg)
    options = dict(load_options or {})
    if device is not None:
        options["device"] = device
    spec = _Spec(
        model=os.fspath(model),
        load_options=options,
        input_columns=columns,
        passthrough=None if passthrough is None else tuple(passthrough),
        proba=bool(proba),
    )
    remote = dict(ray_remote_args or {})
    if mode == "cascade":
        return dataset.map_batches(
            _CascadeRouter,
            fn_constructor_kwargs={"spec": spec},
            batch_format="numpy",
            batch_size=check_positive_int(batch_size, "batch_size"),
            concurrency=_check_concurrency(concurrency, "concurrency"),
            num_gpus=_check_resource(num_gpus, "num_gpus"),
            num_cpus=_check_resource(num_cpus, "num_cpus"),
            **remote,
        )
    n_stages = _stage_count(model)
    sizes = _per_stage(batch_size, n_stages, "batch_size")
    pools = _per_stage(concurrency, n_stages, "concurrency")
    gpus = _per_stage(num_gpus, n_stages, "num_gpus")
    cpus = _per_stage(num_cpus, n_stages, "num_cpus")
    for s in range(n_stages):
        dataset = dataset.map_batches(
            _StageRunner,
            fn_constructor_kwargs={"spec": spec, "stage_index": s},
            batch_format="numpy",
            batch_size=check_positive_int(sizes[s], f"batch_size[{s}]"),
            concurrency=_check_concurrency(pools[s], f"concurrency[{s}]"),
            num_gpus=_check_resource(gpus[s], f"num_gpus[{s}]"),
            num_cpus=_check_resource(cpus[s], f"num_cpus[{s}]"),
            **remote,
        )
    return dataset


# --------------------------------------------------------------------------- images
def _decode(
    batch: dict[str, Any], *, size: tuple[int, int] | None, mode: str, skip_bad: bool
) -> dict[str, Any]:
    image_module = require("PIL.Image", "ray", purpose="decoding images")
    import io  # noqa: PLC0415 - only in the decoding tasks

    images: list[np.ndarray[Any, Any]] = []
    errors: list[str] = []
    for data, path in zip(batch["bytes"], batch["path"], strict=True):
        try:
            with image_module.open(io.BytesIO(data)) as opened:
                image = opened.convert(mode) if opened.mode != mode else opened
                if size is not None and image.size != (size[1], size[0]):
                    image = image.resize((size[1], size[0]), image_module.BILINEAR)
                array = np.asarray(image)
        except (OSError, ValueError, SyntaxError) as exc:  # what Pillow raises for bad files
            reason = f"{path}: cannot be decoded as an image ({type(exc).__name__}: {exc})"
            if not skip_bad:
                msg = reason + "; pass skip_bad=True to skip unreadable images and list them"
                raise ValueError(msg) from exc
            logger.warning("skipped %s", reason)
            channels = len(mode) if mode != "L" else 1
            shape = (0, 0, channels) if size is None else (*size, channels)
            images.append(np.zeros(shape, dtype=np.uint8))
            errors.append(reason)
            continue
        images.append(array if array.ndim == 3 else array[:, :, None])  # noqa: PLR2004 - HWC
        errors.append("")
    shapes = {a.shape for a in images}
    if len(shapes) == 1:
        column: Any = np.stack(images)
    else:
        column = np.empty(len(images), dtype=object)
        column[:] = images
    out: dict[str, Any] = {"image": column, "path": np.asarray(batch["path"], dtype=object)}
    if skip_bad:
        out[ERROR_COLUMN] = np.asarray(errors, dtype=object)
    return out


def read_images(
    paths: str | Sequence[str],
    *,
    size: tuple[int, int] | None = None,
    mode: str = "RGB",
    skip_bad: bool = False,
    **read_args: Any,
) -> Any:
    """Read image files as a Ray ``Dataset`` of ``image`` (uint8, HWC) and ``path`` columns.

    Like ``ray.data.read_images(paths, include_paths=True, size=..., mode=...)``, which
    `route_dataset` also takes, but a file that cannot be decoded is either an error that
    names it, or, with ``skip_bad=True``, a row whose ``error`` column says why (and a
    logged warning): `route_dataset` does not route it and passes the error on, so the
    output lists every skipped file. The stages' own preprocessing (resize, crop,
    normalisation) runs in the actors; ``size`` only brings images of different sizes to
    one, so that they can be batched.

    Args:
        paths: files, folders or URIs, as for ``ray.data.read_binary_files``.
        size: ``(height, width)`` to resize every image to, or ``None`` to keep each size.
        mode: Pillow mode to convert to (``"RGB"``, ``"L"``...).
        skip_bad: keep unreadable files as rows with an ``error`` instead of failing.
        **read_args: more keywords for ``ray.data.read_binary_files``; by default
            ``file_extensions`` lists the usual image suffixes (as ``ray.data.read_images``).

    Returns:
        The ``ray.data.Dataset``.

    Raises:
        ImportError: if Ray Data is not installed.
    """
    _ray()
    data = require("ray.data", "ray", purpose="cascademl.ray_data")
    if size is not None and (
        len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size)  # noqa: PLR2004
    ):
        msg = f"size must be (height, width) of positive integers, got {size!r}"
        raise PolicyError(msg)
    read_args.setdefault("file_extensions", list(_IMAGE_EXTENSIONS))
    files = data.read_binary_files(paths, include_paths=True, **read_args)
    return files.map_batches(
        _decode,
        fn_kwargs={
            "size": None if size is None else tuple(size),
            "mode": mode,
            "skip_bad": skip_bad,
        },
        batch_format="numpy",
    )
