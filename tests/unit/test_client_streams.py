"""Issue 14 client side: Client/AsyncClient.stream, job.publish, and ``qs watch``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from queue_service.cli import app as cli_app
from queue_service.client import AsyncClient, AsyncJob, Client, Job, RetryPolicy
from queue_service.service import QueueService
from queue_service.testing import InMemoryBackend
from queue_service.worker import heartbeat_interval
from tests.unit.api_support import BASE, FAST, ThreadedASGITransport, app, mem, settings

__all__ = ["app", "mem"]

FAST_RETRY = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02)


@pytest.fixture
async def qs(app: FastAPI) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(BASE, transport=httpx.ASGITransport(app=app), retry=FAST_RETRY) as client:
        await client.create_project({"slug": "web"})
        yield client


@pytest.fixture
def sync_qs() -> Iterator[Client]:
    from queue_service.app import create_app

    transport = ThreadedASGITransport(create_app(settings(), backend=InMemoryBackend(config=FAST)))
    try:
        with Client(BASE, transport=transport, retry=FAST_RETRY) as client:
            client.create_project({"slug": "web"})
            yield client
    finally:
        transport.close()


async def test_async_job_publish_and_client_stream(qs: AsyncClient) -> None:
    await qs.create_task("web", {"title": "a"})
    claim = await qs.claim("web", agent="bot")
    assert claim is not None
    job = AsyncJob(qs, "web", claim, heartbeat_interval(claim.lease.seconds or 30), lambda: claim.lease)
    await job.publish("one")
    await job.publish(["two", "three"])
    await job.end_stream()
    got = [c.chunk async for c in qs.stream("web", claim.task.key)]
    assert got == ["one", "two", "three"]
    # resume after the first id
    first, *_ = [c async for c in qs.stream("web", claim.task.key, follow=False)]
    assert [c.chunk async for c in qs.stream("web", claim.task.key, after=first.id)] == ["two", "three"]


def test_sync_job_publish_and_client_stream(sync_qs: Client) -> None:
    sync_qs.create_task("web", {"title": "a"})
    claim = sync_qs.claim("web", agent="bot")
    assert claim is not None
    job = Job(sync_qs, "web", claim, heartbeat_interval(claim.lease.seconds or 30))
    job.publish([f"line {i}" for i in range(20)])
    job.end_stream()
    assert [c.chunk for c in sync_qs.stream("web", claim.task.key)] == [f"line {i}" for i in range(20)]


def test_qs_watch_prints_all_lines_in_order(tmp_path: Path) -> None:
    from flatfile.backend import FlatfileBackend

    url = f"file://{tmp_path / 'data'}"

    async def produce() -> str:
        async with FlatfileBackend(tmp_path / "data", config=FAST) as backend:
            svc = QueueService(backend)
            await svc.create_project({"slug": "web", "key_prefix": "WEB"})
            await svc.create_task("web", {"title": "a"})
            c = await svc.claim_next("web", "bot")
            assert c is not None
            for start in range(0, 1000, 100):
                await svc.publish("web", c.task.key, [f"line {i}" for i in range(start, start + 100)], c.lease.token)
            await svc.end_stream("web", c.task.key, c.lease.token)
            return c.task.key

    key = asyncio.run(produce())
    env = {"QUEUE_BACKEND_URL": url}
    result = CliRunner().invoke(cli_app, ["watch", "web", key], env=env)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [f"line {i}" for i in range(1000)]
    result = CliRunner().invoke(cli_app, ["watch", "web", key, "--json", "--after", "998"], env=env)
    assert [json.loads(line)["chunk"] for line in result.output.splitlines()] == ["line 998", "line 999"]
    result = CliRunner().invoke(cli_app, ["watch", "web", key, "--stream", "../x"], env=env)
    assert result.exit_code != 0
