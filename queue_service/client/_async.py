"""The asynchronous client: one line per endpoint over :meth:`AsyncClient.send`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, Unpack

import httpx

from queue_service import exceptions
from queue_service.agents import Agent, AgentRegister
from queue_service.client import _endpoints as api
from queue_service.client._base import (
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    BaseClient,
    Request,
    RetryPolicy,
    error_from_response,
)
from queue_service.client._endpoints import TaskQuery
from queue_service.client._sync import Client
from queue_service.client_streams import EventFeed, Feed, StreamFeed
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
    ProjectUpdate,
    QueueStats,
    ReadyList,
    Task,
    TaskCreate,
    TaskFilter,
    TaskPage,
    TaskUpdate,
)
from queue_service.wire import DEFAULT_STREAM, HealthStatus, ResultsResponse, StreamChunk, StreamPage
from queue_service.worker import AsyncWorker, completed_with

__all__ = ["AsyncClient"]

T = TypeVar("T")


class AsyncClient(BaseClient):
    """Asynchronous client; same methods as :class:`Client`, awaited.

    Args:
        base_url: where the service listens (default ``http://127.0.0.1:8000``).
        token: API token (``qs_…``), sent as ``Authorization: Bearer``; default: ``$QUEUE_TOKEN``.
        timeout: seconds per request (claims add their ``wait_seconds``).
        retry: backoff policy for retryable failures.
        transport: an httpx async transport (tests: ``httpx.ASGITransport(app=...)``).
        http_client: an ``httpx.AsyncClient`` to use as is; the caller keeps ownership.
        agent: the default agent id for claims (default: ``new_agent_id()``).
        heartbeat_transport: a *sync* transport for the worker's heartbeat thread. By default the
            thread uses its own connection to ``base_url`` when the client talks HTTP, and
            otherwise (an injected async transport) sends through the event loop.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
        agent: str | None = None,
        heartbeat_transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, token, timeout, retry, agent)
        self._owns_http = http_client is None
        self._custom_transport = transport is not None or http_client is not None
        self._heartbeat_transport = heartbeat_transport
        self._http = http_client or httpx.AsyncClient(base_url=self.base_url, transport=transport, timeout=timeout)
        self._sync: Client | None = None

    # -- plumbing ---------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close the connection pool (unless it was passed in)."""
        if self._owns_http:
            await self._http.aclose()
        if self._sync is not None:
            self._sync.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def send(self, request: Request[T]) -> T:
        """Send *request* (retrying as its ``idempotent`` flag allows) and read its answer."""
        while True:
            try:
                response = await self._http.request(**self._request_args(request))
            except httpx.TransportError as exc:
                await asyncio.sleep(self._retry_after_error(request, exc))
                continue
            delay = self._retry_after_response(request, response)
            if delay is None:
                return request.parse(response)
            await asyncio.sleep(delay)

    async def _follow(self, feed: Feed[T]) -> AsyncGenerator[T, None]:
        """Yield a server-sent-event feed's items, reconnecting as *feed* decides."""
        failures = 0
        while True:
            path, params, headers = feed.request(self._headers)
            try:
                async with self._http.stream(**self._stream_args(path, params, headers)) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        raise error_from_response(response)
                    failures = 0
                    async for line in response.aiter_lines():
                        item = feed.feed(line)
                        if item is not None:
                            yield item
            except httpx.TransportError as exc:
                failures += 1
                if feed.gives_up(failures):
                    raise self._unreachable(exc) from exc
            pause = feed.pause(failures)
            if pause is None:
                return
            await asyncio.sleep(self.retry.delay(*pause))

    # -- health -----------------------------------------------------------------------------
    async def health(self) -> HealthStatus:
        """``GET /healthz``."""
        return await self.send(api.health())

    async def ready(self) -> HealthStatus:
        """``GET /readyz``; raises BackendUnavailable when the service is not ready."""
        return await self.send(api.readiness())

    async def metrics(self) -> str:
        """``GET /metrics`` (Prometheus text)."""
        return await self.send(api.metrics())

    # -- projects and missions --------------------------------------------------------------
    async def create_project(self, data: ProjectCreate | Mapping[str, Any]) -> Project:
        """Create a project (``{"slug": "web", "name": …, "key_prefix": "WEB"}``)."""
        return await self.send(api.create_project(data))

    async def list_projects(self) -> list[Project]:
        """The projects this token may read."""
        return await self.send(api.list_projects())

    async def get_project(self, project: str) -> Project:
        """One project."""
        return await self.send(api.get_project(project))

    async def update_project(self, project: str, patch: ProjectUpdate | Mapping[str, Any]) -> Project:
        """Change a project's name, workspace, routing or concurrency limits."""
        return await self.send(api.update_project(project, patch))

    async def register_agent(self, project: str, data: AgentRegister | Mapping[str, Any]) -> Agent:
        """Register an agent ``{"id", "roles", "labels", "capacity"}`` (or update it; undrains it)."""
        return await self.send(api.register_agent(project, data))

    async def agent_heartbeat(self, project: str, agent_id: str) -> Agent:
        """Keep the agent ready (call more often than ``QUEUE_AGENT_READY_SECONDS``)."""
        return await self.send(api.agent_heartbeat(project, agent_id))

    async def drain_agent(self, project: str, agent_id: str) -> Agent:
        """Hand the agent no new work."""
        return await self.send(api.drain_agent(project, agent_id))

    async def list_agents(self, project: str) -> list[Agent]:
        """Every agent: readiness, capacity, what it holds with the lease left, done/failed."""
        return await self.send(api.list_agents(project))

    async def create_mission(self, project: str, data: MissionCreate | Mapping[str, Any]) -> Mission:
        """Create a mission."""
        return await self.send(api.create_mission(project, data))

    async def list_missions(self, project: str) -> list[Mission]:
        """A project's missions."""
        return await self.send(api.list_missions(project))

    async def get_mission(self, project: str, mission: str) -> Mission:
        """One mission."""
        return await self.send(api.get_mission(project, mission))

    # -- tasks ------------------------------------------------------------------------------
    async def create_task(
        self,
        project: str,
        data: TaskCreate | Mapping[str, Any] | str,
        *,
        discovered_from: str | None = None,
        token: str | None = None,
    ) -> Task:
        """Create one task (*data* may be just its title). With *discovered_from* and *token* (your
        lease on that task), an agent creates the work it found there (``extra.discovered_from``)."""
        return await self.send(api.create_task(project, data, discovered_from, token))

    async def create_discovered_task(
        self, project: str, data: TaskCreate | Mapping[str, Any], discovered_from: str, token: str
    ) -> Task:
        """:meth:`create_task` with *discovered_from* and *token*, in QueueService's spelling."""
        return await self.send(api.create_task(project, data, discovered_from, token))

    async def create_tasks(self, project: str, items: Iterable[TaskCreate | Mapping[str, Any]]) -> list[Task]:
        """Create many tasks, all or nothing (``depends_on: ["#0"]`` names the batch's first task)."""
        return await self.send(api.create_tasks(project, items))

    async def list_tasks(
        self,
        project: str,
        filters: TaskFilter | Mapping[str, Any] | None = None,
        limit: int = 100,
        cursor: str | None = None,
        **query: Unpack[TaskQuery],
    ) -> TaskPage:
        """One page of tasks matching every filter (status, role, assignee, mission, milestone, label,
        ready), given as keywords or, as QueueService takes them, one *filters* mapping; pass
        ``page.next_cursor`` for the next."""
        return await self.send(api.list_tasks(project, api.task_query(filters, query), limit, cursor))

    async def iter_tasks(
        self, project: str, *, page_size: int = 500, **query: Unpack[TaskQuery]
    ) -> AsyncIterator[Task]:
        """Every matching task (filters as :meth:`list_tasks`), fetching pages as needed."""
        cursor: str | None = None
        while True:
            page = await self.send(api.list_tasks(project, query, page_size, cursor))
            for task in page.items:
                yield task
            cursor = page.next_cursor
            if cursor is None:
                return

    async def get_task(self, project: str, key: str) -> Task:
        """One task (its ``version`` is what ``expected_version`` compares against)."""
        return await self.send(api.get_task(project, key))

    async def update_task(
        self, project: str, key: str, patch: TaskUpdate | Mapping[str, Any], expected_version: int | None = None
    ) -> Task:
        """Change the fields given; with *expected_version*, VersionConflict if it changed since."""
        return await self.send(api.update_task(project, key, patch, expected_version))

    async def add_note(
        self, project: str, key: str, text: str, *, author: str | None = None, token: str | None = None
    ) -> Note:
        """Append a note (with *token*, as the lease holder)."""
        return await self.send(api.add_note(project, key, text, author, token))

    async def list_notes(self, project: str, key: str) -> list[Note]:
        """A task's notes, oldest first."""
        return await self.send(api.list_notes(project, key))

    async def cancel_task(self, project: str, key: str, reason: str | None = None) -> Task:
        """Cancel a task."""
        return await self.send(api.cancel_task(project, key, reason))

    async def retry_task(self, project: str, key: str) -> Task:
        """Bring a failed/blocked/cancelled task back to not-started."""
        return await self.send(api.retry_task(project, key))

    async def blockers(self, project: str, key: str) -> list[Task]:
        """The task's unfinished dependencies."""
        return await self.send(api.blockers(project, key))

    async def dependents(self, project: str, key: str) -> list[Task]:
        """The tasks depending directly on this one."""
        return await self.send(api.dependents(project, key))

    async def results(self, project: str, keys: Sequence[str]) -> ResultsResponse:
        """Status and result of the given tasks."""
        return await self.send(api.results(project, keys))

    async def stats(self, project: str) -> QueueStats:
        """Counts per status, depth per role, in flight, dead letters."""
        return await self.send(api.stats(project))

    async def dead_letter(self, project: str, limit: int = 100) -> list[Task]:
        """Failed tasks, most recent first."""
        return await self.send(api.dead_letter(project, limit))

    async def ready_tasks(self, project: str, roles: Sequence[str] | None = None, limit: int = 20) -> ReadyList:
        """Ready tasks in the dispatch order (the first *limit*, and the total)."""
        return await self.send(api.ready_tasks(project, roles, limit))

    # -- dispatch ---------------------------------------------------------------------------
    async def claim(
        self,
        project: str,
        agent: str | None = None,
        roles: Sequence[str] | None = None,
        wait_seconds: float = 0.0,
        lease_seconds: float | None = None,
        lease_profile: str = "worker",
    ) -> Claim | None:
        """Claim the next ready task (waiting up to *wait_seconds*), or None.

        ``lease_profile="agent"``: an agent-facing claim (the best ready task, the server's agent lease).
        """
        agent = agent or self.agent_id
        return await self.send(api.claim(project, agent, roles, wait_seconds, lease_seconds, lease_profile))

    async def claim_many(
        self,
        project: str,
        agent: str | None = None,
        *,
        roles: Sequence[str] | None = None,
        limit: int = 10,
        wait_seconds: float = 0.0,
        lease_seconds: float | None = None,
    ) -> list[Claim]:
        """Claim up to *limit* ready tasks in one call, best first (``[]`` when none became ready
        within *wait_seconds*); each claim has its own token."""
        agent = agent or self.agent_id
        return await self.send(api.claim_many(project, agent, roles, limit, wait_seconds, lease_seconds))

    async def complete_many(
        self, project: str, items: Sequence[tuple[str, str, Any]]
    ) -> list[Task | exceptions.QueueServiceError]:
        """Finish up to 1000 claimed tasks, each ``(key, token, result)``, in one call: per item the
        task, or in its slot the error that refused it (e.g. LeaseError); retried like :meth:`complete`,
        and an item refused on a retry because an earlier try landed is returned as completed."""
        request = api.complete_many(project, items)
        out = await self.send(request)
        if request.tries > 1:
            for i, ((key, _token, result), got) in enumerate(zip(items, out, strict=True)):
                if isinstance(got, exceptions.LeaseError):
                    with contextlib.suppress(exceptions.QueueServiceError):
                        task = await self.get_task(project, key)
                        if completed_with(task, result):
                            out[i] = task
        return out

    async def claim_next(
        self,
        project: str,
        agent: str | None = None,
        roles: Sequence[str] | None = None,
        lease_seconds: float | None = None,
        wait_seconds: float = 0.0,
    ) -> Claim | None:
        """An agent-facing claim (``lease_profile="agent"``): the best ready task by the dispatch order,
        with the server's agent lease unless *lease_seconds* is given; QueueService.claim_next's order."""
        agent = agent or self.agent_id
        return await self.send(api.claim(project, agent, roles, wait_seconds, lease_seconds, "agent"))

    async def heartbeat(self, project: str, key: str, token: str, lease_seconds: float | None = None) -> Lease:
        """Extend a lease; LeaseError if it was lost."""
        return await self.send(api.heartbeat(project, key, token, lease_seconds))

    async def complete(self, project: str, key: str, token: str, result: Any = None) -> Task:
        """Finish a claimed task with *result* (any JSON value).

        Retried on 503 and transport errors (a token completes a task at most once, so a repeat is
        safe); if a retry is refused because an earlier try did land, the completed task is returned.
        """
        request = api.complete(project, key, token, result)
        try:
            return await self.send(request)
        except exceptions.LeaseError:
            if request.tries > 1:
                task = await self.get_task(project, key)
                if completed_with(task, result):
                    return task
            raise

    async def fail(self, project: str, key: str, token: str, error: str, retryable: bool = True) -> Task:
        """Report a failed attempt (retried on 503 like :meth:`complete`: a token fails a task once)."""
        return await self.send(api.fail(project, key, token, error, retryable))

    async def release(self, project: str, key: str, token: str) -> Task:
        """Give a claimed task back without counting an attempt."""
        return await self.send(api.release(project, key, token))

    # -- events -----------------------------------------------------------------------------
    def events(
        self, project: str, *, last_event_id: int | None = None, follow: bool = True, reconnect: bool = True
    ) -> AsyncIterator[Event]:
        """The project's events, oldest first, resuming after *last_event_id*.

        With *follow*, keeps streaming live events (reconnecting with the last id seen if the
        connection drops and *reconnect* is set); without, replays the log and stops.
        """
        return self._follow(EventFeed(project, last_event_id, follow, reconnect, self.retry.attempts))

    async def list_events(self, project: str, after_id: int = 0, limit: int = 1000) -> list[Event]:
        """The project's logged events after *after_id*, oldest first, at most *limit*: a replay of
        :meth:`events` that does not follow (QueueService's spelling)."""
        out: list[Event] = []
        feed = self._follow(EventFeed(project, after_id, False, True, self.retry.attempts))
        try:
            async for event in feed:
                out.append(event)
                if len(out) >= limit:
                    break
        finally:
            with contextlib.suppress(Exception):  # the replay is read; closing its connection decides nothing
                await feed.aclose()
        return out

    # -- task output streams (issue 14) ------------------------------------------------------
    async def publish(
        self, project: str, key: str, chunks: str | Sequence[str], token: str, *, stream: str = DEFAULT_STREAM
    ) -> list[str]:
        """Append chunk(s) to the task's stream as the lease holder (renews the lease); their ids."""
        return await self.send(api.publish(project, key, chunks, token, stream))

    async def end_stream(self, project: str, key: str, token: str, *, stream: str = DEFAULT_STREAM) -> None:
        """Mark the task's stream done: followers stop after the last chunk."""
        await self.send(api.end_stream(project, key, token, stream))

    def stream(
        self,
        project: str,
        key: str,
        *,
        after: str | None = None,
        stream: str = DEFAULT_STREAM,
        follow: bool = True,
        include_done: bool = False,
    ) -> AsyncIterator[StreamChunk]:
        """The task's chunks from the start (or after *after*), live until the stream is done;
        reconnects with the last id seen if the connection drops. The done marker is yielded only
        with *include_done*."""
        return self._follow(StreamFeed(project, key, after, stream, follow, include_done, self.retry.attempts))

    async def read_stream(
        self, project: str, key: str, after: str | None = None, stream: str = DEFAULT_STREAM
    ) -> StreamPage:
        """The task's chunks after *after* that exist now (the done marker last, once the stream ended),
        as one page: :meth:`stream` without following (QueueService's spelling)."""
        items = [
            c async for c in self.stream(project, key, after=after, stream=stream, follow=False, include_done=True)
        ]
        return api.stream_page(items, after)

    # -- coord parity -----------------------------------------------------------------------
    async def coord_status(self, project: str | None = None, mission: str | None = None) -> dict[str, Any]:
        """``GET /api/coord/status``: mission status in coord's shape."""
        return await self.send(api.coord_status(project, mission))

    async def coord_tasks(
        self, project: str | None = None, mission: str | None = None, status: str | None = None
    ) -> dict[str, Any]:
        """``GET /api/coord/tasks``: the mission's tasks in coord's field names."""
        return await self.send(api.coord_tasks(project, mission, status))

    async def coord_task(self, task_id: str, project: str | None = None) -> dict[str, Any]:
        """``GET /api/coord/tasks/{id}``: one task with details, notes, blockers."""
        return await self.send(api.coord_task(task_id, project))

    # -- worker -----------------------------------------------------------------------------
    def worker(
        self,
        project: str,
        roles: Sequence[str] | None = None,
        agent: str | None = None,
        *,
        lease_seconds: float | None = None,
        heartbeat_seconds: float | None = None,
        wait_seconds: float = 10.0,
        stop_when_idle: bool = False,
        concurrency: int = 1,
    ) -> AsyncWorker:
        """A worker claiming tasks of *roles* in *project* (see ``queue_service.worker``).

        Heartbeats run in a thread. When this client talks HTTP itself (or a
        ``heartbeat_transport`` was given) the thread has its own connection, so even a coroutine
        that blocks the event loop keeps its lease; with an injected async transport the thread
        sends through the event loop, and a blocking coroutine would starve it (plain functions
        run in a thread and never do).

        ``concurrency``: how many tasks ``run(fn)`` works on at once; it claims in batches of its free
        slots (never more) and sends completions together (see ``queue_service.worker_slots``).
        """
        return AsyncWorker(
            self,
            project,
            agent or new_agent_id(),
            roles,
            self._beat_factory,
            lease_seconds=lease_seconds,
            heartbeat_seconds=heartbeat_seconds,
            wait_seconds=wait_seconds,
            stop_when_idle=stop_when_idle,
            concurrency=concurrency,
        )

    def _beat_factory(
        self, project: str, key: str, token: str, lease_seconds: float | None, loop: asyncio.AbstractEventLoop
    ) -> Callable[[], Lease]:
        if self._heartbeat_transport is not None or not self._custom_transport:
            if self._sync is None:
                self._sync = Client(
                    self.base_url,
                    token=self._token,
                    timeout=self.timeout,
                    retry=RetryPolicy(attempts=1),
                    transport=self._heartbeat_transport,
                    agent=self.agent_id,
                )
            sync = self._sync
            return lambda: sync.heartbeat(project, key, token, lease_seconds=lease_seconds)

        def through_loop() -> Lease:
            beat = self.heartbeat(project, key, token, lease_seconds=lease_seconds)
            future = asyncio.run_coroutine_threadsafe(beat, loop)
            return future.result(timeout=self.timeout)

        return through_loop
