"""Writing a workspace file safely, and the per-file lock that keeps one syncer per file.

* :func:`atomic_write`: temp file in the same directory (a name the watcher ignores), ``fsync``,
  ``os.replace``, then ``fsync`` of the directory, so readers see the old or the new file, never half
  of one, and a crash cannot leave an empty TASKS.md.
* :class:`SyncLock`: an advisory ``flock`` on ``.<name>.lock`` next to the file, opened through
  :mod:`workspace_sync.safe_files` (never through a symlink, only a regular file). It is
  held for one sync cycle at a time, so several processes (service replicas, a ``queue-service sync``
  next to ``serve``) take turns instead of interleaving. A file lock was chosen over a Postgres
  advisory lock because it works the same for every backend (memory, flatfile, Postgres) and needs
  no connection held open; the cost is that replicas must share the workspace through one machine's
  file system (a network file system must honour ``flock``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import fnmatch
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from queue_service import exceptions
from queue_service.workspaces import Confined
from workspace_sync import safe_files

__all__ = [
    "TEMP_SUFFIX",
    "SyncLock",
    "atomic_write",
    "content_hash",
    "is_ignored_name",
    "lock_path",
]

#: Suffix of our temp files (``.TASKS.md.<hex>.qs-tmp``).
TEMP_SUFFIX = safe_files.TEMP_SUFFIX

#: Names editors and tools create next to a file while saving; never a reason to sync.
_IGNORED = (
    "*.swp",
    "*.swx",
    "*.swo",
    ".*.sw?",
    "*~",
    "*.tmp",
    "*.temp",
    "*.bak",
    "*.orig",
    "4913",
    ".#*",
    "#*#",
    "*.lock",
    "*" + TEMP_SUFFIX,
    ".~lock.*",
    "*.kate-swp",
)


def is_ignored_name(name: str) -> bool:
    """Whether a file name is an editor swap/backup/temp file, a lock file or one of our temp files."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in _IGNORED)


def content_hash(data: bytes) -> str:
    """The hash used to recognise our own writes (sha256, hex)."""
    return hashlib.sha256(data).hexdigest()


def lock_path(path: Path) -> Path:
    """The lock file guarding *path*: ``.<name>.lock`` in the same directory."""
    return path.parent / f".{path.name}.lock"


def atomic_write(path: Path, data: bytes) -> None:
    """Replace *path* with *data* atomically and durably (keeps the old file's permission bits).

    Raises:
        OSError: the directory is missing or not writable (the old file is left as it was).
    """
    directory = path.parent
    tmp = directory / f".{path.name}.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}"
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # the rename itself is only durable once the directory entry is on disk
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class SyncLock:
    """The cross-process lock of one workspace file (see the module docstring).

    Args:
        path: the TASKS.md file it guards (a plain path trusts its directory; the sync passes a
            :class:`~queue_service.workspaces.Confined` one).
        timeout: how long :meth:`hold` waits before raising.
    """

    def __init__(self, path: Path | Confined, timeout: float = 30.0) -> None:
        self.target = path if isinstance(path, Confined) else Confined.of(path)
        self.path = lock_path(self.target.path)
        self.timeout = timeout

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Hold the lock for the duration of the block; polls without blocking the event loop.

        Raises:
            Conflict: another process held it for longer than ``timeout``.
            BackendError: the lock file cannot be created (e.g. the directory is read-only).
            UnsafeFile: the lock file is a symlink or not a regular file.
        """
        try:
            fd = await asyncio.to_thread(safe_files.open_lock_file, self.target, self.path.name)
        except OSError as exc:
            raise exceptions.BackendError(f"cannot create the sync lock {self.path}: {exc}") from exc
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.timeout
            delay = 0.005
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if loop.time() >= deadline:
                        raise exceptions.Conflict(
                            f"another process is syncing {self.target.path} "
                            f"(lock {self.path} held for over {self.timeout:.0f}s)",
                            lock=str(self.path),
                        ) from None
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.1)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
