"""Workspace sync status: ``GET /v1/projects/{project}/sync``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from queue_service.api.deps import ProjectPath, ReadDep, ServiceDep, StrictJSONRoute
from queue_service.api.schemas import ErrorBody

__all__ = ["router"]

router = APIRouter(
    prefix="/v1/projects",
    tags=["sync"],
    responses={code: {"model": ErrorBody} for code in (401, 403, 404, 422)},
    route_class=StrictJSONRoute,
)


@router.get("/{project}/sync")
async def sync_status(project: ProjectPath, request: Request, service: ServiceDep, _: ReadDep) -> dict[str, Any]:
    """The TASKS.md sync status of a project.

    ``{"project", "workspace", "files": [{"mission", "path", "exists", "synced", "synced_at", "tasks",
    "problem", "errors": [{"line", "column", "key", "message"}], "conflicts": [...]}]}``: ``errors`` are
    the rows the sync could not apply (they carry a ``sync-error`` marker in the file), ``problem`` a
    file-level failure such as a missing workspace. When the server runs the sync, ``watch`` says
    whether it watches by inotify or by polling.
    """
    manager = getattr(request.app.state, "workspace_sync", None)
    if manager is not None:
        status: dict[str, Any] = await manager.status(project)
        return status
    from workspace_sync.manager import sync_status as stored_status

    return await stored_status(service, project)
