"""Tasks carry routing requirements: tasks.requires (issue 18's TASKS.md agent column; issue 13's field).

A JSON object of label → value (``{"model": "opus"}``). The agent-routing migration
(``0006_agent_routing``) adds the same column: both use ``IF NOT EXISTS`` so either may run first.

Revision ID: 0008_task_requires
Revises: 0004_mission_quality_gates
Create Date: 2026-11-29 15:55:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008_task_requires"
down_revision: str | Sequence[str] | None = "0004_mission_quality_gates"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE tasks ADD COLUMN IF NOT EXISTS requires JSONB NOT NULL DEFAULT '{}'::jsonb")


def downgrade() -> None:
    op.execute("ALTER TABLE tasks DROP COLUMN IF EXISTS requires")
