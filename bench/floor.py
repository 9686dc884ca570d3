"""Floor baselines (DESIGN §7): what the services themselves do, with no queue logic on top.

* single-row ``UPDATE`` commits/s (autocommit, ``synchronous_commit`` as configured) from one and
  from four asyncpg connections, each updating its own row;
* ``RPUSH``/s to Valkey over one connection, awaited one by one and pipelined 1,000 at a time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.common import VALKEY_URL, asyncpg_dsn

__all__ = ["pg_update_commits", "rpush_rate"]


async def pg_update_commits(url: str, connections: int, seconds: float) -> float:
    """Commits/s of ``UPDATE t SET n = n + 1 WHERE id = $1`` from *connections* connections."""
    import asyncpg

    dsn = asyncpg_dsn(url)
    setup = await asyncpg.connect(dsn)
    try:
        await setup.execute("CREATE TABLE IF NOT EXISTS bench_floor (id int PRIMARY KEY, n bigint NOT NULL)")
        await setup.execute(
            "INSERT INTO bench_floor SELECT g, 0 FROM generate_series(1, 64) g ON CONFLICT (id) DO NOTHING"
        )
    finally:
        await setup.close()
    conns = [await asyncpg.connect(dsn) for _ in range(connections)]
    counts = [0] * connections
    try:
        for c in conns:
            stmt = await c.prepare("UPDATE bench_floor SET n = n + 1 WHERE id = $1")
            await stmt.fetch(1)
        deadline = time.perf_counter() + seconds

        async def loop(i: int) -> None:
            stmt = await conns[i].prepare("UPDATE bench_floor SET n = n + 1 WHERE id = $1")
            while time.perf_counter() < deadline:
                await stmt.fetch(i + 1)
                counts[i] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(loop(i) for i in range(connections)))
        return sum(counts) / (time.perf_counter() - t0)
    finally:
        for c in conns:
            await c.close()


async def rpush_rate(prefix: str, n: int, *, pipelined: bool) -> float:
    """RPUSH/s of *n* pushes to one list under *prefix* (deleted afterwards)."""
    import redis.asyncio as redis

    client: Any = redis.Redis.from_url(VALKEY_URL)
    key = f"{prefix}:floor:list"
    try:
        await client.ping()
        t0 = time.perf_counter()
        if pipelined:
            for start in range(0, n, 1000):
                pipe = client.pipeline(transaction=False)
                for i in range(start, min(n, start + 1000)):
                    pipe.rpush(key, i)
                await pipe.execute()
        else:
            for i in range(n):
                await client.rpush(key, i)
        rate = n / (time.perf_counter() - t0)
        await client.delete(key)
        return rate
    finally:
        await client.aclose()
