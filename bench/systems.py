"""The three dispatch systems measured side by side: ours (Postgres+Valkey), pgqueuer, procrastinate.

Each system offers the same three workloads, written with that system's documented API:

* ``drain(n, agents)``: *n* no-op tasks already queued, *agents* consumers take and finish them.
  Ours: *agents* coroutines looping ``claim`` → ``complete`` on one in-process QueueService; ours
  also has ``drain_batched``, the same with ``claim_many(limit=10)`` → ``complete_many``.
  pgqueuer: *agents* ``QueueManager`` instances, each on its own asyncpg connection, ``batch_size=10``
  (pgqueuer's own benchmark setup; it dequeues 10 per round trip and batches the completion log).
  procrastinate: one worker with ``concurrency=agents`` (its documented way to run N jobs at once).
* ``wake(samples, agents)``: consumers idle and waiting; one task enqueued at a time; the time from
  the start of the enqueue call to the moment a consumer holds the task.
* ``chain(samples, agents)``: a parent and a child that must run after it. Ours: the child
  ``depends_on`` the parent; the time from the start of ``complete(parent)`` to the child's claim.
  The peers have no dependencies: the parent's handler enqueues the child (their documented way to
  chain jobs); the time from that enqueue call to the child's handler starting.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from bench.common import VALKEY_URL, asyncpg_dsn, fresh_database, valkey_prefix

__all__ = [
    "DrainResult",
    "OursSystem",
    "PgqueuerSystem",
    "ProcrastinateSystem",
    "System",
    "drain_project",
    "drain_project_batched",
]

#: Idle claimers block this long per claim call (they loop until told to stop).
_IDLE_WAIT = 1.0


@dataclass
class DrainResult:
    """How a drain went: tasks finished, wall time, and claim-call latencies where measured."""

    done: int
    elapsed: float
    claim_latencies: list[float] = field(default_factory=list)
    stopped_early: bool = False

    @property
    def rate(self) -> float:
        """Tasks finished per second."""
        return self.done / self.elapsed if self.elapsed > 0 else float("nan")


class System:
    """One dispatch system on its own fresh database (and key prefix)."""

    name = "system"

    def __init__(self) -> None:
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> System:
        await self._stack.__aenter__()
        await self.setup()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.__aexit__(None, None, None)

    async def setup(self) -> None:
        """Create the database and connections."""

    async def enqueue_rate(self, n: int) -> float:
        """Tasks/s for enqueuing *n* no-op tasks in one batch call."""
        raise NotImplementedError

    async def drain(self, n: int, agents: int, time_limit: float) -> DrainResult:
        """Queue *n* tasks, then let *agents* consumers finish them (stop measuring after *time_limit*)."""
        raise NotImplementedError

    async def wake(self, samples: int, agents: int) -> list[float]:
        """Enqueue→claimed latencies (seconds) with *agents* idle consumers."""
        raise NotImplementedError

    async def chain(self, samples: int, agents: int) -> list[float]:
        """Parent done→child claimed latencies (seconds) with *agents* idle consumers."""
        raise NotImplementedError


async def _sequential_samples(
    samples: int, fire: Callable[[int], Awaitable[None]], arrived: dict[int, asyncio.Future[float]]
) -> list[float]:
    """Fire sample *i*, wait for it to arrive, pause 5 ms so the consumers are idle again; repeat."""
    loop = asyncio.get_running_loop()
    out: list[float] = []
    for i in range(samples):
        arrived[i] = loop.create_future()
        t0 = time.perf_counter()
        await fire(i)
        t1 = await asyncio.wait_for(arrived[i], timeout=30)
        out.append(t1 - t0)
        await asyncio.sleep(0.005)
    return out


# -- ours ---------------------------------------------------------------------------------------


class OursSystem(System):
    """PostgresValkeyBackend through the QueueService facade, in process."""

    name = "ours"

    def __init__(self, *, pool_size: int = 20) -> None:
        super().__init__()
        self.pool_size = pool_size
        self._n = 0
        #: task key -> resolved when an idle agent has completed it (it is back in claim then)
        self._completed: dict[str, asyncio.Future[None]] = {}

    async def setup(self) -> None:
        from queue_service.backend import DispatchConfig
        from queue_service.postgres.backend import PostgresValkeyBackend
        from queue_service.service import QueueService

        self.url = await self._stack.enter_async_context(fresh_database())
        self.prefix = await self._stack.enter_async_context(valkey_prefix())
        # Benchmarks queue more than the default backpressure limit at once.
        config = DispatchConfig(max_queue_depth=1_000_000)
        self.backend = PostgresValkeyBackend(
            self.url, VALKEY_URL, config, key_prefix=self.prefix, pool_size=self.pool_size
        )
        await self.backend.open()
        self._stack.push_async_callback(self.backend.close)
        self.svc = QueueService(self.backend)

    async def new_project(self) -> str:
        """A fresh project (slug ``b<n>``) so workloads never see each other's tasks."""
        self._n += 1
        slug = f"b{self._n}-{uuid.uuid4().hex[:6]}"
        await self.svc.create_project({"slug": slug, "key_prefix": "B"})
        return slug

    async def enqueue_rate(self, n: int) -> float:
        slug = await self.new_project()
        t0 = time.perf_counter()
        await self.svc.create_tasks(slug, [{"title": f"noop {i}"} for i in range(n)])
        return n / (time.perf_counter() - t0)

    async def drain(self, n: int, agents: int, time_limit: float) -> DrainResult:
        slug = await self.new_project()
        await self.svc.create_tasks(slug, [{"title": f"noop {i}"} for i in range(n)])
        return await drain_project(self.svc, slug, agents, time_limit)

    async def drain_batched(self, n: int, agents: int, time_limit: float, batch: int) -> DrainResult:
        """Like :meth:`drain`, each agent looping ``claim_many(limit=batch)`` → ``complete_many``."""
        slug = await self.new_project()
        await self.svc.create_tasks(slug, [{"title": f"noop {i}"} for i in range(n)])
        return await drain_project_batched(self.svc, slug, agents, time_limit, batch)

    async def _idle_agents(
        self, slug: str, agents: int, on_claim: Callable[[str, float], Awaitable[None] | None]
    ) -> tuple[asyncio.Event, list[asyncio.Task[None]]]:
        stop = asyncio.Event()

        async def agent(i: int) -> None:
            agent_id = f"idle{i}"
            while not stop.is_set():
                claim = await self.svc.claim(slug, agent_id, wait=_IDLE_WAIT)
                if claim is None:
                    continue
                t = time.perf_counter()
                maybe = on_claim(claim.task.key, t)
                if maybe is not None:
                    await maybe
                await self.svc.complete(slug, claim.task.key, claim.lease.token)
                done = self._completed.get(claim.task.key)
                if done is not None and not done.done():
                    done.set_result(None)

        tasks = [asyncio.create_task(agent(i)) for i in range(agents)]
        await asyncio.sleep(0.3)  # every agent is blocked in its claim
        return stop, tasks

    async def _stop(self, stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
        stop.set()
        await asyncio.gather(*tasks)

    async def wake(self, samples: int, agents: int) -> list[float]:
        slug = await self.new_project()
        arrived: dict[int, asyncio.Future[float]] = {}
        self._completed = {}

        def on_claim(key: str, t: float) -> None:
            fut = arrived.get(int(key.split("-")[1]))
            if fut is not None and not fut.done():
                fut.set_result(t)

        stop, tasks = await self._idle_agents(slug, agents, on_claim)
        loop = asyncio.get_running_loop()

        async def fire(i: int) -> None:
            self._completed[f"W-{i}"] = loop.create_future()
            await self.svc.create_task(slug, {"key": f"W-{i}", "title": "wake"})

        try:
            out: list[float] = []
            for i in range(samples):
                arrived[i] = loop.create_future()
                t0 = time.perf_counter()
                await fire(i)
                out.append(await asyncio.wait_for(arrived[i], timeout=30) - t0)
                await asyncio.wait_for(self._completed[f"W-{i}"], timeout=30)  # the agent is idle again
                await asyncio.sleep(0.005)
            return out
        finally:
            await self._stop(stop, tasks)

    async def chain(self, samples: int, agents: int) -> list[float]:
        slug = await self.new_project()
        arrived: dict[int, asyncio.Future[float]] = {}
        parent_done_at: dict[int, float] = {}
        self._completed = {}

        def on_claim(key: str, t: float) -> None:
            kind, num = key.split("-")
            i = int(num)
            if kind == "P":
                # the agent calls complete(parent) right after this returns
                parent_done_at[i] = time.perf_counter()
            else:
                fut = arrived.get(i)
                if fut is not None and not fut.done():
                    fut.set_result(t)

        stop, tasks = await self._idle_agents(slug, agents, on_claim)
        loop = asyncio.get_running_loop()
        try:
            out: list[float] = []
            for i in range(samples):
                arrived[i] = loop.create_future()
                self._completed[f"C-{i}"] = loop.create_future()
                await self.svc.create_tasks(
                    slug,
                    [
                        {"key": f"P-{i}", "title": "parent"},
                        {"key": f"C-{i}", "title": "child", "depends_on": [f"P-{i}"]},
                    ],
                )
                t1 = await asyncio.wait_for(arrived[i], timeout=30)
                out.append(t1 - parent_done_at[i])
                await asyncio.wait_for(self._completed[f"C-{i}"], timeout=30)
                await asyncio.sleep(0.005)
            return out
        finally:
            await self._stop(stop, tasks)


async def drain_project(svc: Any, slug: str, agents: int, time_limit: float) -> DrainResult:
    """*agents* coroutines looping claim → complete on *svc* until the project has nothing ready."""
    done = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + time_limit
    stopped = False

    async def agent(i: int) -> None:
        nonlocal done, stopped
        agent_id = f"bench-agent-{i}"
        while True:
            if time.perf_counter() > deadline:
                stopped = True
                return
            t = time.perf_counter()
            claim = await svc.claim(slug, agent_id)
            latencies.append(time.perf_counter() - t)
            if claim is None:
                return
            await svc.complete(slug, claim.task.key, claim.lease.token)
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(agent(i) for i in range(agents)))
    return DrainResult(done, time.perf_counter() - t0, latencies, stopped)


async def drain_project_batched(svc: Any, slug: str, agents: int, time_limit: float, batch: int) -> DrainResult:
    """*agents* coroutines looping ``claim_many(limit=batch)`` → ``complete_many`` on *svc* until the
    project has nothing ready. Only completions that succeeded count; latencies are per claim_many call."""
    done = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + time_limit
    stopped = False

    async def agent(i: int) -> None:
        nonlocal done, stopped
        agent_id = f"bench-batch-agent-{i}"
        while True:
            if time.perf_counter() > deadline:
                stopped = True
                return
            t = time.perf_counter()
            claims = await svc.claim_many(slug, agent_id, limit=batch)
            latencies.append(time.perf_counter() - t)
            if not claims:
                return
            results = await svc.complete_many(slug, [(c.task.key, c.lease.token, None) for c in claims])
            done += sum(1 for r in results if not isinstance(r, Exception))

    t0 = time.perf_counter()
    await asyncio.gather(*(agent(i) for i in range(agents)))
    return DrainResult(done, time.perf_counter() - t0, latencies, stopped)


# -- pgqueuer -----------------------------------------------------------------------------------


class PgqueuerSystem(System):
    """pgqueuer on its own database: ``Queries.enqueue`` and ``QueueManager.run(batch_size=10)``."""

    name = "pgqueuer"
    batch_size = 10

    def __init__(self) -> None:
        super().__init__()
        self._conns: list[Any] = []

    async def setup(self) -> None:
        import asyncpg
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        self.url = await self._stack.enter_async_context(fresh_database(migrate=False))
        self.dsn = asyncpg_dsn(self.url)
        conn = await asyncpg.connect(self.dsn)
        self._stack.push_async_callback(conn.close)
        self.queries = Queries(AsyncpgDriver(conn))
        await self.queries.install()

    async def _managers(self, agents: int, handlers: dict[str, Callable[[Any], Awaitable[None]]]) -> list[Any]:
        import asyncpg
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.qm import QueueManager
        from pgqueuer.queries import Queries

        managers = []
        for _ in range(agents):
            conn = await asyncpg.connect(self.dsn)
            self._conns.append(conn)
            qm = QueueManager(Queries(AsyncpgDriver(conn)))
            for name, fn in handlers.items():
                qm.entrypoint(name)(fn)
            managers.append(qm)
        return managers

    async def _close_conns(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(Exception):
                await conn.close()
        self._conns = []

    async def enqueue_rate(self, n: int) -> float:
        t0 = time.perf_counter()
        await self.queries.enqueue(["count"] * n, [None] * n, [0] * n)
        rate = n / (time.perf_counter() - t0)
        await self.queries.clear_queue("count")
        return rate

    async def drain(self, n: int, agents: int, time_limit: float) -> DrainResult:
        from pgqueuer import types

        self._conns = []
        done = 0

        async def noop(_job: Any) -> None:
            nonlocal done
            done += 1

        await self.queries.enqueue(["noop"] * n, [None] * n, [0] * n)
        managers = await self._managers(agents, {"noop": noop})
        stopped = False

        async def limit() -> None:
            nonlocal stopped
            await asyncio.sleep(time_limit)
            stopped = True
            for qm in managers:
                qm.shutdown.set()

        t0 = time.perf_counter()
        timer = asyncio.create_task(limit())
        try:
            await asyncio.gather(
                *(
                    qm.run(
                        batch_size=self.batch_size,
                        mode=types.QueueExecutionMode.drain,
                        dequeue_timeout=timedelta(seconds=1),
                    )
                    for qm in managers
                )
            )
            elapsed = time.perf_counter() - t0
        finally:
            timer.cancel()
            await self._close_conns()
        if stopped:
            await self.queries.clear_queue("noop")
        return DrainResult(done, elapsed, stopped_early=stopped)

    async def _with_idle_managers(
        self, agents: int, handlers: dict[str, Callable[[Any], Awaitable[None]]], body: Callable[[], Awaitable[Any]]
    ) -> Any:
        self._conns = []
        managers = await self._managers(agents, handlers)
        runs = [
            asyncio.create_task(qm.run(batch_size=self.batch_size, dequeue_timeout=timedelta(seconds=30)))
            for qm in managers
        ]
        try:
            await asyncio.sleep(0.5)  # every manager is LISTENing and idle
            return await body()
        finally:
            for qm in managers:
                qm.shutdown.set()
            await asyncio.gather(*runs, return_exceptions=True)
            await self._close_conns()

    async def wake(self, samples: int, agents: int) -> list[float]:
        arrived: dict[int, asyncio.Future[float]] = {}

        async def wake(job: Any) -> None:
            t = time.perf_counter()
            fut = arrived.get(int(job.payload))
            if fut is not None and not fut.done():
                fut.set_result(t)

        async def fire(i: int) -> None:
            await self.queries.enqueue("wake", str(i).encode())

        async def body() -> list[float]:
            return await _sequential_samples(samples, fire, arrived)

        return await self._with_idle_managers(agents, {"wake": wake}, body)  # type: ignore[no-any-return]

    async def chain(self, samples: int, agents: int) -> list[float]:
        import asyncpg
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        arrived: dict[int, asyncio.Future[float]] = {}
        started: dict[int, float] = {}
        conn = await asyncpg.connect(self.dsn)
        producer = Queries(AsyncpgDriver(conn))

        async def parent(job: Any) -> None:
            i = int(job.payload)
            started[i] = time.perf_counter()
            await producer.enqueue("child", job.payload)

        async def child(job: Any) -> None:
            t = time.perf_counter()
            fut = arrived.get(int(job.payload))
            if fut is not None and not fut.done():
                fut.set_result(t)

        async def body() -> list[float]:
            loop = asyncio.get_running_loop()
            out = []
            for i in range(samples):
                arrived[i] = loop.create_future()
                await self.queries.enqueue("parent", str(i).encode())
                t1 = await asyncio.wait_for(arrived[i], timeout=30)
                out.append(t1 - started[i])
                await asyncio.sleep(0.005)
            return out

        try:
            return await self._with_idle_managers(agents, {"parent": parent, "child": child}, body)  # type: ignore[no-any-return]
        finally:
            await conn.close()


# -- procrastinate ------------------------------------------------------------------------------


class ProcrastinateSystem(System):
    """procrastinate on its own database: ``App(PsycopgConnector)``, ``defer_async``, one worker with
    ``concurrency=N``."""

    name = "procrastinate"

    async def setup(self) -> None:
        import procrastinate

        self.url = await self._stack.enter_async_context(fresh_database(migrate=False))
        self.app = procrastinate.App(
            connector=procrastinate.PsycopgConnector(conninfo=asyncpg_dsn(self.url), min_size=2, max_size=24)
        )
        self.done = 0
        self.arrived: dict[int, asyncio.Future[float]] = {}
        self.started: dict[int, float] = {}

        @self.app.task(name="noop")
        async def noop() -> None:
            self.done += 1

        @self.app.task(name="wake")
        async def wake(i: int) -> None:
            self._arrive(i)

        @self.app.task(name="child")
        async def child(i: int) -> None:
            self._arrive(i)

        @self.app.task(name="parent")
        async def parent(i: int) -> None:
            self.started[i] = time.perf_counter()
            await child.defer_async(i=i)

        self.noop, self.wake_task, self.parent_task = noop, wake, parent
        await self._stack.enter_async_context(self.app.open_async())
        await self.app.schema_manager.apply_schema_async()

    def _arrive(self, i: int) -> None:
        t = time.perf_counter()
        fut = self.arrived.get(i)
        if fut is not None and not fut.done():
            fut.set_result(t)

    async def _discard_todo(self) -> None:
        # leftovers of an enqueue-only or time-limited run: not run (that would take minutes), deleted
        await self.app.connector.execute_query_async("DELETE FROM procrastinate_jobs WHERE status = 'todo'")

    async def enqueue_rate(self, n: int) -> float:
        t0 = time.perf_counter()
        await self.noop.batch_defer_async(*({} for _ in range(n)))
        rate = n / (time.perf_counter() - t0)
        await self._discard_todo()
        return rate

    async def drain(self, n: int, agents: int, time_limit: float) -> DrainResult:
        self.done = 0
        await self.noop.batch_defer_async(*({} for _ in range(n)))
        t0 = time.perf_counter()
        worker = asyncio.create_task(
            self.app.run_worker_async(concurrency=agents, wait=False, install_signal_handlers=False)
        )
        stopped = False
        try:
            await asyncio.wait_for(asyncio.shield(worker), timeout=time_limit)
        except TimeoutError:
            stopped = True
        elapsed = time.perf_counter() - t0
        done = self.done
        if stopped:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await worker
            await self._discard_todo()
        return DrainResult(done, elapsed, stopped_early=stopped)

    async def _with_idle_worker(self, agents: int, body: Callable[[], Awaitable[list[float]]]) -> list[float]:
        worker = asyncio.create_task(
            self.app.run_worker_async(concurrency=agents, wait=True, install_signal_handlers=False)
        )
        try:
            await asyncio.sleep(0.5)
            return await body()
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await worker

    async def wake(self, samples: int, agents: int) -> list[float]:
        self.arrived = {}

        async def fire(i: int) -> None:
            await self.wake_task.defer_async(i=i)

        return await self._with_idle_worker(agents, lambda: _sequential_samples(samples, fire, self.arrived))

    async def chain(self, samples: int, agents: int) -> list[float]:
        self.arrived = {}
        self.started = {}

        async def body() -> list[float]:
            loop = asyncio.get_running_loop()
            out = []
            for i in range(samples):
                self.arrived[i] = loop.create_future()
                await self.parent_task.defer_async(i=i)
                t1 = await asyncio.wait_for(self.arrived[i], timeout=30)
                out.append(t1 - self.started[i])
                await asyncio.sleep(0.005)
            return out

        return await self._with_idle_worker(agents, body)
