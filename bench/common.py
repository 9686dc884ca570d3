"""Shared plumbing for the benchmark suites: scratch databases and key prefixes, timing, tables.

Every suite creates its own Postgres database (``bench_<hex>``, dropped after) and its own Valkey key
prefix (``mosaic:queue:bench<hex>``, every key under it deleted after), so a benchmark never touches
anyone else's data on a shared machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "PG_SERVER_URL",
    "VALKEY_URL",
    "Context",
    "Table",
    "asyncpg_dsn",
    "fmt_ms",
    "fmt_num",
    "fmt_ratio",
    "fresh_database",
    "machine_notes",
    "median",
    "percentile",
    "ratio",
    "redis_version",
    "run_sync",
    "sqlalchemy_url",
    "timed",
    "valkey_prefix",
    "write_json",
]

#: The server's maintenance database; scratch databases are created next to it.
PG_SERVER_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
VALKEY_URL = os.environ.get("BENCH_VALKEY_URL", "redis://127.0.0.1:6379/0")


# -- scratch resources --------------------------------------------------------------------------


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


def asyncpg_dsn(url: str) -> str:
    """``postgresql://…`` for drivers that want a plain libpq URL (asyncpg, psycopg)."""
    for prefix in ("postgresql+asyncpg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


def sqlalchemy_url(url: str) -> str:
    """``postgresql+asyncpg://…`` for our backend and alembic."""
    return "postgresql+asyncpg://" + asyncpg_dsn(url).split("://", 1)[1]


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(asyncpg_dsn(PG_SERVER_URL))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def fresh_database(*, migrate: bool = True) -> AsyncIterator[str]:
    """A new database ``bench_<hex>`` (our schema at head when *migrate*); dropped afterwards.

    Yields its plain ``postgresql://`` URL.
    """
    name = f"bench_{uuid.uuid4().hex[:12]}"
    await _admin(f'CREATE DATABASE "{name}"')
    url = _with_database(asyncpg_dsn(PG_SERVER_URL), name)
    try:
        if migrate:
            from queue_service.postgres import migrate as migrations

            await migrations.upgrade(sqlalchemy_url(url))
        yield url
    finally:
        # FORCE: a crashed worker or replica may still hold a connection.
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def valkey_prefix() -> AsyncIterator[str]:
    """A unique key prefix ``mosaic:queue:bench<hex>``; every key under it is deleted afterwards."""
    import redis.asyncio as redis

    prefix = f"mosaic:queue:bench{uuid.uuid4().hex[:12]}"
    try:
        yield prefix
    finally:
        client: Any = redis.Redis.from_url(VALKEY_URL)
        try:
            batch: list[bytes] = []
            async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    await client.delete(*batch)
                    batch.clear()
            if batch:
                await client.delete(*batch)
            await client.delete(prefix)
        finally:
            await client.aclose()


# -- statistics ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The *q*-th percentile (0-100) with linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: Iterable[float]) -> float:
    """Median of the finite values; NaN when there are none."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(vals) if vals else math.nan


def ratio(ours: float | None, peer: float | None) -> float:
    """ours / peer, NaN when either is missing or the peer is zero."""
    if ours is None or peer is None or math.isnan(ours) or math.isnan(peer) or peer == 0:
        return math.nan
    return ours / peer


def fmt_num(value: float | None, digits: int = 0) -> str:
    """A figure for a table cell (``—`` when missing)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:,.{digits}f}"


def fmt_ms(seconds: float | None) -> str:
    """Seconds as milliseconds with a sensible number of digits."""
    if seconds is None or math.isnan(seconds):
        return "—"
    ms = seconds * 1000.0
    if ms < 10:
        return f"{ms:.2f}"
    if ms < 100:
        return f"{ms:.1f}"
    return f"{ms:,.0f}"


def fmt_ratio(value: float) -> str:
    """A ratio as ``1.23×``."""
    return "—" if math.isnan(value) else f"{value:.2f}×"


# -- output -------------------------------------------------------------------------------------


@dataclass
class Table:
    """One plain-text table: a title, column headers, rows of cells, and notes printed under it."""

    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        """Append a row (cells are str()-ed)."""
        self.rows.append([str(c) for c in cells])

    def render(self) -> str:
        """The table as aligned text: first column left-aligned, the others right-aligned."""
        widths = [len(h) for h in self.headers]
        for row in self.rows:
            for i, cell in enumerate(row):
                widths[i] = max(widths[i], len(cell))

        def line(cells: Sequence[str]) -> str:
            out = []
            for i, cell in enumerate(cells):
                out.append(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]))
            return "  ".join(out).rstrip()

        parts = [f"== {self.title}", line(self.headers), "  ".join("-" * w for w in widths)]
        parts.extend(line(r) for r in self.rows)
        parts.extend(f"  * {n}" for n in self.notes)
        return "\n".join(parts)


@dataclass
class Context:
    """What a suite gets: run options, a place for raw results, and a log function."""

    quick: bool = False
    runs: int = 3
    #: tasks per workload for suites that take a size (``--tasks``); None = the suite's default
    tasks: int | None = None
    #: latency samples per figure for suites that take it (``--samples``); None = the suite's default
    samples: int | None = None
    #: systems to run for suites that compare several (``--systems``); None = all
    systems: frozenset[str] | None = None
    results: dict[str, Any] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)

    def log(self, message: str) -> None:
        """Progress to stderr (the tables go to stdout)."""
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def emit(self, table: Table) -> None:
        """Print a finished table and keep it for the JSON output."""
        self.tables.append(table)
        print(table.render(), flush=True)
        print(flush=True)


async def timed(fn: Callable[[], Any]) -> float:
    """Seconds one awaited call of *fn* took."""
    t0 = time.perf_counter()
    await fn()
    return time.perf_counter() - t0


def machine_notes() -> dict[str, Any]:
    """CPU, memory, load and versions, for the record."""
    notes: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    with contextlib.suppress(OSError):
        notes["loadavg"] = os.getloadavg()
    with contextlib.suppress(OSError, StopIteration):
        cpuinfo = Path("/proc/cpuinfo").read_text()
        notes["cpu"] = next(line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line)
    with contextlib.suppress(OSError, StopIteration, ValueError):
        meminfo = Path("/proc/meminfo").read_text()
        kb = int(next(line.split()[1] for line in meminfo.splitlines() if line.startswith("MemTotal")))
        notes["memory_gb"] = round(kb / 1024 / 1024, 1)
    with contextlib.suppress(Exception):
        out = subprocess.run(
            ["psql", asyncpg_dsn(PG_SERVER_URL), "-tAc", "SHOW server_version; "],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        if out.returncode == 0:
            notes["postgres"] = out.stdout.strip()
    versions = {}
    for dist in ("pgqueuer", "procrastinate", "uvloop", "asyncpg", "sqlalchemy", "redis", "fastapi", "uvicorn"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[dist] = version(dist)
    notes["packages"] = versions
    return notes


async def redis_version() -> str:
    """The Valkey/Redis server version string."""
    import redis.asyncio as redis

    client: Any = redis.Redis.from_url(VALKEY_URL)
    try:
        info = await client.info("server")
        name = "valkey" if "valkey_version" in info else "redis"
        return f"{name} {info.get('valkey_version') or info.get('redis_version')}"
    finally:
        await client.aclose()


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write the raw results (NaN becomes null)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(payload), indent=2, default=str) + "\n")


def run_sync(coro_fn: Callable[[], Any]) -> Any:
    """Run an async main with uvloop when installed (the peers' own benchmarks use it too)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro_fn())
    return uvloop.run(coro_fn())
