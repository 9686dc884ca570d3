"""PostgresValkeyDispatcher: fenced leases decided in Postgres, signalled through Valkey (DESIGN §3).

The split of responsibilities:

* **Postgres decides.** A claim is a conditional ``UPDATE`` (still not-started, ``pending_deps = 0``,
  ``not_before`` passed): exactly one racer matches. Heartbeat/complete/fail/release match on
  ``lease_token = :token AND status = 'in-progress' AND lease_expires_at > statement_timestamp()``
  (the database's clock, never a replica's), so a zombie whose
  lease expired or was reclaimed changes nothing.
* **Valkey signals.** Ready lists tell claimers *which* key to try (BLPOP wakes them instantly, no
  polling); the lock key mirrors the lease for observers; pub/sub carries events after commit. All of
  it is derived state: a lost entry is found again by :meth:`PostgresValkeyDispatcher.sweep`'s
  reconcile, a stale entry is dropped by the claimer whose ``UPDATE`` matched nothing.

Valkey is only written *after* the Postgres transaction committed, and a Valkey failure at that point
is logged, not raised: the durable change stands and the next sweep repairs the derived state.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import BigInteger, Text, bindparam, func, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from queue_service import domain, exceptions
from queue_service.backend import DispatchConfig, Dispatcher
from queue_service.models import Claim, Event, Lease, SweepReport, Task, TaskStatus, utcnow
from queue_service.postgres import tables as t
from queue_service.postgres import transitions
from queue_service.postgres.claims import claim_routed
from queue_service.postgres.errors import wrap_errors
from queue_service.postgres.hotpath import (
    COMPLETE_MANY_SQL,
    COMPLETE_SQL,
    HEARTBEAT_SQL,
    LOCK_DEPENDENTS_SQL,
    RECOUNT_SQL,
    RawPool,
    asyncpg_dsn,
    task_from_record,
)
from queue_service.postgres.records import task_columns, task_from_row
from queue_service.postgres.transitions import Effects, ReadyTask
from queue_service.postgres.valkey import BrokerBatch, ReadyItem, ValkeyBroker

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

_T = TypeVar("_T")

S = TaskStatus
EVENT_CLAIMED = "claimed"
EVENT_COMPLETED = "completed"
EVENT_FAILED = "failed"
EVENT_RELEASED = "released"
EVENT_RETRIED = "retried"
EVENT_LEASE_EXPIRED = "lease_expired"

#: Statuses ``retry`` revives.
_RETRYABLE_STATUSES = (S.FAILED.value, S.BLOCKED.value, S.CANCELLED.value)
#: Most expired leases handled per sweep transaction (a long outage is worked off over several sweeps).
_SWEEP_BATCH = 500

_tasks = t.tasks
_TASK_RETURNING = task_columns

_READY_SQL = (_tasks.c.status == S.NOT_STARTED.value) & (_tasks.c.pending_deps == 0)


# -- lease statements, built once -------------------------------------------------------------
# Building a Core statement costs milliseconds of Python per call; these are built at import with
# bind parameters (``p_*``, distinct from column names) and only executed afterwards. The hottest
# ones (claim, heartbeat, complete) are raw asyncpg statements in :mod:`.hotpath`.
_P_PROJECT = bindparam("p_project", type_=Text)
_P_KEY = bindparam("p_key", type_=Text)
_P_TOKEN = bindparam("p_token", type_=Text)
_P_NOW = bindparam("p_now", type_=_tasks.c.updated_at.type)
#: The database's time: every lease decision uses it, never a replica's clock (issue 10, finding 3).
_DB_NOW = func.statement_timestamp(type_=_tasks.c.updated_at.type)

_LEASE_MATCH = (
    (_tasks.c.project == _P_PROJECT)
    & (_tasks.c.key == _P_KEY)
    & (_tasks.c.lease_token == _P_TOKEN)
    & (_tasks.c.status == S.IN_PROGRESS.value)
    & (_tasks.c.lease_expires_at > _DB_NOW)
)
_END_LEASE: dict[str, Any] = {"lease_holder": None, "lease_token": None, "lease_expires_at": None}


_RELEASE = (
    update(_tasks)
    .where(_LEASE_MATCH)
    # assignee cleared too: nobody works on a released task any more (issue 11)
    .values(status=S.NOT_STARTED.value, assignee=None, updated_at=_P_NOW, version=_tasks.c.version + 1, **_END_LEASE)
    .returning(*_TASK_RETURNING)
)
_LOCK_FOR_FAILURE = select(_tasks.c.id, _tasks.c.attempts, _tasks.c.max_attempts).where(_LEASE_MATCH).with_for_update()


#: Not-started tasks whose pending count disagrees with their dependencies (see
#: :meth:`PostgresValkeyDispatcher._repair_pending_counts`).
_MISCOUNTED = text(
    """
    SELECT t.id FROM tasks t
    WHERE t.status = 'not-started' AND t.pending_deps <> (
        SELECT count(*) FROM task_dependencies d JOIN tasks p ON p.id = d.depends_on_id
        WHERE d.task_id = t.id AND p.status <> 'done'
    )
    ORDER BY t.id LIMIT 500
    """
)
_LOCK_MISCOUNTED = text(
    "SELECT id FROM tasks WHERE id = ANY(:ids) AND status = 'not-started' ORDER BY id FOR UPDATE SKIP LOCKED"
).bindparams(bindparam("ids", type_=ARRAY(BigInteger)))


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


def _ready_item(task: ReadyTask) -> ReadyItem:
    return ReadyItem(project=task.project, key=task.key, role=task.role, priority=task.priority)


async def _recount_dependents(conn: asyncpg.Connection, task_ids: Sequence[int]) -> list[Any]:
    """Lock the direct dependents of *task_ids* (rows the caller changed in this transaction) in id
    order, then recount their ``pending_deps``; returns the recounted rows now ready, best first.

    Two statements on purpose: the recount starts after every lock is held, so its snapshot has
    every edge and every dependency status that committed before (see docs/plans/dispatch.md).
    """
    ids = sorted({r["id"] for r in await conn.fetch(LOCK_DEPENDENTS_SQL, list(task_ids))})
    if not ids:
        return []
    rows = await conn.fetch(RECOUNT_SQL, ids)
    ready = [r for r in rows if r["status"] == S.NOT_STARTED.value and r["pending_deps"] == 0]
    return sorted(ready, key=lambda r: (r["priority"], r["seq"]))


def _promote(batch: BrokerBatch, project: str, rows: Sequence[Any]) -> None:
    """File recounted ready dependents: due ones in their lists, the others in the scheduled set."""
    for r in rows:
        if r["due"]:
            batch.ready.append(ReadyItem(project, r["key"], r["role"], r["priority"]))
        else:
            batch.scheduled.append((project, r["key"], r["not_before"]))


class PostgresValkeyDispatcher(Dispatcher):
    """Claims, leases, completion, retries and the orchestrator sweep over Postgres + Valkey.

    Args:
        engine: the async engine of the record database.
        broker: an open :class:`ValkeyBroker`.
        config: timings and limits.
        node_id: this process's name in the orchestrator leader lock (random by default).
        rng: random source for backoff jitter (tests may seed it).
        raw_pool_size: connections of the asyncpg pool behind claim, heartbeat and complete
            (:mod:`queue_service.postgres.hotpath`), opened on first use.
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
        self.broker = broker
        self.config = config
        self.node_id = node_id or f"dispatcher-{uuid.uuid4().hex[:12]}"
        self._rng = rng or random.Random()
        self._now = clock
        self._known_projects: set[str] = set()
        #: last ready depth per project and role, refreshed by every sweep (for /metrics)
        self.depth_gauges: dict[str, dict[str, int]] = {}
        self._last_full_reconcile = 0.0
        #: not-started tasks whose pending_deps the full reconcile found wrong and recounted (a
        #: safety net: by construction this stays 0; the history checker asserts it)
        self.repaired_counts = 0
        #: how often the leader re-checks every ready task against the lists, seconds
        self.reconcile_seconds = float(config.extra.get("reconcile_seconds", max(30.0, 10 * config.sweep_seconds)))
        #: shortest interval between two reconciles a claimer starts itself because Valkey had nothing
        #: for it while Postgres may have ready tasks (no orchestrator: serverless/direct mode)
        self.idle_check_seconds = float(config.extra.get("idle_check_seconds", max(1.0, config.sweep_seconds)))
        self._next_idle_check: dict[str, float] = {}

    async def close(self) -> None:
        """Close the hot path's connection pool (the engine is the backend's to dispose). Idempotent."""
        async with wrap_errors():
            await self._raw.close()

    # -- after commit ------------------------------------------------------------------------
    async def _signal(self, batch: BrokerBatch) -> None:
        """:meth:`apply_effects` for a batch built directly (the hot path): never raises."""
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
        batch.ready.extend(_ready_item(r) for r in effects.ready)
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
                    _tasks.c.status, _tasks.c.lease_expires_at, (_tasks.c.lease_expires_at <= _DB_NOW).label("expired")
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

    # -- claim -------------------------------------------------------------------------------
    # Every claim is routed (issue 13): see :mod:`queue_service.postgres.claims`.
    async def claim(
        self,
        project: str,
        agent: str,
        roles: Sequence[str] | None = None,
        wait: float = 0.0,
        lease_seconds: float | None = None,
    ) -> Claim | None:
        """See :meth:`Dispatcher.claim`: Postgres picks (fair share, labels, keys, strategy)."""
        lease = domain.lease_length(lease_seconds, self.config.lease_seconds)
        got = await claim_routed(self, project, agent, roles, 1, wait, lease)
        return got[0] if got else None

    async def claim_next(
        self, project: str, agent: str, roles: Sequence[str] | None, lease_seconds: float
    ) -> Claim | None:
        """See :meth:`Dispatcher.claim_next`: the routed claim already follows the dispatch order."""
        lease = float(lease_seconds)
        if lease <= 0:
            raise exceptions.ValidationError(f"lease_seconds must be positive, got {lease}", value=lease)
        await self.require_project(None, project)
        await self.release_due(project)
        got = await claim_routed(self, project, agent, roles, 1, 0.0, lease)
        return got[0] if got else None

    async def claim_many(
        self,
        project: str,
        agent: str,
        roles: Sequence[str] | None = None,
        limit: int = 10,
        wait: float = 0.0,
        lease_seconds: float | None = None,
    ) -> list[Claim]:
        """See :meth:`Dispatcher.claim_many`: one routed transaction for the batch."""
        lease = domain.lease_length(lease_seconds, self.config.lease_seconds)
        if limit < 1:
            raise exceptions.ValidationError(f"limit must be at least 1, got {limit}", value=limit)
        claims = await claim_routed(self, project, agent, roles, limit, wait, lease)
        claims.sort(key=lambda c: (c.task.priority.value, c.task.seq))
        return claims

    # -- lease operations --------------------------------------------------------------------
    async def heartbeat(self, project: str, key: str, token: str, lease_seconds: float | None = None) -> Lease:
        """See :meth:`Dispatcher.heartbeat`. Lease bookkeeping only: no version bump, no event."""
        now = self._now()
        lease = domain.lease_length(lease_seconds, self.config.lease_seconds)
        async with wrap_errors(), self._raw.connection() as raw:
            row = await raw.fetchrow(HEARTBEAT_SQL, project, key, token, lease)
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
            row = await conn.fetchrow(COMPLETE_SQL, project, key, token, result)
            if row is not None:
                promoted = await _recount_dependents(conn, [row["id"]])
        if row is None:
            async with wrap_errors(), self.engine.connect() as sa_conn:
                raise await self._lease_refused(sa_conn, project, key, now)
        batch = BrokerBatch(unlocks=[(project, key, token)])
        _promote(batch, project, promoted)
        payload = {
            "id": row["event_id"],
            "project": project,
            "task": key,
            "kind": EVENT_COMPLETED,
            "status": S.DONE.value,
            "version": row["version"],
            "at": row["updated_at"].isoformat(),
            "data": {},
        }
        batch.events.append((project, payload))
        await self._signal(batch)
        return task_from_record(row)

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
            keys = [items[i][0] for i in send]
            tokens = [items[i][1] for i in send]
            results = [None if items[i][2] is None else json.dumps(items[i][2]) for i in send]
            async with wrap_errors(), self._raw.connection() as conn, conn.transaction():
                rows = await conn.fetch(COMPLETE_MANY_SQL, project, keys, tokens, results)
                if rows:
                    promoted = await _recount_dependents(conn, [r["id"] for r in rows])
        batch = BrokerBatch()
        for row in rows:
            key, token = row["key"], row["done_token"]
            out[first[(key, token)]] = task_from_record(row)
            batch.unlocks.append((project, key, token))
            batch.events.append(
                (
                    project,
                    {
                        "id": row["event_id"],
                        "project": project,
                        "task": key,
                        "kind": EVENT_COMPLETED,
                        "status": S.DONE.value,
                        "version": row["version"],
                        "at": row["updated_at"].isoformat(),
                        "data": {},
                    },
                )
            )
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
            row, effects = await self._record_failure(
                conn, cur.id, cur.attempts, cur.max_attempts, error, retryable, EVENT_FAILED, now, {}
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
            effects = await self._status_changed(conn, row, S.IN_PROGRESS, EVENT_RELEASED, now, {})
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
                        **_END_LEASE,
                    )
                    .returning(*_TASK_RETURNING)
                )
            ).one()
            effects = await self._status_changed(
                conn, row, TaskStatus(cur.status), EVENT_RETRIED, now, {"actor": actor}, actor=actor
            )
        await self.apply_effects(effects)
        return task_from_row(row)

    # -- shared transition tail --------------------------------------------------------------
    async def _status_changed(
        self,
        conn: AsyncConnection,
        row: Any,
        old: TaskStatus,
        kind: str,
        now: datetime,
        data: dict[str, Any],
        actor: str = "dispatcher",
    ) -> Effects:
        """Write the task's own event, then the consequences for its dependents (their events follow
        it), and file the task itself as ready/scheduled when it went back to not-started."""
        new = TaskStatus(row.status)
        event = await transitions.insert_event(
            conn,
            project=row.project,
            task_key=row.key,
            kind=kind,
            at=now,
            status=new.value,
            version=row.version,
            data=data,
        )
        effects = Effects(events=[event])
        effects.merge(
            await transitions.on_status_change(
                conn, project=row.project, task_id=row.id, key=row.key, old=old, new=new, now=now, actor=actor
            )
        )
        if new is S.NOT_STARTED and row.pending_deps == 0:
            effects.add_candidate(ReadyTask(row.project, row.key, row.role, row.priority, row.seq, row.not_before), now)
        return effects

    async def _record_failure(
        self,
        conn: AsyncConnection,
        task_id: int,
        attempts: int,
        max_attempts: int,
        error: str,
        retryable: bool,
        kind: str,
        now: datetime,
        data: dict[str, Any],
        backoff: bool = True,
    ) -> tuple[Any, Effects]:
        """Count an attempt on a leased task (row locked by the caller): backoff or dead-letter.

        Without *backoff* (a lease that expired: the holder vanished, nothing says the task is at
        fault) a task with attempts left is ready again at once."""
        attempts += 1
        values: dict[str, Any] = {
            "attempts": attempts,
            "last_error": error,
            "updated_at": _DB_NOW,
            "version": _tasks.c.version + 1,
            **_END_LEASE,
        }
        if retryable and attempts < max_attempts and not backoff:
            values.update(status=S.NOT_STARTED.value, not_before=None, assignee=None)
            data = {**data, "retry_in": 0.0, "attempt": attempts, "error": error}
        elif retryable and attempts < max_attempts:
            delay = self._backoff(attempts)
            values.update(status=S.NOT_STARTED.value, not_before=_DB_NOW + delay, assignee=None)
            data = {**data, "retry_in": delay.total_seconds(), "attempt": attempts, "error": error}
        else:
            values.update(status=S.FAILED.value)
            if kind == EVENT_LEASE_EXPIRED:
                values.update(assignee=None)  # an expired holder is not working on it any more
            data = {**data, "dead_letter": True, "attempt": attempts, "error": error}
        row = (
            await conn.execute(
                update(_tasks).where(_tasks.c.id == task_id).values(**values).returning(*_TASK_RETURNING)
            )
        ).one()
        effects = await self._status_changed(conn, row, S.IN_PROGRESS, kind, now, data)
        return row, effects

    # -- orchestrator ------------------------------------------------------------------------
    async def sweep(self) -> SweepReport:
        """See :meth:`Dispatcher.sweep`. Steps, each idempotent and safe from several replicas:

        1. expire leases past ``lease_expires_at`` (``FOR UPDATE SKIP LOCKED``: each once);
        2. queue scheduled tasks whose backoff is due;
        3. reconcile: a missing epoch marker (Valkey flushed/restarted) triggers a full rebuild of
           every project's lists, scheduled set and live locks; otherwise each project with a ready
           task (in Postgres) that none of its lists holds is reconciled, and the leader re-checks
           everything every ``reconcile_seconds``;
        4. refresh the depth gauges.
        """
        now = self._now()
        expired, dead = await self._expire_leases(now)
        released = await self._release_due(now)
        requeued = await self._reconcile(now)
        return SweepReport(
            expired_leases=tuple(expired),
            released_backoffs=released,
            requeued=requeued,
            dead_lettered=tuple(dead),
        )

    async def _expire_leases(self, now: datetime) -> tuple[list[str], list[str]]:
        """Expire leases past ``lease_expires_at`` by the database's clock, **one transaction per
        lease**: each holds its task's row and then that task's dependents in id order, the lock
        order of every other writer, so the sweep can never deadlock with a completion."""
        expired: list[str] = []
        dead: list[str] = []
        due = (
            (_tasks.c.status == S.IN_PROGRESS.value)
            & _tasks.c.lease_expires_at.is_not(None)
            & (_tasks.c.lease_expires_at <= _DB_NOW)
        )
        candidates = select(_tasks.c.id).where(due).order_by(_tasks.c.lease_expires_at).limit(_SWEEP_BATCH)
        lock_one = select(
            _tasks.c.id,
            _tasks.c.project,
            _tasks.c.key,
            _tasks.c.attempts,
            _tasks.c.max_attempts,
            _tasks.c.lease_holder,
            _tasks.c.lease_token,
        ).with_for_update(skip_locked=True)
        async with wrap_errors(), self.engine.connect() as conn:
            ids = list((await conn.execute(candidates)).scalars())
        for task_id in ids:
            async with wrap_errors(), self.engine.begin() as conn:
                # re-checked under the lock: a heartbeat or completion may have come first
                r = (await conn.execute(lock_one.where(due & (_tasks.c.id == task_id)))).first()
                if r is None:
                    continue
                row, effects = await self._record_failure(
                    conn,
                    r.id,
                    r.attempts,
                    r.max_attempts,
                    f"lease of {r.lease_holder} expired",
                    True,
                    EVENT_LEASE_EXPIRED,
                    now,
                    {"agent": r.lease_holder},
                    backoff=False,
                )
            name = f"{r.project}/{r.key}"
            expired.append(name)
            if row.status == S.FAILED.value:
                dead.append(name)
            batch = BrokerBatch()
            if r.lease_token:
                batch.unlocks.append((r.project, r.key, r.lease_token))
            # the reclaimed task goes to the head of its list: it waited its turn already
            batch.ready_front.extend(_ready_item(x) for x in effects.ready if (x.project, x.key) == (r.project, r.key))
            effects.ready = [x for x in effects.ready if (x.project, x.key) != (r.project, r.key)]
            await self.apply_effects(effects, batch)
        if expired:
            logger.info("expired %d lease(s): %s", len(expired), ", ".join(expired[:20]))
        return expired, dead

    async def _release_due(self, now: datetime) -> int:
        """Move every project's scheduled tasks whose ``not_before`` passed into their ready lists."""
        released = 0
        for project in await self._projects():
            released += (await self.release_due(project, now))[0]
        return released

    async def release_due(self, project: str, now: datetime | None = None) -> tuple[int, float | None]:
        """Queue the project's backed-off tasks that came due.

        Returns how many were queued and the seconds until the next scheduled one (None if none).
        Postgres has the last word: an entry whose task is no longer waiting is dropped, one whose
        ``not_before`` moved later is rescheduled.
        """
        now = now or self._now()
        keys, next_in = await self.broker.due(project, now)
        if not keys:
            return 0, next_in
        async with wrap_errors(), self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        _tasks.c.key,
                        _tasks.c.status,
                        _tasks.c.pending_deps,
                        _tasks.c.not_before,
                        _tasks.c.role,
                        _tasks.c.priority,
                    ).where((_tasks.c.project == project) & _tasks.c.key.in_(keys))
                )
            ).all()
        found = {r.key: r for r in rows}
        batch = BrokerBatch()
        for key in keys:
            r = found.get(key)
            if r is None or r.status != S.NOT_STARTED.value or r.pending_deps != 0:
                continue
            if r.not_before is not None and r.not_before > now:
                batch.scheduled.append((project, key, r.not_before))
                next_in = min(next_in or 1e9, (r.not_before - now).total_seconds())
            else:
                batch.ready.append(ReadyItem(project, key, r.role, r.priority))
        await self.broker.apply(batch)
        await self.broker.unschedule(project, keys, due_by=now)
        return len(batch.ready), next_in

    async def _projects(self) -> list[str]:
        async with wrap_errors(), self.engine.connect() as conn:
            return list((await conn.execute(select(t.projects.c.slug).order_by(t.projects.c.slug))).scalars())

    async def _reconcile(self, now: datetime) -> int:
        """Compare Valkey with Postgres, repair Valkey, refresh the gauges. Returns how many ready
        tasks had to be queued again."""
        projects = await self._projects()
        rebuilt = False
        n = 0
        if await self.broker.epoch() is None:
            marker = f"{self.node_id}:{uuid.uuid4().hex[:8]}"
            # Only the replica that sets the marker rebuilds; the others carry on with cheap checks.
            if await self.broker.mark_epoch(marker):
                logger.warning("Valkey has no reconcile marker (flushed or restarted): rebuilding from Postgres")
                try:
                    for project in projects:
                        n += await self.reconcile_project(project, now)
                except BaseException:
                    await self.broker.clear_epoch(marker)
                    raise
                self._last_full_reconcile = time.monotonic()
                rebuilt = True
        periodic = False
        if not rebuilt and time.monotonic() - self._last_full_reconcile >= self.reconcile_seconds:
            leader_ttl = max(3 * self.config.sweep_seconds, self.reconcile_seconds)
            periodic = await self.broker.acquire_leader(self.node_id, leader_ttl)
            if periodic:
                self._last_full_reconcile = time.monotonic()
        if rebuilt or periodic:
            n += await self._repair_pending_counts(now)
        ready_keys = await self._ready_keys(now)
        for project in projects:
            depth = await self.broker.depth(project)
            want = ready_keys.get(project, {})
            pg: dict[str, int] = defaultdict(int)
            for role, _list in want.values():
                pg[role] += 1
            # The check compares key sets, not counts: stale extra entries (claimed tasks still
            # listed) must not hide a ready task that no list holds.
            missing = False
            if want and not rebuilt and not periodic:
                listed = await self.broker.listed(project)
                missing = any(list_key not in listed.get(key, ()) for key, (_role, list_key) in want.items())
            if not rebuilt and (periodic or missing):
                requeued = await self.reconcile_project(project, now)
                if requeued:
                    n += requeued
                    depth = await self.broker.depth(project)
            gauges = {role: depth.get(role, 0) for role in sorted(set(depth) | set(pg))}
            self.depth_gauges[project] = gauges
            try:
                await self.broker.write_depth_gauge(project, gauges)
            except exceptions.BackendError as exc:
                logger.debug("depth gauge not written: %s", exc)
        for gone in set(self.depth_gauges) - set(projects):
            del self.depth_gauges[gone]
        return n

    async def _repair_pending_counts(self, now: datetime) -> int:
        """Safety net (not the mechanism): recount not-started tasks whose ``pending_deps`` disagrees
        with their dependencies, and queue those that are ready. Runs with the full reconcile only
        (it reads every not-started task). ``SKIP LOCKED``: a task some writer holds is that
        writer's to settle, and the net never waits while holding other rows."""
        async with wrap_errors(), self.engine.begin() as conn:
            ids = list((await conn.execute(_MISCOUNTED)).scalars())
            if not ids:
                return 0
            locked = list((await conn.execute(_LOCK_MISCOUNTED, {"ids": ids})).scalars())
            effects = await transitions.recompute_pending_deps(conn, locked, now)
        if locked:
            self.repaired_counts += len(locked)
            logger.warning("recounted pending_deps of %d task(s) that disagreed with their dependencies", len(locked))
            await self.apply_effects(effects)
        return len(effects.ready)

    async def _ready_keys(self, now: datetime) -> dict[str, dict[str, tuple[str, str]]]:
        """Ready tasks as Postgres sees them: project → task key → (role, the ready list it belongs in)."""
        stmt = select(_tasks.c.project, _tasks.c.key, _tasks.c.role, _tasks.c.priority).where(
            _READY_SQL & (_tasks.c.not_before.is_(None) | (_tasks.c.not_before <= now))
        )
        keys = self.broker.keys
        out: dict[str, dict[str, tuple[str, str]]] = defaultdict(dict)
        async with wrap_errors(), self.engine.connect() as conn:
            for project, key, role, priority in await conn.execute(stmt):
                out[project][key] = (role, keys.ready(project, role, priority))
        return out

    async def reconcile_project(self, project: str, now: datetime | None = None) -> int:
        """Make Valkey agree with Postgres for one project: every ready task sits in its list, every
        backed-off task in the scheduled set, every live lease has its lock (with the remaining TTL).

        Idempotent; duplicates it might create are dropped by claimers. Returns how many ready tasks
        had to be queued again.
        """
        now = now or self._now()
        async with wrap_errors(), self.engine.connect() as conn:
            waiting = (
                await conn.execute(
                    select(_tasks.c.key, _tasks.c.role, _tasks.c.priority, _tasks.c.not_before)
                    .where((_tasks.c.project == project) & _READY_SQL)
                    .order_by(_tasks.c.priority, _tasks.c.seq)
                )
            ).all()
            leased = (
                await conn.execute(
                    select(
                        _tasks.c.key,
                        _tasks.c.lease_token,
                        func.extract("epoch", _tasks.c.lease_expires_at - _DB_NOW).label("ttl"),
                    ).where(
                        (_tasks.c.project == project)
                        & (_tasks.c.status == S.IN_PROGRESS.value)
                        & _tasks.c.lease_token.is_not(None)
                        & (_tasks.c.lease_expires_at > _DB_NOW)
                    )
                )
            ).all()
        listed = await self.broker.listed(project)
        keys = self.broker.keys
        missing = [
            ReadyItem(project, r.key, r.role, r.priority)
            for r in waiting
            if (r.not_before is None or r.not_before <= now)
            and keys.ready(project, r.role, r.priority) not in listed.get(r.key, ())
        ]
        scheduled = [(project, r.key, r.not_before) for r in waiting if r.not_before is not None and r.not_before > now]
        requeued = await self.broker.requeue(missing)
        await self.broker.schedule_many(scheduled)
        for r in leased:
            ttl = float(r.ttl)
            if ttl > 0:
                await self.broker.restore_lock(project, r.key, r.lease_token, ttl)
        if missing:
            logger.info("reconcile %s: re-queued %d ready task(s)", project, len(missing))
        return requeued

    async def queue_depths(self, project: str) -> dict[str, int]:
        """Ready-list length per role (roles with an empty list are left out)."""
        await self.require_project(None, project)
        return {role: n for role, n in (await self.broker.depth(project)).items() if n}
