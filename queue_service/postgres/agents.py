"""The agent registry on Postgres (issue 13): the ``agents`` table, read with the database's clock.

Readiness and the lease seconds left are computed in the statement (``statement_timestamp()``),
never from a replica's clock (STYLE rule 30).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from queue_service import exceptions
from queue_service.agents import Agent, AgentHolding, AgentRegister, AgentRegistry
from queue_service.postgres.errors import wrap_errors
from queue_service.postgres.hotpath import RawPool

__all__ = ["PostgresAgentRegistry"]

_PROJECT = "SELECT 1 FROM projects WHERE slug = $1"

_REGISTER = """
INSERT INTO agents AS a (project, id, roles, labels, capacity, implicit, drained, last_seen, registered_at)
VALUES ($1, $2, $3::text[], $4::jsonb, $5, false, false, statement_timestamp(), statement_timestamp())
ON CONFLICT (project, id) DO UPDATE SET roles = excluded.roles, labels = excluded.labels,
    capacity = excluded.capacity, implicit = false, drained = false, last_seen = statement_timestamp()
RETURNING a.id
"""

_HEARTBEAT = "UPDATE agents SET last_seen = statement_timestamp() WHERE project = $1 AND id = $2 RETURNING id"
_DRAIN = "UPDATE agents SET drained = true WHERE project = $1 AND id = $2 RETURNING id"

# $1 project, $2 readiness window (seconds), $3 one agent id or NULL for all.
_LIST = """
SELECT a.id, a.roles, a.labels, a.capacity, a.drained, a.last_seen,
       (NOT a.drained AND a.last_seen >= statement_timestamp() - make_interval(secs => $2::float8)) AS ready,
       coalesce((
           SELECT json_agg(json_build_object(
               'key', t.key,
               'lease_seconds_left', greatest(0, extract(epoch FROM t.lease_expires_at - statement_timestamp()))
           ) ORDER BY t.key)
           FROM tasks t
           WHERE t.project = a.project AND t.lease_holder = a.id AND t.status = 'in-progress'
             AND t.lease_expires_at IS NOT NULL
       ), '[]'::json) AS holding,
       (SELECT count(*) FROM tasks t WHERE t.project = a.project AND t.assignee = a.id
          AND t.status IN ('done', 'needs-qa')) AS done,
       (SELECT count(*) FROM tasks t WHERE t.project = a.project AND t.assignee = a.id
          AND t.status = 'failed') AS failed
FROM agents a
WHERE a.project = $1 AND ($3::text IS NULL OR a.id = $3)
  AND NOT (a.implicit AND a.last_seen < statement_timestamp() - interval '24 hours'
           AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.project = a.project AND t.lease_holder = a.id
                           AND t.status = 'in-progress'))
ORDER BY a.id
"""


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
                if await conn.fetchval(_PROJECT, project) is None:
                    raise exceptions.ProjectNotFound(f"no project {project!r}", project=project)
                if await conn.fetchval(statement, project, agent_id, *args) is None:
                    raise exceptions.NotFound(
                        f"no agent {agent_id!r} in project {project}", project=project, agent=agent_id
                    )
            row = await conn.fetchrow(_LIST, project, self._ready_seconds(), agent_id)
        return _agent(row)

    async def register_agent(self, project: str, data: AgentRegister) -> Agent:
        return await self._one(project, data.id, _REGISTER, list(data.roles), dict(data.labels), data.capacity)

    async def agent_heartbeat(self, project: str, agent_id: str) -> Agent:
        return await self._one(project, agent_id, _HEARTBEAT)

    async def drain_agent(self, project: str, agent_id: str) -> Agent:
        return await self._one(project, agent_id, _DRAIN)

    async def list_agents(self, project: str) -> list[Agent]:
        async with wrap_errors(), self._raw.connection() as conn:
            if await conn.fetchval(_PROJECT, project) is None:
                raise exceptions.ProjectNotFound(f"no project {project!r}", project=project)
            rows = await conn.fetch(_LIST, project, self._ready_seconds(), None)
        return [_agent(r) for r in rows]
