"""The folder side of a saved cascade: reading it safely, and what a save carries over.

``_FolderReader`` reads only regular files of one
folder, through one handle on it, so a save that swaps the folder meanwhile is noticed
(``_FolderReplacedError``) instead of mixing two cascades.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import math
import os
import re
import shutil
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path

from cascademl._io_format import CONFIG_FILE, TENSORS_FILE
from cascademl.exceptions import CascadeMLWarning, SerializationError

_OWN_STAGE_FILE = re.compile(r"stage_[0-9]+\.(pkl|skops)")


class _FolderReplacedError(Exception):
    """A file vanished because a save replaced the folder while it was read: try again."""


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
