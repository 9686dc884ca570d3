"""``python -m bench.create_paths [--samples N]``: Postgres ``create_task``, fast path against general path.

One process, one backend, the two paths interleaved call by call (the record store's asyncpg pool is
unset for every other call, which sends it down the general path), so the machine's load hits both
alike: W1 (one ``create_task`` call) and W3 (start of ``create_task`` → an idle ``claim(wait=1)``
holds the task), p50/p99 of each, and the ratio fast ÷ general.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from bench.common import VALKEY_URL, fmt_ms, fmt_ratio, fresh_database, percentile, ratio, run_sync, valkey_prefix

__all__ = ["main"]


async def _measure(samples: int) -> dict[str, dict[bool, list[float]]]:
    from queue_service.backend import DispatchConfig
    from queue_service.postgres.backend import PostgresValkeyBackend
    from queue_service.service import QueueService

    out: dict[str, dict[bool, list[float]]] = {"create": {True: [], False: []}, "wake": {True: [], False: []}}
    async with fresh_database() as url, valkey_prefix() as prefix:
        backend = PostgresValkeyBackend(url, VALKEY_URL, DispatchConfig(max_queue_depth=1_000_000), key_prefix=prefix)
        await backend.open()
        try:
            svc = QueueService(backend)
            for slug in ("w1", "w3"):
                await svc.create_project({"slug": slug, "key_prefix": "B"})
            raw = backend.records.raw
            for i in range(2 * samples):
                fast = i % 2 == 0
                backend.records.raw = raw if fast else None
                t0 = time.perf_counter()
                await svc.create_task("w1", {"title": "noop"})
                out["create"][fast].append(time.perf_counter() - t0)
            claimed: asyncio.Queue[float] = asyncio.Queue()
            stop = asyncio.Event()

            async def agent() -> None:
                while not stop.is_set():
                    claim = await svc.claim("w3", "idle", wait=1)
                    if claim is not None:
                        claimed.put_nowait(time.perf_counter())
                        await svc.complete("w3", claim.task.key, claim.lease.token)

            idle: Any = asyncio.create_task(agent())
            await asyncio.sleep(0.3)
            for i in range(2 * samples):
                fast = i % 2 == 0
                backend.records.raw = raw if fast else None
                t0 = time.perf_counter()
                await svc.create_task("w3", {"title": "wake"})
                out["wake"][fast].append(await asyncio.wait_for(claimed.get(), 30) - t0)
                await asyncio.sleep(0.02)  # the agent completed it and waits again
            stop.set()
            await idle
            backend.records.raw = raw
        finally:
            await backend.close()
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point; prints the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.create_paths", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200, help="calls per path and workload (default 200)")
    args = parser.parse_args(argv)
    if not 10 <= args.samples <= 100_000:
        parser.error("--samples must be between 10 and 100,000")
    out = run_sync(lambda: _measure(args.samples))
    print(f"== create_task on Postgres, fast path vs general path, {args.samples} interleaved calls each")
    print(f"{'figure':<42}{'general':>10}{'fast':>10}{'fast÷general':>14}")
    for name, label in (("create", "W1 create_task call"), ("wake", "W3 create → idle claim holds it")):
        for q in (50, 99):
            general, fast = percentile(out[name][False], q), percentile(out[name][True], q)
            cells = f"{fmt_ms(general):>10}{fmt_ms(fast):>10}{fmt_ratio(ratio(fast, general)):>14}"
            print(f"{label + f' p{q} (ms)':<42}{cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
