"""FlatfileBackend: the whole Backend contract on JSON files in one data directory.

Records and dispatch are :class:`queue_service.state_backend.StateMachineBackend`'s, over the same
:class:`queue_service.state.ProjectState` the in-memory backend runs, so the two cannot disagree; this
module adds persistence, cross-process locking and wake-ups. Every operation runs one short critical
section in a worker thread:

    lock the project (flock) → replay journal lines other processes appended → plan_* →
    append the Changes as one line + fdatasync → apply → unlock → wake local waiters

See ``flatfile/journal.py`` for the file layout and crash-safety argument and
``docs/plans/flatfile.md`` for the design notes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Self, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from flatfile.atomic import ensure_dir
from flatfile.errors import wrap_errors
from flatfile.journal import CompactionPolicy, Outcome, ProjectFiles, Txn, create_project_dir
from flatfile.streams import FlatfileStreamStore
from flatfile.tokens import TokenFile
from queue_service import exceptions
from queue_service.backend import EventStream
from queue_service.dispatch_config import DispatchConfig
from queue_service.models import SLUG_RE, Event, utcnow, validate_slug
from queue_service.state import Changes, ProjectState
from queue_service.state_backend import StateMachineBackend, TokenStore, events_after

__all__ = ["DEFAULT_DATA_DIR", "FlatfileBackend"]

logger = logging.getLogger(__name__)

R = TypeVar("R")

#: Used when the URL names no directory and QUEUE_DATA_DIR is unset.
DEFAULT_DATA_DIR = ".queue-data"
#: Age after which a half-built ``projects/.new-*`` directory is garbage.
_STALE_CREATE_SECONDS = 600.0
#: errno values of a write that found no room: /readyz stays "not ready" for a while after one
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
#: how long such a failure keeps /readyz at 503 unless a write succeeds meanwhile, seconds
_WRITE_FAILURE_MEMORY = 30.0
#: size of the /readyz probe write (a few pages: a disk with less room than this is full for us)
_PROBE_BYTES = 16 * 1024


class _Events(EventStream):
    def __init__(self, backend: FlatfileBackend) -> None:
        self.b = backend

    async def subscribe(self, project: str) -> AsyncIterator[Event]:
        # Tail the project: local commits fire the signal directly; the watcher fires it when another
        # process appends. Events are read back from the (caught-up) state, so none is skipped even
        # across a compaction, and a slow consumer just gets a bigger batch next time.
        last_id = await self.b.read(project, lambda s: s.last_event_id)
        signal = self.b.signal(project)
        self.b.watch(project)
        try:
            while True:
                woken = signal.current()
                batch = await self.b.read(project, functools.partial(events_after, after_id=last_id, limit=1000))
                for event in batch:
                    last_id = event.id
                    yield event
                if not batch:
                    await woken.wait()
        finally:
            self.b.unwatch(project)


class FlatfileBackend(StateMachineBackend):
    """JSON files under a data directory; safe for several processes on one machine.

    Args:
        data_dir: the data directory (created on open).
        config: dispatch timings and limits.
        clock: the time source (tests may pin it).
        compaction: when to fold a project's journal into a new snapshot.
        poll_interval: seconds between the cheap ``stat`` checks that wake waiting claimers and
            subscribers when another process commits.
    """

    name = "flatfile"
    #: no central sweeper in flatfile mode: every claim first expires its project's dead leases
    sweeps_on_claim = True

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        config: DispatchConfig | None = None,
        clock: Callable[[], datetime] = utcnow,
        *,
        compaction: CompactionPolicy | None = None,
        poll_interval: float = 0.025,
    ) -> None:
        self.config = config or DispatchConfig()
        self.now = clock
        self.data_dir = Path(data_dir).expanduser()
        self.projects_dir = self.data_dir / "projects"
        self.compaction = compaction or CompactionPolicy()
        self.poll_interval = poll_interval
        self.tokens = TokenFile(self.data_dir)
        self._files: dict[str, ProjectFiles] = {}
        self._files_lock = threading.Lock()
        #: (monotonic time, message) of the last write that failed for lack of room; None after a success
        self._write_failure: tuple[float, str] | None = None
        self._interest: dict[str, int] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        super().__init__()
        self.events = _Events(self)
        self.streams = FlatfileStreamStore(self.data_dir / "streams", self.dispatch, poll_interval=poll_interval)

    @classmethod
    def from_url(cls, url: str, config: DispatchConfig | None = None) -> FlatfileBackend:
        """``file:///abs/dir``, ``file://./rel/dir`` or ``file://`` (QUEUE_DATA_DIR or ./.queue-data).

        Query parameters tune the backend: ``compact_min_entries``, ``compact_ratio``,
        ``poll_interval`` (e.g. ``file:///srv/q?compact_min_entries=5000``).
        """
        parts = urlsplit(url)
        if parts.scheme != "file":
            raise exceptions.ConfigurationError(f"not a flatfile URL: {url!r} (use file://<dir>)")
        raw = unquote(parts.path if parts.netloc in ("", "localhost") else parts.netloc + parts.path)
        path = raw or os.environ.get("QUEUE_DATA_DIR") or DEFAULT_DATA_DIR
        query = parse_qs(parts.query)
        try:
            policy = CompactionPolicy(
                min_entries=int(query.get("compact_min_entries", [CompactionPolicy.min_entries])[0]),
                ratio=float(query.get("compact_ratio", [CompactionPolicy.ratio])[0]),
            )
            poll = float(query.get("poll_interval", ["0.025"])[0])
        except ValueError as exc:
            raise exceptions.ConfigurationError(f"bad flatfile URL parameter in {url!r}: {exc}") from None
        return cls(path, config=config, compaction=policy, poll_interval=poll)

    # -- lifecycle --------------------------------------------------------------------------
    async def open(self) -> None:
        """Create the data directory if needed; remove stale leftovers of interrupted project creations."""

        def prepare() -> None:
            ensure_dir(self.projects_dir)
            cutoff = time.time() - _STALE_CREATE_SECONDS
            for entry in os.scandir(self.projects_dir):
                # ``.new-<slug>-*`` is a project directory built by a creator that died before the
                # rename; old enough that no live creator can still be filling it.
                if entry.name.startswith(".new-") and entry.is_dir() and entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry.path, ignore_errors=True)

        await self.blocking(prepare, f"prepare data directory {self.data_dir}")

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def close(self) -> None:
        """Stop watchers and close file descriptors. Idempotent."""
        watchers = list(self._watchers.values())
        self._watchers.clear()
        self._interest.clear()
        for task in watchers:
            task.cancel()
        for task in watchers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with self._files_lock:
            files = list(self._files.values())
            self._files.clear()
        for f in files:
            f.close()
        self.tokens.close()

    async def ping(self) -> None:
        """Raise BackendUnavailable unless the data directory can take writes right now.

        Permission bits are not enough: a full disk (or quota, or a read-only remount) keeps them
        and fails every write. So this writes, syncs and removes a small probe file; and a write
        that failed for lack of space in the last ``_WRITE_FAILURE_MEMORY`` seconds (without a
        successful one since) also counts, because it may have needed more room than the probe.
        """

        def check() -> None:
            if not self.projects_dir.is_dir():
                raise exceptions.BackendUnavailable(f"flatfile data directory {self.projects_dir} does not exist")
            if not os.access(self.projects_dir, os.W_OK | os.X_OK):
                raise exceptions.BackendUnavailable(f"flatfile data directory {self.projects_dir} is not writable")
            failed = self._write_failure
            if failed is not None and time.monotonic() - failed[0] < _WRITE_FAILURE_MEMORY:
                raise exceptions.BackendUnavailable(f"flatfile writes are failing: {failed[1]}")
            probe = self.projects_dir / f".ready-probe-{os.getpid()}-{threading.get_ident()}"
            try:
                fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                try:
                    os.write(fd, b"\0" * _PROBE_BYTES)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(probe)

        await self.blocking(check, "write a probe file in the data directory")

    # -- plumbing ---------------------------------------------------------------------------
    async def blocking(self, fn: Callable[[], R], what: str) -> R:
        """Run blocking IO in a worker thread with OSError translated."""

        def call() -> R:
            with wrap_errors(what):
                return fn()

        return await asyncio.to_thread(call)

    def files(self, slug: str) -> ProjectFiles:
        """This process's handle on a project (no IO; the slug is validated: it becomes a path)."""
        validate_slug(slug)
        with self._files_lock:
            handle = self._files.get(slug)
            if handle is None:
                handle = self._files[slug] = ProjectFiles(self.projects_dir / slug, slug, self.compaction)
            return handle

    def _run_sync(self, slug: str, fn: Callable[[Txn], R], exclusive: bool) -> Outcome[R]:
        validate_slug(slug)  # it becomes a path
        try:
            with wrap_errors(f"{'write' if exclusive else 'read'} project {slug}"):
                if not (self.projects_dir / slug).is_dir():
                    # Checked before a handle exists so unknown slugs leave no trace in memory.
                    raise exceptions.ProjectNotFound(f"project {slug!r} not found", project=slug)
                outcome = self.files(slug).run(fn, exclusive, self.now)
        except exceptions.BackendUnavailable as exc:
            if exclusive and exc.details.get("errno") in _NO_ROOM:
                self._write_failure = (time.monotonic(), exc.message)  # /readyz reports it
            raise
        if outcome.committed:
            self._write_failure = None
        return outcome

    async def run(self, slug: str, fn: Callable[[Txn], R], exclusive: bool) -> R:
        """Run *fn* in the project's critical section (in a thread); wake local waiters on commit."""
        outcome = await asyncio.to_thread(self._run_sync, slug, fn, exclusive)
        if outcome.committed:
            self.signal(slug).fire()
        return outcome.result

    async def add_project(self, state: ProjectState, changes: Changes, what: str) -> None:
        """Write a new project's directory (create or import); AlreadyExists if the slug is taken."""
        await self.blocking(lambda: create_project_dir(self.projects_dir, state), what)

    async def token_op(self, fn: Callable[[TokenStore], R], what: str) -> R:
        """Run *fn* on the token file in a worker thread."""
        return await self.blocking(lambda: fn(self.tokens), what)

    async def slugs(self) -> list[str]:
        """Project directories present, sorted (temporary and foreign names skipped)."""

        def scan() -> list[str]:
            try:
                names = os.listdir(self.projects_dir)
            except FileNotFoundError:
                return []
            return sorted(n for n in names if SLUG_RE.match(n) and (self.projects_dir / n).is_dir())

        return await self.blocking(scan, "list projects")

    # -- wake-ups ---------------------------------------------------------------------------
    def watch(self, slug: str) -> None:
        """Start (or keep) polling *slug* for commits by other processes."""
        self._interest[slug] = self._interest.get(slug, 0) + 1
        task = self._watchers.get(slug)
        if task is None or task.done():
            self._watchers[slug] = asyncio.get_running_loop().create_task(self._watch(slug))

    def unwatch(self, slug: str) -> None:
        """Drop one interest in *slug*; the watcher stops when none is left."""
        left = self._interest.get(slug, 0) - 1
        if left > 0:
            self._interest[slug] = left
        else:
            self._interest.pop(slug, None)

    async def _watch(self, slug: str) -> None:
        files = self.files(slug)
        last = files.signature()
        seen = files.replayed
        while self._interest.get(slug, 0) > 0:
            await asyncio.sleep(self.poll_interval)
            # Two stats on the loop thread (microseconds; a thread hop would cost more), no lock and
            # no parse unless the journal or the directory changed.
            current = files.signature()
            if current == last:
                continue
            last = current
            try:
                replayed = await asyncio.to_thread(self._run_sync, slug, lambda _txn: files.replayed, False)
            except exceptions.QueueServiceError as exc:
                logger.debug("watcher of %s: %s", slug, exc)
                continue
            if replayed.result != seen:
                seen = replayed.result
                self.signal(slug).fire()
