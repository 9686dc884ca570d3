"""Projects and missions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, TypeVar

from fastapi import APIRouter, Query, status

from queue_service.api.deps import (
    AdminDep,
    MissionPath,
    PrincipalDep,
    ProjectPath,
    ReadDep,
    ServiceDep,
    StrictJSONRoute,
)
from queue_service.api.schemas import ErrorBody, MissionList, ProjectList
from queue_service.auth import Action
from queue_service.models import Mission, MissionCreate, Project, ProjectCreate, ProjectUpdate

__all__ = ["LIST_DEFAULT", "LIST_MAX", "router"]

T = TypeVar("T")

_ERRORS: dict[int | str, dict[str, object]] = {code: {"model": ErrorBody} for code in (401, 403, 404, 409, 422)}

router = APIRouter(prefix="/v1/projects", tags=["projects"], responses=_ERRORS, route_class=StrictJSONRoute)


@router.post("", response_model=Project, status_code=status.HTTP_201_CREATED)
async def create_project(body: ProjectCreate, service: ServiceDep, _: AdminDep) -> Project:
    """Create a project and its ``default`` mission (needs a global admin token when auth is on)."""
    return await service.create_project(body)


#: default and largest page of the project and mission lists (issue 11: every listing is bounded)
LIST_DEFAULT = 100
LIST_MAX = 1000
_Limit = Annotated[int, Query(ge=1, le=LIST_MAX, description=f"page size (1-{LIST_MAX})")]
_Cursor = Annotated[str | None, Query(max_length=12, pattern=r"^[0-9]+$", description="next_cursor of the last page")]


def _page(items: Sequence[T], limit: int, cursor: str | None) -> tuple[tuple[T, ...], str | None]:
    """One page of an in-memory list; the cursor is the position of the page's first item."""
    start = int(cursor or 0)
    end = start + limit
    return tuple(items[start:end]), (str(end) if end < len(items) else None)


@router.get("", response_model=ProjectList)
async def list_projects(
    service: ServiceDep, principal: PrincipalDep, limit: _Limit = LIST_DEFAULT, cursor: _Cursor = None
) -> ProjectList:
    """The projects the caller may read, ``limit`` at a time (``next_cursor`` when more follow)."""
    projects = [p for p in await service.list_projects() if principal.allows(Action.READ, p.slug)]
    items, next_cursor = _page(projects, limit, cursor)
    return ProjectList(items=items, total=len(projects), next_cursor=next_cursor)


@router.get("/{project}", response_model=Project)
async def get_project(project: ProjectPath, service: ServiceDep, _: ReadDep) -> Project:
    """One project."""
    return await service.get_project(project)


@router.patch("/{project}", response_model=Project)
async def update_project(project: ProjectPath, body: ProjectUpdate, service: ServiceDep, _: AdminDep) -> Project:
    """Change a project's name or workspace."""
    return await service.update_project(project, body)


@router.post("/{project}/missions", response_model=Mission, status_code=status.HTTP_201_CREATED)
async def create_mission(project: ProjectPath, body: MissionCreate, service: ServiceDep, _: AdminDep) -> Mission:
    """Create a mission (a plan with ordered milestones and its own TASKS.md)."""
    return await service.create_mission(project, body)


@router.get("/{project}/missions", response_model=MissionList)
async def list_missions(
    project: ProjectPath, service: ServiceDep, _: ReadDep, limit: _Limit = LIST_DEFAULT, cursor: _Cursor = None
) -> MissionList:
    """A project's missions, ``default`` first, ``limit`` at a time (``next_cursor`` when more follow)."""
    missions = await service.list_missions(project)
    items, next_cursor = _page(missions, limit, cursor)
    return MissionList(items=items, total=len(missions), next_cursor=next_cursor)


@router.get("/{project}/missions/{mission}", response_model=Mission)
async def get_mission(project: ProjectPath, mission: MissionPath, service: ServiceDep, _: ReadDep) -> Mission:
    """One mission."""
    return await service.get_mission(project, mission)
