"""QueueService: the one facade the API, CLI, client-less tools and workspace sync go through.

It validates outside input into the domain models (raising our ValidationError naming the bad
value), then delegates to the Backend. It never talks SQL, Valkey or files itself.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from queue_service import domain, exceptions, tracing
from queue_service.agents import Agent, AgentRegister, validate_agent_id
from queue_service.backend import Backend
from queue_service.ids import new_agent_id
from queue_service.models import (
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
    Task,
    TaskCreate,
    TaskFilter,
    TaskPage,
    TaskStatus,
    TaskUpdate,
    find_nul,
    validate_key,
    validate_slug,
    validated,
)
from queue_service.streams import DEFAULT_STREAM, StreamChunk, StreamPage, parse_cursor
from queue_service.workspaces import WorkspacePolicy

__all__ = [
    "DEFAULT_AGENT_LEASE_SECONDS",
    "SERVICE_AUTHORS",
    "STREAM_FINAL_STATUSES",
    "LeaseProfile",
    "QueueService",
    "check_author",
    "new_agent_id",
]

#: Lease of agent-facing claims (CLI ``claim``/``next --claim``, MCP ``claim_next``) unless
#: configured (``QUEUE_AGENT_LEASE_SECONDS``): LLM agents think in minutes, not seconds.
DEFAULT_AGENT_LEASE_SECONDS = 1800.0
#: ``worker``: the dispatcher's short lease, kept alive by heartbeats; ``agent``: the agent lease.
LeaseProfile = Literal["worker", "agent"]

MAX_BATCH = 10_000
#: a task in one of these has no lease holder any more: its streams get no more output (issue 14)
STREAM_FINAL_STATUSES = frozenset({TaskStatus.DONE, TaskStatus.NEEDS_QA, TaskStatus.FAILED, TaskStatus.CANCELLED})
MAX_PAGE = 1000


def _agent_id(value: str) -> str:
    try:
        return validate_agent_id(value)
    except ValueError as exc:
        raise exceptions.ValidationError(str(exc), agent=value[:200]) from None


def _check_text(name: str, value: str) -> str:
    """Refuse NUL characters, which Postgres text cannot store (same answer on every backend)."""
    if "\x00" in value:
        raise exceptions.ValidationError(f"{name}: NUL characters are not allowed", field=name)
    return value


def _check_result(result: Any, field: str) -> Any:
    """A task result must be plain JSON (no NUL, no NaN/Infinity): every backend stores it as JSON."""
    found = find_nul(result, field)
    if found:
        raise exceptions.ValidationError(f"{found}: NUL characters are not allowed", field=found)
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise exceptions.ValidationError(f"{field} must be plain JSON: {exc}", field=field) from None
    return result


def _check_lease(lease_seconds: float | None) -> None:
    # the backends apply the same rule at the seam; checking here first keeps the error before any read
    if lease_seconds is not None:
        domain.lease_length(lease_seconds, lease_seconds)


def _with_seconds(claim: Claim | None, seconds: float) -> Claim | None:
    """The claim with ``lease.seconds`` set (backends that do not fill it in)."""
    if claim is None or claim.lease.seconds is not None:
        return claim
    return claim.model_copy(update={"lease": claim.lease.model_copy(update={"seconds": float(seconds)})})


#: names the service writes notes and events under: no caller may sign a note with one (issue 9)
SERVICE_AUTHORS = frozenset({"workspace-sync", "system", "dispatcher", "orchestrator", "queue-service"})


def check_author(author: str) -> str:
    """Refuse a note author that impersonates the service (``workspace-sync``…)."""
    if author.strip().lower() in SERVICE_AUTHORS:
        raise exceptions.ValidationError(
            f"note author {author.strip()!r} is reserved for the service itself; sign notes with your own name",
            value=author.strip(),
        )
    return author


class QueueService:
    """Every task operation, written only against :class:`~queue_service.backend.Backend`."""

    def __init__(
        self,
        backend: Backend,
        *,
        workspace_root: Path | None = None,
        workspaces: WorkspacePolicy | None = None,
        agent_lease_seconds: float = DEFAULT_AGENT_LEASE_SECONDS,
    ) -> None:
        _check_lease(agent_lease_seconds)
        self.backend = backend
        #: where workspaces may live (issue 9); API-strict unless the caller says it is the operator
        self.workspaces = workspaces or WorkspacePolicy(root=workspace_root)
        self.workspace_root = self.workspaces.root
        self.agent_lease_seconds = float(agent_lease_seconds)
        #: how long a quiet stream follower waits before it checks whether the task finished
        self.stream_check_seconds = 1.0
        #: called with the slug after a project is created or patched here (workspace sync starts its
        #: file at once instead of at the next rescan; issue 17)
        self.project_listeners: list[Callable[[str], None]] = []

    def _project_changed(self, slug: str) -> None:
        for listener in list(self.project_listeners):
            listener(slug)

    def agent_lease(self, lease_seconds: float | None = None) -> float:
        """The lease length of an agent-facing claim: *lease_seconds* if given (``--lease``), else
        the configured agent lease. The one place that choice is made (CLI, REST, MCP)."""
        _check_lease(lease_seconds)
        return float(lease_seconds) if lease_seconds is not None else self.agent_lease_seconds

    async def _explain(self, project: str, key: str, exc: exceptions.LeaseError) -> exceptions.LeaseError:
        """The same LeaseError with ``details.reason`` (and when / by whom) filled in, so a refused
        holder learns why. Backends state ``expired`` themselves (they know the clock and the token);
        everything else follows from the task as it is now and its newest events."""
        if exc.details.get("reason"):
            return exc
        try:
            task = await self.backend.records.get_task(project, key)
            recent = await self.backend.records.task_events(project, key, 20)
        except exceptions.QueueServiceError:
            return exc
        why = domain.lease_refusal(task, recent)
        details = {**exc.details, **why}
        by = f" by {why['by']}" if why.get("by") else ""
        at = f" at {why['at']}" if why.get("at") else ""
        message = f"lease token for task {key} is not valid: {why['reason']}{by}{at}"
        return exceptions.LeaseError(message, **details)

    # -- projects ---------------------------------------------------------------------------
    async def create_project(self, data: ProjectCreate | Mapping[str, Any]) -> Project:
        """Create a project (and its default mission).

        With no ``workspace`` given and a workspace root configured, the workspace is
        ``<root>/<slug>``.
        """
        create = validated(ProjectCreate, data)
        workspace = (
            self.workspaces.default_for(create.slug)
            if create.workspace is None
            else self.workspaces.place(create.workspace)
        )
        if workspace is not None:
            self.workspaces.check_overlap(workspace, create.slug, await self.backend.records.list_projects())
            create = create.model_copy(update={"workspace": workspace})
        project = await self.backend.records.create_project(create)
        self._project_changed(project.slug)
        return project

    async def get_project(self, slug: str) -> Project:
        """Return a project by slug."""
        return await self.backend.records.get_project(validate_slug(slug))

    async def list_projects(self) -> list[Project]:
        """All projects."""
        return await self.backend.records.list_projects()

    async def update_project(self, slug: str, data: ProjectUpdate | Mapping[str, Any]) -> Project:
        """Patch a project (name, workspace); a workspace is checked against :attr:`workspaces`."""
        slug, patch = validate_slug(slug), validated(ProjectUpdate, data)
        if patch.workspace is not None:
            workspace = self.workspaces.place(patch.workspace)
            self.workspaces.check_overlap(workspace, slug, await self.backend.records.list_projects())
            patch = patch.model_copy(update={"workspace": workspace})
        project = await self.backend.records.update_project(slug, patch)
        self._project_changed(project.slug)
        return project

    # -- missions ---------------------------------------------------------------------------
    async def create_mission(self, project: str, data: MissionCreate | Mapping[str, Any]) -> Mission:
        """Create a mission in a project."""
        return await self.backend.records.create_mission(validate_slug(project), validated(MissionCreate, data))

    async def get_mission(self, project: str, mission: str) -> Mission:
        """Return a mission."""
        return await self.backend.records.get_mission(validate_slug(project), validate_slug(mission))

    async def list_missions(self, project: str) -> list[Mission]:
        """A project's missions."""
        return await self.backend.records.list_missions(validate_slug(project))

    async def update_mission(self, project: str, mission: str, data: MissionCreate | Mapping[str, Any]) -> Mission:
        """Replace a mission's name/status/milestones/tasks_file (workspace sync adds milestones)."""
        slug, mid = validate_slug(project), validate_slug(mission)
        return await self.backend.records.update_mission(slug, mid, validated(MissionCreate, data))

    # -- workspace sync bases -----------------------------------------------------------------
    async def get_sync_state(self, project: str, path: str) -> dict[str, Any] | None:
        """The stored sync state (base, errors) of a workspace file, or None."""
        return await self.backend.records.get_sync_state(validate_slug(project), path)

    async def put_sync_state(
        self, project: str, path: str, state: dict[str, Any], rows: Mapping[str, dict[str, Any] | None] | None = None
    ) -> None:
        """Store (replace) the sync state of a workspace file; *rows* changes its base rows (None removes one)."""
        await self.backend.records.put_sync_state(validate_slug(project), path, state, rows)

    async def get_sync_rows(self, project: str, path: str) -> dict[str, dict[str, Any]]:
        """The base rows of a workspace file by task key (row values and history; issue 17)."""
        return await self.backend.records.get_sync_rows(validate_slug(project), path)

    # -- tasks ------------------------------------------------------------------------------
    async def create_task(self, project: str, data: TaskCreate | Mapping[str, Any]) -> Task:
        """Create one task."""
        (task,) = await self.create_tasks(project, [data])
        return task

    async def create_tasks(self, project: str, items: Sequence[TaskCreate | Mapping[str, Any]]) -> list[Task]:
        """Create many tasks in one transaction (all or nothing); ``#i`` deps name batch items."""
        if not items:
            raise exceptions.ValidationError("a batch needs at least one task")
        if len(items) > MAX_BATCH:
            raise exceptions.ValidationError(f"a batch holds at most {MAX_BATCH} tasks, got {len(items)}")
        creates = []
        for i, item in enumerate(items):
            try:
                creates.append(validated(TaskCreate, item))
            except exceptions.ValidationError as exc:
                if len(items) == 1:
                    raise
                raise type(exc)(f"task #{i}: {exc.message}", index=i, **exc.details) from None
        slug = validate_slug(project)
        with tracing.enqueue_spans(slug, creates):
            return await self.backend.records.create_tasks(slug, creates)

    async def create_discovered_task(
        self, project: str, data: TaskCreate | Mapping[str, Any], discovered_from: str, token: str
    ) -> Task:
        """Create a task its holder found while working on *discovered_from* (issue 11): the lease
        *token* on that task is checked and renewed first (LeaseError if it is not the live lease);
        the new task records ``extra.discovered_from``."""
        slug, key = validate_slug(project), validate_key(discovered_from)
        await self.heartbeat(slug, key, token)
        item = validated(TaskCreate, data)
        item = item.model_copy(update={"extra": {**item.extra, "discovered_from": key}})
        return await self.create_task(slug, item)

    async def get_task(self, project: str, key: str) -> Task:
        """Return one task."""
        return await self.backend.records.get_task(validate_slug(project), validate_key(key))

    async def get_tasks(self, project: str, keys: Sequence[str]) -> list[Task]:
        """The existing tasks among *keys* (results lookups), in the order asked."""
        if len(keys) > MAX_PAGE:
            raise exceptions.ValidationError(f"ask for at most {MAX_PAGE} keys at once, got {len(keys)}")
        return await self.backend.records.get_tasks(validate_slug(project), [validate_key(k) for k in keys])

    async def list_tasks(
        self,
        project: str,
        filters: TaskFilter | Mapping[str, Any] | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> TaskPage:
        """List tasks with filters and cursor pagination."""
        if not 1 <= limit <= MAX_PAGE:
            raise exceptions.ValidationError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
        f = validated(TaskFilter, filters or {})
        return await self.backend.records.list_tasks(validate_slug(project), f, limit, cursor)

    async def update_task(
        self,
        project: str,
        key: str,
        patch: TaskUpdate | Mapping[str, Any],
        expected_version: int | None = None,
        actor: str = "api",
    ) -> Task:
        """Patch a task; with *expected_version*, refuse (VersionConflict) if it changed since."""
        return await self.backend.records.update_task(
            validate_slug(project), validate_key(key), validated(TaskUpdate, patch), expected_version, actor
        )

    async def cancel_task(self, project: str, key: str, reason: str | None = None, actor: str = "api") -> Task:
        """Cancel a task."""
        if reason is not None:
            _check_text("reason", reason)
        return await self.backend.records.cancel_task(validate_slug(project), validate_key(key), reason, actor)

    async def add_note(
        self, project: str, key: str, author: str, text: str, token: str | None = None, *, system: bool = False
    ) -> Note:
        """Append a note to a task.

        Args:
            system: the service itself writes it (the sync); only then may *author* be a service name.
        """
        if not text or not text.strip():
            raise exceptions.ValidationError("note text must not be empty")
        if not author or not author.strip():
            raise exceptions.ValidationError("note author must not be empty")
        if not system:
            check_author(author)
        _check_text("text", text)
        _check_text("author", author)
        slug, key = validate_slug(project), validate_key(key)
        if token is not None:
            # any call carrying the lease token renews the lease (for the length it was granted)
            await self.heartbeat(slug, key, token)
        try:
            return await self.backend.records.add_note(slug, key, author.strip(), text, token)
        except exceptions.LeaseError as exc:
            raise await self._explain(slug, key, exc) from None

    async def list_notes(self, project: str, key: str) -> list[Note]:
        """A task's notes."""
        return await self.backend.records.list_notes(validate_slug(project), validate_key(key))

    async def blockers(self, project: str, key: str) -> list[Task]:
        """What blocks this task (its deps not yet done)."""
        return await self.backend.records.blockers(validate_slug(project), validate_key(key))

    async def dependents(self, project: str, key: str) -> list[Task]:
        """What this task unblocks (its direct dependents)."""
        return await self.backend.records.dependents(validate_slug(project), validate_key(key))

    async def list_events(self, project: str, after_id: int = 0, limit: int = 1000) -> list[Event]:
        """Events since *after_id*."""
        if after_id < 0:
            raise exceptions.ValidationError(f"after_id must be >= 0, got {after_id}")
        return await self.backend.records.list_events(validate_slug(project), after_id, min(limit, 10_000))

    async def task_events(self, project: str, key: str, limit: int = 1000) -> list[Event]:
        """One task's history (its *limit* most recent events, oldest first)."""
        if not 1 <= limit <= 10_000:
            raise exceptions.ValidationError(f"limit must be between 1 and 10000, got {limit}")
        return await self.backend.records.list_task_events(validate_slug(project), validate_key(key), limit)

    def subscribe(self, project: str) -> AsyncIterator[Event]:
        """Live events of a project."""
        return self.backend.events.subscribe(validate_slug(project))

    async def stats(self, project: str) -> QueueStats:
        """Counts and depths for a project."""
        stats = await self.backend.records.stats(validate_slug(project))
        depths = await self.backend.dispatch.queue_depths(project)
        return stats.model_copy(update={"queue_depth_by_role": depths})

    async def dead_letter(self, project: str, limit: int = 100) -> list[Task]:
        """Failed tasks."""
        return await self.backend.records.dead_letter(validate_slug(project), limit)

    async def ready_tasks(self, project: str, roles: Sequence[str] | None = None, limit: int = 20) -> ReadyList:
        """Ready tasks of *roles* in the one dispatch order (``domain.dispatch_order``), the first
        *limit* (1-1000) and how many there are in all. ``next`` is ``ready_tasks(limit=1)``.

        Spelled as the client and the record store spell it (the client's ``ready()`` is ``/readyz``),
        so the CLI hands either to its commands."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise exceptions.ValidationError(f"limit must be an integer between 1 and {MAX_PAGE}, got {limit!r}")
        for role in roles or ():
            if not role or len(role) > 64:
                raise exceptions.ValidationError(f"role names are 1-64 characters, got {role!r}", field="role")
        return await self.backend.records.ready_tasks(validate_slug(project), list(roles) if roles else None, limit)

    # -- dispatch ---------------------------------------------------------------------------
    @staticmethod
    def _check_claim_args(agent: str, wait: float, lease_seconds: float | None) -> None:
        if not agent or not agent.strip() or len(agent) > 200:
            raise exceptions.ValidationError(f"agent id must be 1-200 characters, got {agent!r}")
        _check_text("agent", agent)
        if wait < 0 or wait > 300:
            raise exceptions.ValidationError(f"wait must be between 0 and 300 seconds, got {wait}")
        _check_lease(lease_seconds)

    async def claim(
        self,
        project: str,
        agent: str,
        roles: Sequence[str] | None = None,
        wait: float = 0.0,
        lease_seconds: float | None = None,
        lease_profile: LeaseProfile = "worker",
    ) -> Claim | None:
        """Claim the next ready task (or None after *wait* seconds).

        ``lease_profile="agent"`` is an agent-facing claim: :meth:`claim_next` (the best ready task
        by the dispatch order, with the agent lease unless *lease_seconds* is given).
        """
        if lease_profile == "agent":
            return await self.claim_next(project, agent, roles, lease_seconds, wait)
        self._check_claim_args(agent, wait, lease_seconds)
        started = tracing.now_ns()
        got = await self.backend.dispatch.claim(validate_slug(project), agent, roles or None, wait, lease_seconds)
        if got is not None:
            tracing.record_claims(project, agent, [got.task], started)
        return _with_seconds(got, lease_seconds if lease_seconds is not None else self.backend.config.lease_seconds)

    async def claim_next(
        self,
        project: str,
        agent: str,
        roles: Sequence[str] | None = None,
        lease_seconds: float | None = None,
        wait: float = 0.0,
    ) -> Claim | None:
        """Atomically claim the single best ready task of *roles* for an agent (CLI ``next --claim``,
        ``claim``, MCP ``claim_next``): dispatch order, agent lease (``QUEUE_AGENT_LEASE_SECONDS``)
        unless *lease_seconds* is given. With *wait*, waits for the next task if none is ready now."""
        self._check_claim_args(agent, wait, lease_seconds)
        lease = self.agent_lease(lease_seconds)
        slug, names = validate_slug(project), list(roles) if roles else None
        started = tracing.now_ns()
        got = await self.backend.dispatch.claim_next(slug, agent, names, lease)
        if got is None and wait > 0:
            got = await self.backend.dispatch.claim(slug, agent, names, wait, lease)
        if got is not None:
            tracing.record_claims(slug, agent, [got.task], started)
        return _with_seconds(got, lease)

    async def claim_many(
        self,
        project: str,
        agent: str,
        roles: Sequence[str] | None = None,
        limit: int = 10,
        wait: float = 0.0,
        lease_seconds: float | None = None,
    ) -> list[Claim]:
        """Claim up to *limit* (1-1000) ready tasks at once, best first; ``[]`` after *wait* seconds."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise exceptions.ValidationError(f"limit must be an integer between 1 and {MAX_PAGE}, got {limit!r}")
        self._check_claim_args(agent, wait, lease_seconds)
        started = tracing.now_ns()
        claims = await self.backend.dispatch.claim_many(
            validate_slug(project), agent, roles or None, limit, wait, lease_seconds
        )
        tracing.record_claims(project, agent, [c.task for c in claims], started)
        seconds = lease_seconds if lease_seconds is not None else self.backend.config.lease_seconds
        return [c for c in (_with_seconds(c, seconds) for c in claims) if c is not None]

    async def complete_many(
        self, project: str, items: Sequence[tuple[str, str, Any]]
    ) -> list[Task | exceptions.QueueServiceError]:
        """Complete up to 1000 claimed tasks, each ``(key, token, result)``; a LeaseError in the slot of
        each refused item (the others complete)."""
        if len(items) > MAX_PAGE:
            raise exceptions.ValidationError(f"at most {MAX_PAGE} items per call, got {len(items)}")
        checked: list[tuple[str, str, Any]] = []
        for i, (key, token, result) in enumerate(items):
            checked.append((validate_key(key), token, _check_result(result, f"items[{i}].result")))
        slug = validate_slug(project)
        started = tracing.now_ns()
        out = await self.backend.dispatch.complete_many(slug, checked)
        for i, got in enumerate(out):
            if isinstance(got, exceptions.LeaseError) and not got.details.get("reason"):
                out[i] = await self._explain(slug, checked[i][0], got)
            elif isinstance(got, Task):
                tracing.record_finish("queue.complete", got, started)
        return out

    async def heartbeat(self, project: str, key: str, token: str, lease_seconds: float | None = None) -> Lease:
        """Extend a lease to now + *lease_seconds*, by default the length the claim was granted."""
        _check_lease(lease_seconds)
        slug, key = validate_slug(project), validate_key(key)
        seconds = lease_seconds if lease_seconds is not None else domain.lease_length_of(token)
        try:
            lease = await self.backend.dispatch.heartbeat(slug, key, token, seconds)
        except exceptions.LeaseError as exc:
            raise await self._explain(slug, key, exc) from None
        if lease.seconds is None:
            lease = lease.model_copy(update={"seconds": seconds or self.backend.config.lease_seconds})
        return lease

    async def complete(self, project: str, key: str, token: str, result: Any = None) -> Task:
        """Complete a claimed task."""
        _check_result(result, "result")
        slug, key = validate_slug(project), validate_key(key)
        started = tracing.now_ns()
        try:
            task = await self.backend.dispatch.complete(slug, key, token, result)
        except exceptions.LeaseError as exc:
            raise await self._explain(slug, key, exc) from None
        tracing.record_finish("queue.complete", task, started)
        return task

    async def fail(self, project: str, key: str, token: str, error: str, retryable: bool = True) -> Task:
        """Fail a claimed task."""
        _check_text("error", error)
        slug, key = validate_slug(project), validate_key(key)
        started = tracing.now_ns()
        try:
            task = await self.backend.dispatch.fail(slug, key, token, error, retryable)
        except exceptions.LeaseError as exc:
            raise await self._explain(slug, key, exc) from None
        tracing.record_finish("queue.fail", task, started, error)
        return task

    async def release(self, project: str, key: str, token: str) -> Task:
        """Give a claimed task back."""
        slug, key = validate_slug(project), validate_key(key)
        try:
            return await self.backend.dispatch.release(slug, key, token)
        except exceptions.LeaseError as exc:
            raise await self._explain(slug, key, exc) from None

    async def retry_task(self, project: str, key: str, actor: str = "api") -> Task:
        """Revive a failed task (spelled like ``cancel_task`` and the client's ``retry_task``)."""
        return await self.backend.dispatch.retry(validate_slug(project), validate_key(key), actor)

    #: Deprecated spellings, kept for one release (CHANGELOG: use ``ready_tasks``/``retry_task``).
    ready = ready_tasks
    retry = retry_task

    # -- agents (issue 13) ------------------------------------------------------------------
    async def register_agent(self, project: str, data: AgentRegister | Mapping[str, Any]) -> Agent:
        """Register an agent (or replace its roles, labels and capacity, and undrain it)."""
        return await self.backend.agents.register_agent(validate_slug(project), validated(AgentRegister, data))

    async def agent_heartbeat(self, project: str, agent_id: str) -> Agent:
        """The agent is alive: ready again (unless drained)."""
        return await self.backend.agents.agent_heartbeat(validate_slug(project), _agent_id(agent_id))

    async def drain_agent(self, project: str, agent_id: str) -> Agent:
        """Hand the agent no new work; what it holds it keeps."""
        return await self.backend.agents.drain_agent(validate_slug(project), _agent_id(agent_id))

    async def list_agents(self, project: str) -> list[Agent]:
        """Every agent of the project with readiness, holdings and counts."""
        return await self.backend.agents.list_agents(validate_slug(project))

    # -- snapshots --------------------------------------------------------------------------
    async def export_project(self, project: str) -> ProjectSnapshot:
        """Everything in a project, for moving it to another backend."""
        return await self.backend.records.export_project(validate_slug(project))

    async def import_project(self, snapshot: ProjectSnapshot) -> Project:
        """Recreate an exported project."""
        return await self.backend.records.import_project(snapshot)

    # -- streams (issue 14) -----------------------------------------------------------------
    async def publish(
        self, project: str, key: str, chunks: Sequence[str], token: str, stream: str = DEFAULT_STREAM
    ) -> list[str]:
        """Append chunks to a task's stream (lease holder only; renews the lease). Returns their ids."""
        slug, key = validate_slug(project), validate_key(key)
        try:
            return await self.backend.streams.publish(slug, key, chunks, token, stream)
        except exceptions.LeaseError as exc:
            raise await self._explain(slug, key, exc) from None

    async def end_stream(self, project: str, key: str, token: str, stream: str = DEFAULT_STREAM) -> str:
        """Mark a task's stream done (lease holder only); followers stop after the last chunk."""
        slug, key = validate_slug(project), validate_key(key)
        try:
            return await self.backend.streams.done(slug, key, token, stream)
        except exceptions.LeaseError as exc:
            raise await self._explain(slug, key, exc) from None

    async def read_stream(
        self, project: str, key: str, after: str | None = None, stream: str = DEFAULT_STREAM, limit: int = 1000
    ) -> StreamPage:
        """Retained chunks of a task's stream after the cursor. Raises TaskNotFound for an unknown task.

        ``done`` is also true once the task has finished (:data:`STREAM_FINAL_STATUSES`) and this
        page reaches the end of what was published, whether or not the holder sent ``done``.
        """
        slug, key = validate_slug(project), validate_key(key)
        # the status is read before the chunks: whatever the holder published before finishing is in the page
        task = await self.backend.records.get_task(slug, key)
        page = await self.backend.streams.read(slug, key, after, stream, limit)
        if not page.done and task.status in STREAM_FINAL_STATUSES and len(page.chunks) < min(limit, 10_000):
            page = page.model_copy(update={"done": True})
        return page

    async def follow_stream(
        self, project: str, key: str, after: str | None = None, stream: str = DEFAULT_STREAM, idle_seconds: float = 15.0
    ) -> AsyncGenerator[StreamChunk | None, None]:
        """Chunks after the cursor, then live ones, ending with the done marker; None = idle tick.

        A task that finishes (completed, failed, cancelled, or handed to review) without its holder
        sending ``done`` ends its followers too: once the stream has been quiet for
        ``stream_check_seconds`` and the task is finished, the rest is read and a done marker (with
        the id of the last chunk read) is yielded.
        """
        slug, key = validate_slug(project), validate_key(key)
        await self.backend.records.get_task(slug, key)
        return self._follow_until_finished(slug, key, parse_cursor(after), stream, idle_seconds)

    async def _follow_until_finished(
        self, project: str, key: str, cursor: str, stream: str, idle_seconds: float
    ) -> AsyncGenerator[StreamChunk | None, None]:
        check = max(0.01, min(idle_seconds, self.stream_check_seconds))
        quiet = 0.0
        inner = self.backend.streams.follow(project, key, cursor, stream, idle_seconds=check)
        async with contextlib.aclosing(inner):
            async for item in inner:
                if item is not None:
                    cursor, quiet = item.id, 0.0
                    yield item
                    continue
                if await self._task_finished(project, key):
                    while True:  # what was published before it finished, then the end
                        page = await self.backend.streams.read(project, key, cursor, stream, 1000)
                        for chunk in page.chunks:
                            yield chunk
                        cursor = page.cursor
                        if page.done:
                            return
                        if not page.chunks:
                            break
                    yield StreamChunk(id=cursor, done=True)
                    return
                quiet += check
                if quiet >= idle_seconds:
                    quiet = 0.0
                    yield None

    async def _task_finished(self, project: str, key: str) -> bool:
        try:
            task = await self.backend.records.get_task(project, key)
        except exceptions.BackendUnavailable:
            return False  # keep following; the stream itself reports a lasting outage
        return task.status in STREAM_FINAL_STATUSES
