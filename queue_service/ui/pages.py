"""The dashboard's read-only pages (GET). Each checks the caller's READ scope for the project first,
so a refusal never reveals whether a project exists."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from queue_service import exceptions
from queue_service.api.deps import get_service, get_state
from queue_service.auth import Action, Principal
from queue_service.models import TaskFilter, TaskStatus, parse_status, validate_slug, validated
from queue_service.ui import graphs, session, views
from queue_service.ui.render import error_page, page

__all__ = ["DAG_LIMIT", "redirect_home", "router", "throughput_tracker"]

router = APIRouter(prefix="/ui", include_in_schema=False)

_Text = Annotated[str | None, Query(max_length=200)]
_Statuses = Annotated[list[str], Query(max_length=10)]
_Cursor = Annotated[str | None, Query(max_length=200)]
#: most tasks drawn in one DAG (a mission bigger than this is cut, and the page says so)
DAG_LIMIT = 2000
#: rows per page in the list and dead-letter views
PAGE_ROWS = 100


async def _reader(request: Request, project: str | None) -> Principal:
    principal = await session.ui_principal(request)
    principal.check(Action.READ, project)
    return principal


def _blank(value: str | None) -> str | None:
    return value.strip() or None if value is not None else None


def _statuses(values: list[str]) -> tuple[TaskStatus, ...]:
    out: list[TaskStatus] = []
    for v in values:
        if v.strip():
            s = parse_status(v)
            if s not in out:
                out.append(s)
    order = [*views.BOARD_COLUMNS, TaskStatus.CANCELLED]
    return tuple(sorted(out, key=order.index))


def _fail(request: Request, principal: Principal | None, exc: exceptions.QueueServiceError) -> HTMLResponse:
    return error_page(request, principal, exc)


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request) -> Response:
    """Every project the caller may read: counts, ready depth per role, throughput, failures, agents."""
    principal = await session.ui_principal(request)
    service = get_service(request)
    throughput: views.Throughput = throughput_tracker(request)
    rows = []
    for project in await service.list_projects():
        if not principal.allows(Action.READ, project.slug):
            continue
        stats, buckets, holders = await asyncio.gather(
            service.stats(project.slug),
            throughput.buckets(service, project.slug),
            service.list_tasks(project.slug, TaskFilter(status=[TaskStatus.IN_PROGRESS]), limit=1000),
        )
        agents = {t.lease_holder for t in holders.items if t.lease_holder}
        rows.append(
            {
                "project": project,
                "stats": stats,
                "chart": graphs.throughput_chart(buckets),
                "agents": len(agents),
            }
        )
    return page(request, "overview.html", principal, rows=rows, statuses=list(TaskStatus))


def throughput_tracker(request: Request) -> views.Throughput:
    """The app's throughput tracker (made on first use; one per app)."""
    state = get_state(request)
    tracker = getattr(request.app.state, "ui_throughput", None)
    if not isinstance(tracker, views.Throughput) or getattr(tracker, "_owner", None) is not state:
        tracker = views.Throughput()
        tracker._owner = state  # type: ignore[attr-defined]
        request.app.state.ui_throughput = tracker
    return tracker


@router.get("/p/{project}", response_class=HTMLResponse)
async def board(
    request: Request,
    project: str,
    status: _Statuses = [],  # noqa: B006 - FastAPI copies query defaults
    role: _Text = None,
    assignee: _Text = None,
    label: _Text = None,
    mission: _Text = None,
    milestone: _Text = None,
    q: _Text = None,
    created: _Text = None,
) -> Response:
    """The kanban board with its filters (``created``: the key the create form just made)."""
    principal = await _reader(request, project)
    service = get_service(request)
    try:
        validate_slug(project)
        f = views.BoardFilter(
            statuses=_statuses(status),
            role=_blank(role),
            assignee=_blank(assignee),
            label=_blank(label),
            mission=_blank(mission),
            milestone=_blank(milestone),
            text=_blank(q),
        )
        proj = await service.get_project(project)
        columns = await views.board(service, project, f)
        missions = await service.list_missions(project)
    except exceptions.QueueServiceError as exc:
        return _fail(request, principal, exc)
    return page(
        request,
        "board.html",
        principal,
        project=project,
        proj=proj,
        columns=columns,
        f=f,
        missions=missions,
        all_statuses=list(TaskStatus),
        cards=views.CARDS,
        created=_blank(created),
    )


@router.get("/p/{project}/list", response_class=HTMLResponse)
async def task_list(
    request: Request,
    project: str,
    status: _Statuses = [],  # noqa: B006
    role: _Text = None,
    assignee: _Text = None,
    label: _Text = None,
    mission: _Text = None,
    milestone: _Text = None,
    q: _Text = None,
    cursor: _Cursor = None,
) -> Response:
    """Every task matching the filters, a page at a time (the board's "all N" links)."""
    principal = await _reader(request, project)
    service = get_service(request)
    try:
        filters = validated(
            TaskFilter,
            {
                "status": list(_statuses(status)) or None,
                "role": _blank(role),
                "assignee": _blank(assignee),
                "label": _blank(label),
                "mission": _blank(mission),
                "milestone": _blank(milestone),
                "text": _blank(q),
            },
        )
        found = await service.list_tasks(project, filters, limit=PAGE_ROWS, cursor=_blank(cursor))
    except exceptions.QueueServiceError as exc:
        return _fail(request, principal, exc)
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"]
    return page(
        request,
        "list.html",
        principal,
        project=project,
        tasks=found.items,
        next_cursor=found.next_cursor,
        params=params,
    )


@router.get("/p/{project}/tasks/{key}", response_class=HTMLResponse)
async def task_page(request: Request, project: str, key: str) -> Response:
    """Everything about one task, with the actions the caller may take."""
    principal = await _reader(request, project)
    service = get_service(request)
    try:
        task = await service.get_task(project, key)
        deps, dependents, notes, events = await asyncio.gather(
            service.get_tasks(project, list(task.depends_on)[:1000]),
            service.dependents(project, key),
            service.list_notes(project, key),
            service.task_events(project, key),
        )
    except exceptions.QueueServiceError as exc:
        return _fail(request, principal, exc)
    failures = [e for e in events if e.kind in ("failed", "lease_expired")]
    found = {t.key for t in deps}
    missing = [k for k in task.depends_on if k not in found]
    return page(
        request,
        "task.html",
        principal,
        project=project,
        task=task,
        deps=deps,
        missing_deps=missing,
        dependents=dependents,
        notes=notes,
        events=events,
        failures=failures,
        statuses=list(TaskStatus),
        priorities=["P0", "P1", "P2", "P3"],
    )


@router.get("/p/{project}/dead-letter", response_class=HTMLResponse)
async def dead_letter(
    request: Request,
    project: str,
    role: _Text = None,
    label: _Text = None,
    mission: _Text = None,
    cursor: _Cursor = None,
    message: _Text = None,
) -> Response:
    """Failed tasks, filterable, with retry of one, a selection, or all that match."""
    principal = await _reader(request, project)
    service = get_service(request)
    try:
        filters = TaskFilter(
            status=[TaskStatus.FAILED], role=_blank(role), label=_blank(label), mission=_blank(mission)
        )
        found = await service.list_tasks(project, filters, limit=PAGE_ROWS, cursor=_blank(cursor))
        stats = await service.stats(project)
    except exceptions.QueueServiceError as exc:
        return _fail(request, principal, exc)
    params = [(k, v) for k, v in request.query_params.multi_items() if k not in ("cursor", "message")]
    return page(
        request,
        "dead_letter.html",
        principal,
        project=project,
        tasks=found.items,
        next_cursor=found.next_cursor,
        total=stats.dead_letter,
        filt={"role": _blank(role) or "", "label": _blank(label) or "", "mission": _blank(mission) or ""},
        params=params,
        message=message,
    )


@router.get("/p/{project}/agents", response_class=HTMLResponse)
async def agents(request: Request, project: str) -> Response:
    """Each agent seen in the project: what it holds, lease left, last heartbeat, open assignments."""
    principal = await _reader(request, project)
    service = get_service(request)
    try:
        await service.get_project(project)
        rows = await views.agents(service, project)
    except exceptions.QueueServiceError as exc:
        return _fail(request, principal, exc)
    return page(request, "agents.html", principal, project=project, agents=rows)


@router.get("/p/{project}/missions/{mission}/dag", response_class=HTMLResponse)
async def dag(request: Request, project: str, mission: str) -> Response:
    """The mission's dependency graph as SVG, nodes coloured by status."""
    principal = await _reader(request, project)
    service = get_service(request)
    try:
        m = await service.get_mission(project, mission)
        tasks = [t async for t in views.iter_tasks(service, project, TaskFilter(mission=mission), DAG_LIMIT + 1)]
    except exceptions.QueueServiceError as exc:
        return _fail(request, principal, exc)
    cut = len(tasks) > DAG_LIMIT
    layout = graphs.layout_dag(tasks[:DAG_LIMIT])
    return page(request, "dag.html", principal, project=project, mission=m, dag=layout, cut=cut, limit=DAG_LIMIT)


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: _Text = None, reason: _Text = None) -> Response:
    """Where a browser trades an API token for a session cookie."""
    return page(request, "login.html", Principal.open(), next=_safe_next(next), reason=reason, login_page=True)


def _safe_next(value: str | None) -> str:
    """Only our own pages are valid targets after login (no open redirect)."""
    if value and value.startswith("/ui/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/ui/"


def redirect_home() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)
