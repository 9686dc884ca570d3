"""Routing on Postgres+Valkey across replicas (issue 13): concurrency keys and capacity hold under
racing claimers, and a forced interleaving shows why (the key's advisory lock orders the counts)."""

from __future__ import annotations

import asyncio
import random

import asyncpg
import pytest

from queue_service.models import Event, TaskStatus
from queue_service.service import QueueService
from tests.integration.pg_gate import dsn_of
from tests.integration.pgvk import fast, open_backend

pytestmark = pytest.mark.postgres
S = TaskStatus


def _max_in_progress(events: list[Event], keys: set[str]) -> int:
    """The most of *keys* in progress at once, replayed from the event log in id order."""
    status: dict[str, S] = {}
    now = peak = 0
    for e in sorted(events, key=lambda e: e.id):
        if e.task not in keys or e.status is None:
            continue
        before, status[e.task] = status.get(e.task), e.status
        if e.status is S.IN_PROGRESS and before is not S.IN_PROGRESS:
            now += 1
        elif before is S.IN_PROGRESS and e.status is not S.IN_PROGRESS:
            now -= 1
        peak = max(peak, now)
    return peak


async def test_concurrency_key_limit_two_replicas_sixteen_claimers(
    pg_url: str, valkey_url: str, valkey_prefix: str
) -> None:
    config = fast(lease_seconds=30.0)
    async with (
        open_backend(pg_url, valkey_url, valkey_prefix, config) as one,
        open_backend(pg_url, valkey_url, valkey_prefix, config) as two,
    ):
        a, b = QueueService(one), QueueService(two)
        await a.create_project({"slug": "ck", "key_prefix": "CK"})
        await a.update_project("ck", {"concurrency_limits": {"api": 2}})
        tasks = await a.create_tasks("ck", [{"title": f"t{i}", "concurrency_key": "api"} for i in range(24)])
        keys = {t.key for t in tasks}
        # the limit is reached (one claim on each replica), and 16 racing claimers get nothing more
        first = [await a.claim("ck", "h1"), await b.claim("ck", "h2")]
        assert all(first)
        racing = await asyncio.gather(*((a, b)[n % 2].claim("ck", f"c{n}") for n in range(16)))
        assert racing == [None] * 16
        for c in first:
            assert c is not None
            await a.complete("ck", c.task.key, c.lease.token)
        done: set[str] = {c.task.key for c in first if c is not None}

        async def claimer(n: int) -> None:
            svc = (a, b)[n % 2]
            rng = random.Random(n)
            while len(done) < len(keys):
                c = await svc.claim("ck", f"c{n}", wait=0.2)
                if c is None:
                    continue
                await asyncio.sleep(rng.random() * 0.05)
                await svc.complete("ck", c.task.key, c.lease.token)
                done.add(c.task.key)

        await asyncio.wait_for(asyncio.gather(*(claimer(n) for n in range(16))), timeout=120)
        events = await a.list_events("ck", limit=10_000)
        assert done == keys
        assert _max_in_progress(events, keys) == 2  # reached by the first two claims, never exceeded


async def test_capacity_holds_for_one_agent_racing_itself_on_two_replicas(
    pg_url: str, valkey_url: str, valkey_prefix: str
) -> None:
    async with (
        open_backend(pg_url, valkey_url, valkey_prefix) as one,
        open_backend(pg_url, valkey_url, valkey_prefix) as two,
    ):
        a, b = QueueService(one), QueueService(two)
        await a.create_project({"slug": "cap", "key_prefix": "CAP"})
        await a.create_tasks("cap", [{"title": f"t{i}"} for i in range(20)])
        await a.register_agent("cap", {"id": "w", "capacity": 3})
        got = await asyncio.gather(*(svc.claim_many("cap", "w", limit=2) for svc in (a, b) * 4))
        assert sum(len(g) for g in got) == 3
        (agent,) = await b.list_agents("cap")
        assert len(agent.holding) == 3 and agent.capacity == 3


async def test_forced_interleaving_a_claim_waits_for_the_key_lock_and_counts_after_it(
    pg_url: str, valkey_url: str, valkey_prefix: str
) -> None:
    """A transaction holding the key's lock marks two tasks of the key in progress; a claim racing it
    must wait for the lock, then count those two and take nothing (limit 2). Without the lock it
    would count the committed state before them and take a third."""
    async with open_backend(pg_url, valkey_url, valkey_prefix) as backend:
        svc = QueueService(backend)
        await svc.create_project({"slug": "lk", "key_prefix": "LK"})
        await svc.update_project("lk", {"concurrency_limits": {"api": 2}})
        t1, t2, t3 = await svc.create_tasks("lk", [{"title": t, "concurrency_key": "api"} for t in "abc"])
        conn = await asyncpg.connect(dsn_of(pg_url))
        try:
            tx = conn.transaction()
            await tx.start()
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 13))", "lk\x1fapi")
            await conn.execute(
                "UPDATE tasks SET status = 'in-progress', lease_holder = 'other', "
                "lease_expires_at = now() + interval '1 hour' WHERE project = 'lk' AND key = ANY($1::text[])",
                [t1.key, t2.key],
            )
            claim = asyncio.create_task(svc.claim("lk", "racer"))
            await asyncio.sleep(0.3)
            assert not claim.done()  # it waits for the key's lock (the other side of the interleaving)
            await tx.commit()
            assert await claim is None
        finally:
            await conn.close()
        assert (await svc.get_task("lk", t3.key)).status is S.NOT_STARTED
