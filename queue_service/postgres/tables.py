"""The Postgres schema (SQLAlchemy 2 declarative): the system of record.

Names here are a contract shared by the record store (``records.py``), the dispatcher
(``dispatch.py``) and the alembic migrations: change one only together with a migration.

Readiness in SQL: ``status = 'not-started' AND pending_deps = 0 AND (not_before IS NULL OR
not_before <= now())``. ``pending_deps`` is the number of the task's dependencies that are not
``done``; it is kept exact by :mod:`queue_service.postgres.transitions` in the transaction of every
status change, so the ready query never joins the dependency table.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "OPTIONAL_INDEXES",
    "TASK_SEARCH_SQL",
    "AgentRow",
    "ApiTokenRow",
    "Base",
    "EventRow",
    "MilestoneRow",
    "MissionRow",
    "NoteRow",
    "ProjectRow",
    "SyncRowRow",
    "SyncStateRow",
    "TaskDependencyRow",
    "TaskOfferRow",
    "RoutingCursorRow",
    "GroupTurnRow",
    "TaskRow",
    "agents",
    "api_tokens",
    "events",
    "metadata",
    "milestones",
    "missions",
    "notes",
    "projects",
    "sync_rows",
    "sync_state",
    "task_dependencies",
    "task_offers",
    "tasks",
]

#: Deterministic constraint names, so migrations can refer to them and autogenerate stays quiet.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: the text the board's search matches (key, title, description; a separator no needle may hold);
#: migration 0007 indexes exactly this expression with pg_trgm when the extension can be created
TASK_SEARCH_SQL = "(tasks.key || chr(31) || tasks.title || chr(31) || tasks.description)"
#: indexes a migration creates only when the server allows it (pg_trgm): not part of the models
OPTIONAL_INDEXES = frozenset({"ix_tasks_search_trgm"})

_STATUS_WORDS = "'not-started','in-progress','needs-qa','done','blocked','failed','cancelled'"
_TZ = DateTime(timezone=True)


class Base(DeclarativeBase):
    """Declarative base; ``Base.metadata`` is what alembic migrates."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ProjectRow(Base):
    """A project. ``next_seq`` is the next ``PREFIX-N`` number; ``last_task_seq`` the last task's seq."""

    __tablename__ = "projects"

    slug: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    key_prefix: Mapped[str] = mapped_column(Text)
    workspace: Mapped[str | None] = mapped_column(Text)
    #: next number handed out as ``PREFIX-N``; bumped under the row lock, so no gaps or duplicates
    next_seq: Mapped[int] = mapped_column(BigInteger, server_default=text("1"))
    #: creation-order counter for ``tasks.seq`` (every task, imported keys included)
    last_task_seq: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(_TZ, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(_TZ, server_default=func.now())
    version: Mapped[int] = mapped_column(BigInteger, server_default=text("1"))
    #: issue 13 (migration 0006): routing strategy per role, and in-progress caps per concurrency key
    routing: Mapped[dict[str, str]] = mapped_column(JSONB, server_default=text("'{}'"))
    concurrency_limits: Mapped[dict[str, int]] = mapped_column(JSONB, server_default=text("'{}'"))


class MissionRow(Base):
    """A mission of a project; ``position`` orders them (``default`` is 0)."""

    __tablename__ = "missions"
    __table_args__ = (
        PrimaryKeyConstraint("project", "id"),
        CheckConstraint("status IN ('pending','active','completed')", name="status"),
    )

    project: Mapped[str] = mapped_column(Text, ForeignKey("projects.slug", ondelete="CASCADE"))
    id: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default=text("'active'"))
    tasks_file: Mapped[str] = mapped_column(Text, server_default=text("'TASKS.md'"))
    position: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    #: issue 18 (migration 0003): coord's quality gates, a JSON array of command strings
    quality_gates: Mapped[list[str]] = mapped_column(JSONB, server_default=text("'[]'"))
    created_at: Mapped[datetime] = mapped_column(_TZ, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(_TZ, server_default=func.now())
    version: Mapped[int] = mapped_column(BigInteger, server_default=text("1"))


class MilestoneRow(Base):
    """An ordered milestone of a mission."""

    __tablename__ = "milestones"
    __table_args__ = (
        PrimaryKeyConstraint("project", "mission", "id"),
        ForeignKeyConstraint(["project", "mission"], ["missions.project", "missions.id"], ondelete="CASCADE"),
        CheckConstraint("status IN ('pending','active','completed')", name="status"),
    )

    project: Mapped[str] = mapped_column(Text)
    mission: Mapped[str] = mapped_column(Text)
    id: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default=text("'pending'"))
    position: Mapped[int] = mapped_column(Integer, server_default=text("0"))


class TaskRow(Base):
    """A task. ``pending_deps`` counts dependencies that are not done (see module docstring)."""

    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("project", "key"),
        UniqueConstraint("project", "seq"),
        ForeignKeyConstraint(["project", "mission"], ["missions.project", "missions.id"]),
        CheckConstraint(f"status IN ({_STATUS_WORDS})", name="status"),
        CheckConstraint("priority IN ('P0','P1','P2','P3')", name="priority"),
        CheckConstraint("pending_deps >= 0", name="pending_deps"),
        # One task per idempotency key and project; NULL keys are not constrained.
        Index(
            "uq_tasks_project_idempotency_key",
            "project",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        # The ready query: per project/role, best priority first, then creation order.
        Index(
            "ix_tasks_ready",
            "project",
            "role",
            "priority",
            "seq",
            postgresql_where=text("status = 'not-started' AND pending_deps = 0"),
        ),
        # The sweeper: leases that ran out.
        Index(
            "ix_tasks_lease_expiry",
            "lease_expires_at",
            postgresql_where=text("status = 'in-progress'"),
        ),
        # The sweeper: backoffs that came due.
        Index(
            "ix_tasks_not_before",
            "not_before",
            postgresql_where=text("status = 'not-started' AND not_before IS NOT NULL"),
        ),
        # Status counts and filtered lists.
        Index("ix_tasks_project_status", "project", "status"),
        # The dead-letter list, most recently updated first.
        Index(
            "ix_tasks_dead_letter",
            "project",
            "updated_at",
            postgresql_where=text("status = 'failed'"),
        ),
        # Issue 13: what each agent holds (capacity), and in-progress tasks per concurrency key.
        Index("ix_tasks_holder", "project", "lease_holder", postgresql_where=text("status = 'in-progress'")),
        Index(
            "ix_tasks_concurrency_key",
            "project",
            text("(routing->>'concurrency_key')"),
            postgresql_where=text("status = 'in-progress' AND routing IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    project: Mapped[str] = mapped_column(Text, ForeignKey("projects.slug", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(Text)
    seq: Mapped[int] = mapped_column(BigInteger)
    title: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, server_default=text("''"))
    status: Mapped[str] = mapped_column(Text, server_default=text("'not-started'"))
    role: Mapped[str] = mapped_column(Text, server_default=text("'default'"))
    priority: Mapped[str] = mapped_column(Text, server_default=text("'P2'"))
    assignee: Mapped[str | None] = mapped_column(Text)
    mission: Mapped[str] = mapped_column(Text, server_default=text("'default'"))
    milestone: Mapped[str | None] = mapped_column(Text)
    labels: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'"))
    extra: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'"))
    #: routing requirements (``{"model": "opus"}``; issues 13/18, migration 0008_task_requires)
    requires: Mapped[dict[str, str]] = mapped_column(JSONB, server_default=text("'{}'"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    max_attempts: Mapped[int] = mapped_column(Integer, server_default=text("3"))
    not_before: Mapped[datetime | None] = mapped_column(_TZ)
    idempotency_key: Mapped[str | None] = mapped_column(Text)
    #: the completion result; SQL NULL means "no result" (JSON null is not distinguished)
    result: Mapped[Any] = mapped_column(JSONB(none_as_null=True), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text)
    blocked_reason: Mapped[str | None] = mapped_column(Text)
    lease_holder: Mapped[str | None] = mapped_column(Text)
    lease_token: Mapped[str | None] = mapped_column(Text)
    lease_expires_at: Mapped[datetime | None] = mapped_column(_TZ)
    pending_deps: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    version: Mapped[int] = mapped_column(BigInteger, server_default=text("1"))
    created_at: Mapped[datetime] = mapped_column(_TZ, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(_TZ, server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(_TZ)
    completed_at: Mapped[datetime | None] = mapped_column(_TZ)
    #: the producer's W3C trace context (issue 14, migration 0005)
    traceparent: Mapped[str | None] = mapped_column(Text)
    tracestate: Mapped[str | None] = mapped_column(Text)
    #: issue 13 (migration 0006): prefers/concurrency_key/group, NULL when none is set
    #: (see :mod:`queue_service.postgres.routing_columns`)
    routing: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True), nullable=True)


class TaskDependencyRow(Base):
    """Edge ``task_id`` depends on ``depends_on_id``; ``position`` keeps the declared order."""

    __tablename__ = "task_dependencies"
    __table_args__ = (
        PrimaryKeyConstraint("task_id", "depends_on_id"),
        # Dependents of a task (promotion / blocking fan-out).
        Index("ix_task_dependencies_depends_on_id", "depends_on_id"),
    )

    task_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("tasks.id", ondelete="CASCADE"))
    depends_on_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("tasks.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer, server_default=text("0"))


class NoteRow(Base):
    """An append-only note on a task."""

    __tablename__ = "notes"
    __table_args__ = (Index("ix_notes_task_id", "task_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("tasks.id", ondelete="CASCADE"))
    author: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(_TZ, server_default=func.now())


class EventRow(Base):
    """A recorded change, written in the transaction of the change; ``id`` is the SSE event id."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_project_id", "project", "id"),
        # a task's event history (task page, lease reasons): newest first without a project-wide scan
        Index("ix_events_project_task_key_id", "project", "task_key", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    project: Mapped[str] = mapped_column(Text, ForeignKey("projects.slug", ondelete="CASCADE"))
    task_key: Mapped[str | None] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text)
    status: Mapped[str | None] = mapped_column(Text)
    version: Mapped[int | None] = mapped_column(BigInteger)
    at: Mapped[datetime] = mapped_column(_TZ, server_default=func.now())
    data: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'"))


class SyncStateRow(Base):
    """The last synced base of one workspace file (TASKS.md three-way merge)."""

    __tablename__ = "sync_state"
    __table_args__ = (PrimaryKeyConstraint("project", "path"),)

    project: Mapped[str] = mapped_column(Text, ForeignKey("projects.slug", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text)
    state: Mapped[dict[str, Any]] = mapped_column(JSONB)
    updated_at: Mapped[datetime] = mapped_column(_TZ, server_default=func.now())


class SyncRowRow(Base):
    """One task's row in the synced base of a workspace file, with its history (issue 17)."""

    __tablename__ = "sync_rows"
    __table_args__ = (PrimaryKeyConstraint("project", "path", "key"),)

    project: Mapped[str] = mapped_column(Text, ForeignKey("projects.slug", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text)
    key: Mapped[str] = mapped_column(Text)
    entry: Mapped[dict[str, Any]] = mapped_column(JSONB)


class ApiTokenRow(Base):
    """A bearer token record; only the hash is stored. ``project`` NULL means every project."""

    __tablename__ = "api_tokens"
    __table_args__ = (
        UniqueConstraint("token_hash"),
        CheckConstraint("role IN ('viewer','agent','admin')", name="role"),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    project: Mapped[str | None] = mapped_column(Text)
    role: Mapped[str] = mapped_column(Text)
    token_hash: Mapped[str] = mapped_column(Text)
    name: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(_TZ, server_default=func.now())
    #: set by ``qs token revoke`` (migration 0002); a revoked record still keeps auth on
    revoked_at: Mapped[datetime | None] = mapped_column(_TZ)


metadata = Base.metadata

#: Core ``Table`` objects, for set-based statements (``insert(tasks).values([...])``).
projects: Table = cast(Table, ProjectRow.__table__)
missions: Table = cast(Table, MissionRow.__table__)
milestones: Table = cast(Table, MilestoneRow.__table__)
tasks: Table = cast(Table, TaskRow.__table__)
task_dependencies: Table = cast(Table, TaskDependencyRow.__table__)
notes: Table = cast(Table, NoteRow.__table__)
events: Table = cast(Table, EventRow.__table__)
sync_state: Table = cast(Table, SyncStateRow.__table__)
sync_rows: Table = cast(Table, SyncRowRow.__table__)
api_tokens: Table = cast(Table, ApiTokenRow.__table__)


class AgentRow(Base):
    """An agent of a project (issue 13). Readiness is ``last_seen`` against the database's clock."""

    __tablename__ = "agents"
    __table_args__ = (PrimaryKeyConstraint("project", "id"), CheckConstraint("capacity >= 1", name="capacity"))

    project: Mapped[str] = mapped_column(Text, ForeignKey("projects.slug", ondelete="CASCADE"))
    id: Mapped[str] = mapped_column(Text)
    roles: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'"))
    labels: Mapped[dict[str, str]] = mapped_column(JSONB, server_default=text("'{}'"))
    capacity: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    implicit: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    drained: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    last_seen: Mapped[datetime] = mapped_column(_TZ, server_default=func.now())
    registered_at: Mapped[datetime] = mapped_column(_TZ, server_default=func.now())


class TaskOfferRow(Base):
    """A ready task reserved for one agent until ``expires_at`` (routing strategies, issue 13)."""

    __tablename__ = "task_offers"
    __table_args__ = (PrimaryKeyConstraint("project", "key"),)

    project: Mapped[str] = mapped_column(Text, ForeignKey("projects.slug", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(Text)
    agent: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column(_TZ)


class RoutingCursorRow(Base):
    """The round-robin position of one project's role."""

    __tablename__ = "routing_cursors"
    __table_args__ = (PrimaryKeyConstraint("project", "role"),)

    project: Mapped[str] = mapped_column(Text, ForeignKey("projects.slug", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(Text)
    position: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


class GroupTurnRow(Base):
    """When a (role, group) was last served: fair share takes the group served longest ago."""

    __tablename__ = "group_turns"
    __table_args__ = (PrimaryKeyConstraint("project", "role", "grp"),)

    project: Mapped[str] = mapped_column(Text, ForeignKey("projects.slug", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(Text)
    grp: Mapped[str] = mapped_column(Text)
    turn: Mapped[int] = mapped_column(BigInteger)


agents: Table = cast(Table, AgentRow.__table__)
task_offers: Table = cast(Table, TaskOfferRow.__table__)
routing_cursors: Table = cast(Table, RoutingCursorRow.__table__)
group_turns: Table = cast(Table, GroupTurnRow.__table__)
