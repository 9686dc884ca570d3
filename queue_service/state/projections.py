"""Projections: the read models of one project (pages, counts, dependency views, the ready list)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from queue_service import domain, routing
from queue_service.cursors import decode_cursor, encode_cursor
from queue_service.models import (
    Event,
    QueueStats,
    Task,
    TaskFilter,
    TaskPage,
    TaskStatus,
)
from queue_service.state.changes import Changes
from queue_service.state.core import StateCore, View

__all__ = ["Projections"]

S = TaskStatus


class Projections(StateCore):
    """Reads over the state; none of them changes it."""

    def get_tasks(self, keys: Sequence[str]) -> list[Task]:
        """Existing tasks among *keys*, in the order asked."""
        return [self.tasks[k] for k in keys if k in self.tasks]

    def list_tasks(self, filters: TaskFilter, limit: int, cursor: str | None, now: datetime) -> TaskPage:
        """Filtered, seq-ordered page."""
        after = decode_cursor(cursor)
        statuses = set(filters.status) if filters.status else None
        needle = filters.text.casefold() if filters.text else None
        view = View(self, Changes())
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
            if needle is not None and not _has_text(task, needle):
                continue
            if filters.ready is not None and view.is_ready(task, now) != filters.ready:
                continue
            if len(items) == limit:
                more = True
                break
            items.append(task)
        # a zero limit finds more but has no item to point after: no cursor (as on Postgres)
        return TaskPage(items=tuple(items), next_cursor=encode_cursor(items[-1].seq) if more and items else None)

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
        view = View(self, Changes())
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

    def _ready_now(self, key: str, roles: set[str] | None, now: datetime) -> Task | None:
        task = self.tasks.get(key)
        if task is None or task.status is not S.NOT_STARTED or self.pending.get(key, 0) != 0:
            return None
        if roles is not None and task.role not in roles:
            return None
        if task.not_before is not None and task.not_before > now:
            return None
        return task

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


def _has_text(task: Task, needle: str) -> bool:
    """The board's search (``TaskFilter.text``): *needle* (casefolded) in the key, title or description."""
    return needle in task.key.casefold() or needle in task.title.casefold() or needle in task.description.casefold()
