"""RemoteOps: the REST AsyncClient seen through the QueueService-shaped QueueOps protocol.

The client follows HTTP conventions (keyword-only options, ``retry_task``, ``wait_seconds``, an SSE
``events`` stream); the CLI commands and the runner are written once against QueueService's
spelling. This adapter is the only place that knows the difference.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from queue_service import exceptions
from queue_service.agents import Agent, AgentRegister
from queue_service.client import AsyncClient
from queue_service.models import (
    Claim,
    Event,
    Lease,
    Mission,
    MissionCreate,
    Note,
    Project,
    ProjectCreate,
    ProjectSnapshot,
    ProjectUpdate,
    QueueStats,
    ReadyList,
    Task,
    TaskCreate,
    TaskFilter,
    TaskPage,
    TaskUpdate,
    validated,
)
from queue_service.streams import StreamPage

__all__ = ["RemoteOps"]


class RemoteOps:
    """QueueOps over a running service (``QUEUE_URL``)."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    async def create_project(self, data: ProjectCreate | Mapping[str, Any], /) -> Project:
        """See QueueService.create_project."""
        return await self.client.create_project(data)

    async def get_project(self, slug: str, /) -> Project:
        """See QueueService.get_project."""
        return await self.client.get_project(slug)

    async def update_project(self, slug: str, data: ProjectUpdate | Mapping[str, Any], /) -> Project:
        """See QueueService.update_project."""
        return await self.client.update_project(slug, data)

    async def register_agent(self, project: str, data: AgentRegister | Mapping[str, Any], /) -> Agent:
        """See QueueService.register_agent."""
        return await self.client.register_agent(project, data)

    async def agent_heartbeat(self, project: str, agent_id: str, /) -> Agent:
        """See QueueService.agent_heartbeat."""
        return await self.client.agent_heartbeat(project, agent_id)

    async def drain_agent(self, project: str, agent_id: str, /) -> Agent:
        """See QueueService.drain_agent."""
        return await self.client.drain_agent(project, agent_id)

    async def list_agents(self, project: str, /) -> list[Agent]:
        """See QueueService.list_agents."""
        return await self.client.list_agents(project)

    async def list_projects(self) -> list[Project]:
        """See QueueService.list_projects."""
        return await self.client.list_projects()

    async def create_mission(self, project: str, data: MissionCreate | Mapping[str, Any], /) -> Mission:
        """See QueueService.create_mission."""
        return await self.client.create_mission(project, data)

    async def list_missions(self, project: str, /) -> list[Mission]:
        """See QueueService.list_missions."""
        return await self.client.list_missions(project)

    async def create_tasks(self, project: str, items: Sequence[TaskCreate | Mapping[str, Any]], /) -> list[Task]:
        """See QueueService.create_tasks."""
        return await self.client.create_tasks(project, items)

    async def create_discovered_task(
        self, project: str, data: TaskCreate | Mapping[str, Any], discovered_from: str, token: str, /
    ) -> Task:
        """See QueueService.create_discovered_task."""
        return await self.client.create_task(project, data, discovered_from=discovered_from, token=token)

    async def get_task(self, project: str, key: str, /) -> Task:
        """See QueueService.get_task."""
        return await self.client.get_task(project, key)

    async def list_tasks(
        self,
        project: str,
        filters: TaskFilter | Mapping[str, Any] | None = None,
        limit: int = 100,
        cursor: str | None = None,
        /,
    ) -> TaskPage:
        """See QueueService.list_tasks."""
        f = validated(TaskFilter, filters or {})
        return await self.client.list_tasks(
            project,
            status=[s.value for s in f.status] if f.status else None,
            role=f.role,
            assignee=f.assignee,
            mission=f.mission,
            milestone=f.milestone,
            label=f.label,
            ready=f.ready,
            limit=limit,
            cursor=cursor,
        )

    async def update_task(
        self,
        project: str,
        key: str,
        patch: TaskUpdate | Mapping[str, Any],
        expected_version: int | None = None,
        /,
    ) -> Task:
        """See QueueService.update_task."""
        return await self.client.update_task(project, key, patch, expected_version=expected_version)

    async def cancel_task(self, project: str, key: str, reason: str | None = None, /) -> Task:
        """See QueueService.cancel_task."""
        return await self.client.cancel_task(project, key, reason)

    async def retry(self, project: str, key: str, /) -> Task:
        """See QueueService.retry."""
        return await self.client.retry_task(project, key)

    async def add_note(self, project: str, key: str, author: str, text: str, token: str | None = None, /) -> Note:
        """See QueueService.add_note."""
        return await self.client.add_note(project, key, text, author=author, token=token)

    async def publish(self, project: str, key: str, chunks: list[str], token: str, /) -> list[str]:
        """See QueueService.publish."""
        return await self.client.publish(project, key, chunks, token)

    async def end_stream(self, project: str, key: str, token: str, /) -> str | None:
        """See QueueService.end_stream."""
        await self.client.end_stream(project, key, token)
        return None

    async def read_stream(
        self, project: str, key: str, after: str | None = None, stream: str = "default", /
    ) -> StreamPage:
        """See QueueService.read_stream."""
        items = [
            c
            async for c in self.client.stream(project, key, after=after, stream=stream, follow=False, include_done=True)
        ]
        return StreamPage(
            chunks=items, done=bool(items and items[-1].done), cursor=items[-1].id if items else after or "0"
        )

    async def list_notes(self, project: str, key: str, /) -> list[Note]:
        """See QueueService.list_notes."""
        return await self.client.list_notes(project, key)

    async def blockers(self, project: str, key: str, /) -> list[Task]:
        """See QueueService.blockers."""
        return await self.client.blockers(project, key)

    async def dependents(self, project: str, key: str, /) -> list[Task]:
        """See QueueService.dependents."""
        return await self.client.dependents(project, key)

    async def list_events(self, project: str, after_id: int = 0, limit: int = 1000, /) -> list[Event]:
        """See QueueService.list_events (a replay of the SSE log, cut at *limit*)."""
        out: list[Event] = []
        stream = self.client.events(project, last_event_id=after_id, follow=False)
        try:
            async for event in stream:
                out.append(event)
                if len(out) >= limit:
                    break
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]
        return out

    async def stats(self, project: str, /) -> QueueStats:
        """See QueueService.stats."""
        return await self.client.stats(project)

    async def claim(
        self,
        project: str,
        agent: str,
        roles: Sequence[str] | None = None,
        wait: float = 0.0,
        lease_seconds: float | None = None,
        /,
    ) -> Claim | None:
        """See QueueService.claim."""
        return await self.client.claim(project, agent, roles=roles, wait_seconds=wait, lease_seconds=lease_seconds)

    async def claim_next(
        self,
        project: str,
        agent: str,
        roles: Sequence[str] | None = None,
        lease_seconds: float | None = None,
        wait: float = 0.0,
        /,
    ) -> Claim | None:
        """See QueueService.claim_next (an agent-facing claim: the server's agent lease)."""
        return await self.client.claim(
            project, agent, roles=roles, wait_seconds=wait, lease_seconds=lease_seconds, lease_profile="agent"
        )

    async def ready(self, project: str, roles: Sequence[str] | None = None, limit: int = 20, /) -> ReadyList:
        """See QueueService.ready."""
        return await self.client.ready_tasks(project, roles, limit)

    async def dead_letter(self, project: str, limit: int = 100, /) -> list[Task]:
        """See QueueService.dead_letter."""
        return await self.client.dead_letter(project, limit)

    async def heartbeat(self, project: str, key: str, token: str, lease_seconds: float | None = None, /) -> Lease:
        """See QueueService.heartbeat."""
        return await self.client.heartbeat(project, key, token, lease_seconds=lease_seconds)

    async def complete(self, project: str, key: str, token: str, result: Any = None, /) -> Task:
        """See QueueService.complete."""
        return await self.client.complete(project, key, token, result)

    async def fail(self, project: str, key: str, token: str, error: str, retryable: bool = True, /) -> Task:
        """See QueueService.fail."""
        return await self.client.fail(project, key, token, error, retryable=retryable)

    async def release(self, project: str, key: str, token: str, /) -> Task:
        """See QueueService.release."""
        return await self.client.release(project, key, token)

    async def export_project(self, project: str, /) -> ProjectSnapshot:
        """Not offered over REST: export reads the storage directly."""
        raise _direct_only("export")

    async def import_project(self, snapshot: ProjectSnapshot, /) -> Project:
        """Not offered over REST: import writes the storage directly."""
        raise _direct_only("import")


def _direct_only(verb: str) -> exceptions.ConfigurationError:
    return exceptions.ConfigurationError(
        f"{verb} works on the storage directly, not through a server: unset QUEUE_URL and point "
        "QUEUE_DATABASE_URL/QUEUE_VALKEY_URL (or QUEUE_DATA_DIR) at the backend"
    )
