"""Missions carry coord's quality gates: missions.quality_gates (issue 18).

A JSON array of command strings (``["make lint", "make test"]``), written to next-task.json by ``qs run``.

Revision ID: 0004_mission_quality_gates
Revises: 0003
Create Date: 2026-11-29 13:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_mission_quality_gates"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "missions",
        sa.Column("quality_gates", postgresql.JSONB(), server_default=sa.text("'[]'"), nullable=False),
    )


def downgrade() -> None:
    op.drop_column("missions", "quality_gates")
