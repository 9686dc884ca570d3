"""Reading tasks on Postgres: by key, filtered pages, blockers/dependents, dead letters, stats, ready lists."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import ColumnElement, Text, and_, bindparam, func, literal_column, not_, select

from queue_service import routing
from queue_service.cursors import decode_cursor, encode_cursor
from queue_service.models import QueueStats, ReadyList, Task, TaskFilter, TaskPage, TaskStatus
from queue_service.postgres import tables as t
from queue_service.postgres.records.base import READY, TEXTS, PostgresRecordsBase, S, due, select_tasks
from queue_service.postgres.rows import task_columns, task_from_row

__all__ = ["TaskQueries"]


class TaskQueries(PostgresRecordsBase):
    """Reading tasks (one part of the record store)."""

    async def get_task(self, project: str, key: str) -> Task:
        """Return the task. Raises TaskNotFound."""
        async with self._read() as conn:
            return task_from_row(await self._task_row(conn, project, key))

    async def get_tasks(self, project: str, keys: Sequence[str]) -> list[Task]:
        """The tasks among *keys* that exist, in the order asked; cost grows with len(keys) only."""
        async with self._read() as conn:
            if not keys:
                await self._project_exists(conn, project)
                return []
            return await self._get_tasks(conn, project, keys)

    async def list_tasks(
        self, project: str, filters: TaskFilter | None = None, limit: int = 100, cursor: str | None = None
    ) -> TaskPage:
        """Tasks matching every filter, in creation order (``seq``), at most *limit* per page.

        ``cursor`` is the opaque ``next_cursor`` of the previous page; a malformed one raises
        ValidationError. ``ready=True`` keeps only tasks that satisfy the readiness rule now.
        """
        after = decode_cursor(cursor)
        f = filters or TaskFilter()
        now = self.clock()
        tc = t.tasks.c
        where: list[ColumnElement[bool]] = [tc.project == project, tc.seq > after]
        if f.status:
            where.append(tc.status == func.any(bindparam("st", [s.value for s in f.status], TEXTS)))
        if f.role is not None:
            where.append(tc.role == f.role)
        if f.assignee is not None:
            where.append(tc.assignee == f.assignee)
        if f.mission is not None:
            where.append(tc.mission == f.mission)
        if f.milestone is not None:
            where.append(tc.milestone == f.milestone)
        if f.label is not None:
            where.append(tc.labels.contains([f.label]))
        if f.text:
            # the expression migration 0007 indexes with pg_trgm (when the server has it)
            needle = f.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append(literal_column(t.TASK_SEARCH_SQL, Text).ilike(f"%{needle}%", escape="\\"))
        if f.ready is not None:
            ready = and_(READY, due(now))
            where.append(ready if f.ready else not_(ready))
        async with self._read() as conn:
            rows = (await conn.execute(select_tasks().where(*where).order_by(tc.seq).limit(limit + 1))).all()
            if not rows:
                await self._project_exists(conn, project)
        items = tuple(task_from_row(r) for r in rows[:limit])
        more = len(rows) > limit
        return TaskPage(items=items, next_cursor=encode_cursor(items[-1].seq) if more and items else None)

    async def blockers(self, project: str, key: str) -> list[Task]:
        """The task's dependencies that are not done (what blocks it), in dependency order."""
        async with self._read() as conn:
            row = await self._task_row(conn, project, key)
            d = t.task_dependencies
            rows = await conn.execute(
                select_tasks()
                .select_from(d.join(t.tasks, t.tasks.c.id == d.c.depends_on_id))
                .where(d.c.task_id == row.id, t.tasks.c.status != S.DONE.value)
                .order_by(d.c.position, t.tasks.c.seq)
            )
            return [task_from_row(r) for r in rows]

    async def dependents(self, project: str, key: str) -> list[Task]:
        """The tasks that depend directly on *key* (what it unblocks), by seq."""
        async with self._read() as conn:
            row = await self._task_row(conn, project, key)
            d = t.task_dependencies
            rows = await conn.execute(
                select_tasks()
                .select_from(d.join(t.tasks, t.tasks.c.id == d.c.task_id))
                .where(d.c.depends_on_id == row.id)
                .order_by(t.tasks.c.seq)
            )
            return [task_from_row(r) for r in rows]

    async def dead_letter(self, project: str, limit: int = 100) -> list[Task]:
        """Failed tasks (the dead-letter set), most recently updated first."""
        async with self._read() as conn:
            rows = (
                await conn.execute(
                    select_tasks()
                    .where(t.tasks.c.project == project, t.tasks.c.status == S.FAILED.value)
                    .order_by(t.tasks.c.updated_at.desc(), t.tasks.c.seq.desc())
                    .limit(limit)
                )
            ).all()
            if not rows:
                await self._project_exists(conn, project)
            return [task_from_row(r) for r in rows]

    async def stats(self, project: str) -> QueueStats:
        """Counts per status, ready tasks per role, in-flight leases, dead-letter size."""
        now = self.clock()
        tc = t.tasks.c
        stmt = (
            select(
                tc.status,
                tc.role,
                func.count().label("n"),
                func.count().filter(and_(READY, due(now))).label("ready"),
                func.count().filter(tc.lease_expires_at.is_not(None)).label("leased"),
                func.count()
                .filter(and_(tc.status == S.DONE.value, tc.completed_at >= now - timedelta(minutes=1)))
                .label("recent"),
            )
            .where(tc.project == project)
            .group_by(tc.status, tc.role)
        )
        async with self._read() as conn:
            rows = (await conn.execute(stmt)).all()
            if not rows:
                await self._project_exists(conn, project)
        by_status = {s.value: 0 for s in TaskStatus}
        ready: dict[str, int] = {}
        in_flight = recent = 0
        for r in rows:
            by_status[r.status] += r.n
            if r.ready:
                ready[r.role] = ready.get(r.role, 0) + r.ready
            if r.status == S.IN_PROGRESS.value:
                in_flight += r.leased
            recent += r.recent
        return QueueStats(
            project=project,
            by_status=by_status,
            ready_by_role=ready,
            in_flight=in_flight,
            dead_letter=by_status[S.FAILED.value],
            completed_last_minute=recent,
        )

    async def ready_tasks(self, project: str, roles: Sequence[str] | None = None, limit: int = 20) -> ReadyList:
        """See :meth:`RecordStore.ready_tasks`: in the order claims take them (``routing.fair_order``:
        priority, the group's turn, tasks unblocked, age), read as the best *limit* of each (role,
        priority, group) and the groups' turns."""
        now = self.clock()
        tc = t.tasks.c
        d = t.task_dependencies
        c = t.tasks.alias("dependent")
        unblocks = (
            select(func.count())
            .select_from(d.join(c, c.c.id == d.c.task_id))
            .where(d.c.depends_on_id == tc.id, c.c.status != S.DONE.value)
            .scalar_subquery()
        )
        where = [tc.project == project, READY, due(now)]
        if roles:
            where.append(tc.role.in_(list(roles)))
        group = func.coalesce(tc.routing["group"].astext, tc.mission)
        ready = select(tc.id.label("id"), unblocks.label("unblocks"), group.label("grp")).where(*where).subquery()
        rank = (
            func.row_number()
            .over(partition_by=(tc.role, tc.priority, ready.c.grp), order_by=(ready.c.unblocks.desc(), tc.seq))
            .label("rn")
        )
        ranked = select(tc.id.label("id"), ready.c.unblocks, rank).join(ready, ready.c.id == tc.id).subquery()
        async with self._read(consistent=True) as conn:
            rows = (
                await conn.execute(
                    select(*task_columns, ranked.c.unblocks)
                    .join(ranked, ranked.c.id == tc.id)
                    .where(ranked.c.rn <= limit)
                    .order_by(tc.priority, ranked.c.unblocks.desc(), tc.seq)
                )
            ).all()
            total = int(await conn.scalar(select(func.count()).select_from(t.tasks).where(*where)) or 0)
            turn_rows = (await conn.execute(select(t.group_turns).where(t.group_turns.c.project == project))).all()
            if not rows:
                await self._project_exists(conn, project)
        candidates = [routing.Candidate(task_from_row(r), int(r.unblocks)) for r in rows]
        turns = {(r.role, r.grp): int(r.turn) for r in turn_rows}
        listed = routing.fair_order(candidates, turns, limit)
        return ReadyList(tasks=[x.task for x in listed], total=total, unblocks={x.task.key: x.unblocks for x in listed})
