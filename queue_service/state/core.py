"""StateCore: one project's records, the derived dispatch indexes, and the rules every plan shares.

Holds what every kind of plan needs: reading through pending changes (``View``), writing a task with
its event (``_transition``) and the consequences of a status change on dependents, token checks, and
``apply``, which mutates the state and maintains the indexes. The plans themselves live in
``records.py`` (records), ``dispatch.py`` (leases) and ``projections.py`` (read models).
"""

from __future__ import annotations

import heapq
import secrets
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from queue_service import domain, exceptions
from queue_service.models import (
    Event,
    Mission,
    Note,
    Priority,
    Project,
    Task,
    TaskStatus,
)
from queue_service.routing_state import RoutingIndex
from queue_service.state.changes import Changes

__all__ = ["EVENT_LEASE_EXPIRED", "PRIORITY_RANK", "StateCore", "View"]

S = TaskStatus
PRIORITY_RANK = {Priority.P0: 0, Priority.P1: 1, Priority.P2: 2, Priority.P3: 3}
#: the event a lease expiry writes (the task goes back to the head of its line)
EVENT_LEASE_EXPIRED = "lease_expired"


class View:
    """Reads through pending changes to the base state (a transaction's own writes are visible)."""

    def __init__(self, state: StateCore, changes: Changes) -> None:
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


class StateCore:
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

    def require_mission(self, mission: str) -> Mission:
        try:
            return self.missions[mission]
        except KeyError:
            raise exceptions.MissionNotFound(
                f"mission {mission!r} not found in project {self.project.slug}",
                project=self.project.slug,
                mission=mission,
            ) from None

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
        view = View(self, changes)
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

    def _check_token(self, key: str, token: str, now: datetime, view: View | None = None) -> Task:
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

    def unblocks(self, key: str) -> int:
        """How many not-done tasks depend directly on *key* (the dispatch order's tie-breaker)."""
        return sum(1 for d in self.dependents.get(key, ()) if self.tasks[d].status is not S.DONE)

    def roles(self) -> list[str]:
        """Roles that have (or had) eligible tasks."""
        return sorted(self._heaps)

    def ready_depth(self, role: str) -> int:
        """Tasks of *role* that are not-started with every dependency done."""
        return len(self.eligible.get(role, ()))

    def _boost_valid(self, entry: tuple[int, int, int, str], task: Task, role: str) -> bool:
        key = entry[3]
        if key not in self.eligible.get(role, ()) or task.status is not S.NOT_STARTED or task.seq != entry[2]:
            return False
        return PRIORITY_RANK[task.priority] == entry[0] and self.unblocks(key) == -entry[1]

    def _push_boost(self, key: str) -> None:
        """File an eligible task that unblocks something in its role's boost heap (with its count now)."""
        task = self.tasks.get(key)
        if task is None or key not in self.eligible.get(task.role, ()):
            return
        count = self.unblocks(key)
        if count:
            heapq.heappush(self._boost.setdefault(task.role, []), (PRIORITY_RANK[task.priority], -count, task.seq, key))

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
        heapq.heappush(self._heaps.setdefault(task.role, []), (PRIORITY_RANK[task.priority], -self._front_seq, key))

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
                    self._heaps.setdefault(task.role, []), (PRIORITY_RANK[task.priority], task.seq, task.key)
                )
                self._push_boost(task.key)
        else:
            eligible.discard(task.key)
