"""The worker helper's run(fn): batched claims never beyond the free slots, buffered completions,
one heartbeat thread; in process (``local_worker``) and over REST (``AsyncClient.worker``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from queue_service.app import create_app
from queue_service.client import AsyncClient
from queue_service.models import Task, TaskStatus
from queue_service.service import QueueService
from queue_service.testing import InMemoryBackend
from queue_service.worker import PermanentError
from queue_service.worker_local import local_worker
from tests.unit.api_support import BASE, FAST, running, settings


@pytest.fixture
async def svc() -> AsyncIterator[QueueService]:
    backend = InMemoryBackend(config=FAST)
    async with backend:
        service = QueueService(backend)
        await service.create_project({"slug": "web", "key_prefix": "WEB"})
        yield service


async def test_run_drains_with_batched_claims_and_completions(svc: QueueService) -> None:
    await svc.create_tasks("web", [{"title": f"t{i}"} for i in range(40)])
    worker = local_worker(svc, "web", stop_when_idle=True, wait_seconds=0, concurrency=4)

    async def double(task: Task) -> str:
        return task.title * 2

    assert await worker.run(double) == 40
    tasks = (await svc.list_tasks("web", {}, 100)).items
    assert {t.status for t in tasks} == {TaskStatus.DONE}
    assert all(t.result == t.title * 2 for t in tasks)
    stats = worker.last_run
    assert stats is not None and stats.completed == 40 and stats.lost == 0
    # batches: fewer claim and completion calls than tasks
    assert stats.claim_calls < 40 and stats.complete_calls < 40


async def test_run_never_holds_more_tasks_than_free_slots(svc: QueueService) -> None:
    await svc.create_tasks("web", [{"title": f"t{i}"} for i in range(10)])
    gate = asyncio.Event()
    started = 0

    async def blocked(task: Task) -> None:
        nonlocal started
        started += 1
        await gate.wait()

    worker = local_worker(svc, "web", stop_when_idle=True, wait_seconds=0, concurrency=3)
    run = asyncio.create_task(worker.run(blocked))
    for _ in range(200):
        if started == 3:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    in_progress = (await svc.list_tasks("web", {"status": ["in-progress"]}, 100)).items
    assert started == 3 and len(in_progress) == 3  # 7 stay ready: nothing claimed beyond the slots
    gate.set()
    assert await run == 10


async def test_failures_are_reported_at_once_and_permanent_ones_not_retried(svc: QueueService) -> None:
    await svc.create_tasks("web", [{"key": "WEB-1", "title": "flaky"}, {"key": "WEB-2", "title": "broken"}])

    async def fn(task: Task) -> None:
        if task.title == "flaky":
            raise RuntimeError("try again")
        raise PermanentError("never works")

    worker = local_worker(svc, "web", stop_when_idle=True, wait_seconds=0, concurrency=2)
    await worker.run(fn, max_tasks=2)
    flaky, broken = await svc.get_task("web", "WEB-1"), await svc.get_task("web", "WEB-2")
    assert flaky.status is TaskStatus.NOT_STARTED and flaky.attempts == 1 and "try again" in (flaky.last_error or "")
    assert broken.status is TaskStatus.FAILED


async def test_a_dependent_is_claimed_after_its_parent_completion_is_flushed(svc: QueueService) -> None:
    await svc.create_tasks(
        "web", [{"key": "P", "title": "parent"}, {"key": "C", "title": "child", "depends_on": ["P"]}]
    )
    seen: list[str] = []
    worker = local_worker(svc, "web", wait_seconds=0.2, concurrency=4)

    async def fn(task: Task) -> None:
        seen.append(task.key)
        if task.key == "C":
            worker.stop()

    await asyncio.wait_for(worker.run(fn), 10)
    assert seen == ["P", "C"]
    assert (await svc.get_task("web", "C")).status is TaskStatus.DONE


async def test_rest_worker_uses_the_batch_endpoints() -> None:
    backend = InMemoryBackend(config=FAST)
    async with backend, running(create_app(settings(), backend=backend)) as app:
        calls: list[str] = []

        async def record(request: httpx.Request) -> None:
            calls.append(f"{request.method} {request.url.path}")

        transport = httpx.ASGITransport(app=app)
        http = httpx.AsyncClient(transport=transport, base_url=BASE, event_hooks={"request": [record]})
        async with AsyncClient(BASE, http_client=http) as client:
            await client.create_project({"slug": "web", "key_prefix": "WEB"})
            await client.create_tasks("web", [{"title": f"t{i}"} for i in range(12)])
            calls.clear()
            worker = client.worker("web", wait_seconds=0, stop_when_idle=True, concurrency=4)

            def upper(task: Task) -> Any:
                return task.title.upper()

            assert await worker.run(upper) == 12
            tasks = (await client.list_tasks("web")).items
        assert all(t.status is TaskStatus.DONE and t.result == t.title.upper() for t in tasks)
        assert not any(c.endswith("/complete") for c in calls)
        completions = [c for c in calls if c.endswith("/completions")]
        claims = [c for c in calls if c.endswith("/claims")]
        assert 0 < len(completions) < 12 and 0 < len(claims) < 12
        await http.aclose()


async def test_rest_worker_completes_one_by_one_against_a_server_without_batch_completion() -> None:
    backend = InMemoryBackend(config=FAST)
    async with backend, running(create_app(settings(), backend=backend)) as app:
        inner = httpx.ASGITransport(app=app)

        class OldServer(httpx.AsyncBaseTransport):
            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                if request.url.path.endswith("/completions"):
                    return httpx.Response(404, json={"detail": "Not Found"}, request=request)
                return await inner.handle_async_request(request)

        http = httpx.AsyncClient(transport=OldServer(), base_url=BASE)
        async with AsyncClient(BASE, http_client=http) as client:
            await client.create_project({"slug": "web", "key_prefix": "WEB"})
            await client.create_tasks("web", [{"title": f"t{i}"} for i in range(5)])
            worker = client.worker("web", wait_seconds=0, stop_when_idle=True, concurrency=2)

            async def echo(task: Task) -> str:
                return task.title

            assert await worker.run(echo) == 5
            tasks = (await client.list_tasks("web")).items
        assert all(t.status is TaskStatus.DONE and t.result == t.title for t in tasks)
        assert worker.last_run is not None and worker.last_run.lost == 0
        await http.aclose()


async def test_run_registers_its_concurrency_as_capacity(svc: QueueService) -> None:
    # issue 13: "a worker registers its concurrency as its capacity"
    await svc.create_tasks("web", [{"title": f"t{i}", "role": "dev"} for i in range(3)])
    worker = local_worker(svc, "web", ["dev"], "w-cap", stop_when_idle=True, wait_seconds=0, concurrency=3)
    assert await worker.run(lambda task: None) == 3
    agents = {a.id: a for a in await svc.list_agents("web")}
    assert agents["w-cap"].capacity == 3 and agents["w-cap"].roles == ["dev"]


async def test_rest_worker_registers_its_capacity_over_rest() -> None:
    backend = InMemoryBackend(config=FAST)
    async with backend, running(create_app(settings(), backend=backend)) as app:
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)
        async with AsyncClient(BASE, http_client=http) as client:
            await client.create_project({"slug": "web", "key_prefix": "WEB"})
            await client.create_tasks("web", [{"title": "t"}])
            worker = client.worker("web", agent="w-rest", wait_seconds=0, stop_when_idle=True, concurrency=5)
            assert await worker.run(lambda task: None) == 1
            agents = {a.id: a for a in await client.list_agents("web")}
        assert agents["w-rest"].capacity == 5
        await http.aclose()
