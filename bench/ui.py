"""Suite ``ui`` (issue 12): how long the dashboard's pages take to render in a project of 10,000
tasks, on flatfile and on Postgres+Valkey; the DAG of a 500-task mission (target: under a second).

Pages are fetched in-process over ASGI (no network), each the median of ``runs`` fetches after one
warm-up. The baseline, measured in the same run, is the JSON API's first page of 100 tasks.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from bench.common import VALKEY_URL, Context, Table, fmt_num, fmt_ratio, fresh_database, median, ratio, valkey_prefix
from queue_service.app import create_app
from queue_service.backend import Backend, DispatchConfig
from queue_service.settings import Settings

__all__ = ["run"]

PAGES = {
    "API: 100 tasks (JSON, baseline)": "/v1/projects/big/tasks?limit=100",
    "overview /ui/": "/ui/",
    "board /ui/p/big": "/ui/p/big",
    "board, text search": "/ui/p/big?q=needle",
    "board, role + 2 statuses": "/ui/p/big?role=r3&status=not-started&status=done",
    "dead letter": "/ui/p/big/dead-letter",
    "agents": "/ui/p/big/agents",
    "task page": "/ui/p/big/tasks/BIG-10",
    "DAG, 500-task mission": "/ui/p/big/missions/m500/dag",
}


async def _fill(backend: Backend, size: int, dag: int) -> None:
    from queue_service.service import QueueService

    svc = QueueService(backend)
    await svc.create_project({"slug": "big", "key_prefix": "BIG"})
    await svc.create_mission("big", {"id": "m500"})
    rng = random.Random(12)
    items: list[dict[str, Any]] = [
        {"title": f"task {i}" + (" needle" if i % 997 == 0 else ""), "role": f"r{i % 8}"} for i in range(size - dag)
    ]
    for i in range(0, len(items), 1000):
        await svc.create_tasks("big", items[i : i + 1000])
    mission: list[dict[str, Any]] = []
    for i in range(dag):
        deps = sorted({f"#{rng.randrange(i)}" for _ in range(min(i, rng.choice((1, 1, 2, 3))))})
        mission.append({"title": f"step {i}", "mission": "m500", "depends_on": deps})
    await svc.create_tasks("big", mission)


@contextlib.asynccontextmanager
async def _backends() -> AsyncIterator[list[tuple[str, Backend]]]:
    from flatfile.backend import FlatfileBackend
    from queue_service.postgres.backend import PostgresValkeyBackend

    config = DispatchConfig(max_queue_depth=1_000_000)
    async with contextlib.AsyncExitStack() as stack:
        data_dir = tempfile.mkdtemp(prefix="bench-ui-")
        stack.callback(shutil.rmtree, data_dir, ignore_errors=True)
        url = await stack.enter_async_context(fresh_database())
        prefix = await stack.enter_async_context(valkey_prefix())
        backends: list[tuple[str, Backend]] = [
            ("flatfile", FlatfileBackend(data_dir, config=config)),
            ("postgres+valkey", PostgresValkeyBackend(url, VALKEY_URL, config, key_prefix=prefix)),
        ]
        for _, backend in backends:
            await backend.open()
            stack.push_async_callback(backend.close)
        yield backends


async def run(ctx: Context) -> None:
    size, dag = (2000, 500) if ctx.quick else (10_000, 500)
    table = Table(
        f"UI pages, project of {size:,} tasks (ms, median of {ctx.runs}; ratio vs the JSON API page)",
        ["page", "flatfile ms", "ratio", "postgres+valkey ms", "ratio"],
    )
    figures: dict[str, dict[str, float]] = {}
    async with _backends() as backends:
        for name, backend in backends:
            ctx.log(f"ui: filling {size} tasks on {name}")
            await _fill(backend, size, dag)
            app = create_app(
                Settings(backend_url="memory://", orchestrator=False, sync=False, allowed_hosts="bench"), backend
            )
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as client,
            ):
                figures[name] = {}
                for label, path in PAGES.items():
                    times = []
                    for i in range(ctx.runs + 1):
                        t0 = time.perf_counter()
                        response = await client.get(path)
                        elapsed = time.perf_counter() - t0
                        if response.status_code != 200:
                            raise RuntimeError(f"{path}: {response.status_code} {response.text[:200]}")
                        if i:
                            times.append(elapsed * 1000)
                    figures[name][label] = median(times)
    base = {n: figures[n][next(iter(PAGES))] for n in figures}
    for label in PAGES:
        ff, pg = figures["flatfile"][label], figures["postgres+valkey"][label]
        table.add(
            label,
            fmt_num(ff, 1),
            fmt_ratio(ratio(ff, base["flatfile"])),
            fmt_num(pg, 1),
            fmt_ratio(ratio(pg, base["postgres+valkey"])),
        )
    table.notes.append(f"DAG target: under 1000 ms for {dag} tasks; the board reads ≤50 cards per column")
    ctx.results["ui"] = {"size": size, "dag": dag, "ms": figures}
    ctx.emit(table)
