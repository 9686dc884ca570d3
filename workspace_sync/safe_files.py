"""Opening workspace files so that a hostile workspace cannot turn the service (issue 9).

Everything in a workspace may have been put there by someone else: a ``qs run`` child runs there,
and a project admin chooses where it is. So every file the sync touches is reached from a trusted
directory (:class:`~queue_service.workspaces.Confined`: ``QUEUE_WORKSPACE`` or, in operator mode,
the workspace itself) by an ``openat`` walk:

* every directory below the base is opened with ``O_NOFOLLOW | O_DIRECTORY``: a symlinked directory
  on the way is refused, and a link swapped in after a check cannot redirect the next step;
* files are opened with ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO opens without waiting for a writer),
  then ``fstat``: anything but a regular file (FIFO, device, socket) is refused, and a symlink
  (to ``/dev/zero``, to another project's TASKS.md, to a victim of a truncating lock) never opens;
* reads stop at a size cap (checked on ``st_size`` first, then while reading);
* writes go to a temp file created ``O_EXCL | O_NOFOLLOW`` in the opened directory and are renamed
  over the target relative to that directory's descriptor.

All functions block: callers run them with ``asyncio.to_thread``. Refusals raise :class:`UnsafeFile`
(a message for the sync status); a missing file is ``FileNotFoundError``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid

from queue_service.workspaces import Confined

__all__ = [
    "MAX_FILE_BYTES",
    "UnsafeFile",
    "directory_problem",
    "ensure_directory",
    "entry_exists",
    "is_regular_file",
    "open_lock_file",
    "read_file",
    "write_atomic",
]

#: largest TASKS.md the sync reads (a 10,000-task file is about 2 MB)
MAX_FILE_BYTES = 16 * 1024 * 1024
#: suffix of the temp files written next to a target (the watcher and editors' globs ignore it)
TEMP_SUFFIX = ".qs-tmp"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class UnsafeFile(Exception):
    """A path the sync refuses to use (a symlink, not a regular file, too large)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _refusal(dir_fd: int, name: str, shown: str, exc: OSError) -> UnsafeFile | OSError:
    """Turn an ``O_NOFOLLOW``/``O_DIRECTORY`` failure into a clear refusal (other errors pass through)."""
    if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return exc
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except OSError:
        return exc
    if stat.S_ISLNK(mode):
        return UnsafeFile(f"{shown} is a symlink: refused (workspace files and directories are never followed)")
    return UnsafeFile(f"{shown} is not a directory: refused")


def _open_directory(target: Confined, count: int, *, create: bool = False) -> int:
    """A descriptor of ``base/parts[:count]``, each step opened without following links."""
    fd = os.open(target.base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, name in enumerate(target.parts[:count]):
            shown = str(target.base.joinpath(*target.parts[: i + 1]))
            try:
                step = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=fd)
                try:
                    step = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    raise _refusal(fd, name, shown, exc) from None
            except OSError as exc:
                raise _refusal(fd, name, shown, exc) from None
            os.close(fd)
            fd = step
    except BaseException:
        os.close(fd)
        raise
    return fd


def directory_problem(target: Confined) -> str | None:
    """Why the directory holding *target* cannot be used (missing, a link on the way, not writable), or None."""
    directory = target.path.parent
    try:
        fd = _open_directory(target, len(target.parts) - 1)
    except FileNotFoundError:
        return f"workspace directory {directory} does not exist"
    except UnsafeFile as exc:
        return exc.message
    except OSError as exc:
        return f"cannot open workspace directory {directory}: {exc.strerror or exc}"
    try:
        if not os.access(".", os.R_OK | os.W_OK | os.X_OK, dir_fd=fd):
            return f"workspace directory {directory} is not readable and writable"
        return None
    finally:
        os.close(fd)


def ensure_directory(target: Confined) -> None:
    """Create the directory *target* (and missing ones on the way) without following links."""
    os.close(_open_directory(target, len(target.parts), create=True))


def _open_regular(dir_fd: int, name: str, shown: str, flags: int, mode: int = 0o644) -> tuple[int, os.stat_result]:
    try:
        fd = os.open(name, flags | _FILE_FLAGS, mode, dir_fd=dir_fd)
    except OSError as exc:
        raise _refusal(dir_fd, name, shown, exc) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(f"{shown} is not a regular file: refused")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_file(target: Confined, max_bytes: int = MAX_FILE_BYTES) -> bytes | None:
    """The bytes of *target*, or None when it does not exist (its directory must).

    Raises:
        UnsafeFile: a symlink on the way or at the end, not a regular file, or over *max_bytes*.
        FileNotFoundError: a directory on the way is missing.
        OSError: anything else the file system says.
    """
    dir_fd = _open_directory(target, len(target.parts) - 1)
    try:
        try:
            fd, st = _open_regular(dir_fd, target.parts[-1], str(target.path), os.O_RDONLY)
        except FileNotFoundError:
            return None
    finally:
        os.close(dir_fd)
    try:
        too_large = UnsafeFile(f"{target.path} is larger than {max_bytes} bytes: refused")
        if st.st_size > max_bytes:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:  # it grew while we read
                raise too_large
    finally:
        os.close(fd)


def is_regular_file(target: Confined) -> bool:
    """Whether *target* is a regular file reached without links (False on any error: for status only)."""
    try:
        dir_fd = _open_directory(target, len(target.parts) - 1)
    except (OSError, UnsafeFile):
        return False
    try:
        st = os.stat(target.parts[-1], dir_fd=dir_fd, follow_symlinks=False)
        return stat.S_ISREG(st.st_mode)
    except OSError:
        return False
    finally:
        os.close(dir_fd)


def entry_exists(target: Confined) -> bool:
    """Whether something (file, directory, link) is at *target*, looked up without following any link.

    False when a directory on the way is missing, a link, or unreadable (layout discovery only).
    """
    try:
        dir_fd = _open_directory(target, len(target.parts) - 1)
    except (OSError, UnsafeFile):
        return False
    try:
        os.stat(target.parts[-1], dir_fd=dir_fd, follow_symlinks=False)
        return True
    except OSError:
        return False
    finally:
        os.close(dir_fd)


def write_atomic(target: Confined, data: bytes) -> None:
    """Replace *target* with *data*: temp file, ``fsync``, rename, directory ``fsync``; keeps the permission bits.

    Raises:
        UnsafeFile: a symlink on the way, or the current target is not a regular file.
        OSError: the directory is missing or not writable (the old file is left as it was).
    """
    name = target.parts[-1]
    dir_fd = _open_directory(target, len(target.parts) - 1)
    try:
        try:
            old = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if not stat.S_ISREG(old.st_mode):
                raise UnsafeFile(f"{target.path} is not a regular file: refused")
            mode = old.st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
        tmp = f".{name}.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        # the rename itself is only durable once the directory entry is on disk
        with contextlib.suppress(OSError):
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def open_lock_file(target: Confined, lock_name: str) -> int:
    """Open (creating it) the lock file *lock_name* next to *target*; a link or non-regular file is refused.

    Returns:
        A descriptor to ``flock`` (the caller closes it).
    """
    dir_fd = _open_directory(target, len(target.parts) - 1)
    try:
        shown = str(target.base.joinpath(*target.parts[:-1], lock_name))
        fd, _ = _open_regular(dir_fd, lock_name, shown, os.O_RDWR | os.O_CREAT)
        return fd
    finally:
        os.close(dir_fd)
