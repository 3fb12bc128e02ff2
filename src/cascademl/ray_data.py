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
  `cascademl._engine.fold_stage`, so both modes return what
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
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np

from cascademl._images import to_uint8_image
from cascademl._optional import require
from cascademl._ray_actors import ERROR_COLUMN, _CascadeRouter, _is_uri, _Spec, _StageRunner
from cascademl._validation import check_positive_int
from cascademl.exceptions import (
    ClusterResourceError,
    ClusterResourceWarning,
    PolicyError,
    SerializationError,
)

__all__ = ["OUTPUT_COLUMNS", "Mode", "read_images", "route_dataset"]

logger = logging.getLogger(__name__)

#: ``"cascade"``: one actor pool, every stage in each actor; ``"stages"``: a pool per stage.
Mode: TypeAlias = Literal["cascade", "stages"]
_MODES: tuple[Mode, ...] = ("cascade", "stages")
#: The columns `route_dataset` adds, in order (``proba`` and ``error`` only when asked for).
OUTPUT_COLUMNS = ("label", "confidence", "exit_stage", "stage_name", "cost")
#: The file suffixes `read_images` reads unless told otherwise.
_IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "tif", "tiff", "bmp", "gif", "webp")

#: The first Ray that sizes actor pools with ``compute=`` rather than ``concurrency=``.
_COMPUTE_SINCE = (2, 51)

#: Slack when comparing summed fractional reservations with the cluster's resources.
_RESOURCE_TOL = 1e-9

_CONFIG_FILE = "cascade.json"  # as cascademl.io.CONFIG_FILE, without importing torch here


def _ray() -> Any:
    return require("ray", "ray", purpose="cascademl.ray_data")


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


# --------------------------------------------------------------------------- entry points
def _per_stage(value: Any, n_stages: int, name: str) -> list[Any]:
    if isinstance(value, list):
        if len(value) != n_stages:
            msg = f"{name} has {len(value)} values but the cascade has {n_stages} stages"
            raise PolicyError(msg)
        return value
    return [value] * n_stages


def _pool_size(value: Any, name: str) -> int | tuple[int, int]:
    """A pool's number of actors, or ``(min, max)`` for an autoscaling pool."""
    if isinstance(value, tuple):
        if len(value) != 2:  # noqa: PLR2004 - (min, max)
            msg = f"{name} must be a number of actors or (min, max), got {value!r}"
            raise PolicyError(msg)
        low, high = (check_positive_int(v, name) for v in value)
        if low > high:
            msg = f"{name} must be (min, max) with min <= max, got {value!r}"
            raise PolicyError(msg)
        return (low, high)
    return check_positive_int(value, name)


def _actor_pool(size: int | tuple[int, int]) -> dict[str, Any]:
    """The ``map_batches`` keyword that sizes an actor pool: ``compute`` since Ray 2.51.

    Ray 2.51 deprecated ``concurrency=`` for actor pools in favour of
    ``compute=ActorPoolStrategy(...)``; older Ray (2.40 to 2.50) warned about ``compute=``
    instead, so the keyword follows the installed version.
    """
    ray = _ray()
    if _version(ray.__version__) < _COMPUTE_SINCE:
        return {"concurrency": size}
    strategy = ray.data.ActorPoolStrategy
    if isinstance(size, tuple):
        return {"compute": strategy(min_size=size[0], max_size=size[1])}
    return {"compute": strategy(size=size)}


@dataclass(frozen=True, slots=True)
class _Pool:
    """What one actor pool reserves before it starts: its minimum actors, each's CPUs/GPUs."""

    name: str
    size: int | tuple[int, int]
    num_cpus: float
    num_gpus: float

    @property
    def actors(self) -> int:
        """The actors the pool starts with (its minimum when it autoscales)."""
        return self.size[0] if isinstance(self.size, tuple) else self.size

    def reserves(self, resource: str) -> float:
        """What the pool's starting actors reserve of ``"CPU"`` or ``"GPU"``."""
        return self.actors * (self.num_cpus if resource == "CPU" else self.num_gpus)

    def describe(self, resource: str) -> str:
        """``"stage 1: 2 actors x 0.5 CPU"``."""
        amount = self.num_cpus if resource == "CPU" else self.num_gpus
        plural = "actor" if self.actors == 1 else "actors"
        return f"{self.name}: {self.actors} {plural} x {amount:g} {resource}"


def _check_cluster(pools: Sequence[_Pool], mode: Mode) -> None:
    """Refuse pools the Ray cluster cannot hold; warn when they leave no CPU for tasks.

    A pool whose actors cannot all reserve their CPUs or GPUs never starts, and Ray Data
    then waits for it without a message. Ray Data's own tasks (reading, decoding,
    ``repartition``) reserve one CPU each by default, so pools that leave less than one
    CPU can stall the pipeline too.
    """
    ray = _ray()
    if not ray.is_initialized():
        logger.info("Ray is not started yet: the actor pools' resources are not checked")
        return
    total = ray.cluster_resources()
    free = ray.available_resources()
    actors = sum(p.actors for p in pools)
    for resource in ("CPU", "GPU"):
        need = sum(p.reserves(resource) for p in pools)
        have = float(total.get(resource, 0.0))
        if need > have + _RESOURCE_TOL:
            detail = "; ".join(p.describe(resource) for p in pools)
            msg = (
                f"the actor pools ask for {need:g} {resource}s ({detail}) but the Ray "
                f"cluster has {have:g}: a pool that cannot reserve them never starts, and the "
                f"dataset would wait for it without end. {_way_out(resource, have, actors, mode)}"
            )
            raise ClusterResourceError(msg)
        if need > float(free.get(resource, 0.0)) + _RESOURCE_TOL:
            logger.warning(
                "the actor pools ask for %g %ss but only %g are free now: they start when "
                "the work holding the rest of the cluster's %g ends",
                need, resource, float(free.get(resource, 0.0)), have,
            )  # fmt: skip
    need = sum(p.reserves("CPU") for p in pools)
    have = float(total.get("CPU", 0.0))
    if have - need < 1.0 - _RESOURCE_TOL:
        detail = "; ".join(p.describe("CPU") for p in pools)
        warnings.warn(
            f"the actor pools hold {need:g} of the Ray cluster's {have:g} CPUs ({detail}), "
            f"leaving {max(have - need, 0.0):g}: Ray Data's tasks (reading, decoding, "
            "repartition) reserve one CPU each by default and wait while the actors hold "
            f"the rest, which can stall the run. {_way_out('CPU', have, actors, mode)}",
            ClusterResourceWarning,
            stacklevel=3,
        )


def _way_out(resource: str, have: float, actors: int, mode: Mode) -> str:
    """What to change so that the pools fit, with a per-actor reservation that does."""
    if resource == "CPU":
        share = math.floor(100 * (have - 1.0 if have > 1.0 else have) / actors) / 100
        fits = (
            f"num_cpus={share:g} per actor leaves one CPU for the pipeline's tasks"
            if share > 0
            else "reserve fewer CPUs per actor"
        )
        first = f"Reserve fewer CPUs per actor ({fits})"
    elif have > 0:
        first = (
            f"Reserve fewer GPUs per actor (fractions share a GPU: num_gpus="
            f"{math.floor(100 * have / actors) / 100:g}), or num_gpus=0 to run on CPUs"
        )
    else:
        first = "Run the stages on CPUs (num_gpus=0: the cluster has no GPU)"
    stages = ", use mode='cascade' (one pool that holds every stage)" if mode == "stages" else ""
    return (
        f"{first}, start fewer actors (concurrency){stages}, or add nodes; on an "
        "autoscaling cluster that will add them, pass check_resources=False."
    )


def _version(text: str) -> tuple[int, int]:
    """``(major, minor)`` of a version string; a newer Ray's when it cannot be read."""
    try:
        major, minor = text.split(".")[:2]
        return (int(major), int(minor))
    except ValueError:
        return _COMPUTE_SINCE


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
    check_resources: bool = True,
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
            Given to Ray Data as ``compute=ray.data.ActorPoolStrategy(...)`` (Ray 2.51 and
            later; ``concurrency=`` before, as each version expects).
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
        check_resources: compare what the pools reserve (each pool's actors, or its
            minimum, times ``num_cpus`` and ``num_gpus``; every pool at once with
            ``mode="stages"``) with ``ray.cluster_resources()`` before the run, when Ray is
            started. ``False`` skips it, for an autoscaling cluster that will add the
            nodes the pools need.

    Returns:
        The output ``ray.data.Dataset`` (see the module's description for its columns).

    Raises:
        ImportError: if Ray Data is not installed.
        PolicyError: for an invalid mode, count, batch size or resource.
        SerializationError: with ``mode="stages"``, if ``model`` holds no saved cascade
            (with ``mode="cascade"`` the actors report it when the dataset runs).
        ClusterResourceError: when the pools ask for more CPUs or GPUs than the Ray
            cluster has (a pool that cannot start would leave the run waiting without
            end); the message names the shortfall and the ways out.

    Warns:
        ClusterResourceWarning: when the pools leave less than one of the cluster's CPUs
            for Ray Data's tasks (reading, decoding, ``repartition``), which can stall the
            run. Pools that fit the cluster but not what is free now are logged.
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
        pool = _Pool(
            "the pool",
            _pool_size(concurrency, "concurrency"),
            _check_resource(num_cpus, "num_cpus"),
            _check_resource(num_gpus, "num_gpus"),
        )
        size = check_positive_int(batch_size, "batch_size")
        if check_resources:
            _check_cluster([pool], mode)
        return dataset.map_batches(
            _CascadeRouter,
            fn_constructor_kwargs={"spec": spec},
            batch_format="numpy",
            batch_size=size,
            **_actor_pool(pool.size),
            num_gpus=pool.num_gpus,
            num_cpus=pool.num_cpus,
            **remote,
        )
    n_stages = _stage_count(model)
    batches = _per_stage(batch_size, n_stages, "batch_size")
    counts = _per_stage(concurrency, n_stages, "concurrency")
    gpus = _per_stage(num_gpus, n_stages, "num_gpus")
    cpus = _per_stage(num_cpus, n_stages, "num_cpus")
    pools = [
        _Pool(
            f"stage {s}",
            _pool_size(counts[s], f"concurrency[{s}]"),
            _check_resource(cpus[s], f"num_cpus[{s}]"),
            _check_resource(gpus[s], f"num_gpus[{s}]"),
        )
        for s in range(n_stages)
    ]
    sizes = [check_positive_int(b, f"batch_size[{s}]") for s, b in enumerate(batches)]
    if check_resources:
        _check_cluster(pools, mode)
    for s, pool in enumerate(pools):
        dataset = dataset.map_batches(
            _StageRunner,
            fn_constructor_kwargs={"spec": spec, "stage_index": s},
            batch_format="numpy",
            batch_size=sizes[s],
            **_actor_pool(pool.size),
            num_gpus=pool.num_gpus,
            num_cpus=pool.num_cpus,
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
                image = to_uint8_image(opened, mode)  # 16-bit images scaled, not clipped
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
        mode: Pillow mode to convert to (``"RGB"``, ``"L"``...); 16-bit and float
            images are scaled to 8 bits (`cascademl.torch_stage.to_uint8_image`).
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
