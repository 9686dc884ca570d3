"""ProjectState: one project's records and dispatch rules as a pure, in-memory state machine.

Every operation is planned first and applied second: ``plan_*`` methods read the state, validate,
and return a :class:`Changes` without mutating anything (so a raise leaves the state untouched, the
in-memory equivalent of a rolled-back transaction); :meth:`ProjectState.apply` then mutates and
maintains the derived indexes. The in-memory backend applies at once; the flatfile backend writes
the changes to its journal first and applies after the write is durable. The Postgres backend
implements the same rules in SQL; the contract suite holds them to the same behaviour.
"""

from __future__ import annotations

import base64
import heapq
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from queue_service import domain, exceptions, routing
from queue_service.backend import DispatchConfig
from queue_service.models import (
    Claim,
    Event,
    Lease,
    Mission,
    MissionCreate,
    Note,
    Priority,
    Project,
    ProjectCreate,
    ProjectUpdate,
    QueueStats,
    Task,
    TaskCreate,
    TaskFilter,
    TaskPage,
    TaskStatus,
    TaskUpdate,
)
from queue_service.routing_state import RoutingDelta, RoutingIndex, pick_routed

__all__ = ["Changes", "ProjectState", "decode_cursor", "encode_cursor", "new_token"]

S = TaskStatus
_PRIORITY_RANK = {Priority.P0: 0, Priority.P1: 1, Priority.P2: 2, Priority.P3: 3}
#: the event a lease expiry writes (the task goes back to the head of its line)
EVENT_LEASE_EXPIRED = "lease_expired"


def new_token() -> str:
    """A fresh, unguessable lease token."""
    return secrets.token_urlsafe(24)


def encode_cursor(seq: int) -> str:
    """Opaque cursor for "after this seq"."""
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int:
    """The seq a cursor points after (0 for None). Raises ValidationError for a malformed cursor."""
    if not cursor:
        return 0
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        tag, _, num = raw.partition(":")
        # seq is a Postgres BIGINT: a longer number is malformed, not a driver error
        if tag != "seq" or not num.isascii() or not num.isdigit() or len(num) > 19:
            raise ValueError(raw)
        value = int(num)
        if value >= 2**63:
            raise ValueError(raw)
        return value
    except (ValueError, UnicodeDecodeError):
        raise exceptions.ValidationError(f"malformed cursor {cursor!r}", cursor=cursor) from None


@dataclass
class Changes:
    """What one operation changes; applied as a unit."""

    tasks: dict[str, Task] = field(default_factory=dict)
    #: lease token per task key in ``tasks`` (None: no lease)
    tokens: dict[str, str | None] = field(default_factory=dict)
    notes: list[Note] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    project: Project | None = None
    missions: dict[str, Mission] = field(default_factory=dict)
    next_seq: int | None = None
    sync_state: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: per synced file, the base rows that changed (None: removed); issue 17 keeps them apart from the
    #: state so a cycle stores what changed, not the whole base
    sync_rows: dict[str, dict[str, dict[str, Any] | None]] = field(default_factory=dict)
    #: tasks that became ready (for waking claimers / queueing)
    ready: list[str] = field(default_factory=list)
    #: agent registry, offers and round-robin cursors (issue 13)
    routing: RoutingDelta | None = None

    def is_empty(self) -> bool:
        """True when nothing would change."""
        return (
            not (
                self.tasks
                or self.notes
                or self.events
                or self.project
                or self.missions
                or self.sync_state
                or self.sync_rows
                or self.routing
            )
            and self.next_seq is None
        )


class _View:
    """Reads through pending changes to the base state (a transaction's own writes are visible)."""

    def __init__(self, state: ProjectState, changes: Changes) -> None:
        self.state = state
        self.changes = changes

    def task(self, key: str) -> Task | None:
        return self.changes.tasks.get(key) or self.state.tasks.get(key)

    def token(self, key: str) -> str | None:
        if key in self.changes.tokens:
            return self.changes.tokens[key]
        return self.state.tokens.get(key)

    def dependents(self, key: str) -> Iterable[str]:
        return sorted(self.state.dependents.get(key, ()), key=lambda k: self.state.tasks[k].seq)

    def is_ready(self, task: Task, now: datetime) -> bool:
        statuses = {}
        for dep in task.depends_on:
            dt = self.task(dep)
            if dt is None:
                return False
            statuses[dep] = dt.status
        return domain.is_ready(task, statuses, now)


class ProjectState:
    """All records of one project plus derived dispatch indexes."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.missions: dict[str, Mission] = {}
        self.tasks: dict[str, Task] = {}
        self.tokens: dict[str, str] = {}
        self.notes: dict[str, list[Note]] = {}
        self.events: list[Event] = []
        self.sync_state: dict[str, dict[str, Any]] = {}
        #: per synced file, its base rows by task key (workspace sync's row history, issue 17)
        self.sync_rows: dict[str, dict[str, dict[str, Any]]] = {}
        self.next_seq = 1
        # derived indexes (rebuilt by apply; never persisted)
        self.dependents: dict[str, set[str]] = {}
        self.pending: dict[str, int] = {}
        self.idempotency: dict[str, str] = {}
        self.eligible: dict[str, set[str]] = {}
        self._heaps: dict[str, list[tuple[int, int, str]]] = {}
        #: entries put at the head of a line sort before every seq (most recent first, like LPUSH)
        self._front_seq = 0
        # eligible tasks that unblock something, in dispatch order (rank, -unblocks, seq, key); entries
        # go stale when a count changes (a fresh one is pushed) and are dropped when found
        self._boost: dict[str, list[tuple[int, int, int, str]]] = {}
        self.leased: set[str] = set()
        self.last_seq = 0
        self.last_note_id = 0
        self.last_event_id = 0
        #: agents, offers and routing bookkeeping (issue 13)
        self.routing = RoutingIndex()

    # -- helpers ----------------------------------------------------------------------------
    def _event(self, changes: Changes, kind: str, now: datetime, task: Task | None = None, **data: Any) -> None:
        last = changes.events[-1].id if changes.events else self.last_event_id
        changes.events.append(
            Event(
                id=last + 1,
                project=self.project.slug,
                task=task.key if task else None,
                kind=kind,
                status=task.status if task else None,
                version=task.version if task else None,
                at=now,
                data=data,
            )
        )

    def _put(self, changes: Changes, task: Task, kind: str, now: datetime, **data: Any) -> Task:
        changes.tasks[task.key] = task
        self._event(changes, kind, now, task, **data)
        return task

    def require(self, key: str) -> Task:
        """The task, or TaskNotFound naming the key and project."""
        try:
            return self.tasks[key]
        except KeyError:
            raise exceptions.TaskNotFound(
                f"task {key} not found in project {self.project.slug}", project=self.project.slug, task=key
            ) from None

    def _require_mission(self, mission: str) -> Mission:
        try:
            return self.missions[mission]
        except KeyError:
            raise exceptions.MissionNotFound(
                f"mission {mission!r} not found in project {self.project.slug}",
                project=self.project.slug,
                mission=mission,
            ) from None

    # -- projects and missions -------------------------------------------------------------
    @classmethod
    def new(cls, data: ProjectCreate, now: datetime) -> tuple[ProjectState, Changes]:
        """A new project with its default mission."""
        project = Project(
            slug=data.slug,
            name=data.name or data.slug,
            key_prefix=data.resolved_prefix(),
            workspace=data.workspace,
            created_at=now,
            updated_at=now,
        )
        state = cls(project)
        changes = Changes(project=project, next_seq=1)
        mission = Mission(project=project.slug, id="default", name=project.name, created_at=now, updated_at=now)
        changes.missions["default"] = mission
        state._event(changes, "project_created", now)
        return state, changes

    def plan_update_project(self, patch: ProjectUpdate, now: datetime) -> Changes:
        """Patch name/workspace."""
        fields = {k: getattr(patch, k) for k in patch.model_fields_set}
        if fields.get("name") is None:
            fields.pop("name", None)
        for name in ("routing", "concurrency_limits"):
            if name in fields and fields[name] is None:
                fields[name] = {}
        changed = {k: v for k, v in fields.items() if getattr(self.project, k) != v}
        if not changed:
            return Changes()
        project = self.project.model_copy(update={**changed, "updated_at": now, "version": self.project.version + 1})
        changes = Changes(project=project)
        self._event(changes, "project_updated", now, fields=sorted(changed))
        return changes

    def plan_create_mission(self, data: MissionCreate, now: datetime) -> Changes:
        """A new mission."""
        if data.id in self.missions:
            raise exceptions.AlreadyExists(
                f"mission {data.id!r} already exists in project {self.project.slug}", mission=data.id
            )
        mission = Mission(
            project=self.project.slug,
            id=data.id,
            name=data.name or data.id,
            status=data.status,
            milestones=tuple(data.milestones),
            tasks_file=data.tasks_file or f"{data.id}/TASKS.md",
            created_at=now,
            updated_at=now,
            quality_gates=tuple(data.quality_gates or ()),
        )
        changes = Changes(missions={data.id: mission})
        self._event(changes, "mission_created", now, mission=data.id)
        return changes

    def plan_update_mission(self, mission_id: str, data: MissionCreate, now: datetime) -> Changes:
        """Replace a mission's fields."""
        old = self._require_mission(mission_id)
        mission = old.model_copy(
            update={
                "name": data.name or old.name,
                "status": data.status,
                "milestones": tuple(data.milestones),
                "tasks_file": data.tasks_file or old.tasks_file,
                "quality_gates": old.quality_gates if data.quality_gates is None else tuple(data.quality_gates),
                "updated_at": now,
                "version": old.version + 1,
            }
        )
        if mission.model_dump(exclude={"updated_at", "version"}) == old.model_dump(exclude={"updated_at", "version"}):
            return Changes()
        changes = Changes(missions={mission_id: mission})
        self._event(changes, "mission_updated", now, mission=mission_id)
        return changes

    # -- tasks ------------------------------------------------------------------------------
    def plan_create_tasks(
        self, items: Sequence[TaskCreate], config: DispatchConfig, now: datetime
    ) -> tuple[Changes, list[Task]]:
        """Create tasks all-or-nothing; see RecordStore.create_tasks."""
        changes = Changes()
        prefix = self.project.key_prefix
        results: list[Task | None] = [None] * len(items)
        # idempotency: reuse existing tasks (or the first of the batch with the same key)
        batch_idem: dict[str, int] = {}
        keys: list[str] = [""] * len(items)
        fresh: list[int] = []
        next_seq = self.next_seq
        taken: set[str] = set()
        for i, item in enumerate(items):
            if item.idempotency_key:
                existing = self.idempotency.get(item.idempotency_key)
                if existing is not None:
                    results[i] = self.tasks[existing]
                    keys[i] = existing
                    continue
                if item.idempotency_key in batch_idem:
                    keys[i] = ""  # filled from the first occurrence below
                    continue
                batch_idem[item.idempotency_key] = i
            self._require_mission(item.mission)
            fresh.append(i)
            if item.key is not None:
                if item.key in self.tasks or item.key in taken:
                    raise exceptions.AlreadyExists(
                        f"task key {item.key} already exists in project {self.project.slug}", task=item.key
                    )
                taken.add(item.key)
                keys[i] = item.key
                n = domain.key_number(prefix, item.key)
                if n is not None and n >= next_seq:
                    next_seq = n + 1
        for i in fresh:
            if keys[i]:
                continue
            while domain.format_key(prefix, next_seq) in self.tasks or domain.format_key(prefix, next_seq) in taken:
                next_seq += 1
            keys[i] = domain.format_key(prefix, next_seq)
            taken.add(keys[i])
            next_seq += 1
        for i, item in enumerate(items):
            if not keys[i] and item.idempotency_key:
                keys[i] = keys[batch_idem[item.idempotency_key]]
        # dependencies
        new_edges: dict[str, list[str]] = {}
        for i in fresh:
            item = items[i]
            deps = domain.resolve_batch_deps(item.depends_on, keys, i)
            for dep in deps:
                if dep == keys[i]:
                    raise exceptions.DependencyCycle(f"task {dep} depends on itself", cycle=[dep, dep])
                if dep not in self.tasks and dep not in taken:
                    raise exceptions.UnknownDependency(
                        f"task {keys[i]} depends on {dep}, which does not exist in project {self.project.slug}",
                        task=keys[i],
                        dependency=dep,
                    )
            new_edges[keys[i]] = deps
        domain.check_no_cycle(new_edges)
        seq = self.last_seq
        ready_per_role: dict[str, int] = {}
        for i in fresh:
            item = items[i]
            seq += 1
            task = Task(
                project=self.project.slug,
                key=keys[i],
                seq=seq,
                title=item.title,
                description=item.description,
                status=item.status,
                role=item.role,
                priority=item.priority,
                assignee=item.assignee,
                mission=item.mission,
                milestone=item.milestone,
                depends_on=tuple(new_edges[keys[i]]),
                labels=tuple(item.labels),
                extra=dict(item.extra),
                max_attempts=item.max_attempts,
                not_before=item.not_before,
                idempotency_key=item.idempotency_key,
                requires=dict(item.requires),
                prefers=tuple(item.prefers),
                concurrency_key=item.concurrency_key,
                group=item.group,
                created_at=now,
                updated_at=now,
                started_at=now if item.status is S.IN_PROGRESS else None,
                completed_at=now if item.status is S.DONE else None,
            )
            results[i] = self._put(changes, task, "created", now)
        view = _View(self, changes)
        for i in fresh:
            task = changes.tasks[keys[i]]
            if task.status is S.NOT_STARTED and all(
                (d := view.task(dep)) is not None and d.status is S.DONE for dep in task.depends_on
            ):
                ready_per_role[task.role] = ready_per_role.get(task.role, 0) + 1
                if view.is_ready(task, now):
                    changes.ready.append(task.key)
        for role, added in ready_per_role.items():
            depth = len(self.eligible.get(role, ()))
            if depth + added > config.max_queue_depth:
                raise exceptions.QueueFull(
                    f"role {role!r} of project {self.project.slug} has {depth} ready tasks; adding {added} "
                    f"would exceed max_queue_depth={config.max_queue_depth}",
                    project=self.project.slug,
                    role=role,
                    depth=depth,
                    max_queue_depth=config.max_queue_depth,
                )
        for i, item in enumerate(items):
            if results[i] is None:
                results[i] = changes.tasks.get(keys[i]) or self.tasks[keys[i]]
            del item
        changes.next_seq = next_seq
        return changes, [r for r in results if r is not None]

    def get_tasks(self, keys: Sequence[str]) -> list[Task]:
        """Existing tasks among *keys*, in the order asked."""
        return [self.tasks[k] for k in keys if k in self.tasks]

    def list_tasks(self, filters: TaskFilter, limit: int, cursor: str | None, now: datetime) -> TaskPage:
        """Filtered, seq-ordered page."""
        after = decode_cursor(cursor)
        statuses = set(filters.status) if filters.status else None
        view = _View(self, Changes())
        items: list[Task] = []
        more = False
        for task in self.tasks.values():  # dict order is seq order
            if task.seq <= after:
                continue
            if statuses is not None and task.status not in statuses:
                continue
            if filters.role is not None and task.role != filters.role:
                continue
            if filters.assignee is not None and task.assignee != filters.assignee:
                continue
            if filters.mission is not None and task.mission != filters.mission:
                continue
            if filters.milestone is not None and task.milestone != filters.milestone:
                continue
            if filters.label is not None and filters.label not in task.labels:
                continue
            if filters.ready is not None and view.is_ready(task, now) != filters.ready:
                continue
            if len(items) == limit:
                more = True
                break
            items.append(task)
        return TaskPage(items=tuple(items), next_cursor=encode_cursor(items[-1].seq) if more else None)

    def _reaches(self, start: Iterable[str], target: str, view: _View) -> list[str] | None:
        """A dependency path from one of *start* to *target*, if any (cycle check for patches)."""
        stack = [(s, [s]) for s in start]
        seen: set[str] = set()
        while stack:
            node, path = stack.pop()
            if node == target:
                return path
            if node in seen:
                continue
            seen.add(node)
            t = view.task(node)
            if t is not None:
                stack.extend((d, [*path, d]) for d in t.depends_on)
        return None

    def _transition(
        self,
        changes: Changes,
        old: Task,
        new: Task,
        kind: str,
        now: datetime,
        *,
        token: str | bool | None = False,
        **data: Any,
    ) -> Task:
        """Store *new* (a changed *old*), write its event, and apply the status consequences."""
        update: dict[str, Any] = {"version": old.version + 1, "updated_at": now}
        if new.status is not old.status:
            if old.status is S.IN_PROGRESS:
                update.update(lease_holder=None, lease_expires_at=None)
                if token is False:
                    token = None
            if new.status is S.DONE and old.status is not S.DONE:
                update["completed_at"] = now
            if new.status is S.IN_PROGRESS and new.started_at is None:
                update["started_at"] = now
            if new.status is not S.BLOCKED and new.blocked_reason and domain.is_dependency_block(new.blocked_reason):
                update["blocked_reason"] = None
        stored = new.model_copy(update=update)
        if token is not False:
            changes.tokens[stored.key] = token if isinstance(token, str) else None
        self._put(changes, stored, kind, now, **data)
        if stored.status is not old.status:
            self._consequences(changes, old, stored, now)
        return stored

    def _consequences(self, changes: Changes, old: Task, new: Task, now: datetime) -> None:
        view = _View(self, changes)
        if new.status is S.NOT_STARTED and view.is_ready(new, now):
            changes.ready.append(new.key)
        for dep_key in view.dependents(new.key):
            dep = view.task(dep_key)
            assert dep is not None
            if new.status is S.DONE and dep.status is S.NOT_STARTED and view.is_ready(dep, now):
                changes.ready.append(dep_key)
            elif new.status in domain.TERMINAL_FAILURE and dep.status is S.NOT_STARTED:
                blocked = dep.model_copy(
                    update={"status": S.BLOCKED, "blocked_reason": domain.dependency_block_reason(new.key, new.status)}
                )
                self._transition(changes, dep, blocked, "blocked", now, cause=new.key)
            elif (
                old.status in domain.TERMINAL_FAILURE
                and new.status not in domain.TERMINAL_FAILURE
                and dep.status is S.BLOCKED
                and dep.blocked_reason in {domain.dependency_block_reason(new.key, s) for s in domain.TERMINAL_FAILURE}
            ):
                # still held by another failed dependency: keep it blocked, naming that one instead
                other = next(
                    (
                        o
                        for d in dep.depends_on
                        if d != new.key and (o := view.task(d)) is not None and o.status in domain.TERMINAL_FAILURE
                    ),
                    None,
                )
                if other is not None:
                    reason = domain.dependency_block_reason(other.key, other.status)
                    self._transition(changes, dep, dep.model_copy(update={"blocked_reason": reason}), "blocked", now)
                else:
                    unblocked = dep.model_copy(update={"status": S.NOT_STARTED, "blocked_reason": None})
                    self._transition(changes, dep, unblocked, "unblocked", now, cause=new.key)

    def plan_update_task(
        self, key: str, patch: TaskUpdate, expected_version: int | None, actor: str, now: datetime
    ) -> tuple[Changes, Task]:
        """See RecordStore.update_task."""
        old = self.require(key)
        if expected_version is not None and expected_version != old.version:
            raise exceptions.VersionConflict(
                f"task {key} is at version {old.version}, not {expected_version}",
                task=key,
                expected=expected_version,
                actual=old.version,
            )
        changes = Changes()
        fields = patch.changes()
        if "title" in fields and fields["title"] is None:
            del fields["title"]
        for name in ("status", "role", "priority", "mission", "description", "max_attempts"):
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
        if "mission" in fields:
            self._require_mission(fields["mission"])
        if "depends_on" in fields:
            deps = tuple(fields["depends_on"] or ())
            view = _View(self, changes)
            for dep in deps:
                if dep == key:
                    raise exceptions.DependencyCycle(f"task {key} cannot depend on itself", cycle=[key, key])
                if dep not in self.tasks:
                    raise exceptions.UnknownDependency(
                        f"task {key} depends on {dep}, which does not exist in project {self.project.slug}",
                        task=key,
                        dependency=dep,
                    )
            path = self._reaches(deps, key, view)
            if path:
                raise exceptions.DependencyCycle(f"dependency cycle: {' -> '.join([key, *path])}", cycle=[key, *path])
            fields["depends_on"] = deps
        changed = {k: v for k, v in fields.items() if getattr(old, k) != v}
        if not changed:
            return changes, old
        if "status" in changed:
            domain.check_transition(key, old.status, changed["status"])
            if changed["status"] is S.BLOCKED and "blocked_reason" not in changed:
                changed["blocked_reason"] = f"blocked by {actor}"
            if changed["status"] is not S.BLOCKED and "blocked_reason" not in changed:
                changed["blocked_reason"] = None
        new = old.model_copy(update=changed)
        stored = self._transition(changes, old, new, "updated", now, actor=actor, fields=sorted(changed))
        # a deps change can make the task ready without a status change
        if "status" not in changed and stored.status is S.NOT_STARTED and _View(self, changes).is_ready(stored, now):
            changes.ready.append(key)
        return changes, stored

    def plan_cancel(self, key: str, reason: str | None, actor: str, now: datetime) -> tuple[Changes, Task]:
        """See RecordStore.cancel_task."""
        old = self.require(key)
        if old.status is S.CANCELLED:
            return Changes(), old
        if old.status is S.DONE:
            raise exceptions.InvalidTransition(
                f"task {key} is done and cannot be cancelled", task=key, current=old.status.value, target="cancelled"
            )
        changes = Changes()
        new = old.model_copy(update={"status": S.CANCELLED, "last_error": reason or old.last_error})
        stored = self._transition(changes, old, new, "cancelled", now, actor=actor, reason=reason)
        return changes, stored

    def _check_token(self, key: str, token: str, now: datetime, view: _View | None = None) -> Task:
        if view is None:
            task = self.require(key)
            held = self.tokens.get(key)
        else:
            found = view.task(key)
            if found is None:
                raise exceptions.LeaseError(
                    f"lease token for task {key} is not valid: no task {key} in project {self.project.slug}", task=key
                )
            task, held = found, view.token(key)
        # Compare bytes: compare_digest raises TypeError on non-ASCII str (a client-supplied token).
        valid = held is not None and secrets.compare_digest(held.encode(), token.encode())
        if task.status is not S.IN_PROGRESS or not valid:
            raise exceptions.LeaseError(
                f"lease token for task {key} is not valid (the task was reclaimed, finished or never claimed "
                "with this token)",
                task=key,
            )
        if task.lease_expires_at is None or task.lease_expires_at <= now:
            raise exceptions.LeaseError(
                f"lease on task {key} expired at {task.lease_expires_at}",
                task=key,
                reason="expired",
                at=task.lease_expires_at.isoformat() if task.lease_expires_at else None,
                by=None,
            )
        return task

    def plan_add_note(self, key: str, author: str, text: str, token: str | None, now: datetime) -> tuple[Changes, Note]:
        """See RecordStore.add_note."""
        task = self._check_token(key, token, now) if token is not None else self.require(key)
        note = Note(
            id=self.last_note_id + 1, project=self.project.slug, task=key, author=author, text=text, created_at=now
        )
        changes = Changes(notes=[note])
        self._event(changes, "note_added", now, task, author=author, note_id=note.id)
        return changes, note

    def blockers(self, key: str) -> list[Task]:
        """Deps not done."""
        task = self.require(key)
        return [self.tasks[d] for d in task.depends_on if d in self.tasks and self.tasks[d].status is not S.DONE]

    def dependents_of(self, key: str) -> list[Task]:
        """Direct dependents by seq."""
        self.require(key)
        return sorted((self.tasks[k] for k in self.dependents.get(key, ())), key=lambda t: t.seq)

    def dead_letter(self, limit: int) -> list[Task]:
        """Failed tasks, newest update first."""
        failed = [t for t in self.tasks.values() if t.status is S.FAILED]
        failed.sort(key=lambda t: (t.updated_at, t.seq), reverse=True)
        return failed[:limit]

    def stats(self, now: datetime) -> QueueStats:
        """Counts per status, ready per role."""
        by_status = {s.value: 0 for s in TaskStatus}
        ready: dict[str, int] = {}
        view = _View(self, Changes())
        done_recent = 0
        for task in self.tasks.values():
            by_status[task.status.value] += 1
            if task.status is S.NOT_STARTED and view.is_ready(task, now):
                ready[task.role] = ready.get(task.role, 0) + 1
            if task.completed_at and task.status is S.DONE and (now - task.completed_at) <= timedelta(minutes=1):
                done_recent += 1
        return QueueStats(
            project=self.project.slug,
            by_status=by_status,
            ready_by_role=ready,
            in_flight=len(self.leased),
            dead_letter=by_status[S.FAILED.value],
            completed_last_minute=done_recent,
        )

    # -- dispatch ---------------------------------------------------------------------------
    def roles(self) -> list[str]:
        """Roles that have (or had) eligible tasks."""
        return sorted(self._heaps)

    def ready_depth(self, role: str) -> int:
        """Tasks of *role* that are not-started with every dependency done."""
        return len(self.eligible.get(role, ()))

    def plan_claim(
        self,
        agent: str,
        roles: Sequence[str] | None,
        lease_seconds: float,
        now: datetime,
        config: DispatchConfig | None = None,
    ) -> tuple[Changes, Claim] | None:
        """Claim the best ready task of *roles*, or None. Stale heap entries are dropped as found."""
        changes, claims = self.plan_claim_many(agent, roles, 1, lease_seconds, now, config)
        return (changes, claims[0]) if claims else None

    def plan_claim_many(
        self,
        agent: str,
        roles: Sequence[str] | None,
        limit: int,
        lease_seconds: float,
        now: datetime,
        config: DispatchConfig | None = None,
    ) -> tuple[Changes, list[Claim]]:
        """Claim up to *limit* ready tasks of *roles* for *agent*, in one Changes (one token each).

        The agent is registered implicitly if unknown, and never gets more than its free capacity.
        When routing matters (strategies, labels, concurrency keys, several groups) the pick is
        :func:`queue_service.routing_state.pick_routed`; otherwise it is the heap pick below.
        (The Changes may hold only a registry update when nothing was claimed.)
        """
        cfg = config or DispatchConfig()
        delta = RoutingDelta()
        me = self.routing.admit(self.project.slug, agent, roles, now, delta)
        # a claim without roles takes any role, as before (registered roles steer routing, see serves())
        names = list(dict.fromkeys(roles)) if roles else list(self._heaps)
        want = min(limit, self.routing.free(me))
        if want <= 0:
            chosen: list[Task] = []
        elif self.routing.needs_routing(self.project, names):
            chosen = pick_routed(self, me, names, want, now, cfg.agent_ready_seconds, cfg.offer_seconds, delta)
        else:
            chosen = self._pick_heap(names, want, now)
        changes = Changes(routing=delta if delta else None)
        claims: list[Claim] = []
        expires = now + timedelta(seconds=lease_seconds)
        for task in chosen:
            token = domain.new_lease_token(lease_seconds)
            new = task.model_copy(
                update={"status": S.IN_PROGRESS, "assignee": agent, "lease_holder": agent, "lease_expires_at": expires}
            )
            stored = self._transition(changes, task, new, "claimed", now, token=token, agent=agent)
            claims.append(
                Claim(task=stored, lease=Lease(token=token, holder=agent, expires_at=expires, seconds=lease_seconds))
            )
        return changes, claims

    def _pick_heap(self, names: list[str], limit: int, now: datetime) -> list[Task]:
        """The first *limit* ready tasks of roles *names* in dispatch order, off the heaps.

        Stale heap entries are dropped as found; every entry still eligible goes back into its heap
        (the chosen ones too: ``apply`` drops them once they are in-progress, and a commit that fails
        must not lose them).
        """
        deferred: list[tuple[str, tuple[int, int, str]]] = []
        chosen: list[Task] = []
        picked: set[str] = set()
        try:
            while len(chosen) < limit:
                best: tuple[tuple[int, int, str], str] | None = None
                for role in names:
                    heap = self._heaps.get(role)
                    while heap and heap[0][2] not in self.eligible.get(role, ()):
                        heapq.heappop(heap)  # stale: no longer eligible
                    if heap and (best is None or heap[0] < best[0]):
                        best = (heap[0], role)
                if best is None:
                    break
                entry, role = best
                heapq.heappop(self._heaps[role])
                task = self.tasks[entry[2]]
                if task.not_before is not None and task.not_before > now:
                    deferred.append((role, entry))
                    continue
                if task.status is not S.NOT_STARTED or self.pending.get(task.key, 0) != 0:
                    continue
                deferred.append((role, entry))  # stays in the heap until apply() removes eligibility
                if task.key in picked:
                    continue  # a second entry for the same key (left by a priority change)
                picked.add(task.key)
                chosen.append(task)
        finally:
            for role, entry in deferred:
                heapq.heappush(self._heaps[role], entry)
        return self._dispatch_first(chosen, names, limit, now)

    def unblocks(self, key: str) -> int:
        """How many not-done tasks depend directly on *key* (the dispatch order's tie-breaker)."""
        return sum(1 for d in self.dependents.get(key, ()) if self.tasks[d].status is not S.DONE)

    def _ready_now(self, key: str, roles: set[str] | None, now: datetime) -> Task | None:
        task = self.tasks.get(key)
        if task is None or task.status is not S.NOT_STARTED or self.pending.get(key, 0) != 0:
            return None
        if roles is not None and task.role not in roles:
            return None
        if task.not_before is not None and task.not_before > now:
            return None
        return task

    def _dispatch_first(self, by_age: list[Task], names: list[str], limit: int, now: datetime) -> list[Task]:
        """The first *limit* ready tasks in ``domain.dispatch_order``, from *by_age* (the first *limit*
        by priority then age, off the heaps) plus the first *limit* ready tasks of each role's boost
        heap (the tasks that unblock something, already in dispatch order).

        Why this is enough: a task that unblocks nothing sorts exactly as on the age heap, so any such
        task in the true first *limit* is already in *by_age*; the others are at the top of a boost heap.
        """
        pool = {t.key: t for t in by_age}
        boosted = False
        for role in names:
            heap = self._boost.get(role)
            kept: list[tuple[int, int, int, str]] = []
            seen: set[str] = set()
            found = 0
            while heap and found < limit:
                entry = heapq.heappop(heap)
                key = entry[3]
                task = self.tasks.get(key)
                if task is None or key in seen or not self._boost_valid(entry, task, role):
                    continue  # stale or duplicate: dropped
                seen.add(key)
                kept.append(entry)
                if task.not_before is not None and task.not_before > now:
                    continue  # backing off: stays, not a candidate yet
                pool[key] = task
                found += 1
                boosted = True
            for entry in kept:
                heapq.heappush(self._boost.setdefault(role, []), entry)
        if not boosted:
            return by_age
        ordered = sorted(pool.values(), key=lambda t: domain.dispatch_order(t, self.unblocks(t.key)))
        return ordered[:limit]

    def _boost_valid(self, entry: tuple[int, int, int, str], task: Task, role: str) -> bool:
        key = entry[3]
        if key not in self.eligible.get(role, ()) or task.status is not S.NOT_STARTED or task.seq != entry[2]:
            return False
        return _PRIORITY_RANK[task.priority] == entry[0] and self.unblocks(key) == -entry[1]

    def _push_boost(self, key: str) -> None:
        """File an eligible task that unblocks something in its role's boost heap (with its count now)."""
        task = self.tasks.get(key)
        if task is None or key not in self.eligible.get(task.role, ()):
            return
        count = self.unblocks(key)
        if count:
            heapq.heappush(
                self._boost.setdefault(task.role, []), (_PRIORITY_RANK[task.priority], -count, task.seq, key)
            )

    def ready_ordered(self, roles: Sequence[str] | None, limit: int, now: datetime) -> tuple[list[Task], int]:
        """Every ready task of *roles* in dispatch order: the first *limit*, and how many in all."""
        names = list(roles) if roles else list(self.eligible)
        wanted = set(names)
        ready = [t for r in names for k in self.eligible.get(r, ()) if (t := self._ready_now(k, wanted, now))]
        ready.sort(key=lambda t: domain.dispatch_order(t, self.unblocks(t.key)))
        return ready[:limit], len(ready)

    def ready_listed(self, roles: Sequence[str] | None, limit: int, now: datetime) -> tuple[list[Task], int]:
        """The first *limit* ready tasks in the order claims take them (fair share included), and how
        many are ready in all: what ``ready``/``next`` show (issue 11's one dispatch order)."""
        ready, total = self.ready_ordered(roles, 1 << 62, now)
        candidates = [routing.Candidate(t, self.unblocks(t.key)) for t in ready]
        return [c.task for c in routing.fair_order(candidates, self.routing.turns, limit)], total

    def task_events(self, key: str, limit: int) -> list[Event]:
        """The task's newest events, newest first."""
        self.require(key)
        out: list[Event] = []
        for event in reversed(self.events):
            if event.task == key:
                out.append(event)
                if len(out) >= limit:
                    break
        return out

    def plan_heartbeat(self, key: str, token: str, lease_seconds: float, now: datetime) -> tuple[Changes, Lease]:
        """Extend a lease. Not a task change: no version bump, no event (lease bookkeeping only)."""
        task = self._check_token(key, token, now)
        expires = now + timedelta(seconds=lease_seconds)
        changes = Changes(tasks={key: task.model_copy(update={"lease_expires_at": expires})})
        return changes, Lease(token=token, holder=task.lease_holder or "", expires_at=expires, seconds=lease_seconds)

    def plan_complete(self, key: str, token: str, result: Any, now: datetime) -> tuple[Changes, Task]:
        """Done with result; dependents promoted."""
        task = self._check_token(key, token, now)
        changes = Changes()
        new = task.model_copy(update={"status": S.DONE, "result": result})
        return changes, self._transition(changes, task, new, "completed", now, token=None)

    def plan_complete_many(
        self, items: Sequence[tuple[str, str, Any]], now: datetime
    ) -> tuple[Changes, list[Task | exceptions.QueueServiceError]]:
        """Complete each valid ``(key, token, result)`` in one Changes; see Dispatcher.complete_many.

        Items are checked in order against the state *including* this batch's earlier items, so a
        repeated item finds its task already done and gets a LeaseError.
        """
        changes = Changes()
        view = _View(self, changes)
        out: list[Task | exceptions.QueueServiceError] = []
        for key, token, result in items:
            try:
                task = self._check_token(key, token, now, view)
            except exceptions.LeaseError as exc:
                out.append(exc)
                continue
            new = task.model_copy(update={"status": S.DONE, "result": result})
            out.append(self._transition(changes, task, new, "completed", now, token=None))
        return changes, out

    def _failure(
        self,
        changes: Changes,
        task: Task,
        error: str,
        retryable: bool,
        config: DispatchConfig,
        now: datetime,
        kind: str,
        backoff: bool = True,
    ) -> Task:
        attempts = task.attempts + 1
        if retryable and attempts < task.max_attempts and not backoff:
            # an expired lease: the holder vanished, the task is not at fault; ready again at once
            new = task.model_copy(
                update={
                    "status": S.NOT_STARTED,
                    "attempts": attempts,
                    "last_error": error,
                    "not_before": None,
                    "assignee": None,
                }
            )
            return self._transition(
                changes, task, new, kind, now, token=None, retry_in=0.0, attempt=attempts, error=error
            )
        if retryable and attempts < task.max_attempts:
            delay = domain.backoff_delay(
                attempts, config.backoff_base_seconds, config.backoff_max_seconds, config.backoff_jitter
            )
            new = task.model_copy(
                update={
                    "status": S.NOT_STARTED,
                    "attempts": attempts,
                    "last_error": error,
                    "not_before": now + delay,
                    "assignee": None,
                }
            )
            return self._transition(
                changes, task, new, kind, now, token=None, retry_in=delay.total_seconds(), attempt=attempts, error=error
            )
        update: dict[str, Any] = {"status": S.FAILED, "attempts": attempts, "last_error": error}
        if kind == "lease_expired":
            update["assignee"] = None  # an expired holder is not working on it any more
        new = task.model_copy(update=update)
        # every attempt's error stays in the event log (the task keeps only the last): the UI lists them all
        return self._transition(
            changes, task, new, kind, now, token=None, dead_letter=True, attempt=attempts, error=error
        )

    def plan_fail(
        self, key: str, token: str, error: str, retryable: bool, config: DispatchConfig, now: datetime
    ) -> tuple[Changes, Task]:
        """Count an attempt; backoff or dead-letter."""
        task = self._check_token(key, token, now)
        changes = Changes()
        return changes, self._failure(changes, task, error, retryable, config, now, "failed")

    def plan_release(self, key: str, token: str, now: datetime) -> tuple[Changes, Task]:
        """Give back without counting an attempt."""
        task = self._check_token(key, token, now)
        changes = Changes()
        # nobody works on it any more: the old holder no longer shows as its assignee
        new = task.model_copy(update={"status": S.NOT_STARTED, "assignee": None})
        return changes, self._transition(changes, task, new, "released", now, token=None)

    def plan_retry(self, key: str, actor: str, now: datetime) -> tuple[Changes, Task]:
        """Revive a failed/blocked/cancelled task."""
        task = self.require(key)
        if task.status not in (S.FAILED, S.BLOCKED, S.CANCELLED):
            raise exceptions.InvalidTransition(
                f"task {key} is {task.status.value}; only failed, blocked or cancelled tasks can be retried",
                task=key,
                current=task.status.value,
                target=S.NOT_STARTED.value,
            )
        changes = Changes()
        new = task.model_copy(
            update={"status": S.NOT_STARTED, "attempts": 0, "not_before": None, "blocked_reason": None}
        )
        return changes, self._transition(changes, task, new, "retried", now, actor=actor)

    def plan_sweep(self, config: DispatchConfig, now: datetime) -> tuple[Changes, list[str]]:
        """Expire leases past their expiry (counts an attempt; ready again at once, first in line)."""
        changes = Changes()
        expired: list[str] = []
        for key in sorted(self.leased, key=lambda k: self.tasks[k].seq):
            task = self.tasks[key]
            if task.lease_expires_at is not None and task.lease_expires_at <= now:
                expired.append(key)
                self._failure(
                    changes,
                    task,
                    f"lease of {task.lease_holder} expired",
                    True,
                    config,
                    now,
                    EVENT_LEASE_EXPIRED,
                    backoff=False,
                )
        # backoffs that came due: ready now (their heap entries were deferred)
        for role_keys in self.eligible.values():
            for key in role_keys:
                task = self.tasks[key]
                if task.not_before is not None and task.not_before <= now and key not in changes.tasks:
                    changes.ready.append(key)
        return changes, expired

    # -- apply ------------------------------------------------------------------------------
    def apply(self, changes: Changes) -> None:
        """Mutate the state with *changes* and maintain the derived indexes."""
        if changes.project is not None:
            self.project = changes.project
        self.missions.update(changes.missions)
        if changes.next_seq is not None:
            self.next_seq = changes.next_seq
        self.sync_state.update(changes.sync_state)
        for path, delta in changes.sync_rows.items():
            rows = self.sync_rows.setdefault(path, {})
            for key, entry in delta.items():
                if entry is None:
                    rows.pop(key, None)
                else:
                    rows[key] = entry
        for note in changes.notes:
            self.notes.setdefault(note.task, []).append(note)
            self.last_note_id = max(self.last_note_id, note.id)
        self.events.extend(changes.events)
        if changes.events:
            self.last_event_id = max(self.last_event_id, changes.events[-1].id)
        for key, token in changes.tokens.items():
            if token is None:
                self.tokens.pop(key, None)
            else:
                self.tokens[key] = token
        for key, new in changes.tasks.items():
            self._store_task(key, new)
        if changes.routing is not None:
            self.routing.apply(changes.routing)
        for event in changes.events:
            if event.kind == "claimed" and event.task is not None:
                self.routing.served(self.tasks[event.task])
        # A task whose lease expired goes to the head of its priority's line (it waited its turn
        # already). Derived from the event, so a journal replay orders it the same way.
        for event in changes.events:
            if event.kind == EVENT_LEASE_EXPIRED and event.task is not None:
                self._to_front(event.task)

    def _to_front(self, key: str) -> None:
        task = self.tasks.get(key)
        if task is None or key not in self.eligible.get(task.role, ()):
            return
        self._front_seq += 1
        heapq.heappush(self._heaps.setdefault(task.role, []), (_PRIORITY_RANK[task.priority], -self._front_seq, key))

    def _store_task(self, key: str, new: Task) -> None:
        old = self.tasks.get(key)
        self.tasks[key] = new
        self.routing.observe(old, new)
        self.last_seq = max(self.last_seq, new.seq)
        if new.idempotency_key:
            self.idempotency[new.idempotency_key] = key
        old_deps = set(old.depends_on) if old else set()
        new_deps = set(new.depends_on)
        for dep in old_deps - new_deps:
            self.dependents.get(dep, set()).discard(key)
        for dep in new_deps - old_deps:
            self.dependents.setdefault(dep, set()).add(key)
        for dep in old_deps ^ new_deps:
            self._push_boost(dep)  # its count of tasks it unblocks changed
        if old is None or old_deps != new_deps:
            self.pending[key] = sum(
                1 for d in new.depends_on if (dt := self.tasks.get(d)) is None or dt.status is not S.DONE
            )
        was_done = old is not None and old.status is S.DONE
        if was_done != (new.status is S.DONE):
            for dep in new_deps:
                self._push_boost(dep)  # one more (or one less) not-done task waits on it
            delta = -1 if new.status is S.DONE else 1
            for dependent in self.dependents.get(key, ()):
                self.pending[dependent] = self.pending.get(dependent, 0) + delta
                self._reindex(self.tasks[dependent])
        if old is not None and old.role != new.role:
            self.eligible.get(old.role, set()).discard(key)
        self._reindex(new, repush=old is not None and old.priority != new.priority)
        if new.status is S.IN_PROGRESS and new.lease_expires_at is not None:
            self.leased.add(key)
        else:
            self.leased.discard(key)

    def _reindex(self, task: Task, repush: bool = False) -> None:
        eligible = self.eligible.setdefault(task.role, set())
        if task.status is S.NOT_STARTED and self.pending.get(task.key, 0) == 0:
            if task.key not in eligible or repush:
                eligible.add(task.key)
                # a priority change leaves the old entry behind; claim skips it once the key is gone
                heapq.heappush(
                    self._heaps.setdefault(task.role, []), (_PRIORITY_RANK[task.priority], task.seq, task.key)
                )
                self._push_boost(task.key)
        else:
            eligible.discard(task.key)
