"""One run at a time per results folder: an advisory lock on ``OUT/.lock``.

The lock is ``fcntl.flock`` on the file, which the system releases when the process ends,
however it ends; a lock file left behind by a killed run is therefore harmless (the next
run takes the lock on it). The file holds the holder's pid, host, start time and command,
for the error a second run gets.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import functools
import json
import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

LOCK_NAME = ".lock"


class OutputFolderBusyError(RuntimeError):
    """Another process is writing into the same results folder."""


_held: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("_held", default=None)

_F = TypeVar("_F", bound=Callable[..., Any])


def releases_output_locks(func: _F) -> _F:
    """Decorate a function that calls `lock_output`: its locks end when the call does."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _lock_scope():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def _lock_scope() -> Iterator[None]:
    token = _held.set([])
    try:
        yield
    finally:
        for fd in _held.get() or []:
            os.close(fd)  # releases the lock
        _held.reset(token)


@contextlib.contextmanager
def locked_output(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold the results folder's lock for the duration of the block (see `lock_output`)."""
    with _lock_scope():
        yield lock_output(folder)


def lock_output(folder: str | os.PathLike[str]) -> Path:
    """Lock the results folder until the enclosing `releases_output_locks` call ends.

    Args:
        folder: The results folder (created if needed).

    Returns:
        The lock file's path.

    Raises:
        OutputFolderBusyError: At once, when another process holds the lock; the message
            names it (pid, host, start time, command).
        RuntimeError: Outside a function decorated with `releases_output_locks` (or a
            `locked_output` block): the lock would never be released.
    """
    held = _held.get()
    if held is None:
        msg = "lock_output needs an enclosing releases_output_locks function or locked_output"
        raise RuntimeError(msg)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    try:
        import fcntl  # noqa: PLC0415 - POSIX only
    except ImportError:  # pragma: no cover - Windows: no lock
        return path
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        msg = (
            f"{out} is in use by another run ({_describe(path)}); wait for it to end, "
            "or choose another --out"
        )
        raise OutputFolderBusyError(msg) from None
    held.append(fd)
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([sys.executable, *sys.argv]),
    }
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(holder) + "\n").encode())
    return path


def _describe(path: Path) -> str:
    try:
        holder: Any = json.loads(path.read_text(encoding="utf-8"))
        return (
            f"pid {holder['pid']} on {holder['host']}, started {holder['started']}: "
            f"{holder['command']}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "holder not recorded yet"
