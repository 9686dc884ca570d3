"""Projects and missions."""

from __future__ import annotations

from fastapi import APIRouter, status

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

__all__ = ["router"]

_ERRORS: dict[int | str, dict[str, object]] = {code: {"model": ErrorBody} for code in (401, 403, 404, 409, 422)}

router = APIRouter(prefix="/v1/projects", tags=["projects"], responses=_ERRORS, route_class=StrictJSONRoute)


@router.post("", response_model=Project, status_code=status.HTTP_201_CREATED)
async def create_project(body: ProjectCreate, service: ServiceDep, _: AdminDep) -> Project:
    """Create a project and its ``default`` mission (needs a global admin token when auth is on)."""
    return await service.create_project(body)


@router.get("", response_model=ProjectList)
async def list_projects(service: ServiceDep, principal: PrincipalDep) -> ProjectList:
    """The projects the caller may read."""
    projects = await service.list_projects()
    return ProjectList(items=tuple(p for p in projects if principal.allows(Action.READ, p.slug)))


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
async def list_missions(project: ProjectPath, service: ServiceDep, _: ReadDep) -> MissionList:
    """A project's missions, ``default`` first."""
    return MissionList(items=tuple(await service.list_missions(project)))


@router.get("/{project}/missions/{mission}", response_model=Mission)
async def get_mission(project: ProjectPath, mission: MissionPath, service: ServiceDep, _: ReadDep) -> Mission:
    """One mission."""
    return await service.get_mission(project, mission)
