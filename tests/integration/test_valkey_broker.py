"""ValkeyBroker against the real Redis/Valkey: ready lists, dedupe, locks, events, leader, epoch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from queue_service import exceptions
from queue_service.postgres.valkey import ReadyItem, ValkeyBroker
from queue_service.postgres.valkey_keys import DEFAULT_PREFIX, ValkeyKeys

pytestmark = pytest.mark.postgres


@pytest.fixture
async def broker(valkey_url: str, valkey_prefix: str) -> AsyncIterator[ValkeyBroker]:
    b = ValkeyBroker(valkey_url, prefix=valkey_prefix, block_slice=0.2)
    await b.open()
    try:
        yield b
    finally:
        await b.delete_prefix()
        await b.close()


def test_key_names_follow_the_plan() -> None:
    k = ValkeyKeys()
    assert k.prefix == DEFAULT_PREFIX == "mosaic:queue"
    assert k.lock("web", "WEB-1") == "mosaic:queue:project:web:lock:WEB-1"
    assert k.ready("web", "dev", "P0") == "mosaic:queue:project:web:ready:dev:P0"
    assert k.events("web") == "mosaic:queue:project:web:events"
    assert k.ready_lists("web", ["a", "b"])[:3] == [
        "mosaic:queue:project:web:ready:a:P0",
        "mosaic:queue:project:web:ready:b:P0",
        "mosaic:queue:project:web:ready:a:P1",
    ]
    assert k.scheduled("web") == "mosaic:queue:project:web:scheduled"
    assert k.leader == "mosaic:queue:orchestrator:leader"
    with pytest.raises(ValueError, match="prefix"):
        ValkeyKeys("bad prefix:")


async def test_enqueue_is_deduplicated(broker: ValkeyBroker) -> None:
    assert await broker.enqueue("p", "T-1", "dev", "P2") is True
    assert await broker.enqueue("p", "T-1", "dev", "P2") is False
    assert await broker.depth("p") == {"dev": 1}
    # a priority or role change moves the entry instead of duplicating it
    assert await broker.enqueue("p", "T-1", "dev", "P0") is True
    assert await broker.listed("p") == {"T-1": {broker.keys.ready("p", "dev", "P0")}}
    assert await broker.enqueue("p", "T-1", "qa", "P0") is True
    assert await broker.listed("p") == {"T-1": {broker.keys.ready("p", "qa", "P0")}}
    assert await broker.depth("p") == {"dev": 0, "qa": 1}
    assert await broker.try_pop("p", ["dev"]) is None
    popped = await broker.try_pop("p", ["qa"])
    assert popped is not None
    assert popped.key == "T-1"
    assert await broker.try_pop("p", ["dev"]) is None
    # once popped, the task can be queued again
    assert await broker.enqueue("p", "T-1", "dev", "P2") is True
    assert await broker.queued_members("p") == {"T-1": broker.keys.ready("p", "dev", "P2")}


async def test_enqueue_many_pipelined(broker: ValkeyBroker) -> None:
    items = [ReadyItem("p", f"T-{i}", "dev", "P2") for i in range(500)]
    assert await broker.enqueue_many(items) == 500
    assert await broker.enqueue_many(items) == 0
    assert await broker.depth("p") == {"dev": 500}
    dev = broker.keys.ready("p", "dev", "P2")
    assert await broker.queued_members("p") == {f"T-{i}": dev for i in range(500)}
    assert await broker.listed("p") == {f"T-{i}": {dev} for i in range(500)}


async def test_priority_order_across_roles(broker: ValkeyBroker) -> None:
    await broker.enqueue("p", "low", "a", "P3")
    await broker.enqueue("p", "mid", "b", "P2")
    await broker.enqueue("p", "top", "b", "P0")
    await broker.enqueue("p", "other", "c", "P0")
    got = [await broker.try_pop("p", ["a", "b"]) for _ in range(4)]
    assert [g.key if g else None for g in got] == ["top", "mid", "low", None]
    # role isolation: "c" was never visible to a/b; roles=None sees every role
    assert (await broker.try_pop("p", None)).key == "other"  # type: ignore[union-attr]


async def test_fifo_within_a_list(broker: ValkeyBroker) -> None:
    for i in range(5):
        await broker.enqueue("p", f"T-{i}", "dev", "P1")
    keys = [(await broker.try_pop("p", ["dev"])).key for _ in range(5)]  # type: ignore[union-attr]
    assert keys == [f"T-{i}" for i in range(5)]


async def test_blocking_pop_wakes_on_enqueue(broker: ValkeyBroker) -> None:
    waiter = asyncio.create_task(broker.pop("p", ["dev"], timeout=5.0))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    await broker.enqueue("p", "T-9", "dev", "P2")
    popped = await asyncio.wait_for(waiter, 5.0)
    assert popped is not None
    assert popped.key == "T-9"
    assert await broker.queued_members("p") == {}  # dedupe entry dropped after BLPOP


async def test_blocking_pop_times_out(broker: ValkeyBroker) -> None:
    t0 = time.monotonic()
    assert await broker.pop("p", ["dev"], timeout=0.3) is None
    assert time.monotonic() - t0 >= 0.25


async def test_all_roles_waiter_sees_a_new_role(broker: ValkeyBroker) -> None:
    # roles=None re-reads the role set between BLPOP slices (block_slice=0.2 here)
    waiter = asyncio.create_task(broker.pop("p", None, timeout=5.0))
    await asyncio.sleep(0.05)
    await broker.enqueue("p", "R-1", "brand-new-role", "P2")
    popped = await asyncio.wait_for(waiter, 5.0)
    assert popped is not None
    assert popped.key == "R-1"


async def test_many_waiters_each_get_one(broker: ValkeyBroker) -> None:
    waiters = [asyncio.create_task(broker.pop("p", ["dev"], timeout=5.0)) for _ in range(50)]
    await asyncio.sleep(0.2)
    # ordinary commands still work while 50 connections sit in BLPOP
    await broker.enqueue_many(ReadyItem("p", f"T-{i}", "dev", "P2") for i in range(50))
    got = await asyncio.gather(*waiters)
    assert sorted(g.key for g in got if g) == sorted(f"T-{i}" for i in range(50))


async def test_lock_compare_and_set(broker: ValkeyBroker) -> None:
    await broker.set_lock("p", "T-1", "tok-a", 5.0)
    assert await broker.lock_token("p", "T-1") == "tok-a"
    assert await broker.extend_lock("p", "T-1", "tok-b", 5.0) is False
    assert await broker.release_lock("p", "T-1", "tok-b") is False
    assert await broker.lock_token("p", "T-1") == "tok-a"
    assert await broker.extend_lock("p", "T-1", "tok-a", 10.0) is True
    ttl = await broker.lock_ttl("p", "T-1")
    assert ttl is not None
    assert 5.0 < ttl <= 10.0
    assert await broker.restore_lock("p", "T-1", "tok-c", 5.0) is False
    assert await broker.release_lock("p", "T-1", "tok-a") is True
    assert await broker.lock_token("p", "T-1") is None
    # a vanished lock is re-created by its holder's heartbeat
    assert await broker.extend_lock("p", "T-1", "tok-a", 5.0) is True
    assert await broker.restore_lock("p", "T-2", "tok-d", 5.0) is True
    assert await broker.client.exists(f"{broker.keys.prefix}:project:p:lock:T-2") == 1


async def test_lock_expires(broker: ValkeyBroker) -> None:
    await broker.set_lock("p", "T-1", "tok", 0.1)
    await asyncio.sleep(0.25)
    assert await broker.lock_token("p", "T-1") is None


async def test_publish_and_subscribe(broker: ValkeyBroker) -> None:
    sub = await broker.subscription("p")
    try:
        at = datetime.now(UTC)
        n = await broker.publish("p", {"project": "p", "task": "T-1", "status": "done", "version": 3, "at": at})
        assert n == 1
        await broker.publish_many([("p", {"task": "T-2"}), ("other", {"task": "X"}), ("p", {"task": "T-3"})])
        got = [await sub.get(2.0) for _ in range(3)]
        assert got[0] == {"project": "p", "task": "T-1", "status": "done", "version": 3, "at": at.isoformat()}
        assert [g["task"] for g in got[1:]] == ["T-2", "T-3"]  # type: ignore[index]
        assert await sub.get(0.1) is None
    finally:
        await sub.aclose()


async def test_subscribe_iterator(broker: ValkeyBroker) -> None:
    seen: list[dict[str, Any]] = []

    async def consume() -> None:
        async for payload in broker.subscribe("p"):
            seen.append(payload)
            if len(seen) == 2:
                return

    consumer = asyncio.create_task(consume())
    for _ in range(50):  # wait until the subscription is live
        if (await broker.client.pubsub_numsub(broker.keys.events("p")))[0][1] >= 1:
            break
        await asyncio.sleep(0.02)
    await broker.publish("p", {"n": 1})
    await broker.publish("p", {"n": 2})
    await asyncio.wait_for(consumer, 5.0)
    assert seen == [{"n": 1}, {"n": 2}]


async def test_scheduled_set(broker: ValkeyBroker) -> None:
    now = datetime.now(UTC)
    await broker.schedule("p", "T-1", now - timedelta(seconds=1))
    await broker.schedule_many([("p", "T-2", now + timedelta(seconds=60)), ("q", "T-3", now)])
    due, next_in = await broker.due("p", now)
    assert due == ["T-1"]
    assert next_in is not None
    assert 59 < next_in <= 60
    assert (await broker.due("q", now))[0] == ["T-3"]
    assert await broker.unschedule("p", due) == 1
    assert await broker.due("p", now) == ([], next_in)
    assert (await broker.due("p", now + timedelta(seconds=61)))[0] == ["T-2"]


async def test_unschedule_due_keeps_a_later_reschedule(broker: ValkeyBroker) -> None:
    now = datetime.now(UTC)
    await broker.schedule("p", "T-1", now - timedelta(seconds=1))
    await broker.schedule("p", "T-2", now - timedelta(seconds=1))
    # T-1 failed again meanwhile and was rescheduled later: releasing the old due entry keeps it
    await broker.schedule("p", "T-1", now + timedelta(seconds=30))
    assert await broker.unschedule("p", ["T-1", "T-2"], due_by=now) == 1
    assert (await broker.due("p", now + timedelta(seconds=31)))[0] == ["T-1"]


async def test_leader_lock(broker: ValkeyBroker) -> None:
    assert await broker.acquire_leader("a", 0.3) is True
    assert await broker.acquire_leader("b", 0.3) is False
    assert await broker.acquire_leader("a", 0.3) is True  # renew
    await asyncio.sleep(0.45)
    assert await broker.acquire_leader("b", 5.0) is True
    assert await broker.release_leader("a") is False
    assert await broker.release_leader("b") is True


async def test_epoch_marker(broker: ValkeyBroker) -> None:
    assert await broker.epoch() is None
    assert await broker.mark_epoch("e1") is True
    assert await broker.mark_epoch("e2") is False
    assert await broker.epoch() == "e1"
    await broker.clear_epoch("e2")
    assert await broker.epoch() == "e1"
    await broker.clear_epoch("e1")
    assert await broker.epoch() is None


async def test_requeue_repairs_orphaned_dedupe_entry(broker: ValkeyBroker) -> None:
    # a claimer that died between BLPOP and its dedupe removal leaves the entry but no list item
    dev = broker.keys.ready("p", "dev", "P2")
    await broker.client.hset(broker.keys.queued("p"), "T-1", dev)
    await broker.client.sadd(broker.keys.roles("p"), "dev")
    # the entry is checked against its list: a later enqueue is not swallowed (issue 10 finding 5)
    assert await broker.enqueue("p", "T-1", "dev", "P2") is True
    assert await broker.listed("p") == {"T-1": {dev}}
    assert await broker.enqueue("p", "T-1", "dev", "P2") is False  # really listed now: deduplicated
    assert await broker.requeue([ReadyItem("p", "T-1", "dev", "P2")]) == 1
    assert await broker.listed("p") == {"T-1": {dev}}
    # requeue of a key that is listed moves it (no duplicate)
    assert await broker.requeue([ReadyItem("p", "T-1", "dev", "P2")]) == 1
    assert await broker.depth("p") == {"dev": 1}


async def test_depth_gauge_hash(broker: ValkeyBroker) -> None:
    await broker.write_depth_gauge("p", {"dev": 3, "qa": 0})
    assert await broker.client.hgetall(broker.keys.depth("p")) == {"dev": "3", "qa": "0"}
    await broker.write_depth_gauge("p", {})
    assert await broker.client.exists(broker.keys.depth("p")) == 0


async def test_unreachable_valkey_is_backend_unavailable() -> None:
    b = ValkeyBroker("redis://127.0.0.1:1/0")
    await b.open()
    try:
        with pytest.raises(exceptions.BackendUnavailable):
            await b.ping()
        with pytest.raises(exceptions.BackendUnavailable):
            await b.enqueue("p", "T-1", "dev", "P2")
    finally:
        await b.close()


async def test_not_open_is_backend_unavailable() -> None:
    b = ValkeyBroker("valkey://127.0.0.1:6379/0")
    assert b.url == "redis://127.0.0.1:6379/0"
    with pytest.raises(exceptions.BackendUnavailable):
        await b.ping()
