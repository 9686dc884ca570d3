"""Agents and routing contract (issue 13): registry, capacity, labels, concurrency keys, fair share,
strategies and offers — the same behaviour on every backend."""

from __future__ import annotations

import asyncio
import dataclasses
import random

import pytest

from queue_service import exceptions
from queue_service.backend import DispatchConfig
from queue_service.models import TaskStatus
from queue_service.service import QueueService
from tests.fixtures.backends import FAST

S = TaskStatus
#: readiness and offer windows short enough that a test can outwait them
READY_SECONDS = 0.6


@pytest.fixture
def dispatch_config() -> DispatchConfig:
    return dataclasses.replace(FAST, agent_ready_seconds=READY_SECONDS, offer_seconds=30.0, max_queue_depth=20_000)


@pytest.fixture
async def web(svc: QueueService) -> str:
    await svc.create_project({"slug": "web", "key_prefix": "WEB"})
    return "web"


async def _agents(svc: QueueService, project: str) -> dict[str, dict[str, object]]:
    return {a.id: a.model_dump() for a in await svc.list_agents(project)}


async def test_register_heartbeat_drain_and_list(svc: QueueService, web: str) -> None:
    agent = await svc.register_agent(web, {"id": "w1", "roles": ["dev"], "labels": {"model": "opus"}, "capacity": 2})
    assert agent.ready and not agent.drained and agent.capacity == 2
    listed = await svc.list_agents(web)
    assert [a.id for a in listed] == ["w1"]
    assert set(listed[0].model_dump()) == {
        "id",
        "roles",
        "labels",
        "capacity",
        "ready",
        "drained",
        "last_seen",
        "holding",
        "done",
        "failed",
    }
    assert listed[0].roles == ["dev"] and listed[0].labels == {"model": "opus"}
    beat = await svc.agent_heartbeat(web, "w1")
    assert beat.last_seen >= agent.last_seen
    await svc.create_task(web, {"title": "t", "role": "dev"})
    drained = await svc.drain_agent(web, "w1")
    assert drained.drained and not drained.ready
    assert await svc.claim(web, "w1", ["dev"]) is None
    again = await svc.register_agent(web, {"id": "w1", "roles": ["dev"], "capacity": 2})
    assert not again.drained and again.labels == {}
    assert await svc.claim(web, "w1", ["dev"]) is not None
    with pytest.raises(exceptions.NotFound):
        await svc.agent_heartbeat(web, "nobody")
    with pytest.raises(exceptions.NotFound):
        await svc.drain_agent(web, "nobody")


async def test_bad_registrations_are_refused(svc: QueueService, web: str) -> None:
    for bad in (
        {"id": "a b"},
        {"id": "a/b"},
        {"id": "a", "capacity": 0},
        {"id": "a", "labels": {"bad name": "x"}},
        {"id": "a", "labels": {"model": ""}},
        {"id": "a", "roles": ["no spaces"]},
        {"id": "a", "extra": 1},
    ):
        with pytest.raises(exceptions.ValidationError):
            await svc.register_agent(web, bad)
    assert await svc.list_agents(web) == []
    with pytest.raises(exceptions.ProjectNotFound):
        await svc.list_agents("nope")


async def test_claim_registers_implicitly_and_lists_holdings(svc: QueueService, web: str) -> None:
    a, b = await svc.create_tasks(web, [{"title": "a", "role": "dev"}, {"title": "b", "role": "dev"}])
    claim = await svc.claim(web, "ghost", ["dev"], lease_seconds=60)
    assert claim is not None
    agents = await _agents(svc, web)
    ghost = agents["ghost"]
    assert ghost["roles"] == ["dev"] and ghost["capacity"] == 1 and ghost["ready"] is True
    assert [h["key"] for h in ghost["holding"]] == [a.key]  # type: ignore[index]
    left = ghost["holding"][0]["lease_seconds_left"]  # type: ignore[index]
    assert 0 < left <= 60
    await svc.complete(web, claim.task.key, claim.lease.token)
    ghost = (await _agents(svc, web))["ghost"]
    assert ghost["holding"] == [] and ghost["done"] == 1 and ghost["failed"] == 0
    del b


async def test_claims_never_exceed_registered_capacity(svc: QueueService, web: str) -> None:
    await svc.create_tasks(web, [{"title": f"t{i}"} for i in range(6)])
    await svc.register_agent(web, {"id": "w", "capacity": 2})
    got = await svc.claim_many(web, "w", limit=5)
    assert len(got) == 2
    assert await svc.claim(web, "w") is None
    await svc.complete(web, got[0].task.key, got[0].lease.token)
    more = await svc.claim_many(web, "w", limit=5)
    assert len(more) == 1


async def test_requires_is_never_violated(svc: QueueService, web: str) -> None:
    rng = random.Random(13)
    models = ["opus", "sonnet", "haiku"]
    items = []
    for i in range(30):
        req = {"model": rng.choice(models)} if i % 3 else {}
        items.append({"title": f"t{i}", "requires": req})
    await svc.create_tasks(web, items)
    for m in models:
        await svc.register_agent(web, {"id": f"a-{m}", "labels": {"model": m}, "capacity": 50})
    await svc.register_agent(web, {"id": "plain", "capacity": 50})
    order = [f"a-{m}" for m in models] + ["plain"]
    labels = {f"a-{m}": {"model": m} for m in models} | {"plain": {}}
    claimed = 0
    for _ in range(60):
        agent = rng.choice(order)
        c = await svc.claim(web, agent)
        if c is None:
            continue
        claimed += 1
        for name, value in c.task.requires.items():
            assert labels[agent].get(name) == value
    remaining = [t for t in (await svc.list_tasks(web, limit=100)).items if t.status is S.NOT_STARTED]
    # whatever is left needs a label; an agent carrying it takes every one of those
    for t in remaining:
        assert t.requires
    for m in models:
        while (c := await svc.claim(web, f"a-{m}")) is not None:
            assert c.task.requires.get("model", m) == m
    left = [t for t in (await svc.list_tasks(web, limit=100)).items if t.status is S.NOT_STARTED]
    assert left == [] and claimed > 0


async def test_concurrency_key_limit_and_default(svc: QueueService, web: str) -> None:
    project = await svc.update_project(web, {"concurrency_limits": {"repo-a": 2, "*": 1}})
    assert project.concurrency_limits == {"repo-a": 2, "*": 1}
    await svc.create_tasks(
        web,
        [{"title": f"a{i}", "concurrency_key": "repo-a"} for i in range(4)]
        + [{"title": f"b{i}", "concurrency_key": "repo-b"} for i in range(3)]
        + [{"title": "free"}],
    )
    got = await svc.claim_many(web, "w", limit=20)
    keys = sorted(c.task.concurrency_key or "-" for c in got)
    assert keys == ["-", "repo-a", "repo-a", "repo-b"]
    assert await svc.claim(web, "other") is None
    first_a = next(c for c in got if c.task.concurrency_key == "repo-a")
    await svc.complete(web, first_a.task.key, first_a.lease.token)
    nxt = await svc.claim(web, "other")
    assert nxt is not None and nxt.task.concurrency_key == "repo-a"
    assert await svc.claim(web, "other") is None
    with pytest.raises(exceptions.ValidationError):
        await svc.update_project(web, {"concurrency_limits": {"repo-a": -1}})
    with pytest.raises(exceptions.ValidationError):
        await svc.update_project(web, {"routing": {"dev": "fastest"}})


async def test_fair_share_small_group_starts_within_first_20_claims(svc: QueueService, web: str) -> None:
    big = [{"title": f"big {i}", "group": "big"} for i in range(10_000)]
    await svc.create_tasks(web, big)
    await svc.create_tasks(web, [{"title": f"small {i}", "group": "small"} for i in range(10)])
    first = await svc.claim_many(web, "w", limit=20)
    assert len(first) == 20
    assert sum(1 for c in first if c.task.group == "small") == 10


async def test_fair_share_defaults_to_mission_and_stays_within_priority(svc: QueueService, web: str) -> None:
    await svc.create_mission(web, {"id": "m2"})
    await svc.create_tasks(web, [{"title": f"d{i}"} for i in range(3)])
    await svc.create_tasks(web, [{"title": f"m{i}", "mission": "m2"} for i in range(3)])
    await svc.create_task(web, {"title": "urgent", "priority": "P0"})
    order = []
    while (c := await svc.claim(web, "w")) is not None:
        order.append(c.task.title)
    # "urgent" (P0) goes first whatever its group; then the groups alternate, and the default
    # mission, just served by "urgent", waits for m2's turn
    assert order == ["urgent", "m0", "d0", "m1", "d1", "m2", "d2"]


async def test_round_robin_spreads_within_one(svc: QueueService, web: str) -> None:
    await svc.update_project(web, {"routing": {"build": "round-robin"}})
    agents = ["r1", "r2", "r3"]
    for a in agents:
        await svc.register_agent(web, {"id": a, "roles": ["build"]})
    await svc.create_tasks(web, [{"title": f"t{i}", "role": "build"} for i in range(31)])
    counts = dict.fromkeys(agents, 0)
    rng = random.Random(7)
    for _ in range(400):
        agent = rng.choice(agents)
        c = await svc.claim(web, agent, ["build"])
        if c is not None:
            counts[agent] += 1
            await svc.complete(web, c.task.key, c.lease.token)
        if sum(counts.values()) == 31:
            break
    assert sum(counts.values()) == 31
    assert max(counts.values()) - min(counts.values()) <= 1, counts


async def test_least_busy_never_routes_to_a_busier_agent(svc: QueueService, web: str) -> None:
    await svc.update_project(web, {"routing": {"default": "least-busy"}})
    await svc.register_agent(web, {"id": "a", "capacity": 4})
    await svc.register_agent(web, {"id": "b", "capacity": 4})
    await svc.create_tasks(web, [{"title": f"t{i}"} for i in range(1, 6)])
    got_a = []
    for _ in range(3):
        c = await svc.claim(web, "a")
        assert c is not None
        got_a.append(c.task.title)
    # t1: tie (0 vs 0) -> a by id; t2: a 1/4 vs b 0/4 -> offered to b; t3: tie (b has an offer) -> a;
    # t4: a 2/4 vs b 1/4 -> b; t5: tie -> a
    assert got_a == ["t1", "t3", "t5"]
    got_b = [c.task.title for c in await svc.claim_many(web, "b", limit=4)]
    assert got_b == ["t2", "t4"]


async def test_unready_agent_gets_nothing_and_its_offers_come_back(svc: QueueService, web: str) -> None:
    await svc.update_project(web, {"routing": {"default": "round-robin"}})
    await svc.register_agent(web, {"id": "a", "capacity": 10})
    await svc.register_agent(web, {"id": "b", "capacity": 10})
    await svc.create_tasks(web, [{"title": f"t{i}"} for i in range(1, 5)])
    c1 = await svc.claim(web, "a")
    c2 = await svc.claim(web, "a")
    assert c1 is not None and c2 is not None
    assert (c1.task.title, c2.task.title) == ("t1", "t3")  # t2 was offered to b
    await asyncio.sleep(READY_SECONDS + 0.2)
    await svc.agent_heartbeat(web, "a")
    listed = await _agents(svc, web)
    assert listed["b"]["ready"] is False and listed["a"]["ready"] is True
    rest = [c.task.title for c in await svc.claim_many(web, "a", limit=10)]
    assert rest == ["t2", "t4"]  # b's offer came back; nothing is routed to b while unready


async def test_routing_fields_round_trip_and_patch(backend, svc: QueueService, web: str) -> None:
    await svc.update_project(web, {"routing": {"dev": "least-busy"}, "concurrency_limits": {"*": 3}})
    t = await svc.create_task(
        web,
        {
            "title": "x",
            "requires": {"model": "opus"},
            "prefers": [{"labels": {"gpu": "true"}, "weight": 5}],
            "concurrency_key": "api",
            "group": "team-a",
        },
    )
    got = await svc.get_task(web, t.key)
    assert got.requires == {"model": "opus"} and got.concurrency_key == "api" and got.group == "team-a"
    assert got.prefers[0].labels == {"gpu": "true"} and got.prefers[0].weight == 5
    patched = await svc.update_task(web, t.key, {"requires": None, "group": "team-b", "concurrency_key": None})
    assert patched.requires == {} and patched.group == "team-b" and patched.concurrency_key is None
    snap = await svc.export_project(web)
    assert snap.project.routing == {"dev": "least-busy"} and snap.project.concurrency_limits == {"*": 3}
    moved = snap.model_copy(
        update={
            "project": snap.project.model_copy(update={"slug": "web2"}),
            "missions": tuple(m.model_copy(update={"project": "web2"}) for m in snap.missions),
            "tasks": tuple(x.model_copy(update={"project": "web2"}) for x in snap.tasks),
            "notes": (),
            "events": tuple(e.model_copy(update={"project": "web2"}) for e in snap.events),
        }
    )
    await svc.import_project(moved)
    again = await svc.export_project("web2")
    assert again.project.routing == snap.project.routing
    assert again.project.concurrency_limits == snap.project.concurrency_limits
    assert [x.model_dump(exclude={"project"}) for x in again.tasks] == [
        x.model_dump(exclude={"project"}) for x in snap.tasks
    ]
    cleared = await svc.update_project(web, {"routing": None})
    assert cleared.routing == {} and cleared.concurrency_limits == {"*": 3}


async def test_preferences_choose_the_agent_and_order_a_pull(svc: QueueService, web: str) -> None:
    await svc.update_project(web, {"routing": {"ml": "round-robin"}})
    await svc.register_agent(web, {"id": "a-cpu", "roles": ["ml"], "capacity": 5})
    await svc.register_agent(web, {"id": "b-gpu", "roles": ["ml"], "labels": {"gpu": "yes"}, "capacity": 5})
    prefers = [{"labels": {"gpu": "yes"}, "weight": 5}]
    await svc.create_tasks(web, [{"title": f"g{i}", "role": "ml", "prefers": prefers} for i in range(3)])
    # round-robin would alternate; the preference narrows the field to the GPU agent
    assert await svc.claim(web, "a-cpu", ["ml"]) is None
    got = [c.task.title for c in await svc.claim_many(web, "b-gpu", ["ml"], limit=5)]
    assert got == ["g0", "g1", "g2"]
    # pulling, an agent takes the tasks it matches best first (within a priority and group)
    await svc.create_tasks(web, [{"title": "plain"}, {"title": "mine", "prefers": prefers}])
    c = await svc.claim(web, "b-gpu", ["default"])
    assert c is not None and c.task.title == "mine"


async def test_flatfile_registry_and_offers_survive_a_restart(tmp_path, dispatch_config: DispatchConfig) -> None:  # type: ignore[no-untyped-def]
    from flatfile.backend import FlatfileBackend

    data = tmp_path / "qd"
    async with FlatfileBackend(data, config=dispatch_config) as backend:
        svc = QueueService(backend)
        await svc.create_project({"slug": "web", "key_prefix": "WEB"})
        await svc.update_project("web", {"routing": {"default": "round-robin"}})
        await svc.register_agent("web", {"id": "a", "capacity": 5, "labels": {"gpu": "yes"}})
        await svc.register_agent("web", {"id": "b", "capacity": 5})
        await svc.create_tasks("web", [{"title": "t1"}, {"title": "t2", "group": "g"}])
        first = await svc.claim("web", "a")  # t1 to a; t2 offered to b
        assert first is not None and first.task.title == "t1"
    async with FlatfileBackend(data, config=dispatch_config) as backend:
        svc = QueueService(backend)
        agents = {a.id: a for a in await svc.list_agents("web")}
        assert agents["a"].labels == {"gpu": "yes"} and agents["a"].capacity == 5
        assert [h.key for h in agents["a"].holding] == [first.task.key]
        assert await svc.claim("web", "a") is None  # the offer to b survived the restart
        got = await svc.claim("web", "b")
        assert got is not None and got.task.title == "t2" and got.task.group == "g"


async def test_ready_lists_tasks_in_the_order_claims_take_them(svc: QueueService, web: str) -> None:
    await svc.create_mission(web, {"id": "m2"})
    await svc.create_tasks(web, [{"title": f"d{i}"} for i in range(3)])
    await svc.create_tasks(web, [{"title": f"m{i}", "mission": "m2"} for i in range(3)])
    await svc.create_task(web, {"title": "urgent", "priority": "P0"})
    listed = await svc.ready(web, limit=5)
    assert listed.total == 7
    order = []
    while (c := await svc.claim(web, "w")) is not None:
        order.append(c.task.title)
    assert [t.title for t in listed.tasks] == order[:5]
