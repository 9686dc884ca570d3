"""How a lease ends badly or a task changes status on the dispatch side: the task's own event, the
consequences for its dependents (:mod:`.transitions`), and the attempt accounting of a failure.

Shared by the dispatcher (fail, release, retry) and the sweeper (an expired lease), so both count
attempts, back off and dead-letter by the same rule.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, update
from sqlalchemy.ext.asyncio import AsyncConnection

from queue_service.models import TaskStatus
from queue_service.postgres import tables as t
from queue_service.postgres import transitions
from queue_service.postgres.rows import task_columns
from queue_service.postgres.transitions import EVENT_LEASE_EXPIRED, Effects, ReadyTask

__all__ = ["DB_NOW", "END_LEASE", "record_failure", "status_changed"]

S = TaskStatus
_tasks = t.tasks

#: The database's time: every lease decision uses it, never a replica's clock (issue 10, finding 3).
DB_NOW = func.statement_timestamp(type_=_tasks.c.updated_at.type)
#: The column values of a task that no longer has a lease.
END_LEASE: dict[str, Any] = {"lease_holder": None, "lease_token": None, "lease_expires_at": None}


async def status_changed(
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


async def record_failure(
    conn: AsyncConnection,
    task_id: int,
    attempts: int,
    max_attempts: int,
    error: str,
    retryable: bool,
    kind: str,
    now: datetime,
    data: dict[str, Any],
    backoff: Callable[[int], timedelta] | None,
) -> tuple[Any, Effects]:
    """Count an attempt on a leased task (row locked by the caller): backoff or dead-letter.

    *backoff* gives the delay before attempt *n* may run. Without it (a lease that expired: the
    holder vanished, nothing says the task is at fault) a task with attempts left is ready again at
    once."""
    attempts += 1
    values: dict[str, Any] = {
        "attempts": attempts,
        "last_error": error,
        "updated_at": DB_NOW,
        "version": _tasks.c.version + 1,
        **END_LEASE,
    }
    if retryable and attempts < max_attempts:
        if backoff is None:
            values.update(status=S.NOT_STARTED.value, not_before=None, assignee=None)
            data = {**data, "retry_in": 0.0, "attempt": attempts, "error": error}
        else:
            delay = backoff(attempts)
            values.update(status=S.NOT_STARTED.value, not_before=DB_NOW + delay, assignee=None)
            data = {**data, "retry_in": delay.total_seconds(), "attempt": attempts, "error": error}
    else:
        values.update(status=S.FAILED.value)
        if kind == EVENT_LEASE_EXPIRED:
            values.update(assignee=None)  # an expired holder is not working on it any more
        data = {**data, "dead_letter": True, "attempt": attempts, "error": error}
    row = (
        await conn.execute(update(_tasks).where(_tasks.c.id == task_id).values(**values).returning(*task_columns))
    ).one()
    effects = await status_changed(conn, row, S.IN_PROGRESS, kind, now, data)
    return row, effects
