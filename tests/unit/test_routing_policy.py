"""Routing policy and the state-machine registry with an injected clock (issue 13): idle implicit
agents are dropped after a day, readiness follows the window, offers lapse after the offer window."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from queue_service.service import QueueService
from queue_service.testing import InMemoryBackend
from tests.fixtures.backends import FAST


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def _svc(clock: Clock) -> tuple[InMemoryBackend, QueueService]:
    config = dataclasses.replace(FAST, agent_ready_seconds=30.0, offer_seconds=10.0)
    backend = InMemoryBackend(config=config, clock=clock)
    return backend, QueueService(backend)


async def test_idle_implicit_agents_are_dropped_after_a_day() -> None:
    clock = Clock()
    _, svc = _svc(clock)
    await svc.create_project({"slug": "web", "key_prefix": "WEB"})
    await svc.create_tasks("web", [{"title": "a"}, {"title": "b"}])
    c = await svc.claim("web", "old-agent", lease_seconds=60)
    assert c is not None
    await svc.complete("web", c.task.key, c.lease.token)
    await svc.register_agent("web", {"id": "registered"})
    clock.advance(23 * 3600)
    assert {a.id for a in await svc.list_agents("web")} == {"old-agent", "registered"}
    clock.advance(2 * 3600)
    listed = {a.id: a for a in await svc.list_agents("web")}
    assert set(listed) == {"registered"} and listed["registered"].ready is False  # explicit ones stay
    assert await svc.claim("web", "new-agent") is not None
    assert {a.id for a in await svc.list_agents("web")} == {"new-agent", "registered"}


async def test_readiness_window_and_offer_window_follow_the_clock() -> None:
    clock = Clock()
    _, svc = _svc(clock)
    await svc.create_project({"slug": "web", "key_prefix": "WEB"})
    await svc.update_project("web", {"routing": {"default": "round-robin"}})
    await svc.register_agent("web", {"id": "a", "capacity": 5})
    await svc.register_agent("web", {"id": "b", "capacity": 5})
    await svc.create_tasks("web", [{"title": "t1"}, {"title": "t2"}])
    first = await svc.claim("web", "a")
    assert first is not None and first.task.title == "t1"
    assert await svc.claim("web", "a") is None  # this claim offered t2 to b (round-robin's turn)
    clock.advance(9)
    assert await svc.claim("web", "a") is None  # b is ready and its offer is live
    clock.advance(2)  # the offer lapsed: t2 is routed again, and the round-robin turn is a's now
    await svc.agent_heartbeat("web", "b")
    again = await svc.claim("web", "a")
    assert again is not None and again.task.title == "t2"
    await svc.create_tasks("web", [{"title": "t3"}, {"title": "t4"}])
    clock.advance(31)  # b is unready now: nothing is routed to it, a gets both
    await svc.agent_heartbeat("web", "a")
    assert {x.id: x.ready for x in await svc.list_agents("web")} == {"a": True, "b": False}
    assert [c.task.title for c in await svc.claim_many("web", "a", limit=5)] == ["t3", "t4"]
