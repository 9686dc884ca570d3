"""What each page shows, read through the :class:`QueueService` facade only.

Everything here is bounded for big projects: the board reads at most :data:`CARDS` cards per column
(counts come from the stats, or from a bounded scan when a filter the store cannot apply is set),
lists paginate with the store's cursors, and throughput is kept incrementally from the event log.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from queue_service import exceptions
from queue_service.models import Event, Task, TaskFilter, TaskStatus, utcnow, validated
from queue_service.service import QueueService

__all__ = [
    "BOARD_COLUMNS",
    "CARDS",
    "SCAN_LIMIT",
    "AgentRow",
    "BoardFilter",
    "Column",
    "Throughput",
    "agents",
    "board",
    "iter_tasks",
]

S = TaskStatus
#: the board's columns when no status filter is set
BOARD_COLUMNS: tuple[TaskStatus, ...] = (S.NOT_STARTED, S.IN_PROGRESS, S.NEEDS_QA, S.BLOCKED, S.DONE, S.FAILED)
#: cards drawn per column
CARDS = 50
#: most tasks read to count a column (or find text) under a filter the store cannot apply
SCAN_LIMIT = 10_000
_PAGE = 1000


@dataclass(frozen=True)
class BoardFilter:
    """The board's filters (all optional); ``statuses`` empty means the default columns."""

    statuses: tuple[TaskStatus, ...] = ()
    role: str | None = None
    assignee: str | None = None
    label: str | None = None
    mission: str | None = None
    milestone: str | None = None
    text: str | None = None

    def store_filter(self, statuses: Sequence[TaskStatus]) -> TaskFilter:
        """The store-side filter; the text search runs in the store too (an index on Postgres, issue 12).

        Raises:
            ValidationError: a filter value is refused (a search text with control characters).
        """
        return validated(
            TaskFilter,
            {
                "status": list(statuses),
                "role": self.role,
                "assignee": self.assignee,
                "label": self.label,
                "mission": self.mission,
                "milestone": self.milestone,
                "text": self.text,
            },
        )

    @property
    def store_only(self) -> bool:
        """True when the stats' per-status counts are the column counts (no filter but status)."""
        return not (self.role or self.assignee or self.label or self.mission or self.milestone or self.text)


@dataclass
class Column:
    status: str
    count: int
    cards: list[Task]
    #: the count stopped at SCAN_LIMIT tasks read
    capped: bool = False


async def iter_tasks(service: QueueService, project: str, filters: TaskFilter, limit: int) -> AsyncIterator[Task]:
    """Up to *limit* tasks matching *filters*, page by page (creation order)."""
    cursor: str | None = None
    seen = 0
    while seen < limit:
        page = await service.list_tasks(project, filters, limit=min(_PAGE, limit - seen), cursor=cursor)
        for task in page.items:
            yield task
        seen += len(page.items)
        if page.next_cursor is None or not page.items:
            return
        cursor = page.next_cursor


async def board(service: QueueService, project: str, f: BoardFilter) -> list[Column]:
    """The kanban columns (the filter's statuses, or the default six).

    With only a status filter the counts are the stats' and each column reads its first cards. With
    any other filter one scan over the selected statuses (at most :data:`SCAN_LIMIT` tasks) counts
    and fills every column at once.
    """
    stats = await service.stats(project)
    statuses = f.statuses or BOARD_COLUMNS
    if f.store_only:
        pages = await asyncio.gather(*(service.list_tasks(project, f.store_filter([s]), limit=CARDS) for s in statuses))
        return [
            Column(s.value, stats.by_status.get(s.value, 0), list(page.items))
            for s, page in zip(statuses, pages, strict=True)
        ]
    columns = {s: Column(s.value, 0, []) for s in statuses}
    read = 0
    async for task in iter_tasks(service, project, f.store_filter(statuses), SCAN_LIMIT):
        read += 1
        col = columns[task.status]
        col.count += 1
        if len(col.cards) < CARDS:
            col.cards.append(task)
    if read >= SCAN_LIMIT:
        for col in columns.values():
            col.capped = True
    return list(columns.values())


@dataclass
class AgentRow:
    name: str
    held: list[Task] = field(default_factory=list)
    #: the latest lease expiry among held tasks: the last heartbeat renewed it
    lease_expires_at: datetime | None = None
    #: the registry's last sign of life (registration, agent heartbeat, claim); for an agent the
    #: registry does not list, the latest change to a task it holds
    last_seen: datetime | None = None
    #: from the registry (issue 13); None for a holder it does not list (e.g. imported tasks)
    ready: bool | None = None
    drained: bool = False
    capacity: int | None = None
    roles: list[str] = field(default_factory=list)
    done: int = 0
    failed: int = 0


async def agents(service: QueueService, project: str) -> list[AgentRow]:
    """Each agent of the registry (issue 13) with readiness and capacity, plus whoever holds an
    in-progress task, with what it holds. Each heartbeat renews a lease, so the lease expiry moves
    with the agent's last task heartbeat; ``last_seen`` is its last agent heartbeat or claim."""
    rows: dict[str, AgentRow] = {}
    for a in await service.list_agents(project):
        rows[a.id] = AgentRow(
            a.id,
            last_seen=a.last_seen,
            ready=a.ready,
            drained=a.drained,
            capacity=a.capacity,
            roles=list(a.roles),
            done=a.done,
            failed=a.failed,
        )
    held = TaskFilter(status=[S.IN_PROGRESS])
    async for task in iter_tasks(service, project, held, SCAN_LIMIT):
        name = task.lease_holder or task.assignee
        if not name:
            continue
        row = rows.setdefault(name, AgentRow(name))
        row.held.append(task)
        if task.lease_expires_at and (row.lease_expires_at is None or task.lease_expires_at > row.lease_expires_at):
            row.lease_expires_at = task.lease_expires_at
        if row.ready is None and (row.last_seen is None or task.updated_at > row.last_seen):
            row.last_seen = task.updated_at
    return sorted(rows.values(), key=lambda r: (not r.held, r.name))


class Throughput:
    """Completed/failed per minute over the last hour, per project, kept incrementally.

    The first look at a project finds the hour's first event by bisecting event ids (a few indexed
    reads); later looks read only events newer than the last one seen.
    """

    MINUTES = 60

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self._minutes: dict[str, dict[int, list[int]]] = {}
        self._lock = asyncio.Lock()

    async def _start_id(self, service: QueueService, project: str, since: datetime) -> int:
        async def first_after(after: int) -> Event | None:
            found = await service.list_events(project, after_id=after, limit=1)
            return found[0] if found else None

        async def in_window(after: int) -> bool:
            e = await first_after(after)
            return e is None or e.at >= since

        # smallest id after which every event is inside the window (ids grow with time)
        hi = 1
        while not await in_window(hi):
            hi *= 2
        lo = 0
        while lo < hi:
            mid = (lo + hi) // 2
            if await in_window(mid):
                hi = mid
            else:
                lo = mid + 1
        return lo

    def last_seen(self, project: str) -> int:
        """The newest event id read for *project* so far (0 before the first look)."""
        return self._last.get(project, 0)

    async def buckets(self, service: QueueService, project: str, now: datetime | None = None) -> list[tuple[int, int]]:
        """``(completed, failed)`` per minute, oldest first, the last being the current minute."""
        now = now or utcnow()
        this_minute = int(now.timestamp() // 60)
        first = this_minute - self.MINUTES + 1
        async with self._lock:
            if project not in self._last:
                self._last[project] = await self._start_id(service, project, now - timedelta(minutes=self.MINUTES))
                self._minutes[project] = {}
            minutes = self._minutes[project]
            while True:
                events = await service.list_events(project, after_id=self._last[project], limit=5000)
                for e in events:
                    m = int(e.at.timestamp() // 60)
                    if m >= first:
                        slot = minutes.setdefault(m, [0, 0])
                        if e.kind == "completed":
                            slot[0] += 1
                        elif e.kind in ("failed", "lease_expired"):
                            slot[1] += 1
                if events:
                    self._last[project] = events[-1].id
                if len(events) < 5000:
                    break
            for m in [m for m in minutes if m < first]:
                del minutes[m]
        return [tuple(minutes.get(m, [0, 0])) for m in range(first, this_minute + 1)]  # type: ignore[misc]


async def last_event_id(tracker: Throughput, service: QueueService, project: str) -> int:
    """The project's newest event id (read incrementally through the throughput tracker)."""
    await tracker.buckets(service, project)
    return tracker.last_seen(project)


def lease_left(task: Task, now: datetime) -> str | None:
    """``"4m 10s"`` until the lease ends, ``"expired"``, or None without a lease."""
    if task.lease_expires_at is None:
        return None
    seconds = int((task.lease_expires_at - now).total_seconds())
    if seconds <= 0:
        return "expired"
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    if seconds >= 60:
        return f"{seconds // 60}m {seconds % 60}s"
    return f"{seconds}s"


async def retry_many(service: QueueService, project: str, keys: Sequence[str], actor: str) -> tuple[int, list[str]]:
    """Retry each key; returns how many were revived and the refusals (one line each)."""
    done = 0
    errors: list[str] = []
    for key in keys:
        try:
            await service.retry_task(project, key, actor=actor)
            done += 1
        except exceptions.QueueServiceError as exc:
            errors.append(f"{key}: {exc.message}")
    return done, errors
