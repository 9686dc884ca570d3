"""Issue 11 contract: agent leases, renewal by any call carrying the token, why a token is refused,
no stale assignee, and the one dispatch order — on every backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from queue_service import domain, exceptions
from queue_service.backend import Backend
from queue_service.models import TaskStatus
from queue_service.service import QueueService
from queue_service.testing import InMemoryBackend
from tests.fixtures.backends import FAST

S = TaskStatus


@pytest.fixture
async def web(svc: QueueService) -> str:
    await svc.create_project({"slug": "web", "key_prefix": "WEB"})
    return "web"


# -- agent lease --------------------------------------------------------------------------------
async def test_agent_claim_gets_the_long_lease_and_says_how_long(svc: QueueService, web: str) -> None:
    await svc.create_tasks(web, [{"title": "a"}, {"title": "b"}])
    agent = await svc.claim_next(web, "agent-1")
    assert agent is not None
    assert agent.lease.seconds is not None and agent.lease.seconds >= 900
    assert agent.lease.seconds == svc.agent_lease_seconds
    worker = await svc.claim(web, "worker-1")
    assert worker is not None
    # the worker keeps the dispatcher's short lease (FAST: 2 s), and is told so too
    assert worker.lease.seconds == svc.backend.config.lease_seconds
    assert agent.lease.expires_at - worker.lease.expires_at > timedelta(seconds=800)


async def test_lease_override_and_profile(svc: QueueService, web: str) -> None:
    await svc.create_tasks(web, [{"title": "a"}, {"title": "b"}])
    c = await svc.claim_next(web, "a", lease_seconds=120)
    assert c is not None and c.lease.seconds == 120
    c2 = await svc.claim(web, "b", lease_profile="agent")
    assert c2 is not None and c2.lease.seconds == svc.agent_lease_seconds


async def test_heartbeat_keeps_the_granted_length(svc: QueueService, web: str) -> None:
    await svc.create_task(web, {"title": "a"})
    c = await svc.claim_next(web, "agent", lease_seconds=1000)
    assert c is not None
    renewed = await svc.heartbeat(web, c.task.key, c.lease.token)
    assert renewed.seconds == 1000
    assert renewed.expires_at >= c.lease.expires_at


async def test_note_with_token_renews_the_lease(svc: QueueService, web: str) -> None:
    # database/real time here: shrink the lease with an explicit heartbeat, then a note must bring
    # it back to the full granted length (deterministic: 900 s vs 60 s)
    await svc.create_task(web, {"title": "a"})
    c = await svc.claim_next(web, "agent", lease_seconds=900)
    assert c is not None
    short = await svc.heartbeat(web, c.task.key, c.lease.token, lease_seconds=60)
    await svc.add_note(web, c.task.key, "agent", "still on it", token=c.lease.token)
    task = await svc.get_task(web, c.task.key)
    assert task.lease_expires_at is not None
    assert task.lease_expires_at - short.expires_at > timedelta(seconds=800)


# -- refusals --------------------------------------------------------------------------------
async def _refusal(call: Callable[[], object]) -> dict[str, object]:
    with pytest.raises(exceptions.LeaseError) as info:
        await call()  # type: ignore[misc]
    assert info.value.code == "lease_invalid"
    return info.value.details


async def test_refused_after_release_says_released(svc: QueueService, web: str) -> None:
    await svc.create_task(web, {"title": "a"})
    c = await svc.claim_next(web, "agent-1")
    assert c is not None
    released = await svc.release(web, c.task.key, c.lease.token)
    assert released.assignee is None and released.lease_holder is None
    details = await _refusal(lambda: svc.complete(web, c.task.key, c.lease.token))
    assert details["reason"] == "released"
    assert details["at"]


async def test_refused_after_reclaim_says_reclaimed_and_by_whom(svc: QueueService, web: str) -> None:
    await svc.create_task(web, {"title": "a"})
    c = await svc.claim_next(web, "agent-1")
    assert c is not None
    await svc.release(web, c.task.key, c.lease.token)
    c2 = await svc.claim_next(web, "agent-2")
    assert c2 is not None
    details = await _refusal(lambda: svc.add_note(web, c.task.key, "agent-1", "hi", token=c.lease.token))
    assert details["reason"] == "reclaimed"
    assert details["by"] == "agent-2"


async def test_refused_after_cancel_block_complete(svc: QueueService, web: str) -> None:
    await svc.create_tasks(web, [{"title": "a"}, {"title": "b"}, {"title": "c"}])
    claims = [await svc.claim_next(web, f"agent-{i}") for i in range(3)]
    a, b, c = (x for x in claims if x is not None)
    await svc.cancel_task(web, a.task.key, "not needed", actor="alice")
    await svc.update_task(web, b.task.key, {"status": "blocked"}, actor="bob")
    await svc.complete(web, c.task.key, c.lease.token)
    got = await _refusal(lambda: svc.complete(web, a.task.key, a.lease.token))
    assert got["reason"] == "cancelled" and got["by"] == "alice"
    got = await _refusal(lambda: svc.heartbeat(web, b.task.key, b.lease.token))
    assert got["reason"] == "blocked" and got["by"] == "bob"
    got = await _refusal(lambda: svc.fail(web, c.task.key, c.lease.token, "x"))
    assert got["reason"] == "completed" and got["by"] == "agent-2"
    slots = await svc.complete_many(web, [(a.task.key, a.lease.token, None)])
    assert isinstance(slots[0], exceptions.LeaseError) and slots[0].details["reason"] == "cancelled"


async def test_refused_after_expiry_says_expired_and_drops_the_assignee(backend: Backend, web: str) -> None:
    svc = QueueService(backend)
    await svc.create_task(web, {"title": "a"})
    c = await svc.claim(web, "worker-1", lease_seconds=0.05)
    assert c is not None
    # before the sweep: the backend itself knows the lease ran out
    import asyncio

    await asyncio.sleep(0.1)
    got = await _refusal(lambda: svc.heartbeat(web, c.task.key, c.lease.token))
    assert got["reason"] == "expired"
    await backend.dispatch.sweep()
    task = await svc.get_task(web, c.task.key)
    assert task.assignee is None and task.lease_holder is None
    got = await _refusal(lambda: svc.complete(web, c.task.key, c.lease.token))
    assert got["reason"] == "expired"


# -- one dispatch order -------------------------------------------------------------------------
async def test_dispatch_order_priority_then_unblocks_then_age(svc: QueueService, web: str) -> None:
    tasks = await svc.create_tasks(
        web,
        [
            {"title": "old-leaf"},  # 0: P2, unblocks nothing
            {"title": "hub"},  # 1: P2, unblocks two
            {"title": "one"},  # 2: P2, unblocks one
            {"title": "needs hub", "depends_on": ["#1"]},
            {"title": "needs hub too", "depends_on": ["#1", "#2"]},
            {"title": "urgent", "priority": "P1"},
            {"title": "later", "priority": "P3"},
        ],
    )
    expected = ["urgent", "hub", "one", "old-leaf", "later"]
    ready = await svc.ready(web, limit=20)
    assert [t.title for t in ready.tasks] == expected
    assert ready.total == 5
    assert ready.unblocks[tasks[1].key] == 2
    top = await svc.ready(web, limit=1)
    assert [t.title for t in top.tasks] == ["urgent"] and top.total == 5
    claimed = []
    for _ in range(5):
        c = await svc.claim_next(web, "agent")
        assert c is not None
        claimed.append(c.task.title)
    assert claimed == expected


async def test_plain_claim_order_is_one_order_on_every_backend(svc: QueueService, web: str) -> None:
    # worker claims (claim_many) follow the same dispatch order as agent claims: the hub, which
    # unblocks a task, goes before the older leaf (on Postgres the routed claim picks it, issue 13)
    await svc.create_tasks(web, [{"title": "leaf"}, {"title": "hub"}, {"title": "dep", "depends_on": ["#1"]}])
    first = await svc.claim_many(web, "w", limit=1)
    assert [c.task.title for c in first] == ["hub"]
    second = await svc.claim_many(web, "w2", limit=1)
    assert [c.task.title for c in second] == ["leaf"]


async def test_order_follows_dependents_added_and_finished_later(svc: QueueService, web: str) -> None:
    _, b = await svc.create_tasks(web, [{"title": "a"}, {"title": "b"}])
    assert [t.title for t in (await svc.ready(web)).tasks] == ["a", "b"]
    # a task created later that waits on b makes b the better pick
    await svc.create_task(web, {"title": "needs b", "depends_on": [b.key]})
    assert [t.title for t in (await svc.ready(web)).tasks] == ["b", "a"]
    # ... and taking the dependency away makes it ordinary again
    dep = (await svc.dependents(web, b.key))[0]
    await svc.update_task(web, dep.key, {"depends_on": []})
    c = await svc.claim_next(web, "agent")
    assert c is not None and c.task.title == "a"


async def test_ready_filters_roles_and_unknown_project(svc: QueueService, web: str) -> None:
    await svc.create_tasks(web, [{"title": "d", "role": "dev"}, {"title": "q", "role": "qa"}])
    ready = await svc.ready(web, ["qa"])
    assert [t.title for t in ready.tasks] == ["q"] and ready.total == 1
    with pytest.raises(exceptions.ProjectNotFound):
        await svc.ready("nope")
    with pytest.raises(exceptions.ValidationError):
        await svc.ready(web, limit=0)


def test_lease_token_names_its_length() -> None:
    tok = domain.new_lease_token(1800)
    assert domain.lease_length_of(tok) == 1800
    assert domain.lease_length_of("plain-token") is None
    assert domain.lease_length_of("x.0") is None
    assert domain.lease_length_of("x.9999999") is None


# -- injected clock: memory and flatfile -------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(params=["memory", "flatfile"])
async def clocked(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[QueueService, Clock]]:
    clock = Clock()
    be: Backend
    if request.param == "memory":
        be = InMemoryBackend(config=FAST, clock=clock)
    else:
        from flatfile.backend import FlatfileBackend

        be = FlatfileBackend(tmp_path / "data", config=FAST, clock=clock)
    async with be:
        yield QueueService(be), clock


async def test_note_renews_agent_lease_with_injected_clock(clocked: tuple[QueueService, Clock]) -> None:
    svc, clock = clocked
    await svc.create_project({"slug": "web"})
    await svc.create_task("web", {"title": "think hard"})
    c = await svc.claim_next("web", "llm")
    assert c is not None and c.lease.seconds == 1800
    clock.advance(1500)
    await svc.add_note("web", c.task.key, "llm", "halfway", token=c.lease.token)
    clock.advance(1500)  # 3000 s after the claim: alive only because the note renewed it
    await svc.backend.dispatch.sweep()
    done = await svc.complete("web", c.task.key, c.lease.token, {"ok": True})
    assert done.status is S.DONE
    # without a renewal the same wait loses the lease, and the refusal says why
    await svc.create_task("web", {"title": "second"})
    c2 = await svc.claim_next("web", "llm")
    assert c2 is not None
    clock.advance(1801)
    await svc.backend.dispatch.sweep()
    with pytest.raises(exceptions.LeaseError) as info:
        await svc.complete("web", c2.task.key, c2.lease.token)
    assert info.value.details["reason"] == "expired"
