"""Dispatcher contract: claims, fenced leases, promotion, retries, dead-letter — on every backend."""

from __future__ import annotations

import asyncio
import time

import pytest

from queue_service import exceptions
from queue_service.backend import Backend
from queue_service.models import Task, TaskStatus
from queue_service.service import QueueService

S = TaskStatus


@pytest.fixture
async def web(svc: QueueService) -> str:
    await svc.create_project({"slug": "web", "key_prefix": "WEB"})
    return "web"


async def test_claim_returns_task_and_lease(svc: QueueService, web: str) -> None:
    t = await svc.create_task(web, {"title": "a"})
    claim = await svc.claim(web, "agent-1")
    assert claim is not None
    assert claim.task.key == t.key
    assert claim.task.status is S.IN_PROGRESS
    assert claim.task.assignee == "agent-1"
    assert claim.task.lease_holder == "agent-1"
    assert claim.task.version == t.version + 1
    assert claim.lease.token
    assert claim.lease.expires_at == claim.task.lease_expires_at
    assert await svc.claim(web, "agent-2") is None


async def test_claim_respects_priority_then_age(svc: QueueService, web: str) -> None:
    await svc.create_tasks(
        web,
        [
            {"title": "low", "priority": "P3"},
            {"title": "p1", "priority": "P1"},
            {"title": "p1b", "priority": "P1"},
            {"title": "top", "priority": "P0"},
        ],
    )
    order = []
    for _ in range(4):
        c = await svc.claim(web, "a")
        assert c is not None
        order.append(c.task.title)
    assert order == ["top", "p1", "p1b", "low"]


async def test_roles_are_isolated(svc: QueueService, web: str) -> None:
    await svc.create_tasks(web, [{"title": "qa job", "role": "qa"}, {"title": "dev job", "role": "dev"}])
    c = await svc.claim(web, "dev-agent", roles=["dev"])
    assert c is not None
    assert c.task.title == "dev job"
    assert await svc.claim(web, "dev-agent", roles=["dev"]) is None
    assert await svc.claim(web, "ops-agent", roles=["ops"]) is None
    c2 = await svc.claim(web, "any-agent")
    assert c2 is not None
    assert c2.task.title == "qa job"


async def test_dependencies_gate_claims_and_completion_promotes(svc: QueueService, web: str) -> None:
    a, b, c = await svc.create_tasks(
        web, [{"title": "a"}, {"title": "b", "depends_on": ["#0"]}, {"title": "c", "depends_on": ["#0", "#1"]}]
    )
    ca = await svc.claim(web, "x")
    assert ca is not None
    assert ca.task.key == a.key
    assert await svc.claim(web, "x") is None
    done = await svc.complete(web, a.key, ca.lease.token, {"answer": 42})
    assert done.status is S.DONE
    assert done.result == {"answer": 42}
    assert done.completed_at is not None
    assert done.lease_holder is None
    cb = await svc.claim(web, "x")
    assert cb is not None
    assert cb.task.key == b.key
    await svc.complete(web, b.key, cb.lease.token)
    cc = await svc.claim(web, "x")
    assert cc is not None
    assert cc.task.key == c.key


async def test_waiting_claim_wakes_when_task_becomes_ready(svc: QueueService, web: str) -> None:
    a, b = await svc.create_tasks(web, [{"title": "a"}, {"title": "b", "depends_on": ["#0"]}])
    ca = await svc.claim(web, "x")
    assert ca is not None
    waiter = asyncio.create_task(svc.claim(web, "y", wait=10))
    await asyncio.sleep(0.2)
    assert not waiter.done()
    started = time.monotonic()
    await svc.complete(web, a.key, ca.lease.token)
    got = await asyncio.wait_for(waiter, 10)
    assert got is not None
    assert got.task.key == b.key
    assert time.monotonic() - started < 9  # woken, not timed out


async def test_waiting_claim_times_out_with_none(svc: QueueService, web: str) -> None:
    assert await svc.claim(web, "x", wait=0.2) is None


async def test_many_claimers_one_task_exactly_one_wins(svc: QueueService, web: str) -> None:
    await svc.create_task(web, {"title": "only"})
    results = await asyncio.gather(*(svc.claim(web, f"a{i}") for i in range(50)))
    assert sum(1 for r in results if r is not None) == 1


async def test_many_claimers_many_tasks_each_claimed_once(svc: QueueService, web: str) -> None:
    await svc.create_tasks(web, [{"title": f"t{i}"} for i in range(40)])
    claimed: list[str] = []

    async def agent(i: int) -> None:
        while (c := await svc.claim(web, f"a{i}")) is not None:
            claimed.append(c.task.key)
            await svc.complete(web, c.task.key, c.lease.token)

    await asyncio.gather(*(agent(i) for i in range(8)))
    assert sorted(claimed) == sorted(f"WEB-{i}" for i in range(1, 41))
    stats = await svc.stats(web)
    assert stats.by_status["done"] == 40


async def test_wrong_token_is_refused_and_changes_nothing(svc: QueueService, web: str) -> None:
    await svc.create_task(web, {"title": "a"})
    c = await svc.claim(web, "x")
    assert c is not None
    before = await svc.get_task(web, c.task.key)
    for op in (
        svc.complete(web, c.task.key, "wrong-token"),
        svc.fail(web, c.task.key, "wrong-token", "err"),
        svc.release(web, c.task.key, "wrong-token"),
        svc.heartbeat(web, c.task.key, "wrong-token"),
        svc.add_note(web, c.task.key, "x", "hi", token="wrong-token"),
    ):
        with pytest.raises(exceptions.LeaseError):
            await op
    assert await svc.get_task(web, c.task.key) == before


async def test_non_ascii_token_is_refused_not_crashing(svc: QueueService, web: str) -> None:
    # Regression: secrets.compare_digest raises TypeError on non-ASCII str, which became an HTTP 500.
    await svc.create_task(web, {"title": "a"})
    c = await svc.claim(web, "x")
    assert c is not None
    before = await svc.get_task(web, c.task.key)
    for bad in ("é", "☃💥"):
        for op in (
            svc.complete(web, c.task.key, bad),
            svc.fail(web, c.task.key, bad, "err"),
            svc.release(web, c.task.key, bad),
            svc.heartbeat(web, c.task.key, bad),
            svc.add_note(web, c.task.key, "x", "hi", token=bad),
        ):
            with pytest.raises(exceptions.LeaseError):
                await op
    assert await svc.get_task(web, c.task.key) == before


async def test_heartbeat_extends_lease(svc: QueueService, web: str) -> None:
    await svc.create_task(web, {"title": "a"})
    c = await svc.claim(web, "x", lease_seconds=1)
    assert c is not None
    lease = await svc.heartbeat(web, c.task.key, c.lease.token, lease_seconds=30)
    assert lease.expires_at > c.lease.expires_at
    assert (await svc.get_task(web, c.task.key)).lease_expires_at == lease.expires_at
    note = await svc.add_note(web, c.task.key, "x", "progress", token=c.lease.token)
    assert note.text == "progress"


async def test_expired_lease_is_refused_then_swept_and_reclaimed(backend: Backend, svc: QueueService, web: str) -> None:
    await svc.create_task(web, {"title": "a"})
    c = await svc.claim(web, "zombie", lease_seconds=0.3)
    assert c is not None
    await asyncio.sleep(0.45)
    with pytest.raises(exceptions.LeaseError):
        await svc.complete(web, c.task.key, c.lease.token)
    report = await backend.dispatch.sweep()
    assert any(x.endswith(c.task.key) for x in report.expired_leases)
    t = await svc.get_task(web, c.task.key)
    assert t.status is S.NOT_STARTED
    assert t.attempts == 1
    c2 = await svc.claim(web, "fresh", wait=2)
    assert c2 is not None
    assert c2.task.key == c.task.key
    assert c2.lease.token != c.lease.token
    done = await svc.complete(web, c.task.key, c2.lease.token)
    assert done.status is S.DONE
    with pytest.raises(exceptions.LeaseError):
        await svc.complete(web, c.task.key, c.lease.token)  # the zombie can never overwrite


async def test_retryable_failure_backs_off_then_dead_letters(backend: Backend, svc: QueueService, web: str) -> None:
    cfg = backend.config
    t = await svc.create_task(web, {"title": "flaky", "max_attempts": 3})
    times = []
    for attempt in range(1, 4):
        c = await svc.claim(web, "x", wait=5)
        assert c is not None, f"attempt {attempt} never became claimable"
        times.append(time.monotonic())
        failed = await svc.fail(web, t.key, c.lease.token, f"boom {attempt}", retryable=True)
        assert failed.attempts == attempt
        assert failed.last_error == f"boom {attempt}"
        if attempt < 3:
            assert failed.status is S.NOT_STARTED
            assert failed.not_before is not None
            expected = min(cfg.backoff_max_seconds, cfg.backoff_base_seconds * 2 ** (attempt - 1))
            assert (
                abs((failed.not_before - failed.updated_at).total_seconds() - expected)
                < 0.01 + expected * cfg.backoff_jitter
            )
        else:
            assert failed.status is S.FAILED
    for i in range(1, 3):
        # the retry was not handed out before its backoff passed
        assert times[i] - times[i - 1] >= cfg.backoff_base_seconds * 2 ** (i - 1) * (1 - cfg.backoff_jitter) - 0.01
    assert [x.key for x in await svc.dead_letter(web)] == [t.key]
    assert await svc.claim(web, "x", wait=0.3) is None
    revived = await svc.retry(web, t.key)
    assert revived.status is S.NOT_STARTED
    assert revived.attempts == 0
    assert revived.not_before is None
    c = await svc.claim(web, "x", wait=2)
    assert c is not None
    assert c.task.key == t.key


async def test_permanent_failure_dead_letters_at_once_and_blocks_dependents(svc: QueueService, web: str) -> None:
    a, b = await svc.create_tasks(web, [{"title": "a"}, {"title": "b", "depends_on": ["#0"]}])
    c = await svc.claim(web, "x")
    assert c is not None
    failed = await svc.fail(web, a.key, c.lease.token, "bad input", retryable=False)
    assert failed.status is S.FAILED
    assert failed.attempts == 1
    dep = await svc.get_task(web, b.key)
    assert dep.status is S.BLOCKED
    assert a.key in (dep.blocked_reason or "")
    await svc.retry(web, a.key)
    assert (await svc.get_task(web, b.key)).status is S.NOT_STARTED
    c2 = await svc.claim(web, "x", wait=1)
    assert c2 is not None
    assert c2.task.key == a.key
    await svc.complete(web, a.key, c2.lease.token)
    c3 = await svc.claim(web, "x", wait=1)
    assert c3 is not None
    assert c3.task.key == b.key


async def test_release_requeues_without_counting_an_attempt(svc: QueueService, web: str) -> None:
    t = await svc.create_task(web, {"title": "a"})
    c = await svc.claim(web, "x")
    assert c is not None
    released = await svc.release(web, t.key, c.lease.token)
    assert released.status is S.NOT_STARTED
    assert released.attempts == 0
    assert released.lease_holder is None
    c2 = await svc.claim(web, "y", wait=1)
    assert c2 is not None
    assert c2.task.key == t.key


async def test_retry_refuses_live_tasks(svc: QueueService, web: str) -> None:
    t = await svc.create_task(web, {"title": "a"})
    with pytest.raises(exceptions.InvalidTransition):
        await svc.retry(web, t.key)


async def test_hand_edit_to_done_promotes_dependents(svc: QueueService, web: str) -> None:
    a, b = await svc.create_tasks(web, [{"title": "a"}, {"title": "b", "depends_on": ["#0"]}])
    c = await svc.claim(web, "x")
    assert c is not None
    assert c.task.key == a.key
    await svc.update_task(web, a.key, {"status": "done"}, actor="human")
    with pytest.raises(exceptions.LeaseError):
        await svc.complete(web, a.key, c.lease.token)  # the patch ended the lease
    c2 = await svc.claim(web, "x", wait=1)
    assert c2 is not None
    assert c2.task.key == b.key


async def test_not_before_delays_dispatch(svc: QueueService, web: str) -> None:
    from datetime import timedelta

    from queue_service.models import utcnow

    t = await svc.create_task(web, {"title": "later", "not_before": (utcnow() + timedelta(seconds=0.4)).isoformat()})
    assert await svc.claim(web, "x") is None
    assert [x.key for x in (await svc.list_tasks(web, {"ready": True})).items] == []
    c = await svc.claim(web, "x", wait=3)
    assert c is not None
    assert c.task.key == t.key


async def test_events_for_every_transition(svc: QueueService, web: str) -> None:
    t = await svc.create_task(web, {"title": "a"})
    c = await svc.claim(web, "x")
    assert c is not None
    await svc.complete(web, t.key, c.lease.token)
    evs = [e for e in await svc.list_events(web) if e.task == t.key]
    assert [(e.kind, e.status, e.version) for e in evs] == [
        ("created", S.NOT_STARTED, 1),
        ("claimed", S.IN_PROGRESS, 2),
        ("completed", S.DONE, 3),
    ]


async def test_live_subscription_sees_changes(svc: QueueService, web: str) -> None:
    received: list[tuple[str | None, str]] = []
    ready = asyncio.Event()

    async def listen() -> None:
        agen = svc.subscribe(web)
        ready.set()
        async for ev in agen:
            received.append((ev.task, ev.kind))
            if ev.kind == "completed":
                break

    listener = asyncio.create_task(listen())
    await ready.wait()
    await asyncio.sleep(0.3)  # subscriptions over the network need a moment to attach
    t = await svc.create_task(web, {"title": "a"})
    c = await svc.claim(web, "x")
    assert c is not None
    await svc.complete(web, t.key, c.lease.token)
    await asyncio.wait_for(listener, 10)
    assert received == [(t.key, "created"), (t.key, "claimed"), (t.key, "completed")]


async def test_dag_chain_runs_in_order(svc: QueueService, web: str) -> None:
    n = 30
    await svc.create_tasks(web, [{"title": f"c{i}", "depends_on": [f"#{i - 1}"] if i else []} for i in range(n)])
    order = []
    while (c := await svc.claim(web, "x", wait=1)) is not None:
        order.append(c.task.key)
        await svc.complete(web, c.task.key, c.lease.token)
    assert order == [f"WEB-{i}" for i in range(1, n + 1)]


# -- batched dispatch ---------------------------------------------------------------------------
async def test_claim_many_returns_distinct_tasks_best_first_up_to_limit(svc: QueueService, web: str) -> None:
    await svc.create_tasks(
        web,
        [
            {"title": "low", "priority": "P3"},
            {"title": "p1", "priority": "P1"},
            {"title": "p2", "priority": "P2"},
            {"title": "p1b", "priority": "P1"},
            {"title": "top", "priority": "P0"},
        ],
    )
    first = await svc.claim_many(web, "a", limit=3)
    assert [c.task.title for c in first] == ["top", "p1", "p1b"]
    assert len({c.lease.token for c in first}) == 3  # one fresh token per task
    for c in first:
        assert c.task.status is S.IN_PROGRESS
        assert c.task.lease_holder == "a"
        assert c.lease.expires_at == c.task.lease_expires_at
        stored = await svc.get_task(web, c.task.key)
        assert stored.status is S.IN_PROGRESS
        assert stored.version == c.task.version
    rest = await svc.claim_many(web, "b", limit=10)
    assert [c.task.title for c in rest] == ["p2", "low"]
    assert await svc.claim_many(web, "c", limit=10) == []
    # every claimed token is live and fences its own task only
    done = await svc.complete(web, first[0].task.key, first[0].lease.token)
    assert done.status is S.DONE
    with pytest.raises(exceptions.LeaseError):
        await svc.complete(web, first[1].task.key, first[2].lease.token)


async def test_claim_many_respects_roles_and_dependencies(svc: QueueService, web: str) -> None:
    await svc.create_tasks(
        web,
        [
            {"title": "dev1", "role": "dev"},
            {"title": "qa1", "role": "qa"},
            {"title": "dev2", "role": "dev", "depends_on": ["#0"]},
            {"title": "dev3", "role": "dev"},
        ],
    )
    got = await svc.claim_many(web, "d", roles=["dev"], limit=10)
    assert sorted(c.task.title for c in got) == ["dev1", "dev3"]
    assert await svc.claim_many(web, "d", roles=["dev"], limit=10) == []
    assert await svc.claim_many(web, "o", roles=["ops"], limit=10) == []
    qa = await svc.claim_many(web, "q", limit=10)
    assert [c.task.title for c in qa] == ["qa1"]


async def test_concurrent_claim_many_each_task_claimed_exactly_once(svc: QueueService, web: str) -> None:
    await svc.create_tasks(web, [{"title": f"t{i}"} for i in range(200)])
    claimed: list[str] = []

    async def agent(i: int) -> None:
        while got := await svc.claim_many(web, f"a{i}", limit=10):
            assert len(got) <= 10
            claimed.extend(c.task.key for c in got)
            results = await svc.complete_many(web, [(c.task.key, c.lease.token, {"by": i}) for c in got])
            assert all(not isinstance(r, exceptions.LeaseError) for r in results)

    await asyncio.gather(*(agent(i) for i in range(8)))
    assert sorted(claimed) == sorted(f"WEB-{i}" for i in range(1, 201))
    stats = await svc.stats(web)
    assert stats.by_status["done"] == 200


async def test_complete_many_checks_each_item_and_promotes(svc: QueueService, web: str) -> None:
    a, b, c, d, e = await svc.create_tasks(
        web,
        [
            {"title": "a"},
            {"title": "b"},
            {"title": "c"},
            {"title": "needs a and b", "depends_on": ["#0", "#1"]},
            {"title": "needs c", "depends_on": ["#2"]},
        ],
    )
    claims = {x.task.key: x for x in await svc.claim_many(web, "x", limit=10)}
    assert set(claims) == {a.key, b.key, c.key}
    before_c = await svc.get_task(web, c.key)
    results = await svc.complete_many(
        web,
        [
            (a.key, claims[a.key].lease.token, {"n": 1}),
            (c.key, "wrong-token", None),
            (b.key, claims[b.key].lease.token, None),
            (a.key, claims[a.key].lease.token, {"n": 2}),  # repeat: already completed above
            ("WEB-999", "whatever", None),
        ],
    )
    assert len(results) == 5
    ra, rc, rb, ra2, rmissing = results
    assert isinstance(ra, Task) and ra.status is S.DONE and ra.result == {"n": 1}
    assert isinstance(rb, Task) and rb.status is S.DONE and rb.lease_holder is None
    assert isinstance(rc, exceptions.LeaseError)
    assert isinstance(ra2, exceptions.LeaseError)
    assert isinstance(rmissing, exceptions.LeaseError)
    assert await svc.get_task(web, c.key) == before_c  # the refused item changed nothing
    assert (await svc.get_task(web, a.key)).result == {"n": 1}
    # d's two dependencies completed in the same batch: it is ready now; e still waits for c
    nxt = await svc.claim_many(web, "y", limit=10)
    assert [x.task.key for x in nxt] == [d.key]
    again = await svc.complete_many(web, [(c.key, claims[c.key].lease.token, None)])
    assert isinstance(again[0], Task)
    last = await svc.claim_many(web, "y", limit=10)
    assert [x.task.key for x in last] == [e.key]
    events = await svc.list_events(web)
    assert sum(1 for ev in events if ev.kind == "completed") == 3


async def test_complete_many_refuses_expired_lease(svc: QueueService, web: str) -> None:
    await svc.create_tasks(web, [{"title": "a"}, {"title": "b"}])
    short = await svc.claim_many(web, "z", limit=1, lease_seconds=0.2)
    long = await svc.claim_many(web, "z", limit=1)
    await asyncio.sleep(0.35)
    res = await svc.complete_many(
        web, [(short[0].task.key, short[0].lease.token, None), (long[0].task.key, long[0].lease.token, None)]
    )
    assert isinstance(res[0], exceptions.LeaseError)
    assert isinstance(res[1], Task)
    assert (await svc.get_task(web, short[0].task.key)).status is S.IN_PROGRESS


async def test_claim_many_wait_returns_on_first_ready_task(svc: QueueService, web: str) -> None:
    assert await svc.claim_many(web, "x", limit=5, wait=0.2) == []
    a, b = await svc.create_tasks(web, [{"title": "a"}, {"title": "b", "depends_on": ["#0"]}])
    ca = await svc.claim_many(web, "x", limit=5, wait=1)
    assert [c.task.key for c in ca] == [a.key]
    waiter = asyncio.create_task(svc.claim_many(web, "y", limit=5, wait=10))
    await asyncio.sleep(0.2)
    assert not waiter.done()
    started = time.monotonic()
    await svc.complete_many(web, [(a.key, ca[0].lease.token, None)])
    got = await asyncio.wait_for(waiter, 10)
    assert [c.task.key for c in got] == [b.key]
    assert time.monotonic() - started < 9  # woken, not timed out


async def test_claim_many_validates_limit(svc: QueueService, web: str) -> None:
    for bad in (0, 1001, -1):
        with pytest.raises(exceptions.ValidationError):
            await svc.claim_many(web, "x", limit=bad)
    with pytest.raises(exceptions.ProjectNotFound):
        await svc.claim_many("nope", "x", limit=2)
    with pytest.raises(exceptions.ProjectNotFound):
        await svc.complete_many("nope", [("NOPE-1", "t", None)])


async def test_complete_many_with_a_task_and_its_reopened_dependency(svc: QueueService, web: str) -> None:
    # B was claimed while A was done; A was then reopened by hand and claimed again. Completing both
    # in one batch must complete both (and leave B's readiness bookkeeping right).
    a, b = await svc.create_tasks(web, [{"title": "a"}, {"title": "b", "depends_on": ["#0"]}])
    ca = (await svc.claim_many(web, "x", limit=5))[0]
    await svc.complete(web, a.key, ca.lease.token)
    cb = (await svc.claim_many(web, "x", limit=5))[0]
    assert cb.task.key == b.key
    await svc.update_task(web, a.key, {"status": "not-started"})
    ca2 = await svc.claim_many(web, "x", limit=5)
    assert [c.task.key for c in ca2] == [a.key]
    res = await svc.complete_many(web, [(a.key, ca2[0].lease.token, 1), (b.key, cb.lease.token, 2)])
    assert [r.status for r in res if isinstance(r, Task)] == [S.DONE, S.DONE]
    assert (await svc.get_task(web, a.key)).result == 1
    assert (await svc.get_task(web, b.key)).result == 2
    # reopening B now makes it ready at once (its dependency is done)
    await svc.update_task(web, b.key, {"status": "not-started"})
    again = await svc.claim_many(web, "x", limit=5)
    assert [c.task.key for c in again] == [b.key]


async def test_result_must_be_plain_json(svc: QueueService, web: str) -> None:
    await svc.create_task(web, {"title": "a"})
    c = await svc.claim(web, "x")
    assert c is not None
    for bad in (float("nan"), {"x": float("inf")}, {"obj": object()}):
        with pytest.raises(exceptions.ValidationError):
            await svc.complete(web, c.task.key, c.lease.token, bad)
        with pytest.raises(exceptions.ValidationError):
            await svc.complete_many(web, [(c.task.key, c.lease.token, bad)])
    assert (await svc.get_task(web, c.task.key)).status is S.IN_PROGRESS
