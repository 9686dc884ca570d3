"""Issue 10 finding 5 (and 11, direct mode): ready keys never vanish from Valkey.

* a claim whose Postgres step fails (or is cancelled) after the pop gives the keys back, first in line;
* the sweep's quick check compares key sets, so a stale entry cannot hide a missing one;
* a lost dedupe removal after BLPOP (Valkey blip) does not swallow later enqueues of that key;
* without an orchestrator, a claimer that finds Valkey empty while Postgres has ready tasks
  re-queues them itself (rate-limited).

Faults are injected at one method (the hot path's connection, the broker's dedupe removal); all
storage is real.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from queue_service import exceptions
from queue_service.models import TaskStatus
from queue_service.postgres.backend import PostgresValkeyBackend
from queue_service.service import QueueService
from tests.integration.pgvk import fast, open_backend

pytestmark = pytest.mark.postgres

S = TaskStatus


@pytest.fixture
async def backend(pg_url: str, valkey_url: str, valkey_prefix: str) -> AsyncIterator[PostgresValkeyBackend]:
    async with open_backend(pg_url, valkey_url, valkey_prefix) as b:
        await QueueService(b).create_project({"slug": "web", "key_prefix": "WEB"})
        yield b


async def _list(backend: PostgresValkeyBackend, role: str = "default", priority: str = "P2") -> list[str]:
    broker = backend.broker
    return [str(k) for k in await broker.client.lrange(broker.keys.ready("web", role, priority), 0, -1)]


def _break_hot_path(backend: PostgresValkeyBackend, monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    """The next hot-path connection fails with *error* (once), as a dropped Postgres would."""
    raw = backend.dispatch._raw
    real = raw.connection
    calls = 0

    @contextlib.asynccontextmanager
    async def broken() -> AsyncIterator[Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise error
        async with real() as conn:
            yield conn

    monkeypatch.setattr(raw, "connection", broken)


async def test_failed_claim_gives_the_key_back_first_in_line(
    backend: PostgresValkeyBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = QueueService(backend)
    tasks = await svc.create_tasks("web", [{"title": f"t{i}"} for i in range(3)])
    _break_hot_path(backend, monkeypatch, ConnectionResetError(104, "Connection reset by peer"))
    with pytest.raises(exceptions.BackendUnavailable):
        await svc.claim("web", "a")
    assert await _list(backend) == [t.key for t in tasks]  # back at the head, order kept
    claim = await svc.claim("web", "a")
    assert claim is not None and claim.task.key == tasks[0].key


async def test_failed_claim_many_gives_every_key_back(
    backend: PostgresValkeyBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = QueueService(backend)
    tasks = await svc.create_tasks("web", [{"title": f"t{i}"} for i in range(5)])
    _break_hot_path(backend, monkeypatch, ConnectionResetError(104, "Connection reset by peer"))
    with pytest.raises(exceptions.BackendUnavailable):
        await svc.claim_many("web", "a", limit=3)
    assert await _list(backend) == [t.key for t in tasks]
    got = await svc.claim_many("web", "a", limit=10)
    assert sorted(c.task.key for c in got) == sorted(t.key for t in tasks)


async def test_cancelled_claim_leaves_the_lists_alone(
    backend: PostgresValkeyBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = QueueService(backend)
    task = await svc.create_task("web", {"title": "t"})
    raw = backend.dispatch._raw
    entered = asyncio.Event()

    @contextlib.asynccontextmanager
    async def stuck() -> AsyncIterator[Any]:
        entered.set()
        await asyncio.Event().wait()  # the pool never answers: the caller gives up (cancels)
        yield None

    monkeypatch.setattr(raw, "connection", stuck)
    claimer = asyncio.create_task(svc.claim("web", "a"))
    await entered.wait()  # the claim's transaction never started
    # issue 13: Postgres picks, a claim pops nothing (the lists only wake idle claimers)
    assert await _list(backend) == [task.key]
    claimer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await claimer
    monkeypatch.undo()
    assert await _list(backend) == [task.key]
    claim = await svc.claim("web", "b")
    assert claim is not None and claim.task.key == task.key


async def test_sweep_compares_key_sets_not_counts(backend: PostgresValkeyBackend) -> None:
    svc = QueueService(backend)
    a, b = await svc.create_tasks("web", [{"title": "a"}, {"title": "b"}])
    await backend.dispatch.sweep()  # the leader's periodic full pass is done: only the quick check is left
    claim = await svc.claim("web", "x")
    assert claim is not None and claim.task.key == a.key
    broker = backend.broker
    # a stale entry for the claimed task, and the ready task's entry lost: same count, wrong keys
    from queue_service.postgres.valkey import ReadyItem

    await broker.requeue([ReadyItem("web", a.key, "default", "P2")])
    lst = broker.keys.ready("web", "default", "P2")
    await broker.client.lrem(lst, 0, b.key)
    await broker.client.hdel(broker.keys.queued("web"), b.key)
    assert await _list(backend) == [a.key]
    await backend.dispatch.sweep()
    assert b.key in await _list(backend)
    got = await svc.claim("web", "y")
    assert got is not None and got.task.key == b.key


async def test_lost_dedupe_removal_does_not_swallow_later_enqueues(
    backend: PostgresValkeyBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = QueueService(backend)
    broker = backend.broker

    async def blip(*args: Any, **kwargs: Any) -> None:
        raise exceptions.BackendUnavailable("valkey: connection reset")

    monkeypatch.setattr(broker, "forget", blip)
    monkeypatch.setattr(broker, "unlist", blip)  # the claim's own clean-up after commit blips too
    blocking = broker._blocking_client
    real_blpop = blocking.blpop
    in_blpop = asyncio.Event()

    async def blpop(*args: Any, **kwargs: Any) -> Any:
        in_blpop.set()
        return await real_blpop(*args, **kwargs)

    monkeypatch.setattr(blocking, "blpop", blpop)
    waiter = asyncio.create_task(svc.claim("web", "a", wait=10.0))
    await in_blpop.wait()  # past its non-blocking pop: the key can only reach it through BLPOP
    task = await svc.create_task("web", {"title": "t"})
    claim = await waiter
    assert claim is not None and claim.task.key == task.key  # the popped key is still claimed
    monkeypatch.undo()
    assert task.key in await broker.queued_members("web")  # the blip left the dedupe entry behind
    await svc.release("web", task.key, claim.lease.token)  # ready again: must be listed again
    assert await _list(backend) == [task.key]
    again = await svc.claim("web", "b")
    assert again is not None and again.task.key == task.key


async def test_direct_mode_claimer_requeues_ready_tasks_valkey_lost(
    pg_url: str, valkey_url: str, valkey_prefix: str
) -> None:
    # serverless: no orchestrator anywhere; Valkey lost everything (flush, restart without persistence)
    async with open_backend(pg_url, valkey_url, valkey_prefix, fast(extra={"idle_check_seconds": 30.0})) as b:
        svc = QueueService(b)
        await svc.create_project({"slug": "web", "key_prefix": "WEB"})
        tasks = await svc.create_tasks("web", [{"title": "a"}, {"title": "b"}])
        await b.broker.delete_prefix()
        assert [t.key for t in (await svc.list_tasks("web", {"ready": True})).items] == [t.key for t in tasks]
    async with open_backend(pg_url, valkey_url, valkey_prefix, fast(extra={"idle_check_seconds": 30.0})) as b:
        svc = QueueService(b)
        # a fresh process, as `qs claim` would be: Postgres picks (issue 13), the lost lists do not hide
        # anything from it
        claim = await svc.claim("web", "cli")
        assert claim is not None and claim.task.key == tasks[0].key
        await svc.complete("web", claim.task.key, claim.lease.token)
        second = await svc.claim("web", "cli")
        assert second is not None and second.task.key == tasks[1].key
        assert await svc.claim("web", "cli") is None
