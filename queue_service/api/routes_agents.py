"""The agent registry (issue 13): register, heartbeat, drain, list."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from queue_service.agents import Agent, AgentRegister
from queue_service.api.deps import ProjectPath, ReadDep, ServiceDep, StrictJSONRoute, WorkDep
from queue_service.api.schemas import ErrorBody

__all__ = ["router"]

_ERRORS: dict[int | str, dict[str, object]] = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 422)}

router = APIRouter(
    prefix="/v1/projects/{project}/agents", tags=["agents"], responses=_ERRORS, route_class=StrictJSONRoute
)

AgentPath = Annotated[str, Path(min_length=1, max_length=200, description="agent id")]


@router.post("", response_model=Agent)
async def register_agent(project: ProjectPath, body: AgentRegister, service: ServiceDep, _: WorkDep) -> Agent:
    """Register an agent, or replace its roles, labels and capacity (undrains it; it is seen now)."""
    return await service.register_agent(project, body)


@router.post("/{agent_id}/heartbeat", response_model=Agent)
async def agent_heartbeat(project: ProjectPath, agent_id: AgentPath, service: ServiceDep, _: WorkDep) -> Agent:
    """The agent is alive: it stays ready for ``QUEUE_AGENT_READY_SECONDS``."""
    return await service.agent_heartbeat(project, agent_id)


@router.post("/{agent_id}/drain", response_model=Agent)
async def drain_agent(project: ProjectPath, agent_id: AgentPath, service: ServiceDep, _: WorkDep) -> Agent:
    """Stop handing the agent new work (what it holds it keeps; registering again undrains it)."""
    return await service.drain_agent(project, agent_id)


@router.get("", response_model=list[Agent])
async def list_agents(project: ProjectPath, service: ServiceDep, _: ReadDep) -> list[Agent]:
    """Every agent (a JSON array, by id): roles, labels, capacity, readiness, what it holds with the
    lease seconds left (database time on Postgres), last seen, tasks done and failed."""
    return await service.list_agents(project)
