"""Forced interleavings on real Postgres: park a transaction at a chosen point, run another, resume.

A test-only trigger on ``events`` makes the transaction that inserts a chosen ``(kind, task_key)``
event wait on an advisory lock the test holds: the transaction is parked *after* everything it did
before writing that event (row locks taken, rows written) and *before* it commits. The test then
starts the racing operation, waits until it either finished or is waiting on a lock, and releases
the gate. Every step waits on a state of the database, never on a duration.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

__all__ = ["Gate", "dsn_of"]

_GATE_LOCK = 424242

_INSTALL = f"""
CREATE TABLE IF NOT EXISTS test_gates (kind text NOT NULL, task_key text NOT NULL);
CREATE OR REPLACE FUNCTION test_gate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM test_gates g WHERE g.kind = NEW.kind AND g.task_key = NEW.task_key) THEN
        PERFORM pg_advisory_xact_lock_shared({_GATE_LOCK});
    END IF;
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS test_gate ON events;
CREATE TRIGGER test_gate BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION test_gate();
"""


def dsn_of(url: str) -> str:
    """The plain libpq DSN of a SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class Gate:
    """One gate on the test database (see the module doc). Use ``async with Gate(url) as gate``."""

    def __init__(self, url: str) -> None:
        self.dsn = dsn_of(url)
        self._holder: asyncpg.Connection | None = None
        self._probe: asyncpg.Connection | None = None

    async def __aenter__(self) -> Gate:
        self._holder = await asyncpg.connect(self.dsn)
        self._probe = await asyncpg.connect(self.dsn)
        await self._holder.execute(_INSTALL)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for conn in (self._holder, self._probe):
            if conn is not None:
                await conn.close()

    @property
    def probe(self) -> asyncpg.Connection:
        assert self._probe is not None
        return self._probe

    async def arm(self, kind: str, task_key: str) -> None:
        """Park the next transaction that writes a *kind* event for *task_key*."""
        assert self._holder is not None
        await self._holder.execute("INSERT INTO test_gates VALUES ($1, $2)", kind, task_key)
        await self._holder.execute(f"SELECT pg_advisory_lock({_GATE_LOCK})")

    async def release(self) -> None:
        assert self._holder is not None
        await self._holder.execute(f"SELECT pg_advisory_unlock({_GATE_LOCK})")
        await self._holder.execute("DELETE FROM test_gates")

    async def _waiting(self, event: str | None = None) -> int:
        """Backends of this database waiting on a heavyweight lock (an advisory one if *event*)."""
        sql = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        if event is not None:
            return int(await self.probe.fetchval(sql + " AND wait_event = $1", event))
        return int(await self.probe.fetchval(sql + " AND wait_event <> 'advisory'"))

    async def parked(self, op: Awaitable[Any] | asyncio.Task[Any]) -> None:
        """Wait until a transaction sits at the gate (fails if *op* finished instead)."""
        task = op if isinstance(op, asyncio.Task) else asyncio.ensure_future(op)
        for _ in range(6000):
            if await self._waiting("advisory") > 0:
                return
            if task.done():
                task.result()
                raise AssertionError("the operation finished without reaching the gate")
            await asyncio.sleep(0.005)
        raise AssertionError("nothing reached the gate")

    async def settled(self, task: asyncio.Task[Any], *, blocked: int = 1) -> None:
        """Wait until *task* finished or *blocked* backends wait on a row/transaction lock."""
        for _ in range(6000):
            if task.done() or await self._waiting() >= blocked:
                return
            await asyncio.sleep(0.005)
        raise AssertionError("the racing operation neither finished nor waited on a lock")

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self.probe.fetchval(sql, *args)
