"""Changing tasks on Postgres: PATCH (fields, status, dependencies with cycle checks) and cancel."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from queue_service import domain, exceptions
from queue_service.models import Task, TaskStatus, TaskUpdate
from queue_service.postgres import tables as t
from queue_service.postgres.edge_locks import lock_nowait, run_without_hold_and_wait, wait_until_free
from queue_service.postgres.records.base import EDGE_QUERIES, TEXTS, PostgresRecordsBase, S
from queue_service.postgres.routing_columns import ROUTING_FIELDS, routing_column
from queue_service.postgres.rows import task_from_row
from queue_service.postgres.transitions import (
    EVENT_CANCELLED,
    EVENT_UPDATED,
    Effects,
    EventInput,
    ReadyTask,
    StatusChange,
    insert_events,
    on_status_changes,
    recompute_pending_deps,
    sa_fetch,
)

__all__ = ["TaskEdits"]


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


class TaskEdits(PostgresRecordsBase):
    """Changing tasks (one part of the record store)."""

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
            .where(t.tasks.c.project == project, t.tasks.c.key == func.any(bindparam("sk", list(deps), TEXTS)))
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
                t.tasks.c.project == project, t.tasks.c.key == func.any(bindparam("dk", list(deps), TEXTS))
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
        dep_ids = [ids[d] for d in deps]
        (found,) = await sa_fetch(conn)(EDGE_QUERIES["reaches"], dep_ids, task_id)
        reachable = found["found"]
        if reachable:
            cycle = [key, *await self._cycle_path(conn, dep_ids, task_id)]
            raise exceptions.DependencyCycle(f"dependency cycle: {' -> '.join(cycle)}", cycle=cycle)
        return [ids[d] for d in deps]

    @staticmethod
    async def _cycle_path(conn: AsyncConnection, dep_ids: list[int], target: int) -> list[str]:
        """Keys from one of the new deps to the target along existing edges (only after a cycle was
        found): one parent per reached task, each task visited once."""
        rows = await sa_fetch(conn)(EDGE_QUERIES["reach_parents"], dep_ids, target)
        parent: dict[int, int | None] = {}
        key_of: dict[int, str] = {}
        for r in rows:
            key_of[r["id"]] = r["key"]
            if r["parent"] is None:  # one of the new deps: the path starts there
                parent[r["id"]] = None
            else:
                parent.setdefault(r["id"], r["parent"])
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
