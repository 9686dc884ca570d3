"""StateMachineBackend: the one Backend over ProjectState that the in-memory and flatfile backends specialise.

Records and dispatch are written here once, against a transaction (:class:`StateTxn`: the project's
caught-up state, the time, and ``commit``). A backend supplies the primitives:

* :meth:`StateMachineBackend.run` — run a function in the project's critical section (memory: inline
  on the event loop; flatfile: a thread holding the project's file lock, after replaying the journal);
  ``commit`` makes changes durable (memory: nothing to do; flatfile: a journal line + fdatasync),
  applies them, and wakes whoever waits;
* :meth:`StateMachineBackend.add_project` — store a new project (create or import);
* :meth:`StateMachineBackend.slugs`, :meth:`StateMachineBackend.token_op` and
  :meth:`StateMachineBackend.signal` (the local wake-up broadcast claimers sleep on).
"""

from __future__ import annotations

import abc
import asyncio
import bisect
import contextlib
import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

from queue_service import exceptions
from queue_service.agents import Agent
from queue_service.agents_state import StateAgentRegistry
from queue_service.backend import Backend, RecordStore
from queue_service.dispatching import BaseDispatcher
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
    Task,
    TaskCreate,
    TaskFilter,
    TaskPage,
    TaskStatus,
    TaskUpdate,
)
from queue_service.state import Changes, ProjectState, snapshot_of, state_from_snapshot

__all__ = ["Signal", "StateMachineBackend", "StateTxn", "TokenStore", "events_after"]

logger = logging.getLogger(__name__)

R = TypeVar("R")


class StateTxn(Protocol):
    """What an operation sees inside a project's critical section."""

    @property
    def state(self) -> ProjectState:
        """The project's state, caught up with every commit."""
        ...

    @property
    def now(self) -> datetime:
        """The time of this operation (one clock reading for the whole critical section)."""
        ...

    def commit(self, changes: Changes) -> None:
        """Make *changes* durable and apply them (empty changes are skipped)."""
        ...


class TokenStore(Protocol):
    """API token records (hash only); the calls are blocking for a file-backed store."""

    def add(self, token: ApiToken) -> None:
        """Store a token; AlreadyExists for a duplicate id."""
        ...

    def find(self, token_hash: str) -> ApiToken | None:
        """The token with this hash, or None."""
        ...

    def count(self) -> int:
        """How many tokens exist, revoked ones included."""
        ...

    def all(self) -> list[ApiToken]:
        """Every token, oldest first."""
        ...

    def revoke(self, token_id: str) -> ApiToken:
        """Mark revoked (keeps the first revocation time); NotFound for an unknown id."""
        ...

    def purge(self) -> int:
        """Delete every token; how many there were."""
        ...


class Signal:
    """A re-armable broadcast: take ``current()`` before checking, wait on it after (no lost wake-ups)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def current(self) -> asyncio.Event:
        """The event the next :meth:`fire` sets."""
        return self._event

    def fire(self) -> None:
        """Wake everyone waiting on the current event, and arm a new one."""
        event, self._event = self._event, asyncio.Event()
        event.set()


def events_after(state: ProjectState, after_id: int, limit: int) -> list[Event]:
    """The project's events with ``id > after_id``, oldest first, at most *limit*."""
    start = bisect.bisect_right(state.events, after_id, key=lambda e: e.id)
    return state.events[start : start + limit]


class _Records(RecordStore):
    def __init__(self, backend: StateMachineBackend) -> None:
        self.b = backend

    async def create_project(self, data: ProjectCreate) -> Project:
        state, changes = ProjectState.new(data, self.b.now())
        state.apply(changes)
        await self.b.add_project(state, changes, f"create project {data.slug}")
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
        def op(txn: StateTxn) -> Project:
            txn.commit(txn.state.plan_update_project(patch, txn.now))
            return txn.state.project

        return await self.b.write(slug, op)

    async def create_mission(self, project: str, data: MissionCreate) -> Mission:
        def op(txn: StateTxn) -> Mission:
            txn.commit(txn.state.plan_create_mission(data, txn.now))
            return txn.state.missions[data.id]

        return await self.b.write(project, op)

    async def get_mission(self, project: str, mission: str) -> Mission:
        return await self.b.read(project, lambda s: s.require_mission(mission))

    async def list_missions(self, project: str) -> list[Mission]:
        missions = await self.b.read(project, lambda s: list(s.missions.values()))
        return sorted(missions, key=lambda m: (m.id != "default", m.created_at))

    async def update_mission(self, project: str, mission: str, data: MissionCreate) -> Mission:
        def op(txn: StateTxn) -> Mission:
            txn.commit(txn.state.plan_update_mission(mission, data, txn.now))
            return txn.state.missions[mission]

        return await self.b.write(project, op)

    async def create_tasks(self, project: str, items: Sequence[TaskCreate]) -> list[Task]:
        def op(txn: StateTxn) -> list[Task]:
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
        return await self.b.plan(
            project, lambda t: t.state.plan_update_task(key, patch, expected_version, actor, t.now)
        )

    async def cancel_task(self, project: str, key: str, reason: str | None = None, actor: str = "api") -> Task:
        return await self.b.plan(project, lambda t: t.state.plan_cancel(key, reason, actor, t.now))

    async def add_note(self, project: str, key: str, author: str, text: str, token: str | None = None) -> Note:
        return await self.b.plan(project, lambda t: t.state.plan_add_note(key, author, text, token, t.now))

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
        def op(txn: StateTxn) -> ReadyList:
            tasks, total = txn.state.ready_listed(roles, limit, txn.now)
            return ReadyList(tasks=tasks, total=total, unblocks={t.key: txn.state.unblocks(t.key) for t in tasks})

        return await self.b.run(project, op, exclusive=False)

    async def task_events(self, project: str, key: str, limit: int = 20) -> list[Event]:
        return await self.b.read(project, lambda s: s.task_events(key, limit))

    async def list_events(self, project: str, after_id: int = 0, limit: int = 1000) -> list[Event]:
        return await self.b.read(project, lambda s: events_after(s, after_id, limit))

    async def get_sync_state(self, project: str, path: str) -> dict[str, Any] | None:
        return await self.b.read(project, lambda s: copy.deepcopy(s.sync_state.get(path)))

    async def put_sync_state(
        self, project: str, path: str, state: dict[str, Any], rows: Mapping[str, dict[str, Any] | None] | None = None
    ) -> None:
        # only the changed rows are copied and stored (issue 17: cost grows with the change)
        delta = {path: copy.deepcopy(dict(rows))} if rows else {}

        def op(txn: StateTxn) -> None:
            txn.commit(Changes(sync_state={path: copy.deepcopy(state)}, sync_rows=delta))

        await self.b.write(project, op)

    async def get_sync_rows(self, project: str, path: str) -> dict[str, dict[str, Any]]:
        # entries are replaced, never mutated, by put_sync_state: a shallow copy is safe
        return await self.b.read(project, lambda s: dict(s.sync_rows.get(path, {})))

    async def add_api_token(self, token: ApiToken) -> None:
        await self.b.token_op(lambda store: store.add(token), "store an API token")

    async def find_api_token(self, token_hash: str) -> ApiToken | None:
        return await self.b.token_op(lambda store: store.find(token_hash), "read API tokens")

    async def count_api_tokens(self) -> int:
        return await self.b.token_op(lambda store: store.count(), "read API tokens")

    async def list_api_tokens(self) -> list[ApiToken]:
        return await self.b.token_op(lambda store: store.all(), "read API tokens")

    async def revoke_api_token(self, token_id: str) -> ApiToken:
        return await self.b.token_op(lambda store: store.revoke(token_id), "revoke an API token")

    async def purge_api_tokens(self) -> int:
        return await self.b.token_op(lambda store: store.purge(), "delete API tokens")

    async def export_project(self, project: str) -> ProjectSnapshot:
        return await self.b.read(project, snapshot_of)

    async def import_project(self, snapshot: ProjectSnapshot) -> Project:
        state, changes = state_from_snapshot(snapshot)
        await self.b.add_project(state, changes, f"import project {snapshot.project.slug}")
        return state.project


class _Dispatch(BaseDispatcher[None]):
    def __init__(self, backend: StateMachineBackend) -> None:
        self.b = backend
        self.config = backend.config

    def _claim_in(
        self, txn: StateTxn, agent: str, roles: list[str] | None, limit: int, lease: float, want_due: bool
    ) -> tuple[list[Claim], float | None]:
        state, now = txn.state, txn.now
        # Without a central sweeper (flatfile), every claim first expires this project's dead leases.
        if self.b.sweeps_on_claim and state.has_expired_lease(now):
            changes, _ = state.plan_sweep(self.config, now)
            txn.commit(changes)
        changes, claims = state.plan_claim_many(agent, roles, limit, lease, now, self.config)
        txn.commit(changes)  # the whole batch is one change (one journal entry), or a registry-only one
        if claims:
            return claims, None
        return [], state.next_due(roles, now, leases=self.b.sweeps_on_claim) if want_due else None

    async def _try_claim(
        self,
        project: str,
        agent: str,
        roles: list[str] | None,
        limit: int,
        lease: float,
        want_due: bool,
        woken: None = None,  # a wait here takes nothing (it only watches an event)
    ) -> tuple[list[Claim], float | None]:
        return await self.b.write(project, lambda txn: self._claim_in(txn, agent, roles, limit, lease, want_due))

    def _arm(self, project: str) -> asyncio.Event:
        return self.b.signal(project).current()

    async def _wait_for_ready(
        self, project: str, roles: list[str] | None, armed: asyncio.Event | None, timeout: float
    ) -> None:
        if armed is None:  # not reached: _arm always answers; sleep rather than spin
            armed = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(armed.wait(), timeout)

    def _start_waiting(self, project: str) -> None:
        self.b.watch(project)

    def _stop_waiting(self, project: str) -> None:
        self.b.unwatch(project)

    async def _heartbeat(self, project: str, key: str, token: str, lease: float) -> Lease:
        return await self.b.plan(project, lambda t: t.state.plan_heartbeat(key, token, lease, t.now))

    async def complete(self, project: str, key: str, token: str, result: Any = None) -> Task:
        return await self.b.plan(project, lambda t: t.state.plan_complete(key, token, result, t.now))

    async def complete_many(
        self, project: str, items: Sequence[tuple[str, str, Any]]
    ) -> list[Task | exceptions.QueueServiceError]:
        """See :meth:`Dispatcher.complete_many`: one plan, one commit for the batch."""
        return await self.b.plan(project, lambda t: t.state.plan_complete_many(items, t.now))

    async def fail(self, project: str, key: str, token: str, error: str, retryable: bool = True) -> Task:
        return await self.b.plan(project, lambda t: t.state.plan_fail(key, token, error, retryable, self.config, t.now))

    async def release(self, project: str, key: str, token: str) -> Task:
        return await self.b.plan(project, lambda t: t.state.plan_release(key, token, t.now))

    async def retry(self, project: str, key: str, actor: str = "api") -> Task:
        return await self.b.plan(project, lambda t: t.state.plan_retry(key, actor, t.now))

    async def sweep(self) -> SweepReport:
        expired: list[str] = []
        dead: list[str] = []
        released = 0

        def op(txn: StateTxn) -> tuple[list[str], list[str], int]:
            changes, keys = txn.state.plan_sweep(self.config, txn.now)
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


class StateMachineBackend(Backend):
    """A Backend whose records and dispatch are ProjectState plans (subclasses add storage and wake-ups)."""

    #: expire a project's dead leases at the start of every claim (no central sweeper to rely on)
    sweeps_on_claim: bool = False
    now: Callable[[], datetime]

    def __init__(self) -> None:
        #: slug -> message for projects that failed to load (list_projects and sweep skip them)
        self.problems: dict[str, str] = {}
        self._signals: dict[str, Signal] = {}
        self.records = _Records(self)
        self.dispatch = _Dispatch(self)
        self.agents = StateAgentRegistry(self._plan_agent, self._read_agents, lambda: self.config.agent_ready_seconds)

    # -- primitives -----------------------------------------------------------------------------
    @abc.abstractmethod
    async def run(self, slug: str, fn: Callable[[StateTxn], R], exclusive: bool) -> R:
        """Run *fn* in the project's critical section (shared or exclusive); ProjectNotFound if none."""

    @abc.abstractmethod
    async def add_project(self, state: ProjectState, changes: Changes, what: str) -> None:
        """Store a new project (*state* already holds *changes*). AlreadyExists if the slug is taken."""

    @abc.abstractmethod
    async def slugs(self) -> list[str]:
        """The projects present, sorted."""

    @abc.abstractmethod
    async def token_op(self, fn: Callable[[TokenStore], R], what: str) -> R:
        """Run *fn* on the API token store (*what* names it in errors)."""

    def watch(self, slug: str) -> None:
        """A claimer starts waiting on *slug* (flatfile polls for other processes' commits meanwhile)."""

    def unwatch(self, slug: str) -> None:
        """A claimer stopped waiting on *slug*."""

    # -- shared plumbing ------------------------------------------------------------------------
    def signal(self, slug: str) -> Signal:
        """The project's local wake-up broadcast (event-loop side)."""
        sig = self._signals.get(slug)
        if sig is None:
            sig = self._signals[slug] = Signal()
        return sig

    async def _plan_agent(self, slug: str, fn: Callable[[ProjectState, datetime], tuple[Changes, Agent]]) -> Agent:
        def op(txn: StateTxn) -> Agent:
            changes, result = fn(txn.state, txn.now)
            txn.commit(changes)
            return result

        return await self.run(slug, op, exclusive=True)

    async def _read_agents(self, slug: str, fn: Callable[[ProjectState, datetime], list[Agent]]) -> list[Agent]:
        return await self.run(slug, lambda txn: fn(txn.state, txn.now), exclusive=False)

    async def read(self, slug: str, fn: Callable[[ProjectState], R]) -> R:
        """A read on the caught-up state."""
        return await self.run(slug, lambda txn: fn(txn.state), exclusive=False)

    async def write(self, slug: str, fn: Callable[[StateTxn], R]) -> R:
        """A write in the exclusive critical section."""
        return await self.run(slug, fn, exclusive=True)

    async def plan(self, slug: str, plan: Callable[[StateTxn], tuple[Changes, R]]) -> R:
        """Plan against the caught-up state, commit the changes, return what the plan answered."""

        def op(txn: StateTxn) -> R:
            changes, result = plan(txn)
            txn.commit(changes)
            return result

        return await self.write(slug, op)
