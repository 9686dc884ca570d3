"""The agent registry on Postgres (issue 13): the ``agents`` table, read with the database's clock.

Readiness and the lease seconds left are computed in the statement (``statement_timestamp()``),
never from a replica's clock (STYLE rule 30).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from queue_service import exceptions
from queue_service.agents import Agent, AgentHolding, AgentRegister, AgentRegistry
from queue_service.postgres.asyncpg_pool import RawPool
from queue_service.postgres.errors import wrap_errors
from queue_service.postgres.resources import load_queries

__all__ = ["PostgresAgentRegistry"]

#: the statements, in ``sql/agents.sql``
_Q = load_queries("agents.sql")


def _agent(row: Any) -> Agent:
    return Agent(
        id=row["id"],
        roles=list(row["roles"] or ()),
        labels=dict(row["labels"] or {}),
        capacity=row["capacity"],
        ready=row["ready"],
        drained=row["drained"],
        last_seen=row["last_seen"],
        holding=[AgentHolding(key=h["key"], lease_seconds_left=float(h["lease_seconds_left"])) for h in row["holding"]],
        done=row["done"],
        failed=row["failed"],
    )


class PostgresAgentRegistry(AgentRegistry):
    """:class:`AgentRegistry` over the dispatcher's asyncpg pool."""

    def __init__(self, raw: RawPool, ready_seconds: Callable[[], float]) -> None:
        self._raw = raw
        self._ready_seconds = ready_seconds

    async def _one(self, project: str, agent_id: str, statement: str, *args: Any) -> Agent:
        async with wrap_errors(), self._raw.connection() as conn:
            async with conn.transaction():
                if await conn.fetchval(_Q["project_exists"], project) is None:
                    raise exceptions.ProjectNotFound(f"no project {project!r}", project=project)
                if await conn.fetchval(statement, project, agent_id, *args) is None:
                    raise exceptions.NotFound(
                        f"no agent {agent_id!r} in project {project}", project=project, agent=agent_id
                    )
            row = await conn.fetchrow(_Q["list"], project, self._ready_seconds(), agent_id)
        return _agent(row)

    async def register_agent(self, project: str, data: AgentRegister) -> Agent:
        return await self._one(project, data.id, _Q["register"], list(data.roles), dict(data.labels), data.capacity)

    async def agent_heartbeat(self, project: str, agent_id: str) -> Agent:
        return await self._one(project, agent_id, _Q["heartbeat"])

    async def drain_agent(self, project: str, agent_id: str) -> Agent:
        return await self._one(project, agent_id, _Q["drain"])

    async def list_agents(self, project: str) -> list[Agent]:
        async with wrap_errors(), self._raw.connection() as conn:
            if await conn.fetchval(_Q["project_exists"], project) is None:
                raise exceptions.ProjectNotFound(f"no project {project!r}", project=project)
            rows = await conn.fetch(_Q["list"], project, self._ready_seconds(), None)
        return [_agent(r) for r in rows]
