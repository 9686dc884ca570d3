"""Tasks: create (one or a batch), list, read, patch with If-Match, notes, cancel, retry, results,
stats and the dead-letter list."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status

from queue_service import exceptions, tracing
from queue_service.api import limits
from queue_service.api.deps import (
    AdminDep,
    KeyPath,
    PrincipalDep,
    ProjectPath,
    ReadDep,
    ServiceDep,
    StateDep,
    StrictJSONRoute,
    WorkDep,
)
from queue_service.api.schemas import (
    CancelRequest,
    ErrorBody,
    NoteCreate,
    NoteList,
    ResultsRequest,
    ResultsResponse,
    TaskBatch,
    TaskList,
    TaskResult,
)
from queue_service.auth import Action, Principal
from queue_service.models import KEY_RE, MAX_KEY_LEN, Note, QueueStats, Task, TaskCreate, TaskPage, TaskUpdate
from queue_service.service import QueueService, check_author

__all__ = ["etag", "parse_if_match", "router"]

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 412, 422, 429)
}

router = APIRouter(prefix="/v1/projects/{project}", tags=["tasks"], responses=_ERRORS, route_class=StrictJSONRoute)

_Text = Annotated[str | None, Query(max_length=200)]


def etag(task: Task) -> str:
    """The ETag of a task: its version, quoted."""
    return f'"{task.version}"'


def parse_if_match(value: str | None) -> int | None:
    """The version an ``If-Match`` header names (``"3"``, ``3``, ``W/"3"``), None for absent or ``*``.

    Raises:
        ValidationError: for anything else (several tags are not supported).
    """
    if value is None:
        return None
    text = value.strip()
    if text == "*":
        return None
    text = text.removeprefix("W/").strip('"')
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise exceptions.ValidationError(
            f'If-Match must be one task version such as "3" (from the ETag), got {value[:40]!r}',
            header="If-Match",
        )
    return int(text)


TraceParentHeader = Annotated[
    str | None,
    Header(alias="traceparent", max_length=tracing.MAX_TRACEPARENT, description="W3C trace context of the producer"),
]
TraceStateHeader = Annotated[
    str | None, Header(alias="tracestate", max_length=tracing.MAX_TRACESTATE, description="W3C vendor trace state")
]


def trace_headers(traceparent: str | None, tracestate: str | None) -> dict[str, str]:
    """The validated ``traceparent``/``tracestate`` request headers as task fields ({} without them).

    Raises:
        ValidationError: naming the header that is not W3C trace context.
    """
    if traceparent is None:
        if tracestate is not None:
            raise exceptions.ValidationError("tracestate header needs a traceparent header", header="tracestate")
        return {}
    for name, value, problem_of in (
        ("traceparent", traceparent, tracing.traceparent_problem),
        ("tracestate", tracestate, tracing.tracestate_problem),
    ):
        problem = problem_of(value) if value is not None else None
        if problem:
            raise exceptions.ValidationError(f"{name} header: {problem}", header=name)
    fields = {"traceparent": traceparent}
    if tracestate is not None:
        fields["tracestate"] = tracestate
    return fields


def _traced(item: TaskCreate, fields: dict[str, str]) -> TaskCreate:
    # the body's own trace context wins over the request's headers
    if not fields or item.traceparent is not None:
        return item
    return item.model_copy(update=fields)


async def _may_create(
    service: QueueService, principal: Principal, project: str, discovered_from: str | None, lease_token: str | None
) -> None:
    """Admins create tasks; the holder of a task may too, for work found while doing it (issue 11):
    an agent token or a lease token (``X-Queue-Lease-Token``) with ``?discovered_from=KEY`` and the
    live lease on KEY, which this renews."""
    if discovered_from is None:
        principal.check(Action.ADMIN, project)
        return
    if principal.allows(Action.ADMIN, project) and lease_token is None:
        await service.get_task(project, discovered_from)  # a typo names no task: refuse
        return
    principal.check(Action.WORK, project, discovered_from)
    token = lease_token or principal.lease_token
    if token is None:
        raise exceptions.Forbidden(
            f"this {principal.role.value} token may create a task only with discovered_from=KEY and your lease "
            "on KEY in the X-Queue-Lease-Token header",
            role=principal.role.value,
            action="admin",
            project=project,
        )
    if (principal.lease_key, principal.lease_token) != (discovered_from, token):  # the edge renewed that one
        await service.heartbeat(project, discovered_from, token)


@router.post("/tasks", response_model=Task, status_code=status.HTTP_201_CREATED)
async def create_task(
    project: ProjectPath,
    body: TaskCreate,
    response: Response,
    service: ServiceDep,
    principal: PrincipalDep,
    traceparent: TraceParentHeader = None,
    tracestate: TraceStateHeader = None,
    discovered_from: Annotated[
        str | None,
        Query(
            pattern=KEY_RE.pattern,
            max_length=MAX_KEY_LEN,
            description="the task you hold and found this work in (with X-Queue-Lease-Token, agents may create)",
        ),
    ] = None,
    lease_token: Annotated[
        str | None, Header(alias="X-Queue-Lease-Token", max_length=200, description="your lease on discovered_from")
    ] = None,
) -> Task:
    """Create one task (an existing ``idempotency_key`` returns the task created before). A W3C
    ``traceparent``/``tracestate`` (body fields, else request headers) is stored on the task.

    Admins create any task. The holder of task KEY (agent token or lease token) may create a task it
    discovered while working on KEY: ``?discovered_from=KEY`` plus its lease in ``X-Queue-Lease-Token``
    (renewed by the call); the new task records ``extra.discovered_from``.
    """
    await _may_create(service, principal, project, discovered_from, lease_token)
    if discovered_from is not None:
        body = body.model_copy(update={"extra": {**body.extra, "discovered_from": discovered_from}})
    task = await service.create_task(project, _traced(body, trace_headers(traceparent, tracestate)))
    response.headers["ETag"] = etag(task)
    return task


@router.post("/tasks/batch", response_model=TaskList, status_code=status.HTTP_201_CREATED)
async def create_tasks(
    project: ProjectPath,
    body: TaskBatch,
    service: ServiceDep,
    _: AdminDep,
    traceparent: TraceParentHeader = None,
    tracestate: TraceStateHeader = None,
) -> TaskList:
    """Create many tasks, all or nothing; ``depends_on: ["#0"]`` names the first task of the batch.
    Trace context headers apply to every task without its own."""
    fields = trace_headers(traceparent, tracestate)
    return TaskList(items=tuple(await service.create_tasks(project, [_traced(t, fields) for t in body.tasks])))


@router.get("/tasks", response_model=TaskPage)
async def list_tasks(
    project: ProjectPath,
    service: ServiceDep,
    state: StateDep,
    _: ReadDep,
    status: Annotated[
        list[str] | None, Query(max_length=20, description="status words; repeat or comma-separate")
    ] = None,
    role: _Text = None,
    assignee: _Text = None,
    mission: _Text = None,
    milestone: _Text = None,
    label: _Text = None,
    ready: Annotated[bool | None, Query(description="only tasks that could be claimed now")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=1000, description="next_cursor of the previous page")] = None,
) -> TaskPage:
    """Tasks matching every filter, in creation order, one page at a time.

    A page holds at most ``limit`` tasks and stops early once its JSON passes a few maximal results
    (``next_cursor`` then continues where it stopped).
    """
    filters: dict[str, object] = {
        name: value
        for name, value in {
            "role": role,
            "assignee": assignee,
            "mission": mission,
            "milestone": milestone,
            "label": label,
            "ready": ready,
        }.items()
        if value is not None
    }
    if status:
        words = [word.strip() for item in status for word in item.split(",") if word.strip()]
        if words:
            filters["status"] = words
    page = await service.list_tasks(project, filters, limit=limit, cursor=cursor)
    items, cut = limits.bounded_tasks(page.items, limits.page_budget(state.settings))
    if not cut:
        return page
    return TaskPage(items=items, next_cursor=limits.cursor_after(items[-1]))


@router.get("/tasks/{key}", response_model=Task)
async def get_task(project: ProjectPath, key: KeyPath, response: Response, service: ServiceDep, _: ReadDep) -> Task:
    """One task; the ``ETag`` header holds its version for a later ``If-Match``."""
    task = await service.get_task(project, key)
    response.headers["ETag"] = etag(task)
    return task


@router.patch("/tasks/{key}", response_model=Task)
async def update_task(
    project: ProjectPath,
    key: KeyPath,
    body: TaskUpdate,
    response: Response,
    service: ServiceDep,
    principal: AdminDep,
    if_match: Annotated[str | None, Header(alias="If-Match", max_length=100)] = None,
) -> Task:
    """Change the fields given; with ``If-Match: "<version>"`` a stale version answers 412."""
    task = await service.update_task(
        project, key, body, expected_version=parse_if_match(if_match), actor=principal.actor
    )
    response.headers["ETag"] = etag(task)
    return task


@router.post("/tasks/{key}/notes", response_model=Note, status_code=status.HTTP_201_CREATED)
async def add_note(project: ProjectPath, key: KeyPath, body: NoteCreate, state: StateDep, principal: WorkDep) -> Note:
    """Append a note (with ``token``, only the lease holder may).

    With auth on, the note carries the token's principal: ``author`` given by the caller is kept only
    as a label next to it (``bot-7 [token:ab12]``). Service names (``workspace-sync``) are refused.
    """
    limits.check_note_text(body.text, state.settings)
    author = body.author or principal.actor
    if body.author is not None:
        check_author(body.author)
        if principal.authenticated and body.author.strip() != principal.actor:
            author = f"{body.author.strip()} [{principal.actor}]"
    # a lease-token caller's note is written as the holder even without ``token`` in the body
    return await state.service.add_note(project, key, author, body.text, body.token or principal.lease_token)


@router.get("/tasks/{key}/notes", response_model=NoteList)
async def list_notes(project: ProjectPath, key: KeyPath, service: ServiceDep, _: ReadDep) -> NoteList:
    """A task's notes, oldest first."""
    return NoteList(items=tuple(await service.list_notes(project, key)))


@router.post("/tasks/{key}/cancel", response_model=Task)
async def cancel_task(
    project: ProjectPath,
    key: KeyPath,
    service: ServiceDep,
    principal: AdminDep,
    body: CancelRequest | None = None,
) -> Task:
    """Withdraw a task; dependents become blocked."""
    return await service.cancel_task(project, key, body.reason if body else None, actor=principal.actor)


@router.post("/tasks/{key}/retry", response_model=Task)
async def retry_task(project: ProjectPath, key: KeyPath, service: ServiceDep, principal: AdminDep) -> Task:
    """Bring a failed, blocked or cancelled task back to not-started with its attempts reset."""
    return await service.retry_task(project, key, actor=principal.actor)


@router.get("/tasks/{key}/blockers", response_model=TaskList)
async def blockers(project: ProjectPath, key: KeyPath, service: ServiceDep, _: ReadDep) -> TaskList:
    """The task's dependencies that are not done yet."""
    return TaskList(items=tuple(await service.blockers(project, key)))


@router.get("/tasks/{key}/dependents", response_model=TaskList)
async def dependents(project: ProjectPath, key: KeyPath, service: ServiceDep, _: ReadDep) -> TaskList:
    """The tasks that depend directly on this one."""
    return TaskList(items=tuple(await service.dependents(project, key)))


@router.post("/results", response_model=ResultsResponse)
async def results(project: ProjectPath, body: ResultsRequest, service: ServiceDep, _: ReadDep) -> ResultsResponse:
    """Status and result of the tasks asked for (the cost grows with the keys, not the project)."""
    keys = list(dict.fromkeys(body.keys))
    found = {t.key: t for t in await service.get_tasks(project, keys)}
    return ResultsResponse(
        items=tuple(TaskResult.of(found[k]) for k in keys if k in found),
        missing=tuple(k for k in keys if k not in found),
    )


@router.get("/stats", response_model=QueueStats)
async def stats(project: ProjectPath, service: ServiceDep, _: ReadDep) -> QueueStats:
    """Counts per status, queue depth per role, in-flight leases, dead-letter size."""
    return await service.stats(project)


@router.get("/dead-letter", response_model=TaskList)
async def dead_letter(
    project: ProjectPath, service: ServiceDep, _: ReadDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> TaskList:
    """Failed tasks (retries exhausted or permanent errors), most recent first."""
    return TaskList(items=tuple(await service.dead_letter(project, limit)))
