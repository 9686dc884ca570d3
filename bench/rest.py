"""Suite ``rest`` (issue 4): claim+complete through HTTP with 16 client agents against one and two
uvicorn replicas sharing one Postgres database and Valkey prefix, beside the in-process figure.

Replicas are ``queue-service serve`` subprocesses (the real command: orchestrator on, sync off,
configured through ``QUEUE_*`` variables including ``QUEUE_VALKEY_PREFIX``) on loopback ports.
Client agents are coroutines in this process, each looping ``POST …/claims`` →
``POST …/tasks/{key}/complete`` over a shared ``httpx.AsyncClient`` (keep-alive). With two replicas
the agents are split 8/8. Each round runs in-process, one replica and two replicas on fresh projects.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import (
    VALKEY_URL,
    Context,
    Table,
    fmt_ms,
    fmt_num,
    fmt_ratio,
    fresh_database,
    median,
    percentile,
    ratio,
    valkey_prefix,
)
from bench.systems import DrainResult, drain_project

__all__ = ["run"]

AGENTS = 16


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_command() -> list[str]:
    """``queue-service serve`` from this interpreter's environment, as ``python -m queue_service`` so
    that it imports the package from ``sys.path`` (``bench.ab`` puts a baseline tree first there)."""
    return [sys.executable, "-m", "queue_service", "serve"]


def _replica_env(url: str, prefix: str, port: int) -> dict[str, str]:
    """This environment without any queue configuration of its own, plus the replica's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUEUE_", "MOSAIC_"))}
    env.update(
        QUEUE_DATABASE_URL=url,
        QUEUE_VALKEY_URL=VALKEY_URL,
        QUEUE_VALKEY_PREFIX=prefix,
        QUEUE_HOST="127.0.0.1",
        QUEUE_PORT=str(port),
        QUEUE_SYNC="false",
        # the bench queues more than the default backpressure limit at once
        QUEUE_MAX_QUEUE_DEPTH="1000000",
        QUEUE_LOG_LEVEL="WARNING",
    )
    # bench.ab: stubs that hide a module (uvloop, httptools, …) from the replicas only
    replica_path = os.environ.get("BENCH_REPLICA_PYTHONPATH")
    if replica_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [replica_path, env.get("PYTHONPATH")]))
    return env


async def _start_replica(url: str, prefix: str) -> tuple[asyncio.subprocess.Process, str]:
    import httpx

    port = _free_port()
    proc = await asyncio.create_subprocess_exec(*_serve_command(), env=_replica_env(url, prefix, port))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(base_url=base) as client:
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"replica on port {port} exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/readyz")).status_code == 200:
                    return proc, base
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"replica on port {port} did not become ready")
            await asyncio.sleep(0.2)


async def _stop_replica(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _rest_drain(clients: list[Any], slug: str, time_limit: float) -> DrainResult:
    """AGENTS client agents spread over *clients* (one per replica), claim → complete until empty."""
    done = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + time_limit
    stopped = False

    async def agent(i: int) -> None:
        nonlocal done, stopped
        client = clients[i % len(clients)]
        body = {"agent": f"rest-agent-{i}-{uuid.uuid4().hex[:6]}"}
        while True:
            if time.perf_counter() > deadline:
                stopped = True
                return
            t = time.perf_counter()
            r = await client.post(f"/v1/projects/{slug}/claims", json=body)
            latencies.append(time.perf_counter() - t)
            if r.status_code == 204:
                return
            r.raise_for_status()
            claim = r.json()
            key, token = claim["task"]["key"], claim["lease"]["token"]
            c = await client.post(f"/v1/projects/{slug}/tasks/{key}/complete", json={"token": token})
            c.raise_for_status()
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(agent(i) for i in range(AGENTS)))
    return DrainResult(done, time.perf_counter() - t0, latencies, stopped)


async def run(ctx: Context) -> None:
    """Run the suite and print its table."""
    try:
        from queue_service.app import create_app  # noqa: F401 - the suite needs the app to exist
    except ImportError as exc:
        ctx.log(f"rest: skipped, queue_service.app.create_app is not importable: {exc}")
        return
    import httpx

    from queue_service.backend import DispatchConfig
    from queue_service.postgres.backend import PostgresValkeyBackend
    from queue_service.service import QueueService

    n, time_limit = (300, 5.0) if ctx.quick else (5_000, 10.0)
    modes = ("in-process", "1 replica", "2 replicas")
    results: dict[str, list[DrainResult]] = {m: [] for m in modes}
    cpu: dict[str, dict[str, list[float]]] = {m: {"bench process": [], "replicas": []} for m in modes}

    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(fresh_database())
        prefix = await stack.enter_async_context(valkey_prefix())
        backend = PostgresValkeyBackend(url, VALKEY_URL, DispatchConfig(max_queue_depth=1_000_000), key_prefix=prefix)
        await backend.open()
        stack.push_async_callback(backend.close)
        svc = QueueService(backend)
        ctx.log("rest: starting two replicas")
        replicas = []
        pids = []
        for _ in range(2):
            proc, base = await _start_replica(url, prefix)
            stack.push_async_callback(_stop_replica, proc)
            replicas.append(base)
            pids.append(proc.pid)
        limits = httpx.Limits(max_connections=AGENTS, max_keepalive_connections=AGENTS)
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=b, limits=limits, timeout=60)) for b in replicas
        ]

        for r in range(ctx.runs):
            order = list(modes[r % 3 :] + modes[: r % 3])
            for mode in order:
                slug = f"rest{r}-{uuid.uuid4().hex[:6]}"
                await svc.create_project({"slug": slug, "key_prefix": "R"})
                await svc.create_tasks(slug, [{"title": f"noop {i}"} for i in range(n)])
                # CPU per task: this process (agents; in-process also the backend) and the replicas
                before = (_cpu_seconds(os.getpid()), sum(_cpu_seconds(p) for p in pids))
                if mode == "in-process":
                    res = await drain_project(svc, slug, AGENTS, time_limit)
                else:
                    res = await _rest_drain(clients[: 1 if mode == "1 replica" else 2], slug, time_limit)
                after = (_cpu_seconds(os.getpid()), sum(_cpu_seconds(p) for p in pids))
                results[mode].append(res)
                if res.done:
                    cpu[mode]["bench process"].append((after[0] - before[0]) / res.done)
                    cpu[mode]["replicas"].append((after[1] - before[1]) / res.done)
                ctx.log(
                    f"rest round {r + 1}: {mode}: {res.done} in {res.elapsed:.2f}s = {res.rate:,.0f}/s"
                    f"{' (time limit)' if res.stopped_early else ''}"
                )

    rate = {m: median(x.rate for x in results[m]) for m in modes}
    lat = {m: [v for x in results[m] for v in x.claim_latencies] for m in modes}
    t = Table(
        f"rest: claim+complete, {AGENTS} agents, {n:,} no-op tasks; median of {ctx.runs} interleaved run(s)",
        ["figure", "in-process", "1 replica", "2 replicas", "1 rep/in-proc", "2 rep/in-proc"],
    )
    t.add(
        "claim+complete (tasks/s)",
        *(fmt_num(rate[m]) for m in modes),
        fmt_ratio(ratio(rate["1 replica"], rate["in-process"])),
        fmt_ratio(ratio(rate["2 replicas"], rate["in-process"])),
    )
    for q in (50, 99):
        vals = {m: percentile(lat[m], q) for m in modes}
        t.add(
            f"claim call p{q} (ms)",
            *(fmt_ms(vals[m]) for m in modes),
            fmt_ratio(ratio(vals["1 replica"], vals["in-process"])),
            fmt_ratio(ratio(vals["2 replicas"], vals["in-process"])),
        )
    for who in ("bench process", "replicas"):
        vals = {m: median(cpu[m][who]) for m in modes}
        t.add(
            f"CPU ms per task, {who}",
            *(fmt_ms(vals[m]) for m in modes),
            fmt_ratio(ratio(vals["1 replica"], vals["in-process"])) if who == "bench process" else "",
            fmt_ratio(ratio(vals["2 replicas"], vals["in-process"])) if who == "bench process" else "",
        )
    t.notes.append("target (DESIGN §7): REST ≥ 0.5× the in-process figure")
    t.notes.append(
        "CPU ms per task: the bench process runs the client agents (REST) or agents + backend (in-process); "
        "replicas = both uvicorn processes together (the idle one runs only its orchestrator)"
    )
    t.notes.append(
        "client agents, replicas, Postgres and Valkey all share this machine's cores; claim latency is the "
        "client-side time of one claim call (wait_seconds=0) under full load"
    )
    t.notes.append(
        "replicas: `queue-service serve` with QUEUE_DATABASE_URL, QUEUE_VALKEY_URL, QUEUE_VALKEY_PREFIX (the "
        "bench's own key space), QUEUE_SYNC=false, QUEUE_MAX_QUEUE_DEPTH=1000000"
    )
    for m in modes:
        if any(x.stopped_early for x in results[m]):
            t.notes.append(f"{m}: some drains hit the {time_limit:.0f}s limit; rate = tasks done / time")
    ctx.emit(t)
    ctx.results["rest"] = {
        "tasks": n,
        "per_s": {m: [x.rate for x in results[m]] for m in modes},
        "claim_ms": {m: {"p50": percentile(lat[m], 50) * 1e3, "p99": percentile(lat[m], 99) * 1e3} for m in modes},
        "cpu_s_per_task": cpu,
    }
