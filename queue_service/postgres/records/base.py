"""What every part of the Postgres record store shares: the engine, transactions, after-commit effects,
and the lookups several aggregates use (project, task row, missions, edges, milestones)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    ColumnElement,
    Select,
    Text,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from queue_service import exceptions
from queue_service.backend import DispatchConfig
from queue_service.models import DEFAULT_MISSION, Milestone, Mission, MissionStatus, Project, Task, TaskStatus, utcnow
from queue_service.postgres import tables as t
from queue_service.postgres.asyncpg_pool import RawPool
from queue_service.postgres.edge_locks import lock_nowait
from queue_service.postgres.errors import wrap_errors
from queue_service.postgres.resources import load_queries
from queue_service.postgres.rows import task_columns, task_from_row
from queue_service.postgres.transitions import CommitEffects, Effects

__all__ = [
    "BIGINTS",
    "EDGE_QUERIES",
    "READY",
    "TEXTS",
    "OnCommit",
    "PostgresRecordsBase",
    "due",
    "project_from_row",
    "select_tasks",
]

logger = logging.getLogger(__name__)

S = TaskStatus
#: Called after every commit that changed something dispatch cares about.
OnCommit = Callable[[CommitEffects], Awaitable[None]]
#: the statements of ``sql/edges.sql`` (insert edges, reachability for the cycle check)
EDGE_QUERIES = load_queries("edges.sql")
#: bind type of a text[] parameter
TEXTS = ARRAY(Text)
#: bind type of a bigint[] parameter
BIGINTS = ARRAY(BigInteger)
#: not-started with every dependency done (``not_before`` aside)
READY = and_(t.tasks.c.status == S.NOT_STARTED.value, t.tasks.c.pending_deps == 0)


def due(now: datetime) -> ColumnElement[bool]:
    """``not_before`` passed by *now* (or never set)."""
    return or_(t.tasks.c.not_before.is_(None), t.tasks.c.not_before <= now)


def select_tasks() -> Select[Any]:
    """SELECT of :data:`~queue_service.postgres.rows.task_columns`."""
    return select(*task_columns)


def project_from_row(row: Any) -> Project:
    """The domain Project of a ``projects`` row."""
    return Project(
        slug=row.slug,
        name=row.name,
        key_prefix=row.key_prefix,
        workspace=row.workspace,
        created_at=row.created_at,
        updated_at=row.updated_at,
        version=row.version,
        routing=dict(row.routing or {}),
        concurrency_limits=dict(row.concurrency_limits or {}),
    )


class PostgresRecordsBase:
    """The shared state and helpers of :class:`~queue_service.postgres.records.PostgresRecordStore`.

    Args:
        engine: an AsyncEngine on a database migrated to head (``queue_service.postgres.migrate``).
        config: dispatch limits (``max_queue_depth`` is checked when tasks are created).
        on_commit: awaited after each commit with the transaction's effects (see the package doc).
        clock: the time source (tests may pin it).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        config: DispatchConfig | None = None,
        on_commit: OnCommit | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.config = config or DispatchConfig()
        self.on_commit = on_commit
        self.clock = clock
        #: the dispatcher's asyncpg pool (the backend sets it): ``create_task``'s fast path runs on it
        #: (``task_create_fast``); None = the general path only
        self.raw: RawPool | None = None

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[tuple[AsyncConnection, Effects]]:
        """A write transaction; its effects go to ``on_commit`` once it committed."""
        effects = Effects()
        async with wrap_errors(), self.engine.begin() as conn:
            yield conn, effects
        await self._after_commit(effects)

    @asynccontextmanager
    async def _read(self, consistent: bool = False) -> AsyncIterator[AsyncConnection]:
        """A read-only connection; *consistent* gives one snapshot for several statements."""
        async with wrap_errors(), self.engine.connect() as conn:
            if consistent:
                await conn.execution_options(isolation_level="REPEATABLE READ")
                async with conn.begin():
                    yield conn
            else:
                yield conn
                await conn.rollback()

    async def _after_commit(self, effects: Effects) -> None:
        if self.on_commit is None or not effects:
            return
        try:
            await self.on_commit(effects)
        except Exception:
            logger.exception("on_commit hook failed; the orchestrator's reconcile will repair dispatch state")

    @staticmethod
    async def _require_project(conn: AsyncConnection, slug: str, *, lock: bool = False) -> Any:
        stmt = select(t.projects).where(t.projects.c.slug == slug)
        if lock:
            stmt = stmt.with_for_update(key_share=True)
        row = (await conn.execute(stmt)).first()
        if row is None:
            raise exceptions.ProjectNotFound(f"project {slug!r} not found", project=slug)
        return row

    @staticmethod
    async def _project_exists(conn: AsyncConnection, slug: str) -> None:
        found = await conn.scalar(select(t.projects.c.slug).where(t.projects.c.slug == slug))
        if found is None:
            raise exceptions.ProjectNotFound(f"project {slug!r} not found", project=slug)

    async def _task_row(self, conn: AsyncConnection, project: str, key: str, *, lock: str | None = None) -> Any:
        """The task row (domain columns + ``id``/``lease_token``/``pending_deps``), or a NotFound."""
        stmt = select(*task_columns, t.tasks.c.lease_token).where(t.tasks.c.project == project, t.tasks.c.key == key)
        if lock == "update-nowait":  # an edge writer's lock (see edge_locks)
            row = (await lock_nowait(conn, stmt.with_for_update(of=t.tasks, nowait=True))).first()
        else:
            if lock == "update":
                stmt = stmt.with_for_update(of=t.tasks)
            elif lock == "share":
                stmt = stmt.with_for_update(read=True, of=t.tasks)
            row = (await conn.execute(stmt)).first()
        if row is None:
            await self._project_exists(conn, project)
            raise exceptions.TaskNotFound(f"task {key} not found in project {project}", project=project, task=key)
        return row

    async def _require_missions(self, conn: AsyncConnection, project: str, missions: Iterable[str]) -> None:
        wanted = list(dict.fromkeys(missions))
        if not wanted:
            return
        rows = await conn.execute(
            select(t.missions.c.id).where(
                t.missions.c.project == project, t.missions.c.id == func.any(bindparam("m", wanted, TEXTS))
            )
        )
        found = {r.id for r in rows}
        for mission in wanted:
            if mission not in found:
                raise exceptions.MissionNotFound(
                    f"mission {mission!r} not found in project {project}", project=project, mission=mission
                )

    async def _get_tasks(self, conn: AsyncConnection, project: str, keys: Sequence[str]) -> list[Task]:
        rows = await conn.execute(
            select_tasks().where(
                t.tasks.c.project == project, t.tasks.c.key == func.any(bindparam("keys", list(keys), TEXTS))
            )
        )
        by_key = {r.key: task_from_row(r) for r in rows}
        if not by_key:
            await self._project_exists(conn, project)
        return [by_key[k] for k in keys if k in by_key]

    @staticmethod
    async def _insert_edges(conn: AsyncConnection, edges: Sequence[tuple[int, int, int]]) -> None:
        if not edges:
            return
        await conn.exec_driver_sql(
            EDGE_QUERIES["insert_edges"], ([e[0] for e in edges], [e[1] for e in edges], [e[2] for e in edges])
        )

    @staticmethod
    def _mission_from(row: Any, milestones: Sequence[Milestone]) -> Mission:
        return Mission(
            project=row.project,
            id=row.id,
            name=row.name,
            status=MissionStatus(row.status),
            milestones=tuple(milestones),
            tasks_file=row.tasks_file,
            created_at=row.created_at,
            updated_at=row.updated_at,
            version=row.version,
            quality_gates=tuple(row.quality_gates or ()),
        )

    @staticmethod
    async def _insert_milestones(
        conn: AsyncConnection, project: str, mission: str, milestones: Sequence[Milestone]
    ) -> None:
        if milestones:
            await conn.execute(
                insert(t.milestones),
                [
                    {
                        "project": project,
                        "mission": mission,
                        "id": m.id,
                        "name": m.name,
                        "status": m.status.value,
                        "position": i,
                    }
                    for i, m in enumerate(milestones)
                ],
            )

    async def list_missions_on(self, conn: AsyncConnection, project: str) -> list[Mission]:
        """Missions of *project* read on an open connection (export shares its snapshot)."""
        rows = (
            await conn.execute(
                select(t.missions)
                .where(t.missions.c.project == project)
                .order_by(t.missions.c.id != DEFAULT_MISSION, t.missions.c.created_at, t.missions.c.position)
            )
        ).all()
        stones: dict[str, list[Milestone]] = {}
        for m in await conn.execute(
            select(t.milestones).where(t.milestones.c.project == project).order_by(t.milestones.c.position)
        ):
            stones.setdefault(m.mission, []).append(Milestone(id=m.id, name=m.name, status=MissionStatus(m.status)))
        return [self._mission_from(r, stones.get(r.id, [])) for r in rows]
