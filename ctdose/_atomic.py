"""Atomic file writes: write beside the target, then rename onto it.

A reader (or a crash) sees either the previous complete file or the new complete file,
never a half-written one: ``os.replace`` is atomic on POSIX and Windows. When a write fails
(a folder in the way, a write-protected target, no permission, a full disk, text that the
encoding cannot hold), the target is left as it was and the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from .errors import CtdoseError, InputError, OutputError

__all__ = ["atomic_path", "atomic_remove_folder", "atomic_write_text", "atomic_write_csv"]

#: Permission bits of a file that someone may write; a file with none of them is write-protected.
_WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
#: Error numbers that mean the folder refuses new files (the message then names the folder).
_FOLDER_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


def _unchanged(existed: bool) -> str:
    return "the existing file is unchanged" if existed else "nothing was written"


def _check_target(path: Path) -> int | None:
    """Refuse a target that cannot be replaced; return the permission bits of an existing file.

    Raises
    ------
    OutputError
        ``path`` is a folder, a file stands where one of its folders should be, or ``path``
        is write-protected: no write permission for this user, or no write bit at all (mode
        0444, refused even where the super-user could write it).
    """
    try:
        if path.is_dir():
            raise OutputError(f"{path}: is a folder, not a file; nothing was written")
        for folder in path.parents:  # nearest first; the first one that exists must be a folder
            if folder.exists():
                if not folder.is_dir():
                    raise OutputError(f"{path}: cannot write the file: {folder} is a file, not a folder")
                break
        if not path.exists():
            return None
        mode = path.stat().st_mode
    except OSError as exc:
        if isinstance(exc, CtdoseError):
            raise
        raise OutputError(f"{path}: cannot write the file ({exc.strerror or exc}); nothing was written") from exc
    if not os.access(path, os.W_OK) or not mode & _WRITE_BITS:
        raise OutputError(
            f"{path}: the file is write-protected (mode {stat.S_IMODE(mode):04o}); make it writable "
            "(chmod u+w) or remove it to replace it; the existing file is unchanged"
        )
    return stat.S_IMODE(mode)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` when the block succeeds.

    Parameters
    ----------
    path : str or PathLike
        The target file. Missing parent folders are created (before the block runs). An
        existing file keeps its permission bits.

    Yields
    ------
    Path
        A hidden temporary file in the target's folder for the block to write.

    Raises
    ------
    OutputError
        The target is a folder, a file stands where one of its folders should be, the target
        is write-protected, or the operating system refuses (a read-only folder, a full
        disk): the message names the target (not the temporary file) and the ``OSError`` is
        chained. The target is unchanged and no temporary file is left in every such case,
        and also when the block raises anything else.
    """
    path = Path(path)
    old_mode = _check_target(path)
    existed = old_mode is not None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"{path}: cannot create its folder {path.parent} ({exc.strerror or exc}); nothing was written"
        ) from exc
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        try:
            yield tmp
            if old_mode is not None:
                os.chmod(tmp, old_mode)
            os.replace(tmp, path)
        except OSError as exc:
            if isinstance(exc, CtdoseError):
                raise
            where = f" in the folder {path.parent}" if exc.errno in _FOLDER_DENIED else ""
            if isinstance(exc, IsADirectoryError):
                where = " (a folder now stands there)"
            raise OutputError(
                f"{path}: cannot write the file ({exc.strerror or exc}{where}); {_unchanged(existed)}"
            ) from exc
    finally:
        with contextlib.suppress(OSError):  # never hide the error above behind a failed clean-up
            if tmp.exists():
                tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (``\\n`` line endings); returns the path.

    Missing parent folders are created.

    Raises
    ------
    InputError
        ``text`` has a character that ``encoding`` cannot hold; nothing is touched then.
    OutputError
        The file cannot be written (see :func:`atomic_path`); the target is unchanged.
    """
    try:
        data = text.encode(encoding)
    except UnicodeEncodeError as exc:
        raise InputError(
            f"{path}: cannot write {text[exc.start:exc.end]!r} (position {exc.start}) as {encoding} text; "
            "nothing was written"
        ) from exc
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return Path(path)


def atomic_write_csv(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a DataFrame as CSV (no index) atomically; returns the path.

    Missing parent folders are created.

    Raises
    ------
    OutputError
        The file cannot be written (see :func:`atomic_path`); the target is unchanged.
    """
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return Path(path)


def atomic_remove_folder(path: str | os.PathLike) -> None:
    """Remove a folder as one step: renamed to a hidden ``.trash-<name>-<token>`` beside it
    first (readers then no longer see it), then deleted. An interruption leaves the hidden
    folder, which the store's clean-up (and ``ctdose prune``) removes."""
    path = Path(path)
    trash = path.with_name(f".trash-{path.name}-{uuid.uuid4().hex[:8]}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)
