"""The client speaks QueueService's spelling (issue 16), so the CLI hands either to its commands.

``cli/_core.py`` passes the AsyncClient itself where a ``QueueOps`` is expected, so mypy checks that
the signatures agree; these tests check that the answers do: every operation the CLI and the runner
call, called the way they call it (positionally, ``add_note`` with keywords), gives the same answer
through the REST client as on the service, over one in-memory backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from queue_service import exceptions
from queue_service.cli._core import QueueOps, SnapshotOps
from queue_service.client import AsyncClient, Client
from queue_service.models import TaskStatus
from queue_service.service import QueueService
from queue_service.testing import InMemoryBackend
from tests.unit.api_support import BASE, ThreadedASGITransport, app, mem, settings

__all__ = ["app", "mem"]


@pytest.fixture
async def pair(app: FastAPI, mem: InMemoryBackend) -> AsyncIterator[tuple[QueueOps, QueueOps]]:
    """The service and the client over the same backend (the client through the app)."""
    service = QueueService(mem)
    async with AsyncClient(BASE, transport=httpx.ASGITransport(app=app)) as client:
        await service.create_project({"slug": "web"})
        yield service, client


async def test_reads_answer_alike(pair: tuple[QueueOps, QueueOps]) -> None:
    service, client = pair
    await client.create_tasks("web", [{"title": "a", "role": "dev"}, {"title": "b"}, {"title": "c", "role": "dev"}])
    for ops in (service, client):  # the filters as one mapping, limit and cursor positional
        first = await ops.list_tasks("web", {"role": "dev", "status": ["not-started"]}, 1, None)
        second = await ops.list_tasks("web", {"role": "dev", "status": ["not-started"]}, 1, first.next_cursor)
        assert [t.title for t in (*first.items, *second.items)] == ["a", "c"]
    assert await client.list_tasks("web", {"ready": True}, 100, None) == await service.list_tasks(
        "web", {"ready": True}, 100, None
    )
    assert await client.ready_tasks("web", ["dev"], 5) == await service.ready_tasks("web", ["dev"], 5)
    assert await client.list_events("web", 1, 2) == await service.list_events("web", 1, 2)
    assert len(await client.list_events("web", 0, 1000)) == len(await service.list_events("web", 0, 1000)) == 4


async def test_lease_calls_answer_alike(pair: tuple[QueueOps, QueueOps], mem: InMemoryBackend) -> None:
    service, client = pair
    await service.create_tasks("web", [{"title": "leaf"}, {"title": "hub"}, {"title": "after", "depends_on": ["#1"]}])
    for ops, agent in ((client, "over-rest"), (service, "in-process")):
        best = (await ops.ready_tasks("web", None, 1)).tasks[0]
        got = await ops.claim_next("web", agent, None, None, 0.0)  # the agent-facing claim, positionally
        assert got is not None and got.task.key == best.key and got.lease.holder == agent
        assert got.lease.seconds == QueueService(mem).agent_lease_seconds
        lease = await ops.heartbeat("web", got.task.key, got.lease.token, 60.0)
        found = await ops.create_discovered_task("web", {"title": f"by {agent}"}, got.task.key, got.lease.token)
        assert found.extra["discovered_from"] == got.task.key
        assert lease.seconds == 60.0
        note = await ops.add_note("web", got.task.key, author=agent, text="halfway", token=got.lease.token)
        assert (note.author, note.text) == (agent, "halfway")
        failed = await ops.fail("web", got.task.key, got.lease.token, "boom", False)  # retryable positional
        assert failed.status is TaskStatus.FAILED
        assert (await ops.retry_task("web", got.task.key)).status is TaskStatus.NOT_STARTED
        task = await ops.get_task("web", got.task.key)
        with pytest.raises(exceptions.VersionConflict):
            await ops.update_task("web", task.key, {"title": "x"}, task.version - 1)  # expected_version positional


async def test_stream_pages_answer_alike(pair: tuple[QueueOps, QueueOps]) -> None:
    service, client = pair
    await service.create_tasks("web", [{"title": "talks"}])
    got = await client.claim("web", "me", None, 0.0, None)  # roles, wait, lease positional, as the runner calls
    assert got is not None
    ids = await client.publish("web", got.task.key, ["one", "two"], got.lease.token)
    for ops in (service, client):
        page = await ops.read_stream("web", got.task.key, None, "default")
        assert [c.chunk for c in page.chunks if not c.done] == ["one", "two"]
        assert not page.done and page.cursor == ids[-1]
        rest = await ops.read_stream("web", got.task.key, ids[0], "default")
        assert [c.chunk for c in rest.chunks] == ["two"]
    await client.end_stream("web", got.task.key, got.lease.token)
    assert (await client.read_stream("web", got.task.key, ids[-1], "default")).done
    assert (await service.read_stream("web", got.task.key, ids[-1], "default")).done


async def test_the_client_refuses_what_rest_cannot_answer(pair: tuple[QueueOps, QueueOps]) -> None:
    service, client = pair
    assert isinstance(service, SnapshotOps) and not isinstance(client, SnapshotOps)  # export/import: local only
    assert isinstance(client, AsyncClient)
    with pytest.raises(TypeError, match="not both"):
        await client.list_tasks("web", {"role": "dev"}, role="ops")
    with pytest.raises(exceptions.ValidationError):
        await client.list_tasks("web", {"status": ["nonsense"]})


@pytest.fixture
def sync_client() -> Iterator[Client]:
    backend = InMemoryBackend()
    from queue_service.app import create_app

    transport = ThreadedASGITransport(create_app(settings(), backend=backend))
    try:
        with Client(BASE, transport=transport) as client:
            client.create_project({"slug": "web"})
            yield client
    finally:
        transport.close()


def test_the_sync_client_spells_them_too(sync_client: Client) -> None:
    qs = sync_client
    qs.create_tasks("web", [{"title": "a", "role": "dev"}, {"title": "b"}])
    assert [t.title for t in qs.list_tasks("web", {"role": "dev"}, 10, None).items] == ["a"]
    got = qs.claim_next("web", "me", None, None, 0.0)
    assert got is not None and got.lease.holder == "me"
    ids = qs.publish("web", got.task.key, ["out"], got.lease.token)
    page = qs.read_stream("web", got.task.key, None, "default")
    assert ([c.chunk for c in page.chunks], page.cursor) == (["out"], ids[0])
    kinds: list[Any] = [e.kind for e in qs.list_events("web", 0, 1000)]
    assert kinds == ["project_created", "created", "created", "claimed"]
    assert [e.kind for e in qs.list_events("web", 0, 2)] == kinds[:2]
