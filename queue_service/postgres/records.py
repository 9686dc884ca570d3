"""PostgresRecordStore: the RecordStore contract on Postgres (SQLAlchemy 2 Core, async, asyncpg).

Design notes (the *why*):

* Core statements, not ORM sessions: every operation is a handful of set-based statements, and
  SQLAlchemy's compiled-statement cache plus asyncpg's per-connection prepared-statement cache mean
  the hot statements are parsed once per connection.
* One transaction per operation; a raised error rolls it back, so bad input never leaves a trace.
* Key allocation: the batch locks its project row (``FOR NO KEY UPDATE`` — it does not block the
  ``KEY SHARE`` locks that foreign-key checks of concurrent event/task inserts take), reads
  ``next_seq``, hands out numbers skipping keys that exist (imported ``WEB-5``), and writes
  ``next_seq`` back in the same transaction. Concurrent batches serialise on the row; a rollback
  gives the numbers back. No gaps, no duplicates.
* ``pending_deps`` is maintained here and in :mod:`.transitions` so the ready query is an index scan.
* After commit, :attr:`on_commit` receives the :class:`~queue_service.postgres.transitions.Effects`
  of the transaction (tasks that became ready, events written) so the dispatcher can queue tasks
  in Valkey and publish events. Its failures are logged, not raised: the records are committed, and
  the orchestrator's reconcile repairs the derived Valkey state.
* Export/import: notes and events keep their ids when those ids are free in this database (ids are
  global here, per project in the flatfile backend); otherwise they are renumbered in their
  original order, and ``note_added`` events then still carry the old ``note_id``.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    ColumnElement,
    Integer,
    Select,
    Text,
    and_,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    not_,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from queue_service import domain, exceptions
from queue_service.backend import DispatchConfig, RecordStore
from queue_service.models import (
    DEFAULT_MISSION,
    ApiToken,
    Event,
    Milestone,
    Mission,
    MissionCreate,
    MissionStatus,
    Note,
    Priority,
    Project,
    ProjectCreate,
    ProjectSnapshot,
    ProjectUpdate,
    QueueStats,
    ReadyList,
    SyncFileState,
    Task,
    TaskCreate,
    TaskFilter,
    TaskPage,
    TaskStatus,
    TaskUpdate,
    TokenRole,
    utcnow,
)
from queue_service.postgres import tables as t
from queue_service.postgres.edge_locks import lock_nowait, run_without_hold_and_wait, wait_until_free
from queue_service.postgres.errors import wrap_errors
from queue_service.postgres.routing_columns import ROUTING_FIELDS, routing_column, routing_fields
from queue_service.postgres.transitions import (
    EVENT_CANCELLED,
    EVENT_CREATED,
    EVENT_UPDATED,
    CommitEffects,
    Effects,
    EventInput,
    ReadyTask,
    StatusChange,
    insert_events,
    on_status_changes,
    recompute_pending_deps,
)
from queue_service.state import decode_cursor, encode_cursor

__all__ = ["OnCommit", "PostgresRecordStore", "task_columns", "task_from_row"]

logger = logging.getLogger(__name__)

S = TaskStatus
#: Called after every commit that changed something dispatch cares about.
OnCommit = Callable[[CommitEffects], Awaitable[None]]

_BIGINTS = ARRAY(BigInteger)
_TEXTS = ARRAY(Text)

# The task's dependency keys, in declared order, as one correlated subquery (no N+1).
_DEPENDS_ON = literal_column(
    "ARRAY(SELECT p.key FROM task_dependencies d JOIN tasks p ON p.id = d.depends_on_id "
    "WHERE d.task_id = tasks.id ORDER BY d.position, p.seq)",
    _TEXTS,
).label("depends_on")

#: Batches at least this large refresh planner statistics after commit (see ``_analyze``).
ANALYZE_AFTER_BATCH = 1000

#: Every task column the domain model needs (not the lease token), plus ``depends_on``.
task_columns: tuple[Any, ...] = (*(c for c in t.tasks.c if c.name != "lease_token"), _DEPENDS_ON)

_READY = and_(t.tasks.c.status == S.NOT_STARTED.value, t.tasks.c.pending_deps == 0)


def _due(now: datetime) -> ColumnElement[bool]:
    return or_(t.tasks.c.not_before.is_(None), t.tasks.c.not_before <= now)


#: Runs of a PATCH chosen as a deadlock victim (see :meth:`PostgresRecordStore.update_task`).
_DEADLOCK_ATTEMPTS = 3


def _is_deadlock(exc: BaseException) -> bool:
    """Whether a translated error came from Postgres's deadlock detector (SQLSTATE 40P01)."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return False
        for candidate in (seen, getattr(seen, "orig", None)):
            if getattr(candidate, "sqlstate", None) == "40P01" or getattr(candidate, "pgcode", None) == "40P01":
                return True
        seen = seen.__cause__
    return False


def task_from_row(row: Any) -> Task:
    """Build the domain Task from a row selected with :data:`task_columns`."""
    return Task(
        project=row.project,
        key=row.key,
        seq=row.seq,
        title=row.title,
        description=row.description,
        status=TaskStatus(row.status),
        role=row.role,
        priority=Priority(row.priority),
        assignee=row.assignee,
        mission=row.mission,
        milestone=row.milestone,
        depends_on=tuple(row.depends_on or ()),
        labels=tuple(row.labels or ()),
        extra=dict(row.extra or {}),
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        not_before=row.not_before,
        idempotency_key=row.idempotency_key,
        result=row.result,
        last_error=row.last_error,
        blocked_reason=row.blocked_reason,
        lease_holder=row.lease_holder,
        lease_expires_at=row.lease_expires_at,
        version=row.version,
        created_at=row.created_at,
        updated_at=row.updated_at,
        started_at=row.started_at,
        completed_at=row.completed_at,
        **routing_fields(row.routing),
    )


def _project_from_row(row: Any) -> Project:
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


def _token_from_row(row: Any) -> ApiToken:
    return ApiToken(
        id=row.id,
        project=row.project,
        role=TokenRole(row.role),
        token_hash=row.token_hash,
        name=row.name,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


def _select_tasks() -> Select[Any]:
    return select(*task_columns)


class PostgresRecordStore(RecordStore):
    """The record side of the Postgres+Valkey backend.

    Args:
        engine: an AsyncEngine on a database migrated to head (``queue_service.postgres.migrate``).
        config: dispatch limits (``max_queue_depth`` is checked when tasks are created).
        on_commit: awaited after each commit with the transaction's effects (see module doc).
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

    # -- plumbing ---------------------------------------------------------------------------
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
                t.missions.c.project == project, t.missions.c.id == func.any(bindparam("m", wanted, _TEXTS))
            )
        )
        found = {r.id for r in rows}
        for mission in wanted:
            if mission not in found:
                raise exceptions.MissionNotFound(
                    f"mission {mission!r} not found in project {project}", project=project, mission=mission
                )

    # -- projects ---------------------------------------------------------------------------
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
            return _project_from_row(row)

    async def get_project(self, slug: str) -> Project:
        """Return the project. Raises ProjectNotFound."""
        async with self._read() as conn:
            return _project_from_row(await self._require_project(conn, slug))

    async def list_projects(self) -> list[Project]:
        """All projects, ordered by slug."""
        async with self._read() as conn:
            rows = await conn.execute(select(t.projects).order_by(t.projects.c.slug))
            return [_project_from_row(r) for r in rows]

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
                return _project_from_row(row)
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
            return _project_from_row(new)

    # -- missions ---------------------------------------------------------------------------
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

    # -- tasks: create ----------------------------------------------------------------------
    async def create_tasks(self, project: str, items: Sequence[TaskCreate]) -> list[Task]:
        """Create tasks in one transaction: all are created or none.

        Keys: a given ``key`` is kept as is (AlreadyExists if taken); others get the project's next
        ``PREFIX-N``, numbers allocated without gaps or duplicates even under concurrent calls (a
        number whose key is already taken by an imported task is skipped). ``depends_on`` may name
        existing keys or ``#i`` (the *i*-th item of this batch). Raises UnknownDependency for a key
        not in the project, DependencyCycle for a cycle, MissionNotFound for an unknown mission,
        QueueFull when a role's ready depth is over ``max_queue_depth``. A task with an
        ``idempotency_key`` already used in the project returns the existing task instead.
        Ready tasks are queued for dispatch after commit; the ``created`` events are written.
        """
        if not items:
            return []
        now = self.clock()

        async def run() -> list[Task]:
            async with self._tx() as (conn, effects):
                return await self._create_tasks(conn, effects, project, items, now)

        async def wait() -> None:
            named = {d for item in items for d in item.depends_on if not d.startswith("#")}
            await wait_until_free(self.engine, project, sorted(named), [])

        created = await run_without_hold_and_wait(run, wait)
        if len(items) >= ANALYZE_AFTER_BATCH:
            await self._analyze()
        return created

    async def _analyze(self) -> None:
        """Refresh planner statistics after a big batch.

        Until autovacuum gets to them, freshly inserted rows have no statistics and the planner picks
        plans up to 20x slower (measured: get_tasks of 100 keys on a new 10,000-task project, 140 ms
        before, 6 ms after). Run after commit, outside the batch's transaction, so concurrent batches
        never queue behind ANALYZE's lock; failing here is harmless (autovacuum will catch up).
        """
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("ANALYZE tasks, task_dependencies"))
                await conn.commit()
        except Exception as exc:  # statistics are an optimisation, never an error
            logger.warning("ANALYZE after a big batch failed: %s", exc)

    async def _create_tasks(
        self, conn: AsyncConnection, effects: Effects, project: str, items: Sequence[TaskCreate], now: datetime
    ) -> list[Task]:
        # Serialises key allocation per project; see the module docstring for the lock mode.
        proj = await self._require_project(conn, project, lock=True)
        prefix: str = proj.key_prefix
        next_seq: int = proj.next_seq
        n = len(items)

        # Idempotency: existing tasks are returned as they are; repeats inside the batch map to the
        # first occurrence.
        existing_by_idem: dict[str, str] = {}
        idem_keys = [i.idempotency_key for i in items if i.idempotency_key]
        if idem_keys:
            rows = await conn.execute(
                select(t.tasks.c.idempotency_key, t.tasks.c.key).where(
                    t.tasks.c.project == project,
                    t.tasks.c.idempotency_key == func.any(bindparam("ik", idem_keys, _TEXTS)),
                )
            )
            existing_by_idem = {r.idempotency_key: r.key for r in rows}
        keys: list[str] = [""] * n
        fresh: list[int] = []
        batch_idem: dict[str, int] = {}
        given: dict[str, int] = {}
        for i, item in enumerate(items):
            if item.idempotency_key:
                if item.idempotency_key in existing_by_idem:
                    keys[i] = existing_by_idem[item.idempotency_key]
                    continue
                if item.idempotency_key in batch_idem:
                    continue
                batch_idem[item.idempotency_key] = i
            fresh.append(i)
            if item.key is not None:
                if item.key in given:
                    raise exceptions.AlreadyExists(
                        f"task key {item.key} already exists in project {project}", task=item.key
                    )
                given[item.key] = i
                keys[i] = item.key
                number = domain.key_number(prefix, item.key)
                if number is not None and number >= next_seq:
                    next_seq = number + 1

        await self._require_missions(conn, project, (items[i].mission for i in fresh))
        if given:
            taken = await conn.scalar(
                select(t.tasks.c.key)
                .where(t.tasks.c.project == project, t.tasks.c.key == func.any(bindparam("gk", list(given), _TEXTS)))
                .order_by(t.tasks.c.seq)
                .limit(1)
            )
            if taken is not None:
                raise exceptions.AlreadyExists(f"task key {taken} already exists in project {project}", task=taken)

        # Allocate PREFIX-N for the rest, skipping numbers whose key exists (imported tasks).
        auto = [i for i in fresh if not keys[i]]
        while auto:
            window = [domain.format_key(prefix, next_seq + j) for j in range(len(auto))]
            taken_rows = await conn.execute(
                select(t.tasks.c.key).where(
                    t.tasks.c.project == project, t.tasks.c.key == func.any(bindparam("wk", window, _TEXTS))
                )
            )
            occupied = {r.key for r in taken_rows} | set(given)
            for candidate in window:
                next_seq += 1
                if candidate in occupied:
                    continue
                keys[auto.pop(0)] = candidate
        for i, item in enumerate(items):
            if not keys[i] and item.idempotency_key:
                keys[i] = keys[batch_idem[item.idempotency_key]]

        # Dependencies: resolve #i, check they exist in this project, no self-loops, no cycles.
        batch_keys = {keys[i]: i for i in fresh}
        deps_of: dict[str, list[str]] = {}
        external: set[str] = set()
        for i in fresh:
            deps = domain.resolve_batch_deps(items[i].depends_on, keys, i)
            for dep in deps:
                if dep == keys[i]:
                    raise exceptions.DependencyCycle(f"task {dep} depends on itself", cycle=[dep, dep])
                if dep not in batch_keys:
                    external.add(dep)
            deps_of[keys[i]] = deps
        ext_rows: dict[str, Any] = {}
        if external:
            # FOR SHARE: a dependency's status read here cannot change until this transaction
            # commits, and a completion in flight is waited for (its recount of dependents then sees
            # the new edges). NOWAIT: see edge_locks. See docs/plans/dispatch.md, "Readiness".
            rows = await lock_nowait(
                conn,
                select(t.tasks.c.id, t.tasks.c.key, t.tasks.c.status)
                .where(
                    t.tasks.c.project == project,
                    t.tasks.c.key == func.any(bindparam("dk", sorted(external), _TEXTS)),
                )
                .order_by(t.tasks.c.id)
                .with_for_update(read=True, nowait=True),
            )
            ext_rows = {r.key: r for r in rows}
            for i in fresh:
                for dep in deps_of[keys[i]]:
                    if dep not in batch_keys and dep not in ext_rows:
                        raise exceptions.UnknownDependency(
                            f"task {keys[i]} depends on {dep}, which does not exist in project {project}",
                            task=keys[i],
                            dependency=dep,
                        )
        domain.check_no_cycle(deps_of)

        # pending_deps and readiness of each new task.
        def dep_done(dep: str) -> bool:
            if dep in batch_keys:
                return items[batch_keys[dep]].status is S.DONE
            return bool(ext_rows[dep].status == S.DONE.value)

        pending = {keys[i]: sum(1 for d in deps_of[keys[i]] if not dep_done(d)) for i in fresh}
        added: dict[str, int] = {}
        for i in fresh:
            if items[i].status is S.NOT_STARTED and pending[keys[i]] == 0:
                added[items[i].role] = added.get(items[i].role, 0) + 1
        if added:
            await self._check_depth(conn, project, added)

        # Insert the tasks (insertmanyvalues: ~1 round trip per 1,000 rows), then the edges (one).
        seq0: int = proj.last_task_seq
        rows_in: list[dict[str, Any]] = []
        for j, i in enumerate(fresh):
            item = items[i]
            rows_in.append(
                {
                    "project": project,
                    "key": keys[i],
                    "seq": seq0 + j + 1,
                    "title": item.title,
                    "description": item.description,
                    "status": item.status.value,
                    "role": item.role,
                    "priority": item.priority.value,
                    "assignee": item.assignee,
                    "mission": item.mission,
                    "milestone": item.milestone,
                    "labels": list(item.labels),
                    "extra": dict(item.extra),
                    "attempts": 0,
                    "max_attempts": item.max_attempts,
                    "not_before": item.not_before,
                    "idempotency_key": item.idempotency_key,
                    "result": None,
                    "pending_deps": pending[keys[i]],
                    "version": 1,
                    "created_at": now,
                    "updated_at": now,
                    "started_at": now if item.status is S.IN_PROGRESS else None,
                    "completed_at": now if item.status is S.DONE else None,
                    "routing": routing_column(item.requires, item.prefers, item.concurrency_key, item.group),
                }
            )
        created: dict[str, Task] = {}
        if rows_in:
            result = await conn.execute(
                insert(t.tasks).returning(t.tasks.c.id, t.tasks.c.key, sort_by_parameter_order=True), rows_in
            )
            ids = {r.key: r.id for r in result}
            for ext in ext_rows.values():
                ids.setdefault(ext.key, ext.id)
            edges = [(ids[k], ids[d], pos) for k, ds in deps_of.items() for pos, d in enumerate(ds)]
            await self._insert_edges(conn, edges)
            await conn.execute(
                update(t.projects)
                .where(t.projects.c.slug == project)
                .values(next_seq=next_seq, last_task_seq=seq0 + len(rows_in))
            )
            for row in rows_in:
                # Built from validated input (TaskCreate) and our own values: skip re-validation,
                # which would dominate the cost of a 10,000-task batch.
                fields = {k: v for k, v in row.items() if k not in ("pending_deps", "routing")}
                fields.update(routing_fields(row["routing"]))
                fields.update(
                    status=TaskStatus(row["status"]),
                    priority=Priority(row["priority"]),
                    labels=tuple(row["labels"]),
                    depends_on=tuple(deps_of[str(row["key"])]),
                )
                task = Task.model_construct(**fields)
                created[task.key] = task
                if task.status is S.NOT_STARTED and row["pending_deps"] == 0:
                    effects.add_candidate(
                        ReadyTask(project, task.key, task.role, task.priority.value, task.seq, task.not_before), now
                    )
            effects.events.extend(
                await insert_events(
                    conn,
                    [
                        EventInput(project, task.key, EVENT_CREATED, now, task.status.value, task.version)
                        for task in created.values()
                    ],
                )
            )
        missing = [k for k in dict.fromkeys(keys) if k not in created]
        if missing:
            found = {task.key: task for task in await self._get_tasks(conn, project, missing)}
            created.update(found)
        return [created[k] for k in keys]

    async def _check_depth(self, conn: AsyncConnection, project: str, added: Mapping[str, int]) -> None:
        """QueueFull if adding *added* ready tasks per role would exceed ``max_queue_depth``."""
        rows = await conn.execute(
            select(t.tasks.c.role, func.count())
            .where(
                t.tasks.c.project == project,
                _READY,
                t.tasks.c.role == func.any(bindparam("roles", list(added), _TEXTS)),
            )
            .group_by(t.tasks.c.role)
        )
        depth = {r[0]: r[1] for r in rows}
        limit = self.config.max_queue_depth
        for role, extra in added.items():
            have = depth.get(role, 0)
            if have + extra > limit:
                raise exceptions.QueueFull(
                    f"role {role!r} of project {project} has {have} ready tasks; adding {extra} "
                    f"would exceed max_queue_depth={limit}",
                    project=project,
                    role=role,
                    depth=have,
                    max_queue_depth=limit,
                )

    @staticmethod
    async def _insert_edges(conn: AsyncConnection, edges: Sequence[tuple[int, int, int]]) -> None:
        if not edges:
            return
        await conn.execute(
            text(
                "INSERT INTO task_dependencies (task_id, depends_on_id, position) SELECT * FROM unnest(:a, :b, :c)"
            ).bindparams(
                bindparam("a", [e[0] for e in edges], _BIGINTS),
                bindparam("b", [e[1] for e in edges], _BIGINTS),
                bindparam("c", [e[2] for e in edges], ARRAY(Integer)),
            )
        )

    # -- tasks: read ------------------------------------------------------------------------
    async def get_task(self, project: str, key: str) -> Task:
        """Return the task. Raises TaskNotFound."""
        async with self._read() as conn:
            return task_from_row(await self._task_row(conn, project, key))

    async def _get_tasks(self, conn: AsyncConnection, project: str, keys: Sequence[str]) -> list[Task]:
        rows = await conn.execute(
            _select_tasks().where(
                t.tasks.c.project == project, t.tasks.c.key == func.any(bindparam("keys", list(keys), _TEXTS))
            )
        )
        by_key = {r.key: task_from_row(r) for r in rows}
        if not by_key:
            await self._project_exists(conn, project)
        return [by_key[k] for k in keys if k in by_key]

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
            where.append(tc.status == func.any(bindparam("st", [s.value for s in f.status], _TEXTS)))
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
        if f.ready is not None:
            ready = and_(_READY, _due(now))
            where.append(ready if f.ready else not_(ready))
        async with self._read() as conn:
            rows = (await conn.execute(_select_tasks().where(*where).order_by(tc.seq).limit(limit + 1))).all()
            if not rows:
                await self._project_exists(conn, project)
        items = tuple(task_from_row(r) for r in rows[:limit])
        more = len(rows) > limit
        return TaskPage(items=items, next_cursor=encode_cursor(items[-1].seq) if more and items else None)

    # -- tasks: change ----------------------------------------------------------------------
    async def update_task(
        self, project: str, key: str, patch: TaskUpdate, expected_version: int | None = None, actor: str = "api"
    ) -> Task:
        """Apply the fields set in *patch*; bump version; write an ``updated`` event.

        Raises VersionConflict if *expected_version* is given and differs from the stored one;
        InvalidTransition for a status change ``domain.check_transition`` refuses; UnknownDependency
        and DependencyCycle for bad ``depends_on``. Setting status away from in-progress ends any
        lease (its token stops working). Status changes have the same consequences as through
        dispatch: done promotes dependents, failed/cancelled blocks them, a return to not-started
        unblocks dependents blocked because of this task. A patch that changes nothing returns the
        task unchanged (no version bump, no event).

        Two PATCHes that would close a dependency cycle between them lock each other's rows and one
        is chosen as a deadlock victim; it is run again once and then sees the other's edges (and
        raises DependencyCycle), so neither caller gets a database error.
        """

        async def run() -> Task:
            return await self._update_task_once(project, key, patch, expected_version, actor)

        async def wait() -> None:
            await wait_until_free(self.engine, project, list(patch.depends_on or ()), [key])

        for attempt in range(_DEADLOCK_ATTEMPTS):
            try:
                return await run_without_hold_and_wait(run, wait)
            except exceptions.BackendError as exc:
                if attempt + 1 == _DEADLOCK_ATTEMPTS or not _is_deadlock(exc):
                    raise
        raise AssertionError("unreachable")

    async def _update_task_once(
        self, project: str, key: str, patch: TaskUpdate, expected_version: int | None, actor: str
    ) -> Task:
        now = self.clock()
        async with self._tx() as (conn, effects):
            if patch.depends_on:
                await self._share_lock_deps(conn, project, patch.depends_on)
            row = await self._task_row(conn, project, key, lock="update-nowait")
            old = task_from_row(row)
            if expected_version is not None and expected_version != old.version:
                raise exceptions.VersionConflict(
                    f"task {key} is at version {old.version}, not {expected_version}",
                    task=key,
                    expected=expected_version,
                    actual=old.version,
                )
            fields = patch.changes()
            for name in ("title", "status", "role", "priority", "mission", "description", "max_attempts"):
                if name in fields and fields[name] is None:
                    del fields[name]
            if "labels" in fields:
                fields["labels"] = tuple(fields["labels"] or ())
            if "extra" in fields:
                fields["extra"] = dict(fields["extra"] or {})
            if "requires" in fields:
                fields["requires"] = dict(fields["requires"] or {})
            if "prefers" in fields:
                fields["prefers"] = tuple(fields["prefers"] or ())
            if "depends_on" in fields:
                fields["depends_on"] = tuple(fields["depends_on"] or ())
            changed = {k: v for k, v in fields.items() if getattr(old, k) != v}
            if not changed:
                return old
            if "mission" in changed:
                await self._require_missions(conn, project, [changed["mission"]])
            dep_ids: list[int] = []
            if "depends_on" in changed:
                dep_ids = await self._check_new_deps(conn, project, key, row.id, changed["depends_on"])
            values: dict[str, Any] = {}
            if "status" in changed:
                new_status: TaskStatus = changed["status"]
                domain.check_transition(key, old.status, new_status)
                if new_status is S.BLOCKED and "blocked_reason" not in changed:
                    changed["blocked_reason"] = f"blocked by {actor}"
                if new_status is not S.BLOCKED and "blocked_reason" not in changed:
                    changed["blocked_reason"] = None
                values.update(self._status_side_fields(old, new_status, now))
            if any(name in changed for name in ROUTING_FIELDS):
                merged = {name: changed.get(name, getattr(old, name)) for name in ROUTING_FIELDS}
                values["routing"] = routing_column(**merged)
            for name, value in changed.items():
                if name == "depends_on" or name in ROUTING_FIELDS:
                    continue
                if name in ("status", "priority"):
                    value = value.value
                elif name == "labels":
                    value = list(value)
                values[name] = value
            stored_row = (
                await conn.execute(
                    update(t.tasks)
                    .where(t.tasks.c.id == row.id)
                    .values(**values, version=t.tasks.c.version + 1, updated_at=now)
                    .returning(t.tasks.c.id)
                )
            ).one()
            if "depends_on" in changed:
                await conn.execute(delete(t.task_dependencies).where(t.task_dependencies.c.task_id == row.id))
                await self._insert_edges(conn, [(row.id, d, pos) for pos, d in enumerate(dep_ids)])
                await recompute_pending_deps(conn, [row.id], now)
            stored = task_from_row(await self._task_row(conn, project, key))
            effects.events.extend(
                await insert_events(
                    conn,
                    [
                        EventInput(
                            project,
                            key,
                            EVENT_UPDATED,
                            now,
                            stored.status.value,
                            stored.version,
                            {"actor": actor, "fields": sorted(changed)},
                        )
                    ],
                )
            )
            if "status" in changed:
                effects.merge(
                    await on_status_changes(
                        conn,
                        changes=[StatusChange(stored_row.id, key, old.status, stored.status)],
                        now=now,
                        project=project,
                        actor=actor,
                    )
                )
            await self._maybe_ready(conn, effects, stored, row.id, now)
            return stored

    @staticmethod
    async def _share_lock_deps(conn: AsyncConnection, project: str, deps: Sequence[str]) -> None:
        """Lock the (existing) tasks named in a new ``depends_on`` ``FOR SHARE``, in id order, before
        the task itself: their statuses cannot change until this transaction commits, and the lock
        order matches completions (dependency first, then its dependents). NOWAIT: see edge_locks."""
        await lock_nowait(
            conn,
            select(t.tasks.c.id)
            .where(t.tasks.c.project == project, t.tasks.c.key == func.any(bindparam("sk", list(deps), _TEXTS)))
            .order_by(t.tasks.c.id)
            .with_for_update(read=True, nowait=True),
        )

    @staticmethod
    def _status_side_fields(old: Task, new_status: TaskStatus, now: datetime) -> dict[str, Any]:
        """Lease/timestamp fields that change with the status (same rules as the in-memory state)."""
        values: dict[str, Any] = {}
        if old.status is S.IN_PROGRESS and new_status is not S.IN_PROGRESS:
            values.update(lease_holder=None, lease_expires_at=None, lease_token=None)
        if new_status is S.DONE and old.status is not S.DONE:
            values["completed_at"] = now
        if new_status is S.IN_PROGRESS and old.started_at is None:
            values["started_at"] = now
        return values

    async def _maybe_ready(
        self, conn: AsyncConnection, effects: Effects, task: Task, task_id: int, now: datetime
    ) -> None:
        """Report *task* to dispatch if it is not-started with every dependency done."""
        if task.status is not S.NOT_STARTED:
            return
        pending = await conn.scalar(select(t.tasks.c.pending_deps).where(t.tasks.c.id == task_id))
        if pending == 0:
            effects.add_candidate(
                ReadyTask(task.project, task.key, task.role, task.priority.value, task.seq, task.not_before), now
            )

    async def _check_new_deps(
        self, conn: AsyncConnection, project: str, key: str, task_id: int, deps: Sequence[str]
    ) -> list[int]:
        """Ids of *deps* (in order); UnknownDependency / DependencyCycle if they are not acceptable."""
        for dep in deps:
            if dep == key:
                raise exceptions.DependencyCycle(f"task {key} cannot depend on itself", cycle=[key, key])
        if not deps:
            return []
        rows = await conn.execute(
            select(t.tasks.c.id, t.tasks.c.key).where(
                t.tasks.c.project == project, t.tasks.c.key == func.any(bindparam("dk", list(deps), _TEXTS))
            )
        )
        ids = {r.key: r.id for r in rows}
        for dep in deps:
            if dep not in ids:
                raise exceptions.UnknownDependency(
                    f"task {key} depends on {dep}, which does not exist in project {project}",
                    task=key,
                    dependency=dep,
                )
        # A cycle appears iff the task is reachable from one of its new deps along existing edges.
        # UNION (not UNION ALL over paths): each task is visited once, so a dense DAG costs O(edges);
        # enumerating paths was exponential (the history checker's soak hung a PATCH for 20 minutes).
        params: tuple[Any, Any] = (bindparam("deps", [ids[d] for d in deps], _BIGINTS), bindparam("target", task_id))
        reachable = await conn.scalar(
            text(
                """
                WITH RECURSIVE reach(id) AS (
                    SELECT unnest(CAST(:deps AS bigint[]))
                    UNION
                    SELECT d.depends_on_id FROM reach JOIN task_dependencies d ON d.task_id = reach.id
                    WHERE reach.id <> :target
                )
                SELECT EXISTS (SELECT 1 FROM reach WHERE id = :target)
                """
            ).bindparams(*params)
        )
        if reachable:
            cycle = [key, *await self._cycle_path(conn, params)]
            raise exceptions.DependencyCycle(f"dependency cycle: {' -> '.join(cycle)}", cycle=cycle)
        return [ids[d] for d in deps]

    @staticmethod
    async def _cycle_path(conn: AsyncConnection, params: tuple[Any, Any]) -> list[str]:
        """Keys from one of the new deps to the target along existing edges (only after a cycle was
        found): one parent per reached task, each task visited once."""
        rows = await conn.execute(
            text(
                """
                WITH RECURSIVE reach(id, parent) AS (
                    SELECT x, CAST(NULL AS bigint) FROM unnest(CAST(:deps AS bigint[])) AS x
                    UNION
                    SELECT d.depends_on_id, reach.id FROM reach JOIN task_dependencies d ON d.task_id = reach.id
                    WHERE reach.id <> :target
                )
                SELECT reach.id, reach.parent, t.key FROM reach JOIN tasks t ON t.id = reach.id
                """
            ).bindparams(*params)
        )
        parent: dict[int, int | None] = {}
        key_of: dict[int, str] = {}
        for r in rows:
            key_of[r.id] = r.key
            if r.parent is None:  # one of the new deps: the path starts there
                parent[r.id] = None
            else:
                parent.setdefault(r.id, r.parent)
        target = params[1].value
        path: list[str] = []
        node: int | None = target
        seen: set[int] = set()
        while node is not None and node not in seen:
            seen.add(node)
            path.append(key_of[node])
            node = parent.get(node)
        return path[::-1]

    async def cancel_task(self, project: str, key: str, reason: str | None = None, actor: str = "api") -> Task:
        """Move the task to cancelled (from any status but done/cancelled); ends any lease; blocks
        dependents. Cancelling a cancelled task returns it unchanged. Raises InvalidTransition
        for a done task."""
        now = self.clock()
        async with self._tx() as (conn, effects):
            row = await self._task_row(conn, project, key, lock="update")
            old = task_from_row(row)
            if old.status is S.CANCELLED:
                return old
            if old.status is S.DONE:
                raise exceptions.InvalidTransition(
                    f"task {key} is done and cannot be cancelled",
                    task=key,
                    current=old.status.value,
                    target=S.CANCELLED.value,
                )
            values = self._status_side_fields(old, S.CANCELLED, now)
            if reason:
                values["last_error"] = reason
            if domain.is_dependency_block(old.blocked_reason):
                values["blocked_reason"] = None
            await conn.execute(
                update(t.tasks)
                .where(t.tasks.c.id == row.id)
                .values(**values, status=S.CANCELLED.value, version=t.tasks.c.version + 1, updated_at=now)
            )
            stored = task_from_row(await self._task_row(conn, project, key))
            effects.events.extend(
                await insert_events(
                    conn,
                    [
                        EventInput(
                            project,
                            key,
                            EVENT_CANCELLED,
                            now,
                            stored.status.value,
                            stored.version,
                            {"actor": actor, "reason": reason},
                        )
                    ],
                )
            )
            effects.merge(
                await on_status_changes(
                    conn,
                    changes=[StatusChange(row.id, key, old.status, S.CANCELLED)],
                    now=now,
                    project=project,
                    actor=actor,
                )
            )
            return stored

    # -- notes ------------------------------------------------------------------------------
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

    # -- graph queries ----------------------------------------------------------------------
    async def blockers(self, project: str, key: str) -> list[Task]:
        """The task's dependencies that are not done (what blocks it), in dependency order."""
        async with self._read() as conn:
            row = await self._task_row(conn, project, key)
            d = t.task_dependencies
            rows = await conn.execute(
                _select_tasks()
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
                _select_tasks()
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
                    _select_tasks()
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
                func.count().filter(and_(_READY, _due(now))).label("ready"),
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
        """See :meth:`RecordStore.ready_tasks` (the order of ``hotpath.READY_KEYS_SQL``)."""
        now = self.clock()
        tc = t.tasks.c
        d = t.task_dependencies
        c = t.tasks.alias("dependent")
        unblocks = (
            select(func.count())
            .select_from(d.join(c, c.c.id == d.c.task_id))
            .where(d.c.depends_on_id == tc.id, c.c.status != S.DONE.value)
            .scalar_subquery()
            .label("unblocks")
        )
        where = [tc.project == project, _READY, _due(now)]
        if roles:
            where.append(tc.role.in_(list(roles)))
        async with self._read(consistent=True) as conn:
            rows = (
                await conn.execute(
                    select(*task_columns, unblocks)
                    .where(*where)
                    .order_by(tc.priority, unblocks.desc(), tc.seq)
                    .limit(limit)
                )
            ).all()
            total = int(await conn.scalar(select(func.count()).select_from(t.tasks).where(*where)) or 0)
            if not rows:
                await self._project_exists(conn, project)
        tasks = [task_from_row(r) for r in rows]
        return ReadyList(tasks=tasks, total=total, unblocks={r.key: int(r.unblocks) for r in rows})

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
        return [
            Event(
                id=r.id,
                project=r.project,
                task=r.task_key,
                kind=r.kind,
                status=TaskStatus(r.status) if r.status else None,
                version=r.version,
                at=r.at,
                data=dict(r.data or {}),
            )
            for r in rows
        ]

    # -- events -----------------------------------------------------------------------------
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
        return [
            Event(
                id=r.id,
                project=r.project,
                task=r.task_key,
                kind=r.kind,
                status=TaskStatus(r.status) if r.status else None,
                version=r.version,
                at=r.at,
                data=dict(r.data or {}),
            )
            for r in rows
        ]

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
        return [
            Event(
                id=r.id,
                project=r.project,
                task=r.task_key,
                kind=r.kind,
                status=TaskStatus(r.status) if r.status else None,
                version=r.version,
                at=r.at,
                data=dict(r.data or {}),
            )
            for r in reversed(rows)
        ]

    # -- sync bases -------------------------------------------------------------------------
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

    # -- API tokens -------------------------------------------------------------------------
    async def add_api_token(self, token: ApiToken) -> None:
        """Store a token record (hash only). Raises AlreadyExists for a duplicate id."""
        async with self._tx() as (conn, _effects):
            row = (
                await conn.execute(
                    pg_insert(t.api_tokens)
                    .values(
                        id=token.id,
                        project=token.project,
                        role=token.role.value,
                        token_hash=token.token_hash,
                        name=token.name,
                        created_at=token.created_at,
                    )
                    .on_conflict_do_nothing()
                    .returning(t.api_tokens.c.id)
                )
            ).first()
            if row is None:
                raise exceptions.AlreadyExists(f"token {token.id!r} already exists")

    async def find_api_token(self, token_hash: str) -> ApiToken | None:
        """The token whose hash matches, or None."""
        async with self._read() as conn:
            row = (await conn.execute(select(t.api_tokens).where(t.api_tokens.c.token_hash == token_hash))).first()
            return _token_from_row(row) if row is not None else None

    async def count_api_tokens(self) -> int:
        """How many token records exist, revoked ones included (0 means auth is off)."""
        async with self._read() as conn:
            return int(await conn.scalar(select(func.count()).select_from(t.api_tokens)) or 0)

    async def list_api_tokens(self) -> list[ApiToken]:
        """Every token record, oldest first (revoked ones included)."""
        async with self._read() as conn:
            rows = await conn.execute(select(t.api_tokens).order_by(t.api_tokens.c.created_at, t.api_tokens.c.id))
            return [_token_from_row(row) for row in rows]

    async def revoke_api_token(self, token_id: str) -> ApiToken:
        """Mark a token revoked (idempotent). Raises NotFound for an unknown id."""
        async with self._tx() as (conn, _effects):
            await conn.execute(
                update(t.api_tokens)
                .where(t.api_tokens.c.id == token_id, t.api_tokens.c.revoked_at.is_(None))
                .values(revoked_at=func.now())
            )
            row = (await conn.execute(select(t.api_tokens).where(t.api_tokens.c.id == token_id))).first()
            if row is None:
                raise exceptions.NotFound(f"no token with id {token_id!r}", token=token_id)
            return _token_from_row(row)

    async def purge_api_tokens(self) -> int:
        """Delete every token record (auth turns off); returns how many there were."""
        async with self._tx() as (conn, _effects):
            result = await conn.execute(delete(t.api_tokens))
            return int(result.rowcount or 0)

    # -- snapshots --------------------------------------------------------------------------
    async def export_project(self, project: str) -> ProjectSnapshot:
        """Everything the project holds, with keys, versions, notes and events as stored."""
        async with self._read(consistent=True) as conn:
            proj = await self._require_project(conn, project)
            missions = await self.list_missions_on(conn, project)
            tasks = [
                task_from_row(r)
                for r in await conn.execute(_select_tasks().where(t.tasks.c.project == project).order_by(t.tasks.c.seq))
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
                Event(
                    id=r.id,
                    project=r.project,
                    task=r.task_key,
                    kind=r.kind,
                    status=TaskStatus(r.status) if r.status else None,
                    version=r.version,
                    at=r.at,
                    data=dict(r.data or {}),
                )
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
                project=_project_from_row(proj),
                missions=tuple(missions),
                tasks=tuple(tasks),
                notes=tuple(notes),
                events=tuple(events),
                next_seq=proj.next_seq,
                sync=tuple(syncs),
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
            return _project_from_row(row)

    @staticmethod
    def _import_row(project: str, task: Task) -> dict[str, Any]:
        data = task.model_dump(exclude={"depends_on", "project", *ROUTING_FIELDS})
        data.update(
            routing=routing_column(task.requires, task.prefers, task.concurrency_key, task.group),
            project=project,
            status=task.status.value,
            priority=task.priority.value,
            labels=list(task.labels),
            extra=dict(task.extra),
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
            .where(table.c.id == func.any(bindparam("ids", [r["id"] for r in rows], _BIGINTS)))
        )
        if not clash:
            try:
                async with conn.begin_nested():
                    await conn.execute(insert(table), rows)
                return
            except IntegrityError:
                pass  # an id was taken by a concurrent writer after all: renumber below
        await conn.execute(insert(table), [{k: v for k, v in r.items() if k != "id"} for r in rows])
