"""The fast path of ``create_task``: one plain task in two statements on a raw asyncpg connection.

Most creations are one task with no given key, no idempotency key and no dependencies. The general
path (:mod:`.task_create`) pays nine round trips and a few milliseconds of SQLAlchemy for it (BEGIN,
the project's row lock, the missions check, the key window, the role's ready depth, INSERT task,
UPDATE project, INSERT event, COMMIT). Here it is one transaction of two prepared statements
(``sql/task_create_fast.sql``): the project row's lock with the next key number, then the depth check,
the task row and its ``created`` event in one statement; the result is built without re-validation
(every value is the validated input or comes from our own schema).

Same semantics as the general path, by construction: the same row lock serialises key numbers per
project, the depth is counted after that lock (READ COMMITTED, a fresh snapshot per statement), and
whatever the fast path cannot answer exactly -- an unknown project or mission, a key number already
taken by an imported task, a full queue -- rolls back and returns None, so the general path runs and
raises the precise error (or skips the taken number).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from queue_service import domain
from queue_service.models import Event, Task, TaskCreate, TaskStatus
from queue_service.postgres.asyncpg_pool import RawPool
from queue_service.postgres.errors import wrap_errors
from queue_service.postgres.resources import load_queries
from queue_service.postgres.transitions import EVENT_CREATED, Effects, ReadyTask

__all__ = ["create_one_fast", "fast_eligible"]

_SQL = load_queries("task_create_fast.sql")


#: the TaskCreate fields the fast path writes (or rules out: a key, an idempotency key, dependencies)
_COVERED = frozenset(
    {
        "title", "description", "status", "role", "priority", "assignee", "mission", "milestone",
        "labels", "extra", "max_attempts", "not_before", "key", "idempotency_key", "depends_on",
    }
)  # fmt: skip
#: every other TaskCreate field with its default, read once (not per create: this is the hot path)
_UNCOVERED_DEFAULTS = tuple(
    (name, info.get_default(call_default_factory=True))
    for name, info in TaskCreate.model_fields.items()
    if name not in _COVERED
)


def fast_eligible(items: Sequence[TaskCreate]) -> bool:
    """One task with no given key, no idempotency key and no dependencies, created not-started, and
    every field the fast path does not write at its default (a field added later takes the general
    path until the fast path writes it too)."""
    if len(items) != 1:
        return False
    item = items[0]
    if item.key is not None or item.idempotency_key is not None or item.depends_on:
        return False
    if item.status is not TaskStatus.NOT_STARTED:
        return False
    return all(getattr(item, name) == default for name, default in _UNCOVERED_DEFAULTS)


async def create_one_fast(
    raw: RawPool, project: str, item: TaskCreate, now: datetime, max_queue_depth: int
) -> tuple[Task, Effects] | None:
    """Create *item*; the task and what to tell the dispatcher after commit, or None when the general
    path must answer (nothing was written then)."""
    async with wrap_errors(), raw.connection() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            proj = await conn.fetchrow(_SQL["allocate_key"], project)
            if proj is None:
                await tx.rollback()
                return None
            key = domain.format_key(proj["key_prefix"], proj["number"])
            seq = int(proj["seq"])
            row = await conn.fetchrow(
                _SQL["insert_task"],
                project,
                key,
                seq,
                item.title,
                item.role,
                item.description,
                item.priority.value,
                item.assignee,
                item.mission,
                item.milestone,
                list(item.labels),
                dict(item.extra),
                item.max_attempts,
                item.not_before,
                now,
                max_queue_depth,
            )
            if row is None or row["event_id"] is None:
                await tx.rollback()  # the queue is full: the general path says so, with the depth
                return None
        except (asyncpg.UniqueViolationError, asyncpg.ForeignKeyViolationError):
            await tx.rollback()
            return None
        except BaseException:
            await tx.rollback()
            raise
        await tx.commit()
    task = Task.model_construct(
        project=project,
        key=key,
        seq=seq,
        title=item.title,
        description=item.description,
        status=TaskStatus.NOT_STARTED,
        role=item.role,
        priority=item.priority,
        assignee=item.assignee,
        mission=item.mission,
        milestone=item.milestone,
        labels=tuple(item.labels),
        extra=dict(item.extra),
        attempts=0,
        max_attempts=item.max_attempts,
        not_before=item.not_before,
        idempotency_key=None,
        result=None,
        version=1,
        created_at=now,
        updated_at=now,
        started_at=None,
        completed_at=None,
        depends_on=(),
    )
    effects = Effects()
    effects.add_candidate(ReadyTask(project, key, item.role, item.priority.value, seq, item.not_before), now)
    effects.events.append(
        Event.model_construct(
            id=int(row["event_id"]),
            project=project,
            task=key,
            kind=EVENT_CREATED,
            status=TaskStatus.NOT_STARTED,
            version=1,
            at=now,
            data={},
        )
    )
    return task, effects
