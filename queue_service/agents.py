"""The agent registry (issue 13): who claims work, with which roles, labels and capacity.

An agent registers explicitly (``POST /v1/projects/{p}/agents``) or implicitly on its first claim
(roles from the claim, capacity 1). It is *ready* while its last sign of life (a registration, an
agent heartbeat or a claim) is within ``agent_ready_seconds`` and it is not drained; only ready
agents are offered tasks by a routing strategy. A claim never takes more tasks than the agent's free
capacity (capacity minus the tasks it holds). Implicit agents idle for a day, holding nothing, are
dropped.

Every backend implements :class:`AgentRegistry`; ``Backend.agents`` holds it.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Annotated

import pydantic
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from queue_service.models import LabelMap, Role, one_line

__all__ = [
    "IMPLICIT_IDLE",
    "Agent",
    "AgentHolding",
    "AgentRecord",
    "AgentRegister",
    "AgentRegistry",
    "validate_agent_id",
]

#: implicit agents idle (and holding nothing) longer than this are dropped from the registry
IMPLICIT_IDLE = timedelta(hours=24)
_AGENT_ID_RE = re.compile(r"^[^\s/\x00]{1,200}$")


def validate_agent_id(value: str) -> str:
    """An agent id: 1-200 characters, no whitespace and no ``/`` (it is a URL path segment)."""
    if not isinstance(value, str) or not _AGENT_ID_RE.fullmatch(value):
        raise ValueError(f"invalid agent id {str(value)[:60]!r}: 1-200 characters, no spaces or '/'")
    return one_line(value)


AgentId = Annotated[str, AfterValidator(validate_agent_id)]


class AgentRecord(BaseModel):
    """What the registry stores about one agent (derived figures are computed when listed)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    project: str
    id: str
    roles: tuple[str, ...] = ()
    labels: dict[str, str] = Field(default_factory=dict)
    capacity: int = 1
    #: registered by a claim, not by the agent itself (dropped after a day idle)
    implicit: bool = False
    drained: bool = False
    last_seen: datetime
    registered_at: datetime

    def ready(self, now: datetime, window: float) -> bool:
        """Not drained, and seen within *window* seconds of *now*."""
        return not self.drained and (now - self.last_seen).total_seconds() <= window

    def free(self, holding: int) -> int:
        """Slots the agent may still fill while holding *holding* tasks: none when drained; capacity
        minus holding for a registered agent. An implicit agent's capacity (1) only weighs it for
        routing: it is not a cap, so claimers that never registered keep today's behaviour (a
        batch claim takes a batch) until they register their capacity."""
        if self.drained:
            return 0
        if self.implicit:
            return 1 << 30
        return max(0, self.capacity - holding)

    def serves(self, role: str) -> bool:
        """True if the agent takes tasks of *role* (an agent registered without roles takes any)."""
        return not self.roles or role in self.roles


class AgentHolding(BaseModel):
    """A task an agent holds, with the seconds left on its lease (database time on Postgres)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    lease_seconds_left: float


class Agent(BaseModel):
    """One agent as ``GET /v1/projects/{p}/agents`` lists it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    roles: list[str]
    labels: dict[str, str]
    capacity: int
    ready: bool
    drained: bool
    last_seen: datetime
    holding: list[AgentHolding]
    #: tasks it completed (done or waiting for review) / that failed for good in its hands
    done: int
    failed: int


class AgentRegister(BaseModel):
    """Input of ``POST /v1/projects/{p}/agents``: registers or updates an agent (and undrains it)."""

    model_config = ConfigDict(extra="forbid")

    id: AgentId
    roles: list[Role] = Field(default_factory=list, max_length=100)
    labels: LabelMap = Field(default_factory=dict)
    capacity: int = Field(default=1, ge=1, le=1000)

    @pydantic.field_validator("roles")
    @classmethod
    def _dedupe(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


class AgentRegistry(abc.ABC):
    """Registry operations; every method raises ProjectNotFound for an unknown project."""

    @abc.abstractmethod
    async def register_agent(self, project: str, data: AgentRegister) -> Agent:
        """Register *data.id* or replace its roles, labels and capacity; it is seen now and not drained."""

    @abc.abstractmethod
    async def agent_heartbeat(self, project: str, agent_id: str) -> Agent:
        """Mark the agent seen now (ready again unless drained). NotFound for an unknown agent."""

    @abc.abstractmethod
    async def drain_agent(self, project: str, agent_id: str) -> Agent:
        """Stop routing and handing new work to the agent (what it holds it keeps). NotFound if unknown."""

    @abc.abstractmethod
    async def list_agents(self, project: str) -> list[Agent]:
        """Every agent of the project by id, with readiness, holdings and counts as of now."""


def agent_view(
    record: AgentRecord,
    now: datetime,
    window: float,
    holding: Sequence[AgentHolding],
    done: int,
    failed: int,
) -> Agent:
    """The listed form of *record*."""
    return Agent(
        id=record.id,
        roles=list(record.roles),
        labels=dict(record.labels),
        capacity=record.capacity,
        ready=record.ready(now, window),
        drained=record.drained,
        last_seen=record.last_seen,
        holding=sorted(holding, key=lambda h: h.key),
        done=done,
        failed=failed,
    )
