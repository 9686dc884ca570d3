"""Suite ``records`` (issue 2 baseline): batch-create a layered dependency graph, then list/filter queries.

The graph: ``layers`` × ``width`` tasks (10 × 1,000 by default), each task of layer *k* > 0 depending
on 1–3 random tasks of layer *k*-1 (``#i`` references inside the one batch), four roles, ten labels,
random priorities (seeded, identical on every backend). It is created with one
``QueueService.create_tasks`` call (one transaction) on Postgres+Valkey, flatfile and in-memory.

Baseline beside the Postgres figure: the same rows (tasks and dependency edges) inserted with raw
asyncpg ``executemany`` into two bare tables with no checks, in one transaction — the floor for any
store that writes each task as a row.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from bench.common import (
    VALKEY_URL,
    Context,
    Table,
    asyncpg_dsn,
    fmt_ms,
    fmt_num,
    fmt_ratio,
    fresh_database,
    median,
    percentile,
    ratio,
    valkey_prefix,
)

__all__ = ["layered_graph", "run"]

ROLES = ("backend", "frontend", "qa", "ops")
LABELS = tuple(f"l{i}" for i in range(10))
PRIORITIES = ("P0", "P1", "P2", "P3")


def layered_graph(layers: int, width: int, seed: int = 7) -> list[dict[str, Any]]:
    """TaskCreate dicts: *layers* × *width* tasks, each depending on 1–3 tasks of the layer before."""
    rng = random.Random(seed)
    items: list[dict[str, Any]] = []
    for layer in range(layers):
        for j in range(width):
            i = layer * width + j
            deps: list[str] = []
            if layer:
                prev = range((layer - 1) * width, layer * width)
                deps = [f"#{d}" for d in sorted(rng.sample(prev, rng.randint(1, 3)))]
            items.append(
                {
                    "title": f"task {i} (layer {layer})",
                    "role": ROLES[i % len(ROLES)],
                    "priority": rng.choice(PRIORITIES),
                    "labels": sorted({rng.choice(LABELS), rng.choice(LABELS)}),
                    "depends_on": deps,
                }
            )
    return items


async def _floor_insert(url: str, items: list[dict[str, Any]]) -> float:
    """Seconds to insert the same tasks + edges with raw asyncpg executemany in one transaction."""
    import asyncpg

    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        table = f"floor_{uuid.uuid4().hex[:8]}"
        await conn.execute(
            f"CREATE TABLE {table}_t (id bigint PRIMARY KEY, key text UNIQUE, title text, role text, "
            f"priority text, labels text[], status text)"
        )
        await conn.execute(f"CREATE TABLE {table}_d (task bigint, dep bigint, PRIMARY KEY (task, dep))")
        rows = [
            (i, f"F-{i + 1}", it["title"], it["role"], it["priority"], it["labels"], "not-started")
            for i, it in enumerate(items)
        ]
        edges = [(i, int(d[1:])) for i, it in enumerate(items) for d in it["depends_on"]]
        t0 = time.perf_counter()
        async with conn.transaction():
            await conn.executemany(f"INSERT INTO {table}_t VALUES ($1, $2, $3, $4, $5, $6, $7)", rows)
            await conn.executemany(f"INSERT INTO {table}_d VALUES ($1, $2)", edges)
        elapsed = time.perf_counter() - t0
        await conn.execute(f"DROP TABLE {table}_t, {table}_d")
        return elapsed
    finally:
        await conn.close()


async def _analyze(url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def _queries(svc: Any, slug: str, keys: list[str]) -> dict[str, Callable[[], Awaitable[Any]]]:
    rng = random.Random(11)
    sample = rng.sample(keys, min(100, len(keys)))
    return {
        "list status=not-started, page of 100": lambda: svc.list_tasks(slug, {"status": ["not-started"]}, 100),
        "list role=qa, page of 100": lambda: svc.list_tasks(slug, {"role": "qa"}, 100),
        "list label=l3, page of 100": lambda: svc.list_tasks(slug, {"label": "l3"}, 100),
        "list ready=true, page of 100": lambda: svc.list_tasks(slug, {"ready": True}, 100),
        "list ready=true, page 3 (cursor)": lambda: _third_page(svc, slug),
        "get_tasks, 100 keys": lambda: svc.get_tasks(slug, sample),
        "stats": lambda: svc.stats(slug),
    }


async def _third_page(svc: Any, slug: str) -> Any:
    page = await svc.list_tasks(slug, {"ready": True}, 100)
    page = await svc.list_tasks(slug, {"ready": True}, 100, page.next_cursor)
    return await svc.list_tasks(slug, {"ready": True}, 100, page.next_cursor)


async def run(ctx: Context) -> None:
    """Run the suite and print its tables."""
    from flatfile.backend import FlatfileBackend
    from queue_service.backend import DispatchConfig
    from queue_service.postgres.backend import PostgresValkeyBackend
    from queue_service.service import QueueService
    from queue_service.testing import InMemoryBackend

    layers, width, reps = (4, 100, 5) if ctx.quick else (10, 1_000, 30)
    total = layers * width
    items = layered_graph(layers, width)
    config = DispatchConfig(max_queue_depth=1_000_000)
    create: dict[str, list[float]] = {"postgres": [], "flatfile": [], "memory": [], "floor": []}
    query_times: dict[str, dict[str, list[float]]] = {}

    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(fresh_database())
        prefix = await stack.enter_async_context(valkey_prefix())
        data_dir = tempfile.mkdtemp(prefix="bench-flatfile-")
        stack.callback(shutil.rmtree, data_dir, ignore_errors=True)
        backends = {
            "postgres": PostgresValkeyBackend(url, VALKEY_URL, config, key_prefix=prefix),
            "flatfile": FlatfileBackend(data_dir, config=config),
            "memory": InMemoryBackend(config=config),
        }
        services = {}
        for name, backend in backends.items():
            await backend.open()
            stack.push_async_callback(backend.close)
            services[name] = QueueService(backend)

        last: dict[str, tuple[str, list[str]]] = {}
        for r in range(ctx.runs):
            names = list(backends)
            names = names[r % 3 :] + names[: r % 3]
            for name in names:
                svc = services[name]
                slug = f"rec{r}-{uuid.uuid4().hex[:6]}"
                await svc.create_project({"slug": slug, "key_prefix": "R"})
                t0 = time.perf_counter()
                tasks = await svc.create_tasks(slug, items)
                create[name].append(time.perf_counter() - t0)
                last[name] = (slug, [t.key for t in tasks])
                ctx.log(f"records round {r + 1}: {name} created {len(tasks):,} in {create[name][-1]:.2f}s")
            create["floor"].append(await _floor_insert(url, items))

        queries = {name: _queries(services[name], *last[name]) for name in backends}
        for name in backends:
            query_times[name] = {q: [] for q in queries[name]}
        for name in backends:  # warm-up (first-use caches, prepared statements)
            for fn in queries[name].values():
                await fn()
        ctx.log(f"records: {reps} repetitions of {len(queries['postgres'])} queries on 3 backends")
        for _ in range(reps):
            for name in backends:
                for q, fn in queries[name].items():
                    t0 = time.perf_counter()
                    await fn()
                    query_times[name][q].append(time.perf_counter() - t0)
        # Right after a big batch the planner has no statistics for the new rows (autovacuum analyzes
        # later); the same queries once ANALYZE ran show what a settled database does.
        await _analyze(url)
        queries["postgres (analyzed)"] = queries["postgres"]
        query_times["postgres (analyzed)"] = {q: [] for q in queries["postgres"]}
        for fn in queries["postgres"].values():
            await fn()
        for _ in range(reps):
            for q, fn in queries["postgres"].items():
                t0 = time.perf_counter()
                await fn()
                query_times["postgres (analyzed)"][q].append(time.perf_counter() - t0)

    rates = {name: median(total / s for s in secs) for name, secs in create.items()}
    t = Table(
        f"records: batch-create {total:,} tasks ({layers} layers × {width:,}, 1–3 deps each), one transaction; "
        f"median of {ctx.runs}",
        ["figure", "postgres", "flatfile", "memory", "pg floor", "pg/floor"],
    )
    t.add(
        "batch create (tasks/s)",
        fmt_num(rates["postgres"]),
        fmt_num(rates["flatfile"]),
        fmt_num(rates["memory"]),
        fmt_num(rates["floor"]),
        fmt_ratio(ratio(rates["postgres"], rates["floor"])),
    )
    t.add(
        "batch create (s)",
        f"{median(create['postgres']):.2f}",
        f"{median(create['flatfile']):.2f}",
        f"{median(create['memory']):.2f}",
        f"{median(create['floor']):.2f}",
        "",
    )
    t.notes.append(
        "pg floor: the same task rows + dependency edges via raw asyncpg executemany into two bare tables "
        "(no validation, keys, events, readiness or Valkey), one transaction, same database"
    )
    ctx.emit(t)

    qt = Table(
        f"records: queries on the {total:,}-task project, ms p50 over {reps} repetitions (p99 in brackets)",
        ["query", "postgres", "pg analyzed", "flatfile", "memory"],
    )
    for name in query_times["postgres"]:
        cells = []
        for bname in ("postgres", "postgres (analyzed)", "flatfile", "memory"):
            vals = query_times[bname][name]
            cells.append(f"{fmt_ms(percentile(vals, 50))} ({fmt_ms(percentile(vals, 99))})")
        qt.add(name, *cells)
    qt.notes.append("through QueueService (validation included); postgres stats includes the Valkey queue depths")
    qt.notes.append(
        "postgres: right after the batch (no planner statistics for the new rows yet); pg analyzed: the same "
        "queries after ANALYZE, as once autovacuum has run"
    )
    ctx.emit(qt)

    ctx.results["records"] = {
        "tasks": total,
        "create_seconds": create,
        "create_per_s": rates,
        "query_ms_p50": {b: {name: percentile(v, 50) * 1e3 for name, v in qs.items()} for b, qs in query_times.items()},
    }
