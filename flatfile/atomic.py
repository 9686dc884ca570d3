"""Durable file primitives: atomic replace, durable append, directory fsync.

The replace sequence is litestar ``FileStore._write_sync`` (``mkstemp`` in the target directory,
write, ``os.replace``, unlink the temp file if the rename did not happen) plus the two steps it
lacks for durability: ``fsync`` of the file before the rename and of the directory after it. Temp
files are named ``.<name>.<random>.tmp`` so workspace watchers can ignore them.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

__all__ = ["append_durable", "ensure_dir", "fsync_dir", "write_all", "write_atomic"]


def fsync_dir(path: Path) -> None:
    """Make the directory entries of *path* (creations, renames, unlinks) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path) -> None:
    """Create *path* (and parents) if missing, fsyncing each parent whose entries changed."""
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir()
        fsync_dir(directory.parent)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a regular-file write may be short)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_atomic(path: Path, chunks: bytes | Iterable[bytes]) -> int:
    """Replace *path* with *chunks* atomically and durably; returns the number of bytes written.

    A reader sees either the old file or the complete new one, never a mix; after return the new
    content survives a crash or power loss.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    size = 0
    try:
        try:
            for chunk in [chunks] if isinstance(chunks, bytes) else chunks:
                write_all(fd, chunk)
                size += len(chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return size


def append_durable(fd: int, data: bytes, undo_to: int) -> None:
    """Append *data* to the ``O_APPEND`` file *fd* and flush it to disk.

    If the write or the flush fails, the file is cut back to *undo_to* bytes (best effort) so a
    failed append never becomes visible to other processes, then the error is re-raised.
    """
    try:
        write_all(fd, data)
        os.fdatasync(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, undo_to)
        raise
