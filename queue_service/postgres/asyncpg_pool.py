"""A raw asyncpg pool for the dispatcher's lease statements (claim, heartbeat, complete).

Why a second path next to SQLAlchemy: a claim+complete through SQLAlchemy Core costs a few
milliseconds of Python per task (statement execution machinery, greenlet hops, result processing,
model validation) and the completion took five round trips (BEGIN, UPDATE, event INSERT, dependent
promotion, COMMIT). On this pool claim and heartbeat are **one** autocommit statement each, a
completion one statement plus the dependents' lock and recount, prepared once per connection by
asyncpg's statement cache. The statements are in ``sql/leases.sql`` and ``sql/dependents.sql``.

Connections are created on first use and closed with the backend. Nothing run here leaves session
state behind, so the pool skips asyncpg's per-release reset query (an open transaction is still
rolled back by asyncpg itself).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from sqlalchemy.engine import URL

from queue_service.postgres.errors import is_connection_failure

__all__ = ["RawPool", "asyncpg_dsn"]


def asyncpg_dsn(url: URL) -> str:
    """A libpq-style DSN for asyncpg from the engine's SQLAlchemy URL (driver name dropped)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # JSON columns in and out as Python values, the way SQLAlchemy's JSONB type handles them.
    for name in ("jsonb", "json"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Nothing to reset: the lease statements set no session state (asyncpg still rolls back open transactions)."""


class RawPool:
    """A lazily created asyncpg pool for the lease statements.

    Args:
        dsn: where to connect (see :func:`asyncpg_dsn`).
        max_size: most connections held open.
        acquire_timeout: seconds to wait for a free connection before giving up.
    """

    def __init__(self, dsn: str, *, max_size: int = 10, acquire_timeout: float = 30.0) -> None:
        self.dsn = dsn
        self.max_size = max_size
        self.acquire_timeout = acquire_timeout
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    async def _get(self) -> asyncpg.Pool:
        pool = self._pool
        if pool is not None:
            return pool
        async with self._lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self.dsn,
                    min_size=0,
                    max_size=self.max_size,
                    init=_init_connection,
                    reset=_no_reset,
                    # Idle connections go back after a minute; a burst re-opens them.
                    max_inactive_connection_lifetime=60.0,
                )
            return self._pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection for one or a few autocommit statements (errors are the caller's to wrap)."""
        pool = await self._get()
        async with pool.acquire(timeout=self.acquire_timeout) as conn:
            try:
                yield conn
            except BaseException as exc:
                # A connection that saw the server go away (or was cancelled mid-statement, leaving
                # its protocol state unknown) is never handed out again: the pool opens a fresh one.
                if is_connection_failure(exc) or isinstance(exc, asyncio.CancelledError):
                    conn.terminate()
                raise

    async def close(self) -> None:
        """Close the pool (connections in use are given a few seconds, then terminated). Idempotent."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=5.0)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            pool.terminate()
