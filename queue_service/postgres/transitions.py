"""Consequences of task status changes, as set-based SQL run inside the caller's transaction.

Shared by the record store (patch, cancel) and the dispatcher (claim, complete, fail, retry, sweep), so
both apply exactly the rules of :mod:`queue_service.domain`:

* a task becomes ``done`` or leaves it → each dependent's ``pending_deps`` is recounted from its
  dependencies (after locking the dependents in id order, in a statement of its own: see
  ``docs/plans/dispatch.md``); dependents now at 0 while ``not-started`` are reported ready (or
  *scheduled*, when ``not_before`` is still ahead);
* a task becomes ``failed``/``cancelled`` → its ``not-started`` dependents become ``blocked`` with
  ``blocked_reason = domain.dependency_block_reason(key, status)`` (version + 1, an event each);
* a task leaves ``failed``/``cancelled`` for another status → dependents blocked *because of it* go
  back to ``not-started`` (version + 1, an event each), unless another dependency of theirs is still
  failed/cancelled, in which case the reason is re-pointed at that one.

Only direct dependents are touched: a dependent of a blocked task is not-started with
``pending_deps > 0`` and so is never ready anyway.

The statements are in ``sql/dependents.sql``. They run on SQLAlchemy connections (through
:func:`sa_fetch`) and on the dispatcher's raw asyncpg connections alike, so the rule "a task entered
or left done: lock its dependents in id order, then recount them" exists once
(:func:`recount_dependents`).

Every function here issues a fixed, small number of statements however many dependents there are
(a 1→200 fan-out is one UPDATE), and writes its event rows in the same transaction. Callers update
the task row itself *first*, then call :func:`on_status_changes`, and pass the returned
:class:`Effects` to the dispatcher after commit.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from queue_service.domain import DEPENDENCY_BLOCK_PREFIX, TERMINAL_FAILURE, dependency_block_reason
from queue_service.models import Event, TaskStatus
from queue_service.postgres.resources import load_queries

__all__ = [
    "EVENT_BLOCKED",
    "EVENT_CANCELLED",
    "EVENT_CLAIMED",
    "EVENT_COMPLETED",
    "EVENT_CREATED",
    "EVENT_FAILED",
    "EVENT_LEASE_EXPIRED",
    "EVENT_NOTE",
    "EVENT_RELEASED",
    "EVENT_RETRIED",
    "EVENT_UNBLOCKED",
    "EVENT_UPDATED",
    "CommitEffects",
    "Effects",
    "EventInput",
    "Fetch",
    "ReadyTask",
    "StatusChange",
    "StatusEffects",
    "insert_event",
    "insert_events",
    "lock_dependents",
    "on_status_change",
    "on_status_changes",
    "recompute_pending_deps",
    "recount_dependents",
    "recount_pending_deps",
    "sa_fetch",
]

EVENT_CREATED = "created"
EVENT_UPDATED = "updated"
EVENT_CANCELLED = "cancelled"
EVENT_NOTE = "note"
#: a dependent blocked because a dependency failed or was cancelled
EVENT_BLOCKED = "blocked"
#: a dependent released from such a block
EVENT_UNBLOCKED = "unblocked"
EVENT_CLAIMED = "claimed"
EVENT_COMPLETED = "completed"
EVENT_FAILED = "failed"
EVENT_RELEASED = "released"
EVENT_RETRIED = "retried"
EVENT_LEASE_EXPIRED = "lease_expired"

_Q = load_queries("dependents.sql")

#: Runs one SQL text with positional ``$n`` parameters and returns its rows, readable by column name:
#: an asyncpg connection's ``fetch``, or :func:`sa_fetch` of a SQLAlchemy connection. The
#: dependents' statements exist once and run on both.
Fetch = Callable[..., Awaitable[Sequence[Any]]]


def sa_fetch(conn: AsyncConnection) -> Fetch:
    """A :data:`Fetch` on a SQLAlchemy connection (inside its current transaction)."""

    async def fetch(sql: str, *args: Any) -> Sequence[Any]:
        return (await conn.exec_driver_sql(sql, args)).mappings().all()

    return fetch


S = TaskStatus


@dataclass(frozen=True, slots=True)
class ReadyTask:
    """What the dispatcher needs to queue a task: where it goes and in which order."""

    project: str
    key: str
    role: str
    priority: str
    seq: int
    not_before: datetime | None = None


@dataclass(slots=True)
class Effects:
    """What a transaction did that the dispatch side must hear about after commit.

    ``ready``: tasks that are ready now (not-started, every dep done, ``not_before`` passed) and whose
    ready-list entry should exist — newly created or promoted tasks, and ready tasks whose role or
    priority changed. Queue them (deduplicated). ``scheduled``: tasks whose deps are all done but whose
    ``not_before`` is still ahead; the sweeper queues them when due. ``events``: the event rows the
    transaction wrote, oldest first, to publish on the projects' channels.
    """

    ready: list[ReadyTask] = field(default_factory=list)
    scheduled: list[ReadyTask] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def merge(self, other: Effects) -> Effects:
        """Append *other*'s effects to these (in place); returns self."""
        self.ready.extend(other.ready)
        self.scheduled.extend(other.scheduled)
        self.events.extend(other.events)
        return self

    def add_candidate(self, task: ReadyTask, now: datetime) -> None:
        """File a task whose deps are all done as ready or scheduled, by its ``not_before``."""
        if task.not_before is None or task.not_before <= now:
            self.ready.append(task)
        else:
            self.scheduled.append(task)

    def __bool__(self) -> bool:
        return bool(self.ready or self.scheduled or self.events)


#: The result of :func:`on_status_changes`.
StatusEffects = Effects
#: The payload of the record store's ``on_commit`` callback.
CommitEffects = Effects


@dataclass(frozen=True, slots=True)
class StatusChange:
    """One task's status change, already written to its row in the current transaction."""

    task_id: int
    key: str
    old: TaskStatus
    new: TaskStatus


@dataclass(frozen=True, slots=True)
class EventInput:
    """An event row to write."""

    project: str
    task_key: str | None
    kind: str
    at: datetime
    status: str | None = None
    version: int | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


async def insert_events(conn: AsyncConnection, rows: Sequence[EventInput]) -> list[Event]:
    """Write event rows (one statement for any number) and return them with their ids, in order."""
    if not rows:
        return []
    result = await sa_fetch(conn)(
        _Q["insert_events"],
        [r.project for r in rows],
        [r.task_key for r in rows],
        [r.kind for r in rows],
        [r.status for r in rows],
        [r.version for r in rows],
        [r.at for r in rows],
        [json.dumps(dict(r.data)) for r in rows],
    )
    ids = sorted(r["id"] for r in result)
    # Validated models are not needed here: every field comes from our own code. model_construct
    # skips validation, which dominates the cost of a 10,000-task batch.
    return [
        Event.model_construct(
            id=i,
            project=r.project,
            task=r.task_key,
            kind=r.kind,
            status=TaskStatus(r.status) if r.status else None,
            version=r.version,
            at=r.at,
            data=dict(r.data),
        )
        for i, r in zip(ids, rows, strict=True)
    ]


async def insert_event(
    conn: AsyncConnection,
    *,
    project: str,
    task_key: str | None,
    kind: str,
    at: datetime,
    status: str | None = None,
    version: int | None = None,
    data: Mapping[str, Any] | None = None,
) -> Event:
    """Write one event row and return it."""
    (event,) = await insert_events(conn, [EventInput(project, task_key, kind, at, status, version, dict(data or {}))])
    return event


# -- dependents --------------------------------------------------------------------------------


async def lock_dependents(fetch: Fetch, task_ids: Iterable[int]) -> list[int]:
    """Lock the direct dependents of *task_ids* (rows the caller changed in this transaction) in id
    order; returns their ids, sorted."""
    return sorted({r["id"] for r in await fetch(_Q["lock_dependents"], list(task_ids))})


async def recount_pending_deps(fetch: Fetch, task_ids: Sequence[int]) -> Sequence[Any]:
    """Set ``pending_deps`` of *task_ids* (locked by the caller) from their dependencies as they are
    now; returns every recounted row (``sql/dependents.sql``, ``recount_pending_deps``)."""
    if not task_ids:
        return []
    return await fetch(_Q["recount_pending_deps"], list(task_ids))


async def recount_dependents(fetch: Fetch, task_ids: Iterable[int]) -> Sequence[Any]:
    """A task entered or left ``done``: lock its direct dependents in id order, then recount them.

    Two statements on purpose: the recount starts after every lock is held, so its snapshot has
    every edge and every dependency status that committed before (see docs/plans/dispatch.md).
    """
    return await recount_pending_deps(fetch, await lock_dependents(fetch, task_ids))


def _ready_task(row: Any) -> ReadyTask:
    return ReadyTask(row["project"], row["key"], row["role"], row["priority"], row["seq"], row["not_before"])


def _file_ready(effects: Effects, rows: Iterable[Any], now: datetime) -> None:
    for row in rows:
        if row["status"] == S.NOT_STARTED and row["pending_deps"] == 0:
            effects.add_candidate(_ready_task(row), now)


async def recompute_pending_deps(conn: AsyncConnection, task_ids: Iterable[int], now: datetime) -> Effects:
    """Set ``pending_deps`` of *task_ids* from their current dependency rows (after an edge change).

    Returns the tasks among them that are now ready/scheduled.
    """
    effects = Effects()
    _file_ready(effects, await recount_pending_deps(sa_fetch(conn), list(dict.fromkeys(task_ids))), now)
    return effects


async def on_status_changes(
    conn: AsyncConnection,
    *,
    changes: Sequence[StatusChange],
    now: datetime,
    project: str,
    actor: str = "system",
) -> Effects:
    """Apply the dependency consequences of *changes* (rows already updated) in this transaction.

    Returns the dependents that became ready or scheduled, and the events written for dependents
    that were blocked or unblocked (the caller writes the event of the changed task itself). At most
    four statements whatever the fan-out.
    """
    effects = Effects()
    real = [c for c in changes if c.old != c.new]
    if not real:
        return effects

    failing = [c for c in real if c.new in TERMINAL_FAILURE and c.old not in TERMINAL_FAILURE]
    reviving = [c for c in real if c.old in TERMINAL_FAILURE and c.new not in TERMINAL_FAILURE]
    done_moved = [c for c in real if (c.new == S.DONE) != (c.old == S.DONE)]
    if not (failing or reviving or done_moved):
        return effects

    fetch = sa_fetch(conn)
    # 0. Lock every direct dependent in id order before touching any of them.
    locked = await lock_dependents(fetch, [c.task_id for c in real])

    # 1. Dependents of tasks entering or leaving done: pending_deps recounted from their
    # dependencies as they are now (a derived count, never a delta on a stale view).
    if done_moved and locked:
        _file_ready(effects, await recount_pending_deps(fetch, locked), now)

    events: list[EventInput] = []
    keys_by_id = {c.task_id: c.key for c in real}

    # 2. Dependents of tasks that just failed or were cancelled become blocked.
    if failing:
        result = await fetch(
            _Q["block_dependents"],
            [c.task_id for c in failing],
            [dependency_block_reason(c.key, c.new) for c in failing],
            now,
            project,
        )
        for row in result:
            events.append(
                EventInput(
                    row["project"],
                    row["key"],
                    EVENT_BLOCKED,
                    now,
                    S.BLOCKED.value,
                    row["version"],
                    {"actor": actor, "cause": keys_by_id[row["cause"]], "blocked_reason": row["blocked_reason"]},
                )
            )

    # 3. Dependents blocked because of tasks that left failed/cancelled are released.
    if reviving:
        reasons = [dependency_block_reason(c.key, s) for c in reviving for s in sorted(TERMINAL_FAILURE)]
        result = await fetch(
            _Q["unblock_dependents"],
            [c.task_id for c in reviving],
            reasons,
            DEPENDENCY_BLOCK_PREFIX,
            now,
            project,
        )
        for row in result:
            unblocked = row["status"] == S.NOT_STARTED
            events.append(
                EventInput(
                    row["project"],
                    row["key"],
                    EVENT_UNBLOCKED if unblocked else EVENT_BLOCKED,
                    now,
                    row["status"],
                    row["version"],
                    {"actor": actor, "blocked_reason": row["blocked_reason"]},
                )
            )
            if unblocked and row["pending_deps"] == 0:
                effects.add_candidate(_ready_task(row), now)

    effects.events.extend(await insert_events(conn, events))
    return effects


async def on_status_change(
    conn: AsyncConnection,
    *,
    project: str,
    task_id: int,
    key: str,
    old: TaskStatus,
    new: TaskStatus,
    now: datetime,
    actor: str = "system",
) -> Effects:
    """:func:`on_status_changes` for a single task (its row already updated)."""
    return await on_status_changes(
        conn, changes=[StatusChange(task_id, key, old, new)], now=now, project=project, actor=actor
    )
