"""Every endpoint as a :class:`Request`: path, body, retry safety and how to read the answer.

Written once for both clients; ``Client`` sends these with blocking I/O, ``AsyncClient`` awaits them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypedDict, TypeVar, cast
from urllib.parse import quote

import httpx
import pydantic
import pydantic_core

from queue_service import exceptions, tracing
from queue_service.agents import Agent, AgentRegister
from queue_service.client._base import DEFAULT_TIMEOUT, LEASE_HEADER, Request
from queue_service.models import (
    Claim,
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
    validated,
)
from queue_service.wire import DEFAULT_STREAM, HealthStatus, ResultsResponse, StreamChunk, StreamPage

M = TypeVar("M", bound=pydantic.BaseModel)


class TaskQuery(TypedDict, total=False):
    """The filters of ``list_tasks``/``iter_tasks``; a task matches when it matches every one given."""

    status: str | Sequence[str] | None
    role: str | None
    assignee: str | None
    mission: str | None
    milestone: str | None
    label: str | None
    ready: bool | None


_TASK_QUERY_KEYS = frozenset(TaskQuery.__annotations__)


# -- reading answers ----------------------------------------------------------------------------


def stream_page(chunks: list[StreamChunk], after: str | None) -> StreamPage:
    """Chunks read without following (the done marker last, if the stream ended) as one page; its
    cursor is the last id read, else *after* (``"0"``: the start)."""
    return StreamPage(
        chunks=chunks, done=bool(chunks and chunks[-1].done), cursor=chunks[-1].id if chunks else after or "0"
    )


def _unexpected(response: httpx.Response, exc: Exception, status: bool = True) -> exceptions.QueueServiceError:
    code = f" ({response.status_code})" if status else ""
    return exceptions.QueueServiceError(
        f"unexpected response from {response.request.method} {response.request.url.path}{code}: {exc}"
    )


def one(model: type[M]) -> Callable[[httpx.Response], M]:
    """Read the body as one *model*."""

    def parse(response: httpx.Response) -> M:
        try:
            return model.model_validate(response.json(), extra="ignore")
        except (ValueError, pydantic.ValidationError) as exc:
            raise _unexpected(response, exc) from exc

    return parse


def items(model: type[M]) -> Callable[[httpx.Response], list[M]]:
    """Read the body's ``items`` as a list of *model*."""

    def parse(response: httpx.Response) -> list[M]:
        try:
            return [model.model_validate(item, extra="ignore") for item in response.json()["items"]]
        except (ValueError, KeyError, TypeError, pydantic.ValidationError) as exc:
            raise _unexpected(response, exc, status=False) from exc

    return parse


def _json_object(response: httpx.Response) -> dict[str, Any]:
    result: dict[str, Any] = response.json()
    return result


def _claim(response: httpx.Response) -> Claim | None:
    return None if response.status_code == 204 else one(Claim)(response)


def _ids(response: httpx.Response) -> list[str]:
    return list(response.json()["ids"])


def _nothing(_response: httpx.Response) -> None:
    return None


# -- building bodies ----------------------------------------------------------------------------


def _p(value: str) -> str:
    """A path segment, quoted so that no value can change the path."""
    return quote(value, safe="")


def _task_path(project: str, key: str, *rest: str) -> str:
    return "/".join((f"/v1/projects/{_p(project)}/tasks/{_p(key)}", *rest))


def _dump(data: pydantic.BaseModel | Mapping[str, Any]) -> Any:
    if isinstance(data, pydantic.BaseModel):
        return data.model_dump(mode="json", exclude_unset=True)
    # a mapping may hold models (a MissionCreate's milestones) or datetimes: make it plain JSON
    return pydantic_core.to_jsonable_python(dict(data))


def _given(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _get(path: str, parse: Callable[[httpx.Response], Any], params: dict[str, Any] | None = None) -> Request[Any]:
    return Request("GET", path, parse, params=params, idempotent=True)


# -- health -------------------------------------------------------------------------------------


def health() -> Request[HealthStatus]:
    return _get("/healthz", one(HealthStatus))


def readiness() -> Request[HealthStatus]:
    return _get("/readyz", one(HealthStatus))


def metrics() -> Request[str]:
    return _get("/metrics", lambda response: response.text)


# -- projects and missions ----------------------------------------------------------------------


def create_project(data: ProjectCreate | Mapping[str, Any]) -> Request[Project]:
    return Request("POST", "/v1/projects", one(Project), _dump(data))


#: the project and mission lists are paged (default 100); these calls ask for them whole, up to the max
_WHOLE_LIST = {"limit": 1000}


def list_projects() -> Request[list[Project]]:
    return _get("/v1/projects", items(Project), _WHOLE_LIST)


def get_project(project: str) -> Request[Project]:
    return _get(f"/v1/projects/{_p(project)}", one(Project))


def update_project(project: str, patch: ProjectUpdate | Mapping[str, Any]) -> Request[Project]:
    return Request("PATCH", f"/v1/projects/{_p(project)}", one(Project), _dump(patch))


# -- agents (issue 13) ----------------------------------------------------------------------------


def array(model: type[M]) -> Callable[[httpx.Response], list[M]]:
    """Read the body, a JSON array, as a list of *model*."""

    def parse(response: httpx.Response) -> list[M]:
        try:
            return [model.model_validate(item, extra="ignore") for item in response.json()]
        except (ValueError, TypeError, pydantic.ValidationError) as exc:
            raise _unexpected(response, exc, status=False) from exc

    return parse


def register_agent(project: str, data: AgentRegister | Mapping[str, Any]) -> Request[Agent]:
    return Request("POST", f"/v1/projects/{_p(project)}/agents", one(Agent), _dump(data))


def agent_heartbeat(project: str, agent_id: str) -> Request[Agent]:
    return Request("POST", f"/v1/projects/{_p(project)}/agents/{_p(agent_id)}/heartbeat", one(Agent))


def drain_agent(project: str, agent_id: str) -> Request[Agent]:
    return Request("POST", f"/v1/projects/{_p(project)}/agents/{_p(agent_id)}/drain", one(Agent))


def list_agents(project: str) -> Request[list[Agent]]:
    return _get(f"/v1/projects/{_p(project)}/agents", array(Agent))


def create_mission(project: str, data: MissionCreate | Mapping[str, Any]) -> Request[Mission]:
    return Request("POST", f"/v1/projects/{_p(project)}/missions", one(Mission), _dump(data))


def list_missions(project: str) -> Request[list[Mission]]:
    return _get(f"/v1/projects/{_p(project)}/missions", items(Mission), _WHOLE_LIST)


def get_mission(project: str, mission: str) -> Request[Mission]:
    return _get(f"/v1/projects/{_p(project)}/missions/{_p(mission)}", one(Mission))


# -- tasks --------------------------------------------------------------------------------------


def create_task(
    project: str,
    data: TaskCreate | Mapping[str, Any] | str,
    discovered_from: str | None = None,
    token: str | None = None,
) -> Request[Task]:
    # ``create_task(project, "title")`` is a task with just that title; with OpenTelemetry, the
    # caller's current trace continues in the agent that runs the task (issue 14)
    body = tracing.with_producer_context(
        _dump({"title": data} if isinstance(data, str) else data), tracing.current_fields()
    )
    keyed = bool(body.get("idempotency_key"))
    request = Request("POST", f"/v1/projects/{_p(project)}/tasks", one(Task), body, idempotent=keyed)
    if discovered_from is not None:
        # found while holding *discovered_from*: the lease there authorises it (issue 11)
        request.params = {"discovered_from": discovered_from}
    if token is not None:
        request.headers[LEASE_HEADER] = token
    return request


def create_tasks(project: str, tasks: Iterable[TaskCreate | Mapping[str, Any]]) -> Request[list[Task]]:
    trace_fields = tracing.current_fields()
    bodies = [tracing.with_producer_context(_dump(item), trace_fields) for item in tasks]
    keyed = bool(bodies) and all(t.get("idempotency_key") for t in bodies)
    path = f"/v1/projects/{_p(project)}/tasks/batch"
    return Request("POST", path, items(Task), {"tasks": bodies}, idempotent=keyed)


def task_query(filters: TaskFilter | Mapping[str, Any] | None, query: TaskQuery) -> TaskQuery:
    """A ``list_tasks`` call's filters, given either as one TaskFilter or mapping (QueueService's
    spelling, checked here: ValidationError naming a bad filter, or one REST cannot apply) or as
    keywords, not both."""
    if not filters:
        return query
    if query:
        raise TypeError("list_tasks takes its filters as one mapping or as keywords, not both")
    given = validated(TaskFilter, filters).model_dump(mode="json", exclude_none=True)
    for name in given:
        if name not in _TASK_QUERY_KEYS:
            # listing everything instead would answer a question nobody asked
            raise exceptions.ValidationError(
                f"the task filter {name!r} is not available through the REST API", field=name
            )
    return cast(TaskQuery, given)


def list_tasks(project: str, query: TaskQuery, limit: int, cursor: str | None) -> Request[TaskPage]:
    params: dict[str, Any] = {}
    status = query.get("status")
    if status is not None:
        params["status"] = [status] if isinstance(status, str) else list(status)
    for name in ("role", "assignee", "mission", "milestone", "label"):
        value = query.get(name)
        if value is not None:
            params[name] = value
    ready = query.get("ready")
    if ready is not None:
        params["ready"] = "true" if ready else "false"
    params["limit"] = limit
    if cursor is not None:
        params["cursor"] = cursor
    return _get(f"/v1/projects/{_p(project)}/tasks", one(TaskPage), params)


def get_task(project: str, key: str) -> Request[Task]:
    return _get(_task_path(project, key), one(Task))


def update_task(
    project: str, key: str, patch: TaskUpdate | Mapping[str, Any], expected_version: int | None
) -> Request[Task]:
    headers = {"If-Match": f'"{expected_version}"'} if expected_version is not None else {}
    return Request("PATCH", _task_path(project, key), one(Task), _dump(patch), headers=headers)


def _task_op(
    project: str, key: str, op: str, parse: Callable[[httpx.Response], M], body: Any, *, idempotent: bool = False
) -> Request[M]:
    return Request("POST", _task_path(project, key, op), parse, body, idempotent=idempotent)


def add_note(project: str, key: str, text: str, author: str | None, token: str | None) -> Request[Note]:
    return _task_op(project, key, "notes", one(Note), _given(text=text, author=author, token=token))


def list_notes(project: str, key: str) -> Request[list[Note]]:
    return _get(_task_path(project, key, "notes"), items(Note))


def cancel_task(project: str, key: str, reason: str | None) -> Request[Task]:
    return _task_op(project, key, "cancel", one(Task), _given(reason=reason), idempotent=True)


def retry_task(project: str, key: str) -> Request[Task]:
    return _task_op(project, key, "retry", one(Task), None)


def blockers(project: str, key: str) -> Request[list[Task]]:
    return _get(_task_path(project, key, "blockers"), items(Task))


def dependents(project: str, key: str) -> Request[list[Task]]:
    return _get(_task_path(project, key, "dependents"), items(Task))


def results(project: str, keys: Sequence[str]) -> Request[ResultsResponse]:
    path = f"/v1/projects/{_p(project)}/results"
    return Request("POST", path, one(ResultsResponse), {"keys": list(keys)}, idempotent=True)


def stats(project: str) -> Request[QueueStats]:
    return _get(f"/v1/projects/{_p(project)}/stats", one(QueueStats))


def dead_letter(project: str, limit: int) -> Request[list[Task]]:
    return _get(f"/v1/projects/{_p(project)}/dead-letter", items(Task), {"limit": limit})


def ready_tasks(project: str, roles: Sequence[str] | None, limit: int) -> Request[ReadyList]:
    params: dict[str, Any] = {"limit": limit}
    if roles:
        params["role"] = ",".join(roles)
    return _get(f"/v1/projects/{_p(project)}/ready", one(ReadyList), params)


# -- dispatch -----------------------------------------------------------------------------------


def claim(
    project: str,
    agent: str,
    roles: Sequence[str] | None,
    wait_seconds: float,
    lease_seconds: float | None,
    lease_profile: str,
) -> Request[Claim | None]:
    body: dict[str, Any] = {"agent": agent, "wait_seconds": wait_seconds}
    if lease_profile != "worker":
        body["lease_profile"] = lease_profile
    if roles:
        body["roles"] = list(roles)
    if lease_seconds is not None:
        body["lease_seconds"] = lease_seconds
    path = f"/v1/projects/{_p(project)}/claims"
    return Request("POST", path, _claim, body, timeout=DEFAULT_TIMEOUT + wait_seconds)


def _claims(response: httpx.Response) -> list[Claim]:
    try:
        return [Claim.model_validate(c, extra="ignore") for c in response.json()["claims"]]
    except (ValueError, KeyError, TypeError, pydantic.ValidationError) as exc:
        raise _unexpected(response, exc, status=False) from exc


def claim_many(
    project: str,
    agent: str,
    roles: Sequence[str] | None,
    limit: int,
    wait_seconds: float,
    lease_seconds: float | None,
) -> Request[list[Claim]]:
    body: dict[str, Any] = {"agent": agent, "wait_seconds": wait_seconds, "limit": limit}
    if roles:
        body["roles"] = list(roles)
    if lease_seconds is not None:
        body["lease_seconds"] = lease_seconds
    path = f"/v1/projects/{_p(project)}/claims"
    return Request("POST", path, _claims, body, timeout=DEFAULT_TIMEOUT + wait_seconds)


def _completions(response: httpx.Response) -> list[Task | exceptions.QueueServiceError]:
    out: list[Task | exceptions.QueueServiceError] = []
    try:
        for item in response.json()["results"]:
            if item.get("task") is not None:
                out.append(Task.model_validate(item["task"], extra="ignore"))
                continue
            error = item["error"]
            exc = exceptions.error_class_for_code(str(error["code"]))(str(error["message"]))
            exc.details = dict(error.get("details") or {})
            out.append(exc)
    except (ValueError, KeyError, TypeError, pydantic.ValidationError) as exc:
        raise _unexpected(response, exc, status=False) from exc
    return out


def complete_many(
    project: str, entries: Sequence[tuple[str, str, Any]]
) -> Request[list[Task | exceptions.QueueServiceError]]:
    # like complete: a token completes a task at most once, so a repeat is safe
    body = {"items": [{"key": key, "token": token, "result": result} for key, token, result in entries]}
    return Request("POST", f"/v1/projects/{_p(project)}/completions", _completions, body, idempotent=True)


def heartbeat(project: str, key: str, token: str, lease_seconds: float | None) -> Request[Lease]:
    return _task_op(project, key, "heartbeat", one(Lease), _given(token=token, lease_seconds=lease_seconds))


def complete(project: str, key: str, token: str, result: Any) -> Request[Task]:
    # a token completes a task at most once, so a repeat is safe (see Client.complete)
    body = {"token": token, "result": result}
    return _task_op(project, key, "complete", one(Task), body, idempotent=True)


def fail(project: str, key: str, token: str, error: str, retryable: bool) -> Request[Task]:
    body = {"token": token, "error": error, "retryable": retryable}
    return _task_op(project, key, "fail", one(Task), body, idempotent=True)


def release(project: str, key: str, token: str) -> Request[Task]:
    return _task_op(project, key, "release", one(Task), {"token": token})


# -- task output streams (issue 14) -------------------------------------------------------------


def publish(project: str, key: str, chunks: str | Sequence[str], token: str, stream: str) -> Request[list[str]]:
    body = {"token": token, "chunks": [chunks] if isinstance(chunks, str) else list(chunks)}
    return Request("POST", _task_path(project, key, "stream"), _ids, body, params={"stream": stream})


def end_stream(project: str, key: str, token: str, stream: str = DEFAULT_STREAM) -> Request[None]:
    body = {"token": token, "done": True}
    return Request("POST", _task_path(project, key, "stream"), _nothing, body, params={"stream": stream})


# -- coord parity -------------------------------------------------------------------------------


def coord_status(project: str | None, mission: str | None) -> Request[dict[str, Any]]:
    return _get("/api/coord/status", _json_object, _given(project=project, mission=mission))


def coord_tasks(project: str | None, mission: str | None, status: str | None) -> Request[dict[str, Any]]:
    params = {k: v for k, v in {"project": project, "mission": mission, "status": status}.items() if v}
    return _get("/api/coord/tasks", _json_object, params)


def coord_task(task_id: str, project: str | None) -> Request[dict[str, Any]]:
    return _get(f"/api/coord/tasks/{_p(task_id)}", _json_object, {"project": project} if project else None)
