"""The synchronous client: one line per endpoint over :meth:`Client.send`."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
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
from queue_service.worker import Worker, completed_with

__all__ = ["Client"]

T = TypeVar("T")


class Client(BaseClient):
    """Synchronous client.

    Args:
        base_url: where the service listens (default ``http://127.0.0.1:8000``).
        token: API token (``qs_…``), sent as ``Authorization: Bearer``; default: ``$QUEUE_TOKEN``.
        timeout: seconds per request (claims add their ``wait_seconds``).
        retry: backoff policy for retryable failures.
        transport: an httpx transport to use (tests).
        http_client: an ``httpx.Client`` to use as is; the caller keeps ownership.
        agent: the default agent id for claims (default: ``new_agent_id()``).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        http_client: httpx.Client | None = None,
        agent: str | None = None,
    ) -> None:
        super().__init__(base_url, token, timeout, retry, agent)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(base_url=self.base_url, transport=transport, timeout=timeout)

    # -- plumbing ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection pool (unless it was passed in)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, request: Request[T]) -> T:
        """Send *request* (retrying as its ``idempotent`` flag allows) and read its answer."""
        while True:
            try:
                response = self._http.request(**self._request_args(request))
            except httpx.TransportError as exc:
                time.sleep(self._retry_after_error(request, exc))
                continue
            delay = self._retry_after_response(request, response)
            if delay is None:
                return request.parse(response)
            time.sleep(delay)

    def _follow(self, feed: Feed[T]) -> Generator[T, None, None]:
        """Yield a server-sent-event feed's items, reconnecting as *feed* decides."""
        failures = 0
        while True:
            path, params, headers = feed.request(self._headers)
            try:
                with self._http.stream(**self._stream_args(path, params, headers)) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise error_from_response(response)
                    failures = 0
                    for line in response.iter_lines():
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
            time.sleep(self.retry.delay(*pause))

    # -- health -----------------------------------------------------------------------------
    def health(self) -> HealthStatus:
        """``GET /healthz``."""
        return self.send(api.health())

    def ready(self) -> HealthStatus:
        """``GET /readyz``; raises BackendUnavailable when the service is not ready."""
        return self.send(api.readiness())

    def metrics(self) -> str:
        """``GET /metrics`` (Prometheus text)."""
        return self.send(api.metrics())

    # -- projects and missions --------------------------------------------------------------
    def create_project(self, data: ProjectCreate | Mapping[str, Any]) -> Project:
        """Create a project (``{"slug": "web", "name": …, "key_prefix": "WEB"}``)."""
        return self.send(api.create_project(data))

    def list_projects(self) -> list[Project]:
        """The projects this token may read."""
        return self.send(api.list_projects())

    def get_project(self, project: str) -> Project:
        """One project."""
        return self.send(api.get_project(project))

    def update_project(self, project: str, patch: ProjectUpdate | Mapping[str, Any]) -> Project:
        """Change a project's name, workspace, routing or concurrency limits."""
        return self.send(api.update_project(project, patch))

    def register_agent(self, project: str, data: AgentRegister | Mapping[str, Any]) -> Agent:
        """Register an agent ``{"id", "roles", "labels", "capacity"}`` (or update it; undrains it)."""
        return self.send(api.register_agent(project, data))

    def agent_heartbeat(self, project: str, agent_id: str) -> Agent:
        """Keep the agent ready (call more often than ``QUEUE_AGENT_READY_SECONDS``)."""
        return self.send(api.agent_heartbeat(project, agent_id))

    def drain_agent(self, project: str, agent_id: str) -> Agent:
        """Hand the agent no new work."""
        return self.send(api.drain_agent(project, agent_id))

    def list_agents(self, project: str) -> list[Agent]:
        """Every agent: readiness, capacity, what it holds with the lease left, done/failed."""
        return self.send(api.list_agents(project))

    def create_mission(self, project: str, data: MissionCreate | Mapping[str, Any]) -> Mission:
        """Create a mission."""
        return self.send(api.create_mission(project, data))

    def list_missions(self, project: str) -> list[Mission]:
        """A project's missions."""
        return self.send(api.list_missions(project))

    def get_mission(self, project: str, mission: str) -> Mission:
        """One mission."""
        return self.send(api.get_mission(project, mission))

    # -- tasks ------------------------------------------------------------------------------
    def create_task(
        self,
        project: str,
        data: TaskCreate | Mapping[str, Any] | str,
        *,
        discovered_from: str | None = None,
        token: str | None = None,
    ) -> Task:
        """Create one task (*data* may be just its title). With *discovered_from* and *token* (your
        lease on that task), an agent creates the work it found there (``extra.discovered_from``)."""
        return self.send(api.create_task(project, data, discovered_from, token))

    def create_discovered_task(
        self, project: str, data: TaskCreate | Mapping[str, Any], discovered_from: str, token: str
    ) -> Task:
        """:meth:`create_task` with *discovered_from* and *token*, in QueueService's spelling."""
        return self.send(api.create_task(project, data, discovered_from, token))

    def create_tasks(self, project: str, items: Iterable[TaskCreate | Mapping[str, Any]]) -> list[Task]:
        """Create many tasks, all or nothing (``depends_on: ["#0"]`` names the batch's first task)."""
        return self.send(api.create_tasks(project, items))

    def list_tasks(
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
        return self.send(api.list_tasks(project, api.task_query(filters, query), limit, cursor))

    def iter_tasks(self, project: str, *, page_size: int = 500, **query: Unpack[TaskQuery]) -> Iterator[Task]:
        """Every matching task (filters as :meth:`list_tasks`), fetching pages as needed."""
        cursor: str | None = None
        while True:
            page = self.send(api.list_tasks(project, query, page_size, cursor))
            yield from page.items
            cursor = page.next_cursor
            if cursor is None:
                return

    def get_task(self, project: str, key: str) -> Task:
        """One task (its ``version`` is what ``expected_version`` compares against)."""
        return self.send(api.get_task(project, key))

    def update_task(
        self, project: str, key: str, patch: TaskUpdate | Mapping[str, Any], expected_version: int | None = None
    ) -> Task:
        """Change the fields given; with *expected_version*, VersionConflict if it changed since."""
        return self.send(api.update_task(project, key, patch, expected_version))

    def add_note(
        self, project: str, key: str, text: str, *, author: str | None = None, token: str | None = None
    ) -> Note:
        """Append a note (with *token*, as the lease holder)."""
        return self.send(api.add_note(project, key, text, author, token))

    def list_notes(self, project: str, key: str) -> list[Note]:
        """A task's notes, oldest first."""
        return self.send(api.list_notes(project, key))

    def cancel_task(self, project: str, key: str, reason: str | None = None) -> Task:
        """Cancel a task."""
        return self.send(api.cancel_task(project, key, reason))

    def retry_task(self, project: str, key: str) -> Task:
        """Bring a failed/blocked/cancelled task back to not-started."""
        return self.send(api.retry_task(project, key))

    def blockers(self, project: str, key: str) -> list[Task]:
        """The task's unfinished dependencies."""
        return self.send(api.blockers(project, key))

    def dependents(self, project: str, key: str) -> list[Task]:
        """The tasks depending directly on this one."""
        return self.send(api.dependents(project, key))

    def results(self, project: str, keys: Sequence[str]) -> ResultsResponse:
        """Status and result of the given tasks."""
        return self.send(api.results(project, keys))

    def stats(self, project: str) -> QueueStats:
        """Counts per status, depth per role, in flight, dead letters."""
        return self.send(api.stats(project))

    def dead_letter(self, project: str, limit: int = 100) -> list[Task]:
        """Failed tasks, most recent first."""
        return self.send(api.dead_letter(project, limit))

    def ready_tasks(self, project: str, roles: Sequence[str] | None = None, limit: int = 20) -> ReadyList:
        """Ready tasks in the dispatch order (the first *limit*, and the total)."""
        return self.send(api.ready_tasks(project, roles, limit))

    # -- dispatch ---------------------------------------------------------------------------
    def claim(
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
        return self.send(api.claim(project, agent, roles, wait_seconds, lease_seconds, lease_profile))

    def claim_next(
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
        return self.send(api.claim(project, agent, roles, wait_seconds, lease_seconds, "agent"))

    def heartbeat(self, project: str, key: str, token: str, lease_seconds: float | None = None) -> Lease:
        """Extend a lease; LeaseError if it was lost."""
        return self.send(api.heartbeat(project, key, token, lease_seconds))

    def complete(self, project: str, key: str, token: str, result: Any = None) -> Task:
        """Finish a claimed task with *result* (any JSON value).

        Retried on 503 and transport errors (a token completes a task at most once, so a repeat is
        safe); if a retry is refused because an earlier try did land, the completed task is returned.
        """
        request = api.complete(project, key, token, result)
        try:
            return self.send(request)
        except exceptions.LeaseError:
            if request.tries > 1:
                task = self.get_task(project, key)
                if completed_with(task, result):
                    return task
            raise

    def fail(self, project: str, key: str, token: str, error: str, retryable: bool = True) -> Task:
        """Report a failed attempt (retried on 503 like :meth:`complete`: a token fails a task once)."""
        return self.send(api.fail(project, key, token, error, retryable))

    def release(self, project: str, key: str, token: str) -> Task:
        """Give a claimed task back without counting an attempt."""
        return self.send(api.release(project, key, token))

    # -- events -----------------------------------------------------------------------------
    def events(
        self, project: str, *, last_event_id: int | None = None, follow: bool = True, reconnect: bool = True
    ) -> Iterator[Event]:
        """The project's events, oldest first, resuming after *last_event_id*.

        With *follow*, keeps streaming live events (reconnecting with the last id seen if the
        connection drops and *reconnect* is set); without, replays the log and stops.
        """
        return self._follow(EventFeed(project, last_event_id, follow, reconnect, self.retry.attempts))

    def list_events(self, project: str, after_id: int = 0, limit: int = 1000) -> list[Event]:
        """The project's logged events after *after_id*, oldest first, at most *limit*: a replay of
        :meth:`events` that does not follow (QueueService's spelling)."""
        out: list[Event] = []
        feed = self._follow(EventFeed(project, after_id, False, True, self.retry.attempts))
        try:
            for event in feed:
                out.append(event)
                if len(out) >= limit:
                    break
        finally:
            with contextlib.suppress(Exception):  # the replay is read; closing its connection decides nothing
                feed.close()
        return out

    # -- task output streams (issue 14) ------------------------------------------------------
    def publish(
        self, project: str, key: str, chunks: str | Sequence[str], token: str, *, stream: str = DEFAULT_STREAM
    ) -> list[str]:
        """Append chunk(s) to the task's stream as the lease holder (renews the lease); their ids."""
        return self.send(api.publish(project, key, chunks, token, stream))

    def end_stream(self, project: str, key: str, token: str, *, stream: str = DEFAULT_STREAM) -> None:
        """Mark the task's stream done: followers stop after the last chunk."""
        self.send(api.end_stream(project, key, token, stream))

    def stream(
        self,
        project: str,
        key: str,
        *,
        after: str | None = None,
        stream: str = DEFAULT_STREAM,
        follow: bool = True,
        include_done: bool = False,
    ) -> Iterator[StreamChunk]:
        """The task's chunks from the start (or after *after*), live until the stream is done;
        reconnects with the last id seen if the connection drops. The done marker is yielded only
        with *include_done*."""
        return self._follow(StreamFeed(project, key, after, stream, follow, include_done, self.retry.attempts))

    def read_stream(self, project: str, key: str, after: str | None = None, stream: str = DEFAULT_STREAM) -> StreamPage:
        """The task's chunks after *after* that exist now (the done marker last, once the stream ended),
        as one page: :meth:`stream` without following (QueueService's spelling)."""
        return api.stream_page(
            list(self.stream(project, key, after=after, stream=stream, follow=False, include_done=True)), after
        )

    # -- coord parity -----------------------------------------------------------------------
    def coord_status(self, project: str | None = None, mission: str | None = None) -> dict[str, Any]:
        """``GET /api/coord/status``: mission status in coord's shape."""
        return self.send(api.coord_status(project, mission))

    def coord_tasks(
        self, project: str | None = None, mission: str | None = None, status: str | None = None
    ) -> dict[str, Any]:
        """``GET /api/coord/tasks``: the mission's tasks in coord's field names."""
        return self.send(api.coord_tasks(project, mission, status))

    def coord_task(self, task_id: str, project: str | None = None) -> dict[str, Any]:
        """``GET /api/coord/tasks/{id}``: one task with details, notes, blockers."""
        return self.send(api.coord_task(task_id, project))

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
    ) -> Worker:
        """A worker claiming tasks of *roles* in *project* (see ``queue_service.worker``).

        Args:
            agent: agent id (default: a fresh ``new_agent_id()``).
            lease_seconds: lease per claim (default: 30 s, ``worker.DEFAULT_LEASE_SECONDS``).
            heartbeat_seconds: heartbeat period (default: a third of the lease length).
            wait_seconds: how long each claim long-polls.
            stop_when_idle: stop iterating when a claim finds nothing.
        """
        return Worker(
            self,
            project,
            agent or new_agent_id(),
            roles,
            lease_seconds=lease_seconds,
            heartbeat_seconds=heartbeat_seconds,
            wait_seconds=wait_seconds,
            stop_when_idle=stop_when_idle,
        )
