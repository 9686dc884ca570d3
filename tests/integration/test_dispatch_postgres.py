"""PostgresValkeyDispatcher on real Postgres + Redis: races, DAGs, retries, tokens, events, reconcile."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest

from queue_service import exceptions
from queue_service.models import Event, TaskStatus
from queue_service.postgres.backend import PostgresValkeyBackend
from queue_service.service import QueueService
from queue_service.sweeper import Sweeper
from queue_service.testing import InMemoryBackend
from tests.integration.pgvk import FAST, fast, open_backend

pytestmark = pytest.mark.postgres

S = TaskStatus
LONG_LEASE = fast(lease_seconds=30.0)


@pytest.fixture
async def backend(pg_url: str, valkey_url: str, valkey_prefix: str) -> AsyncIterator[PostgresValkeyBackend]:
    # A long default lease: on a loaded shared machine claim→complete may take a while; tests about
    # expiry pass their own short lease_seconds.
    async with open_backend(pg_url, valkey_url, valkey_prefix, LONG_LEASE) as b:
        yield b


@pytest.fixture
async def svc(backend: PostgresValkeyBackend) -> QueueService:
    s = QueueService(backend)
    await s.create_project({"slug": "web", "key_prefix": "WEB"})
    return s


async def events_of(backend: PostgresValkeyBackend, kind: str | None = None) -> list[Event]:
    out: list[Event] = []
    after = 0
    while True:
        page = await backend.records.list_events("web", after_id=after, limit=1000)
        if not page:
            break
        out.extend(page)
        after = page[-1].id
    return [e for e in out if kind is None or e.kind == kind]


async def drain(
    backend: PostgresValkeyBackend, workers: int, *, idle: float = 1.0, roles: list[str] | None = None
) -> list[str]:
    """Claim and complete until nothing is claimable for *idle* seconds; returns the completion order."""
    done: list[str] = []

    async def worker(i: int) -> None:
        while True:
            c = await backend.dispatch.claim("web", f"w{i}", roles=roles, wait=idle)
            if c is None:
                return
            await backend.dispatch.complete("web", c.task.key, c.lease.token, result={"by": i})
            done.append(c.task.key)

    await asyncio.gather(*(worker(i) for i in range(workers)))
    return done


# -- races --------------------------------------------------------------------------------------


async def test_fifty_claimers_one_task_exactly_one_wins(
    svc: QueueService, backend: PostgresValkeyBackend, pg_url: str, valkey_url: str, valkey_prefix: str
) -> None:
    t = await svc.create_task("web", {"title": "only one"})
    # two replicas (backend instances) share the database and key space; claimers use both
    async with open_backend(pg_url, valkey_url, valkey_prefix, LONG_LEASE) as other:
        results = await asyncio.gather(
            *((backend if i % 2 else other).dispatch.claim("web", f"agent-{i}", wait=0.3) for i in range(50))
        )
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert winners[0].task.key == t.key
    assert len(await events_of(backend, "claimed")) == 1


async def test_fifty_waiting_claimers_across_replicas_one_task(
    svc: QueueService, backend: PostgresValkeyBackend, pg_url: str, valkey_url: str, valkey_prefix: str
) -> None:
    async with open_backend(pg_url, valkey_url, valkey_prefix, LONG_LEASE) as other:
        waiters = [
            asyncio.create_task((backend if i % 2 else other).dispatch.claim("web", f"agent-{i}", wait=1.5))
            for i in range(50)
        ]
        await asyncio.sleep(0.3)
        t = await svc.create_task("web", {"title": "only one"})
        results = await asyncio.gather(*waiters)
    winners = [r for r in results if r is not None]
    assert [w.task.key for w in winners] == [t.key]
    assert (await svc.get_task("web", t.key)).status is S.IN_PROGRESS


async def test_thousand_tasks_each_claimed_exactly_once(svc: QueueService, backend: PostgresValkeyBackend) -> None:
    await svc.create_tasks("web", [{"title": f"t{i}"} for i in range(1000)])
    done = await drain(backend, workers=20, idle=0.5)
    assert len(done) == 1000
    assert len(set(done)) == 1000
    claimed = Counter(e.task for e in await events_of(backend, "claimed"))
    assert len(claimed) == 1000
    assert set(claimed.values()) == {1}
    stats = await backend.records.stats("web")
    assert stats.by_status["done"] == 1000
    assert await backend.dispatch.queue_depths("web") == {}


# -- DAG shapes ---------------------------------------------------------------------------------


async def _check_dag(backend: PostgresValkeyBackend, svc: QueueService, workers: int) -> None:
    done = await drain(backend, workers=workers, idle=1.0)
    page = await backend.records.list_tasks("web", limit=1000)
    tasks = {t.key: t for t in page.items}
    assert len(done) == len(tasks) == len(set(done))
    assert {t.status for t in tasks.values()} == {S.DONE}
    claimed = {e.task: e.id for e in await events_of(backend, "claimed")}
    completed = {e.task: e.id for e in await events_of(backend, "completed")}
    for t in tasks.values():
        for dep in t.depends_on:
            # the dependent was claimed only after every dependency's completion was committed
            assert claimed[t.key] > completed[dep], (t.key, dep)
            dep_done = tasks[dep].completed_at
            assert t.started_at is not None
            assert dep_done is not None
            assert t.started_at >= dep_done


async def test_dag_chain_of_200(svc: QueueService, backend: PostgresValkeyBackend) -> None:
    await svc.create_tasks(
        "web", [{"title": "c0"}] + [{"title": f"c{i}", "depends_on": [f"#{i - 1}"]} for i in range(1, 200)]
    )
    await _check_dag(backend, svc, workers=4)


async def test_dag_fan_out_1_to_200(svc: QueueService, backend: PostgresValkeyBackend) -> None:
    await svc.create_tasks(
        "web", [{"title": "root"}] + [{"title": f"leaf{i}", "depends_on": ["#0"]} for i in range(200)]
    )
    await _check_dag(backend, svc, workers=8)


async def test_dag_fan_in_200_to_1(svc: QueueService, backend: PostgresValkeyBackend) -> None:
    items: list[dict[str, Any]] = [{"title": f"src{i}"} for i in range(200)]
    items.append({"title": "sink", "depends_on": [f"#{i}" for i in range(200)]})
    await svc.create_tasks("web", items)
    await _check_dag(backend, svc, workers=8)


async def test_dag_layered(svc: QueueService, backend: PostgresValkeyBackend) -> None:
    rng = random.Random(7)
    items: list[dict[str, Any]] = []
    layers = [list(range(i * 40, (i + 1) * 40)) for i in range(5)]
    for depth, layer in enumerate(layers):
        for _ in layer:
            deps = [] if depth == 0 else [f"#{d}" for d in rng.sample(layers[depth - 1], 3)]
            items.append({"title": f"L{depth}", "depends_on": deps, "priority": rng.choice(["P0", "P1", "P2", "P3"])})
    await svc.create_tasks("web", items)
    await _check_dag(backend, svc, workers=8)


# -- retries, backoff, dead-letter ---------------------------------------------------------------


async def test_backoff_timings_then_dead_letter_then_retry_revives(
    pg_url: str, valkey_url: str, valkey_prefix: str
) -> None:
    base, jitter = 0.2, 0.1
    config = fast(backoff_base_seconds=base, backoff_max_seconds=10.0, backoff_jitter=jitter, lease_seconds=30.0)
    async with open_backend(pg_url, valkey_url, valkey_prefix, config) as backend:
        svc = QueueService(backend)
        await svc.create_project({"slug": "web", "key_prefix": "WEB"})
        t, child = await svc.create_tasks(
            "web", [{"title": "flaky", "max_attempts": 4}, {"title": "child", "depends_on": ["#0"]}]
        )
        for attempt in range(1, 5):
            c = await backend.dispatch.claim("web", "a", wait=5.0)
            assert c is not None
            assert c.task.key == t.key
            assert c.task.attempts == attempt - 1
            failed = await backend.dispatch.fail("web", t.key, c.lease.token, f"boom {attempt}", retryable=True)
            assert failed.attempts == attempt
            assert failed.last_error == f"boom {attempt}"
            if attempt < 4:
                assert failed.status is S.NOT_STARTED
                assert failed.not_before is not None
                delay = (failed.not_before - failed.updated_at).total_seconds()
                nominal = base * 2 ** (attempt - 1)
                assert nominal * (1 - jitter) - 1e-3 <= delay <= nominal * (1 + jitter) + 1e-3
                assert await backend.dispatch.claim("web", "early", wait=0) is None  # not before the backoff
            else:
                assert failed.status is S.FAILED
        claims = await events_of(backend, "claimed")
        fails = await events_of(backend, "failed")
        assert len(claims) == 4
        assert len(fails) == 4
        for n in range(1, 4):
            gap = (claims[n].at - fails[n - 1].at).total_seconds()
            nominal = base * 2 ** (n - 1)
            assert gap >= nominal * (1 - jitter) - 0.01, (n, gap)
            assert gap <= nominal * (1 + jitter) + 2.0, (n, gap)  # tolerant: machine is shared
        assert fails[-1].data.get("dead_letter") is True
        assert [x.key for x in await backend.records.dead_letter("web")] == [t.key]
        blocked = await svc.get_task("web", child.key)
        assert blocked.status is S.BLOCKED
        assert blocked.blocked_reason is not None
        assert t.key in blocked.blocked_reason

        revived = await backend.dispatch.retry("web", t.key, actor="lead")
        assert revived.status is S.NOT_STARTED
        assert revived.attempts == 0
        assert revived.not_before is None
        assert (await svc.get_task("web", child.key)).status is S.NOT_STARTED
        c = await backend.dispatch.claim("web", "b", wait=2.0)
        assert c is not None
        assert c.task.key == t.key
        await backend.dispatch.complete("web", t.key, c.lease.token, result="ok")
        c = await backend.dispatch.claim("web", "b", wait=2.0)
        assert c is not None
        assert c.task.key == child.key
        with pytest.raises(exceptions.InvalidTransition):
            await backend.dispatch.retry("web", child.key)


async def test_permanent_failure_dead_letters_at_once(svc: QueueService, backend: PostgresValkeyBackend) -> None:
    t = await svc.create_task("web", {"title": "bad", "max_attempts": 5})
    c = await backend.dispatch.claim("web", "a")
    assert c is not None
    failed = await backend.dispatch.fail("web", t.key, c.lease.token, "no such file", retryable=False)
    assert failed.status is S.FAILED
    assert failed.attempts == 1


# -- roles and priorities -----------------------------------------------------------------------


async def test_role_isolation_including_waiters(svc: QueueService, backend: PostgresValkeyBackend) -> None:
    dev_waiter = asyncio.create_task(backend.dispatch.claim("web", "dev-agent", roles=["dev"], wait=1.0))
    await asyncio.sleep(0.1)
    qa = await svc.create_task("web", {"title": "qa job", "role": "qa"})
    assert await dev_waiter is None  # never woken by another role's task
    assert await backend.dispatch.claim("web", "dev-agent", roles=["dev"]) is None
    dev = await svc.create_task("web", {"title": "dev job", "role": "dev"})
    c = await backend.dispatch.claim("web", "dev-agent", roles=["dev", "ops"])
    assert c is not None
    assert c.task.key == dev.key
    any_role = await backend.dispatch.claim("web", "generalist", roles=None)
    assert any_role is not None
    assert any_role.task.key == qa.key


async def test_all_roles_waiter_sees_a_role_created_while_waiting(
    svc: QueueService, backend: PostgresValkeyBackend
) -> None:
    waiter = asyncio.create_task(backend.dispatch.claim("web", "any", roles=None, wait=5.0))
    await asyncio.sleep(0.1)
    t = await svc.create_task("web", {"title": "new role", "role": "brand.new/role"})
    c = await asyncio.wait_for(waiter, 5.0)
    assert c is not None
    assert c.task.key == t.key


async def test_priority_order_across_roles(svc: QueueService, backend: PostgresValkeyBackend) -> None:
    await svc.create_tasks(
        "web",
        [
            {"title": "a-P3", "role": "a", "priority": "P3"},
            {"title": "b-P1", "role": "b", "priority": "P1"},
            {"title": "a-P1", "role": "a", "priority": "P1"},
            {"title": "b-P0", "role": "b", "priority": "P0"},
            {"title": "c-P0", "role": "c", "priority": "P0"},
        ],
    )
    order = []
    while c := await backend.dispatch.claim("web", "x", roles=["a", "b"]):
        order.append(c.task.title)
    assert order[0] == "b-P0"
    assert set(order[1:3]) == {"b-P1", "a-P1"}
    assert order[3] == "a-P3"
    assert len(order) == 4


async def test_role_change_while_queued_moves_the_entry(svc: QueueService, backend: PostgresValkeyBackend) -> None:
    t = await svc.create_task("web", {"title": "x", "role": "a"})
    await svc.update_task("web", t.key, {"role": "b"})
    assert await backend.dispatch.claim("web", "a-agent", roles=["a"]) is None
    c = await backend.dispatch.claim("web", "b-agent", roles=["b"])
    assert c is not None
    assert c.task.key == t.key


# -- tokens and locks ---------------------------------------------------------------------------


async def test_lock_key_mirrors_the_lease(
    svc: QueueService, backend: PostgresValkeyBackend, valkey_prefix: str
) -> None:
    t = await svc.create_task("web", {"title": "x"})
    c = await backend.dispatch.claim("web", "a", lease_seconds=5.0)
    assert c is not None
    lock = f"{valkey_prefix}:project:web:lock:{t.key}"
    redis = backend.broker.client
    assert await redis.get(lock) == c.lease.token
    assert 0 < await redis.pttl(lock) <= 5000
    lease = await backend.dispatch.heartbeat("web", t.key, c.lease.token, lease_seconds=30.0)
    assert lease.expires_at > c.lease.expires_at
    assert 5000 < await redis.pttl(lock) <= 30000
    await backend.dispatch.complete("web", t.key, c.lease.token)
    assert await redis.get(lock) is None


async def test_wrong_or_expired_token_refused_and_nothing_changes(
    svc: QueueService, backend: PostgresValkeyBackend
) -> None:
    t = await svc.create_task("web", {"title": "x"})
    c = await backend.dispatch.claim("web", "a", lease_seconds=0.4)
    assert c is not None
    before = await svc.get_task("web", t.key)
    events_before = len(await events_of(backend))
    for op in (
        lambda tok: backend.dispatch.heartbeat("web", t.key, tok),
        lambda tok: backend.dispatch.complete("web", t.key, tok, result="zombie"),
        lambda tok: backend.dispatch.fail("web", t.key, tok, "zombie"),
        lambda tok: backend.dispatch.release("web", t.key, tok),
    ):
        with pytest.raises(exceptions.LeaseError):
            await op("not-the-token")
    assert await svc.get_task("web", t.key) == before
    await asyncio.sleep(0.5)  # the lease runs out (no sweep runs here)
    for op in (
        lambda tok: backend.dispatch.heartbeat("web", t.key, tok),
        lambda tok: backend.dispatch.complete("web", t.key, tok, result="late"),
        lambda tok: backend.dispatch.fail("web", t.key, tok, "late"),
        lambda tok: backend.dispatch.release("web", t.key, tok),
    ):
        with pytest.raises(exceptions.LeaseError, match="expired"):
            await op(c.lease.token)
    assert await svc.get_task("web", t.key) == before
    assert len(await events_of(backend)) == events_before
    with pytest.raises(exceptions.TaskNotFound):
        await backend.dispatch.complete("web", "WEB-999", c.lease.token)
    with pytest.raises(exceptions.ProjectNotFound):
        await backend.dispatch.complete("nope", t.key, c.lease.token)
    with pytest.raises(exceptions.ProjectNotFound):
        await backend.dispatch.claim("nope", "a")


# -- events -------------------------------------------------------------------------------------


async def test_events_published_after_commit(svc: QueueService, backend: PostgresValkeyBackend) -> None:
    raw = await backend.broker.subscription("web")
    seen: list[Event] = []
    stream = backend.events.subscribe("web")

    async def consume() -> None:
        async for ev in stream:
            # delivered after commit: the record already shows at least this version
            stored = await backend.records.get_task("web", ev.task or "")
            assert stored.version >= (ev.version or 0)
            seen.append(ev)
            if ev.kind == "completed":
                return

    consumer = asyncio.create_task(consume())
    for _ in range(100):
        if (await backend.broker.client.pubsub_numsub(backend.broker.keys.events("web")))[0][1] >= 2:
            break
        await asyncio.sleep(0.02)
    t = await svc.create_task("web", {"title": "x"})
    c = await backend.dispatch.claim("web", "a")
    assert c is not None
    await backend.dispatch.complete("web", t.key, c.lease.token, result=1)
    await asyncio.wait_for(consumer, 5.0)
    assert [(e.kind, e.status, e.version) for e in seen] == [
        ("created", S.NOT_STARTED, 1),
        ("claimed", S.IN_PROGRESS, 2),
        ("completed", S.DONE, 3),
    ]
    stored = await events_of(backend)
    assert [e.id for e in seen] == [e.id for e in stored if e.task == t.key]
    payloads = [await raw.get(2.0) for _ in range(3)]
    await raw.aclose()
    for p in payloads:
        assert p is not None
        assert {"project", "task", "status", "version", "at"} <= set(p)
        assert p["project"] == "web"
        assert p["task"] == t.key
        datetime.fromisoformat(p["at"])
    assert [p["status"] for p in payloads] == ["not-started", "in-progress", "done"]  # type: ignore[index]
    json.dumps(payloads)


# -- sweep and reconcile ------------------------------------------------------------------------


async def test_sweep_from_two_replicas_expires_each_lease_once(
    svc: QueueService, backend: PostgresValkeyBackend, pg_url: str, valkey_url: str, valkey_prefix: str
) -> None:
    await svc.create_tasks("web", [{"title": f"t{i}"} for i in range(20)])
    for i in range(20):
        assert await backend.dispatch.claim("web", f"dead-{i}", lease_seconds=0.2) is not None
    await asyncio.sleep(0.3)
    async with open_backend(pg_url, valkey_url, valkey_prefix, LONG_LEASE) as other:
        reports = await asyncio.gather(*(b.dispatch.sweep() for b in (backend, other, backend, other)))
    expired = [k for r in reports for k in r.expired_leases]
    assert sorted(expired) == sorted(f"web/WEB-{i}" for i in range(1, 21))
    tasks = (await svc.list_tasks("web", limit=100)).items
    assert {t.attempts for t in tasks} == {1}
    assert {t.status for t in tasks} == {S.NOT_STARTED}
    assert len(await events_of(backend, "lease_expired")) == 20
    done = await drain(backend, workers=4, idle=0.5)
    assert sorted(done) == sorted(t.key for t in tasks)


async def test_reconcile_requeues_a_lost_entry(svc: QueueService, backend: PostgresValkeyBackend) -> None:
    t = await svc.create_task("web", {"title": "x"})
    # a claimer that popped the key and died before its conditional update
    assert (await backend.broker.try_pop("web", None)).key == t.key  # type: ignore[union-attr]
    report = await backend.dispatch.sweep()
    assert report.requeued == 1
    c = await backend.dispatch.claim("web", "a")
    assert c is not None
    assert c.task.key == t.key


async def test_valkey_keys_lost_rebuilds_lists_locks_and_backoffs(
    svc: QueueService, backend: PostgresValkeyBackend, valkey_prefix: str
) -> None:
    ready, leased, flaky = await svc.create_tasks(
        "web",
        [
            {"title": "ready", "priority": "P3"},
            {"title": "leased", "priority": "P0"},
            {"title": "flaky", "priority": "P1"},
        ],
    )
    await backend.dispatch.sweep()  # sets the epoch marker
    c = await backend.dispatch.claim("web", "a", lease_seconds=30.0)
    assert c is not None
    assert c.task.key == leased.key
    c2 = await backend.dispatch.claim("web", "a")
    assert c2 is not None
    assert c2.task.key == flaky.key
    await backend.dispatch.fail("web", flaky.key, c2.lease.token, "later", retryable=True)
    # what a FLUSHALL/restart does to our key space (this test shares db 0: delete by prefix)
    assert await backend.broker.delete_prefix() > 0
    report = await backend.dispatch.sweep()
    assert report.requeued >= 1
    redis = backend.broker.client
    assert await redis.get(f"{valkey_prefix}:project:web:lock:{leased.key}") == c.lease.token
    assert 25_000 < await redis.pttl(f"{valkey_prefix}:project:web:lock:{leased.key}") <= 30_000
    assert await backend.broker.epoch() is not None
    got = []
    while c3 := await backend.dispatch.claim("web", "b", wait=1.0):
        got.append(c3.task.key)
        await backend.dispatch.complete("web", c3.task.key, c3.lease.token)
    assert sorted(got) == sorted([ready.key, flaky.key])
    # the live lease survived the loss: its holder completes normally
    await backend.dispatch.complete("web", leased.key, c.lease.token)


async def test_queue_depths_and_gauges(svc: QueueService, backend: PostgresValkeyBackend) -> None:
    await svc.create_tasks("web", [{"title": "a", "role": "dev"}] * 3 + [{"title": "q", "role": "qa"}])
    assert await backend.dispatch.queue_depths("web") == {"dev": 3, "qa": 1}
    await backend.dispatch.sweep()
    assert backend.dispatch.depth_gauges["web"] == {"dev": 3, "qa": 1}
    assert await backend.broker.client.hgetall(backend.broker.keys.depth("web")) == {"dev": "3", "qa": "1"}
    with pytest.raises(exceptions.ProjectNotFound):
        await backend.dispatch.queue_depths("nope")


async def test_backpressure_counts_ready_tasks_per_role(pg_url: str, valkey_url: str, valkey_prefix: str) -> None:
    async with open_backend(pg_url, valkey_url, valkey_prefix, fast(max_queue_depth=5, lease_seconds=30.0)) as backend:
        svc = QueueService(backend)
        await svc.create_project({"slug": "web"})
        await svc.create_tasks("web", [{"title": "x", "role": "dev"}] * 5)
        with pytest.raises(exceptions.QueueFull):
            await svc.create_task("web", {"title": "one too many", "role": "dev"})
        await svc.create_task("web", {"title": "other role", "role": "qa"})
        assert (await backend.dispatch.queue_depths("web"))["dev"] == 5
        c = await backend.dispatch.claim("web", "a", roles=["dev"])
        assert c is not None
        await svc.create_task("web", {"title": "room again", "role": "dev"})


# -- lifecycle and orchestrator -----------------------------------------------------------------


async def test_ping_names_the_failing_service(pg_url: str, valkey_prefix: str, valkey_url: str) -> None:
    async with open_backend(pg_url, valkey_url, valkey_prefix) as ok:
        await ok.ping()
    async with open_backend(pg_url, "redis://127.0.0.1:1/0", valkey_prefix) as bad_valkey:
        with pytest.raises(exceptions.BackendUnavailable, match="Valkey"):
            await bad_valkey.ping()
    bad_pg = pg_url.rsplit("/", 1)[0] + "/qs_does_not_exist_db"
    async with open_backend(bad_pg, valkey_url, valkey_prefix) as b:
        with pytest.raises(exceptions.BackendUnavailable, match="Postgres"):
            await b.ping()


async def test_orchestrator_expires_leases_in_the_background(svc: QueueService, backend: PostgresValkeyBackend) -> None:
    t = await svc.create_task("web", {"title": "x"})
    c = await backend.dispatch.claim("web", "dies", lease_seconds=0.3)
    assert c is not None
    async with Sweeper(backend, interval=0.05) as orch:
        c2 = await backend.dispatch.claim("web", "fresh", wait=3.0)
        assert c2 is not None
        assert c2.task.key == t.key
        assert c2.task.attempts == 1
        running_inside = orch.running
    assert running_inside
    assert not orch.running
    assert orch.sweeps >= 1


async def test_orchestrator_survives_an_unavailable_backend(pg_url: str, valkey_prefix: str) -> None:
    async with open_backend(pg_url, "redis://127.0.0.1:1/0", valkey_prefix) as b:
        orch = Sweeper(b, interval=0.05)
        orch.start()
        await asyncio.sleep(0.4)
        assert orch.running
        assert orch.failures >= 2
        assert isinstance(orch.last_error, exceptions.BackendUnavailable)
        await orch.stop()
        await orch.stop()  # idempotent


async def test_orchestrator_is_generic_over_backends() -> None:
    async with InMemoryBackend(config=FAST) as b:
        svc = QueueService(b)
        await svc.create_project({"slug": "web"})
        await svc.create_task("web", {"title": "x"})
        c = await b.dispatch.claim("web", "dies", lease_seconds=0.1)
        assert c is not None
        async with Sweeper(b) as orch:
            assert orch.interval == FAST.sweep_seconds
            for _ in range(50):
                if (await svc.get_task("web", c.task.key)).attempts == 1:
                    break
                await asyncio.sleep(0.05)
        assert (await svc.get_task("web", c.task.key)).attempts == 1
        with pytest.raises(exceptions.ConfigurationError):
            Sweeper(b, interval=0)


async def test_claim_validates_lease(svc: QueueService, backend: PostgresValkeyBackend) -> None:
    with pytest.raises(exceptions.ValidationError):
        await backend.dispatch.claim("web", "a", lease_seconds=0)


# -- failures after a batch has committed (found in review): never drop or misreport committed work


async def test_claim_many_keeps_claims_won_before_a_valkey_failure(
    svc: QueueService, backend: PostgresValkeyBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from queue_service.postgres.valkey import ReadyItem

    await svc.create_tasks("web", [{"title": f"t{i}"} for i in range(6)])
    taken = await svc.claim_many("web", "other", limit=3)
    # their keys show up again in the list (stale duplicates): the first round wins fewer than asked
    await backend.dispatch.broker.requeue(
        [ReadyItem("web", c.task.key, c.task.role, c.task.priority.value) for c in taken]
    )
    real = backend.dispatch.broker.try_pop_many
    calls = 0

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise exceptions.BackendUnavailable("valkey timed out")
        return await real(*args, **kwargs)

    monkeypatch.setattr(backend.dispatch.broker, "try_pop_many", flaky)
    got = await svc.claim_many("web", "me", limit=4)
    assert got, "claims committed in the first round must be returned, not dropped"
    mine = list((await svc.list_tasks("web", {"assignee": "me"})).items)
    assert sorted(t.key for t in mine) == sorted(c.task.key for c in got)
    for claim in got:  # every returned token works
        assert (await svc.complete("web", claim.task.key, claim.lease.token)).status is TaskStatus.DONE


async def test_complete_many_reports_a_late_failure_in_its_slot(
    svc: QueueService, backend: PostgresValkeyBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    await svc.create_tasks("web", [{"title": "a"}, {"title": "b"}])
    claims = await svc.claim_many("web", "me", limit=2)
    good, other = claims

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise exceptions.BackendUnavailable("postgres went away")

    # the per-item path (used for items the batch statement did not complete) fails
    monkeypatch.setattr(backend.dispatch, "complete", down)
    out = await svc.complete_many(
        "web", [(good.task.key, good.lease.token, {"ok": 1}), (other.task.key, "wrong", None)]
    )
    assert isinstance(out[0], type(good.task))
    assert out[0].status is TaskStatus.DONE
    assert isinstance(out[1], exceptions.BackendUnavailable)
    assert (await svc.get_task("web", good.task.key)).result == {"ok": 1}
    assert (await svc.get_task("web", other.task.key)).status is TaskStatus.IN_PROGRESS


@pytest.mark.parametrize("batched", [False, True], ids=["complete", "complete_many"])
async def test_completions_sharing_dependents_do_not_deadlock(svc: QueueService, pg_url: str, batched: bool) -> None:
    import asyncpg

    raw = pg_url.replace("postgresql+asyncpg://", "postgresql://")
    await svc.create_tasks(
        "web",
        [
            {"title": "A", "key": "T-1"},
            {"title": "B", "key": "T-2"},
            {"title": "X", "key": "T-3", "depends_on": ["T-1", "T-2"]},
            {"title": "Y", "key": "T-4", "depends_on": ["T-1", "T-2"]},
        ],
    )
    admin = await asyncpg.connect(raw)
    try:
        # rewrite one edge so the two completions meet their shared dependents in opposite physical
        # order (what slot reuse after VACUUM produces naturally)
        await admin.execute(
            """WITH x AS (DELETE FROM task_dependencies d USING tasks t, tasks q
                 WHERE d.task_id = t.id AND t.key = 'T-3' AND t.project = 'web'
                   AND d.depends_on_id = q.id AND q.key = 'T-2' AND q.project = 'web' RETURNING d.*)
               INSERT INTO task_dependencies SELECT * FROM x"""
        )
        tokens = {c.task.key: c.lease.token for c in await svc.claim_many("web", "ag", limit=5)}
        assert set(tokens) == {"T-1", "T-2"}
        # hold both dependents so the two completions queue up, then let them go at once
        tx = admin.transaction()
        await tx.start()
        await admin.fetch("SELECT 1 FROM tasks WHERE project = 'web' AND key IN ('T-3', 'T-4') FOR UPDATE")

        async def finish(key: str) -> object:
            if batched:
                (out,) = await svc.complete_many("web", [(key, tokens[key], None)])
                return out
            return await svc.complete("web", key, tokens[key])

        both = asyncio.gather(finish("T-1"), finish("T-2"), return_exceptions=True)
        await asyncio.sleep(0.5)
        await tx.commit()
        results = await both
    finally:
        await admin.close()
    assert [getattr(r, "status", r) for r in results] == [TaskStatus.DONE, TaskStatus.DONE]
    ready = (await svc.list_tasks("web", {"ready": True})).items
    assert sorted(t.key for t in ready) == ["T-3", "T-4"]
