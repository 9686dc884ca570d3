"""Coord parity: the read-only views the gateway used to get from ``@mosaic/coord``.

Tasks appear in coord's TASKS.md vocabulary: ``id`` (the key), ``status`` (canonical word),
``description`` (the title), ``agent``, ``depends_on``, plus every extra column kept from TASKS.md
(``issue``, ``branch``, ``estimate``, ``notes``…) verbatim. The project is ``?project=`` or, when
omitted, the only project there is. The mission is ``?mission=`` or, when omitted, the one active
mission other than ``default`` if there is exactly one, else ``default``.
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Query

from queue_service import exceptions
from queue_service.api.deps import KeyPath, PrincipalDep, ServiceDep, StrictJSONRoute
from queue_service.api.schemas import ErrorBody
from queue_service.auth import Action, Principal
from queue_service.models import (
    CANONICAL_STATUS_WORDS,
    DEFAULT_MISSION,
    SLUG_RE,
    Mission,
    MissionStatus,
    Task,
    TaskStatus,
    parse_status,
)
from queue_service.service import QueueService

__all__ = ["coord_task", "router"]

_MAX_TASKS = 50_000
_PAGE = 1000

router = APIRouter(
    prefix="/api/coord",
    tags=["coord"],
    responses={code: {"model": ErrorBody} for code in (401, 403, 404, 422)},
    route_class=StrictJSONRoute,
)

_ProjectQuery = Annotated[
    str | None, Query(pattern=SLUG_RE.pattern, max_length=63, description="project slug (default: the only one)")
]
_MissionQuery = Annotated[str | None, Query(pattern=SLUG_RE.pattern, max_length=63, description="mission id")]


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def coord_task(task: Task) -> dict[str, Any]:
    """A task in coord's TASKS.md field names (extra columns verbatim; ours win when set)."""
    out: dict[str, Any] = dict(task.extra)
    core: dict[str, Any] = {
        "id": task.key,
        "status": task.status.value,
        "description": task.title,
        "agent": task.assignee,
        "depends_on": list(task.depends_on),
        "milestone": task.milestone,
        "mission": task.mission,
        "priority": task.priority.value,
        "role": task.role,
        "labels": list(task.labels),
        "attempts": task.attempts,
        "started_at": _iso(task.started_at),
        "completed_at": _iso(task.completed_at),
        "updated_at": _iso(task.updated_at),
        "lease_expires_at": _iso(task.lease_expires_at),
        "last_error": task.last_error,
        "version": task.version,
    }
    for name, value in core.items():
        if value is not None or name not in out:
            out[name] = value
    return out


async def _resolve_project(service: QueueService, principal: Principal, project: str | None) -> str:
    if project is None:
        projects = [p.slug for p in await service.list_projects() if principal.allows(Action.READ, p.slug)]
        if not projects:
            raise exceptions.ProjectNotFound("there is no project yet; create one first")
        if len(projects) > 1:
            raise exceptions.ValidationError(
                f"there are {len(projects)} projects; pass ?project= (one of {', '.join(projects[:20])})",
                projects=projects[:100],
            )
        project = projects[0]
    principal.check(Action.READ, project)
    return project


async def _resolve_mission(service: QueueService, project: str, mission: str | None) -> Mission:
    if mission is not None:
        return await service.get_mission(project, mission)
    missions = await service.list_missions(project)
    active = [m for m in missions if m.id != DEFAULT_MISSION and m.status is MissionStatus.ACTIVE]
    if len(active) == 1:
        return active[0]
    return await service.get_mission(project, DEFAULT_MISSION)


async def _mission_tasks(service: QueueService, project: str, mission: str) -> list[Task]:
    tasks: list[Task] = []
    cursor: str | None = None
    while len(tasks) < _MAX_TASKS:
        page = await service.list_tasks(project, {"mission": mission}, limit=_PAGE, cursor=cursor)
        tasks.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    return tasks


@router.get("/status")
async def coord_status(
    service: ServiceDep, principal: PrincipalDep, project: _ProjectQuery = None, mission: _MissionQuery = None
) -> dict[str, Any]:
    """Mission status: counts per status, progress, milestones, active and next tasks."""
    slug = await _resolve_project(service, principal, project)
    m = await _resolve_mission(service, slug, mission)
    tasks = await _mission_tasks(service, slug, m.id)
    counts = Counter(t.status.value for t in tasks)
    done = counts[TaskStatus.DONE.value]
    milestones = []
    for ms in m.milestones:
        in_ms = [t for t in tasks if t.milestone == ms.id]
        ms_counts = Counter(t.status.value for t in in_ms)
        milestones.append(
            {
                "id": ms.id,
                "name": ms.name,
                "status": ms.status.value,
                "total": len(in_ms),
                "done": ms_counts[TaskStatus.DONE.value],
                "counts": {word: ms_counts[word] for word in CANONICAL_STATUS_WORDS},
            }
        )
    ready_page = await service.list_tasks(slug, {"mission": m.id, "ready": True}, limit=10)
    return {
        "project": slug,
        "mission": {"id": m.id, "name": m.name, "status": m.status.value, "tasks_file": m.tasks_file},
        "status": m.status.value,
        "counts": {"total": len(tasks), **{word: counts[word] for word in CANONICAL_STATUS_WORDS}},
        "progress": {
            "done": done,
            "total": len(tasks),
            "percent": round(100 * done / len(tasks), 1) if tasks else 0.0,
        },
        "milestones": milestones,
        "active_tasks": [
            {"id": t.key, "agent": t.assignee, "started_at": _iso(t.started_at), "description": t.title}
            for t in tasks
            if t.status is TaskStatus.IN_PROGRESS
        ],
        "next_tasks": [t.key for t in ready_page.items],
    }


@router.get("/tasks")
async def coord_tasks(
    service: ServiceDep,
    principal: PrincipalDep,
    project: _ProjectQuery = None,
    mission: _MissionQuery = None,
    status: Annotated[str | None, Query(max_length=200, description="comma-separated status words")] = None,
) -> dict[str, Any]:
    """The mission's tasks in TASKS.md order (creation order), optionally filtered by status."""
    slug = await _resolve_project(service, principal, project)
    m = await _resolve_mission(service, slug, mission)
    tasks = await _mission_tasks(service, slug, m.id)
    if status:
        wanted = {parse_status(word) for word in status.split(",") if word.strip()}
        tasks = [t for t in tasks if t.status in wanted]
    return {"project": slug, "mission": m.id, "tasks": [coord_task(t) for t in tasks]}


@router.get("/tasks/{id}")
async def coord_task_detail(
    id: KeyPath,
    service: ServiceDep,
    principal: PrincipalDep,
    project: _ProjectQuery = None,
) -> dict[str, Any]:
    """One task with its long details, notes, blockers and dependents."""
    slug = await _resolve_project(service, principal, project)
    task = await service.get_task(slug, id)
    notes = await service.list_notes(slug, id)
    blockers = await service.blockers(slug, id)
    dependents = await service.dependents(slug, id)
    return {
        "project": slug,
        **coord_task(task),
        "details": task.description,
        "notes_log": [{"author": n.author, "text": n.text, "at": _iso(n.created_at)} for n in notes],
        "blocked_by": [t.key for t in blockers],
        "unblocks": [t.key for t in dependents],
        "result": task.result,
    }
