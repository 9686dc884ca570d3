"""Coord parity views, shared by the REST routes (``/api/coord``) and the MCP ``coord_*`` tools.

Tasks appear in coord's TASKS.md vocabulary: ``id`` (the key), ``status`` (canonical word),
``description`` (the title), ``agent``, ``depends_on``, plus every extra column kept from TASKS.md
(``issue``, ``branch``, ``estimate``, ``notes``…) verbatim. The mission, when not named, is the one
active mission other than ``default`` if there is exactly one, else ``default``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from queue_service import exceptions
from queue_service.auth import Action, Principal
from queue_service.models import (
    CANONICAL_STATUS_WORDS,
    DEFAULT_MISSION,
    Mission,
    MissionStatus,
    Task,
    TaskStatus,
)
from queue_service.service import QueueService

__all__ = ["coord_task", "mission_status", "mission_tasks", "resolve_mission", "resolve_project", "task_detail"]

_MAX_TASKS = 50_000
_PAGE = 1000


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


async def resolve_project(
    service: QueueService, principal: Principal, project: str | None, *, how: str = "pass project"
) -> str:
    """*project*, or else the only project this caller may read; Forbidden unless it may read it.

    *how* tells the caller how to name a project when there are several (``pass ?project=``).
    """
    if project is None:
        projects = [p.slug for p in await service.list_projects() if principal.allows(Action.READ, p.slug)]
        if not projects:
            raise exceptions.ProjectNotFound("there is no project yet; create one first")
        if len(projects) > 1:
            raise exceptions.ValidationError(
                f"there are {len(projects)} projects; {how} (one of {', '.join(projects[:20])})",
                projects=projects[:100],
            )
        project = projects[0]
    principal.check(Action.READ, project)
    return project


async def resolve_mission(service: QueueService, project: str, mission: str | None) -> Mission:
    """The named mission, or the default one (see the module docstring)."""
    if mission is not None:
        return await service.get_mission(project, mission)
    missions = await service.list_missions(project)
    active = [m for m in missions if m.id != DEFAULT_MISSION and m.status is MissionStatus.ACTIVE]
    if len(active) == 1:
        return active[0]
    return await service.get_mission(project, DEFAULT_MISSION)


async def mission_tasks(service: QueueService, project: str, mission: str) -> list[Task]:
    """Every task of a mission (up to 50,000), in creation order."""
    tasks: list[Task] = []
    cursor: str | None = None
    while len(tasks) < _MAX_TASKS:
        page = await service.list_tasks(project, {"mission": mission}, limit=_PAGE, cursor=cursor)
        tasks.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    return tasks


async def mission_status(service: QueueService, project: str, mission: str | None) -> dict[str, Any]:
    """Mission status: counts per status, progress, milestones, active and next tasks."""
    m = await resolve_mission(service, project, mission)
    tasks = await mission_tasks(service, project, m.id)
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
    ready_page = await service.list_tasks(project, {"mission": m.id, "ready": True}, limit=10)
    return {
        "project": project,
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


async def task_detail(service: QueueService, project: str, key: str) -> dict[str, Any]:
    """One task with its long details, notes, blockers and dependents."""
    task = await service.get_task(project, key)
    notes = await service.list_notes(project, key)
    blockers = await service.blockers(project, key)
    dependents = await service.dependents(project, key)
    return {
        "project": project,
        **coord_task(task),
        "details": task.description,
        "notes_log": [{"author": n.author, "text": n.text, "at": _iso(n.created_at)} for n in notes],
        "blocked_by": [t.key for t in blockers],
        "unblocks": [t.key for t in dependents],
        "result": task.result,
    }
