"""Training on several processes started by ``torchrun``: ranks, the process group, rank 0.

``torchrun`` starts one process per GPU (or per CPU share) and tells each its place in the
environment: ``WORLD_SIZE`` processes in all, this one's ``RANK`` among them and its
``LOCAL_RANK`` on its machine. :func:`process_group` reads them, joins the group (gloo on
the CPU, NCCL on CUDA, where each process takes ``cuda:LOCAL_RANK``) and leaves it when
the block ends, also on an error. Without those variables, or with one process, nothing is
started and the run is the single-process one.

Rank 0 writes everything in the results folder (the split, the stain cache, the
checkpoints, the cascade, the report) and holds its lock; the other ranks only read what
rank 0 wrote, after a :func:`barrier`. With processes on several machines the results
folder must therefore be on a filesystem they all see.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar, cast

import torch
import torch.distributed as dist

from cascademl.inference import resolve_device

__all__ = [
    "Ranks",
    "barrier",
    "broadcast",
    "current",
    "from_environment",
    "main_first",
    "process_group",
    "readable",
    "share",
]

logger = logging.getLogger(__name__)

#: How long a process waits at a collective for the others. Rank 0 alone builds the stain
#: cache and, after training, tunes and evaluates the cascade while the others wait; on a
#: CPU that takes minutes, longer than NCCL's default of 10 minutes.
TIMEOUT: Final = dt.timedelta(hours=2)

_T = TypeVar("_T")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes.

    Attributes:
        rank: Global rank, ``0`` to ``world_size - 1``.
        world_size: Number of processes.
        local_rank: Rank on this machine (the GPU index it takes).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process is rank 0, the one that writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1


def _read(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        msg = f"environment variable {name} must be an integer (set by torchrun), got {raw!r}"
        raise ValueError(msg) from None


def from_environment(environ: Mapping[str, str] | None = None) -> Ranks:
    """Read ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` as torchrun sets them.

    Args:
        environ: The environment (default: ``os.environ``).

    Returns:
        The ranks; one process of rank 0 when the variables are absent.

    Raises:
        ValueError: A variable is not an integer, or the ranks are out of range.
    """
    env = os.environ if environ is None else environ
    world_size = _read(env, "WORLD_SIZE", 1)
    rank = _read(env, "RANK", 0)
    local_rank = _read(env, "LOCAL_RANK", rank)
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        msg = (
            f"inconsistent torchrun environment: WORLD_SIZE={world_size}, RANK={rank}, "
            f"LOCAL_RANK={local_rank} (expected 0 <= RANK < WORLD_SIZE, LOCAL_RANK >= 0)"
        )
        raise ValueError(msg)
    return Ranks(rank, world_size, local_rank)


def current() -> Ranks:
    """The ranks of the running process group; one process of rank 0 without a group."""
    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    local = _read(os.environ, "LOCAL_RANK", dist.get_rank())
    return Ranks(dist.get_rank(), dist.get_world_size(), local)


def _device_for(device: str, ranks: Ranks) -> tuple[str, str]:
    """The device of this process and the backend of the group, from ``--device``."""
    resolved = resolve_device(device)
    if resolved.type == "cpu":
        return "cpu", "gloo"
    if resolved.type == "cuda":
        if device != "auto" and torch.device(device).index is not None:
            msg = (
                f"--device {device} names one GPU, but torchrun started {ranks.world_size} "
                "processes; give --device cuda (each process takes cuda:LOCAL_RANK)"
            )
            raise ValueError(msg)
        if ranks.local_rank >= torch.cuda.device_count():
            msg = (
                f"LOCAL_RANK={ranks.local_rank} but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s); start at most that many "
                "processes per node (--nproc-per-node)"
            )
            raise ValueError(msg)
        torch.cuda.set_device(ranks.local_rank)
        return f"cuda:{ranks.local_rank}", "nccl"
    msg = (
        f"--device {device}: training on several processes runs on cpu (gloo) or cuda "
        f"(NCCL), not on {resolved.type}"
    )
    raise ValueError(msg)


@contextlib.contextmanager
def process_group(device: str) -> Iterator[str]:
    """Join the torchrun process group for the block, when there are several processes.

    Args:
        device: The ``--device`` the user gave (``"cpu"``, ``"cuda"``, ``"auto"``...).

    Yields:
        The device this process trains on: ``device`` itself with one process,
        ``"cuda:LOCAL_RANK"`` or ``"cpu"`` with several.

    Raises:
        ValueError: Several processes with a device other than the CPU or CUDA, or one
            CUDA device named for all of them.
    """
    ranks = from_environment()
    if not ranks.distributed:
        yield device
        return
    own, backend = _device_for(device, ranks)
    # NCCL is bound to this process's GPU at once (barriers then know which one to use).
    bound = torch.device(own) if backend == "nccl" else None
    dist.init_process_group(backend, timeout=TIMEOUT, device_id=bound)
    logger.info(
        "rank %d of %d (local rank %d) on %s, %s backend",
        ranks.rank,
        ranks.world_size,
        ranks.local_rank,
        own,
        backend,
    )
    try:
        yield own
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (nothing without a process group)."""
    if current().distributed:
        dist.barrier()


def broadcast(value: _T) -> _T:
    """Return rank 0's ``value`` on every process (``value`` itself without a group).

    The value is pickled; the other ranks' ``value`` is ignored.
    """
    if not current().distributed:
        return value
    holder: list[object] = [value]
    dist.broadcast_object_list(holder, src=0)
    return cast("_T", holder[0])


def share(value: _T | None, kind: type[_T]) -> _T:
    """Return rank 0's ``value``, a ``kind``, on every process (the others pass ``None``).

    Raises:
        TypeError: What arrived is not a ``kind`` (rank 0 sent nothing).
    """
    received = broadcast(value)
    if not isinstance(received, kind):
        msg = f"rank {current().rank} expected a {kind.__name__} from rank 0, got {received!r}"
        raise TypeError(msg)
    return received


@contextlib.contextmanager
def main_first() -> Iterator[Ranks]:
    """Run the block on rank 0 first, then on the others (which then read what it wrote)."""
    ranks = current()
    if not ranks.main:
        barrier()
    yield ranks
    if ranks.main:
        barrier()


def readable(path: str | os.PathLike[str]) -> Path:
    """Check that a file rank 0 wrote is visible here; return its path.

    Raises:
        FileNotFoundError: The file is missing on this process's machine; the message
            says that the results folder must be shared.
    """
    file = Path(path)
    if not file.is_file():
        msg = (
            f"rank {current().rank} cannot see {file}, which rank 0 wrote: with processes "
            "on several machines, --out must be on a filesystem all of them share"
        )
        raise FileNotFoundError(msg)
    return file
