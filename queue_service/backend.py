"""The Backend interface: records, dispatch and events, bundled in one facade.

Three capabilities, each an ABC, so a backend can be assembled from parts (litestar keeps stores and
channels apart the same way):

* :class:`RecordStore` — projects, missions, tasks, dependencies, notes, the event log, sync bases,
  API tokens, snapshots. Every change bumps the object's ``version`` and writes an event in the same
  transaction.
* :class:`Dispatcher` — claim with a fenced lease, heartbeat, complete, fail, release, retry, and the
  sweeper's periodic ``sweep``.
* :class:`EventStream` — live events after commit (pub/sub), for SSE, sync and waiting claimers.

:class:`Backend` owns the three and their lifecycle (``open``/``close``/``ping``). The contract tests
in ``tests/contract`` check the sentences in these docstrings against every backend. This module holds
only the interfaces: ``backend_factory.backend_from_url`` is the one place that names implementations.
``DispatchConfig`` lives in ``dispatch_config`` (re-exported here).

Shared rules for every method taking ``project``/``key``: an unknown project raises
``ProjectNotFound``, an unknown task ``TaskNotFound``. A method that raises leaves stored data
unchanged (all-or-nothing). Driver errors never escape: they become ``BackendError``/
``BackendUnavailable``.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from queue_service import exceptions
from queue_service.agents import AgentRegistry
from queue_service.dispatch_config import DispatchConfig
from queue_service.models import (
    ApiToken,
    Claim,
    Event,
    Lease,
    Mission,
    MissionCreate,
    Note,
    Project,
    ProjectCreate,
    ProjectSnapshot,
    ProjectUpdate,
    QueueStats,
    ReadyList,
    SweepReport,
    Task,
    TaskCreate,
    TaskFilter,
    TaskPage,
    TaskUpdate,
)
from queue_service.streams import StreamStore

__all__ = [
    "Backend",
    "DispatchConfig",
    "Dispatcher",
    "EventStream",
    "RecordStore",
]


class RecordStore(abc.ABC):
    """Durable records: the source of truth."""

    # -- projects ---------------------------------------------------------------------------
    @abc.abstractmethod
    async def create_project(self, data: ProjectCreate) -> Project:
        """Create a project and its default mission (id ``default``).

        Raises AlreadyExists if the slug is taken.
        """

    @abc.abstractmethod
    async def get_project(self, slug: str) -> Project:
        """Return the project. Raises ProjectNotFound."""

    @abc.abstractmethod
    async def list_projects(self) -> list[Project]:
        """All projects, ordered by slug."""

    @abc.abstractmethod
    async def update_project(self, slug: str, patch: ProjectUpdate) -> Project:
        """Apply the fields set in *patch*; bumps the project's version."""

    # -- missions ---------------------------------------------------------------------------
    @abc.abstractmethod
    async def create_mission(self, project: str, data: MissionCreate) -> Mission:
        """Create a mission. Raises AlreadyExists if the id is taken in the project."""

    @abc.abstractmethod
    async def get_mission(self, project: str, mission: str) -> Mission:
        """Return the mission. Raises MissionNotFound."""

    @abc.abstractmethod
    async def list_missions(self, project: str) -> list[Mission]:
        """The project's missions, ``default`` first, then by creation order."""

    @abc.abstractmethod
    async def update_mission(self, project: str, mission: str, data: MissionCreate) -> Mission:
        """Replace name/status/milestones/tasks_file of a mission (id unchanged); bumps version."""

    # -- tasks ------------------------------------------------------------------------------
    @abc.abstractmethod
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

    @abc.abstractmethod
    async def get_task(self, project: str, key: str) -> Task:
        """Return the task. Raises TaskNotFound."""

    @abc.abstractmethod
    async def get_tasks(self, project: str, keys: Sequence[str]) -> list[Task]:
        """The tasks among *keys* that exist, in the order asked; cost grows with len(keys) only."""

    @abc.abstractmethod
    async def list_tasks(
        self, project: str, filters: TaskFilter | None = None, limit: int = 100, cursor: str | None = None
    ) -> TaskPage:
        """Tasks matching every filter, in creation order (``seq``), at most *limit* per page.

        ``cursor`` is the opaque ``next_cursor`` of the previous page; a malformed one raises
        ValidationError. ``ready=True`` keeps only tasks that satisfy the readiness rule now.
        """

    @abc.abstractmethod
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
        """

    @abc.abstractmethod
    async def cancel_task(self, project: str, key: str, reason: str | None = None, actor: str = "api") -> Task:
        """Move the task to cancelled (from any status but done/cancelled); ends any lease; blocks
        dependents. Cancelling a cancelled task returns it unchanged. Raises InvalidTransition
        for a done task."""

    @abc.abstractmethod
    async def add_note(self, project: str, key: str, author: str, text: str, token: str | None = None) -> Note:
        """Append a note. With *token*, the caller must hold the task's live lease (LeaseError)."""

    @abc.abstractmethod
    async def list_notes(self, project: str, key: str) -> list[Note]:
        """The task's notes, oldest first."""

    @abc.abstractmethod
    async def blockers(self, project: str, key: str) -> list[Task]:
        """The task's dependencies that are not done (what blocks it), in dependency order."""

    @abc.abstractmethod
    async def dependents(self, project: str, key: str) -> list[Task]:
        """The tasks that depend directly on *key* (what it unblocks), by seq."""

    @abc.abstractmethod
    async def dead_letter(self, project: str, limit: int = 100) -> list[Task]:
        """Failed tasks (the dead-letter set), most recently updated first."""

    @abc.abstractmethod
    async def stats(self, project: str) -> QueueStats:
        """Counts per status, ready tasks per role, in-flight leases, dead-letter size."""

    async def ready_tasks(self, project: str, roles: Sequence[str] | None = None, limit: int = 20) -> ReadyList:
        """Ready tasks of *roles* (all when None) in the dispatch order (``domain.dispatch_order``:
        priority, then how many not-done tasks each unblocks, then age), the first *limit* of them.

        This default reads every ready task through :meth:`list_tasks` (correct, not fast);
        backends override it.
        """
        from queue_service.domain import dispatch_order

        found: list[Task] = []
        cursor: str | None = None
        while True:
            page = await self.list_tasks(project, TaskFilter(ready=True), 1000, cursor)
            found.extend(t for t in page.items if roles is None or t.role in roles)
            cursor = page.next_cursor
            if not cursor:
                break
        counts = {}
        for t in found:
            counts[t.key] = sum(1 for d in await self.dependents(project, t.key) if d.status.value != "done")
        found.sort(key=lambda t: dispatch_order(t, counts[t.key]))
        return ReadyList(tasks=found[:limit], total=len(found), unblocks={t.key: counts[t.key] for t in found[:limit]})

    async def task_events(self, project: str, key: str, limit: int = 20) -> list[Event]:
        """The task's newest events, newest first, at most *limit* (why a lease was refused).

        This default scans the project's whole log; backends override it.
        """
        await self.get_task(project, key)
        mine: list[Event] = []
        after = 0
        while True:
            batch = await self.list_events(project, after, 1000)
            mine.extend(e for e in batch if e.task == key)
            if len(batch) < 1000:
                break
            after = batch[-1].id
        return mine[::-1][:limit]

    # -- events -----------------------------------------------------------------------------
    @abc.abstractmethod
    async def list_events(self, project: str, after_id: int = 0, limit: int = 1000) -> list[Event]:
        """Events of the project with ``id > after_id``, oldest first, at most *limit*."""

    async def list_task_events(self, project: str, key: str, limit: int = 1000) -> list[Event]:
        """One task's events, oldest first: the *limit* most recent. Raises TaskNotFound.

        This default reads the whole log page by page (fine for the in-process backends, whose log is
        in memory); a database backend answers it with one indexed query.
        """
        await self.get_task(project, key)
        found: list[Event] = []
        after = 0
        while True:
            page = await self.list_events(project, after_id=after, limit=10_000)
            found.extend(e for e in page if e.task == key)
            if len(found) > limit:
                del found[: len(found) - limit]
            if len(page) < 10_000:
                return found
            after = page[-1].id

    # -- sync bases -------------------------------------------------------------------------
    @abc.abstractmethod
    async def get_sync_state(self, project: str, path: str) -> dict[str, Any] | None:
        """The last synced base stored for a workspace file, or None."""

    @abc.abstractmethod
    async def put_sync_state(
        self, project: str, path: str, state: dict[str, Any], rows: Mapping[str, dict[str, Any] | None] | None = None
    ) -> None:
        """Store (replace) the sync state of a workspace file and, in the same write, change its base rows.

        *rows* maps task keys to their new base row (None removes it); keys not named keep theirs, so
        a cycle stores what changed (issue 17).
        """

    @abc.abstractmethod
    async def get_sync_rows(self, project: str, path: str) -> dict[str, dict[str, Any]]:
        """The base rows stored for a workspace file, by task key (empty when none)."""

    # -- API tokens -------------------------------------------------------------------------
    @abc.abstractmethod
    async def add_api_token(self, token: ApiToken) -> None:
        """Store a token record (hash only). Raises AlreadyExists for a duplicate id."""

    @abc.abstractmethod
    async def find_api_token(self, token_hash: str) -> ApiToken | None:
        """The token whose hash matches, or None."""

    @abc.abstractmethod
    async def count_api_tokens(self) -> int:
        """How many token records exist, revoked ones included (0 means auth is off)."""

    @abc.abstractmethod
    async def list_api_tokens(self) -> list[ApiToken]:
        """Every token record, oldest first (revoked ones included)."""

    @abc.abstractmethod
    async def revoke_api_token(self, token_id: str) -> ApiToken:
        """Mark a token revoked (idempotent: a revoked token keeps its first revocation time).

        Raises NotFound for an unknown id.
        """

    @abc.abstractmethod
    async def purge_api_tokens(self) -> int:
        """Delete every token record (auth turns off); returns how many there were."""

    # -- snapshots --------------------------------------------------------------------------
    @abc.abstractmethod
    async def export_project(self, project: str) -> ProjectSnapshot:
        """Everything the project holds, with keys, versions, notes and events as stored."""

    @abc.abstractmethod
    async def import_project(self, snapshot: ProjectSnapshot) -> Project:
        """Recreate a project exactly as exported (keys, versions, seq, notes, events).

        Raises AlreadyExists if the slug exists. Live leases are not carried over: in-progress
        tasks with a lease come back as in-progress without a lease holder, and the sweeper
        leaves them to a human (documented in docs/plans/flatfile.md).
        """


class Dispatcher(abc.ABC):
    """Real-time assignment: fenced leases over the record store."""

    @abc.abstractmethod
    async def claim(
        self,
        project: str,
        agent: str,
        roles: Sequence[str] | None = None,
        wait: float = 0.0,
        lease_seconds: float | None = None,
    ) -> Claim | None:
        """Claim the highest-priority ready task of *roles* (all roles when None).

        Exactly one claimer wins a task however many race. The task moves to in-progress with
        ``assignee``/``lease_holder`` = *agent*, ``attempts`` unchanged, a fresh random token and
        ``lease_expires_at = now + lease``. Waits up to *wait* seconds for a task to become ready
        (no busy polling); returns None if none did. Tasks of other roles are never returned.
        *lease_seconds* None means the configured default; zero or negative raises ValidationError.
        """

    async def claim_many(
        self,
        project: str,
        agent: str,
        roles: Sequence[str] | None = None,
        limit: int = 10,
        wait: float = 0.0,
        lease_seconds: float | None = None,
    ) -> list[Claim]:
        """Claim up to *limit* ready tasks of *roles* at once, best first (priority, then age).

        Each task is claimed exactly as :meth:`claim` would claim it — exactly one winner per task
        however many callers race, its own fresh token (fencing stays per task), ``attempts``
        unchanged — but in as few round trips as the backend allows. Waits up to *wait* seconds
        only while nothing could be claimed: returns as soon as at least one task is claimed, and
        ``[]`` if none became ready in time. The list is ordered by priority, then age.

        This default claims one task at a time through :meth:`claim` (correct, not batched);
        backends override it with a batched version.
        """
        claims: list[Claim] = []
        while len(claims) < limit:
            got = await self.claim(project, agent, roles, wait if not claims else 0.0, lease_seconds)
            if got is None:
                break
            claims.append(got)
        return claims

    async def complete_many(
        self, project: str, items: Sequence[tuple[str, str, Any]]
    ) -> list[Task | exceptions.QueueServiceError]:
        """Complete several leased tasks: each item is ``(key, token, result)``.

        Every item is checked on its own, as :meth:`complete` checks it: a wrong or expired token
        (or a key that names no task, or a repeat of an item already completed in this batch)
        yields a ``LeaseError`` in that item's slot of the answer and changes nothing for that
        item, while the valid items complete and promote their dependents exactly as
        :meth:`complete` does. The answer has one slot per item, in order. Raises ProjectNotFound
        for an unknown project (nothing changes). Once some items are committed the call no longer
        raises: a storage failure that hits a later item is reported in that item's slot
        (BackendError), so a completed item is never reported as failed.

        This default completes one item at a time through :meth:`complete` (correct, not
        batched); backends override it to write the whole batch in one transaction.
        """
        out: list[Task | exceptions.QueueServiceError] = []
        for key, token, result in items:
            try:
                out.append(await self.complete(project, key, token, result))
            except exceptions.LeaseError as exc:
                out.append(exc)
            except exceptions.TaskNotFound as exc:
                out.append(exceptions.LeaseError(exc.message, task=key))
        return out

    async def claim_next(
        self, project: str, agent: str, roles: Sequence[str] | None, lease_seconds: float
    ) -> Claim | None:
        """Claim the single best ready task (``domain.dispatch_order``) of *roles* at once, or None.

        Exactly one claimer wins a task, as for :meth:`claim`. This default is :meth:`claim`, right
        for backends whose claim already follows the dispatch order; others override it.
        """
        return await self.claim(project, agent, roles, 0.0, lease_seconds)

    @abc.abstractmethod
    async def heartbeat(self, project: str, key: str, token: str, lease_seconds: float | None = None) -> Lease:
        """Extend the lease to now + lease. Raises LeaseError for a wrong or expired token, and
        ValidationError for a zero or negative *lease_seconds*."""

    @abc.abstractmethod
    async def complete(self, project: str, key: str, token: str, result: Any = None) -> Task:
        """Mark done with *result*; promote dependents whose deps are now all done.

        Raises LeaseError (and changes nothing) for a wrong or expired token.
        """

    @abc.abstractmethod
    async def fail(self, project: str, key: str, token: str, error: str, retryable: bool = True) -> Task:
        """Record a failed attempt (``attempts`` + 1, ``last_error``).

        Retryable and attempts < max_attempts: back to not-started with ``not_before`` = now +
        backoff. Otherwise: failed (dead-letter), and dependents are blocked. Raises LeaseError for
        a wrong or expired token.
        """

    @abc.abstractmethod
    async def release(self, project: str, key: str, token: str) -> Task:
        """Give the task back (not-started, ready again at once) without counting an attempt.
        Raises LeaseError for a wrong or expired token."""

    @abc.abstractmethod
    async def retry(self, project: str, key: str, actor: str = "api") -> Task:
        """Move a failed (or blocked/cancelled) task back to not-started with attempts reset and
        ``not_before`` cleared; dependents blocked because of it return to not-started. Raises
        InvalidTransition for other statuses."""

    @abc.abstractmethod
    async def sweep(self) -> SweepReport:
        """One orchestrator pass: expire leases past ``lease_expires_at`` (counts an attempt, then
        retry/backoff or dead-letter as for a retryable failure), queue tasks whose backoff is due,
        and reconcile derived dispatch state (e.g. Valkey lists) with the records. Idempotent: safe
        to run from several processes at once."""

    @abc.abstractmethod
    async def queue_depths(self, project: str) -> dict[str, int]:
        """Ready depth per role as the dispatcher sees it (Valkey list lengths, or ready counts)."""


class EventStream(abc.ABC):
    """Live events, delivered after commit."""

    @abc.abstractmethod
    def subscribe(self, project: str) -> AsyncIterator[Event]:
        """Yield the project's events as they are committed, from subscription time on.

        Delivery is best effort (a slow consumer may miss events); consumers that need every event
        resume from ``RecordStore.list_events`` with the last id they saw.
        """


class Backend(abc.ABC):
    """A complete backend: ``records``, ``dispatch`` and ``events`` plus lifecycle."""

    records: RecordStore
    dispatch: Dispatcher
    events: EventStream
    #: per-task chunk streams (issue 14)
    streams: StreamStore
    #: the agent registry (issue 13)
    agents: AgentRegistry
    config: DispatchConfig
    #: short name for logs and /readyz ("memory", "postgres+valkey", "flatfile")
    name: str = "backend"

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect/prepare. Idempotent."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and files. Idempotent."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise BackendUnavailable (with the reason) if the backend cannot serve requests."""

    async def __aenter__(self) -> Backend:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
