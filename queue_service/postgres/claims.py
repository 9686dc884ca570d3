"""Claims on Postgres+Valkey (issue 13): Postgres picks, Valkey wakes.

Every claim is a routed claim (:func:`queue_service.postgres.routing.routed_claim`): one transaction
registers the agent, checks its capacity, and picks by fair share, labels, concurrency keys and the
role's strategy. The Valkey ready lists no longer decide *which* task a claimer gets (a list knows
priority and arrival, not groups, labels or keys); they are what an idle claimer blocks on, so a new
ready task still wakes it at once without polling Postgres. A claimed key is taken off its list
after commit. :class:`queue_service.postgres.dispatch.PostgresValkeyDispatcher` makes this attempt
its ``_try_claim`` and blocks on the lists in its ``_wait_for_ready``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Protocol

import asyncpg

from queue_service import exceptions
from queue_service.dispatch_config import DispatchConfig
from queue_service.models import Claim, Lease, TaskStatus
from queue_service.postgres.asyncpg_pool import RawPool
from queue_service.postgres.errors import wrap_errors
from queue_service.postgres.routing import RoutedClaims, record_turns, routed_claim
from queue_service.postgres.rows import task_from_row
from queue_service.postgres.valkey import BrokerBatch, Popped, ValkeyBroker


class PostgresValkeyDispatcher(Protocol):
    """What a claim attempt needs of the dispatcher that makes it (a protocol, so this module does
    not import ``dispatch.py``, which imports it)."""

    config: DispatchConfig
    broker: ValkeyBroker
    _raw: RawPool

    async def _signal(self, batch: BrokerBatch) -> None: ...


__all__ = ["claim_routed"]

logger = logging.getLogger(__name__)

_rng = random.Random()
_DEADLOCK_TRIES = 3
_STILL_READY = "SELECT true FROM tasks WHERE project = $1 AND key = $2 AND status = 'not-started' AND pending_deps = 0"


async def _once(
    d: PostgresValkeyDispatcher, project: str, agent: str, roles: list[str] | None, limit: int, lease: float
) -> list[Claim]:
    cfg = d.config
    got = RoutedClaims()
    for attempt in range(_DEADLOCK_TRIES):
        try:
            async with wrap_errors(), d._raw.connection() as conn:
                got = await routed_claim(
                    conn, project, agent, roles, limit, lease, cfg.agent_ready_seconds, cfg.offer_seconds, _rng
                )
                await record_turns(conn, project, got.turns)
            break
        except exceptions.BackendError as exc:
            # the lock order makes this rare (claims racing edits that lock the same rows in another
            # order): Postgres rolled this one back, so it is safe to try again
            if not isinstance(exc.__cause__, asyncpg.DeadlockDetectedError) or attempt == _DEADLOCK_TRIES - 1:
                raise
    if not got.rows:
        return []
    batch = BrokerBatch()
    claims: list[Claim] = []
    for row, token in zip(got.rows, got.tokens, strict=True):
        batch.locks.append((project, row["key"], token, lease))
        batch.events.append(
            (
                project,
                {
                    "id": row["event_id"],
                    "project": project,
                    "task": row["key"],
                    "kind": "claimed",
                    "status": TaskStatus.IN_PROGRESS.value,
                    "version": row["version"],
                    "at": row["updated_at"].isoformat(),
                    "data": {"agent": agent},
                },
            )
        )
        claims.append(
            Claim.model_construct(
                task=task_from_row(row),
                lease=Lease.model_construct(
                    token=token, holder=agent, expires_at=row["lease_expires_at"], seconds=lease
                ),
            )
        )
    await d._signal(batch)
    try:
        await d.broker.unlist(project, [c.task.key for c in claims])
    except exceptions.BackendError as exc:
        logger.warning("could not take claimed keys off the ready lists (the sweep will reconcile): %s", exc)
    return claims


async def claim_routed(
    d: PostgresValkeyDispatcher,
    project: str,
    agent: str,
    roles: list[str] | None,
    limit: int,
    lease: float,
    woken: Popped | None = None,
) -> list[Claim]:
    """One routed attempt: claim up to *limit* tasks now, never waiting (the wait loop is
    :class:`queue_service.dispatching.BaseDispatcher`'s). *woken*, the key the claimer's last wait
    popped, only woke it: Postgres picks (maybe that very task). If it was not claimed and its task
    is still ready, it goes back to its list for the claimers it is meant for."""
    if woken is None:
        return await _once(d, project, agent, roles, limit, lease)
    try:
        claims = await _once(d, project, agent, roles, limit, lease)
    except BaseException:
        await asyncio.shield(_give_back_if_ready(d, woken))
        raise
    if woken.key not in {c.task.key for c in claims}:
        await _give_back_if_ready(d, woken)
    return claims


async def _give_back_if_ready(d: PostgresValkeyDispatcher, popped: Popped) -> None:
    """Return a popped entry to its list if its task is still ready (else it was stale: dropped)."""
    try:
        async with wrap_errors(), d._raw.connection() as conn:
            ready = await conn.fetchval(_STILL_READY, popped.project, popped.key)
        if ready:
            await d.broker.push_back([popped])
    except exceptions.BackendError as exc:
        logger.warning("could not give back a popped key (the sweep will reconcile): %s", exc)
