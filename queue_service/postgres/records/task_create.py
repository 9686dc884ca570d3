"""Creating tasks on Postgres: batches, key allocation, dependency edges and their depth."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from queue_service import domain, exceptions
from queue_service.models import Priority, Task, TaskCreate, TaskStatus
from queue_service.postgres import tables as t
from queue_service.postgres.edge_locks import lock_nowait, run_without_hold_and_wait, wait_until_free
from queue_service.postgres.records.base import READY, TEXTS, PostgresRecordsBase, S
from queue_service.postgres.records.task_create_fast import create_one_fast, fast_eligible
from queue_service.postgres.routing_columns import routing_column, routing_fields
from queue_service.postgres.transitions import EVENT_CREATED, Effects, EventInput, ReadyTask, insert_events

__all__ = ["TaskCreation"]

logger = logging.getLogger(__name__)

#: Batches at least this large refresh planner statistics after commit (see ``_analyze``).
ANALYZE_AFTER_BATCH = 1000


class TaskCreation(PostgresRecordsBase):
    """Creating tasks (one part of the record store)."""

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
        if self.raw is not None and fast_eligible(items):
            fast = await create_one_fast(self.raw, project, items[0], now, self.config.max_queue_depth)
            if fast is not None:
                task, effects = fast
                await self._after_commit(effects)
                return [task]

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
                    t.tasks.c.idempotency_key == func.any(bindparam("ik", idem_keys, TEXTS)),
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
                .where(t.tasks.c.project == project, t.tasks.c.key == func.any(bindparam("gk", list(given), TEXTS)))
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
                    t.tasks.c.project == project, t.tasks.c.key == func.any(bindparam("wk", window, TEXTS))
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
                    t.tasks.c.key == func.any(bindparam("dk", sorted(external), TEXTS)),
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
                    "requires": dict(item.requires),
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
                    "traceparent": item.traceparent,
                    "tracestate": item.tracestate,
                    "routing": routing_column(item.prefers, item.concurrency_key, item.group),
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
                READY,
                t.tasks.c.role == func.any(bindparam("roles", list(added), TEXTS)),
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
