"""Coord parity: the read-only views the gateway used to get from ``@mosaic/coord``.

Tasks appear in coord's TASKS.md vocabulary: ``id`` (the key), ``status`` (canonical word),
``description`` (the title), ``agent``, ``depends_on``, plus every extra column kept from TASKS.md
(``issue``, ``branch``, ``estimate``, ``notes``…) verbatim. The project is ``?project=`` or, when
omitted, the only project there is. The mission is ``?mission=`` or, when omitted, the one active
mission other than ``default`` if there is exactly one, else ``default``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from queue_service import coord
from queue_service.api.deps import KeyPath, PrincipalDep, ServiceDep, StrictJSONRoute
from queue_service.api.schemas import ErrorBody
from queue_service.auth import Principal
from queue_service.models import SLUG_RE, parse_status
from queue_service.service import QueueService

__all__ = ["coord_task", "router"]

#: kept importable from here (the views live in ``queue_service.coord``, shared with MCP)
coord_task = coord.coord_task

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


async def _resolve_project(service: QueueService, principal: Principal, project: str | None) -> str:
    return await coord.resolve_project(service, principal, project, how="pass ?project=")


@router.get("/status")
async def coord_status(
    service: ServiceDep, principal: PrincipalDep, project: _ProjectQuery = None, mission: _MissionQuery = None
) -> dict[str, Any]:
    """Mission status: counts per status, progress, milestones, active and next tasks."""
    slug = await _resolve_project(service, principal, project)
    return await coord.mission_status(service, slug, mission)


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
    m = await coord.resolve_mission(service, slug, mission)
    tasks = await coord.mission_tasks(service, slug, m.id)
    if status:
        wanted = {parse_status(word) for word in status.split(",") if word.strip()}
        tasks = [t for t in tasks if t.status in wanted]
    return {"project": slug, "mission": m.id, "tasks": [coord.coord_task(t) for t in tasks]}


@router.get("/tasks/{id}")
async def coord_task_detail(
    id: KeyPath,
    service: ServiceDep,
    principal: PrincipalDep,
    project: _ProjectQuery = None,
) -> dict[str, Any]:
    """One task with its long details, notes, blockers and dependents."""
    slug = await _resolve_project(service, principal, project)
    return await coord.task_detail(service, slug, id)
