"""FlatfileBackend: the whole Backend contract on JSON files in one data directory.

Semantics come from :class:`queue_service.state.ProjectState` (the same state machine the in-memory
backend runs), so the two cannot disagree; this module adds persistence, cross-process locking and
wake-ups. Every operation runs one short critical section in a worker thread:

    lock the project (flock) → replay journal lines other processes appended → plan_* →
    append the Changes as one line + fdatasync → apply → unlock → wake local waiters

See ``flatfile/journal.py`` for the file layout and crash-safety argument and
``docs/plans/flatfile.md`` for the design notes.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import copy
import errno
import functools
import logging
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Self, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from flatfile.atomic import ensure_dir
from flatfile.errors import wrap_errors
from flatfile.journal import CompactionPolicy, Outcome, ProjectFiles, Txn, create_project_dir
from flatfile.streams import FlatfileStreamStore
from flatfile.tokens import TokenFile
from queue_service import domain, exceptions
from queue_service.agents import Agent
from queue_service.agents_state import StateAgentRegistry
from queue_service.backend import Backend, DispatchConfig, Dispatcher, EventStream, RecordStore
from queue_service.models import (
    SLUG_RE,
    ApiToken,
    Claim,
    Event,
    Lease,
    Mission,
    MissionCreate,
    Note,
    Project,
    ProjectCreate,
    ProjectSnapshot,
    ProjectUpdate,
    QueueStats,
    ReadyList,
    SweepReport,
    Task,
    TaskCreate,
    TaskFilter,
    TaskPage,
    TaskStatus,
    TaskUpdate,
    utcnow,
    validate_slug,
)
from queue_service.state import Changes, ProjectState
from queue_service.testing import snapshot_of, state_from_snapshot

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


class _Signal:
    """A re-armable broadcast: take ``current()`` before checking, wait on it after (no lost wake-ups)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def current(self) -> asyncio.Event:
        return self._event

    def fire(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()


def _expired_lease(state: ProjectState, now: datetime) -> bool:
    # O(in-flight leases), not O(tasks): only then is the full plan_sweep worth running.
    return any(
        (exp := state.tasks[k].lease_expires_at) is not None and exp <= now for k in state.leased if k in state.tasks
    )


def _next_due(state: ProjectState, roles: Sequence[str] | None, now: datetime) -> float | None:
    """Seconds until a backoff of *roles* comes due or a lease expires (both can make a task claimable)."""
    best: float | None = None

    def consider(at: datetime | None) -> None:
        nonlocal best
        if at is not None:
            secs = max(0.0, (at - now).total_seconds())
            best = secs if best is None else min(best, secs)

    for role in roles or state.roles():
        for key in state.eligible.get(role, ()):
            not_before = state.tasks[key].not_before
            if not_before is not None and not_before > now:
                consider(not_before)
    for key in state.leased:
        task = state.tasks.get(key)
        if task is not None and (not roles or task.role in roles):
            consider(task.lease_expires_at)
    return best


class _Records(RecordStore):
    def __init__(self, backend: FlatfileBackend) -> None:
        self.b = backend

    async def create_project(self, data: ProjectCreate) -> Project:
        state, changes = ProjectState.new(data, self.b.now())
        state.apply(changes)
        await self.b.create_dir(state, f"create project {data.slug}")
        return state.project

    async def get_project(self, slug: str) -> Project:
        return await self.b.read(slug, lambda s: s.project)

    async def list_projects(self) -> list[Project]:
        projects: list[Project] = []
        for slug in await self.b.slugs():
            try:
                projects.append(await self.b.read(slug, lambda s: s.project))
            except exceptions.ProjectNotFound:
                continue  # removed meanwhile
            except exceptions.CorruptData as exc:
                # One damaged project must not take the others down: skip it, say so loudly.
                self.b.problems[slug] = exc.message
                logger.error("skipping project %s in list_projects: %s", slug, exc.message)
                continue
            self.b.problems.pop(slug, None)
        return projects

    async def update_project(self, slug: str, patch: ProjectUpdate) -> Project:
        def op(txn: Txn) -> Project:
            txn.commit(txn.state.plan_update_project(patch, txn.now))
            return txn.state.project

        return await self.b.write(slug, op)

    async def create_mission(self, project: str, data: MissionCreate) -> Mission:
        def op(txn: Txn) -> Mission:
            txn.commit(txn.state.plan_create_mission(data, txn.now))
            return txn.state.missions[data.id]

        return await self.b.write(project, op)

    async def get_mission(self, project: str, mission: str) -> Mission:
        return await self.b.read(project, lambda s: s._require_mission(mission))

    async def list_missions(self, project: str) -> list[Mission]:
        missions = await self.b.read(project, lambda s: list(s.missions.values()))
        return sorted(missions, key=lambda m: (m.id != "default", m.created_at))

    async def update_mission(self, project: str, mission: str, data: MissionCreate) -> Mission:
        def op(txn: Txn) -> Mission:
            txn.commit(txn.state.plan_update_mission(mission, data, txn.now))
            return txn.state.missions[mission]

        return await self.b.write(project, op)

    async def create_tasks(self, project: str, items: Sequence[TaskCreate]) -> list[Task]:
        def op(txn: Txn) -> list[Task]:
            changes, tasks = txn.state.plan_create_tasks(items, self.b.config, txn.now)
            txn.commit(changes)
            return [txn.state.tasks[t.key] for t in tasks]

        return await self.b.write(project, op)

    async def get_task(self, project: str, key: str) -> Task:
        return await self.b.read(project, lambda s: s.require(key))

    async def get_tasks(self, project: str, keys: Sequence[str]) -> list[Task]:
        return await self.b.read(project, lambda s: s.get_tasks(keys))

    async def list_tasks(
        self, project: str, filters: TaskFilter | None = None, limit: int = 100, cursor: str | None = None
    ) -> TaskPage:
        return await self.b.run(
            project, lambda txn: txn.state.list_tasks(filters or TaskFilter(), limit, cursor, txn.now), exclusive=False
        )

    async def update_task(
        self, project: str, key: str, patch: TaskUpdate, expected_version: int | None = None, actor: str = "api"
    ) -> Task:
        def op(txn: Txn) -> Task:
            changes, task = txn.state.plan_update_task(key, patch, expected_version, actor, txn.now)
            txn.commit(changes)
            return task

        return await self.b.write(project, op)

    async def cancel_task(self, project: str, key: str, reason: str | None = None, actor: str = "api") -> Task:
        def op(txn: Txn) -> Task:
            changes, task = txn.state.plan_cancel(key, reason, actor, txn.now)
            txn.commit(changes)
            return task

        return await self.b.write(project, op)

    async def add_note(self, project: str, key: str, author: str, text: str, token: str | None = None) -> Note:
        def op(txn: Txn) -> Note:
            changes, note = txn.state.plan_add_note(key, author, text, token, txn.now)
            txn.commit(changes)
            return note

        return await self.b.write(project, op)

    async def list_notes(self, project: str, key: str) -> list[Note]:
        def op(state: ProjectState) -> list[Note]:
            state.require(key)
            return list(state.notes.get(key, []))

        return await self.b.read(project, op)

    async def blockers(self, project: str, key: str) -> list[Task]:
        return await self.b.read(project, lambda s: s.blockers(key))

    async def dependents(self, project: str, key: str) -> list[Task]:
        return await self.b.read(project, lambda s: s.dependents_of(key))

    async def dead_letter(self, project: str, limit: int = 100) -> list[Task]:
        return await self.b.read(project, lambda s: s.dead_letter(limit))

    async def stats(self, project: str) -> QueueStats:
        return await self.b.run(project, lambda txn: txn.state.stats(txn.now), exclusive=False)

    async def ready_tasks(self, project: str, roles: Sequence[str] | None = None, limit: int = 20) -> ReadyList:
        def op(txn: Txn) -> ReadyList:
            tasks, total = txn.state.ready_listed(roles, limit, txn.now)
            return ReadyList(tasks=tasks, total=total, unblocks={t.key: txn.state.unblocks(t.key) for t in tasks})

        return await self.b.run(project, op, exclusive=False)

    async def task_events(self, project: str, key: str, limit: int = 20) -> list[Event]:
        return await self.b.read(project, lambda s: s.task_events(key, limit))

    async def list_events(self, project: str, after_id: int = 0, limit: int = 1000) -> list[Event]:
        return await self.b.read(project, lambda s: _events_after(s, after_id, limit))

    async def get_sync_state(self, project: str, path: str) -> dict[str, Any] | None:
        return await self.b.read(project, lambda s: copy.deepcopy(s.sync_state.get(path)))

    async def put_sync_state(
        self, project: str, path: str, state: dict[str, Any], rows: Mapping[str, dict[str, Any] | None] | None = None
    ) -> None:
        # only the changed rows are copied and journaled (issue 17: cost grows with the change)
        delta = {path: copy.deepcopy(dict(rows))} if rows else {}

        def op(txn: Txn) -> None:
            txn.commit(Changes(sync_state={path: copy.deepcopy(state)}, sync_rows=delta))

        await self.b.write(project, op)

    async def get_sync_rows(self, project: str, path: str) -> dict[str, dict[str, Any]]:
        # entries are replaced, never mutated, by put_sync_state: a shallow copy is safe
        return await self.b.read(project, lambda s: dict(s.sync_rows.get(path, {})))

    async def add_api_token(self, token: ApiToken) -> None:
        await self.b.blocking(lambda: self.b.tokens.add(token), "store an API token")

    async def find_api_token(self, token_hash: str) -> ApiToken | None:
        return await self.b.blocking(lambda: self.b.tokens.find(token_hash), "read API tokens")

    async def count_api_tokens(self) -> int:
        return await self.b.blocking(self.b.tokens.count, "read API tokens")

    async def list_api_tokens(self) -> list[ApiToken]:
        return await self.b.blocking(self.b.tokens.all, "read API tokens")

    async def revoke_api_token(self, token_id: str) -> ApiToken:
        return await self.b.blocking(lambda: self.b.tokens.revoke(token_id), "revoke an API token")

    async def purge_api_tokens(self) -> int:
        return await self.b.blocking(self.b.tokens.purge, "delete API tokens")

    async def export_project(self, project: str) -> ProjectSnapshot:
        return await self.b.read(project, snapshot_of)

    async def import_project(self, snapshot: ProjectSnapshot) -> Project:
        state, _ = state_from_snapshot(snapshot)
        await self.b.create_dir(state, f"import project {snapshot.project.slug}")
        return state.project


def _events_after(state: ProjectState, after_id: int, limit: int) -> list[Event]:
    start = bisect.bisect_right(state.events, after_id, key=lambda e: e.id)
    return state.events[start : start + limit]


class _Dispatch(Dispatcher):
    def __init__(self, backend: FlatfileBackend) -> None:
        self.b = backend

    def _claim_once(
        self, txn: Txn, agent: str, roles: Sequence[str] | None, lease: float, want_due: bool
    ) -> tuple[Claim | None, float | None]:
        state, now = txn.state, txn.now
        # No central sweeper in flatfile mode: every claim first expires this project's dead leases.
        if _expired_lease(state, now):
            changes, _ = state.plan_sweep(self.b.config, now)
            txn.commit(changes)
        changes, claims = state.plan_claim_many(agent, roles, 1, lease, now, self.b.config)
        txn.commit(changes)  # a registry-only change (implicit registration) too
        if claims:
            return claims[0], None
        return None, _next_due(state, roles, now) if want_due else None

    async def claim(
        self,
        project: str,
        agent: str,
        roles: Sequence[str] | None = None,
        wait: float = 0.0,
        lease_seconds: float | None = None,
    ) -> Claim | None:
        lease = domain.lease_length(lease_seconds, self.b.config.lease_seconds)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, wait)
        signal = self.b.signal(project)
        watching = False
        try:
            while True:
                woken = signal.current()  # before the attempt: a commit during it still wakes us
                claim, due = await self.b.run(
                    project, lambda txn: self._claim_once(txn, agent, roles, lease, wait > 0), exclusive=True
                )
                if claim is not None:
                    return claim
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                if not watching:
                    self.b.watch(project)
                    watching = True
                timeout = remaining if due is None else min(remaining, due + 0.001)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), timeout)
        finally:
            if watching:
                self.b.unwatch(project)

    def _claim_many_once(
        self, txn: Txn, agent: str, roles: Sequence[str] | None, limit: int, lease: float, want_due: bool
    ) -> tuple[list[Claim], float | None]:
        state, now = txn.state, txn.now
        if _expired_lease(state, now):
            changes, _ = state.plan_sweep(self.b.config, now)
            txn.commit(changes)
        changes, claims = state.plan_claim_many(agent, roles, limit, lease, now, self.b.config)
        txn.commit(changes)  # the whole batch is one journal entry (or a registry-only change)
        if claims:
            return claims, None
        return [], _next_due(state, roles, now) if want_due else None

    async def claim_many(
        self,
        project: str,
        agent: str,
        roles: Sequence[str] | None = None,
        limit: int = 10,
        wait: float = 0.0,
        lease_seconds: float | None = None,
    ) -> list[Claim]:
        """See :meth:`Dispatcher.claim_many`: one lock, one journal entry for the batch."""
        lease = domain.lease_length(lease_seconds, self.b.config.lease_seconds)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, wait)
        signal = self.b.signal(project)
        watching = False
        try:
            while True:
                woken = signal.current()  # before the attempt: a commit during it still wakes us
                claims, due = await self.b.run(
                    project,
                    lambda txn: self._claim_many_once(txn, agent, roles, limit, lease, wait > 0),
                    exclusive=True,
                )
                if claims:
                    return claims
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return []
                if not watching:
                    self.b.watch(project)
                    watching = True
                timeout = remaining if due is None else min(remaining, due + 0.001)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), timeout)
        finally:
            if watching:
                self.b.unwatch(project)

    async def heartbeat(self, project: str, key: str, token: str, lease_seconds: float | None = None) -> Lease:
        seconds = domain.lease_length(lease_seconds, self.b.config.lease_seconds)

        def op(txn: Txn) -> Lease:
            changes, lease = txn.state.plan_heartbeat(key, token, seconds, txn.now)
            txn.commit(changes)
            return lease

        return await self.b.write(project, op)

    async def complete(self, project: str, key: str, token: str, result: Any = None) -> Task:
        def op(txn: Txn) -> Task:
            changes, task = txn.state.plan_complete(key, token, result, txn.now)
            txn.commit(changes)
            return task

        return await self.b.write(project, op)

    async def complete_many(
        self, project: str, items: Sequence[tuple[str, str, Any]]
    ) -> list[Task | exceptions.QueueServiceError]:
        """See :meth:`Dispatcher.complete_many`: one lock, one journal entry for the batch."""

        def op(txn: Txn) -> list[Task | exceptions.QueueServiceError]:
            changes, out = txn.state.plan_complete_many(items, txn.now)
            txn.commit(changes)
            return out

        return await self.b.write(project, op)

    async def fail(self, project: str, key: str, token: str, error: str, retryable: bool = True) -> Task:
        def op(txn: Txn) -> Task:
            changes, task = txn.state.plan_fail(key, token, error, retryable, self.b.config, txn.now)
            txn.commit(changes)
            return task

        return await self.b.write(project, op)

    async def release(self, project: str, key: str, token: str) -> Task:
        def op(txn: Txn) -> Task:
            changes, task = txn.state.plan_release(key, token, txn.now)
            txn.commit(changes)
            return task

        return await self.b.write(project, op)

    async def retry(self, project: str, key: str, actor: str = "api") -> Task:
        def op(txn: Txn) -> Task:
            changes, task = txn.state.plan_retry(key, actor, txn.now)
            txn.commit(changes)
            return task

        return await self.b.write(project, op)

    async def sweep(self) -> SweepReport:
        expired: list[str] = []
        dead: list[str] = []
        released = 0

        def op(txn: Txn) -> tuple[list[str], list[str], int]:
            changes, keys = txn.state.plan_sweep(self.b.config, txn.now)
            txn.commit(changes)
            slug = txn.state.project.slug
            return (
                [f"{slug}/{k}" for k in keys],
                [f"{slug}/{k}" for k in keys if changes.tasks[k].status is TaskStatus.FAILED],
                sum(1 for k in changes.ready if k not in changes.tasks),
            )

        for slug in await self.b.slugs():
            try:
                e, d, r = await self.b.write(slug, op)
            except exceptions.ProjectNotFound:
                continue
            except exceptions.CorruptData as exc:
                self.b.problems[slug] = exc.message
                logger.error("sweep skipped project %s: %s", slug, exc.message)
                continue
            expired += e
            dead += d
            released += r
            if r:
                self.b.signal(slug).fire()  # backoffs came due: waiting claimers should look again
        return SweepReport(expired_leases=tuple(expired), released_backoffs=released, dead_lettered=tuple(dead))

    async def queue_depths(self, project: str) -> dict[str, int]:
        return await self.b.read(
            project, lambda s: {role: s.ready_depth(role) for role in s.roles() if s.ready_depth(role)}
        )


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
                batch = await self.b.read(project, functools.partial(_events_after, after_id=last_id, limit=1000))
                for event in batch:
                    last_id = event.id
                    yield event
                if not batch:
                    await woken.wait()
        finally:
            self.b.unwatch(project)


class FlatfileBackend(Backend):
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
        #: slug -> message for projects that failed to load (list_projects and sweep skip them)
        self.problems: dict[str, str] = {}
        self._files: dict[str, ProjectFiles] = {}
        self._files_lock = threading.Lock()
        self._signals: dict[str, _Signal] = {}
        #: (monotonic time, message) of the last write that failed for lack of room; None after a success
        self._write_failure: tuple[float, str] | None = None
        self._interest: dict[str, int] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self.records = _Records(self)
        self.dispatch = _Dispatch(self)
        self.events = _Events(self)
        self.streams = FlatfileStreamStore(self.data_dir / "streams", self.dispatch, poll_interval=poll_interval)
        self.agents = StateAgentRegistry(self._plan_agent, self._read_agents, lambda: self.config.agent_ready_seconds)

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

    async def _plan_agent(self, slug: str, fn: Callable[[ProjectState, datetime], tuple[Changes, Agent]]) -> Agent:
        def op(txn: Txn) -> Agent:
            changes, result = fn(txn.state, txn.now)
            txn.commit(changes)
            return result

        return await self.run(slug, op, exclusive=True)

    async def _read_agents(self, slug: str, fn: Callable[[ProjectState, datetime], list[Agent]]) -> list[Agent]:
        return await self.run(slug, lambda txn: fn(txn.state, txn.now), exclusive=False)

    async def read(self, slug: str, fn: Callable[[ProjectState], R]) -> R:
        """A read under the shared lock, on the caught-up state."""
        return await self.run(slug, lambda txn: fn(txn.state), exclusive=False)

    async def write(self, slug: str, fn: Callable[[Txn], R]) -> R:
        """A write under the exclusive lock."""
        return await self.run(slug, fn, exclusive=True)

    async def create_dir(self, state: ProjectState, what: str) -> None:
        """Write a new project's directory (create or import)."""
        await self.blocking(lambda: create_project_dir(self.projects_dir, state), what)

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
    def signal(self, slug: str) -> _Signal:
        """The project's local wake-up broadcast (event-loop side)."""
        sig = self._signals.get(slug)
        if sig is None:
            sig = self._signals[slug] = _Signal()
        return sig

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
