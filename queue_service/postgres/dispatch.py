"""PostgresValkeyDispatcher: fenced leases decided in Postgres, signalled through Valkey (DESIGN §3).

The split of responsibilities:

* **Postgres decides.** A claim is a routed claim (issue 13, :mod:`queue_service.postgres.claims`):
  one transaction picks among the ready tasks (not-started, ``pending_deps = 0``, ``not_before``
  passed) by fair share, labels, concurrency keys and the role's strategy and takes them with
  ``FOR UPDATE SKIP LOCKED``: exactly one racer gets a task. Heartbeat/complete/fail/release match on
  ``lease_token = :token AND status = 'in-progress' AND lease_expires_at > statement_timestamp()``
  (the database's clock, never a replica's), so a zombie whose
  lease expired or was reclaimed changes nothing.
* **Valkey signals.** Ready lists wake idle claimers (BLPOP, no polling); Postgres still picks what
  a woken claimer gets. The lock key mirrors the lease for observers; pub/sub carries events after commit. All of
  it is derived state: a lost entry is found again by :meth:`PostgresValkeyDispatcher.sweep`'s
  reconcile, a stale entry is dropped by the claimer it woke.

Valkey is only written *after* the Postgres transaction committed, and a Valkey failure at that point
is logged, not raised: the durable change stands and the next sweep repairs the derived state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import uuid
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy import Text, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from queue_service import domain, exceptions
from queue_service.backend import DispatchConfig
from queue_service.dispatching import BaseDispatcher
from queue_service.models import Claim, Event, Lease, SweepReport, Task, TaskStatus, utcnow
from queue_service.postgres import outcomes, transitions
from queue_service.postgres import tables as t
from queue_service.postgres.asyncpg_pool import RawPool, asyncpg_dsn
from queue_service.postgres.claims import claim_routed
from queue_service.postgres.errors import wrap_errors
from queue_service.postgres.outcomes import DB_NOW, END_LEASE
from queue_service.postgres.resources import load_queries
from queue_service.postgres.rows import TASK_RETURNING_SQL, task_columns, task_from_row
from queue_service.postgres.sweep import PostgresSweeper, ready_item
from queue_service.postgres.transitions import (
    EVENT_CLAIMED,
    EVENT_COMPLETED,
    EVENT_FAILED,
    EVENT_LEASE_EXPIRED,
    EVENT_RELEASED,
    EVENT_RETRIED,
    Effects,
)
from queue_service.postgres.valkey import BrokerBatch, Popped, ReadyItem, ValkeyBroker

__all__ = [
    "EVENT_CLAIMED",
    "EVENT_COMPLETED",
    "EVENT_FAILED",
    "EVENT_LEASE_EXPIRED",
    "EVENT_RELEASED",
    "EVENT_RETRIED",
    "PostgresValkeyDispatcher",
    "event_payload",
]

logger = logging.getLogger(__name__)

S = TaskStatus

#: Statuses ``retry`` revives.
_RETRYABLE_STATUSES = (S.FAILED.value, S.BLOCKED.value, S.CANCELLED.value)

_tasks = t.tasks
#: claim, heartbeat, complete and their batch forms, run on the raw asyncpg pool
_Q = load_queries("leases.sql", task_returning=TASK_RETURNING_SQL)


# -- lease statements, built once -------------------------------------------------------------
# Building a Core statement costs milliseconds of Python per call; these are built at import with
# bind parameters (``p_*``, distinct from column names) and only executed afterwards. The hottest
# ones (claim, heartbeat, complete) are raw asyncpg statements in ``sql/leases.sql``.
_P_PROJECT = bindparam("p_project", type_=Text)
_P_KEY = bindparam("p_key", type_=Text)
_P_TOKEN = bindparam("p_token", type_=Text)
_P_NOW = bindparam("p_now", type_=_tasks.c.updated_at.type)

_LEASE_MATCH = (
    (_tasks.c.project == _P_PROJECT)
    & (_tasks.c.key == _P_KEY)
    & (_tasks.c.lease_token == _P_TOKEN)
    & (_tasks.c.status == S.IN_PROGRESS.value)
    & (_tasks.c.lease_expires_at > DB_NOW)
)

_RELEASE = (
    update(_tasks)
    .where(_LEASE_MATCH)
    # assignee cleared too: nobody works on a released task any more (issue 11)
    .values(status=S.NOT_STARTED.value, assignee=None, updated_at=_P_NOW, version=_tasks.c.version + 1, **END_LEASE)
    .returning(*task_columns)
)
_LOCK_FOR_FAILURE = select(_tasks.c.id, _tasks.c.attempts, _tasks.c.max_attempts).where(_LEASE_MATCH).with_for_update()


#: longest pause of a waiting claimer whose wake-ups are for tasks it may not take, seconds
_MAX_PAUSE = 0.5


@dataclass
class _Waiting:
    """One claim call's waits (:meth:`PostgresValkeyDispatcher._wait_for_ready`)."""

    #: the last wake-up was for a task this claimer may not take: pause before blocking again
    refused: bool = False
    pause: float = 0.02


#: the waits of the claim call running in this task; the base's wait loop runs in the caller's
#: task, so its attempts and waits share it (concurrent calls each have their own)
_WAITING: ContextVar[_Waiting | None] = ContextVar("queue_service_pg_claim_waiting", default=None)


def event_payload(event: Event) -> dict[str, Any]:
    """The JSON published on the project's channel: ``{project, task, status, version, at}`` plus
    ``id``, ``kind`` and ``data`` (enough to rebuild the :class:`Event`)."""
    return {
        "id": event.id,
        "project": event.project,
        "task": event.task,
        "kind": event.kind,
        "status": event.status.value if event.status is not None else None,
        "version": event.version,
        "at": event.at.isoformat(),
        "data": event.data,
    }


def _lease_event(project: str, row: Any, kind: str, status: TaskStatus, data: dict[str, Any]) -> dict[str, Any]:
    """The published payload (:func:`event_payload`'s shape) of the event a lease statement wrote
    alongside its task row (``event_id``, without reading the event back)."""
    return {
        "id": row["event_id"],
        "project": project,
        "task": row["key"],
        "kind": kind,
        "status": status.value,
        "version": row["version"],
        "at": row["updated_at"].isoformat(),
        "data": data,
    }


async def _recount_dependents(conn: asyncpg.Connection, task_ids: Sequence[int]) -> list[Any]:
    """The dependents of *task_ids* (just completed) recounted (:func:`transitions.recount_dependents`);
    returns those now ready, best first."""
    rows = await transitions.recount_dependents(conn.fetch, task_ids)
    ready = [r for r in rows if r["status"] == S.NOT_STARTED.value and r["pending_deps"] == 0]
    return sorted(ready, key=lambda r: (r["priority"], r["seq"]))


def _promote(batch: BrokerBatch, project: str, rows: Sequence[Any]) -> None:
    """File recounted ready dependents: due ones in their lists, the others in the scheduled set."""
    for r in rows:
        if r["due"]:
            batch.ready.append(ReadyItem(project, r["key"], r["role"], r["priority"]))
        else:
            batch.scheduled.append((project, r["key"], r["not_before"]))


class PostgresValkeyDispatcher(BaseDispatcher[Popped]):
    """Claims, leases, completion, retries and the orchestrator sweep over Postgres + Valkey.

    Args:
        engine: the async engine of the record database.
        broker: an open :class:`ValkeyBroker`.
        config: timings and limits.
        node_id: this process's name in the orchestrator leader lock (random by default).
        rng: random source for backoff jitter (tests may seed it).
        raw_pool_size: connections of the asyncpg pool behind claim, heartbeat and complete
            (:mod:`queue_service.postgres.asyncpg_pool`), opened on first use.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        broker: ValkeyBroker,
        config: DispatchConfig,
        *,
        node_id: str | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] = utcnow,
        raw_pool_size: int = 10,
    ) -> None:
        self.engine = engine
        # claim / heartbeat / complete: one prepared autocommit statement each, straight on asyncpg
        self._raw = RawPool(asyncpg_dsn(engine.url), max_size=raw_pool_size)
        #: the asyncpg pool of the hot statements, shared with the record store's create_task fast path
        self.raw_pool = self._raw
        self.broker = broker
        self.config = config
        self.node_id = node_id or f"dispatcher-{uuid.uuid4().hex[:12]}"
        self._rng = rng or random.Random()
        self._now = clock
        self._known_projects: set[str] = set()
        self._sweeper = PostgresSweeper(engine, broker, config, node_id=self.node_id, apply_effects=self.apply_effects)
        #: longest a waiting claimer blocks on the Valkey lists before asking Postgres again: a ready
        #: task no list holds (Valkey emptied, no orchestrator: serverless/direct mode) is still found
        self.idle_check_seconds = float(config.extra.get("idle_check_seconds", max(1.0, config.sweep_seconds)))

    async def close(self) -> None:
        """Close the lease statements' asyncpg pool (the engine is the backend's to dispose). Idempotent."""
        async with wrap_errors():
            await self._raw.close()

    # -- after commit ------------------------------------------------------------------------
    async def _signal(self, batch: BrokerBatch) -> None:
        """:meth:`apply_effects` for a batch built directly (the lease statements): never raises."""
        try:
            await self.broker.apply(batch)
        except exceptions.BackendError as exc:
            logger.warning("Valkey update after commit failed (the sweep will reconcile): %s", exc)

    async def apply_effects(self, effects: Effects, batch: BrokerBatch | None = None) -> None:
        """Tell Valkey what a committed transaction did: queue ready tasks, schedule backoffs,
        publish events (in that order, one round trip). Never raises: a Valkey failure here is
        logged and repaired by the next sweep's reconcile, because the durable change already stands.

        This is also the record store's ``on_commit`` callback.
        """
        batch = batch or BrokerBatch()
        batch.ready.extend(ready_item(r) for r in effects.ready)
        batch.scheduled.extend((r.project, r.key, r.not_before) for r in effects.scheduled if r.not_before)
        batch.events.extend((e.project, event_payload(e)) for e in effects.events)
        try:
            await self.broker.apply(batch)
        except exceptions.BackendError as exc:
            logger.warning("Valkey update after commit failed (the sweep will reconcile): %s", exc)

    # -- helpers -----------------------------------------------------------------------------
    async def require_project(self, conn: AsyncConnection | None, project: str) -> None:
        """Raise ProjectNotFound unless *project* exists (known projects are cached: never deleted)."""
        if project in self._known_projects:
            return
        stmt = select(t.projects.c.slug).where(t.projects.c.slug == project)
        if conn is None:
            async with wrap_errors(), self.engine.connect() as c:
                found = (await c.execute(stmt)).first()
        else:
            found = (await conn.execute(stmt)).first()
        if found is None:
            raise exceptions.ProjectNotFound(f"no project {project!r}", project=project)
        self._known_projects.add(project)

    async def _lease_refused(
        self, conn: AsyncConnection, project: str, key: str, now: datetime
    ) -> exceptions.QueueServiceError:
        """Why a token-checked update matched nothing: unknown project/task, or a bad lease."""
        await self.require_project(conn, project)
        row = (
            await conn.execute(
                select(
                    _tasks.c.status, _tasks.c.lease_expires_at, (_tasks.c.lease_expires_at <= DB_NOW).label("expired")
                ).where((_tasks.c.project == project) & (_tasks.c.key == key))
            )
        ).first()
        if row is None:
            return exceptions.TaskNotFound(f"no task {key!r} in project {project!r}", project=project, task=key)
        if row.status == S.IN_PROGRESS.value and row.lease_expires_at is not None and row.expired:
            return exceptions.LeaseError(
                f"lease on task {key} expired at {row.lease_expires_at.isoformat()}",
                task=key,
                reason="expired",
                at=row.lease_expires_at.isoformat(),
                by=None,
            )
        return exceptions.LeaseError(
            f"lease token for task {key} is not valid (the task was reclaimed, finished or never claimed "
            "with this token)",
            task=key,
            status=row.status,
        )

    def _backoff(self, attempts: int) -> timedelta:
        c = self.config
        return domain.backoff_delay(
            attempts, c.backoff_base_seconds, c.backoff_max_seconds, c.backoff_jitter, self._rng
        )

    # -- claim: BaseDispatcher's argument rules and wait loop over these primitives --------------
    # Every claim is routed (issue 13): Postgres picks (queue_service/postgres/claims.py); the Valkey
    # lists only wake waiting claimers.
    async def _try_claim(
        self,
        project: str,
        agent: str,
        roles: list[str] | None,
        limit: int,
        lease: float,
        want_due: bool,
        woken: Popped | None = None,
    ) -> tuple[list[Claim], float | None]:
        """One routed claim (:func:`queue_service.postgres.claims.claim_routed`): one transaction
        registers the agent, checks its capacity and picks by fair share, labels, concurrency keys and
        the role's strategy, in ``domain.dispatch_order`` within those rules. *woken* (the key the last
        wait popped) goes back to its list unless this claim took it.

        Nothing claimed: backoffs that came due are queued (waking claimers), and the wait is bounded
        by the next one's due time and by ``idle_check_seconds``, so a waiting claimer asks Postgres
        again even when no list holds its ready tasks (Valkey emptied or restarted, no orchestrator).
        """
        if woken is None:  # (a woken claimer's project was checked by the attempt before its wait)
            await self.require_project(None, project)
        got = await claim_routed(self, project, agent, roles, limit, lease, woken)
        if got:
            got.sort(key=lambda c: (c.task.priority.value, c.task.seq))
            return got, None
        waiting = _WAITING.get()
        if woken is not None and waiting is not None:
            waiting.refused = True
        _, next_in = await self.release_due(project)
        return [], self.idle_check_seconds if next_in is None else min(next_in, self.idle_check_seconds)

    def _start_waiting(self, project: str) -> None:
        _WAITING.set(_Waiting())

    def _stop_waiting(self, project: str) -> None:
        _WAITING.set(None)

    async def _wait_for_ready(
        self, project: str, roles: list[str] | None, armed: asyncio.Event | None, timeout: float
    ) -> Popped | None:
        """Block in BLPOP on the ready lists of *roles* (every commit that makes a task ready pushes its
        key there after it committed) for up to *timeout* seconds; the key it pops is handed to the next
        :meth:`_try_claim`. After a wake-up for a task this claimer may not take (offered to another
        agent, a label it lacks, a key at its limit) it pauses instead, growing: that key went back to
        its list, and blocking at once would pop it again and spin."""
        waiting = _WAITING.get()
        if waiting is not None and waiting.refused:
            waiting.refused = False
            await asyncio.sleep(min(waiting.pause, timeout))
            waiting.pause = min(_MAX_PAUSE, waiting.pause * 2)
            return None
        return await self.broker.pop(project, roles, timeout=timeout, try_first=False)

    # -- lease operations --------------------------------------------------------------------
    async def _heartbeat(self, project: str, key: str, token: str, lease: float) -> Lease:
        """Lease bookkeeping only: no version bump, no event."""
        now = self._now()
        async with wrap_errors(), self._raw.connection() as raw:
            row = await raw.fetchrow(_Q["heartbeat"], project, key, token, lease)
        if row is None:
            async with wrap_errors(), self.engine.connect() as conn:
                raise await self._lease_refused(conn, project, key, now)
        holder = row["lease_holder"]
        try:
            await self.broker.extend_lock(project, key, token, lease)
        except exceptions.BackendError as exc:
            logger.warning("could not extend the Valkey lock of %s/%s: %s", project, key, exc)
        return Lease(token=token, holder=holder or "", expires_at=row["lease_expires_at"], seconds=lease)

    async def complete(self, project: str, key: str, token: str, result: Any = None) -> Task:
        """See :meth:`Dispatcher.complete`; dependents are promoted by the same statement."""
        now = self._now()
        promoted: list[Any] = []
        async with wrap_errors(), self._raw.connection() as conn, conn.transaction():
            row = await conn.fetchrow(_Q["complete"], project, key, token, result)
            if row is not None:
                promoted = await _recount_dependents(conn, [row["id"]])
        if row is None:
            async with wrap_errors(), self.engine.connect() as sa_conn:
                raise await self._lease_refused(sa_conn, project, key, now)
        batch = BrokerBatch(unlocks=[(project, key, token)])
        _promote(batch, project, promoted)
        batch.events.append((project, _lease_event(project, row, EVENT_COMPLETED, S.DONE, {})))
        await self._signal(batch)
        return task_from_row(row)

    async def complete_many(
        self, project: str, items: Sequence[tuple[str, str, Any]]
    ) -> list[Task | exceptions.QueueServiceError]:
        """See :meth:`Dispatcher.complete_many`: every item, its event and the dependents' promotion in
        one autocommit statement; then one Valkey pipeline (unlocks, newly ready dependents, events)."""
        out: list[Task | exceptions.QueueServiceError | None] = [None] * len(items)
        # An item repeating an earlier (key, token) can only be a second completion of the same lease.
        first: dict[tuple[str, str], int] = {}
        send: list[int] = []
        for i, (key, token, _result) in enumerate(items):
            if (key, token) in first:
                out[i] = exceptions.LeaseError(f"task {key} is completed once in this batch already", task=key)
            else:
                first[(key, token)] = i
                send.append(i)
        rows: list[Any] = []
        promoted: list[Any] = []
        if send:
            # By key, as in claim_many: whether the plan walks the items or the (project, key) index,
            # racing batches (a retried batch, items reversed) then lock shared rows in one order.
            ordered = sorted(send, key=lambda i: items[i][0])
            keys = [items[i][0] for i in ordered]
            tokens = [items[i][1] for i in ordered]
            results = [None if items[i][2] is None else json.dumps(items[i][2]) for i in ordered]
            async with wrap_errors(), self._raw.connection() as conn, conn.transaction():
                rows = await conn.fetch(_Q["complete_many"], project, keys, tokens, results)
                if rows:
                    promoted = await _recount_dependents(conn, [r["id"] for r in rows])
        batch = BrokerBatch()
        for row in rows:
            key, token = row["key"], row["done_token"]
            out[first[(key, token)]] = task_from_row(row)
            batch.unlocks.append((project, key, token))
            batch.events.append((project, _lease_event(project, row, EVENT_COMPLETED, S.DONE, {})))
        if rows:
            _promote(batch, project, promoted)
            await self._signal(batch)
        if not items:
            await self.require_project(None, project)
        # Items the statement did not complete: a bad or expired token or an unknown key. Each goes
        # through complete() on its own, which explains it (refusals are the exception).
        for i in send:
            if out[i] is None:
                key, token, result = items[i]
                try:
                    out[i] = await self.complete(project, key, token, result)
                except exceptions.LeaseError as exc:
                    out[i] = exc
                except exceptions.TaskNotFound as exc:
                    out[i] = exceptions.LeaseError(exc.message, task=key)
                except exceptions.BackendError as exc:
                    # the batch statement above is committed: report this item, don't raise over it
                    out[i] = exc
        return [r for r in out if r is not None]

    async def fail(self, project: str, key: str, token: str, error: str, retryable: bool = True) -> Task:
        """See :meth:`Dispatcher.fail`: backoff while attempts remain, else dead-letter."""
        now = self._now()
        async with wrap_errors(), self.engine.begin() as conn:
            cur = (
                await conn.execute(
                    _LOCK_FOR_FAILURE, {"p_project": project, "p_key": key, "p_token": token, "p_now": now}
                )
            ).first()
            if cur is None:
                raise await self._lease_refused(conn, project, key, now)
            row, effects = await outcomes.record_failure(
                conn, cur.id, cur.attempts, cur.max_attempts, error, retryable, EVENT_FAILED, now, {}, self._backoff
            )
        await self.apply_effects(effects, BrokerBatch(unlocks=[(project, key, token)]))
        return task_from_row(row)

    async def release(self, project: str, key: str, token: str) -> Task:
        """See :meth:`Dispatcher.release`: not-started and queued again, no attempt counted."""
        now = self._now()
        params = {"p_project": project, "p_key": key, "p_token": token, "p_now": now}
        async with wrap_errors(), self.engine.begin() as conn:
            row = (await conn.execute(_RELEASE, params)).first()
            if row is None:
                raise await self._lease_refused(conn, project, key, now)
            effects = await outcomes.status_changed(conn, row, S.IN_PROGRESS, EVENT_RELEASED, now, {})
        await self.apply_effects(effects, BrokerBatch(unlocks=[(project, key, token)]))
        return task_from_row(row)

    async def retry(self, project: str, key: str, actor: str = "api") -> Task:
        """See :meth:`Dispatcher.retry`: failed/blocked/cancelled → not-started, attempts reset."""
        now = self._now()
        async with wrap_errors(), self.engine.begin() as conn:
            await self.require_project(conn, project)
            cur = (
                await conn.execute(
                    select(_tasks.c.id, _tasks.c.status)
                    .where((_tasks.c.project == project) & (_tasks.c.key == key))
                    .with_for_update()
                )
            ).first()
            if cur is None:
                raise exceptions.TaskNotFound(f"no task {key!r} in project {project!r}", project=project, task=key)
            if cur.status not in _RETRYABLE_STATUSES:
                raise exceptions.InvalidTransition(
                    f"task {key} is {cur.status}; only failed, blocked or cancelled tasks can be retried",
                    task=key,
                    current=cur.status,
                    target=S.NOT_STARTED.value,
                )
            row = (
                await conn.execute(
                    update(_tasks)
                    .where(_tasks.c.id == cur.id)
                    .values(
                        status=S.NOT_STARTED.value,
                        attempts=0,
                        not_before=None,
                        blocked_reason=None,
                        updated_at=now,
                        version=_tasks.c.version + 1,
                        **END_LEASE,
                    )
                    .returning(*task_columns)
                )
            ).one()
            effects = await outcomes.status_changed(
                conn, row, TaskStatus(cur.status), EVENT_RETRIED, now, {"actor": actor}, actor=actor
            )
        await self.apply_effects(effects)
        return task_from_row(row)

    # -- orchestrator (queue_service/postgres/sweep.py) ---------------------------------------
    async def sweep(self) -> SweepReport:
        """See :meth:`Dispatcher.sweep`; the steps are :meth:`PostgresSweeper.sweep`'s."""
        return await self._sweeper.sweep(self._now())

    async def release_due(self, project: str, now: datetime | None = None) -> tuple[int, float | None]:
        """Queue the project's backed-off tasks that came due (:meth:`PostgresSweeper.release_due`)."""
        return await self._sweeper.release_due(project, now or self._now())

    async def reconcile_project(self, project: str, now: datetime | None = None) -> int:
        """Make Valkey agree with Postgres for one project (:meth:`PostgresSweeper.reconcile_project`)."""
        return await self._sweeper.reconcile_project(project, now or self._now())

    @property
    def depth_gauges(self) -> dict[str, dict[str, int]]:
        """Last ready depth per project and role, refreshed by every sweep (for /metrics)."""
        return self._sweeper.depth_gauges

    @property
    def repaired_counts(self) -> int:
        """Pending counts the full reconcile had to repair (by construction 0)."""
        return self._sweeper.repaired_counts

    async def queue_depths(self, project: str) -> dict[str, int]:
        """Ready-list length per role (roles with an empty list are left out)."""
        await self.require_project(None, project)
        return {role: n for role, n in (await self.broker.depth(project)).items() if n}
