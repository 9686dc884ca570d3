"""Issue 14: a task that finishes without its holder sending ``done`` still ends its stream's
followers (completed, failed, cancelled, handed to review), on every backend; a retry does not."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from queue_service.models import Claim, TaskStatus
from queue_service.service import STREAM_FINAL_STATUSES, QueueService
from queue_service.streams import StreamChunk


@pytest.fixture
async def claimed(svc: QueueService) -> Claim:
    svc.stream_check_seconds = 0.05
    await svc.create_project({"slug": "web", "key_prefix": "WEB"})
    await svc.create_task("web", {"title": "a", "max_attempts": 2})
    c = await svc.claim_next("web", "agent")
    assert c is not None
    return c


async def _follow(svc: QueueService, key: str, after: str | None = None) -> list[StreamChunk]:
    items = await svc.follow_stream("web", key, after=after, idle_seconds=0.2)
    return [c async for c in items if c is not None]


FINISHERS: dict[str, Callable[[QueueService, Claim], Awaitable[object]]] = {
    "completed": lambda svc, c: svc.complete("web", c.task.key, c.lease.token, {"ok": True}),
    "failed": lambda svc, c: svc.fail("web", c.task.key, c.lease.token, "broken", retryable=False),
    "cancelled": lambda svc, c: svc.cancel_task("web", c.task.key, "not needed"),
    "needs-qa": lambda svc, c: svc.update_task("web", c.task.key, {"status": "needs-qa"}),
}


@pytest.mark.parametrize("how", sorted(FINISHERS))
async def test_live_followers_end_when_the_task_finishes_without_done(
    svc: QueueService, claimed: Claim, how: str
) -> None:
    key, token = claimed.task.key, claimed.lease.token
    follower = asyncio.create_task(_follow(svc, key))
    ids = await svc.publish("web", key, ["one", "two"], token)
    await asyncio.sleep(0.1)  # the follower is waiting for news now (it ends either way)
    await FINISHERS[how](svc, claimed)
    assert (await svc.get_task("web", key)).status in STREAM_FINAL_STATUSES
    got = await asyncio.wait_for(follower, 30)
    assert [c.chunk for c in got[:-1]] == ["one", "two"]
    assert got[-1].done and got[-1].id == ids[-1]
    # a late reader of the finished task ends too, and a plain read says the stream is over
    late = await asyncio.wait_for(_follow(svc, key), 30)
    assert [c.chunk for c in late] == ["one", "two", ""] and late[-1].done
    page = await svc.read_stream("web", key)
    assert page.done and [c.chunk for c in page.chunks] == ["one", "two"]
    resumed = await asyncio.wait_for(_follow(svc, key, after=ids[-1]), 30)
    assert len(resumed) == 1 and resumed[0].done


async def test_a_retry_keeps_followers_for_the_next_attempt(svc: QueueService, claimed: Claim) -> None:
    key = claimed.task.key
    follower = asyncio.create_task(_follow(svc, key))
    await svc.publish("web", key, ["attempt 1"], claimed.lease.token)
    retried = await svc.fail("web", key, claimed.lease.token, "flaky", retryable=True)
    assert retried.status is TaskStatus.NOT_STARTED
    assert not (await svc.read_stream("web", key)).done
    await asyncio.sleep(0.2)  # several status checks happen while the task waits for its retry
    again = await svc.claim("web", "agent-2", wait=10)
    assert again is not None and again.task.key == key
    await svc.publish("web", key, ["attempt 2"], again.lease.token)
    await svc.complete("web", key, again.lease.token)
    got = await asyncio.wait_for(follower, 30)
    assert [c.chunk for c in got] == ["attempt 1", "attempt 2", ""] and got[-1].done


async def test_an_explicit_done_still_ends_them_at_once(svc: QueueService, claimed: Claim) -> None:
    key, token = claimed.task.key, claimed.lease.token
    svc.stream_check_seconds = 3600.0  # no status check can end it: only the marker
    follower = asyncio.create_task(_follow(svc, key))
    await svc.publish("web", key, ["x"], token)
    end = await svc.end_stream("web", key, token)
    got = await asyncio.wait_for(follower, 30)
    assert [c.chunk for c in got] == ["x", ""] and got[-1].id == end
