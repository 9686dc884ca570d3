"""The history checker on every backend (issue 10). See :mod:`tests.checker.history` for the checks.

Budget: ``QUEUE_CHECKER_SECONDS`` seconds of history per backend (default: 10 for memory and
flatfile, 20 for Postgres+Valkey, about a minute with quiescence), in rounds of at most
``ROUND_SECONDS``, each with its own project and seed. ``QUEUE_CHECKER_SEED`` replays a seed (the
first round uses it, the next ones count up from it). Soak: ``QUEUE_CHECKER_SECONDS=1800``.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as redis

from queue_service.backend import Backend
from queue_service.service import QueueService
from queue_service.testing import InMemoryBackend
from tests.checker.history import Chaos, RunStats, check_round, summarize
from tests.fixtures.timing import fast
from tests.integration.pg_gate import dsn_of
from tests.integration.pgvk import open_backend

#: Short leases and backoffs so expiry, backoff and dead-lettering all happen within a round.
CONFIG = fast(
    lease_seconds=1.0,
    heartbeat_seconds=0.3,
    backoff_base_seconds=0.02,
    backoff_jitter=0.1,
    max_queue_depth=100_000,
    sweep_seconds=0.2,
    # issue 13: agents turn unready and offers lapse within a round (the checker waits them out)
    agent_ready_seconds=1.0,
    offer_seconds=0.3,
)
ROUND_SECONDS = 10.0
#: Read at import: the root conftest hides every QUEUE_* variable from the tests themselves.
_ENV = {name: os.environ.get(name, "") for name in ("QUEUE_CHECKER_SECONDS", "QUEUE_CHECKER_SEED")}


def _budget(default: float) -> float:
    raw = _ENV["QUEUE_CHECKER_SECONDS"]
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"QUEUE_CHECKER_SECONDS must be a number of seconds, got {raw!r}") from None
    if not 1 <= value <= 7 * 24 * 3600:
        raise ValueError(f"QUEUE_CHECKER_SECONDS must be between 1 and 604800, got {raw!r}")
    return value


def _timeout(default: float) -> float:
    """pytest-timeout for a checker test: its history budget plus room for setup and the checks."""
    return 2 * _budget(default) + 120


def _seed() -> int:
    raw = _ENV["QUEUE_CHECKER_SEED"]
    if not raw:
        return random.SystemRandom().randrange(1, 10**9)
    if not raw.isdigit() or len(raw) > 12:
        raise ValueError(f"QUEUE_CHECKER_SEED must be a positive integer, got {raw!r}")
    return int(raw)


async def _run(replicas: list[QueueService], chaos: Chaos, default_seconds: float, label: str) -> None:
    budget = _budget(default_seconds)
    seed = _seed()
    end = time.monotonic() + budget
    rounds: list[RunStats] = []
    failures: list[str] = []
    n = 0
    while not rounds or time.monotonic() < end:
        round_seed = seed + n
        seconds = max(1.0, min(ROUND_SECONDS, end - time.monotonic()))
        stats = await check_round(replicas, round_seed, seconds, chaos)
        rounds.append(stats)
        for v in stats.violations[:20]:
            failures.append(f"[seed {round_seed}] {v}")
        n += 1
    ops, violations, outcomes = summarize(rounds)
    print(
        f"\nhistory checker {label}: seed={seed} rounds={len(rounds)} operations={ops} violations={violations}\n"
        f"  outcomes: {dict(sorted(outcomes.items()))}"
    )
    assert not failures, f"{violations} violation(s); replay with QUEUE_CHECKER_SEED={seed}:\n" + "\n".join(
        failures[:40]
    )


@pytest.mark.timeout(_timeout(10.0))
async def test_history_checker_memory() -> None:
    async with InMemoryBackend(config=CONFIG) as backend:
        await _run([QueueService(backend)], Chaos(), 10.0, "memory")


@pytest.mark.timeout(_timeout(10.0))
async def test_history_checker_flatfile(tmp_path: Path) -> None:
    from flatfile.backend import FlatfileBackend

    async with FlatfileBackend(tmp_path / "queue-data", config=CONFIG) as backend:
        await _run([QueueService(backend)], Chaos(), 10.0, "flatfile")


@pytest.fixture
async def replicas(pg_url: str, valkey_url: str, valkey_prefix: str) -> AsyncIterator[list[Backend]]:
    """Two replicas: two backend instances (two pools each) on one database and Valkey prefix."""
    async with (
        open_backend(pg_url, valkey_url, valkey_prefix, CONFIG) as one,
        open_backend(pg_url, valkey_url, valkey_prefix, CONFIG) as two,
    ):
        yield [one, two]


@pytest.mark.postgres
@pytest.mark.timeout(_timeout(20.0))
async def test_history_checker_postgres_two_replicas(
    replicas: list[Backend], pg_url: str, valkey_url: str, valkey_prefix: str
) -> None:
    dsn = dsn_of(pg_url)
    admin = await asyncpg.connect(dsn)
    client = redis.from_url(valkey_url)
    rng = random.Random(_seed())

    async def flush_valkey() -> None:
        # only this test's keys: other runs share the server
        keys = [k async for k in client.scan_iter(match=f"{valkey_prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)

    async def kill_connection() -> None:
        pids = await admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'"
        )
        if pids:
            await admin.execute("SELECT pg_terminate_backend($1)", rng.choice(pids)["pid"])

    async def pending_counts(project: str) -> dict[str, int]:
        rows = await admin.fetch("SELECT key, pending_deps FROM tasks WHERE project = $1", project)
        return {r["key"]: int(r["pending_deps"]) for r in rows}

    try:
        await _run(
            [QueueService(b) for b in replicas],
            Chaos(flush_valkey=flush_valkey, kill_connection=kill_connection, pending_counts=pending_counts),
            20.0,
            "postgres+valkey (2 replicas)",
        )
    finally:
        await admin.close()
        await client.aclose()
