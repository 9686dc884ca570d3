"""Watching workspace directories with watchdog, thread-safely feeding the asyncio side.

The *parent directory* of each TASKS.md is watched, not the file: editors save by writing a temp
file and renaming it over the original, which replaces the inode a file watch would follow. Events
for swap/backup/temp/lock names are dropped here; the engine debounces the rest per file.

Each delivery says whether the write is known to be *finished* (:data:`SAVED`: a file renamed into
place, or closed after writing) or may still be going on (:data:`CHANGED`: created, modified,
deleted, renamed away). A finished save needs no long debounce (issue 17: it was most of the
save → database latency); a write that may go on does.

When the inotify observer cannot start (``ENOSPC``: out of watches, ``EMFILE``/``ENFILE``: out of
inotify instances or file descriptors) the watcher falls back to watchdog's ``PollingObserver``
with one warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from workspace_sync.writer import is_ignored_name

__all__ = ["CHANGED", "SAVED", "DirectoryWatcher", "LIMIT_ERRNOS"]

logger = logging.getLogger("workspace_sync.watcher")

#: errno values that mean "inotify is out of resources": fall back to polling.
LIMIT_ERRNOS = frozenset({errno.ENOSPC, errno.EMFILE, errno.ENFILE})
_RELEVANT = frozenset({"created", "modified", "moved", "closed", "deleted"})
#: the file may still be being written (created, modified, deleted or renamed away)
CHANGED = "changed"
#: a write finished: the file was renamed into place, or closed after writing
SAVED = "saved"


class _Handler(FileSystemEventHandler):
    def __init__(self, deliver: Callable[[str, str], None]) -> None:
        self._deliver = deliver

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type not in _RELEVANT:
            return
        done = event.event_type == "closed"
        for raw, kind in ((event.src_path, SAVED if done else CHANGED), (getattr(event, "dest_path", ""), SAVED)):
            if not raw:
                continue
            path = os.fsdecode(raw)
            if not is_ignored_name(os.path.basename(path)):
                self._deliver(path, kind)


class DirectoryWatcher:
    """Watches directories and calls ``on_change(path, kind)`` on the event loop for every relevant file event.

    Args:
        loop: the event loop ``on_change`` runs on.
        on_change: called with the normalised absolute path of the changed file and :data:`SAVED` or
            :data:`CHANGED`.
        polling: use the polling observer from the start (tests, network file systems).
        poll_interval: seconds between polls of the polling observer.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_change: Callable[[str, str], None],
        *,
        polling: bool = False,
        poll_interval: float = 0.5,
    ) -> None:
        self._loop = loop
        self._on_change = on_change
        self.polling = polling
        self._poll_interval = poll_interval
        self._observer: Any = None
        self._watches: dict[str, Any] = {}
        #: (st_dev, st_ino) of each watched directory: a recreated directory needs a new watch
        self._identity: dict[str, tuple[int, int]] = {}
        self._mutex = threading.Lock()
        self._handler = _Handler(self._deliver)
        #: why the watcher fell back to polling (None while on inotify)
        self.fallback_reason: str | None = None

    def _deliver(self, path: str, kind: str) -> None:
        try:
            self._loop.call_soon_threadsafe(self._on_change, os.path.normpath(path), kind)
        except RuntimeError:
            pass  # the loop is closed: we are shutting down

    def _new_observer(self) -> Any:
        if self.polling:
            return PollingObserver(timeout=self._poll_interval)
        return Observer()

    def start(self) -> None:
        """Start the observer thread (falls back to polling when inotify is out of resources)."""
        with self._mutex:
            if self._observer is not None:
                return
            self._observer = self._new_observer()
            try:
                self._observer.start()
            except OSError as exc:
                if exc.errno not in LIMIT_ERRNOS or self.polling:
                    raise
                self._fall_back(exc)

    def _fall_back(self, exc: OSError) -> None:
        """Replace the inotify observer by a polling one (mutex held)."""
        self.fallback_reason = f"{errno.errorcode.get(exc.errno or 0, exc.errno)}: {exc.strerror or exc}"
        logger.warning(
            "inotify limit reached (%s); workspace sync falls back to polling every %.1fs. Raise "
            "fs.inotify.max_user_watches / max_user_instances to get instant updates.",
            self.fallback_reason,
            self._poll_interval,
        )
        old = self._observer
        if old is not None:
            try:
                old.stop()
            except Exception:  # pragma: no cover - best effort on a broken observer
                logger.debug("stopping the failed observer", exc_info=True)
        self.polling = True
        self._observer = self._new_observer()
        self._observer.start()
        dirs = list(self._watches)
        self._watches.clear()
        for directory in dirs:
            self._watches[directory] = self._observer.schedule(self._handler, directory, recursive=False)

    def watch(self, directory: Path) -> None:
        """Watch *directory* (non-recursively); idempotent.

        Raises:
            OSError: the directory cannot be watched (missing, unreadable).
        """
        key = os.path.normpath(str(directory))
        if self._observer is None:
            self.start()  # lazily: an app with no workspace never starts an observer thread
        info = os.stat(key)
        identity = (info.st_dev, info.st_ino)
        with self._mutex:
            if key in self._watches and self._identity.get(key) == identity and self._alive(self._watches[key]):
                return
            if self._observer is None:
                raise RuntimeError("the watcher was stopped")
            old = self._watches.pop(key, None)
            if old is not None:
                # the directory was recreated or moved away and back: its inotify watch died with it
                with contextlib.suppress(KeyError, OSError):
                    self._observer.unschedule(old)
            self._identity[key] = identity
            try:
                self._watches[key] = self._observer.schedule(self._handler, key, recursive=False)
            except OSError as exc:
                if exc.errno not in LIMIT_ERRNOS or self.polling:
                    raise
                self._watches[key] = None
                self._fall_back(exc)

    def _alive(self, watch: Any) -> bool:
        """Whether *watch* still has a running emitter (inotify stops it when the directory goes away)."""
        if watch is None or self._observer is None:
            return True  # a placeholder while falling back to polling
        return any(e.watch == watch and e.is_alive() for e in self._observer.emitters)

    def unwatch(self, directory: Path) -> None:
        """Stop watching *directory* (no-op if not watched)."""
        key = os.path.normpath(str(directory))
        with self._mutex:
            watch = self._watches.pop(key, None)
            if watch is not None and self._observer is not None:
                try:
                    self._observer.unschedule(watch)
                except (KeyError, OSError):
                    pass

    def watched(self) -> list[str]:
        """The watched directories."""
        with self._mutex:
            return sorted(self._watches)

    def stop(self) -> None:
        """Stop the observer thread and wait for it."""
        with self._mutex:
            observer, self._observer = self._observer, None
            self._watches.clear()
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)
