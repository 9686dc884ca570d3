"""Suite ``dispatch`` (issue 3): claim+complete throughput and latencies, ours beside pgqueuer and
procrastinate on the same Postgres in the same command, plus the floor baselines.

Ours is measured twice for 4 and 16 agents: one task per call (``claim`` → ``complete``) and in
batches of 10 (``claim_many(limit=10)`` → ``complete_many``), the latter beside pgqueuer's
``batch_size=10``, which also takes 10 jobs per round trip.

Throughput figures are the median of ``runs`` interleaved rounds (each round runs every system once,
rotating which goes first). Latency samples of all rounds are pooled before taking p50/p99.
"""

from __future__ import annotations

import contextlib
import math
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
    valkey_prefix,
)
from bench.floor import pg_update_commits, rpush_rate
from bench.systems import OursSystem, PgqueuerSystem, ProcrastinateSystem, System

__all__ = ["run"]

AGENTS = (1, 4, 16)
#: agent counts for ours in batches (claim_many → complete_many), and the batch size (pgqueuer's too)
BATCH_AGENTS = (4, 16)
BATCH = 10
IDLE_AGENTS = 4


def _params(ctx: Context) -> dict[str, Any]:
    if ctx.quick:
        return {"tasks": 300, "time_limit": 5.0, "samples": 20, "floor_seconds": 0.5, "rpush": 5_000}
    return {"tasks": 5_000, "time_limit": 10.0, "samples": 100, "floor_seconds": 2.0, "rpush": 50_000}


async def run(ctx: Context) -> None:
    """Run the suite and print its tables."""
    p = _params(ctx)
    runs = ctx.runs
    per_run = max(1, math.ceil(p["samples"] / runs))
    drains: dict[str, dict[int, list[Any]]] = {}
    batched: dict[int, list[Any]] = {n: [] for n in BATCH_AGENTS}
    enqueue: dict[str, list[float]] = {}
    wake: dict[str, list[float]] = {}
    chain: dict[str, list[float]] = {}

    async with contextlib.AsyncExitStack() as stack:
        systems: list[System] = []
        for cls in (OursSystem, PgqueuerSystem, ProcrastinateSystem):
            ctx.log(f"dispatch: setting up {cls.name}")
            systems.append(await stack.enter_async_context(cls()))
        names = [s.name for s in systems]
        for s in names:
            drains[s] = {n: [] for n in AGENTS}
            enqueue[s], wake[s], chain[s] = [], [], []

        for r in range(runs):
            order = systems[r % len(systems) :] + systems[: r % len(systems)]
            for system in order:
                ctx.log(f"dispatch round {r + 1}/{runs}: {system.name} enqueue + drains")
                enqueue[system.name].append(await system.enqueue_rate(p["tasks"]))
                for n in AGENTS:
                    result = await system.drain(p["tasks"], n, p["time_limit"])
                    drains[system.name][n].append(result)
                    ctx.log(
                        f"  {system.name} {n:>2} agents: {result.done} tasks in {result.elapsed:.2f}s "
                        f"= {result.rate:,.0f}/s{' (time limit)' if result.stopped_early else ''}"
                    )
                if isinstance(system, OursSystem):
                    for n in BATCH_AGENTS:
                        result = await system.drain_batched(p["tasks"], n, p["time_limit"], BATCH)
                        batched[n].append(result)
                        ctx.log(
                            f"  ours {n:>2} agents, batches of {BATCH}: {result.done} tasks in {result.elapsed:.2f}s "
                            f"= {result.rate:,.0f}/s{' (time limit)' if result.stopped_early else ''}"
                        )
            for system in order:
                ctx.log(f"dispatch round {r + 1}/{runs}: {system.name} latencies")
                wake[system.name].extend(await system.wake(per_run, IDLE_AGENTS))
                chain[system.name].extend(await system.chain(per_run, IDLE_AGENTS))

    # floor baselines, on a database of their own
    ctx.log("dispatch: floor baselines")
    floor: dict[str, float] = {}
    async with fresh_database(migrate=False) as url, valkey_prefix() as prefix:
        for conns in (1, 4):
            floor[f"update_commits_{conns}conn"] = median(
                [await pg_update_commits(url, conns, p["floor_seconds"]) for _ in range(runs)]
            )
        floor["rpush_single"] = median(
            [await rpush_rate(prefix, p["rpush"] // 5, pipelined=False) for _ in range(runs)]
        )
        floor["rpush_pipelined"] = median([await rpush_rate(prefix, p["rpush"], pipelined=True) for _ in range(runs)])

    # -- tables ------------------------------------------------------------------------------
    rate = {s: {n: median(d.rate for d in drains[s][n]) for n in AGENTS} for s in names}
    stopped = {s: any(d.stopped_early for n in AGENTS for d in drains[s][n]) for s in names}
    batch_rate = {n: median(d.rate for d in batched[n]) for n in BATCH_AGENTS}
    stopped["ours"] = stopped["ours"] or any(d.stopped_early for n in BATCH_AGENTS for d in batched[n])
    t = Table(
        f"dispatch: {p['tasks']:,} no-op tasks, median of {runs} interleaved run(s)",
        ["figure", "ours", "pgqueuer", "procrastinate", "ours/pgq", "ours/procr"],
    )

    def add_rate(label: str, values: dict[str, float]) -> None:
        t.add(
            label,
            fmt_num(values["ours"]),
            fmt_num(values["pgqueuer"]),
            fmt_num(values["procrastinate"]),
            fmt_ratio(ratio(values["ours"], values["pgqueuer"])),
            fmt_ratio(ratio(values["ours"], values["procrastinate"])),
        )

    add_rate("enqueue, one batch call (tasks/s)", {s: median(enqueue[s]) for s in names})
    for n in AGENTS:
        add_rate(f"claim+complete, {n} agent{'s' if n > 1 else ''} (tasks/s)", {s: rate[s][n] for s in names})
    for n in BATCH_AGENTS:
        add_rate(
            f"claim+complete, {n} agents, batches of {BATCH} (ours) (tasks/s)",
            {"ours": batch_rate[n], "pgqueuer": rate["pgqueuer"][n], "procrastinate": rate["procrastinate"][n]},
        )

    def add_lat(label: str, samples: dict[str, list[float]], q: float) -> None:
        vals = {s: percentile(samples[s], q) for s in names}
        t.add(
            label,
            fmt_ms(vals["ours"]),
            fmt_ms(vals["pgqueuer"]),
            fmt_ms(vals["procrastinate"]),
            fmt_ratio(ratio(vals["ours"], vals["pgqueuer"])),
            fmt_ratio(ratio(vals["ours"], vals["procrastinate"])),
        )

    add_lat("idle enqueue→claimed p50 (ms)", wake, 50)
    add_lat("idle enqueue→claimed p99 (ms)", wake, 99)
    add_lat("parent done→child claimed p50 (ms)", chain, 50)
    add_lat("parent done→child claimed p99 (ms)", chain, 99)
    t.notes.append(
        "agents: ours = N coroutines claim→complete on one in-process QueueService; pgqueuer = N QueueManagers "
        f"(own connection each, batch_size={BATCH}); procrastinate = one worker, concurrency=N"
    )
    t.notes.append(
        f"batches of {BATCH} (ours): N coroutines claim_many(limit={BATCH}) → complete_many, beside the same "
        f"pgqueuer (batch_size={BATCH}) and procrastinate (no batch claim) figures as the rows above; the "
        "fair comparison with pgqueuer, which also takes 10 jobs per round trip"
    )
    t.notes.append(
        f"latencies: {IDLE_AGENTS} idle consumers, {len(wake['ours'])} samples pooled over the runs; ratios "
        "< 1× are better for latency, > 1× better for throughput"
    )
    t.notes.append(
        "chain: ours = child depends_on parent, timed from complete(parent); peers have no dependencies, so "
        "the parent's handler enqueues the child, timed from that enqueue call"
    )
    for s in names:
        if stopped[s]:
            t.notes.append(f"{s}: some drains hit the {p['time_limit']:.0f}s limit; rate = tasks done / time")
    ours4, pgq4 = rate["ours"][4], rate["pgqueuer"][4]
    t.notes.append(
        f"target (DESIGN §7): ours ≥ 1.5× pgqueuer → 4 agents {fmt_ratio(ratio(ours4, pgq4))} one by one, "
        f"{fmt_ratio(ratio(batch_rate[4], pgq4))} in batches of {BATCH}; idle p99 ≤ 2 ms → "
        f"{fmt_ms(percentile(wake['ours'], 99))} ms; chain p99 ≤ 5 ms → {fmt_ms(percentile(chain['ours'], 99))} ms"
    )
    ctx.emit(t)

    f = Table("dispatch floor: the services alone, same command", ["figure", "per second", "ours 4 agents / floor"])
    f.add("UPDATE 1 row, commit, 1 connection", fmt_num(floor["update_commits_1conn"]), "")
    f.add(
        "UPDATE 1 row, commit, 4 connections",
        fmt_num(floor["update_commits_4conn"]),
        fmt_ratio(ratio(ours4, floor["update_commits_4conn"] / 2)),
    )
    f.add("RPUSH, 1 connection, one by one", fmt_num(floor["rpush_single"]), "")
    f.add("RPUSH, pipelined 1,000", fmt_num(floor["rpush_pipelined"]), "")
    f.notes.append(
        "last column: ours at 4 agents against half the 4-connection commit rate (one commit per claim and one "
        "per completion caps a design there)"
    )
    ctx.emit(f)

    ctx.results["dispatch"] = {
        "params": p,
        "runs": runs,
        "enqueue_per_s": {s: enqueue[s] for s in names},
        "drain_per_s": {s: {str(n): [d.rate for d in drains[s][n]] for n in AGENTS} for s in names},
        "drain_done": {s: {str(n): [d.done for d in drains[s][n]] for n in AGENTS} for s in names},
        "ours_batched_per_s": {str(n): [d.rate for d in batched[n]] for n in BATCH_AGENTS},
        "ours_batched_done": {str(n): [d.done for d in batched[n]] for n in BATCH_AGENTS},
        "batch": BATCH,
        "wake_ms": {s: {"p50": percentile(wake[s], 50) * 1e3, "p99": percentile(wake[s], 99) * 1e3} for s in names},
        "chain_ms": {s: {"p50": percentile(chain[s], 50) * 1e3, "p99": percentile(chain[s], 99) * 1e3} for s in names},
        "floor_per_s": floor,
    }
