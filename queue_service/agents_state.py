"""The agent registry of the state-machine backends (memory, flatfile), over a ProjectState.

Both backends run an operation as "plan on the state, then commit the Changes" (memory applies at
once; flatfile journals first); :class:`StateAgentRegistry` is written once against that shape.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

from queue_service import exceptions
from queue_service.agents import (
    IMPLICIT_IDLE,
    Agent,
    AgentHolding,
    AgentRecord,
    AgentRegister,
    AgentRegistry,
    agent_view,
)
from queue_service.models import TaskStatus
from queue_service.routing_state import RoutingDelta
from queue_service.state import Changes, ProjectState

__all__ = ["Planner", "StateAgentRegistry", "list_agents_of"]

R = TypeVar("R")
S = TaskStatus
#: runs ``fn(state, now) -> (changes, result)`` on a project's state, commits the changes, returns result
Planner = Callable[[str, Callable[[ProjectState, datetime], tuple[Changes, Agent]]], Awaitable[Agent]]
#: runs ``fn(state, now) -> result`` on a project's state without changing it
Reader = Callable[[str, Callable[[ProjectState, datetime], list[Agent]]], Awaitable[list[Agent]]]


def list_agents_of(state: ProjectState, now: datetime, ready_seconds: float) -> list[Agent]:
    """The project's agents as listed (implicit agents idle for a day and holding nothing left out)."""
    index = state.routing
    done: dict[str, int] = {}
    failed: dict[str, int] = {}
    for task in state.tasks.values():
        if task.assignee is None:
            continue
        if task.status in (S.DONE, S.NEEDS_QA):
            done[task.assignee] = done.get(task.assignee, 0) + 1
        elif task.status is S.FAILED:
            failed[task.assignee] = failed.get(task.assignee, 0) + 1
    out: list[Agent] = []
    for record in sorted(index.agents.values(), key=lambda a: a.id):
        held = index.holding.get(record.id, set())
        if record.implicit and not held and now - record.last_seen > IMPLICIT_IDLE:
            continue
        holding = [
            AgentHolding(key=key, lease_seconds_left=max(0.0, (exp - now).total_seconds()))
            for key in held
            if (exp := state.tasks[key].lease_expires_at) is not None
        ]
        out.append(agent_view(record, now, ready_seconds, holding, done.get(record.id, 0), failed.get(record.id, 0)))
    return out


class StateAgentRegistry(AgentRegistry):
    """:class:`AgentRegistry` over a backend's plan/commit runner."""

    def __init__(self, plan: Planner, read: Reader, ready_seconds: Callable[[], float]) -> None:
        self._plan = plan
        self._read = read
        self._ready_seconds = ready_seconds

    def _change(self, state: ProjectState, record: AgentRecord, now: datetime) -> tuple[Changes, Agent]:
        changes = Changes(routing=RoutingDelta(agents={record.id: record}))
        # the view is computed as it will be once the change is applied
        return changes, agent_view(
            record,
            now,
            self._ready_seconds(),
            [h for a in list_agents_of(state, now, self._ready_seconds()) if a.id == record.id for h in a.holding],
            *_counts(state, record.id),
        )

    async def register_agent(self, project: str, data: AgentRegister) -> Agent:
        def fn(state: ProjectState, now: datetime) -> tuple[Changes, Agent]:
            old = state.routing.agents.get(data.id)
            record = AgentRecord(
                project=project,
                id=data.id,
                roles=tuple(data.roles),
                labels=dict(data.labels),
                capacity=data.capacity,
                implicit=False,
                drained=False,
                last_seen=now,
                registered_at=old.registered_at if old else now,
            )
            return self._change(state, record, now)

        return await self._plan(project, fn)

    async def agent_heartbeat(self, project: str, agent_id: str) -> Agent:
        def fn(state: ProjectState, now: datetime) -> tuple[Changes, Agent]:
            record = _require(state, agent_id)
            return self._change(state, record.model_copy(update={"last_seen": now}), now)

        return await self._plan(project, fn)

    async def drain_agent(self, project: str, agent_id: str) -> Agent:
        def fn(state: ProjectState, now: datetime) -> tuple[Changes, Agent]:
            record = _require(state, agent_id)
            return self._change(state, record.model_copy(update={"drained": True}), now)

        return await self._plan(project, fn)

    async def list_agents(self, project: str) -> list[Agent]:
        return await self._read(project, lambda state, now: list_agents_of(state, now, self._ready_seconds()))


def _counts(state: ProjectState, agent_id: str) -> tuple[int, int]:
    done = failed = 0
    for task in state.tasks.values():
        if task.assignee == agent_id:
            if task.status in (S.DONE, S.NEEDS_QA):
                done += 1
            elif task.status is S.FAILED:
                failed += 1
    return done, failed


def _require(state: ProjectState, agent_id: str) -> AgentRecord:
    record = state.routing.agents.get(agent_id)
    if record is None:
        raise exceptions.NotFound(
            f"no agent {agent_id!r} in project {state.project.slug}", project=state.project.slug, agent=agent_id
        )
    return record
