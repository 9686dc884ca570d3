"""Agents and routing (issue 13): the agent registry, offers, round-robin cursors, group turns, and
the routing fields of tasks (``tasks.routing``: prefers, concurrency_key, group; ``requires`` is
``tasks.requires`` from ``0008_task_requires``) and projects (``routing``, ``concurrency_limits``).

Revision ID: 0006_agent_routing
Revises: 0007_event_task_index
Create Date: 2026-11-29 15:20:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006_agent_routing"
down_revision: str | Sequence[str] | None = "0007_event_task_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TZ = sa.DateTime(timezone=True)


def _project(table: str) -> list[Any]:
    return [
        sa.Column("project", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project"], ["projects.slug"], name=op.f(f"fk_{table}_project_projects"), ondelete="CASCADE"
        ),
    ]


def upgrade() -> None:
    op.add_column("projects", sa.Column("routing", postgresql.JSONB(), server_default=sa.text("'{}'"), nullable=False))
    op.add_column(
        "projects",
        sa.Column("concurrency_limits", postgresql.JSONB(), server_default=sa.text("'{}'"), nullable=False),
    )
    op.add_column("tasks", sa.Column("routing", postgresql.JSONB(), nullable=True))
    op.create_index(
        "ix_tasks_holder",
        "tasks",
        ["project", "lease_holder"],
        postgresql_where=sa.text("status = 'in-progress'"),
    )
    op.create_index(
        "ix_tasks_concurrency_key",
        "tasks",
        ["project", sa.text("(routing->>'concurrency_key')")],
        postgresql_where=sa.text("status = 'in-progress' AND routing IS NOT NULL"),
    )
    op.create_table(
        "agents",
        *_project("agents"),
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("roles", postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'"), nullable=False),
        sa.Column("labels", postgresql.JSONB(), server_default=sa.text("'{}'"), nullable=False),
        sa.Column("capacity", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("implicit", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("drained", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("last_seen", _TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("registered_at", _TZ, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("project", "id", name=op.f("pk_agents")),
        sa.CheckConstraint("capacity >= 1", name=op.f("ck_agents_capacity")),
    )
    op.create_table(
        "task_offers",
        *_project("task_offers"),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("agent", sa.Text(), nullable=False),
        sa.Column("expires_at", _TZ, nullable=False),
        sa.PrimaryKeyConstraint("project", "key", name=op.f("pk_task_offers")),
    )
    op.create_table(
        "routing_cursors",
        *_project("routing_cursors"),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("position", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("project", "role", name=op.f("pk_routing_cursors")),
    )
    op.create_table(
        "group_turns",
        *_project("group_turns"),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("grp", sa.Text(), nullable=False),
        sa.Column("turn", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("project", "role", "grp", name=op.f("pk_group_turns")),
    )


def downgrade() -> None:
    op.drop_table("group_turns")
    op.drop_table("routing_cursors")
    op.drop_table("task_offers")
    op.drop_table("agents")
    op.drop_index("ix_tasks_concurrency_key", table_name="tasks")
    op.drop_index("ix_tasks_holder", table_name="tasks")
    op.drop_column("tasks", "routing")
    op.drop_column("projects", "concurrency_limits")
    op.drop_column("projects", "routing")
