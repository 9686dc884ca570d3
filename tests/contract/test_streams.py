"""Issue 14 contract: the stream channel on every backend — ordered delivery, replay for a late
reader, resume from a cursor, done ends followers, holder-only publish, retention."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import pathlib
import socket
import subprocess

import pytest

from queue_service import exceptions
from queue_service.backend import Backend
from queue_service.models import Claim
from queue_service.service import QueueService
from queue_service.streams import StreamChunk


@pytest.fixture
async def claimed(svc: QueueService) -> Claim:
    await svc.create_project({"slug": "web", "key_prefix": "WEB"})
    await svc.create_task("web", {"title": "a"})
    c = await svc.claim_next("web", "agent")
    assert c is not None
    return c


async def _collect(backend: Backend, key: str, after: str | None = None, stream: str = "default") -> list[StreamChunk]:
    out: list[StreamChunk] = []
    async for item in backend.streams.follow("web", key, after=after, stream=stream, idle_seconds=0.2):
        if item is not None:
            out.append(item)
    return out


async def test_ordered_delivery_and_late_reader_replays_from_start(backend: Backend, claimed: Claim) -> None:
    key, token = claimed.task.key, claimed.lease.token
    ids = await backend.streams.publish("web", key, [f"line {i}" for i in range(50)], token)
    ids += await backend.streams.publish("web", key, ["tail"], token)
    await backend.streams.done("web", key, token)
    # a reader arriving after everything was published still gets all of it, in order
    got = await _collect(backend, key)
    assert [c.chunk for c in got[:-1]] == [f"line {i}" for i in range(50)] + ["tail"]
    assert [c.id for c in got[:-1]] == ids
    assert got[-1].done


async def test_live_follower_sees_chunks_then_done_ends_it(backend: Backend, claimed: Claim) -> None:
    key, token = claimed.task.key, claimed.lease.token
    reader = asyncio.create_task(_collect(backend, key))
    await asyncio.sleep(0)
    for i in range(5):
        await backend.streams.publish("web", key, [str(i)], token)
    await backend.streams.done("web", key, token)
    got = await asyncio.wait_for(reader, 30)
    assert [c.chunk for c in got if not c.done] == ["0", "1", "2", "3", "4"]
    assert got[-1].done


async def test_resume_from_cursor(backend: Backend, claimed: Claim) -> None:
    key, token = claimed.task.key, claimed.lease.token
    ids = await backend.streams.publish("web", key, ["a", "b", "c", "d"], token)
    page = await backend.streams.read("web", key, after=ids[1])
    assert [c.chunk for c in page.chunks] == ["c", "d"]
    assert page.cursor == ids[3] and not page.done
    assert (await backend.streams.read("web", key, after=page.cursor)).chunks == []


async def test_named_streams_are_separate(backend: Backend, claimed: Claim) -> None:
    key, token = claimed.task.key, claimed.lease.token
    await backend.streams.publish("web", key, ["out"], token)
    await backend.streams.publish("web", key, ["err"], token, stream="stderr")
    assert [c.chunk for c in (await backend.streams.read("web", key, stream="stderr")).chunks] == ["err"]
    with pytest.raises(exceptions.ValidationError):
        await backend.streams.read("web", key, stream="../x")


async def test_only_the_holder_may_publish(svc: QueueService, backend: Backend, claimed: Claim) -> None:
    key, token = claimed.task.key, claimed.lease.token
    with pytest.raises(exceptions.LeaseError) as info:
        await backend.streams.publish("web", key, ["x"], "not-the-token")
    assert info.value.code == "lease_invalid"
    await svc.release("web", key, token)
    with pytest.raises(exceptions.LeaseError):
        await backend.streams.publish("web", key, ["x"], token)  # stale token
    with pytest.raises(exceptions.LeaseError):
        await backend.streams.done("web", key, token)
    assert (await backend.streams.read("web", key)).chunks == []


async def test_publish_renews_the_lease(svc: QueueService, backend: Backend, claimed: Claim) -> None:
    key, token = claimed.task.key, claimed.lease.token
    short = await svc.heartbeat("web", key, token, lease_seconds=60)
    await backend.streams.publish("web", key, ["x"], token)
    task = await svc.get_task("web", key)
    assert task.lease_expires_at is not None and task.lease_expires_at > short.expires_at


async def test_bounds_and_done_is_final(backend: Backend, claimed: Claim) -> None:
    key, token = claimed.task.key, claimed.lease.token
    too_big = "x" * (backend.streams.config.max_chunk_bytes + 1)
    with pytest.raises(exceptions.ValidationError):
        await backend.streams.publish("web", key, ["ok", too_big], token)
    assert (await backend.streams.read("web", key)).chunks == []  # all-or-nothing
    end = await backend.streams.done("web", key, token)
    assert await backend.streams.done("web", key, token) == end
    with pytest.raises(exceptions.InvalidTransition):
        await backend.streams.publish("web", key, ["late"], token)


async def test_retention_drops_the_oldest(backend: Backend, claimed: Claim) -> None:
    key, token = claimed.task.key, claimed.lease.token
    backend.streams.config = dataclasses.replace(backend.streams.config, retention_chunks=10)
    for i in range(30):
        await backend.streams.publish("web", key, [str(j) for j in range(i * 10, i * 10 + 10)], token)
    kept = [int(c.chunk) for c in (await backend.streams.read("web", key, limit=10_000)).chunks]
    # Valkey trims whole nodes (MAXLEN ~): the newest retention_chunks always stay, in order
    assert kept == list(range(300 - len(kept), 300))
    assert 10 <= len(kept) < 300


async def test_follower_cap(backend: Backend, claimed: Claim) -> None:
    backend.streams.config = dataclasses.replace(backend.streams.config, max_followers=1)
    first = backend.streams.follow("web", claimed.task.key, idle_seconds=0.05)
    assert await anext(first) is None  # open, nothing yet
    with pytest.raises(exceptions.QueueFull):
        await anext(backend.streams.follow("web", claimed.task.key))
    await first.aclose()
    again = backend.streams.follow("web", claimed.task.key, idle_seconds=0.05)
    assert await anext(again) is None
    await again.aclose()


@pytest.mark.postgres
async def test_valkey_flush_loses_only_stream_data(
    pg_url: str, valkey_url: str, valkey_prefix: str, tmp_path: pathlib.Path
) -> None:
    # A stream Valkey of our own (QUEUE_STREAM_URL), so flushing it touches nobody else's data.
    from queue_service.postgres.backend import PostgresValkeyBackend
    from tests.fixtures.backends import FAST

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    try:
        stream_url = f"redis://127.0.0.1:{port}/0"
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
                break
            await asyncio.sleep(0.05)
        async with PostgresValkeyBackend(
            pg_url, valkey_url, FAST, key_prefix=valkey_prefix, stream_url=stream_url
        ) as backend:
            svc = QueueService(backend)
            await svc.create_project({"slug": "web", "key_prefix": "WEB"})
            await svc.create_task("web", {"title": "a"})
            c = await svc.claim_next("web", "agent")
            assert c is not None
            await backend.streams.publish("web", c.task.key, ["before"], c.lease.token)
            await backend.streams.client.flushall()
            assert (await backend.streams.read("web", c.task.key)).chunks == []
            task = await svc.get_task("web", c.task.key)
            assert task.status == "in-progress" and task.assignee == "agent"
            await backend.streams.publish("web", c.task.key, ["after"], c.lease.token)
            done = await svc.complete("web", c.task.key, c.lease.token, {"ok": True})
            assert done.status == "done"
            assert [x.chunk for x in (await backend.streams.read("web", c.task.key)).chunks] == ["after"]
    finally:
        proc.terminate()
        proc.wait(10)
