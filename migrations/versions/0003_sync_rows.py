"""Workspace sync base rows in their own table (issue 17): a cycle stores the rows that changed.

Each row holds a task's synced values and a short history of earlier synced versions (so an old copy
of TASKS.md is recognised). Existing bases stay in ``sync_state.state`` until the next cycle moves
them here.

Revision ID: 0003
Revises: 0002_token_revoked_at
Create Date: 2026-11-29 12:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0003'
down_revision: str | Sequence[str] | None = '0002_token_revoked_at'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('sync_rows',
    sa.Column('project', sa.Text(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('key', sa.Text(), nullable=False),
    sa.Column('entry', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.ForeignKeyConstraint(['project'], ['projects.slug'], name=op.f('fk_sync_rows_project_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('project', 'path', 'key', name=op.f('pk_sync_rows'))
    )


def downgrade() -> None:
    op.drop_table('sync_rows')
