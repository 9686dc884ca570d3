"""InMemoryBackend: the whole Backend contract in one process, for tests and ``memory://``.

State is inspectable (``backend.projects[slug].tasks[key]``) so unit tests assert on state rather
than on mocks (procrastinate's ``InMemoryConnector`` does the same); :meth:`InMemoryBackend.reset`
empties it. Every operation plans its changes before mutating anything, so an operation that raises
leaves the state untouched — the in-memory equivalent of a rolled-back transaction.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from queue_service import domain, exceptions
from queue_service.agents import Agent
from queue_service.agents_state import StateAgentRegistry
from queue_service.backend import Backend, DispatchConfig, Dispatcher, EventStream, RecordStore
from queue_service.models import (
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
    SyncFileState,
    Task,
    TaskCreate,
    TaskFilter,
    TaskPage,
    TaskStatus,
    TaskUpdate,
    utcnow,
)
from queue_service.state import Changes, ProjectState
from queue_service.stream_memory import MemoryStreamStore

__all__ = ["InMemoryBackend", "snapshot_of", "state_from_snapshot"]


def snapshot_of(state: ProjectState) -> ProjectSnapshot:
    """Export a project state (shared by the in-memory and flatfile backends)."""
    return ProjectSnapshot(
        project=state.project,
        missions=tuple(state.missions.values()),
        tasks=tuple(state.tasks.values()),
        notes=tuple(n for key in state.tasks for n in state.notes.get(key, [])),
        events=tuple(state.events),
        next_seq=state.next_seq,
        sync=tuple(
            SyncFileState(project=state.project.slug, path=path, state=value, rows=state.sync_rows.get(path, {}))
            for path, value in sorted(state.sync_state.items())
        ),
    )


def state_from_snapshot(snapshot: ProjectSnapshot) -> tuple[ProjectState, Changes]:
    """A state holding *snapshot*, and the Changes that build it (for journaling backends).

    Leases are not carried over: an in-progress task keeps its status but loses holder and expiry,
    since its token never left the old backend.
    """
    state = ProjectState(snapshot.project)
    tasks = {}
    for task in sorted(snapshot.tasks, key=lambda t: t.seq):
        if task.lease_holder or task.lease_expires_at:
            task = task.model_copy(update={"lease_holder": None, "lease_expires_at": None})
        tasks[task.key] = task
    changes = Changes(
        tasks=tasks,
        notes=list(snapshot.notes),
        events=list(snapshot.events),
        project=snapshot.project,
        missions={m.id: m for m in snapshot.missions},
        next_seq=snapshot.next_seq,
        sync_state={s.path: dict(s.state) for s in snapshot.sync},
        sync_rows={s.path: dict(s.rows) for s in snapshot.sync if s.rows},
    )
    state.apply(changes)
    return state, changes


class _Records(RecordStore):
    def __init__(self, backend: InMemoryBackend) -> None:
        self.b = backend

    async def create_project(self, data: ProjectCreate) -> Project:
        if data.slug in self.b.projects:
            raise exceptions.AlreadyExists(f"project {data.slug!r} already exists", project=data.slug)
        state, changes = ProjectState.new(data, self.b.now())
        self.b.projects[data.slug] = state
        self.b.commit(state, changes)
        return state.project

    async def get_project(self, slug: str) -> Project:
        return self.b.state(slug).project

    async def list_projects(self) -> list[Project]:
        return [self.b.projects[s].project for s in sorted(self.b.projects)]

    async def update_project(self, slug: str, patch: ProjectUpdate) -> Project:
        state = self.b.state(slug)
        self.b.commit(state, state.plan_update_project(patch, self.b.now()))
        return state.project

    async def create_mission(self, project: str, data: MissionCreate) -> Mission:
        state = self.b.state(project)
        self.b.commit(state, state.plan_create_mission(data, self.b.now()))
        return state.missions[data.id]

    async def get_mission(self, project: str, mission: str) -> Mission:
        return self.b.state(project)._require_mission(mission)

    async def list_missions(self, project: str) -> list[Mission]:
        missions = list(self.b.state(project).missions.values())
        return sorted(missions, key=lambda m: (m.id != "default", m.created_at))

    async def update_mission(self, project: str, mission: str, data: MissionCreate) -> Mission:
        state = self.b.state(project)
        self.b.commit(state, state.plan_update_mission(mission, data, self.b.now()))
        return state.missions[mission]

    async def create_tasks(self, project: str, items: Sequence[TaskCreate]) -> list[Task]:
        state = self.b.state(project)
        changes, tasks = state.plan_create_tasks(items, self.b.config, self.b.now())
        self.b.commit(state, changes)
        return [state.tasks[t.key] for t in tasks]

    async def get_task(self, project: str, key: str) -> Task:
        return self.b.state(project).require(key)

    async def get_tasks(self, project: str, keys: Sequence[str]) -> list[Task]:
        return self.b.state(project).get_tasks(keys)

    async def list_tasks(
        self, project: str, filters: TaskFilter | None = None, limit: int = 100, cursor: str | None = None
    ) -> TaskPage:
        return self.b.state(project).list_tasks(filters or TaskFilter(), limit, cursor, self.b.now())

    async def update_task(
        self, project: str, key: str, patch: TaskUpdate, expected_version: int | None = None, actor: str = "api"
    ) -> Task:
        state = self.b.state(project)
        changes, task = state.plan_update_task(key, patch, expected_version, actor, self.b.now())
        self.b.commit(state, changes)
        return task

    async def cancel_task(self, project: str, key: str, reason: str | None = None, actor: str = "api") -> Task:
        state = self.b.state(project)
        changes, task = state.plan_cancel(key, reason, actor, self.b.now())
        self.b.commit(state, changes)
        return task

    async def add_note(self, project: str, key: str, author: str, text: str, token: str | None = None) -> Note:
        state = self.b.state(project)
        changes, note = state.plan_add_note(key, author, text, token, self.b.now())
        self.b.commit(state, changes)
        return note

    async def list_notes(self, project: str, key: str) -> list[Note]:
        state = self.b.state(project)
        state.require(key)
        return list(state.notes.get(key, []))

    async def blockers(self, project: str, key: str) -> list[Task]:
        return self.b.state(project).blockers(key)

    async def dependents(self, project: str, key: str) -> list[Task]:
        return self.b.state(project).dependents_of(key)

    async def dead_letter(self, project: str, limit: int = 100) -> list[Task]:
        return self.b.state(project).dead_letter(limit)

    async def stats(self, project: str) -> QueueStats:
        return self.b.state(project).stats(self.b.now())

    async def ready_tasks(self, project: str, roles: Sequence[str] | None = None, limit: int = 20) -> ReadyList:
        state = self.b.state(project)
        tasks, total = state.ready_listed(roles, limit, self.b.now())
        return ReadyList(tasks=tasks, total=total, unblocks={t.key: state.unblocks(t.key) for t in tasks})

    async def task_events(self, project: str, key: str, limit: int = 20) -> list[Event]:
        return self.b.state(project).task_events(key, limit)

    async def list_events(self, project: str, after_id: int = 0, limit: int = 1000) -> list[Event]:
        events = self.b.state(project).events
        start = bisect.bisect_right(events, after_id, key=lambda e: e.id)
        return events[start : start + limit]

    async def get_sync_state(self, project: str, path: str) -> dict[str, Any] | None:
        return self.b.state(project).sync_state.get(path)

    async def put_sync_state(
        self, project: str, path: str, state: dict[str, Any], rows: Mapping[str, dict[str, Any] | None] | None = None
    ) -> None:
        st = self.b.state(project)
        st.apply(Changes(sync_state={path: state}, sync_rows={path: dict(rows)} if rows else {}))

    async def get_sync_rows(self, project: str, path: str) -> dict[str, dict[str, Any]]:
        return dict(self.b.state(project).sync_rows.get(path, {}))

    async def add_api_token(self, token: ApiToken) -> None:
        if token.id in self.b.api_tokens:
            raise exceptions.AlreadyExists(f"token {token.id!r} already exists")
        self.b.api_tokens[token.id] = token

    async def find_api_token(self, token_hash: str) -> ApiToken | None:
        return next((t for t in self.b.api_tokens.values() if t.token_hash == token_hash), None)

    async def count_api_tokens(self) -> int:
        return len(self.b.api_tokens)

    async def list_api_tokens(self) -> list[ApiToken]:
        return sorted(self.b.api_tokens.values(), key=lambda t: (t.created_at, t.id))

    async def revoke_api_token(self, token_id: str) -> ApiToken:
        token = self.b.api_tokens.get(token_id)
        if token is None:
            raise exceptions.NotFound(f"no token with id {token_id!r}", token=token_id)
        if token.revoked_at is None:
            token = token.model_copy(update={"revoked_at": utcnow()})
            self.b.api_tokens[token_id] = token
        return token

    async def purge_api_tokens(self) -> int:
        count = len(self.b.api_tokens)
        self.b.api_tokens.clear()
        return count

    async def export_project(self, project: str) -> ProjectSnapshot:
        return snapshot_of(self.b.state(project))

    async def import_project(self, snapshot: ProjectSnapshot) -> Project:
        slug = snapshot.project.slug
        if slug in self.b.projects:
            raise exceptions.AlreadyExists(f"project {slug!r} already exists", project=slug)
        state, _ = state_from_snapshot(snapshot)
        self.b.projects[slug] = state
        self.b.wake(slug)
        return state.project


class _Dispatch(Dispatcher):
    def __init__(self, backend: InMemoryBackend) -> None:
        self.b = backend

    async def claim(
        self,
        project: str,
        agent: str,
        roles: Sequence[str] | None = None,
        wait: float = 0.0,
        lease_seconds: float | None = None,
    ) -> Claim | None:
        state = self.b.state(project)
        lease = domain.lease_length(lease_seconds, self.b.config.lease_seconds)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, wait)
        cond = self.b.condition(project)
        async with cond:
            while True:
                now = self.b.now()
                changes, claims = state.plan_claim_many(agent, roles, 1, lease, now, self.b.config)
                self.b.commit(state, changes, notify=False)  # a registry-only change too
                if claims:
                    return claims[0]
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                # sleep until woken, or until the earliest backoff of these roles comes due
                due = self._next_due(state, roles, now)
                timeout = remaining if due is None else min(remaining, max(0.001, due))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cond.wait(), timeout)

    async def claim_many(
        self,
        project: str,
        agent: str,
        roles: Sequence[str] | None = None,
        limit: int = 10,
        wait: float = 0.0,
        lease_seconds: float | None = None,
    ) -> list[Claim]:
        """See :meth:`Dispatcher.claim_many`: the whole batch is planned and applied as one change."""
        state = self.b.state(project)
        lease = domain.lease_length(lease_seconds, self.b.config.lease_seconds)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, wait)
        cond = self.b.condition(project)
        async with cond:
            while True:
                now = self.b.now()
                changes, claims = state.plan_claim_many(agent, roles, limit, lease, now, self.b.config)
                self.b.commit(state, changes, notify=False)  # a registry-only change too
                if claims:
                    return claims
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return []
                due = self._next_due(state, roles, now)
                timeout = remaining if due is None else min(remaining, max(0.001, due))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cond.wait(), timeout)

    async def complete_many(
        self, project: str, items: Sequence[tuple[str, str, Any]]
    ) -> list[Task | exceptions.QueueServiceError]:
        """See :meth:`Dispatcher.complete_many`: one plan, one apply."""
        state = self.b.state(project)
        changes, out = state.plan_complete_many(items, self.b.now())
        self.b.commit(state, changes)
        return out

    @staticmethod
    def _next_due(state: ProjectState, roles: Sequence[str] | None, now: datetime) -> float | None:
        best: float | None = None
        for role in roles or state.roles():
            for key in state.eligible.get(role, ()):
                nb = state.tasks[key].not_before
                if nb is not None and nb > now:
                    secs = (nb - now).total_seconds()
                    best = secs if best is None else min(best, secs)
        return best

    async def heartbeat(self, project: str, key: str, token: str, lease_seconds: float | None = None) -> Lease:
        state = self.b.state(project)
        seconds = domain.lease_length(lease_seconds, self.b.config.lease_seconds)
        changes, lease = state.plan_heartbeat(key, token, seconds, self.b.now())
        self.b.commit(state, changes)
        return lease

    async def complete(self, project: str, key: str, token: str, result: Any = None) -> Task:
        state = self.b.state(project)
        changes, task = state.plan_complete(key, token, result, self.b.now())
        self.b.commit(state, changes)
        return task

    async def fail(self, project: str, key: str, token: str, error: str, retryable: bool = True) -> Task:
        state = self.b.state(project)
        changes, task = state.plan_fail(key, token, error, retryable, self.b.config, self.b.now())
        self.b.commit(state, changes)
        return task

    async def release(self, project: str, key: str, token: str) -> Task:
        state = self.b.state(project)
        changes, task = state.plan_release(key, token, self.b.now())
        self.b.commit(state, changes)
        return task

    async def retry(self, project: str, key: str, actor: str = "api") -> Task:
        state = self.b.state(project)
        changes, task = state.plan_retry(key, actor, self.b.now())
        self.b.commit(state, changes)
        return task

    async def sweep(self) -> SweepReport:
        expired: list[str] = []
        released = 0
        dead: list[str] = []
        for state in list(self.b.projects.values()):
            changes, keys = state.plan_sweep(self.b.config, self.b.now())
            released += sum(1 for k in changes.ready if k not in changes.tasks)
            expired.extend(f"{state.project.slug}/{k}" for k in keys)
            dead.extend(f"{state.project.slug}/{k}" for k in keys if changes.tasks[k].status is TaskStatus.FAILED)
            self.b.commit(state, changes)
        return SweepReport(expired_leases=tuple(expired), released_backoffs=released, dead_lettered=tuple(dead))

    async def queue_depths(self, project: str) -> dict[str, int]:
        state = self.b.state(project)
        return {role: state.ready_depth(role) for role in state.roles() if state.ready_depth(role)}


class _Events(EventStream):
    def __init__(self, backend: InMemoryBackend) -> None:
        self.b = backend

    async def subscribe(self, project: str) -> AsyncIterator[Event]:
        self.b.state(project)
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=10_000)
        subs = self.b.subscribers.setdefault(project, [])
        subs.append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            subs.remove(queue)


class InMemoryBackend(Backend):
    """Dicts and asyncio primitives; one process only."""

    name = "memory"

    def __init__(self, config: DispatchConfig | None = None, clock: Callable[[], datetime] = utcnow) -> None:
        self.config = config or DispatchConfig()
        self.now = clock
        self.projects: dict[str, ProjectState] = {}
        self.api_tokens: dict[str, ApiToken] = {}
        self.subscribers: dict[str, list[asyncio.Queue[Event]]] = {}
        self._conditions: dict[str, asyncio.Condition] = {}
        self._pending_wakeups: set[asyncio.Task[None]] = set()
        self.records = _Records(self)
        self.dispatch = _Dispatch(self)
        self.events = _Events(self)
        self.streams = MemoryStreamStore(self.dispatch)
        self.agents = StateAgentRegistry(self._plan_agent, self._read_agents, lambda: self.config.agent_ready_seconds)

    async def _plan_agent(self, slug: str, fn: Callable[[ProjectState, datetime], tuple[Changes, Agent]]) -> Agent:
        state = self.state(slug)
        changes, result = fn(state, self.now())
        self.commit(state, changes)
        return result

    async def _read_agents(self, slug: str, fn: Callable[[ProjectState, datetime], list[Agent]]) -> list[Agent]:
        return fn(self.state(slug), self.now())

    def reset(self) -> None:
        """Forget everything."""
        self.projects.clear()
        self.api_tokens.clear()

    async def ping(self) -> None:
        """Always reachable."""

    def state(self, slug: str) -> ProjectState:
        """The project's state, or ProjectNotFound."""
        try:
            return self.projects[slug]
        except KeyError:
            raise exceptions.ProjectNotFound(f"project {slug!r} not found", project=slug) from None

    def condition(self, slug: str) -> asyncio.Condition:
        """The condition claimers of *slug* wait on (created lazily in the running loop)."""
        cond = self._conditions.get(slug)
        if cond is None:
            cond = self._conditions[slug] = asyncio.Condition()
        return cond

    def wake(self, slug: str) -> None:
        """Wake every claimer waiting on *slug*."""
        cond = self._conditions.get(slug)
        if cond is None:
            return

        async def _notify() -> None:
            async with cond:
                cond.notify_all()

        with contextlib.suppress(RuntimeError):
            task = asyncio.get_running_loop().create_task(_notify())
            self._pending_wakeups.add(task)
            task.add_done_callback(self._pending_wakeups.discard)

    def commit(self, state: ProjectState, changes: Changes, *, notify: bool = True) -> None:
        """Apply *changes*, publish their events, and wake claimers if something became ready."""
        if changes.is_empty() and not changes.ready:
            return
        state.apply(changes)
        for event in changes.events:
            for queue in self.subscribers.get(state.project.slug, []):
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(event)
        if notify and changes.ready:
            self.wake(state.project.slug)
