"""Notes on tasks and the event log on Postgres."""

from __future__ import annotations

import secrets

from sqlalchemy import insert, select

from queue_service import exceptions
from queue_service.models import Event, Note
from queue_service.postgres import tables as t
from queue_service.postgres.records.base import PostgresRecordsBase, S
from queue_service.postgres.rows import event_from_row
from queue_service.postgres.transitions import EventInput, insert_events

__all__ = ["NoteEventRecords"]


class NoteEventRecords(PostgresRecordsBase):
    """Notes on tasks and the event log (one part of the record store)."""

    async def add_note(self, project: str, key: str, author: str, text: str, token: str | None = None) -> Note:
        """Append a note. With *token*, the caller must hold the task's live lease (LeaseError)."""
        now = self.clock()
        async with self._tx() as (conn, effects):
            # FOR SHARE: a concurrent complete/reclaim waits, so the token check stays true until commit.
            row = await self._task_row(conn, project, key, lock="share" if token is not None else None)
            if token is not None:
                held = row.lease_token
                if (
                    row.status != S.IN_PROGRESS.value
                    or held is None
                    or not secrets.compare_digest(held.encode(), token.encode())
                ):
                    raise exceptions.LeaseError(
                        f"lease token for task {key} is not valid (the task was reclaimed, finished or never "
                        "claimed with this token)",
                        task=key,
                    )
                if row.lease_expires_at is None or row.lease_expires_at <= now:
                    raise exceptions.LeaseError(f"lease on task {key} expired at {row.lease_expires_at}", task=key)
            note = (
                await conn.execute(
                    insert(t.notes)
                    .values(task_id=row.id, author=author, text=text, created_at=now)
                    .returning(t.notes.c.id, t.notes.c.created_at)
                )
            ).one()
            effects.events.extend(
                await insert_events(
                    conn,
                    [
                        EventInput(
                            project,
                            key,
                            "note_added",
                            now,
                            row.status,
                            row.version,
                            {"author": author, "note_id": note.id},
                        )
                    ],
                )
            )
            return Note(id=note.id, project=project, task=key, author=author, text=text, created_at=note.created_at)

    async def list_notes(self, project: str, key: str) -> list[Note]:
        """The task's notes, oldest first."""
        async with self._read() as conn:
            row = await self._task_row(conn, project, key)
            rows = await conn.execute(select(t.notes).where(t.notes.c.task_id == row.id).order_by(t.notes.c.id))
            return [
                Note(id=n.id, project=project, task=key, author=n.author, text=n.text, created_at=n.created_at)
                for n in rows
            ]

    async def task_events(self, project: str, key: str, limit: int = 20) -> list[Event]:
        """See :meth:`RecordStore.task_events`."""
        e = t.events.c
        async with self._read() as conn:
            await self._task_row(conn, project, key)
            rows = (
                await conn.execute(
                    select(t.events).where(e.project == project, e.task_key == key).order_by(e.id.desc()).limit(limit)
                )
            ).all()
        return [event_from_row(r) for r in rows]

    async def list_events(self, project: str, after_id: int = 0, limit: int = 1000) -> list[Event]:
        """Events of the project with ``id > after_id``, oldest first, at most *limit*."""
        e = t.events.c
        async with self._read() as conn:
            rows = (
                await conn.execute(
                    select(t.events).where(e.project == project, e.id > after_id).order_by(e.id).limit(limit)
                )
            ).all()
            if not rows:
                await self._project_exists(conn, project)
        return [event_from_row(r) for r in rows]

    async def list_task_events(self, project: str, key: str, limit: int = 1000) -> list[Event]:
        """See :meth:`RecordStore.list_task_events`: one query instead of a log scan."""
        e = t.events.c
        async with self._read() as conn:
            rows = (
                await conn.execute(
                    select(t.events).where(e.project == project, e.task_key == key).order_by(e.id.desc()).limit(limit)
                )
            ).all()
            if not rows:
                await self._task_row(conn, project, key)
        return [event_from_row(r) for r in reversed(rows)]
