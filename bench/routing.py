"""Suite ``routing`` (issue 13): what routing costs. Claim+complete throughput with the role's
strategy ``pull`` (the baseline), ``round-robin`` and ``least-busy``, and with every task under a
concurrency key (limit = half the agents), side by side in one run on each backend, as ratios to
``pull`` measured in the same run.

Every scenario drains the same number of no-op tasks with the same registered agents (capacity 1,
one claim → complete loop each). Figures are the median of ``runs`` interleaved rounds (each round
runs every scenario once, rotating which goes first).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
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
from queue_service.backend import Backend, DispatchConfig
from queue_service.service import QueueService
from queue_service.testing import InMemoryBackend

__all__ = ["run"]

AGENTS = 4
SCENARIOS = ("pull", "round-robin", "least-busy", "concurrency key")
CONFIG = DispatchConfig(lease_seconds=30.0, max_queue_depth=1_000_000, agent_ready_seconds=60.0, offer_seconds=2.0)


def _params(ctx: Context) -> dict[str, Any]:
    return {"tasks": 200 if ctx.quick else 1_000, "time_limit": 5.0 if ctx.quick else 20.0}


@contextlib.asynccontextmanager
async def _memory() -> AsyncIterator[Backend]:
    async with InMemoryBackend(config=CONFIG) as backend:
        yield backend


@contextlib.asynccontextmanager
async def _postgres() -> AsyncIterator[Backend]:
    from queue_service.postgres.backend import PostgresValkeyBackend

    async with (
        fresh_database() as url,
        valkey_prefix() as prefix,
        PostgresValkeyBackend(url, VALKEY_URL, CONFIG, key_prefix=prefix) as backend,
    ):
        yield backend


BACKENDS: dict[str, Callable[[], contextlib.AbstractAsyncContextManager[Backend]]] = {
    "memory": _memory,
    "postgres+valkey": _postgres,
}


async def _drain(svc: QueueService, scenario: str, n: int, tasks: int, time_limit: float) -> float:
    """Tasks/s of *AGENTS* agents claiming and completing *tasks* tasks in a fresh project."""
    slug = f"r{n}"
    await svc.create_project({"slug": slug, "key_prefix": "R"})
    if scenario in ("round-robin", "least-busy"):
        await svc.update_project(slug, {"routing": {"default": scenario}})
    keyed = scenario == "concurrency key"
    if keyed:
        await svc.update_project(slug, {"concurrency_limits": {"*": AGENTS // 2}})
    for a in range(AGENTS):
        await svc.register_agent(slug, {"id": f"a{a}", "capacity": 1})
    items = [{"title": f"t{i}", **({"concurrency_key": f"k{i % 2}"} if keyed else {})} for i in range(tasks)]
    for start in range(0, tasks, 1000):
        await svc.create_tasks(slug, items[start : start + 1000])
    done = 0
    stop = time.perf_counter() + time_limit

    async def agent(a: int) -> None:
        nonlocal done
        while done < tasks and time.perf_counter() < stop:
            c = await svc.claim(slug, f"a{a}", wait=0.05)
            if c is None:
                continue
            await svc.complete(slug, c.task.key, c.lease.token)
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(agent(a) for a in range(AGENTS)))
    return done / (time.perf_counter() - t0)


async def run(ctx: Context) -> None:
    """Run the suite and print one table per backend."""
    p = _params(ctx)
    for name, factory in BACKENDS.items():
        rates: dict[str, list[float]] = {s: [] for s in SCENARIOS}
        async with factory() as backend:
            svc = QueueService(backend)
            n = 0
            for r in range(ctx.runs):
                order = SCENARIOS[r % len(SCENARIOS) :] + SCENARIOS[: r % len(SCENARIOS)]
                for scenario in order:
                    n += 1
                    rate = await _drain(svc, scenario, n, p["tasks"], p["time_limit"])
                    rates[scenario].append(rate)
                    ctx.log(f"routing {name} round {r + 1}: {scenario}: {rate:,.0f} tasks/s")
        base = median(rates["pull"])
        t = Table(
            f"routing on {name}: {p['tasks']:,} no-op tasks, {AGENTS} agents, median of {ctx.runs} run(s)",
            ["scenario", "claim+complete (tasks/s)", "ratio to pull"],
        )
        for scenario in SCENARIOS:
            value = median(rates[scenario])
            t.add(scenario, fmt_num(value), fmt_ratio(ratio(value, base)))
        t.notes.append(f"concurrency key: tasks spread over 2 keys, each limited to {AGENTS // 2} in progress")
        ctx.results[f"routing_{name}"] = {s: rates[s] for s in SCENARIOS}
        ctx.emit(t)
