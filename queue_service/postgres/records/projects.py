"""Projects and their missions (with milestones) on Postgres."""

from __future__ import annotations

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from queue_service import exceptions
from queue_service.models import (
    DEFAULT_MISSION,
    Milestone,
    Mission,
    MissionCreate,
    MissionStatus,
    Project,
    ProjectCreate,
    ProjectUpdate,
)
from queue_service.postgres import tables as t
from queue_service.postgres.records.base import PostgresRecordsBase, project_from_row
from queue_service.postgres.transitions import EventInput, insert_events

__all__ = ["ProjectRecords"]


class ProjectRecords(PostgresRecordsBase):
    """Projects and their missions with milestones (one part of the record store)."""

    async def create_project(self, data: ProjectCreate) -> Project:
        """Create a project and its default mission (id ``default``).

        Raises AlreadyExists if the slug is taken.
        """
        now = self.clock()
        async with self._tx() as (conn, effects):
            row = (
                await conn.execute(
                    pg_insert(t.projects)
                    .values(
                        slug=data.slug,
                        name=data.name or data.slug,
                        key_prefix=data.resolved_prefix(),
                        workspace=data.workspace,
                        next_seq=1,
                        last_task_seq=0,
                        created_at=now,
                        updated_at=now,
                        version=1,
                    )
                    .on_conflict_do_nothing()
                    .returning(t.projects)
                )
            ).first()
            if row is None:
                raise exceptions.AlreadyExists(f"project {data.slug!r} already exists", project=data.slug)
            await conn.execute(
                insert(t.missions).values(
                    project=data.slug,
                    id=DEFAULT_MISSION,
                    name=row.name,
                    status=MissionStatus.ACTIVE.value,
                    tasks_file="TASKS.md",
                    position=0,
                    created_at=now,
                    updated_at=now,
                    version=1,
                )
            )
            effects.events.extend(await insert_events(conn, [EventInput(data.slug, None, "project_created", now)]))
            return project_from_row(row)

    async def get_project(self, slug: str) -> Project:
        """Return the project. Raises ProjectNotFound."""
        async with self._read() as conn:
            return project_from_row(await self._require_project(conn, slug))

    async def list_projects(self) -> list[Project]:
        """All projects, ordered by slug."""
        async with self._read() as conn:
            rows = await conn.execute(select(t.projects).order_by(t.projects.c.slug))
            return [project_from_row(r) for r in rows]

    async def update_project(self, slug: str, patch: ProjectUpdate) -> Project:
        """Apply the fields set in *patch*; bumps the project's version."""
        now = self.clock()
        async with self._tx() as (conn, effects):
            row = await self._require_project(conn, slug, lock=True)
            fields = {k: getattr(patch, k) for k in patch.model_fields_set}
            if fields.get("name") is None:
                fields.pop("name", None)
            for name in ("routing", "concurrency_limits"):
                if name in fields and fields[name] is None:
                    fields[name] = {}
            changed = {k: v for k, v in fields.items() if getattr(row, k) != v}
            if not changed:
                return project_from_row(row)
            new = (
                await conn.execute(
                    update(t.projects)
                    .where(t.projects.c.slug == slug)
                    .values(**changed, updated_at=now, version=t.projects.c.version + 1)
                    .returning(t.projects)
                )
            ).one()
            effects.events.extend(
                await insert_events(
                    conn, [EventInput(slug, None, "project_updated", now, data={"fields": sorted(changed)})]
                )
            )
            return project_from_row(new)

    async def _mission(self, conn: AsyncConnection, project: str, mission: str) -> Mission:
        row = (
            await conn.execute(select(t.missions).where(t.missions.c.project == project, t.missions.c.id == mission))
        ).first()
        if row is None:
            await self._project_exists(conn, project)
            raise exceptions.MissionNotFound(
                f"mission {mission!r} not found in project {project}", project=project, mission=mission
            )
        stones = await conn.execute(
            select(t.milestones)
            .where(t.milestones.c.project == project, t.milestones.c.mission == mission)
            .order_by(t.milestones.c.position)
        )
        return self._mission_from(
            row, [Milestone(id=m.id, name=m.name, status=MissionStatus(m.status)) for m in stones]
        )

    async def create_mission(self, project: str, data: MissionCreate) -> Mission:
        """Create a mission. Raises AlreadyExists if the id is taken in the project."""
        now = self.clock()
        async with self._tx() as (conn, effects):
            await self._require_project(conn, project)
            position = select(func.coalesce(func.max(t.missions.c.position), 0) + 1).where(
                t.missions.c.project == project
            )
            row = (
                await conn.execute(
                    pg_insert(t.missions)
                    .values(
                        project=project,
                        id=data.id,
                        name=data.name or data.id,
                        status=data.status.value,
                        tasks_file=data.tasks_file or f"{data.id}/TASKS.md",
                        quality_gates=list(data.quality_gates or ()),
                        position=position.scalar_subquery(),
                        created_at=now,
                        updated_at=now,
                        version=1,
                    )
                    .on_conflict_do_nothing()
                    .returning(t.missions)
                )
            ).first()
            if row is None:
                raise exceptions.AlreadyExists(
                    f"mission {data.id!r} already exists in project {project}", mission=data.id
                )
            await self._insert_milestones(conn, project, data.id, data.milestones)
            effects.events.extend(
                await insert_events(
                    conn, [EventInput(project, None, "mission_created", now, data={"mission": data.id})]
                )
            )
            return self._mission_from(row, data.milestones)

    async def get_mission(self, project: str, mission: str) -> Mission:
        """Return the mission. Raises MissionNotFound."""
        async with self._read() as conn:
            return await self._mission(conn, project, mission)

    async def list_missions(self, project: str) -> list[Mission]:
        """The project's missions, ``default`` first, then by creation order."""
        async with self._read(consistent=True) as conn:
            await self._require_project(conn, project)
            return await self.list_missions_on(conn, project)

    async def update_mission(self, project: str, mission: str, data: MissionCreate) -> Mission:
        """Replace name/status/milestones/tasks_file of a mission (id unchanged); bumps version."""
        now = self.clock()
        async with self._tx() as (conn, effects):
            await conn.execute(
                select(t.missions.c.id)
                .where(t.missions.c.project == project, t.missions.c.id == mission)
                .with_for_update()
            )
            old = await self._mission(conn, project, mission)
            name = data.name or old.name
            tasks_file = data.tasks_file or old.tasks_file
            milestones = tuple(data.milestones)
            gates = old.quality_gates if data.quality_gates is None else tuple(data.quality_gates)
            if (name, data.status, milestones, tasks_file, gates) == (
                old.name,
                old.status,
                old.milestones,
                old.tasks_file,
                old.quality_gates,
            ):
                return old
            row = (
                await conn.execute(
                    update(t.missions)
                    .where(t.missions.c.project == project, t.missions.c.id == mission)
                    .values(
                        name=name,
                        status=data.status.value,
                        tasks_file=tasks_file,
                        quality_gates=list(gates),
                        updated_at=now,
                        version=t.missions.c.version + 1,
                    )
                    .returning(t.missions)
                )
            ).one()
            await conn.execute(
                delete(t.milestones).where(t.milestones.c.project == project, t.milestones.c.mission == mission)
            )
            await self._insert_milestones(conn, project, mission, milestones)
            effects.events.extend(
                await insert_events(
                    conn, [EventInput(project, None, "mission_updated", now, data={"mission": mission})]
                )
            )
            return self._mission_from(row, milestones)
