"""Per-task event history and board text search stay fast in big projects (issue 12).

* ``events (project, task_key, id)``: a task's history (task page, lease refusal reasons) is read
  newest first by key; without it every read scanned the project's whole event log.
* ``ix_tasks_search_trgm``: a trigram GIN index on the board's search text (key, title, description),
  created only when the ``pg_trgm`` extension is installed or can be created by this role. Without
  it the search still runs in the database (one ``ILIKE`` scan of the project's rows), just
  without an index: a managed Postgres that refuses extensions is not an error.

Revision ID: 0007_event_task_index
Revises: 0005_trace_context
Create Date: 2026-11-29 15:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_event_task_index"
down_revision: str | Sequence[str] | None = "0005_trace_context"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: must stay the expression queue_service.postgres.tables.TASK_SEARCH_SQL (the planner matches it)
_SEARCH = "(tasks.key || chr(31) || tasks.title || chr(31) || tasks.description)"


def _trigram_available(bind: sa.engine.Connection) -> bool:
    """Whether pg_trgm is installed, or installable by this role (tried inside a savepoint)."""
    installed = bind.execute(sa.text("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'")).first()
    if installed:
        return True
    offered = bind.execute(sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'")).first()
    if not offered:
        return False
    savepoint = bind.begin_nested()
    try:
        bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    except sa.exc.DBAPIError:
        savepoint.rollback()  # not allowed (no superuser, not trusted): search runs without an index
        return False
    savepoint.commit()
    return True


def upgrade() -> None:
    op.create_index("ix_events_project_task_key_id", "events", ["project", "task_key", "id"])
    bind = op.get_bind()
    if _trigram_available(bind):
        op.execute(f"CREATE INDEX ix_tasks_search_trgm ON tasks USING gin ({_SEARCH} gin_trgm_ops)")


def downgrade() -> None:
    # the extension stays: other databases objects may use it, and dropping it needs the owner
    op.execute("DROP INDEX IF EXISTS ix_tasks_search_trgm")
    op.drop_index("ix_events_project_task_key_id", table_name="events")
