"""Routed claims on Postgres (issue 13): one transaction decides which ready tasks an agent may take.

Why a transaction and not the single conditional UPDATE of a plain claim: capacity, concurrency
keys and offers are decided over *several* rows. The order of locks is fixed, so racing claimers
cannot deadlock: (1) the agent's row (upserted: implicit registration, ``last_seen``), which
serialises one agent's claims and makes its capacity check exact; (2) one transaction-scoped
advisory lock per concurrency key with a limit among the candidates, in sorted order, taken
*before* counting that key's in-progress tasks, so two replicas never both see "one slot left";
(3) the task rows, by the same conditional UPDATE as a plain claim (exactly one racer wins a task).

The policy (fair share, labels, preferences, strategies, offers) is :mod:`queue_service.routing`;
this module only loads its inputs, all times being the database's (``statement_timestamp()``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from queue_service import domain, routing
from queue_service.agents import AgentRecord
from queue_service.models import Priority, Project, Task, TaskStatus
from queue_service.postgres.resources import load_queries
from queue_service.postgres.routing_columns import routing_fields
from queue_service.postgres.rows import TASK_RETURNING_SQL

__all__ = ["RoutedClaims", "record_turns", "routed_claim"]

PULL = routing.PULL

#: per (role, priority, group), how many of its oldest ready tasks a claim considers
_PER_GROUP = 64
#: most candidates a claim considers in all
_MAX_CANDIDATES = 2000

#: the statements, in ``sql/routing.sql``
_Q = load_queries("routing.sql", task_returning=TASK_RETURNING_SQL)
#: planned tasks beyond the wanted ones, for racers to fan out over
_SPARE = 8


@dataclass
class RoutedClaims:
    """What a routed claim committed: the claimed rows (task columns + ``event_id``) and tokens."""

    rows: list[Any] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    #: the claims' event ids per (role, group): the fair-share turns to record (:func:`record_turns`)
    turns: dict[tuple[str, str], int] = field(default_factory=dict)


async def record_turns(conn: asyncpg.Connection, slug: str, turns: dict[tuple[str, str], int]) -> None:
    """Record which groups were just served, after the claim committed.

    Outside the claim's transaction on purpose: every claim of a group writes the same row, and
    holding its lock until commit would serialise all claimers of the group. Turns only order the
    fair share (never who may hold what); ``GREATEST`` keeps a late writer from moving one back.
    """
    for (role, grp), turn in sorted(turns.items()):
        await conn.execute(_Q["turn"], slug, role, grp, turn)


def _record(row: Any, project: str) -> AgentRecord:
    return AgentRecord.model_construct(
        project=project,
        id=row["id"],
        roles=tuple(row["roles"] or ()),
        labels=dict(row["labels"] or {}),
        capacity=row["capacity"],
        implicit=row["implicit"],
        drained=row["drained"],
        last_seen=row["last_seen"],
        registered_at=row["registered_at"],
    )


def _candidate(row: Any, project: str) -> routing.Candidate:
    task = Task.model_construct(
        project=project,
        key=row["key"],
        seq=row["seq"],
        role=row["role"],
        priority=Priority(row["priority"]),
        mission=row["mission"],
        status=TaskStatus.NOT_STARTED,
        requires=dict(row["requires"] or {}),
        **routing_fields(row["routing"]),
    )
    return routing.Candidate(task, int(row["unblocks"]))


async def routed_claim(
    conn: asyncpg.Connection,
    slug: str,
    agent: str,
    roles: Sequence[str] | None,
    limit: int,
    lease_seconds: float,
    ready_seconds: float,
    offer_seconds: float,
    rng: random.Random,
) -> RoutedClaims:
    """Claim up to *limit* tasks for *agent* in one transaction on *conn* (see the module docstring).

    The project's routing settings are read inside the transaction.
    """
    out = RoutedClaims()
    async with conn.transaction():
        me_row = await conn.fetchrow(_Q["admit"], slug, agent, list(roles or ()))
        now: datetime = me_row["now"]
        me = _record(me_row, slug)
        held = int(await conn.fetchval(_Q["holding"], slug, agent))
        free = me.free(held)
        want = min(limit, free)
        if me_row["implicit"] and me_row["registered_at"] == now:
            await conn.execute(_Q["drop_idle"], slug, agent)
        if want <= 0:
            return out
        settings = Project.model_construct(
            slug=slug,
            name=slug,
            key_prefix="",
            created_at=now,
            updated_at=now,
            routing=dict(me_row["project_routing"] or {}),
            concurrency_limits=dict(me_row["project_limits"] or {}),
        )
        names = list(dict.fromkeys(roles)) if roles else None
        cand_rows = await conn.fetch(_Q["candidates"], slug, names, dict(me.labels), _PER_GROUP, _MAX_CANDIDATES)
        if not cand_rows:
            return out
        candidates = [_candidate(r, slug) for r in cand_rows]
        limited = sorted(
            {
                c.task.concurrency_key
                for c in candidates
                if c.task.concurrency_key is not None
                and routing.limit_for(settings.concurrency_limits, c.task.concurrency_key) is not None
            }
        )
        for ck in limited:
            await conn.execute(_Q["lock_key"], f"{slug}\x1f{ck}")
        by_key = (
            {r["ck"]: int(r["n"]) for r in await conn.fetch(_Q["in_progress_by_key"], slug, limited)} if limited else {}
        )
        routed_roles = sorted({c.task.role for c in candidates if routing.strategy_for(settings, c.task.role) != PULL})
        agents: list[AgentRecord] = [me]
        holding = {me.id: held}
        offers: dict[str, routing.Offer] = {}
        cursors: dict[str, int] = {}
        if routed_roles:
            agents = []
            for r in await conn.fetch(_Q["agents"], slug):
                rec = me if r["id"] == me.id else _record(r, slug)
                agents.append(rec)
                holding[rec.id] = int(r["holding"])
            keys = [c.task.key for c in candidates]
            for r in await conn.fetch(
                _Q["offers"],
                slug,
                keys,
            ):
                offers[r["key"]] = routing.Offer(agent=r["agent"], expires_at=r["expires_at"])
            for r in await conn.fetch(
                _Q["cursors"],
                slug,
                routed_roles,
            ):
                cursors[r["role"]] = int(r["position"])
        turn_rows = await conn.fetch(
            _Q["turns"],
            slug,
            sorted({c.task.role for c in candidates}),
        )
        ctx = routing.RoutingContext(
            project=settings,
            claimer=me,
            now=now,
            ready_seconds=ready_seconds,
            offer_seconds=offer_seconds,
            agents=agents,
            holding=holding,
            offers=offers,
            in_progress_by_key=by_key,
            turns={(r["role"], r["grp"]): int(r["turn"]) for r in turn_rows},
            cursors=cursors,
            rng=rng,
        )
        plan = routing.plan_claims(ctx, candidates, want, spare=_SPARE)
        # Task rows are locked without waiting (SKIP LOCKED); then offers and cursors by key: one lock
        # order for every routed claim, so racing claims cannot deadlock.
        if plan.chosen:
            keys = [t.key for t in plan.chosen]
            tokens = [domain.new_lease_token(lease_seconds) for _ in keys]
            rows = await conn.fetch(_Q["claim"], slug, keys, agent, tokens, lease_seconds, {"agent": agent}, want)
            out.rows.extend(rows)
            out.tokens.extend(r["claim_token"] for r in rows)
        chosen_by_key = {t.key: t for t in plan.chosen}
        for row in out.rows:
            task = chosen_by_key[row["key"]]
            out.turns[(task.role, routing.group_of(task))] = int(row["event_id"])
        claimed = {r["key"] for r in out.rows}
        for key in sorted(claimed | set(plan.offers)):
            if key in claimed:
                await conn.execute(_Q["drop_offer"], slug, key)
            else:
                offer = plan.offers[key]
                await conn.execute(_Q["offer"], slug, key, offer.agent, offer.expires_at)
        for role, position in sorted(plan.cursors.items()):
            await conn.execute(_Q["cursor"], slug, role, position)
    return out
