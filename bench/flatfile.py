"""Suite ``flatfile`` (issue 6): claim+complete per second with 1 and 4 processes, in a project of 100
tasks and of 10,000 tasks; the two sizes must be within 2× of each other. The same workload on
Postgres+Valkey beside it.

Worker processes (``bench._worker``) are started once per backend and stay up; for each measurement
the parent creates a fresh project (all tasks independent and ready), sends every worker its share
and times from the command to the last answer. At 100 tasks the workers drain all of them; at 10,000
they finish ``drain_big`` of them (the project still holds 10,000 tasks throughout).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
import time
import uuid
from typing import Any

from bench.common import (
    VALKEY_URL,
    Context,
    Table,
    fmt_num,
    fmt_ratio,
    fresh_database,
    median,
    ratio,
    valkey_prefix,
)

__all__ = ["run"]

PROCS = (1, 4)


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, *args: str) -> _Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench._worker", *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        worker = cls(proc)
        line = await worker._readline(60)
        if line != "ready":
            raise RuntimeError(f"bench worker did not start: {line!r}")
        return worker

    async def _readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            raise RuntimeError(f"bench worker exited with {await self.proc.wait()}")
        return raw.decode().strip()

    def send(self, cmd: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())

    async def result(self) -> dict[str, Any]:
        return json.loads(await self._readline(600))  # type: ignore[no-any-return]

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.send({"op": "exit"})
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def _measure(workers: list[_Worker], project: str, quota: int) -> tuple[int, float]:
    """Tasks done and wall seconds for *workers* sharing *quota* tasks of *project*."""
    share = -(-quota // len(workers))
    for w in workers:
        w.send({"op": "warm", "project": project})
    for w in workers:
        await w.result()
    t0 = time.perf_counter()
    for w in workers:
        w.send({"op": "drain", "project": project, "quota": share})
        assert w.proc.stdin is not None
        await w.proc.stdin.drain()
    results = [await w.result() for w in workers]
    return sum(r["done"] for r in results), time.perf_counter() - t0


async def run(ctx: Context) -> None:
    """Run the suite and print its table."""
    from flatfile.backend import FlatfileBackend
    from queue_service.backend import DispatchConfig
    from queue_service.postgres.backend import PostgresValkeyBackend
    from queue_service.service import QueueService

    small, big, drain_big = (100, 2_000, 100) if ctx.quick else (100, 10_000, 500)
    sizes = (small, big)
    config = DispatchConfig(max_queue_depth=1_000_000)
    rates: dict[str, dict[tuple[int, int], list[float]]] = {
        b: {(s, p): [] for s in sizes for p in PROCS} for b in ("flatfile", "postgres")
    }

    async with contextlib.AsyncExitStack() as stack:
        data_dir = tempfile.mkdtemp(prefix="bench-flatfile-")
        stack.callback(shutil.rmtree, data_dir, ignore_errors=True)
        url = await stack.enter_async_context(fresh_database())
        prefix = await stack.enter_async_context(valkey_prefix())
        backends = {
            "flatfile": FlatfileBackend(data_dir, config=config),
            "postgres": PostgresValkeyBackend(url, VALKEY_URL, config, key_prefix=prefix),
        }
        services = {}
        for name, backend in backends.items():
            await backend.open()
            stack.push_async_callback(backend.close)
            services[name] = QueueService(backend)
        ctx.log("flatfile: starting worker processes")
        workers = {
            "flatfile": [await _Worker.start("flatfile", data_dir) for _ in range(max(PROCS))],
            "postgres": [await _Worker.start("postgres", url, prefix) for _ in range(max(PROCS))],
        }
        for ws in workers.values():
            for w in ws:
                stack.push_async_callback(w.stop)

        for r in range(ctx.runs):
            order = ["flatfile", "postgres"] if r % 2 == 0 else ["postgres", "flatfile"]
            for name in order:
                svc = services[name]
                # the big project is shared by the 1- and 4-process measurements: it keeps its size
                big_slug = f"ff{r}-big-{uuid.uuid4().hex[:6]}"
                await svc.create_project({"slug": big_slug, "key_prefix": "F"})
                for start in range(0, big, 5_000):
                    await svc.create_tasks(
                        big_slug, [{"title": f"t{i}"} for i in range(start, min(big, start + 5_000))]
                    )
                for procs in PROCS:
                    slug = f"ff{r}-small-{procs}-{uuid.uuid4().hex[:6]}"
                    await svc.create_project({"slug": slug, "key_prefix": "F"})
                    await svc.create_tasks(slug, [{"title": f"t{i}"} for i in range(small)])
                    for size, project, quota in ((small, slug, small), (big, big_slug, drain_big)):
                        done, elapsed = await _measure(workers[name][:procs], project, quota)
                        rates[name][(size, procs)].append(done / elapsed)
                        ctx.log(
                            f"flatfile round {r + 1}: {name} {procs} proc, {size:,} tasks: {done} in "
                            f"{elapsed:.2f}s = {done / elapsed:,.0f}/s"
                        )

    med = {b: {k: median(v) for k, v in by.items()} for b, by in rates.items()}
    t = Table(
        f"flatfile: claim+complete per second (tasks/s), project of {small:,} vs {big:,} tasks; median of {ctx.runs}",
        ["figure", "flatfile", "postgres+valkey", "flatfile/pg"],
    )
    for procs in PROCS:
        for size in sizes:
            f, p = med["flatfile"][(size, procs)], med["postgres"][(size, procs)]
            t.add(
                f"{procs} process{'es' if procs > 1 else ''}, {size:,} tasks",
                fmt_num(f),
                fmt_num(p),
                fmt_ratio(ratio(f, p)),
            )
        slow_f = ratio(med["flatfile"][(small, procs)], med["flatfile"][(big, procs)])
        slow_p = ratio(med["postgres"][(small, procs)], med["postgres"][(big, procs)])
        t.add(f"{procs} proc: rate at {small:,} / rate at {big:,}", fmt_ratio(slow_f), fmt_ratio(slow_p), "")
    t.notes.append(f"target (issue 6): rate at {small:,} / rate at {big:,} ≤ 2.00× for flatfile")
    t.notes.append(
        f"at {small:,} tasks every task is drained; at {big:,} the workers finish {drain_big:,} of them; each "
        "worker is a separate process with its own backend (flatfile: fcntl lock + journal fdatasync per op)"
    )
    ctx.emit(t)
    ctx.results["flatfile"] = {
        "sizes": sizes,
        "drain_big": drain_big,
        "per_s": {b: {f"{s}x{p}": v for (s, p), v in by.items()} for b, by in rates.items()},
    }
