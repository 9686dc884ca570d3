"""The worker helper in process: ``AsyncWorker`` over a ``QueueService`` instead of HTTP.

``local_worker(service, project, ...)`` gives the same worker the typed client builds
(``AsyncClient.worker``), answering its calls from the service in this process: an embedded
agent (flatfile, memory, or Postgres+Valkey opened in process) gets batched claims, buffered
completions and one heartbeat thread per run without a server. Heartbeats are sent through the event
loop (a backend is not thread-safe); run CPU-bound work as a plain function (it runs in a thread).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from queue_service import exceptions
from queue_service.agents import Agent
from queue_service.ids import new_agent_id
from queue_service.models import Claim, Lease, Note, Task
from queue_service.service import QueueService
from queue_service.wire import DEFAULT_STREAM
from queue_service.worker import AsyncWorker

__all__ = ["ServiceWorkerClient", "local_worker"]


class ServiceWorkerClient:
    """The calls the worker makes, answered by an in-process :class:`QueueService`."""

    def __init__(self, service: QueueService) -> None:
        self.service = service

    async def claim(
        self,
        project: str,
        agent: str | None = None,
        *,
        roles: Sequence[str] | None = None,
        wait_seconds: float = 0.0,
        lease_seconds: float | None = None,
        lease_profile: str = "worker",
    ) -> Claim | None:
        return await self.service.claim(
            project, agent or new_agent_id(), roles, wait=wait_seconds, lease_seconds=lease_seconds
        )

    async def claim_many(
        self,
        project: str,
        agent: str | None = None,
        *,
        roles: Sequence[str] | None = None,
        limit: int = 10,
        wait_seconds: float = 0.0,
        lease_seconds: float | None = None,
    ) -> list[Claim]:
        return await self.service.claim_many(
            project, agent or new_agent_id(), roles, limit=limit, wait=wait_seconds, lease_seconds=lease_seconds
        )

    async def register_agent(self, project: str, data: Mapping[str, Any]) -> Agent:
        return await self.service.register_agent(project, data)

    async def heartbeat(self, project: str, key: str, token: str, *, lease_seconds: float | None = None) -> Lease:
        return await self.service.heartbeat(project, key, token, lease_seconds)

    async def complete(self, project: str, key: str, token: str, result: Any = None) -> Task:
        return await self.service.complete(project, key, token, result)

    async def complete_many(
        self, project: str, items: Sequence[tuple[str, str, Any]]
    ) -> list[Task | exceptions.QueueServiceError]:
        return await self.service.complete_many(project, items)

    async def fail(self, project: str, key: str, token: str, error: str, *, retryable: bool = True) -> Task:
        return await self.service.fail(project, key, token, error, retryable)

    async def release(self, project: str, key: str, token: str) -> Task:
        return await self.service.release(project, key, token)

    async def get_task(self, project: str, key: str) -> Task:
        return await self.service.get_task(project, key)

    async def add_note(
        self, project: str, key: str, text: str, *, author: str | None = None, token: str | None = None
    ) -> Note:
        return await self.service.add_note(project, key, author or "worker", text, token)

    async def publish(
        self, project: str, key: str, chunk: str | Sequence[str], token: str, *, stream: str = DEFAULT_STREAM
    ) -> list[str]:
        chunks = [chunk] if isinstance(chunk, str) else list(chunk)
        return await self.service.publish(project, key, chunks, token, stream)

    async def end_stream(self, project: str, key: str, token: str, *, stream: str = DEFAULT_STREAM) -> None:
        await self.service.end_stream(project, key, token, stream)


def _beat_through_loop(
    client: ServiceWorkerClient, timeout: float
) -> Callable[[str, str, str, float | None, asyncio.AbstractEventLoop], Callable[[], Lease]]:
    def factory(
        project: str, key: str, token: str, lease_seconds: float | None, loop: asyncio.AbstractEventLoop
    ) -> Callable[[], Lease]:
        def beat() -> Lease:
            future = asyncio.run_coroutine_threadsafe(
                client.heartbeat(project, key, token, lease_seconds=lease_seconds), loop
            )
            return future.result(timeout=timeout)

        return beat

    return factory


def local_worker(
    service: QueueService,
    project: str,
    roles: Sequence[str] | None = None,
    agent: str | None = None,
    *,
    lease_seconds: float | None = None,
    heartbeat_seconds: float | None = None,
    wait_seconds: float = 10.0,
    stop_when_idle: bool = False,
    concurrency: int = 1,
) -> AsyncWorker:
    """An :class:`AsyncWorker` for *project* answered by *service* in this process.

    Same options as ``AsyncClient.worker``; ``concurrency`` is how many tasks ``run(fn)`` works on at
    once (it never claims more than its free slots).
    """
    client = ServiceWorkerClient(service)
    return AsyncWorker(
        client,
        project,
        agent or new_agent_id(),
        roles,
        _beat_through_loop(client, timeout=30.0),
        lease_seconds=lease_seconds,
        heartbeat_seconds=heartbeat_seconds,
        wait_seconds=wait_seconds,
        stop_when_idle=stop_when_idle,
        concurrency=concurrency,
    )
