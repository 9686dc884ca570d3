"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from queue_service import __version__, exceptions
from queue_service.api.deps import PrincipalDep, StateDep, StrictJSONRoute
from queue_service.api.metrics import CONTENT_TYPE_LATEST
from queue_service.api.schemas import ErrorBody, HealthStatus
from queue_service.auth import Action

__all__ = ["router"]

router = APIRouter(tags=["health"], route_class=StrictJSONRoute)


@router.get("/healthz", response_model=HealthStatus)
async def healthz() -> HealthStatus:
    """The process is alive (no backend call)."""
    return HealthStatus(status="ok", version=__version__)


@router.get("/readyz", response_model=HealthStatus, responses={503: {"model": ErrorBody}})
async def readyz(state: StateDep) -> HealthStatus:
    """The backend answers; 503 with the reason if it does not."""
    try:
        await state.backend.ping()
    except exceptions.BackendUnavailable:
        raise
    except Exception as exc:
        # ping must only raise BackendUnavailable, but readiness must never answer 500
        raise exceptions.BackendUnavailable(f"backend {state.backend.name} is not ready: {type(exc).__name__}") from exc
    return HealthStatus(status="ready", backend=state.backend.name, version=__version__)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}},
)
async def metrics(state: StateDep, principal: PrincipalDep) -> Response:
    """Prometheus metrics. With auth on, needs a token that is not limited to one project."""
    principal.check(Action.READ, None)
    await state.metrics.refresh(state.service)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
