"""Helpers shared by the Postgres+Valkey dispatch tests: fast timings and a backend factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from queue_service.backend import DispatchConfig
from queue_service.postgres.backend import PostgresValkeyBackend
from tests.fixtures import timing

#: Sub-second timings: reclaim after a crash takes about lease + sweep + backoff ≈ 1 s.
FAST = timing.fast(lease_seconds=0.75, backoff_max_seconds=0.5, backoff_jitter=0.1, max_queue_depth=100_000)


def fast(**changes: Any) -> DispatchConfig:
    """FAST with some fields changed."""
    return replace(FAST, **changes)


@asynccontextmanager
async def open_backend(
    pg_url: str, valkey_url: str, prefix: str, config: DispatchConfig = FAST, **kwargs: Any
) -> AsyncIterator[PostgresValkeyBackend]:
    """An open PostgresValkeyBackend on the test's database and key prefix, closed afterwards."""
    backend = PostgresValkeyBackend(pg_url, valkey_url, config, key_prefix=prefix, **kwargs)
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()
