"""The dispatcher's hot statements (claim, heartbeat, complete) over raw asyncpg.

Why a second path next to SQLAlchemy: a claim+complete through SQLAlchemy Core costs a few
milliseconds of Python per task (statement execution machinery, greenlet hops, result processing,
model validation) and the completion took five round trips (BEGIN, UPDATE, event INSERT, dependent
promotion, COMMIT). Here claim and heartbeat are **one** autocommit statement each, a completion
one statement plus the dependents' lock and recount, prepared once per connection by asyncpg's
statement cache, and rows become domain models without re-validation
(every value comes from our own schema's constraints).

The statements do exactly what the SQLAlchemy versions they replace did:

* claim: the conditional ``UPDATE`` (still not-started, ``pending_deps = 0``, ``not_before`` passed,
  role allowed) and its ``claimed`` event row, in one statement;
* complete: the token-checked ``UPDATE`` to ``done`` and its ``completed`` event row in one
  statement, then -- in the same transaction, as separate statements so each sees what committed
  before it got its locks -- the direct dependents locked in id order and their ``pending_deps``
  recounted from their dependencies (see ``docs/plans/dispatch.md``, "Readiness");
* heartbeat: the token-checked lease extension.

Every lease decision uses the database's clock (``statement_timestamp()``), never the replica's.

Connections come from a small asyncpg pool of their own (created on first use, closed with the
backend). Nothing here leaves session state behind, so the pool skips asyncpg's per-release reset
query (an open transaction is still rolled back by asyncpg itself).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy.engine import URL

from queue_service.models import Priority, Task, TaskStatus
from queue_service.postgres import tables as t
from queue_service.postgres.errors import is_connection_failure
from queue_service.postgres.routing_columns import routing_fields

__all__ = [
    "BATCH_STATE_SQL",
    "CLAIM_ANY_ROLE_SQL",
    "CLAIM_MANY_ANY_ROLE_SQL",
    "CLAIM_MANY_ROLES_SQL",
    "COMPLETE_MANY_SQL",
    "CLAIM_ROLES_SQL",
    "COMPLETE_SQL",
    "HEARTBEAT_SQL",
    "LOCK_DEPENDENTS_SQL",
    "READY_KEYS_SQL",
    "RECOUNT_SQL",
    "RESTAGE_SQL",
    "RawPool",
    "asyncpg_dsn",
    "task_from_record",
]

#: The columns of :data:`queue_service.postgres.records.task_columns` (every task column but the
#: lease token, plus the dependency keys in declared order), as SQL for a ``RETURNING`` clause.
_TASK_COLUMNS = tuple(c.name for c in t.tasks.c if c.name != "lease_token")
_RETURNING = (
    ", ".join(_TASK_COLUMNS) + ", ARRAY(SELECT p.key FROM task_dependencies d JOIN tasks p ON p.id = d.depends_on_id "
    "WHERE d.task_id = tasks.id ORDER BY d.position, p.seq) AS depends_on"
)


def _claim_sql(with_roles: bool) -> str:
    # $1 project, $2 key, $3 agent, $4 token, $5 lease seconds, $6 event data, [$7 roles].
    # Every time is the database's (statement_timestamp()): a replica's clock never decides a lease.
    roles = "AND role = ANY($7::text[])" if with_roles else ""
    return f"""
    WITH claimed AS (
        UPDATE tasks
        SET status = 'in-progress', assignee = $3, lease_holder = $3, lease_token = $4,
            lease_expires_at = statement_timestamp() + make_interval(secs => $5::float8),
            started_at = coalesce(started_at, statement_timestamp()), updated_at = statement_timestamp(),
            version = version + 1
        WHERE project = $1 AND key = $2 AND status = 'not-started' AND pending_deps = 0
          AND (not_before IS NULL OR not_before <= statement_timestamp()) {roles}
        RETURNING {_RETURNING}
    ), logged AS (
        INSERT INTO events (project, task_key, kind, status, version, at, data)
        SELECT project, key, 'claimed', status, version, updated_at, $6::jsonb FROM claimed
        RETURNING id
    )
    SELECT claimed.*, logged.id AS event_id FROM claimed, logged
    """


#: Claim one task for any role (one statement: the update and its event row).
CLAIM_ANY_ROLE_SQL = _claim_sql(False)
#: Claim one task only if its role is in ``$8``.
CLAIM_ROLES_SQL = _claim_sql(True)

#: Complete a leased task: the update and its event, in one statement (run inside a transaction
#: followed by :data:`LOCK_DEPENDENTS_SQL` and :data:`RECOUNT_SQL`). $1 project, $2 key, $3 token,
#: $4 result. No row: the lease did not match (judged by the database's clock).
COMPLETE_SQL = f"""
WITH done AS (
    UPDATE tasks
    SET status = 'done', result = $4::jsonb, completed_at = statement_timestamp(),
        updated_at = statement_timestamp(), version = version + 1,
        lease_holder = NULL, lease_token = NULL, lease_expires_at = NULL
    WHERE project = $1 AND key = $2 AND lease_token = $3 AND status = 'in-progress'
      AND lease_expires_at > statement_timestamp()
    RETURNING {_RETURNING}
), logged AS (
    INSERT INTO events (project, task_key, kind, status, version, at, data)
    SELECT project, key, 'completed', status, version, updated_at, '{{}}'::jsonb FROM done
    RETURNING id
)
SELECT done.*, logged.id AS event_id FROM done, logged
"""

#: The direct dependents of the tasks ``$1`` (ids), locked in id order (the one lock order for
#: dependents everywhere). Run as its own statement *after* the tasks' rows were changed: its
#: snapshot then holds every edge to them that will ever count (an edge writer reads a
#: dependency's status under ``FOR SHARE``, which waits for the change to commit).
LOCK_DEPENDENTS_SQL = """
SELECT dep.id FROM tasks dep JOIN task_dependencies d ON d.task_id = dep.id
WHERE d.depends_on_id = ANY($1::bigint[]) ORDER BY dep.id FOR UPDATE OF dep
"""

#: Set ``pending_deps`` of the tasks ``$1`` (locked by the caller) from their dependencies as they
#: are now: a count derived in a fresh snapshot, never a delta applied to a stale one. Returns the
#: tasks that are ready or scheduled now, with ``due`` judged by the database's clock.
RECOUNT_SQL = """
UPDATE tasks t SET pending_deps = (
    SELECT count(*) FROM task_dependencies d JOIN tasks p ON p.id = d.depends_on_id
    WHERE d.task_id = t.id AND p.status <> 'done'
)
WHERE t.id = ANY($1::bigint[])
RETURNING t.key, t.role, t.priority, t.seq, t.not_before, t.status, t.pending_deps,
          (t.not_before IS NULL OR t.not_before <= statement_timestamp()) AS due
"""


def _claim_many_sql(with_roles: bool) -> str:
    # $1 project, $2 keys, $3 agent, $4 tokens (one per key), $5 lease seconds, $6 event data,
    # [$7 roles]. Keys are sorted by the caller so racing batches lock shared rows in one order.
    roles = "AND role = ANY($7::text[])" if with_roles else ""
    return f"""
    WITH wanted AS (
        SELECT k, tok FROM unnest($2::text[], $4::text[]) AS u(k, tok)
    ), claimed AS (
        UPDATE tasks
        SET status = 'in-progress', assignee = $3, lease_holder = $3, lease_token = wanted.tok,
            lease_expires_at = statement_timestamp() + make_interval(secs => $5::float8),
            started_at = coalesce(started_at, statement_timestamp()), updated_at = statement_timestamp(),
            version = version + 1
        FROM wanted
        WHERE project = $1 AND key = wanted.k AND status = 'not-started' AND pending_deps = 0
          AND (not_before IS NULL OR not_before <= statement_timestamp()) {roles}
        RETURNING wanted.tok AS claim_token, {_RETURNING}
    ), logged AS (
        INSERT INTO events (project, task_key, kind, status, version, at, data)
        SELECT project, key, 'claimed', status, version, updated_at, $6::jsonb FROM claimed ORDER BY priority, seq
        RETURNING id, task_key
    )
    SELECT claimed.*, logged.id AS event_id FROM claimed JOIN logged ON logged.task_key = claimed.key
    ORDER BY claimed.priority, claimed.seq
    """


#: Claim every listed task that is still ready, for any role (the batched :data:`CLAIM_ANY_ROLE_SQL`).
CLAIM_MANY_ANY_ROLE_SQL = _claim_many_sql(False)
#: Claim every listed task that is still ready and whose role is in ``$8``.
CLAIM_MANY_ROLES_SQL = _claim_many_sql(True)

#: Complete many leased tasks in one statement: $1 project, $2 keys, $3 tokens, $4 results (JSON
#: text, NULL for none). Each item matches only with its own live token, so a bad item just returns
#: no row. Dependents are recounted afterwards in the same transaction, as for :data:`COMPLETE_SQL`.
COMPLETE_MANY_SQL = f"""
WITH items AS (
    SELECT k, tok, res FROM unnest($2::text[], $3::text[], $4::text[]) AS u(k, tok, res)
), done AS (
    UPDATE tasks
    SET status = 'done', result = items.res::jsonb, completed_at = statement_timestamp(),
        updated_at = statement_timestamp(), version = version + 1,
        lease_holder = NULL, lease_token = NULL, lease_expires_at = NULL
    FROM items
    WHERE project = $1 AND key = items.k AND lease_token = items.tok AND status = 'in-progress'
      AND lease_expires_at > statement_timestamp()
    RETURNING items.tok AS done_token, {_RETURNING}
), logged AS (
    INSERT INTO events (project, task_key, kind, status, version, at, data)
    SELECT project, key, 'completed', status, version, updated_at, '{{}}'::jsonb FROM done ORDER BY seq
    RETURNING id, task_key
)
SELECT done.*, logged.id AS event_id
FROM done JOIN logged ON logged.task_key = done.key
ORDER BY logged.id
"""

#: Why batch items did not claim/complete: $1 project, $2 keys.
BATCH_STATE_SQL = (
    "SELECT key, status, pending_deps, not_before, role, priority, lease_expires_at, "
    "(not_before IS NOT NULL AND not_before > statement_timestamp()) AS not_due FROM tasks "
    "WHERE project = $1 AND key = ANY($2::text[])"
)

#: Extend a lease by $4 seconds of database time: $1 project, $2 key, $3 token.
HEARTBEAT_SQL = """
UPDATE tasks SET lease_expires_at = statement_timestamp() + make_interval(secs => $4::float8)
WHERE project = $1 AND key = $2 AND lease_token = $3 AND status = 'in-progress'
  AND lease_expires_at > statement_timestamp()
RETURNING lease_holder, lease_expires_at
"""

#: The best ready keys in the dispatch order (``domain.dispatch_order``: priority, then how many
#: not-done tasks each unblocks, then age), by database time: $1 project, $2 roles (NULL: any), $3 limit.
READY_KEYS_SQL = """
SELECT t.key,
       (SELECT count(*) FROM task_dependencies d JOIN tasks c ON c.id = d.task_id
        WHERE d.depends_on_id = t.id AND c.status <> 'done') AS unblocks
FROM tasks t
WHERE t.project = $1 AND t.status = 'not-started' AND t.pending_deps = 0
  AND (t.not_before IS NULL OR t.not_before <= statement_timestamp())
  AND ($2::text[] IS NULL OR t.role = ANY($2::text[]))
ORDER BY t.priority, unblocks DESC, t.seq
LIMIT $3
"""

#: Where a popped key that did not claim belongs now.
RESTAGE_SQL = (
    "SELECT status, pending_deps, not_before, role, priority, "
    "(not_before IS NOT NULL AND not_before > statement_timestamp()) AS not_due "
    "FROM tasks WHERE project = $1 AND key = $2"
)


def asyncpg_dsn(url: URL) -> str:
    """A libpq-style DSN for asyncpg from the engine's SQLAlchemy URL (driver name dropped)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def task_from_record(row: Any) -> Task:
    """Build the domain Task from a row returned by one of the statements above.

    ``model_construct`` skips validation: the values come from columns whose types and CHECK
    constraints already guarantee what validation would check (status and priority words, JSON
    objects, non-null keys), and validation was most of the CPU cost of a claim.
    """
    return Task.model_construct(
        project=row["project"],
        key=row["key"],
        seq=row["seq"],
        title=row["title"],
        description=row["description"],
        status=TaskStatus(row["status"]),
        role=row["role"],
        priority=Priority(row["priority"]),
        assignee=row["assignee"],
        mission=row["mission"],
        milestone=row["milestone"],
        depends_on=tuple(row["depends_on"] or ()),
        labels=tuple(row["labels"] or ()),
        extra=dict(row["extra"] or {}),
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        not_before=row["not_before"],
        idempotency_key=row["idempotency_key"],
        result=row["result"],
        last_error=row["last_error"],
        blocked_reason=row["blocked_reason"],
        lease_holder=row["lease_holder"],
        lease_expires_at=row["lease_expires_at"],
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        **routing_fields(row["routing"]),
    )


async def _init_connection(conn: asyncpg.Connection) -> None:
    # JSON columns in and out as Python values, the way SQLAlchemy's JSONB type handles them.
    for name in ("jsonb", "json"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Nothing to reset: the hot path sets no session state (asyncpg still rolls back open transactions)."""


class RawPool:
    """A lazily created asyncpg pool for the hot statements.

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
