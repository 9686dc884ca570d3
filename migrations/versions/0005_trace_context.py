"""Tasks carry the producer's W3C trace context: tasks.traceparent, tasks.tracestate (issue 14).

Both nullable text, validated by the service (W3C format, at most 128 and 512 characters).

Revision ID: 0005_trace_context
Revises: 0008_task_requires (main's head when this branch merged it)
Create Date: 2026-11-29 15:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_trace_context"
down_revision: str | Sequence[str] | None = "0008_task_requires"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("traceparent", sa.Text(), nullable=True))
    op.add_column("tasks", sa.Column("tracestate", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("tasks", "tracestate")
    op.drop_column("tasks", "traceparent")
