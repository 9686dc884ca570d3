"""Rows → domain models: the task columns to select, the one task mapper and the event mapper.

Both connection kinds return task rows: SQLAlchemy (``Row``, read by attribute or ``_mapping``) and
raw asyncpg (``Record``, read by key). :func:`task_from_row` reads either.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import ARRAY, Text, literal_column

from queue_service.models import Event, Priority, Task, TaskStatus
from queue_service.postgres import tables as t
from queue_service.postgres.routing_columns import routing_fields

__all__ = ["TASK_RETURNING_SQL", "event_from_row", "task_columns", "task_from_row"]

# The task's dependency keys, in declared order, as one correlated subquery (no N+1).
_DEPENDS_ON_SQL = (
    "ARRAY(SELECT p.key FROM task_dependencies d JOIN tasks p ON p.id = d.depends_on_id "
    "WHERE d.task_id = tasks.id ORDER BY d.position, p.seq)"
)

_DOMAIN_COLUMNS = tuple(c for c in t.tasks.c if c.name != "lease_token")

#: Every task column the domain model needs (not the lease token), plus ``depends_on``.
task_columns: tuple[Any, ...] = (*_DOMAIN_COLUMNS, literal_column(_DEPENDS_ON_SQL, ARRAY(Text)).label("depends_on"))

#: :data:`task_columns` as SQL for a ``RETURNING`` clause (the ``{task_returning}`` of ``sql/*.sql``).
TASK_RETURNING_SQL = ", ".join(c.name for c in _DOMAIN_COLUMNS) + f", {_DEPENDS_ON_SQL} AS depends_on"


def task_from_row(row: Any) -> Task:
    """Build the domain Task from a row holding :data:`task_columns` (SQLAlchemy or asyncpg).

    ``model_construct`` skips validation: the values come from columns whose types and CHECK
    constraints already guarantee what validation would check (status and priority words, JSON
    objects, non-null keys), and validation was most of the CPU cost of a claim.
    """
    r: Mapping[str, Any] = getattr(row, "_mapping", row)
    return Task.model_construct(
        project=r["project"],
        key=r["key"],
        seq=r["seq"],
        title=r["title"],
        description=r["description"],
        status=TaskStatus(r["status"]),
        role=r["role"],
        priority=Priority(r["priority"]),
        assignee=r["assignee"],
        mission=r["mission"],
        milestone=r["milestone"],
        depends_on=tuple(r["depends_on"] or ()),
        labels=tuple(r["labels"] or ()),
        extra=dict(r["extra"] or {}),
        requires=dict(r["requires"] or {}),
        attempts=r["attempts"],
        max_attempts=r["max_attempts"],
        not_before=r["not_before"],
        idempotency_key=r["idempotency_key"],
        result=r["result"],
        last_error=r["last_error"],
        blocked_reason=r["blocked_reason"],
        lease_holder=r["lease_holder"],
        lease_expires_at=r["lease_expires_at"],
        version=r["version"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
        started_at=r["started_at"],
        completed_at=r["completed_at"],
        traceparent=r["traceparent"],
        tracestate=r["tracestate"],
        **routing_fields(r["routing"]),
    )


def event_from_row(row: Any) -> Event:
    """Build the domain Event from an ``events`` row (SQLAlchemy)."""
    return Event(
        id=row.id,
        project=row.project,
        task=row.task_key,
        kind=row.kind,
        status=TaskStatus(row.status) if row.status else None,
        version=row.version,
        at=row.at,
        data=dict(row.data or {}),
    )
