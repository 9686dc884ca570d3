"""Translate OSError and friends into the queue-service error tree (STYLE rule 12).

No ``OSError`` leaves ``flatfile/``: every entry point that touches the disk runs inside
:func:`wrap_errors`, which keeps our own errors as they are and chains the original (``from exc``).
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path

from queue_service import exceptions

__all__ = ["corrupt", "wrap_errors"]

#: errno values meaning "this data dir cannot serve requests right now" (503, not a bug).
_UNAVAILABLE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})


@contextlib.contextmanager
def wrap_errors(what: str) -> Iterator[None]:
    """Run a block of file IO, mapping ``OSError`` to BackendUnavailable/BackendError.

    Args:
        what: a short description of the operation for the message ("claim in project web").
    """
    try:
        yield
    except exceptions.QueueServiceError:
        raise
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        message = f"flatfile backend: {what} failed: {exc.strerror or exc}{where}"
        if exc.errno in _UNAVAILABLE:
            raise exceptions.BackendUnavailable(message, errno=exc.errno) from exc
        raise exceptions.BackendError(message, errno=exc.errno) from exc


def corrupt(path: Path, problem: str, line: int | None = None) -> exceptions.CorruptData:
    """A CorruptData naming the file (and line) and the problem; the file is left untouched."""
    where = f"{path} line {line}" if line is not None else str(path)
    return exceptions.CorruptData(
        f"{where}: {problem} (the file was left untouched; repair or restore it)",
        file=str(path),
        line=line,
        problem=problem,
    )
