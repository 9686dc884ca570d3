"""The workspace sync state (per project and file, with its rows) on Postgres."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from queue_service.postgres import tables as t
from queue_service.postgres.records.base import PostgresRecordsBase

__all__ = ["SyncRowRecords"]


class SyncRowRecords(PostgresRecordsBase):
    """The workspace sync state per project and file, with its rows (one part of the record store)."""

    async def get_sync_state(self, project: str, path: str) -> dict[str, Any] | None:
        """The last synced base stored for a workspace file, or None."""
        async with self._read() as conn:
            state = await conn.scalar(
                select(t.sync_state.c.state).where(t.sync_state.c.project == project, t.sync_state.c.path == path)
            )
            if state is None:
                await self._project_exists(conn, project)
                return None
            return dict(state)

    async def put_sync_state(
        self, project: str, path: str, state: dict[str, Any], rows: Mapping[str, dict[str, Any] | None] | None = None
    ) -> None:
        """Store (replace) the sync state of a workspace file and apply the changed base *rows*."""
        now = self.clock()
        async with self._tx() as (conn, _effects):
            await self._require_project(conn, project)
            stmt = pg_insert(t.sync_state).values(project=project, path=path, state=state, updated_at=now)
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[t.sync_state.c.project, t.sync_state.c.path],
                    set_={"state": stmt.excluded.state, "updated_at": stmt.excluded.updated_at},
                )
            )
            if not rows:
                return
            gone = [key for key, entry in rows.items() if entry is None]
            if gone:
                sr = t.sync_rows.c
                await conn.execute(delete(t.sync_rows).where(sr.project == project, sr.path == path, sr.key.in_(gone)))
            kept = [
                {"project": project, "path": path, "key": key, "entry": entry}
                for key, entry in rows.items()
                if entry is not None
            ]
            if kept:
                upsert = pg_insert(t.sync_rows)
                await conn.execute(
                    upsert.on_conflict_do_update(
                        index_elements=[t.sync_rows.c.project, t.sync_rows.c.path, t.sync_rows.c.key],
                        set_={"entry": upsert.excluded.entry},
                    ),
                    kept,
                )

    async def get_sync_rows(self, project: str, path: str) -> dict[str, dict[str, Any]]:
        """The base rows stored for a workspace file, by task key."""
        async with self._read() as conn:
            sr = t.sync_rows.c
            result = await conn.execute(select(sr.key, sr.entry).where(sr.project == project, sr.path == path))
            return {r.key: dict(r.entry) for r in result}
