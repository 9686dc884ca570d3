"""Issue 10, findings 1-4: forced interleavings of edge writers, completions and the sweep on Postgres.

Each test parks one transaction at a chosen point (:class:`tests.integration.pg_gate.Gate`), runs
the racing operation on another connection until it finished or waits on a lock, then resumes the
first. All of them failed on the code before issue 10 (stranded or early dependents, a replica's
clock deciding leases, a deadlock between the sweep and a completion).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import asyncpg
import pytest

from queue_service import exceptions
from queue_service.models import Task, TaskStatus, utcnow
from queue_service.postgres.backend import PostgresValkeyBackend
from queue_service.service import QueueService
from tests.integration.pg_gate import Gate
from tests.integration.pgvk import fast, open_backend

pytestmark = pytest.mark.postgres

S = TaskStatus
CONFIG = fast(lease_seconds=30.0)


@pytest.fixture
async def backend(pg_url: str, valkey_url: str, valkey_prefix: str) -> AsyncIterator[PostgresValkeyBackend]:
    async with open_backend(pg_url, valkey_url, valkey_prefix, CONFIG) as b:
        yield b


@pytest.fixture
async def svc(backend: PostgresValkeyBackend) -> QueueService:
    s = QueueService(backend)
    await s.create_project({"slug": "web", "key_prefix": "WEB"})
    return s


@pytest.fixture
async def gate(pg_url: str, backend: PostgresValkeyBackend) -> AsyncIterator[Gate]:
    async with Gate(pg_url) as g:
        yield g


async def pending_deps(gate: Gate, key: str) -> int:
    return int(await gate.fetchval("SELECT pending_deps FROM tasks WHERE project = 'web' AND key = $1", key))


async def claim_key(svc: QueueService, key: str, role: str = "default", lease: float | None = None) -> str:
    c = await svc.claim("web", "agent", roles=[role], lease_seconds=lease)
    assert c is not None and c.task.key == key
    return c.lease.token


# -- finding 1: a dependent created while its dependency completes -------------------------------


@pytest.mark.parametrize("batch", [False, True], ids=["complete", "complete_many"])
async def test_dependent_created_while_dependency_completes_is_not_stranded(
    svc: QueueService, gate: Gate, batch: bool
) -> None:
    t = await svc.create_task("web", {"title": "dependency"})
    token = await claim_key(svc, t.key)
    await gate.arm("created", "WEB-2")  # park the create after it counted T as not done
    create = asyncio.create_task(svc.create_task("web", {"title": "dependent", "depends_on": [t.key]}))
    await gate.parked(create)
    if batch:
        finish = asyncio.create_task(svc.complete_many("web", [(t.key, token, None)]))
    else:
        finish = asyncio.create_task(svc.complete("web", t.key, token))
    await gate.settled(finish)
    await gate.release()
    d = await create
    await finish
    assert (await svc.get_task("web", t.key)).status is S.DONE
    assert await pending_deps(gate, d.key) == 0, "dependent stranded: its only dependency is done"
    c = await svc.claim("web", "agent", wait=5.0)
    assert c is not None and c.task.key == d.key


# -- finding 2: PATCH of dependencies while a dependency completes --------------------------------


async def test_patch_removing_a_dependency_while_it_completes_does_not_release_early(
    svc: QueueService, gate: Gate
) -> None:
    t = await svc.create_task("web", {"title": "T"})
    u = await svc.create_task("web", {"title": "U", "role": "other"})
    d = await svc.create_task("web", {"title": "D", "depends_on": [t.key, u.key]})
    token = await claim_key(svc, t.key)
    await gate.arm("updated", d.key)  # park the PATCH after it recomputed D's count (T not yet done)
    patch = asyncio.create_task(svc.update_task("web", d.key, {"depends_on": [u.key]}))
    await gate.parked(patch)
    finish = asyncio.create_task(svc.complete("web", t.key, token))
    await gate.settled(finish)
    await gate.release()
    await patch
    await finish
    assert await pending_deps(gate, d.key) == 1, "D still waits for U"
    assert await svc.claim("web", "agent", roles=["default"]) is None, "D handed out before U is done"
    # U completes normally afterwards and releases D
    u_token = await claim_key(svc, u.key, role="other")
    assert (await svc.complete("web", u.key, u_token)).status is S.DONE
    c = await svc.claim("web", "agent", roles=["default"], wait=5.0)
    assert c is not None and c.task.key == d.key


async def test_patch_adding_a_running_dependency_while_it_completes_is_not_stranded(
    svc: QueueService, gate: Gate
) -> None:
    t = await svc.create_task("web", {"title": "T"})
    d = await svc.create_task("web", {"title": "D", "role": "later"})
    token = await claim_key(svc, t.key)
    await gate.arm("updated", d.key)
    patch = asyncio.create_task(svc.update_task("web", d.key, {"depends_on": [t.key]}))
    await gate.parked(patch)
    finish = asyncio.create_task(svc.complete("web", t.key, token))
    await gate.settled(finish)
    await gate.release()
    await patch
    await finish
    assert await pending_deps(gate, d.key) == 0, "dependent stranded: its only dependency is done"
    c = await svc.claim("web", "agent", roles=["later"], wait=5.0)
    assert c is not None and c.task.key == d.key


# -- finding 4: the sweep and a completion lock shared dependents in one order --------------------


async def test_sweep_and_completion_sharing_dependents_do_not_deadlock(
    svc: QueueService, backend: PostgresValkeyBackend, gate: Gate
) -> None:
    t1 = await svc.create_task("web", {"title": "T1", "role": "a", "max_attempts": 1})
    t2 = await svc.create_task("web", {"title": "T2", "role": "b", "max_attempts": 1})
    x = await svc.create_task("web", {"title": "X", "role": "c"})
    d1 = await svc.create_task("web", {"title": "D1", "depends_on": [t2.key, x.key]})
    d2 = await svc.create_task("web", {"title": "D2", "depends_on": [t1.key, x.key]})
    await claim_key(svc, t1.key, role="a")
    await claim_key(svc, t2.key, role="b")
    x_token = await claim_key(svc, x.key, role="c")
    # Both leases run out (T1's first: the old sweep took leases in expiry order), by the database's clock.
    for key, ago in ((t1.key, 2), (t2.key, 1)):
        await gate.probe.execute(
            "UPDATE tasks SET lease_expires_at = clock_timestamp() - make_interval(secs => $2) "
            "WHERE project = 'web' AND key = $1",
            key,
            float(ago),
        )
    # The sweep blocks D2 (dependent of T1) and is parked holding D2's lock; the completion of X then
    # locks its dependents D1 (free) and D2 (held). The old sweep went on to lock D1: deadlock.
    await gate.arm("blocked", d2.key)
    sweep = asyncio.create_task(backend.dispatch.sweep())
    await gate.parked(sweep)
    finish = asyncio.create_task(svc.complete("web", x.key, x_token))
    await gate.settled(finish)
    await gate.release()
    report = await sweep
    done = await finish
    assert done.status is S.DONE
    assert sorted(report.dead_lettered) == sorted([f"web/{t1.key}", f"web/{t2.key}"])
    for key in (d1.key, d2.key):
        assert (await svc.get_task("web", key)).status is S.BLOCKED


# -- claim_many / complete_many: rows locked in one order whatever the order of the items ---------


@asynccontextmanager
async def row_held(gate: Gate, key: str) -> AsyncIterator[None]:
    """Hold task *key*'s row lock (FOR UPDATE) on a connection of its own until the block exits."""
    conn = await asyncpg.connect(gate.dsn)
    try:
        async with conn.transaction():
            await conn.execute("SELECT id FROM tasks WHERE project = 'web' AND key = $1 FOR UPDATE", key)
            yield
    finally:
        await conn.close()


async def test_complete_many_batches_sharing_dependents_lock_them_in_id_order(svc: QueueService, gate: Gate) -> None:
    # D_low (older) and D_high each depend on one task of either batch; each batch lists first the
    # task whose dependent is D_high, the other second. Locking dependents in item (or plan) order
    # would have the batches take D_low and D_high in opposite orders: a deadlock.
    x1, x2, y1, y2 = [await svc.create_task("web", {"title": n, "role": n}) for n in ("x1", "x2", "y1", "y2")]
    d_low = await svc.create_task("web", {"title": "D_low", "depends_on": [x2.key, y1.key]})
    d_high = await svc.create_task("web", {"title": "D_high", "depends_on": [x1.key, y2.key]})
    tokens = {t.key: await claim_key(svc, t.key, role=t.role) for t in (x1, x2, y1, y2)}
    async with row_held(gate, d_high.key):
        batch_x = asyncio.create_task(
            svc.complete_many("web", [(x1.key, tokens[x1.key], None), (x2.key, tokens[x2.key], None)])
        )
        await gate.settled(batch_x)  # waits for D_high ...
        low_free = await row_is_free(gate, d_low.key)  # ... holding D_low already (id order)
        batch_y = asyncio.create_task(
            svc.complete_many("web", [(y2.key, tokens[y2.key], None), (y1.key, tokens[y1.key], None)])
        )
        await gate.settled(batch_y, blocked=2)
    done = [*await batch_x, *await batch_y]
    assert not low_free, "the batch waits for D_high without holding D_low: dependents not locked in id order"
    assert all(isinstance(t, Task) and t.status is S.DONE for t in done), done
    for d in (d_low, d_high):
        assert await pending_deps(gate, d.key) == 0
    claimed = {c.task.key for c in await svc.claim_many("web", "agent", limit=5, wait=5.0)}
    assert claimed == {d_low.key, d_high.key}


async def test_complete_many_retried_in_the_other_order_does_not_deadlock(svc: QueueService, gate: Gate) -> None:
    # A client retries a batch (same tokens) while the first send still runs, items reversed. Rows
    # locked in item order: the retry holds B and waits for A while the first holds A and waits
    # for B. One order (by key) for every batch: the retry waits for A holding nothing.
    a = await svc.create_task("web", {"title": "A"})
    b = await svc.create_task("web", {"title": "B"})
    claims = {c.task.key: c.lease.token for c in await svc.claim_many("web", "agent", limit=2)}
    async with row_held(gate, a.key):
        first = asyncio.create_task(svc.complete_many("web", [(a.key, claims[a.key], 1), (b.key, claims[b.key], 2)]))
        await gate.settled(first)
        retry = asyncio.create_task(svc.complete_many("web", [(b.key, claims[b.key], 2), (a.key, claims[a.key], 1)]))
        await gate.settled(retry, blocked=2)
        b_free = await row_is_free(gate, b.key)
    done = await first
    again = await retry
    assert b_free, "the retry holds B while it waits for A: the first batch's next lock (B) closes a cycle"
    assert [t.status for t in done if isinstance(t, Task)] == [S.DONE, S.DONE]
    assert all(isinstance(r, exceptions.LeaseError) for r in again), again


# -- soak: an edge writer holding a dependency's lock while it waits (deadlock, 500 on the other side) --


async def row_is_free(gate: Gate, key: str) -> bool:
    """Whether no transaction holds any lock on the task *key* (probed NOWAIT, then rolled back)."""
    try:
        async with gate.probe.transaction():
            await gate.probe.execute("SELECT id FROM tasks WHERE project = 'web' AND key = $1 FOR UPDATE NOWAIT", key)
    except asyncpg.LockNotAvailableError:
        return False
    return True


async def test_cancel_while_a_patch_names_its_dependent_as_a_dependency_does_not_deadlock(
    svc: QueueService, gate: Gate
) -> None:
    # Soak seed 20261141: cancel(K) holds K and then locks K's dependents (R); PATCH(K, depends_on=[R])
    # held R FOR SHARE and waited for K. Once the cancel asked for R: deadlock, the cancel a 500.
    k = await svc.create_task("web", {"title": "K"})
    r = await svc.create_task("web", {"title": "R", "depends_on": [k.key]})
    await gate.arm("cancelled", k.key)  # the cancel holds K, parked before it locks K's dependents
    cancel = asyncio.create_task(svc.cancel_task("web", k.key))
    await gate.parked(cancel)
    patch = asyncio.create_task(svc.update_task("web", k.key, {"depends_on": [r.key]}))
    await gate.settled(patch)
    r_free = await row_is_free(gate, r.key)
    await gate.release()
    cancelled = await cancel
    with pytest.raises(exceptions.DependencyCycle):
        await patch
    assert r_free, "the PATCH holds R while it waits for K: the cancel's next lock (R) closes a cycle"
    assert cancelled.status is S.CANCELLED
    assert (await svc.get_task("web", r.key)).status is S.BLOCKED


async def test_create_naming_a_dependency_and_its_dependent_while_it_completes_does_not_deadlock(
    svc: QueueService, gate: Gate
) -> None:
    # The create locked its dependencies FOR SHARE in id order: Ri (older) before Rj. Ri depends on
    # Rj, so complete(Rj) holds Rj and then locks Ri: id order is not dependency order, a deadlock.
    ri = await svc.create_task("web", {"title": "Ri", "role": "later"})
    rj = await svc.create_task("web", {"title": "Rj"})
    await svc.update_task("web", ri.key, {"depends_on": [rj.key]})
    token = await claim_key(svc, rj.key)
    await gate.arm("completed", rj.key)  # the completion holds Rj, parked before it locks Ri
    finish = asyncio.create_task(svc.complete("web", rj.key, token))
    await gate.parked(finish)
    create = asyncio.create_task(svc.create_task("web", {"title": "N", "depends_on": [ri.key, rj.key]}))
    await gate.settled(create)
    ri_free = await row_is_free(gate, ri.key)
    await gate.release()
    done = await finish
    n = await create
    assert ri_free, "the create holds Ri while it waits for Rj: the completion's next lock (Ri) closes a cycle"
    assert done.status is S.DONE
    assert await pending_deps(gate, ri.key) == 0
    assert await pending_deps(gate, n.key) == 1, "N still waits for Ri"


# -- finding 3: leases are judged by the database's clock -----------------------------------------


async def test_a_fast_replica_clock_does_not_steal_or_refuse_a_live_lease(
    svc: QueueService, pg_url: str, valkey_url: str, valkey_prefix: str, gate: Gate
) -> None:
    lease = 5.0
    async with open_backend(pg_url, valkey_url, valkey_prefix, CONFIG) as fast_replica:
        skew = timedelta(seconds=3 * lease)

        def ahead() -> object:
            return utcnow() + skew

        fast_replica.dispatch._now = ahead  # type: ignore[method-assign,assignment]
        fast_replica.records.clock = ahead  # type: ignore[assignment]
        fast_svc = QueueService(fast_replica)
        t = await svc.create_task("web", {"title": "T"})
        u = await svc.create_task("web", {"title": "U", "role": "other"})
        token = await claim_key(svc, t.key, lease=lease)

        report = await fast_replica.dispatch.sweep()
        assert report.expired_leases == (), "a replica whose clock runs ahead expired a live lease"
        assert await fast_svc.claim("web", "thief", roles=["default"]) is None
        renewed = await fast_svc.heartbeat("web", t.key, token, lease_seconds=lease)
        # the lease the fast replica hands out is counted from the database's now, not its own
        left = await gate.fetchval(
            "SELECT extract(epoch FROM lease_expires_at - clock_timestamp()) FROM tasks "
            "WHERE project = 'web' AND key = $1",
            t.key,
        )
        assert 0 < float(left) <= lease
        assert renewed.expires_at - utcnow() <= timedelta(seconds=lease + 1)

        u_claim = await fast_svc.claim("web", "agent", roles=["other"], lease_seconds=lease)
        assert u_claim is not None
        assert u_claim.lease.expires_at - utcnow() <= timedelta(seconds=lease + 1)
        assert (await svc.complete("web", u.key, u_claim.lease.token)).status is S.DONE
        assert (await fast_svc.complete("web", t.key, token)).status is S.DONE


# -- found by the checker's soak: PATCH cycle detection on a dense DAG ----------------------------


async def test_patch_cycle_check_on_a_dense_dag_visits_each_task_once(svc: QueueService) -> None:
    # 30 layers of 2 tasks, each depending on both tasks of the layer below: 2^30 paths from the top
    # to the bottom. The old check enumerated paths and never finished; it must visit tasks, not paths.
    items: list[dict[str, object]] = [{"title": "bottom-a"}, {"title": "bottom-b"}]
    for layer in range(1, 30):
        below = [f"#{2 * (layer - 1)}", f"#{2 * (layer - 1) + 1}"]
        items += [{"title": f"l{layer}a", "depends_on": below}, {"title": f"l{layer}b", "depends_on": below}]
    tasks = await svc.create_tasks("web", items)
    bottom, top = tasks[0], tasks[-1]
    other = await svc.create_task("web", {"title": "unrelated"})
    with pytest.raises(exceptions.DependencyCycle) as info:
        await svc.update_task("web", bottom.key, {"depends_on": [top.key]})
    cycle = info.value.details["cycle"]
    assert cycle[0] == bottom.key and cycle[1] == top.key and cycle[-1] == bottom.key
    assert len(cycle) == 31  # bottom -> top (layer 29) -> one task of each layer 28..1 -> bottom
    assert (await svc.update_task("web", bottom.key, {"depends_on": [other.key]})).depends_on == (other.key,)
