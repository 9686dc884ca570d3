"""The orchestrator's sweep on Postgres + Valkey: expire leases, queue due backoffs, reconcile Valkey.

Every step is idempotent and safe from several replicas at once: Postgres decides (``SKIP LOCKED``,
one transaction per expired lease, the dependents' one lock order), Valkey is repaired from it. The
dispatcher (:mod:`.dispatch`) owns one :class:`PostgresSweeper` and also uses it while idle: a
waiting claimer queues due backoffs itself, and without an orchestrator it reconciles a project
whose ready tasks no list holds.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from queue_service import exceptions
from queue_service.backend import DispatchConfig
from queue_service.models import SweepReport, TaskStatus
from queue_service.postgres import outcomes, transitions
from queue_service.postgres import tables as t
from queue_service.postgres.errors import wrap_errors
from queue_service.postgres.outcomes import DB_NOW
from queue_service.postgres.resources import load_queries
from queue_service.postgres.transitions import EVENT_LEASE_EXPIRED, Effects, ReadyTask
from queue_service.postgres.valkey import BrokerBatch, ReadyItem, ValkeyBroker

__all__ = ["READY", "ApplyEffects", "PostgresSweeper", "ready_item"]

logger = logging.getLogger(__name__)

S = TaskStatus
_tasks = t.tasks
_Q = load_queries("sweep.sql")

#: Most expired leases handled per sweep (a long outage is worked off over several sweeps).
_SWEEP_BATCH = 500
#: Not-started with every dependency done (``not_before`` aside).
READY = (_tasks.c.status == S.NOT_STARTED.value) & (_tasks.c.pending_deps == 0)
#: The dispatcher's ``apply_effects``: tells Valkey what a committed transaction did; never raises.
ApplyEffects = Callable[[Effects, BrokerBatch | None], Awaitable[None]]


def ready_item(task: ReadyTask) -> ReadyItem:
    """The ready-list entry of a task the records found ready."""
    return ReadyItem(project=task.project, key=task.key, role=task.role, priority=task.priority)


class PostgresSweeper:
    """Lease expiry, due backoffs and the Valkey reconcile, for one dispatcher.

    Args:
        engine: the async engine of the record database.
        broker: the open :class:`ValkeyBroker`.
        config: timings (``sweep_seconds``; ``extra["reconcile_seconds"]``).
        node_id: this replica's name in the leader lock and the reconcile marker.
        apply_effects: the dispatcher's after-commit signal (see :data:`ApplyEffects`).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        broker: ValkeyBroker,
        config: DispatchConfig,
        *,
        node_id: str,
        apply_effects: ApplyEffects,
    ) -> None:
        self.engine = engine
        self.broker = broker
        self.config = config
        self.node_id = node_id
        self._apply_effects = apply_effects
        #: last ready depth per project and role, refreshed by every sweep (for /metrics)
        self.depth_gauges: dict[str, dict[str, int]] = {}
        self._last_full_reconcile = 0.0
        #: not-started tasks whose pending_deps the full reconcile found wrong and recounted (a
        #: safety net: by construction this stays 0; the history checker asserts it)
        self.repaired_counts = 0
        #: how often the leader re-checks every ready task against the lists, seconds
        self.reconcile_seconds = float(config.extra.get("reconcile_seconds", max(30.0, 10 * config.sweep_seconds)))

    async def sweep(self, now: datetime) -> SweepReport:
        """One sweep (:meth:`Dispatcher.sweep`); *now* is the dispatcher's clock. Steps, each
        idempotent and safe from several replicas:

        1. expire leases past ``lease_expires_at`` (``FOR UPDATE SKIP LOCKED``: each once);
        2. queue scheduled tasks whose backoff is due;
        3. reconcile: a missing epoch marker (Valkey flushed/restarted) triggers a full rebuild of
           every project's lists, scheduled set and live locks; otherwise each project with a ready
           task (in Postgres) that none of its lists holds is reconciled, and the leader re-checks
           everything every ``reconcile_seconds``;
        4. refresh the depth gauges.
        """
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
            & (_tasks.c.lease_expires_at <= DB_NOW)
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
                row, effects = await outcomes.record_failure(
                    conn,
                    r.id,
                    r.attempts,
                    r.max_attempts,
                    f"lease of {r.lease_holder} expired",
                    True,
                    EVENT_LEASE_EXPIRED,
                    now,
                    {"agent": r.lease_holder},
                    backoff=None,
                )
            name = f"{r.project}/{r.key}"
            expired.append(name)
            if row.status == S.FAILED.value:
                dead.append(name)
            batch = BrokerBatch()
            if r.lease_token:
                batch.unlocks.append((r.project, r.key, r.lease_token))
            # the reclaimed task goes to the head of its list: it waited its turn already
            batch.ready_front.extend(ready_item(x) for x in effects.ready if (x.project, x.key) == (r.project, r.key))
            effects.ready = [x for x in effects.ready if (x.project, x.key) != (r.project, r.key)]
            await self._apply_effects(effects, batch)
        if expired:
            logger.info("expired %d lease(s): %s", len(expired), ", ".join(expired[:20]))
        return expired, dead

    async def _release_due(self, now: datetime) -> int:
        """Move every project's scheduled tasks whose ``not_before`` passed into their ready lists."""
        released = 0
        for project in await self._projects():
            released += (await self.release_due(project, now))[0]
        return released

    async def release_due(self, project: str, now: datetime) -> tuple[int, float | None]:
        """Queue the project's backed-off tasks that came due.

        Returns how many were queued and the seconds until the next scheduled one (None if none).
        Postgres has the last word: an entry whose task is no longer waiting is dropped, one whose
        ``not_before`` moved later is rescheduled.
        """
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
            fetch = transitions.sa_fetch(conn)
            ids = [r["id"] for r in await fetch(_Q["miscounted"])]
            if not ids:
                return 0
            locked = [r["id"] for r in await fetch(_Q["lock_miscounted"], ids)]
            effects = await transitions.recompute_pending_deps(conn, locked, now)
        if locked:
            self.repaired_counts += len(locked)
            logger.warning("recounted pending_deps of %d task(s) that disagreed with their dependencies", len(locked))
            await self._apply_effects(effects, None)
        return len(effects.ready)

    async def _ready_keys(self, now: datetime) -> dict[str, dict[str, tuple[str, str]]]:
        """Ready tasks as Postgres sees them: project → task key → (role, the ready list it belongs in)."""
        stmt = select(_tasks.c.project, _tasks.c.key, _tasks.c.role, _tasks.c.priority).where(
            READY & (_tasks.c.not_before.is_(None) | (_tasks.c.not_before <= now))
        )
        keys = self.broker.keys
        out: dict[str, dict[str, tuple[str, str]]] = defaultdict(dict)
        async with wrap_errors(), self.engine.connect() as conn:
            for project, key, role, priority in await conn.execute(stmt):
                out[project][key] = (role, keys.ready(project, role, priority))
        return out

    async def reconcile_project(self, project: str, now: datetime) -> int:
        """Make Valkey agree with Postgres for one project: every ready task sits in its list, every
        backed-off task in the scheduled set, every live lease has its lock (with the remaining TTL).

        Idempotent; duplicates it might create are dropped by claimers. Returns how many ready tasks
        had to be queued again.
        """
        async with wrap_errors(), self.engine.connect() as conn:
            waiting = (
                await conn.execute(
                    select(_tasks.c.key, _tasks.c.role, _tasks.c.priority, _tasks.c.not_before)
                    .where((_tasks.c.project == project) & READY)
                    .order_by(_tasks.c.priority, _tasks.c.seq)
                )
            ).all()
            leased = (
                await conn.execute(
                    select(
                        _tasks.c.key,
                        _tasks.c.lease_token,
                        func.extract("epoch", _tasks.c.lease_expires_at - DB_NOW).label("ttl"),
                    ).where(
                        (_tasks.c.project == project)
                        & (_tasks.c.status == S.IN_PROGRESS.value)
                        & _tasks.c.lease_token.is_not(None)
                        & (_tasks.c.lease_expires_at > DB_NOW)
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
