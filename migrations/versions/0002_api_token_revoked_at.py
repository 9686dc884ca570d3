"""API tokens can be revoked: api_tokens.revoked_at (issue 9).

A revoked token no longer authenticates; its record stays, so auth stays on until `qs token purge`.

Revision ID: 0002_token_revoked_at
Revises: 0001
Create Date: 2026-11-29 12:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_token_revoked_at"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("api_tokens", sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("api_tokens", "revoked_at")
