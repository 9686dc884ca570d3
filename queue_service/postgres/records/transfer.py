"""Export and import of a whole project on Postgres (keys, versions, seq, notes and events kept)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, func, insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from queue_service import domain, exceptions
from queue_service.models import (
    DEFAULT_MISSION,
    Mission,
    Note,
    Project,
    ProjectSnapshot,
    SyncFileState,
    Task,
)
from queue_service.postgres import tables as t
from queue_service.postgres.records.base import BIGINTS, PostgresRecordsBase, project_from_row, select_tasks
from queue_service.postgres.routing_columns import ROUTING_FIELDS, routing_column
from queue_service.postgres.rows import event_from_row, task_from_row
from queue_service.postgres.transitions import recompute_pending_deps

__all__ = ["TransferRecords"]


class TransferRecords(PostgresRecordsBase):
    """Export and import of a whole project (one part of the record store)."""

    async def export_project(self, project: str) -> ProjectSnapshot:
        """Everything the project holds, with keys, versions, notes and events as stored."""
        async with self._read(consistent=True) as conn:
            proj = await self._require_project(conn, project)
            missions = await self.list_missions_on(conn, project)
            tasks = [
                task_from_row(r)
                for r in await conn.execute(select_tasks().where(t.tasks.c.project == project).order_by(t.tasks.c.seq))
            ]
            notes = [
                Note(id=r.id, project=project, task=r.key, author=r.author, text=r.text, created_at=r.created_at)
                for r in await conn.execute(
                    select(t.notes, t.tasks.c.key)
                    .select_from(t.notes.join(t.tasks, t.tasks.c.id == t.notes.c.task_id))
                    .where(t.tasks.c.project == project)
                    .order_by(t.notes.c.id)
                )
            ]
            events = [
                event_from_row(r)
                for r in await conn.execute(
                    select(t.events).where(t.events.c.project == project).order_by(t.events.c.id)
                )
            ]
            sync_rows: dict[str, dict[str, dict[str, Any]]] = {}
            for r in await conn.execute(select(t.sync_rows).where(t.sync_rows.c.project == project)):
                sync_rows.setdefault(r.path, {})[r.key] = dict(r.entry)
            syncs = [
                SyncFileState(project=project, path=r.path, state=dict(r.state), rows=sync_rows.get(r.path, {}))
                for r in await conn.execute(
                    select(t.sync_state).where(t.sync_state.c.project == project).order_by(t.sync_state.c.path)
                )
            ]
            return ProjectSnapshot(
                project=project_from_row(proj),
                missions=tuple(missions),
                tasks=tuple(tasks),
                notes=tuple(notes),
                events=tuple(events),
                next_seq=proj.next_seq,
                sync=tuple(syncs),
            )

    async def import_project(self, snapshot: ProjectSnapshot) -> Project:
        """Recreate a project exactly as exported (keys, versions, seq, notes, events).

        Raises AlreadyExists if the slug exists. Live leases are not carried over: in-progress
        tasks with a lease come back as in-progress without a lease holder, and the sweeper
        leaves them to a human (documented in docs/plans/flatfile.md). Note and event ids are kept
        when they are free in this database, else renumbered in order (see the module doc).
        """
        p = snapshot.project
        now = self.clock()
        async with self._tx() as (conn, effects):
            row = (
                await conn.execute(
                    pg_insert(t.projects)
                    .values(
                        slug=p.slug,
                        name=p.name,
                        key_prefix=p.key_prefix,
                        workspace=p.workspace,
                        routing=dict(p.routing),
                        concurrency_limits=dict(p.concurrency_limits),
                        next_seq=snapshot.next_seq,
                        last_task_seq=max((task.seq for task in snapshot.tasks), default=0),
                        created_at=p.created_at,
                        updated_at=p.updated_at,
                        version=p.version,
                    )
                    .on_conflict_do_nothing()
                    .returning(t.projects)
                )
            ).first()
            if row is None:
                raise exceptions.AlreadyExists(f"project {p.slug!r} already exists", project=p.slug)
            missions = list(snapshot.missions)
            if not any(m.id == DEFAULT_MISSION for m in missions):
                missions.insert(
                    0, Mission(project=p.slug, id=DEFAULT_MISSION, name=p.name, created_at=now, updated_at=now)
                )
            if missions:
                await conn.execute(
                    insert(t.missions),
                    [
                        {
                            "project": p.slug,
                            "id": m.id,
                            "name": m.name,
                            "status": m.status.value,
                            "tasks_file": m.tasks_file,
                            "quality_gates": list(m.quality_gates),
                            "position": 0 if m.id == DEFAULT_MISSION else i + 1,
                            "created_at": m.created_at,
                            "updated_at": m.updated_at,
                            "version": m.version,
                        }
                        for i, m in enumerate(missions)
                    ],
                )
                for m in missions:
                    await self._insert_milestones(conn, p.slug, m.id, m.milestones)
            known_missions = {m.id for m in missions}
            keys = {task.key for task in snapshot.tasks}
            for task in snapshot.tasks:
                if task.mission not in known_missions:
                    raise exceptions.MissionNotFound(
                        f"task {task.key} names mission {task.mission!r}, which the snapshot does not hold",
                        project=p.slug,
                        mission=task.mission,
                    )
                for dep in task.depends_on:
                    if dep not in keys:
                        raise exceptions.UnknownDependency(
                            f"task {task.key} depends on {dep}, which the snapshot does not hold",
                            task=task.key,
                            dependency=dep,
                        )
            ordered = sorted(snapshot.tasks, key=lambda x: x.seq)
            ids: dict[str, int] = {}
            if ordered:
                result = await conn.execute(
                    insert(t.tasks).returning(t.tasks.c.id, t.tasks.c.key, sort_by_parameter_order=True),
                    [self._import_row(p.slug, task) for task in ordered],
                )
                ids = {r.key: r.id for r in result}
                domain.check_no_cycle({task.key: task.depends_on for task in ordered})
                await self._insert_edges(
                    conn,
                    [(ids[task.key], ids[d], pos) for task in ordered for pos, d in enumerate(task.depends_on)],
                )
                effects.merge(await recompute_pending_deps(conn, ids.values(), now))
            if snapshot.notes:
                note_rows = []
                for n in snapshot.notes:
                    if n.task not in ids:
                        raise exceptions.TaskNotFound(
                            f"note {n.id} belongs to task {n.task}, which the snapshot does not hold", task=n.task
                        )
                    note_rows.append(
                        {
                            "id": n.id,
                            "task_id": ids[n.task],
                            "author": n.author,
                            "text": n.text,
                            "created_at": n.created_at,
                        }
                    )
                await self._insert_keeping_ids(conn, t.notes, note_rows)
            if snapshot.events:
                await self._insert_keeping_ids(
                    conn,
                    t.events,
                    [
                        {
                            "id": e.id,
                            "project": p.slug,
                            "task_key": e.task,
                            "kind": e.kind,
                            "status": e.status.value if e.status else None,
                            "version": e.version,
                            "at": e.at,
                            "data": dict(e.data),
                        }
                        for e in sorted(snapshot.events, key=lambda e: e.id)
                    ],
                )
            for sync in snapshot.sync:
                await conn.execute(
                    insert(t.sync_state).values(project=p.slug, path=sync.path, state=dict(sync.state), updated_at=now)
                )
                if sync.rows:
                    await conn.execute(
                        insert(t.sync_rows),
                        [{"project": p.slug, "path": sync.path, "key": k, "entry": v} for k, v in sync.rows.items()],
                    )
            # Old events are history, not news: only the ready tasks go to dispatch.
            effects.events.clear()
            return project_from_row(row)

    @staticmethod
    def _import_row(project: str, task: Task) -> dict[str, Any]:
        data = task.model_dump(exclude={"depends_on", "project", *ROUTING_FIELDS})
        data.update(
            routing=routing_column(task.prefers, task.concurrency_key, task.group),
            project=project,
            status=task.status.value,
            priority=task.priority.value,
            labels=list(task.labels),
            extra=dict(task.extra),
            requires=dict(task.requires),
            # The token never leaves the old backend, so the lease cannot continue here.
            lease_holder=None,
            lease_expires_at=None,
            lease_token=None,
            result=task.result,
        )
        return data

    @staticmethod
    async def _insert_keeping_ids(conn: AsyncConnection, table: Any, rows: list[dict[str, Any]]) -> None:
        """Insert *rows* with their own ``id`` if all are free, else let the sequence renumber them."""
        seq = f"{table.name}_id_seq"
        top = max(r["id"] for r in rows)
        # Move the sequence past the imported ids first, so concurrent writers cannot take them.
        await conn.execute(
            text(f"SELECT setval('{seq}', GREATEST((SELECT last_value FROM {seq}), :top))"), {"top": top}
        )
        clash = await conn.scalar(
            select(func.count())
            .select_from(table)
            .where(table.c.id == func.any(bindparam("ids", [r["id"] for r in rows], BIGINTS)))
        )
        if not clash:
            try:
                async with conn.begin_nested():
                    await conn.execute(insert(table), rows)
                return
            except IntegrityError:
                pass  # an id was taken by a concurrent writer after all: renumber below
        await conn.execute(insert(table), [{k: v for k, v in r.items() if k != "id"} for r in rows])
