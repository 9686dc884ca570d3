"""Our three deployments as systems of the ``peers`` suite, each with the same four workloads.

* ``OursInProcess``: ``PostgresValkeyBackend`` behind a ``QueueService`` in this process (the
  embedded/library use). W1 ``create_task`` one per call; W2 four agents each looping ``claim`` →
  ``complete`` (what an in-process agent does with the service's API); W3 four agents idle in
  ``claim(wait=…)``.
* ``OursRest``: one ``queue-service serve`` replica on the same database and key prefix, driven over
  HTTP by the typed client (``queue_service.client.AsyncClient``): W1 ``create_task`` one per call;
  W2 and W3 four of the client's worker helpers (``AsyncClient.worker(...).run(fn)``), the default
  way to write an agent.
* ``OursFlatfile``: ``FlatfileBackend`` (the embedded default, one directory, no servers) in process,
  the same workloads as in process; plus W2 in a project of 100 tasks against one of 10,000.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
import uuid
from typing import Any

from bench.common import VALKEY_URL, fresh_database, valkey_prefix
from bench.rest import _start_replica, _stop_replica
from bench.systems import DrainResult, OursSystem

__all__ = ["SLOTS", "OursFlatfile", "OursInProcess", "OursRest", "create_one_by_one"]

#: worker slots every system gets for W2 and W3
SLOTS = 4
#: what the REST workers long-poll for (the worker helper's default is 10 s)
_REST_WAIT = 10.0


async def create_one_by_one(svc: Any, slug: str, n: int, time_limit: float) -> DrainResult:
    """W1: *n* ``create_task`` calls one after the other (stopping at *time_limit*)."""
    deadline = time.perf_counter() + time_limit
    t0 = time.perf_counter()
    done = 0
    while done < n and time.perf_counter() < deadline:
        await svc.create_task(slug, {"title": f"noop {done}"})
        done += 1
    return DrainResult(done, time.perf_counter() - t0, stopped_early=done < n)


def _local_worker() -> Any:
    """``queue_service.worker_local.local_worker`` where the tree has it (``bench.ab`` also runs older
    trees, whose in-process agents loop ``claim`` → ``complete`` by hand); else None."""
    try:
        from queue_service.worker_local import local_worker
    except ImportError:
        return None
    return local_worker


async def run_workers(workers: list[Any], fn: Any, time_limit: float) -> DrainResult:
    """Run worker helpers until idle, stopping them after *time_limit*; tasks handed out per second."""
    stopped = False

    async def limit() -> None:
        nonlocal stopped
        await asyncio.sleep(time_limit)
        stopped = True
        for w in workers:
            w.stop()

    timer = asyncio.create_task(limit())
    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(w.run(fn) for w in workers))
    finally:
        timer.cancel()
    result = DrainResult(sum(w.processed for w in workers), time.perf_counter() - t0, stopped_early=stopped)
    stats = [w.last_run for w in workers if getattr(w, "last_run", None) is not None]
    if stats:
        calls = (sum(s.claim_calls for s in stats), sum(s.complete_calls for s in stats))
        print(f"  worker calls: {calls[0]} claim, {calls[1]} complete for {result.done} tasks", file=sys.stderr)
    return result


async def _noop(_task: Any) -> None:
    return None


class OursInProcess(OursSystem):
    """Postgres + Valkey through an in-process ``QueueService``."""

    name = "ours"

    async def w1(self, n: int, time_limit: float) -> DrainResult:
        return await create_one_by_one(self.svc, await self.new_project(), n, time_limit)

    async def w2(self, n: int, time_limit: float) -> DrainResult:
        local_worker = _local_worker()
        if local_worker is None:
            return await self.drain(n, SLOTS, time_limit)
        slug = await self.new_project()
        await self.svc.create_tasks(slug, [{"title": f"noop {i}"} for i in range(n)])
        worker = local_worker(
            self.svc, slug, agent="bench-local", stop_when_idle=True, wait_seconds=0, concurrency=SLOTS
        )
        return await run_workers([worker], _noop, time_limit)

    async def w2_batched(self, n: int, time_limit: float) -> DrainResult:
        """Not the default: each agent loops ``claim_many(limit=10)`` → ``complete_many``."""
        return await self.drain_batched(n, SLOTS, time_limit, 10)

    async def w3_wake(self, samples: int) -> list[float]:
        return await self.wake(samples, SLOTS)

    async def w3_chain(self, samples: int) -> list[float]:
        return await self.chain(samples, SLOTS)


class OursFlatfile(OursInProcess):
    """``FlatfileBackend`` in a temporary directory, in process."""

    name = "flatfile"

    async def setup(self) -> None:
        from flatfile.backend import FlatfileBackend
        from queue_service.backend import DispatchConfig
        from queue_service.service import QueueService

        data_dir = tempfile.mkdtemp(prefix="bench-peers-flatfile-")
        self._stack.callback(shutil.rmtree, data_dir, ignore_errors=True)
        self.backend = FlatfileBackend(data_dir, config=DispatchConfig(max_queue_depth=1_000_000))
        await self.backend.open()
        self._stack.push_async_callback(self.backend.close)
        self.svc = QueueService(self.backend)

    async def w2_sized(self, size: int, drained: int, time_limit: float) -> DrainResult:
        """W2 in a project of *size* tasks, stopping after *drained* of them (the project keeps its size)."""
        slug = await self.new_project()
        for start in range(0, size, 5_000):
            await self.svc.create_tasks(slug, [{"title": f"t{i}"} for i in range(start, min(size, start + 5_000))])
        await self.svc.list_tasks(slug, {"ready": True}, 1)  # load the project before the clock starts
        done = 0
        deadline = time.perf_counter() + time_limit

        async def agent(i: int) -> None:
            nonlocal done
            while done < drained and time.perf_counter() < deadline:
                claim = await self.svc.claim(slug, f"sized-{i}")
                if claim is None:
                    return
                done += 1
                await self.svc.complete(slug, claim.task.key, claim.lease.token)

        t0 = time.perf_counter()
        await asyncio.gather(*(agent(i) for i in range(SLOTS)))
        return DrainResult(done, time.perf_counter() - t0, stopped_early=time.perf_counter() > deadline)


class OursRest:
    """One ``queue-service serve`` replica, driven by the typed client and its worker helper."""

    name = "rest"

    def __init__(self) -> None:
        self._stack = contextlib.AsyncExitStack()
        self._n = 0

    async def __aenter__(self) -> OursRest:
        from queue_service.backend import DispatchConfig
        from queue_service.client import AsyncClient
        from queue_service.postgres.backend import PostgresValkeyBackend
        from queue_service.service import QueueService

        await self._stack.__aenter__()
        url = await self._stack.enter_async_context(fresh_database())
        prefix = await self._stack.enter_async_context(valkey_prefix())
        # an in-process backend on the same database only queues the W2 backlog in one batch call
        backend = PostgresValkeyBackend(url, VALKEY_URL, DispatchConfig(max_queue_depth=1_000_000), key_prefix=prefix)
        await backend.open()
        self._stack.push_async_callback(backend.close)
        self.svc = QueueService(backend)
        proc, base = await _start_replica(url, prefix)
        self._stack.push_async_callback(_stop_replica, proc)
        self.pid = proc.pid
        self.client = AsyncClient(base)
        self._stack.push_async_callback(self.client.aclose)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.__aexit__(None, None, None)

    async def _project(self) -> str:
        self._n += 1
        slug = f"r{self._n}-{uuid.uuid4().hex[:6]}"
        await self.client.create_project({"slug": slug, "key_prefix": "R"})
        return slug

    async def w1(self, n: int, time_limit: float) -> DrainResult:
        return await create_one_by_one(self.client, await self._project(), n, time_limit)

    async def w2(self, n: int, time_limit: float) -> DrainResult:
        slug = await self._project()
        await self.svc.create_tasks(slug, [{"title": f"noop {i}"} for i in range(n)])

        return await run_workers(self._workers(slug, stop_when_idle=True, wait_seconds=0), _noop, time_limit)

    def _workers(self, slug: str, **options: Any) -> list[Any]:
        """One worker helper with SLOTS slots where the client takes ``concurrency``; else (an older
        tree, one task at a time per worker) SLOTS workers."""
        import inspect

        if "concurrency" in inspect.signature(self.client.worker).parameters:
            return [self.client.worker(slug, agent="bench-rest", concurrency=SLOTS, **options)]
        return [self.client.worker(slug, agent=f"bench-rest-{i}", **options) for i in range(SLOTS)]

    async def _idle(self, slug: str, fn: Any, body: Any) -> Any:
        workers = self._workers(slug, wait_seconds=_REST_WAIT)
        runs = [asyncio.create_task(w.run(fn)) for w in workers]
        try:
            await asyncio.sleep(0.5)  # every worker is long-polling
            return await body()
        finally:
            for w in workers:
                w.stop()
            # a stopped worker returns after its current long-poll; do not wait that long
            for r in runs:
                r.cancel()
            await asyncio.gather(*runs, return_exceptions=True)

    async def w3_wake(self, samples: int) -> list[float]:
        slug = await self._project()
        arrived: dict[str, asyncio.Future[float]] = {}
        loop = asyncio.get_running_loop()

        async def handler(task: Any) -> None:
            fut = arrived.get(task.key)
            if fut is not None and not fut.done():
                fut.set_result(time.perf_counter())

        async def body() -> list[float]:
            out = []
            for i in range(samples):
                key = f"W-{i}"
                arrived[key] = loop.create_future()
                t0 = time.perf_counter()
                await self.client.create_task(slug, {"key": key, "title": "wake"})
                out.append(await asyncio.wait_for(arrived[key], 30) - t0)
                await asyncio.sleep(0.02)  # the worker completes it and long-polls again
            return out

        return await self._idle(slug, handler, body)  # type: ignore[no-any-return]

    async def w3_chain(self, samples: int) -> list[float]:
        slug = await self._project()
        arrived: dict[str, asyncio.Future[float]] = {}
        parent_done: dict[str, float] = {}
        loop = asyncio.get_running_loop()

        async def handler(task: Any) -> None:
            kind, num = task.key.split("-")
            if kind == "P":
                # the worker helper completes the task right after the handler returns
                parent_done[num] = time.perf_counter()
                return
            fut = arrived.get(num)
            if fut is not None and not fut.done():
                fut.set_result(time.perf_counter())

        async def body() -> list[float]:
            out = []
            for i in range(samples):
                num = str(i)
                arrived[num] = loop.create_future()
                await self.client.create_tasks(
                    slug,
                    [
                        {"key": f"P-{i}", "title": "parent"},
                        {"key": f"C-{i}", "title": "child", "depends_on": [f"P-{i}"]},
                    ],
                )
                out.append(await asyncio.wait_for(arrived[num], 30) - parent_done[num])
                await asyncio.sleep(0.02)
            return out

        return await self._idle(slug, handler, body)  # type: ignore[no-any-return]
