"""Suite ``peers`` (issue 15): ours beside pgqueuer and Celery, each run the way its docs recommend, in
one command, every figure as a ratio to pgqueuer measured in the same run.

Systems (each on its own database / key prefix of the same Postgres 15 and Redis 7):

* **pgqueuer**: ``Queries.enqueue`` one job per call (W1); four ``QueueManager`` s, each on its own
  asyncpg connection with pgqueuer's defaults (``batch_size=10``), for W2/W3.
* **Celery**: ``task.delay()`` one per call (W1); ``celery worker --concurrency=4`` (default prefork
  pool, Redis broker, no result backend) for W2/W3 (``bench/peer_celery.py``).
* **ours, in process**: ``QueueService`` over Postgres + Valkey in this process.
* **ours, REST**: one ``queue-service serve`` replica, the typed client, four of its worker helpers.
* **ours, flatfile**: the embedded default (one directory, no servers), in process.

Workloads (``--tasks`` no-op tasks, default 5,000; 4 worker slots everywhere):

* **W1** enqueue, one task per call, one producer (tasks/s);
* **W2** drain a backlog of ``--tasks`` with the default worker (tasks/s);
* **W3** idle wake-up: consumers idle, one task enqueued at a time, start of the enqueue call → a
  consumer holds it (p50/p99 ms); parent done → child claimed (p99 ms; ours: the child
  ``depends_on`` the parent; the peers' parent handler enqueues the child);
* flatfile W2 in a project of 100 tasks against one of 10,000;
* the **floor**: single-row ``UPDATE`` commits/s from 4 connections, in every round.

Throughputs are the median of ``--runs`` interleaved rounds (each round runs every system once,
rotating who goes first); W1/W2 stop after ``time_limit`` seconds (rate = tasks done / time).
Latency samples of all rounds are pooled before p50/p99 are taken.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Any

from bench.common import (
    Context,
    Table,
    fmt_ms,
    fmt_num,
    fmt_ratio,
    fresh_database,
    median,
    percentile,
    ratio,
)
from bench.floor import pg_update_commits
from bench.peer_celery import CelerySystem
from bench.peer_ours import SLOTS, OursFlatfile, OursInProcess, OursRest
from bench.rest import _cpu_seconds
from bench.systems import DrainResult, PgqueuerSystem

__all__ = ["run"]

#: column order: the peers first, then ours
ORDER = ("pgqueuer", "celery", "ours", "rest", "flatfile")
LABELS = {
    "pgqueuer": "pgqueuer",
    "celery": "Celery",
    "ours": "ours in-proc",
    "rest": "ours REST",
    "flatfile": "ours flatfile",
}


class PgqueuerPeer(PgqueuerSystem):
    """pgqueuer with the suite's workload names; four managers stand for four worker slots."""

    async def w1(self, n: int, time_limit: float) -> DrainResult:
        deadline = time.perf_counter() + time_limit
        t0 = time.perf_counter()
        done = 0
        while done < n and time.perf_counter() < deadline:
            await self.queries.enqueue("w1", None)
            done += 1
        result = DrainResult(done, time.perf_counter() - t0, stopped_early=done < n)
        await self.queries.clear_queue("w1")
        return result

    async def w2(self, n: int, time_limit: float) -> DrainResult:
        return await self.drain(n, SLOTS, time_limit)

    async def w3_wake(self, samples: int) -> list[float]:
        return await self.wake(samples, SLOTS)

    async def w3_chain(self, samples: int) -> list[float]:
        return await self.chain(samples, SLOTS)


def _params(ctx: Context) -> dict[str, Any]:
    quick = ctx.quick
    return {
        "tasks": ctx.tasks or (300 if quick else 5_000),
        "time_limit": 5.0 if quick else 10.0,
        "samples": ctx.samples or (30 if quick else 200),
        "flat_small": 100,
        "flat_big": 2_000 if quick else 10_000,
        "flat_drained": 100 if quick else 500,
        "floor_seconds": 0.5 if quick else 2.0,
    }


async def run(ctx: Context) -> None:
    """Run the suite and print its tables."""
    p = _params(ctx)
    runs = ctx.runs
    per_run = max(1, math.ceil(p["samples"] / runs))
    w1: dict[str, list[DrainResult]] = {s: [] for s in ORDER}
    w2: dict[str, list[DrainResult]] = {s: [] for s in ORDER}
    wake: dict[str, list[float]] = {s: [] for s in ORDER}
    chain: dict[str, list[float]] = {s: [] for s in ORDER}
    w2_cpu: dict[str, list[float]] = {"ours": [], "rest client": [], "rest server": [], "flatfile": []}
    batched: list[DrainResult] = []
    flat_sized: dict[str, list[DrainResult]] = {"small": [], "big": []}
    floor: list[float] = []

    active = [s for s in ORDER if ctx.systems is None or s in ctx.systems]
    async with contextlib.AsyncExitStack() as stack:
        systems: dict[str, Any] = {}
        classes = {
            "pgqueuer": PgqueuerPeer,
            "celery": CelerySystem,
            "ours": OursInProcess,
            "rest": OursRest,
            "flatfile": OursFlatfile,
        }
        for name in active:
            ctx.log(f"peers: setting up {name}")
            systems[name] = await stack.enter_async_context(classes[name]())
        floor_url = await stack.enter_async_context(fresh_database(migrate=False))
        rest_pid = systems["rest"].pid if "rest" in systems else os.getpid()

        for r in range(runs):
            order = active[r % len(active) :] + active[: r % len(active)]
            for name in order:
                system = systems[name]
                res = await system.w1(p["tasks"], p["time_limit"])
                w1[name].append(res)
                ctx.log(f"peers round {r + 1}/{runs}: {name} W1 {res.done} in {res.elapsed:.2f}s = {res.rate:,.0f}/s")
                before = (time.process_time(), _cpu_seconds(rest_pid))
                res = await system.w2(p["tasks"], p["time_limit"])
                after = (time.process_time(), _cpu_seconds(rest_pid))
                w2[name].append(res)
                if res.done and name in ("ours", "flatfile"):
                    w2_cpu[name].append((after[0] - before[0]) / res.done)
                elif res.done and name == "rest":
                    w2_cpu["rest client"].append((after[0] - before[0]) / res.done)
                    w2_cpu["rest server"].append((after[1] - before[1]) / res.done)
                ctx.log(
                    f"peers round {r + 1}/{runs}: {name} W2 {res.done} in {res.elapsed:.2f}s = {res.rate:,.0f}/s"
                    f"{' (time limit)' if res.stopped_early else ''}"
                )
                if name == "ours":
                    res = await system.w2_batched(p["tasks"], p["time_limit"])
                    batched.append(res)
                    ctx.log(f"  ours W2 claim_many(10)/complete_many: {res.rate:,.0f}/s")
                if name == "flatfile":
                    for size, key, drained in (
                        (p["flat_small"], "small", p["flat_small"]),
                        (p["flat_big"], "big", p["flat_drained"]),
                    ):
                        res = await system.w2_sized(size, drained, p["time_limit"])
                        flat_sized[key].append(res)
                        ctx.log(f"  flatfile W2 at {size:,} tasks: {res.rate:,.0f}/s")
            floor.append(await pg_update_commits(floor_url, 4, p["floor_seconds"]))
            ctx.log(f"peers round {r + 1}/{runs}: floor {floor[-1]:,.0f} commits/s (4 connections)")
            for name in order:
                system = systems[name]
                wake[name].extend(await system.w3_wake(per_run))
                chain[name].extend(await system.w3_chain(per_run))
                ctx.log(
                    f"peers round {r + 1}/{runs}: {name} W3 wake p50 {percentile(wake[name], 50) * 1e3:.2f} ms, "
                    f"chain p50 {percentile(chain[name], 50) * 1e3:.2f} ms"
                )

    _tables(ctx, p, runs, w1, w2, wake, chain, w2_cpu, batched, flat_sized, floor)


def _tables(
    ctx: Context,
    p: dict[str, Any],
    runs: int,
    w1: dict[str, list[DrainResult]],
    w2: dict[str, list[DrainResult]],
    wake: dict[str, list[float]],
    chain: dict[str, list[float]],
    w2_cpu: dict[str, list[float]],
    batched: list[DrainResult],
    flat_sized: dict[str, list[DrainResult]],
    floor: list[float],
) -> None:
    rate1 = {s: median(d.rate for d in w1[s]) for s in ORDER}
    rate2 = {s: median(d.rate for d in w2[s]) for s in ORDER}
    lat = {
        (kind, q): {s: percentile(samples[s], q) for s in ORDER}
        for kind, samples in (("wake", wake), ("chain", chain))
        for q in (50, 99)
    }
    others = [s for s in ORDER if s != "pgqueuer"]
    t = Table(
        f"peers: {p['tasks']:,} no-op tasks, {SLOTS} worker slots, median of {runs} interleaved run(s); "
        "ratios ÷ pgqueuer",
        ["figure", *(LABELS[s] for s in ORDER), *(f"{LABELS[s]} ÷ pgq" for s in others)],
    )

    def row(label: str, values: dict[str, float], fmt: Any) -> None:
        t.add(
            label, *(fmt(values[s]) for s in ORDER), *(fmt_ratio(ratio(values[s], values["pgqueuer"])) for s in others)
        )

    row("W1 enqueue, one per call (tasks/s)", rate1, fmt_num)
    row("W2 drain, default worker (tasks/s)", rate2, fmt_num)
    row("W3 idle enqueue→claimed p50 (ms)", lat[("wake", 50)], fmt_ms)
    row("W3 idle enqueue→claimed p99 (ms)", lat[("wake", 99)], fmt_ms)
    row("W3 parent done→child claimed p50 (ms)", lat[("chain", 50)], fmt_ms)
    row("W3 parent done→child claimed p99 (ms)", lat[("chain", 99)], fmt_ms)
    batched_rate = median(d.rate for d in batched)
    if batched:
        t.notes.append(
            f"ours in-proc W2 with claim_many(10) → complete_many (not the default): {fmt_num(batched_rate)} "
            f"tasks/s = {fmt_ratio(ratio(batched_rate, rate2['pgqueuer']))} pgqueuer"
        )
    cpu = {k: median(v) for k, v in w2_cpu.items()}
    t.notes.append(
        f"W2 CPU ms per task: in-proc {fmt_ms(cpu['ours'])}, flatfile {fmt_ms(cpu['flatfile'])}, REST client "
        f"{fmt_ms(cpu['rest client'])} + server {fmt_ms(cpu['rest server'])}"
    )
    t.notes.append(
        "W2 workers: pgqueuer 4 QueueManagers (batch_size=10, own connection each); Celery prefork "
        "--concurrency=4; ours in-proc and flatfile one local_worker(concurrency=4), REST one "
        "AsyncClient.worker(concurrency=4) (trees without them: 4 agents claim → complete / 4 one-slot workers)"
    )
    t.notes.append(
        f"W3: {SLOTS} idle consumers, {len(wake['ours'])} samples pooled; ratios < 1× are better for latency"
    )
    for s in ORDER:
        if any(d.stopped_early for d in [*w1[s], *w2[s]]):
            t.notes.append(f"{LABELS[s]}: some W1/W2 runs hit the {p['time_limit']:.0f}s limit; rate = done / time")
    ctx.emit(t)

    small = median(d.rate for d in flat_sized["small"])
    big = median(d.rate for d in flat_sized["big"])
    floor_rate = median(floor)
    targets = Table(
        "peers: issue 15 targets, from the table above",
        ["target", "required", "measured", "met"],
    )

    def target(label: str, required: str, value: float, ok: bool, fmt: Any = fmt_ratio) -> None:
        targets.add(label, required, fmt(value), "—" if math.isnan(value) else ("yes" if ok else "NO"))

    r = ratio(rate1["ours"], rate1["pgqueuer"])
    target("W1 in process ÷ pgqueuer", "≥ 1.50×", r, r >= 1.5)
    r = ratio(rate1["rest"], rate1["ours"])
    target("W1 REST ÷ in process", "≥ 0.50×", r, r >= 0.5)
    r = ratio(rate2["ours"], rate2["pgqueuer"])
    target("W2 in process ÷ pgqueuer", "≥ 1.50×", r, r >= 1.5)
    r = ratio(rate2["rest"], rate2["pgqueuer"])
    target("W2 REST worker helper ÷ pgqueuer", "≥ 1.50×", r, r >= 1.5)
    r = ratio(rate2["rest"], rate2["ours"])
    target("W2 REST ÷ in process", "≥ 0.50×", r, r >= 0.5)
    v = lat[("wake", 99)]["ours"]
    target("W3 wake-up p99 in process (ms)", "≤ 2", v, v <= 0.002, fmt_ms)
    v = lat[("wake", 99)]["rest"]
    target("W3 wake-up p99 REST (ms)", "≤ 5", v, v <= 0.005, fmt_ms)
    v = lat[("chain", 99)]["ours"]
    target("W3 parent done → child claimed p99 in process (ms)", "≤ 5", v, v <= 0.005, fmt_ms)
    # per round, then the median: the two sizes run back to back, the rounds minutes apart
    r = median(ratio(a.rate, b.rate) for a, b in zip(flat_sized["small"], flat_sized["big"], strict=False))
    target(f"flatfile W2 at {p['flat_small']:,} ÷ at {p['flat_big']:,}", "≤ 2.00×", r, r <= 2)
    r = ratio(rate1["flatfile"], rate1["pgqueuer"])
    target("flatfile W1 ÷ pgqueuer", "≥ 1.00×", r, r >= 1)
    r = ratio(rate2["flatfile"], rate2["pgqueuer"])
    target("flatfile W2 ÷ pgqueuer", "≥ 1.00×", r, r >= 1)
    targets.notes.append(
        f"flatfile W2: {fmt_num(small)} tasks/s in a project of {p['flat_small']:,}, {fmt_num(big)} in one of "
        f"{p['flat_big']:,} ({p['flat_drained']:,} drained), {SLOTS} agents in process; the ratio is the median of "
        "the rounds' ratios"
    )
    targets.notes.append(
        f"floor: single-row UPDATE commits/s from 4 connections, same run: {fmt_num(floor_rate)}; "
        f"pgqueuer W2 = {fmt_ratio(ratio(rate2['pgqueuer'], floor_rate))} of it, ours in-proc "
        f"{fmt_ratio(ratio(rate2['ours'], floor_rate))}, ours W1 {fmt_ratio(ratio(rate1['ours'], floor_rate))} "
        "(one commit per claim and one per completion cap a one-task-per-call design at half the floor)"
    )
    ctx.emit(targets)
    ctx.results["peers"] = {
        "params": p,
        "runs": runs,
        "w1_per_s": {s: [d.rate for d in w1[s]] for s in ORDER},
        "w2_per_s": {s: [d.rate for d in w2[s]] for s in ORDER},
        "w2_done": {s: [d.done for d in w2[s]] for s in ORDER},
        "w2_cpu_ms_per_task": {k: [x * 1e3 for x in v] for k, v in w2_cpu.items()},
        "ours_batched_per_s": [d.rate for d in batched],
        "wake_samples_ms": {s: [x * 1e3 for x in wake[s]] for s in ORDER},
        "chain_samples_ms": {s: [x * 1e3 for x in chain[s]] for s in ORDER},
        "wake_ms": {s: {"p50": lat[("wake", 50)][s] * 1e3, "p99": lat[("wake", 99)][s] * 1e3} for s in ORDER},
        "chain_ms": {s: {"p50": lat[("chain", 50)][s] * 1e3, "p99": lat[("chain", 99)][s] * 1e3} for s in ORDER},
        "flatfile_sized_per_s": {k: [d.rate for d in v] for k, v in flat_sized.items()},
        "floor_update_commits_4conn": floor,
        "pid": os.getpid(),
    }
