"""Write files and folders so that a reader sees the old content or the new one, never a mix.

Every writer here builds its output under a temporary name beside the target (hidden, with
the process id and a random token in it, so two processes never share one), flushes it to
disk with ``fsync``, then moves it onto the target with one rename. New files get the
permissions the process's umask gives (``0o666 & ~umask``), as ``open`` would.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_open",
    "atomic_path",
    "fsync_folder",
    "replace_folder",
    "temporary_sibling",
    "write_bytes",
    "write_text",
]


def temporary_sibling(path: str | os.PathLike[str], tag: str = "tmp") -> Path:
    """A hidden name beside ``path`` that no other process will pick.

    The name keeps ``path``'s suffix (``np.savez`` and ``savefig`` look at it), e.g.
    ``.metrics.json.tmp-4242-1f2e3d4c.json``.

    Args:
        path: the target.
        tag: a word saying what the temporary is for (``"tmp"``, ``"old"``).

    Returns:
        The temporary path (nothing is created).
    """
    target = Path(path)
    token = f"{tag}-{os.getpid()}-{secrets.token_hex(4)}"
    return target.with_name(f".{target.name}.{token}{target.suffix}")


def fsync_folder(folder: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (new names, renames) to disk, where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - folders cannot be opened on Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask_mode(path: Path) -> int:
    """Create ``path`` empty with mode 0o666, as ``open`` does; return the mode it got."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    os.close(fd)
    return stat.S_IMODE(path.stat().st_mode)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` in one rename.

    For writers that take a file name (``np.savez``, ``torch.save``, ``savefig``). The
    temporary file exists (empty) when yielded. If the block raises, the temporary file is
    removed and ``path`` is left as it was.

    Args:
        path: the file to write.

    Yields:
        The temporary path, in the same folder as ``path``.
    """
    target = Path(path)
    tmp = temporary_sibling(target)
    mode = _umask_mode(tmp)
    try:
        yield tmp
        tmp.chmod(mode)  # a writer that re-creates the file may give it other permissions
        _fsync_file(tmp)
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(target.parent)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str],
    mode: str = "w",
    *,
    encoding: str | None = "utf-8",
    newline: str | None = None,
) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; on success it replaces ``path`` in one rename.

    Args:
        path: the file to write.
        mode: ``"w"`` (text) or ``"wb"`` (bytes).
        encoding: for text mode.
        newline: for text mode (``""`` for the csv module).

    Yields:
        The open file.
    """
    binary = "b" in mode
    with (
        atomic_path(path) as tmp,
        tmp.open(
            mode, encoding=None if binary else encoding, newline=None if binary else newline
        ) as handle,
    ):
        yield handle


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see `atomic_path`)."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see `atomic_path`)."""
    with atomic_open(path, "w", encoding=encoding) as handle:
        handle.write(text)


def write_new_file(folder_fd_path: Path, data: bytes) -> None:
    """Create ``folder_fd_path`` (which must not exist), write ``data`` and fsync it."""
    fd = os.open(folder_fd_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_folder(new: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Move the finished folder ``new`` onto ``target``, replacing it if it exists.

    Two renames: the old folder is renamed aside (``.<name>.old-<pid>-<token>``), ``new``
    is renamed to ``target``, then the old folder is removed. Between the two renames
    (microseconds) ``target`` does not exist; a process killed there leaves the old folder
    under the aside name, where a reader can still find it. ``new`` should be on the same
    file system as ``target`` (made with `temporary_sibling`).

    Args:
        new: the folder to move in (fsynced by its writer).
        target: the folder to replace.
    """
    new, target = Path(new), Path(target)
    fsync_folder(new)
    old: Path | None = None
    if target.is_dir() and not target.is_symlink():
        old = temporary_sibling(target, "old")
        target.rename(old)
    try:
        new.rename(target)
    except BaseException:
        if old is not None:
            old.rename(target)
        raise
    fsync_folder(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
