"""Typed HTTP client for the queue service: :class:`Client` (sync) and :class:`AsyncClient`.

One method per endpoint, pydantic models in and out (``queue_service.models``), and errors raised
as the service's own error tree (``queue_service.exceptions``) rebuilt from the JSON error body::

    from queue_service.client import Client
    from queue_service.exceptions import LeaseError

    with Client("http://127.0.0.1:8000", token="qs_…") as qs:
        task = qs.create_task("web", {"title": "Write the login page", "role": "dev"})
        claim = qs.claim("web", roles=["dev"])
        if claim:
            qs.complete("web", claim.task.key, claim.lease.token, result={"pr": 12})

        def handle(task): ...              # a worker: heartbeats run in a thread meanwhile
        qs.worker("web", roles=["dev"]).run(handle, max_tasks=10)

Retries: idempotent calls (every GET, results, cancel, creates carrying an idempotency key, and
complete/fail, which a lease token can do at most once) are retried with exponential backoff on 503
and on transport errors. Other calls are retried only when
the connection could not be made at all (the request never reached the service). Tests inject a
transport: ``AsyncClient(transport=httpx.ASGITransport(app=create_app(...)))``.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import pydantic
import pydantic_core

from queue_service import __version__, exceptions
from queue_service.agents import Agent, AgentRegister
from queue_service.api.schemas import HealthStatus, ResultsResponse
from queue_service.client_streams import StreamSSEParser, stream_request
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
    TaskPage,
    TaskUpdate,
)
from queue_service.service import new_agent_id
from queue_service.streams import DEFAULT_STREAM, StreamChunk
from queue_service.worker import AsyncJob, AsyncWorker, Job, PermanentError, Worker, completed_with

__all__ = [
    "DEFAULT_URL",
    "AsyncClient",
    "AsyncJob",
    "AsyncWorker",
    "Client",
    "Job",
    "PermanentError",
    "RetryPolicy",
    "ServiceUnreachable",
    "Worker",
]

DEFAULT_URL = "http://127.0.0.1:8000"
_DEFAULT_TIMEOUT = 30.0

M = TypeVar("M", bound=pydantic.BaseModel)


class ServiceUnreachable(exceptions.BackendUnavailable):
    """The queue service could not be reached (connection refused, timed out, or dropped)."""

    code = "service_unreachable"


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry: ``base · 2^(n-1)``, capped at ``max_delay``, ±50 % jitter."""

    #: total tries, the first included (1 = never retry)
    attempts: int = 4
    base_delay: float = 0.1
    max_delay: float = 2.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed try number *attempt* (1-based)."""
        if retry_after is not None:
            return min(self.max_delay, max(0.0, retry_after))
        raw = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return float(raw * random.uniform(0.5, 1.0))


# -- requests, shared by both clients ---------------------------------------------------------


@dataclass
class _Call:
    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    idempotent: bool = False
    timeout: float | None = None
    #: how many times it was sent so far (a retried finishing call may have landed the first time)
    tries: int = 0


def _p(value: str) -> str:
    """A path segment, quoted so that no value can change the path."""
    return quote(value, safe="")


def _dump(data: pydantic.BaseModel | Mapping[str, Any]) -> Any:
    if isinstance(data, pydantic.BaseModel):
        return data.model_dump(mode="json", exclude_unset=True)
    # a mapping may hold models (a MissionCreate's milestones) or datetimes: make it plain JSON
    return pydantic_core.to_jsonable_python(dict(data))


def _task_body(data: TaskCreate | Mapping[str, Any] | str) -> TaskCreate | Mapping[str, Any]:
    """``create_task(project, "title")`` is a task with just that title."""
    return {"title": data} if isinstance(data, str) else data


def _task_filters(
    status: str | Sequence[str] | None,
    role: str | None,
    assignee: str | None,
    mission: str | None,
    milestone: str | None,
    label: str | None,
    ready: bool | None,
) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if status is not None:
        params["status"] = [status] if isinstance(status, str) else list(status)
    for name, value in (
        ("role", role),
        ("assignee", assignee),
        ("mission", mission),
        ("milestone", milestone),
        ("label", label),
    ):
        if value is not None:
            params[name] = value
    if ready is not None:
        params["ready"] = "true" if ready else "false"
    return params


def _load(model: type[M], response: httpx.Response) -> M:
    try:
        return model.model_validate(response.json(), extra="ignore")
    except (ValueError, pydantic.ValidationError) as exc:
        raise exceptions.QueueServiceError(
            f"unexpected response from {response.request.method} {response.request.url.path} "
            f"({response.status_code}): {exc}"
        ) from exc


def _load_items(model: type[M], response: httpx.Response) -> list[M]:
    try:
        items = response.json()["items"]
        return [model.model_validate(item, extra="ignore") for item in items]
    except (ValueError, KeyError, TypeError, pydantic.ValidationError) as exc:
        raise exceptions.QueueServiceError(
            f"unexpected response from {response.request.method} {response.request.url.path}: {exc}"
        ) from exc


def _load_list(model: type[M], response: httpx.Response) -> list[M]:
    """A response that is a JSON array of *model* (``GET …/agents``)."""
    try:
        return [model.model_validate(item, extra="ignore") for item in response.json()]
    except (ValueError, TypeError, pydantic.ValidationError) as exc:
        raise exceptions.QueueServiceError(
            f"unexpected response from {response.request.method} {response.request.url.path}: {exc}"
        ) from exc


_STATUS_FALLBACK: dict[int, type[exceptions.QueueServiceError]] = {
    400: exceptions.ValidationError,
    401: exceptions.AuthError,
    403: exceptions.Forbidden,
    404: exceptions.NotFound,
    409: exceptions.Conflict,
    412: exceptions.VersionConflict,
    422: exceptions.ValidationError,
    429: exceptions.QueueFull,
    502: exceptions.BackendUnavailable,
    503: exceptions.BackendUnavailable,
    504: exceptions.BackendUnavailable,
}


def error_from_response(response: httpx.Response) -> exceptions.QueueServiceError:
    """The domain error an error response stands for (by its ``code``, else by HTTP status)."""
    code = message = None
    details: dict[str, Any] = {}
    try:
        body = response.json()
        error = body["error"]
        code, message = str(error["code"]), str(error["message"])
        if isinstance(error.get("details"), dict):
            details = error["details"]
    except (ValueError, KeyError, TypeError):
        pass
    if code is not None:
        cls = exceptions.error_class_for_code(code)
        if cls is exceptions.QueueServiceError and code != cls.code:
            cls = _STATUS_FALLBACK.get(response.status_code, exceptions.QueueServiceError)
    else:
        cls = _STATUS_FALLBACK.get(response.status_code, exceptions.QueueServiceError)
        message = f"HTTP {response.status_code} from {response.request.url.path}: {response.text[:200]}"
    exc = cls(message)
    exc.details = details
    return exc


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class _SSEParser:
    """Incremental ``text/event-stream`` parser yielding our Events."""

    def __init__(self) -> None:
        self.data: list[str] = []
        self.last_id: int | None = None
        self.retry_ms: int | None = None

    def feed(self, line: str) -> Event | None:
        if not line:
            if not self.data:
                return None
            payload = "\n".join(self.data)
            self.data = []
            event = Event.model_validate_json(payload, extra="ignore")
            self.last_id = event.id
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self.data.append(value)
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None


def _sse_request(
    base_headers: dict[str, str], project: str, last_id: int | None, follow: bool
) -> tuple[dict[str, str], str]:
    """Headers and path of one (re)connection to the event stream, resuming after *last_id*."""
    headers = dict(base_headers, Accept="text/event-stream")
    if last_id is not None:
        headers["Last-Event-ID"] = str(last_id)
    elif not follow:
        headers["Last-Event-ID"] = "0"  # replay the whole log
    return headers, f"/v1/projects/{_p(project)}/events"


class _Calls:
    """Every endpoint as a request description; the clients only differ in how they send it."""

    @staticmethod
    def create_task(project: str, data: TaskCreate | Mapping[str, Any] | str) -> _Call:
        body = _dump(_task_body(data))
        return _Call("POST", f"/v1/projects/{_p(project)}/tasks", body, idempotent=bool(body.get("idempotency_key")))

    @staticmethod
    def create_tasks(project: str, items: Iterable[TaskCreate | Mapping[str, Any]]) -> _Call:
        tasks = [_dump(item) for item in items]
        keyed = bool(tasks) and all(t.get("idempotency_key") for t in tasks)
        return _Call("POST", f"/v1/projects/{_p(project)}/tasks/batch", {"tasks": tasks}, idempotent=keyed)

    @staticmethod
    def list_tasks(project: str, filters: dict[str, Any], limit: int, cursor: str | None) -> _Call:
        params = {**filters, "limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        return _Call("GET", f"/v1/projects/{_p(project)}/tasks", params=params, idempotent=True)

    @staticmethod
    def update_task(
        project: str, key: str, patch: TaskUpdate | Mapping[str, Any], expected_version: int | None
    ) -> _Call:
        headers = {"If-Match": f'"{expected_version}"'} if expected_version is not None else {}
        return _Call("PATCH", f"/v1/projects/{_p(project)}/tasks/{_p(key)}", _dump(patch), headers=headers)

    @staticmethod
    def claim(
        project: str,
        agent: str,
        roles: Sequence[str] | None,
        wait_seconds: float,
        lease_seconds: float | None,
        lease_profile: str = "worker",
    ) -> _Call:
        body: dict[str, Any] = {"agent": agent, "wait_seconds": wait_seconds}
        if lease_profile != "worker":
            body["lease_profile"] = lease_profile
        if roles:
            body["roles"] = list(roles)
        if lease_seconds is not None:
            body["lease_seconds"] = lease_seconds
        return _Call("POST", f"/v1/projects/{_p(project)}/claims", body, timeout=_DEFAULT_TIMEOUT + wait_seconds)

    @staticmethod
    def task_op(project: str, key: str, op: str, body: Any = None, *, idempotent: bool = False) -> _Call:
        return _Call("POST", f"/v1/projects/{_p(project)}/tasks/{_p(key)}/{op}", body, idempotent=idempotent)

    @staticmethod
    def get(path: str, params: dict[str, Any] | None = None) -> _Call:
        return _Call("GET", path, params=params, idempotent=True)


class _BaseClient:
    def __init__(
        self,
        base_url: str,
        token: str | None,
        timeout: float,
        retry: RetryPolicy | None,
        agent: str | None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        #: the agent id claims use when none is given (unique per client, see ``new_agent_id``)
        self.agent_id = agent or new_agent_id()
        self._headers = {"User-Agent": f"queue-service-client/{__version__}", "Accept": "application/json"}
        if token is None:
            # the same variable the CLI reads, so an agent's environment is enough to authenticate
            token = os.environ.get("QUEUE_TOKEN") or None
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._token = token

    def _headers_for(self, call: _Call) -> dict[str, str]:
        headers = {**self._headers, **call.headers}
        if call.method != "GET" and call.json is None:
            # the service refuses state changes that are not JSON, body or not (a browser cannot
            # send this header cross-site without asking first)
            headers["Content-Type"] = "application/json"
        return headers

    def _should_retry(self, call: _Call, attempt: int, exc: httpx.TransportError | None) -> bool:
        if attempt >= self.retry.attempts:
            return False
        if exc is not None:
            # a connection that was never made carried no request: safe to retry any call
            return call.idempotent or isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
        return call.idempotent

    def _unreachable(self, exc: httpx.TransportError) -> ServiceUnreachable:
        return ServiceUnreachable(f"cannot reach the queue service at {self.base_url}: {type(exc).__name__}: {exc}")

    @staticmethod
    def _timeout(call: _Call) -> float | None:
        return call.timeout


class Client(_BaseClient):
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
        timeout: float = _DEFAULT_TIMEOUT,
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

    def _send(self, call: _Call, *, allow: Sequence[int] = ()) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            call.tries = attempt
            try:
                response = self._http.request(
                    call.method,
                    self.base_url + call.path if not self._owns_http else call.path,
                    json=call.json,
                    params=call.params,
                    headers=self._headers_for(call),
                    timeout=call.timeout if call.timeout is not None else self.timeout,
                )
            except httpx.TransportError as exc:
                if self._should_retry(call, attempt, exc):
                    time.sleep(self.retry.delay(attempt))
                    continue
                raise self._unreachable(exc) from exc
            if response.status_code == 503 and self._should_retry(call, attempt, None):
                time.sleep(self.retry.delay(attempt, _retry_after(response)))
                continue
            if response.status_code >= 400 and response.status_code not in allow:
                raise error_from_response(response)
            return response

    # -- health -----------------------------------------------------------------------------
    def health(self) -> HealthStatus:
        """``GET /healthz``."""
        return _load(HealthStatus, self._send(_Calls.get("/healthz")))

    def ready(self) -> HealthStatus:
        """``GET /readyz``; raises BackendUnavailable when the service is not ready."""
        return _load(HealthStatus, self._send(_Calls.get("/readyz")))

    def metrics(self) -> str:
        """``GET /metrics`` (Prometheus text)."""
        return self._send(_Calls.get("/metrics")).text

    # -- projects and missions --------------------------------------------------------------
    def create_project(self, data: ProjectCreate | Mapping[str, Any]) -> Project:
        """Create a project (``{"slug": "web", "name": …, "key_prefix": "WEB"}``)."""
        return _load(Project, self._send(_Call("POST", "/v1/projects", _dump(data))))

    def list_projects(self) -> list[Project]:
        """The projects this token may read."""
        return _load_items(Project, self._send(_Calls.get("/v1/projects")))

    def get_project(self, project: str) -> Project:
        """One project."""
        return _load(Project, self._send(_Calls.get(f"/v1/projects/{_p(project)}")))

    def update_project(self, project: str, patch: ProjectUpdate | Mapping[str, Any]) -> Project:
        """Change a project's name or workspace."""
        return _load(Project, self._send(_Call("PATCH", f"/v1/projects/{_p(project)}", _dump(patch))))

    def register_agent(self, project: str, data: AgentRegister | Mapping[str, Any]) -> Agent:
        """Register an agent ``{"id", "roles", "labels", "capacity"}`` (or update it; undrains it)."""
        return _load(Agent, self._send(_Call("POST", f"/v1/projects/{_p(project)}/agents", _dump(data))))

    def agent_heartbeat(self, project: str, agent_id: str) -> Agent:
        """Keep the agent ready (call more often than ``QUEUE_AGENT_READY_SECONDS``)."""
        return _load(Agent, self._send(_Call("POST", f"/v1/projects/{_p(project)}/agents/{_p(agent_id)}/heartbeat")))

    def drain_agent(self, project: str, agent_id: str) -> Agent:
        """Hand the agent no new work."""
        return _load(Agent, self._send(_Call("POST", f"/v1/projects/{_p(project)}/agents/{_p(agent_id)}/drain")))

    def list_agents(self, project: str) -> list[Agent]:
        """Every agent: readiness, capacity, what it holds with the lease left, done/failed."""
        return _load_list(Agent, self._send(_Calls.get(f"/v1/projects/{_p(project)}/agents")))

    def create_mission(self, project: str, data: MissionCreate | Mapping[str, Any]) -> Mission:
        """Create a mission."""
        return _load(Mission, self._send(_Call("POST", f"/v1/projects/{_p(project)}/missions", _dump(data))))

    def list_missions(self, project: str) -> list[Mission]:
        """A project's missions."""
        return _load_items(Mission, self._send(_Calls.get(f"/v1/projects/{_p(project)}/missions")))

    def get_mission(self, project: str, mission: str) -> Mission:
        """One mission."""
        return _load(Mission, self._send(_Calls.get(f"/v1/projects/{_p(project)}/missions/{_p(mission)}")))

    # -- tasks ------------------------------------------------------------------------------
    def create_task(self, project: str, data: TaskCreate | Mapping[str, Any] | str) -> Task:
        """Create one task (*data* may be just its title)."""
        return _load(Task, self._send(_Calls.create_task(project, data)))

    def create_tasks(self, project: str, items: Iterable[TaskCreate | Mapping[str, Any]]) -> list[Task]:
        """Create many tasks, all or nothing (``depends_on: ["#0"]`` names the batch's first task)."""
        return _load_items(Task, self._send(_Calls.create_tasks(project, items)))

    def list_tasks(
        self,
        project: str,
        *,
        status: str | Sequence[str] | None = None,
        role: str | None = None,
        assignee: str | None = None,
        mission: str | None = None,
        milestone: str | None = None,
        label: str | None = None,
        ready: bool | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> TaskPage:
        """One page of tasks matching every filter; pass ``page.next_cursor`` for the next."""
        filters = _task_filters(status, role, assignee, mission, milestone, label, ready)
        return _load(TaskPage, self._send(_Calls.list_tasks(project, filters, limit, cursor)))

    def iter_tasks(
        self,
        project: str,
        *,
        status: str | Sequence[str] | None = None,
        role: str | None = None,
        assignee: str | None = None,
        mission: str | None = None,
        milestone: str | None = None,
        label: str | None = None,
        ready: bool | None = None,
        page_size: int = 500,
    ) -> Iterator[Task]:
        """Every matching task, fetching pages as needed."""
        filters = _task_filters(status, role, assignee, mission, milestone, label, ready)
        cursor: str | None = None
        while True:
            page = _load(TaskPage, self._send(_Calls.list_tasks(project, filters, page_size, cursor)))
            yield from page.items
            cursor = page.next_cursor
            if cursor is None:
                return

    def get_task(self, project: str, key: str) -> Task:
        """One task (its ``version`` is what ``expected_version`` compares against)."""
        return _load(Task, self._send(_Calls.get(f"/v1/projects/{_p(project)}/tasks/{_p(key)}")))

    def update_task(
        self, project: str, key: str, patch: TaskUpdate | Mapping[str, Any], *, expected_version: int | None = None
    ) -> Task:
        """Change the fields given; with *expected_version*, VersionConflict if it changed since."""
        return _load(Task, self._send(_Calls.update_task(project, key, patch, expected_version)))

    def add_note(
        self, project: str, key: str, text: str, *, author: str | None = None, token: str | None = None
    ) -> Note:
        """Append a note (with *token*, as the lease holder)."""
        body = {k: v for k, v in {"text": text, "author": author, "token": token}.items() if v is not None}
        return _load(Note, self._send(_Calls.task_op(project, key, "notes", body)))

    def list_notes(self, project: str, key: str) -> list[Note]:
        """A task's notes, oldest first."""
        return _load_items(Note, self._send(_Calls.get(f"/v1/projects/{_p(project)}/tasks/{_p(key)}/notes")))

    def cancel_task(self, project: str, key: str, reason: str | None = None) -> Task:
        """Cancel a task."""
        body = {"reason": reason} if reason is not None else {}
        return _load(Task, self._send(_Calls.task_op(project, key, "cancel", body, idempotent=True)))

    def retry_task(self, project: str, key: str) -> Task:
        """Bring a failed/blocked/cancelled task back to not-started."""
        return _load(Task, self._send(_Calls.task_op(project, key, "retry")))

    def blockers(self, project: str, key: str) -> list[Task]:
        """The task's unfinished dependencies."""
        return _load_items(Task, self._send(_Calls.get(f"/v1/projects/{_p(project)}/tasks/{_p(key)}/blockers")))

    def dependents(self, project: str, key: str) -> list[Task]:
        """The tasks depending directly on this one."""
        return _load_items(Task, self._send(_Calls.get(f"/v1/projects/{_p(project)}/tasks/{_p(key)}/dependents")))

    def results(self, project: str, keys: Sequence[str]) -> ResultsResponse:
        """Status and result of the given tasks."""
        call = _Call("POST", f"/v1/projects/{_p(project)}/results", {"keys": list(keys)}, idempotent=True)
        return _load(ResultsResponse, self._send(call))

    def stats(self, project: str) -> QueueStats:
        """Counts per status, depth per role, in flight, dead letters."""
        return _load(QueueStats, self._send(_Calls.get(f"/v1/projects/{_p(project)}/stats")))

    def dead_letter(self, project: str, limit: int = 100) -> list[Task]:
        """Failed tasks, most recent first."""
        call = _Calls.get(f"/v1/projects/{_p(project)}/dead-letter", {"limit": limit})
        return _load_items(Task, self._send(call))

    def ready_tasks(self, project: str, roles: Sequence[str] | None = None, limit: int = 20) -> ReadyList:
        """Ready tasks in the dispatch order (the first *limit*, and the total)."""
        params: dict[str, Any] = {"limit": limit}
        if roles:
            params["role"] = ",".join(roles)
        return _load(ReadyList, self._send(_Calls.get(f"/v1/projects/{_p(project)}/ready", params)))

    # -- dispatch ---------------------------------------------------------------------------
    def claim(
        self,
        project: str,
        agent: str | None = None,
        *,
        roles: Sequence[str] | None = None,
        wait_seconds: float = 0.0,
        lease_seconds: float | None = None,
        lease_profile: str = "worker",
    ) -> Claim | None:
        """Claim the next ready task (waiting up to *wait_seconds*), or None.

        ``lease_profile="agent"``: an agent-facing claim (the best ready task, the server's agent lease).
        """
        call = _Calls.claim(project, agent or self.agent_id, roles, wait_seconds, lease_seconds, lease_profile)
        response = self._send(call)
        return None if response.status_code == 204 else _load(Claim, response)

    def heartbeat(self, project: str, key: str, token: str, *, lease_seconds: float | None = None) -> Lease:
        """Extend a lease; LeaseError if it was lost."""
        body: dict[str, Any] = {"token": token}
        if lease_seconds is not None:
            body["lease_seconds"] = lease_seconds
        return _load(Lease, self._send(_Calls.task_op(project, key, "heartbeat", body)))

    def complete(self, project: str, key: str, token: str, result: Any = None) -> Task:
        """Finish a claimed task with *result* (any JSON value).

        Retried on 503 and transport errors (a token completes a task at most once, so a repeat is
        safe); if a retry is refused because an earlier try did land, the completed task is returned.
        """
        call = _Calls.task_op(project, key, "complete", {"token": token, "result": result}, idempotent=True)
        try:
            return _load(Task, self._send(call))
        except exceptions.LeaseError:
            if call.tries > 1:
                task = self.get_task(project, key)
                if completed_with(task, result):
                    return task
            raise

    def fail(self, project: str, key: str, token: str, error: str, *, retryable: bool = True) -> Task:
        """Report a failed attempt (retried on 503 like :meth:`complete`: a token fails a task once)."""
        body = {"token": token, "error": error, "retryable": retryable}
        return _load(Task, self._send(_Calls.task_op(project, key, "fail", body, idempotent=True)))

    def release(self, project: str, key: str, token: str) -> Task:
        """Give a claimed task back without counting an attempt."""
        return _load(Task, self._send(_Calls.task_op(project, key, "release", {"token": token})))

    # -- events -----------------------------------------------------------------------------
    def events(
        self, project: str, *, last_event_id: int | None = None, follow: bool = True, reconnect: bool = True
    ) -> Iterator[Event]:
        """The project's events, oldest first, resuming after *last_event_id*.

        With *follow*, keeps streaming live events (reconnecting with the last id seen if the
        connection drops and *reconnect* is set); without, replays the log and stops.
        """
        parser = _SSEParser()
        parser.last_id = last_event_id
        failures = 0
        while True:
            headers, url = _sse_request(self._headers, project, parser.last_id, follow)
            try:
                with self._http.stream(
                    "GET",
                    self.base_url + url if not self._owns_http else url,
                    params={"follow": "true" if follow else "false"},
                    headers=headers,
                    timeout=httpx.Timeout(self.timeout, read=None),
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise error_from_response(response)
                    failures = 0
                    for line in response.iter_lines():
                        event = parser.feed(line)
                        if event is not None:
                            yield event
            except httpx.TransportError as exc:
                if not (follow and reconnect):
                    raise self._unreachable(exc) from exc
                failures += 1
                if failures >= self.retry.attempts:
                    raise self._unreachable(exc) from exc
            if not follow or not reconnect:
                return
            time.sleep(self.retry.delay(max(1, failures), (parser.retry_ms or 1000) / 1000 if failures == 0 else None))

    # -- task output streams (issue 14) ------------------------------------------------------
    def publish(
        self, project: str, key: str, chunks: str | Sequence[str], token: str, *, stream: str = DEFAULT_STREAM
    ) -> list[str]:
        """Append chunk(s) to the task's stream as the lease holder (renews the lease); their ids."""
        body = {"token": token, "chunks": [chunks] if isinstance(chunks, str) else list(chunks)}
        call = _Call("POST", f"/v1/projects/{_p(project)}/tasks/{_p(key)}/stream", body, params={"stream": stream})
        return list(self._send(call).json()["ids"])

    def end_stream(self, project: str, key: str, token: str, *, stream: str = DEFAULT_STREAM) -> None:
        """Mark the task's stream done: followers stop after the last chunk."""
        body = {"token": token, "done": True}
        self._send(_Call("POST", f"/v1/projects/{_p(project)}/tasks/{_p(key)}/stream", body, params={"stream": stream}))

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
        parser = StreamSSEParser(after)
        failures = 0
        while True:
            headers, url, params = stream_request(self._headers, project, key, parser.last_id, stream, follow)
            try:
                with self._http.stream(
                    "GET",
                    self.base_url + url if not self._owns_http else url,
                    params=params,
                    headers=headers,
                    timeout=httpx.Timeout(self.timeout, read=None),
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise error_from_response(response)
                    failures = 0
                    for line in response.iter_lines():
                        item = parser.feed(line)
                        if item is not None and (include_done or not item.done):
                            yield item
            except httpx.TransportError as exc:
                failures += 1
                if not follow or failures >= self.retry.attempts:
                    raise self._unreachable(exc) from exc
            if parser.finished or not follow:
                return
            time.sleep(self.retry.delay(max(1, failures), None))

    # -- coord parity -----------------------------------------------------------------------
    def coord_status(self, project: str | None = None, mission: str | None = None) -> dict[str, Any]:
        """``GET /api/coord/status``: mission status in coord's shape."""
        params = {k: v for k, v in {"project": project, "mission": mission}.items() if v is not None}
        result: dict[str, Any] = self._send(_Calls.get("/api/coord/status", params)).json()
        return result

    def coord_tasks(
        self, project: str | None = None, mission: str | None = None, status: str | None = None
    ) -> dict[str, Any]:
        """``GET /api/coord/tasks``: the mission's tasks in coord's field names."""
        params = {k: v for k, v in {"project": project, "mission": mission, "status": status}.items() if v}
        result: dict[str, Any] = self._send(_Calls.get("/api/coord/tasks", params)).json()
        return result

    def coord_task(self, task_id: str, project: str | None = None) -> dict[str, Any]:
        """``GET /api/coord/tasks/{id}``: one task with details, notes, blockers."""
        params = {"project": project} if project else None
        result: dict[str, Any] = self._send(_Calls.get(f"/api/coord/tasks/{_p(task_id)}", params)).json()
        return result

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


class AsyncClient(_BaseClient):
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
        timeout: float = _DEFAULT_TIMEOUT,
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

    async def _send(self, call: _Call, *, allow: Sequence[int] = ()) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            call.tries = attempt
            try:
                response = await self._http.request(
                    call.method,
                    self.base_url + call.path if not self._owns_http else call.path,
                    json=call.json,
                    params=call.params,
                    headers=self._headers_for(call),
                    timeout=call.timeout if call.timeout is not None else self.timeout,
                )
            except httpx.TransportError as exc:
                if self._should_retry(call, attempt, exc):
                    await asyncio.sleep(self.retry.delay(attempt))
                    continue
                raise self._unreachable(exc) from exc
            if response.status_code == 503 and self._should_retry(call, attempt, None):
                await asyncio.sleep(self.retry.delay(attempt, _retry_after(response)))
                continue
            if response.status_code >= 400 and response.status_code not in allow:
                raise error_from_response(response)
            return response

    # -- health -----------------------------------------------------------------------------
    async def health(self) -> HealthStatus:
        """``GET /healthz``."""
        return _load(HealthStatus, await self._send(_Calls.get("/healthz")))

    async def ready(self) -> HealthStatus:
        """``GET /readyz``; raises BackendUnavailable when the service is not ready."""
        return _load(HealthStatus, await self._send(_Calls.get("/readyz")))

    async def metrics(self) -> str:
        """``GET /metrics`` (Prometheus text)."""
        return (await self._send(_Calls.get("/metrics"))).text

    # -- projects and missions --------------------------------------------------------------
    async def create_project(self, data: ProjectCreate | Mapping[str, Any]) -> Project:
        """Create a project (``{"slug": "web", "name": …, "key_prefix": "WEB"}``)."""
        return _load(Project, await self._send(_Call("POST", "/v1/projects", _dump(data))))

    async def list_projects(self) -> list[Project]:
        """The projects this token may read."""
        return _load_items(Project, await self._send(_Calls.get("/v1/projects")))

    async def get_project(self, project: str) -> Project:
        """One project."""
        return _load(Project, await self._send(_Calls.get(f"/v1/projects/{_p(project)}")))

    async def update_project(self, project: str, patch: ProjectUpdate | Mapping[str, Any]) -> Project:
        """Change a project's name or workspace."""
        return _load(Project, await self._send(_Call("PATCH", f"/v1/projects/{_p(project)}", _dump(patch))))

    async def register_agent(self, project: str, data: AgentRegister | Mapping[str, Any]) -> Agent:
        """Register an agent ``{"id", "roles", "labels", "capacity"}`` (or update it; undrains it)."""
        return _load(Agent, await self._send(_Call("POST", f"/v1/projects/{_p(project)}/agents", _dump(data))))

    async def agent_heartbeat(self, project: str, agent_id: str) -> Agent:
        """Keep the agent ready (call more often than ``QUEUE_AGENT_READY_SECONDS``)."""
        call = _Call("POST", f"/v1/projects/{_p(project)}/agents/{_p(agent_id)}/heartbeat")
        return _load(Agent, await self._send(call))

    async def drain_agent(self, project: str, agent_id: str) -> Agent:
        """Hand the agent no new work."""
        return _load(Agent, await self._send(_Call("POST", f"/v1/projects/{_p(project)}/agents/{_p(agent_id)}/drain")))

    async def list_agents(self, project: str) -> list[Agent]:
        """Every agent: readiness, capacity, what it holds with the lease left, done/failed."""
        return _load_list(Agent, await self._send(_Calls.get(f"/v1/projects/{_p(project)}/agents")))

    async def create_mission(self, project: str, data: MissionCreate | Mapping[str, Any]) -> Mission:
        """Create a mission."""
        return _load(Mission, await self._send(_Call("POST", f"/v1/projects/{_p(project)}/missions", _dump(data))))

    async def list_missions(self, project: str) -> list[Mission]:
        """A project's missions."""
        return _load_items(Mission, await self._send(_Calls.get(f"/v1/projects/{_p(project)}/missions")))

    async def get_mission(self, project: str, mission: str) -> Mission:
        """One mission."""
        return _load(Mission, await self._send(_Calls.get(f"/v1/projects/{_p(project)}/missions/{_p(mission)}")))

    # -- tasks ------------------------------------------------------------------------------
    async def create_task(self, project: str, data: TaskCreate | Mapping[str, Any] | str) -> Task:
        """Create one task (*data* may be just its title)."""
        return _load(Task, await self._send(_Calls.create_task(project, data)))

    async def create_tasks(self, project: str, items: Iterable[TaskCreate | Mapping[str, Any]]) -> list[Task]:
        """Create many tasks, all or nothing (``depends_on: ["#0"]`` names the batch's first task)."""
        return _load_items(Task, await self._send(_Calls.create_tasks(project, items)))

    async def list_tasks(
        self,
        project: str,
        *,
        status: str | Sequence[str] | None = None,
        role: str | None = None,
        assignee: str | None = None,
        mission: str | None = None,
        milestone: str | None = None,
        label: str | None = None,
        ready: bool | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> TaskPage:
        """One page of tasks matching every filter; pass ``page.next_cursor`` for the next."""
        filters = _task_filters(status, role, assignee, mission, milestone, label, ready)
        return _load(TaskPage, await self._send(_Calls.list_tasks(project, filters, limit, cursor)))

    async def iter_tasks(
        self,
        project: str,
        *,
        status: str | Sequence[str] | None = None,
        role: str | None = None,
        assignee: str | None = None,
        mission: str | None = None,
        milestone: str | None = None,
        label: str | None = None,
        ready: bool | None = None,
        page_size: int = 500,
    ) -> AsyncIterator[Task]:
        """Every matching task, fetching pages as needed."""
        filters = _task_filters(status, role, assignee, mission, milestone, label, ready)
        cursor: str | None = None
        while True:
            page = _load(TaskPage, await self._send(_Calls.list_tasks(project, filters, page_size, cursor)))
            for task in page.items:
                yield task
            cursor = page.next_cursor
            if cursor is None:
                return

    async def get_task(self, project: str, key: str) -> Task:
        """One task (its ``version`` is what ``expected_version`` compares against)."""
        return _load(Task, await self._send(_Calls.get(f"/v1/projects/{_p(project)}/tasks/{_p(key)}")))

    async def update_task(
        self, project: str, key: str, patch: TaskUpdate | Mapping[str, Any], *, expected_version: int | None = None
    ) -> Task:
        """Change the fields given; with *expected_version*, VersionConflict if it changed since."""
        return _load(Task, await self._send(_Calls.update_task(project, key, patch, expected_version)))

    async def add_note(
        self, project: str, key: str, text: str, *, author: str | None = None, token: str | None = None
    ) -> Note:
        """Append a note (with *token*, as the lease holder)."""
        body = {k: v for k, v in {"text": text, "author": author, "token": token}.items() if v is not None}
        return _load(Note, await self._send(_Calls.task_op(project, key, "notes", body)))

    async def list_notes(self, project: str, key: str) -> list[Note]:
        """A task's notes, oldest first."""
        return _load_items(Note, await self._send(_Calls.get(f"/v1/projects/{_p(project)}/tasks/{_p(key)}/notes")))

    async def cancel_task(self, project: str, key: str, reason: str | None = None) -> Task:
        """Cancel a task."""
        body = {"reason": reason} if reason is not None else {}
        return _load(Task, await self._send(_Calls.task_op(project, key, "cancel", body, idempotent=True)))

    async def retry_task(self, project: str, key: str) -> Task:
        """Bring a failed/blocked/cancelled task back to not-started."""
        return _load(Task, await self._send(_Calls.task_op(project, key, "retry")))

    async def blockers(self, project: str, key: str) -> list[Task]:
        """The task's unfinished dependencies."""
        call = _Calls.get(f"/v1/projects/{_p(project)}/tasks/{_p(key)}/blockers")
        return _load_items(Task, await self._send(call))

    async def dependents(self, project: str, key: str) -> list[Task]:
        """The tasks depending directly on this one."""
        call = _Calls.get(f"/v1/projects/{_p(project)}/tasks/{_p(key)}/dependents")
        return _load_items(Task, await self._send(call))

    async def results(self, project: str, keys: Sequence[str]) -> ResultsResponse:
        """Status and result of the given tasks."""
        call = _Call("POST", f"/v1/projects/{_p(project)}/results", {"keys": list(keys)}, idempotent=True)
        return _load(ResultsResponse, await self._send(call))

    async def stats(self, project: str) -> QueueStats:
        """Counts per status, depth per role, in flight, dead letters."""
        return _load(QueueStats, await self._send(_Calls.get(f"/v1/projects/{_p(project)}/stats")))

    async def dead_letter(self, project: str, limit: int = 100) -> list[Task]:
        """Failed tasks, most recent first."""
        call = _Calls.get(f"/v1/projects/{_p(project)}/dead-letter", {"limit": limit})
        return _load_items(Task, await self._send(call))

    async def ready_tasks(self, project: str, roles: Sequence[str] | None = None, limit: int = 20) -> ReadyList:
        """Ready tasks in the dispatch order (the first *limit*, and the total)."""
        params: dict[str, Any] = {"limit": limit}
        if roles:
            params["role"] = ",".join(roles)
        return _load(ReadyList, await self._send(_Calls.get(f"/v1/projects/{_p(project)}/ready", params)))

    # -- dispatch ---------------------------------------------------------------------------
    async def claim(
        self,
        project: str,
        agent: str | None = None,
        *,
        roles: Sequence[str] | None = None,
        wait_seconds: float = 0.0,
        lease_seconds: float | None = None,
        lease_profile: str = "worker",
    ) -> Claim | None:
        """Claim the next ready task (waiting up to *wait_seconds*), or None.

        ``lease_profile="agent"``: an agent-facing claim (the best ready task, the server's agent lease).
        """
        call = _Calls.claim(project, agent or self.agent_id, roles, wait_seconds, lease_seconds, lease_profile)
        response = await self._send(call)
        return None if response.status_code == 204 else _load(Claim, response)

    async def heartbeat(self, project: str, key: str, token: str, *, lease_seconds: float | None = None) -> Lease:
        """Extend a lease; LeaseError if it was lost."""
        body: dict[str, Any] = {"token": token}
        if lease_seconds is not None:
            body["lease_seconds"] = lease_seconds
        return _load(Lease, await self._send(_Calls.task_op(project, key, "heartbeat", body)))

    async def complete(self, project: str, key: str, token: str, result: Any = None) -> Task:
        """Finish a claimed task with *result* (any JSON value); retried as :meth:`Client.complete`."""
        call = _Calls.task_op(project, key, "complete", {"token": token, "result": result}, idempotent=True)
        try:
            return _load(Task, await self._send(call))
        except exceptions.LeaseError:
            if call.tries > 1:
                task = await self.get_task(project, key)
                if completed_with(task, result):
                    return task
            raise

    async def fail(self, project: str, key: str, token: str, error: str, *, retryable: bool = True) -> Task:
        """Report a failed attempt (retried on 503 like :meth:`complete`)."""
        body = {"token": token, "error": error, "retryable": retryable}
        return _load(Task, await self._send(_Calls.task_op(project, key, "fail", body, idempotent=True)))

    async def release(self, project: str, key: str, token: str) -> Task:
        """Give a claimed task back without counting an attempt."""
        return _load(Task, await self._send(_Calls.task_op(project, key, "release", {"token": token})))

    # -- events -----------------------------------------------------------------------------
    async def events(
        self, project: str, *, last_event_id: int | None = None, follow: bool = True, reconnect: bool = True
    ) -> AsyncIterator[Event]:
        """The project's events, oldest first, resuming after *last_event_id*.

        With *follow*, keeps streaming live events (reconnecting with the last id seen if the
        connection drops and *reconnect* is set); without, replays the log and stops.
        """
        parser = _SSEParser()
        parser.last_id = last_event_id
        failures = 0
        while True:
            headers, url = _sse_request(self._headers, project, parser.last_id, follow)
            try:
                async with self._http.stream(
                    "GET",
                    self.base_url + url if not self._owns_http else url,
                    params={"follow": "true" if follow else "false"},
                    headers=headers,
                    timeout=httpx.Timeout(self.timeout, read=None),
                ) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        raise error_from_response(response)
                    failures = 0
                    async for line in response.aiter_lines():
                        event = parser.feed(line)
                        if event is not None:
                            yield event
            except httpx.TransportError as exc:
                if not (follow and reconnect):
                    raise self._unreachable(exc) from exc
                failures += 1
                if failures >= self.retry.attempts:
                    raise self._unreachable(exc) from exc
            if not follow or not reconnect:
                return
            await asyncio.sleep(
                self.retry.delay(max(1, failures), (parser.retry_ms or 1000) / 1000 if failures == 0 else None)
            )

    # -- task output streams (issue 14) ------------------------------------------------------
    async def publish(
        self, project: str, key: str, chunks: str | Sequence[str], token: str, *, stream: str = DEFAULT_STREAM
    ) -> list[str]:
        """Append chunk(s) to the task's stream as the lease holder (renews the lease); their ids."""
        body = {"token": token, "chunks": [chunks] if isinstance(chunks, str) else list(chunks)}
        call = _Call("POST", f"/v1/projects/{_p(project)}/tasks/{_p(key)}/stream", body, params={"stream": stream})
        return list((await self._send(call)).json()["ids"])

    async def end_stream(self, project: str, key: str, token: str, *, stream: str = DEFAULT_STREAM) -> None:
        """Mark the task's stream done: followers stop after the last chunk."""
        body = {"token": token, "done": True}
        await self._send(
            _Call("POST", f"/v1/projects/{_p(project)}/tasks/{_p(key)}/stream", body, params={"stream": stream})
        )

    async def stream(
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
        parser = StreamSSEParser(after)
        failures = 0
        while True:
            headers, url, params = stream_request(self._headers, project, key, parser.last_id, stream, follow)
            try:
                async with self._http.stream(
                    "GET",
                    self.base_url + url if not self._owns_http else url,
                    params=params,
                    headers=headers,
                    timeout=httpx.Timeout(self.timeout, read=None),
                ) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        raise error_from_response(response)
                    failures = 0
                    async for line in response.aiter_lines():
                        item = parser.feed(line)
                        if item is not None and (include_done or not item.done):
                            yield item
            except httpx.TransportError as exc:
                failures += 1
                if not follow or failures >= self.retry.attempts:
                    raise self._unreachable(exc) from exc
            if parser.finished or not follow:
                return
            await asyncio.sleep(self.retry.delay(max(1, failures), None))

    # -- coord parity -----------------------------------------------------------------------
    async def coord_status(self, project: str | None = None, mission: str | None = None) -> dict[str, Any]:
        """``GET /api/coord/status``: mission status in coord's shape."""
        params = {k: v for k, v in {"project": project, "mission": mission}.items() if v is not None}
        result: dict[str, Any] = (await self._send(_Calls.get("/api/coord/status", params))).json()
        return result

    async def coord_tasks(
        self, project: str | None = None, mission: str | None = None, status: str | None = None
    ) -> dict[str, Any]:
        """``GET /api/coord/tasks``: the mission's tasks in coord's field names."""
        params = {k: v for k, v in {"project": project, "mission": mission, "status": status}.items() if v}
        result: dict[str, Any] = (await self._send(_Calls.get("/api/coord/tasks", params))).json()
        return result

    async def coord_task(self, task_id: str, project: str | None = None) -> dict[str, Any]:
        """``GET /api/coord/tasks/{id}``: one task with details, notes, blockers."""
        params = {"project": project} if project else None
        result: dict[str, Any] = (await self._send(_Calls.get(f"/api/coord/tasks/{_p(task_id)}", params))).json()
        return result

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
    ) -> AsyncWorker:
        """A worker claiming tasks of *roles* in *project* (see ``queue_service.worker``).

        Heartbeats run in a thread. When this client talks HTTP itself (or a
        ``heartbeat_transport`` was given) the thread has its own connection, so even a coroutine
        that blocks the event loop keeps its lease; with an injected async transport the thread
        sends through the event loop, and a blocking coroutine would starve it (plain functions
        run in a thread and never do).
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
