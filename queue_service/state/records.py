"""RecordRules: the plans that change records (projects, missions, tasks, dependencies, notes)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from queue_service import domain, exceptions
from queue_service.dispatch_config import DispatchConfig
from queue_service.models import (
    Mission,
    MissionCreate,
    Note,
    ProjectUpdate,
    Task,
    TaskCreate,
    TaskStatus,
    TaskUpdate,
)
from queue_service.state.changes import Changes
from queue_service.state.core import StateCore, View

__all__ = ["RecordRules"]

S = TaskStatus


class RecordRules(StateCore):
    """Plans for record changes; each returns Changes and mutates nothing (see ``StateCore.apply``)."""

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
        old = self.require_mission(mission_id)
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
            self.require_mission(item.mission)
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
                requires=dict(item.requires),
                max_attempts=item.max_attempts,
                not_before=item.not_before,
                idempotency_key=item.idempotency_key,
                traceparent=item.traceparent,
                tracestate=item.tracestate,
                prefers=tuple(item.prefers),
                concurrency_key=item.concurrency_key,
                group=item.group,
                created_at=now,
                updated_at=now,
                started_at=now if item.status is S.IN_PROGRESS else None,
                completed_at=now if item.status is S.DONE else None,
            )
            results[i] = self._put(changes, task, "created", now)
        view = View(self, changes)
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

    def _reaches(self, start: Iterable[str], target: str, view: View) -> list[str] | None:
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
            self.require_mission(fields["mission"])
        if "depends_on" in fields:
            deps = tuple(fields["depends_on"] or ())
            view = View(self, changes)
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
        if "status" not in changed and stored.status is S.NOT_STARTED and View(self, changes).is_ready(stored, now):
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

    def plan_add_note(self, key: str, author: str, text: str, token: str | None, now: datetime) -> tuple[Changes, Note]:
        """See RecordStore.add_note."""
        task = self._check_token(key, token, now) if token is not None else self.require(key)
        note = Note(
            id=self.last_note_id + 1, project=self.project.slug, task=key, author=author, text=text, created_at=now
        )
        changes = Changes(notes=[note])
        self._event(changes, "note_added", now, task, author=author, note_id=note.id)
        return changes, note
