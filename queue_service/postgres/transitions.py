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

Every function here issues a fixed, small number of statements however many dependents there are
(a 1→200 fan-out is one UPDATE), and writes its event rows in the same transaction. Callers update
the task row itself *first*, then call :func:`on_status_changes`, and pass the returned
:class:`Effects` to the dispatcher after commit.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import BigInteger, DateTime, Text

from queue_service.domain import DEPENDENCY_BLOCK_PREFIX, TERMINAL_FAILURE, dependency_block_reason
from queue_service.models import Event, TaskStatus

__all__ = [
    "EVENT_BLOCKED",
    "EVENT_CANCELLED",
    "EVENT_CREATED",
    "EVENT_NOTE",
    "EVENT_UNBLOCKED",
    "EVENT_UPDATED",
    "CommitEffects",
    "Effects",
    "EventInput",
    "ReadyTask",
    "StatusChange",
    "StatusEffects",
    "insert_event",
    "insert_events",
    "on_status_change",
    "on_status_changes",
    "recompute_pending_deps",
]

EVENT_CREATED = "created"
EVENT_UPDATED = "updated"
EVENT_CANCELLED = "cancelled"
EVENT_NOTE = "note"
#: a dependent blocked because a dependency failed or was cancelled
EVENT_BLOCKED = "blocked"
#: a dependent released from such a block
EVENT_UNBLOCKED = "unblocked"

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


# One statement for any number of events: arrays in, rows out. ``ORDER BY ord`` makes the serial ids
# follow the input order (nextval runs row by row in that order), so sorting the returned ids
# restores the input order without a sentinel column.
_INSERT_EVENTS = text(
    """
    INSERT INTO events (project, task_key, kind, status, version, at, data)
    SELECT x.project, x.task_key, x.kind, x.status, x.version, x.at, x.data::jsonb
    FROM unnest(:project, :task_key, :kind, :status, :version, :at, :data)
         WITH ORDINALITY AS x(project, task_key, kind, status, version, at, data, ord)
    ORDER BY x.ord
    RETURNING id
    """
).bindparams(
    bindparam("project", type_=ARRAY(Text)),
    bindparam("task_key", type_=ARRAY(Text)),
    bindparam("kind", type_=ARRAY(Text)),
    bindparam("status", type_=ARRAY(Text)),
    bindparam("version", type_=ARRAY(BigInteger)),
    bindparam("at", type_=ARRAY(DateTime(timezone=True))),
    bindparam("data", type_=ARRAY(Text)),
)


async def insert_events(conn: AsyncConnection, rows: Sequence[EventInput]) -> list[Event]:
    """Write event rows (one statement for any number) and return them with their ids, in order."""
    if not rows:
        return []
    result = await conn.execute(
        _INSERT_EVENTS,
        {
            "project": [r.project for r in rows],
            "task_key": [r.task_key for r in rows],
            "kind": [r.kind for r in rows],
            "status": [r.status for r in rows],
            "version": [r.version for r in rows],
            "at": [r.at for r in rows],
            "data": [json.dumps(dict(r.data)) for r in rows],
        },
    )
    ids = sorted(result.scalars())
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


# -- statements ------------------------------------------------------------------------------

_IDS = bindparam("ids", type_=ARRAY(BigInteger))

# The dependents of :ids, locked in id order: the one lock order for dependents (completion, sweep,
# fail, cancel, PATCH). Its own statement, run after the caller changed the rows of :ids, so the
# statements that follow see every edge to them (edge writers read a dependency under FOR SHARE).
_LOCK_DEPENDENTS = text(
    """
    SELECT dep.id FROM tasks dep JOIN task_dependencies d ON d.task_id = dep.id
    WHERE d.depends_on_id = ANY(:ids) ORDER BY dep.id FOR UPDATE OF dep
    """
).bindparams(_IDS)

_BLOCK_DEPENDENTS = text(
    """
    WITH src AS (
        SELECT s.id, s.reason FROM unnest(:ids, :reasons) AS s(id, reason)
    ), hit AS (
        SELECT DISTINCT ON (d.task_id) d.task_id, src.reason, src.id AS cause
        FROM task_dependencies d JOIN src ON src.id = d.depends_on_id
        ORDER BY d.task_id, d.position
    )
    UPDATE tasks t
    SET status = 'blocked', blocked_reason = hit.reason, version = t.version + 1, updated_at = :now
    FROM hit
    WHERE t.id = hit.task_id AND t.status = 'not-started' AND t.project = :project
    RETURNING t.id, t.project, t.key, t.version, t.blocked_reason, hit.cause
    """
).bindparams(_IDS, bindparam("reasons", type_=ARRAY(Text)))

# A dependent blocked because of one of :ids goes back to not-started, unless another of its deps is
# still failed/cancelled: then it stays blocked and the reason names that dep instead.
_UNBLOCK_DEPENDENTS = text(
    """
    WITH cand AS (
        SELECT DISTINCT d.task_id FROM task_dependencies d WHERE d.depends_on_id = ANY(:ids)
    ), tgt AS (
        SELECT t.id, other.key AS other_key, other.status AS other_status
        FROM tasks t
        JOIN cand ON cand.task_id = t.id
        LEFT JOIN LATERAL (
            SELECT p.key, p.status
            FROM task_dependencies d2 JOIN tasks p ON p.id = d2.depends_on_id
            WHERE d2.task_id = t.id AND p.status IN ('failed', 'cancelled')
            ORDER BY d2.position
            LIMIT 1
        ) other ON true
        WHERE t.status = 'blocked' AND t.blocked_reason = ANY(:reasons) AND t.project = :project
    )
    UPDATE tasks t
    SET status = CASE WHEN tgt.other_key IS NULL THEN 'not-started' ELSE 'blocked' END,
        blocked_reason = CASE WHEN tgt.other_key IS NULL THEN NULL
                              ELSE :prefix || tgt.other_key || ' is ' || tgt.other_status END,
        version = t.version + 1,
        updated_at = :now
    FROM tgt
    WHERE t.id = tgt.id
    RETURNING t.id, t.project, t.key, t.role, t.priority, t.seq, t.not_before, t.status,
              t.pending_deps, t.version, t.blocked_reason
    """
).bindparams(_IDS, bindparam("reasons", type_=ARRAY(Text)))

_RECOMPUTE_PENDING = text(
    """
    WITH counts AS (
        SELECT x.id, (
            SELECT count(*) FROM task_dependencies d JOIN tasks p ON p.id = d.depends_on_id
            WHERE d.task_id = x.id AND p.status <> 'done'
        )::int AS n
        FROM unnest(:ids) AS x(id)
    )
    UPDATE tasks t SET pending_deps = counts.n
    FROM counts
    WHERE t.id = counts.id
    RETURNING t.id, t.project, t.key, t.role, t.priority, t.seq, t.not_before, t.status, t.pending_deps
    """
).bindparams(_IDS)


def _ready_task(row: Any) -> ReadyTask:
    return ReadyTask(row.project, row.key, row.role, row.priority, row.seq, row.not_before)


async def recompute_pending_deps(conn: AsyncConnection, task_ids: Iterable[int], now: datetime) -> Effects:
    """Set ``pending_deps`` of *task_ids* from their current dependency rows (after an edge change).

    Returns the tasks among them that are now ready/scheduled.
    """
    ids = list(dict.fromkeys(task_ids))
    effects = Effects()
    if not ids:
        return effects
    for row in await conn.execute(_RECOMPUTE_PENDING, {"ids": ids}):
        if row.status == S.NOT_STARTED and row.pending_deps == 0:
            effects.add_candidate(_ready_task(row), now)
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

    # 0. Lock every direct dependent in id order before touching any of them.
    locked = sorted({r.id for r in await conn.execute(_LOCK_DEPENDENTS, {"ids": [c.task_id for c in real]})})

    # 1. Dependents of tasks entering or leaving done: pending_deps recounted from their
    # dependencies as they are now (a derived count, never a delta on a stale view).
    if done_moved and locked:
        recounted = await recompute_pending_deps(conn, locked, now)
        effects.merge(recounted)

    events: list[EventInput] = []
    keys_by_id = {c.task_id: c.key for c in real}

    # 2. Dependents of tasks that just failed or were cancelled become blocked.
    if failing:
        result = await conn.execute(
            _BLOCK_DEPENDENTS,
            {
                "ids": [c.task_id for c in failing],
                "reasons": [dependency_block_reason(c.key, c.new) for c in failing],
                "now": now,
                "project": project,
            },
        )
        for row in result:
            events.append(
                EventInput(
                    row.project,
                    row.key,
                    EVENT_BLOCKED,
                    now,
                    S.BLOCKED.value,
                    row.version,
                    {"actor": actor, "cause": keys_by_id[row.cause], "blocked_reason": row.blocked_reason},
                )
            )

    # 3. Dependents blocked because of tasks that left failed/cancelled are released.
    if reviving:
        reasons = [dependency_block_reason(c.key, s) for c in reviving for s in sorted(TERMINAL_FAILURE)]
        result = await conn.execute(
            _UNBLOCK_DEPENDENTS,
            {
                "ids": [c.task_id for c in reviving],
                "reasons": reasons,
                "prefix": DEPENDENCY_BLOCK_PREFIX,
                "now": now,
                "project": project,
            },
        )
        for row in result:
            unblocked = row.status == S.NOT_STARTED
            events.append(
                EventInput(
                    row.project,
                    row.key,
                    EVENT_UNBLOCKED if unblocked else EVENT_BLOCKED,
                    now,
                    row.status,
                    row.version,
                    {"actor": actor, "blocked_reason": row.blocked_reason},
                )
            )
            if unblocked and row.pending_deps == 0:
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
