"""Celery 5 as a peer of the ``peers`` suite: Redis broker on the same Redis, the default prefork worker.

* W1: ``noop.delay()`` one call per task from this process (no worker running; the queued messages
  are deleted afterwards).
* W2: the *n* messages are queued first, then ``celery worker --concurrency=4`` starts; the drain is
  timed from the moment the broker's queue starts shrinking until the queue and the unacknowledged
  hash are both empty (Celery acknowledges before it runs a task by default, so the last no-op tasks
  finish within a millisecond of that; polling every 2 ms).
* W3: a running worker idles; ``wake.delay(i)`` and the time until the task reports it started;
  parent → child: the parent task records its start and calls ``child.delay``, the child reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench.celery_app import arrived_key, make_app, queue_keys
from bench.common import VALKEY_URL, valkey_prefix
from bench.systems import DrainResult

__all__ = ["CelerySystem"]

SLOTS = 4
_ROOT = Path(__file__).resolve().parent.parent


class CelerySystem:
    """Celery on its own key prefix of the shared Redis."""

    name = "celery"

    def __init__(self) -> None:
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> CelerySystem:
        import redis.asyncio as redis

        await self._stack.__aenter__()
        self.prefix = await self._stack.enter_async_context(valkey_prefix())
        self.app = make_app(self.prefix)
        self._stack.callback(self.app.close)
        self.redis: Any = redis.Redis.from_url(VALKEY_URL)
        self._stack.push_async_callback(self.redis.aclose)
        self.queue, self.unacked = queue_keys(self.prefix)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.__aexit__(None, None, None)

    # -- worker process ---------------------------------------------------------------------
    async def _start_worker(self) -> asyncio.subprocess.Process:
        env = dict(os.environ, BENCH_CELERY_PREFIX=self.prefix, BENCH_VALKEY_URL=VALKEY_URL)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.celery_app",
            "worker",
            f"--concurrency={SLOTS}",
            "--loglevel=WARNING",
            cwd=str(_ROOT),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
        )

    async def _stop_worker(self, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)  # Celery's warm shutdown
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    async def _purge(self) -> None:
        await self.redis.delete(self.queue, self.unacked, f"{self.prefix}:unacked_index", arrived_key(self.prefix))

    # -- workloads ----------------------------------------------------------------------------
    async def w1(self, n: int, time_limit: float) -> DrainResult:
        """Enqueue one task per ``delay()`` call (a blocking call: run in a thread, one at a time)."""
        noop = self.app.tasks["noop"]

        def send() -> tuple[int, float]:
            deadline = time.perf_counter() + time_limit
            t0 = time.perf_counter()
            done = 0
            while done < n and time.perf_counter() < deadline:
                noop.delay()
                done += 1
            return done, time.perf_counter() - t0

        noop.delay()  # connect the producer's pool outside the clock
        done, elapsed = await asyncio.to_thread(send)
        await self._purge()
        return DrainResult(done, elapsed, stopped_early=done < n)

    async def w2(self, n: int, time_limit: float) -> DrainResult:
        noop = self.app.tasks["noop"]
        await self._purge()
        await asyncio.to_thread(lambda: [noop.delay() for _ in range(n)])
        proc = await self._start_worker()
        try:
            t0 = None
            start_deadline = time.perf_counter() + 120
            while t0 is None:
                if await self.redis.llen(self.queue) < n:
                    t0 = time.perf_counter()
                elif time.perf_counter() > start_deadline or proc.returncode is not None:
                    raise RuntimeError("the Celery worker did not start consuming")
                else:
                    await asyncio.sleep(0.002)
            stopped = False
            while True:
                waiting, unacked = await self.redis.llen(self.queue), await self.redis.hlen(self.unacked)
                if waiting == 0 and unacked == 0:
                    break
                if time.perf_counter() - t0 > time_limit:
                    stopped = True
                    break
                await asyncio.sleep(0.002)
            elapsed = time.perf_counter() - t0
            done = n - waiting - unacked
        finally:
            await self._stop_worker(proc)
            await self._purge()
        return DrainResult(done, elapsed, stopped_early=stopped)

    async def _arrivals(self, count: int, timeout: float = 30) -> dict[str, float]:
        out: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while len(out) < count:
            # short blocking pops: one long BLPOP would outlast the client's socket timeout
            item = await self.redis.blpop([arrived_key(self.prefix)], timeout=1)
            if item is None:
                if time.monotonic() > deadline:
                    raise TimeoutError("a Celery task did not report in time")
                continue
            tag, at = item[1].decode().split()
            out[tag] = float(at)
        return out

    async def _with_idle_worker(self, body: Any) -> Any:
        await self._purge()
        proc = await self._start_worker()
        try:
            # the worker is up (and its pool children forked) once a first task reports back
            await asyncio.to_thread(self.app.tasks["wake"].delay, -1)
            await self._arrivals(1, timeout=120)
            await asyncio.sleep(0.5)
            return await body()
        finally:
            await self._stop_worker(proc)
            await self._purge()

    async def w3_wake(self, samples: int) -> list[float]:
        wake = self.app.tasks["wake"]

        async def body() -> list[float]:
            out = []
            for i in range(samples):
                t0 = time.monotonic()
                wake.delay(i)  # blocking, as a producer calls it; nothing else runs meanwhile
                arrived = await self._arrivals(1)
                out.append(arrived[f"w{i}"] - t0)
                await asyncio.sleep(0.005)
            return out

        return await self._with_idle_worker(body)  # type: ignore[no-any-return]

    async def w3_chain(self, samples: int) -> list[float]:
        parent = self.app.tasks["parent"]

        async def body() -> list[float]:
            out = []
            for i in range(samples):
                parent.delay(i)
                arrived = await self._arrivals(2)
                out.append(arrived[f"c{i}"] - arrived[f"p{i}"])
                await asyncio.sleep(0.005)
            return out

        return await self._with_idle_worker(body)  # type: ignore[no-any-return]
