"""Task output streams (issue 14): chunks/s and publish→read latency, beside a bare Valkey loop.

For 1 and 16 concurrent streams, each stream has one publisher (the lease holder, publishing one
chunk per call, as an agent streaming tokens does) and one live follower. Every chunk carries its
publish time; the follower records when it got it. Measured through :class:`QueueService`
(``publish`` checks and renews the lease, ``follow_stream`` replays then follows) on:

* Postgres+Valkey (Valkey Streams: a Lua ``XADD MAXLEN ~`` + ``EXPIRE`` per publish, followers in
  ``XREAD BLOCK``; the lease check and renewal is a Postgres ``UPDATE`` plus a Valkey lock extension),
* flatfile (an append-only file per stream under ``flock``; followers poll the file size),

and, in the same run with the same counts, a **bare Valkey loop**: ``XADD`` one chunk per call,
followers in ``XREAD BLOCK`` from the last id — no lease check, no validation, no retention script.
The table gives chunks/s (all streams together, first publish to last chunk read) and the p50/p99
publish→read latency, each with its ratio to the bare loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
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

__all__ = ["run"]

CONCURRENCY = (1, 16)
#: a chunk the size of a log line or a few LLM tokens
_PAD = "x" * 48


class Sample:
    """One measured round: throughput and every chunk's latency."""

    def __init__(self, chunks: int, seconds: float, latencies: list[float]) -> None:
        self.chunks_per_s = chunks / seconds if seconds > 0 else float("nan")
        self.p50 = percentile(latencies, 50)
        self.p99 = percentile(latencies, 99)


async def _round(
    streams: int,
    per_stream: int,
    publish: Callable[[int, str], Awaitable[None]],
    follow: Callable[[int, Callable[[str], bool]], Awaitable[None]],
) -> Sample:
    """Start a follower per stream, then publish *per_stream* chunks to each; wait for all reads."""
    latencies: list[float] = []
    started = asyncio.Event()
    ready = 0

    def on_chunk_factory() -> Callable[[str], bool]:
        got = 0

        def on_chunk(text: str) -> bool:
            nonlocal got
            now = time.perf_counter()
            latencies.append(now - float(text.split(" ", 1)[0]))
            got += 1
            return got >= per_stream

        return on_chunk

    async def reader(i: int) -> None:
        nonlocal ready
        ready += 1
        if ready == streams:
            started.set()
        await follow(i, on_chunk_factory())

    readers = [asyncio.create_task(reader(i)) for i in range(streams)]
    await started.wait()
    await asyncio.sleep(0.05)  # followers are blocked waiting before the first chunk

    async def writer(i: int) -> None:
        for _ in range(per_stream):
            await publish(i, f"{time.perf_counter():.9f} {_PAD}")

    t0 = time.perf_counter()
    await asyncio.gather(*(writer(i) for i in range(streams)))
    await asyncio.wait_for(asyncio.gather(*readers), 300)
    return Sample(streams * per_stream, time.perf_counter() - t0, latencies)


async def _ours(svc: Any, project: str, streams: int, per_stream: int) -> Sample:
    """One round through QueueService on whatever backend *svc* has."""
    await svc.create_tasks(project, [{"title": f"s{i}"} for i in range(streams)])
    claims = await svc.claim_many(project, "bench", limit=streams, lease_seconds=600)
    assert len(claims) == streams, "bench: could not claim every stream's task"
    keys = [c.task.key for c in claims]
    tokens = [c.lease.token for c in claims]

    async def publish(i: int, text: str) -> None:
        await svc.publish(project, keys[i], [text], tokens[i])

    async def follow(i: int, on_chunk: Callable[[str], bool]) -> None:
        items = await svc.follow_stream(project, keys[i], idle_seconds=60)
        async with contextlib.aclosing(items) as it:
            async for item in it:
                if item is not None and not item.done and on_chunk(item.chunk):
                    return

    try:
        return await _round(streams, per_stream, publish, follow)
    finally:
        for key, token in zip(keys, tokens, strict=True):
            await svc.complete(project, key, token)


async def _bare(prefix: str, streams: int, per_stream: int) -> Sample:
    """The same round as plain ``XADD``/``XREAD BLOCK`` on Valkey."""
    import redis.asyncio as redis

    run_id = uuid.uuid4().hex[:8]
    writer: Any = redis.Redis.from_url(VALKEY_URL, decode_responses=True, max_connections=64)
    readers: Any = redis.Redis(
        connection_pool=redis.BlockingConnectionPool.from_url(
            VALKEY_URL, decode_responses=True, max_connections=streams + 1, timeout=None
        )
    )
    names = [f"{prefix}:bare:{run_id}:{i}" for i in range(streams)]

    async def publish(i: int, text: str) -> None:
        await writer.xadd(names[i], {"c": text})

    async def follow(i: int, on_chunk: Callable[[str], bool]) -> None:
        last = "0"
        while True:
            got = await readers.xread({names[i]: last}, count=1000, block=60_000)
            for _name, entries in got or ():
                for entry_id, fields in entries:
                    last = entry_id
                    if on_chunk(fields["c"]):
                        return

    try:
        return await _round(streams, per_stream, publish, follow)
    finally:
        await writer.delete(*names)
        await writer.aclose()
        await readers.aclose()


async def run(ctx: Context) -> None:
    """Run the suite and print its table."""
    from flatfile.backend import FlatfileBackend
    from queue_service.backend import DispatchConfig
    from queue_service.postgres.backend import PostgresValkeyBackend
    from queue_service.service import QueueService

    total = 600 if ctx.quick else 4_000
    config = DispatchConfig(max_queue_depth=1_000_000)
    systems = ("postgres+valkey", "flatfile", "bare valkey")
    samples: dict[tuple[str, int], list[Sample]] = {(s, n): [] for s in systems for n in CONCURRENCY}

    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(fresh_database())
        prefix = await stack.enter_async_context(valkey_prefix())
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qs-bench-streams-")))
        backends = {
            "postgres+valkey": PostgresValkeyBackend(url, VALKEY_URL, config, key_prefix=prefix),
            "flatfile": FlatfileBackend(data_dir, config=config),
        }
        services = {}
        for name, backend in backends.items():
            await backend.open()
            stack.push_async_callback(backend.close)
            services[name] = QueueService(backend)
            await services[name].create_project({"slug": "bench", "key_prefix": "B"})
        for r in range(ctx.runs):
            for streams in CONCURRENCY:
                per_stream = max(50, total // streams)
                # interleaved, rotating order: no system always runs on a warmer (or hotter) machine
                order = list(systems[r % 3 :] + systems[: r % 3])
                for system in order:
                    ctx.log(f"streams: run {r + 1}, {streams} stream(s), {system}")
                    if system == "bare valkey":
                        sample = await _bare(prefix, streams, per_stream)
                    else:
                        sample = await _ours(services[system], "bench", streams, per_stream)
                    samples[(system, streams)].append(sample)

    table = Table(
        f"Task output streams: {total:,} chunks per round, one chunk per publish, a live follower per stream "
        f"(median of {ctx.runs} run(s))",
        ["system", "streams", "chunks/s", "vs bare", "p50 ms", "vs bare", "p99 ms", "vs bare"],
    )
    results: dict[str, Any] = {}
    for streams in CONCURRENCY:
        bare = samples[("bare valkey", streams)]
        b_rate = median(s.chunks_per_s for s in bare)
        b_p50 = median(s.p50 for s in bare)
        b_p99 = median(s.p99 for s in bare)
        for system in systems:
            got = samples[(system, streams)]
            rate = median(s.chunks_per_s for s in got)
            p50, p99 = median(s.p50 for s in got), median(s.p99 for s in got)
            table.add(
                system,
                streams,
                fmt_num(rate),
                fmt_ratio(ratio(rate, b_rate)),
                fmt_ms(p50),
                fmt_ratio(ratio(p50, b_p50)),
                fmt_ms(p99),
                fmt_ratio(ratio(p99, b_p99)),
            )
            results[f"{system}/{streams}"] = {"chunks_per_s": rate, "p50_s": p50, "p99_s": p99}
    table.notes += [
        "chunks/s: all streams together, from the first publish to the last chunk read; latency: publish call "
        "start → the follower has the chunk (publishers run flat out, so this includes queueing)",
        "ours = QueueService.publish (lease check + renewal: Postgres UPDATE + Valkey lock; validation; Lua XADD "
        "MAXLEN ~ + EXPIRE) and "
        "follow_stream (XREAD BLOCK; flatfile: file-size polling every 25 ms)",
        "bare valkey = XADD one entry per call, XREAD BLOCK per follower, same counts, same run",
    ]
    ctx.results["streams"] = results
    ctx.emit(table)
