"""Row locks of the edge writers (create with ``depends_on``, PATCH): never wait while holding one.

Every transition (complete, complete_many, claim_many, cancel, fail, retry, release, sweep, PATCH of a
status) holds its task(s) and then waits for their dependents. An edge writer locks the dependencies
it reads ``FOR SHARE`` (so a completion in flight is waited for, see docs/plans/dispatch.md) and then
the task it writes. No order of those two kinds of waits is one order: a dependency named by a writer
can be a dependent of the task it locks next (a would-be cycle, rejected only after the locks), a
dependent of another dependency it named (id order is not dependency order), or a row a batch statement
updates after the writer's task. Each is a deadlock, and the victim may be the transition (a 500).

So an edge writer takes its row locks ``NOWAIT``: when one is held, the whole transaction rolls back
(:class:`RowsBusy`), waits for each busy row alone with no other lock held (:func:`wait_until_free`),
and runs again. A transaction that waits holding nothing closes no cycle.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import bindparam, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import Executable
from sqlalchemy.sql.elements import BindParameter

from queue_service import exceptions
from queue_service.postgres import tables as t
from queue_service.postgres.errors import wrap_errors

__all__ = ["RowsBusy", "lock_nowait", "run_without_hold_and_wait", "wait_until_free"]

_T = TypeVar("_T")

logger = logging.getLogger(__name__)

#: SQLSTATE lock_not_available: a NOWAIT lock found the row locked.
_LOCK_NOT_AVAILABLE = "55P03"

#: Runs of one edge writer that found a row busy before it answers 503 (each run first waited for
#: the rows it found busy, so this only ends a writer starved by a stream of transitions).
BUSY_ATTEMPTS = 50


class RowsBusy(Exception):
    """A ``NOWAIT`` lock of an edge writer found its row locked (the transaction is rolled back)."""


def _sqlstate(exc: BaseException) -> str | None:
    for candidate in (exc, getattr(exc, "orig", None), exc.__cause__, getattr(exc.__cause__, "__cause__", None)):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    orig = getattr(exc, "orig", None)
    inner = getattr(orig, "__cause__", None)
    code = getattr(inner, "sqlstate", None)
    return code if isinstance(code, str) else None


async def lock_nowait(conn: AsyncConnection, stmt: Executable) -> Any:
    """Run a locking ``SELECT ... NOWAIT``; a held row raises :class:`RowsBusy`."""
    try:
        return await conn.execute(stmt)
    except DBAPIError as exc:
        if _sqlstate(exc) == _LOCK_NOT_AVAILABLE:
            raise RowsBusy() from exc
        raise


async def wait_until_free(engine: AsyncEngine, project: str, shared: Sequence[str], exclusive: Sequence[str]) -> None:
    """Wait until no transaction holds a lock that conflicts with ours on these tasks, one row per
    autocommit statement: a lock is held only for its own statement, so this wait closes no cycle.
    *shared* rows are waited for as ``FOR SHARE`` (writers of the row), *exclusive* ones as
    ``FOR UPDATE`` (anyone holding the row)."""
    one: BindParameter[str] = bindparam("k")
    base = select(t.tasks.c.id).where(t.tasks.c.project == project, t.tasks.c.key == one)
    async with wrap_errors(), engine.connect() as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        for key in sorted(set(shared) - set(exclusive)):
            await auto.execute(base.with_for_update(read=True), {"k": key})
        for key in sorted(set(exclusive)):
            await auto.execute(base.with_for_update(), {"k": key})


async def run_without_hold_and_wait(run: Callable[[], Awaitable[_T]], wait: Callable[[], Awaitable[None]]) -> _T:
    """Run the edge writer *run*; each time it found a row busy, *wait* for its rows and run it again."""
    for _ in range(BUSY_ATTEMPTS):
        try:
            return await run()
        except RowsBusy:
            await wait()
    logger.warning("an edge writer found its rows busy %d times in a row; answering 503", BUSY_ATTEMPTS)
    raise exceptions.BackendUnavailable("the tasks this change locks stayed busy; try again")
