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
from queue_service.postgres import tables as t
from queue_service.postgres.routing_columns import routing_fields

__all__ = ["RoutedClaims", "record_turns", "routed_claim"]

PULL = routing.PULL

#: per (role, priority, group), how many of its oldest ready tasks a claim considers
_PER_GROUP = 64
#: most candidates a claim considers in all
_MAX_CANDIDATES = 2000

_TASK_COLUMNS = tuple(c.name for c in t.tasks.c if c.name != "lease_token")
_DEPENDS_ON = (
    "ARRAY(SELECT p.key FROM task_dependencies d JOIN tasks p ON p.id = d.depends_on_id "
    "WHERE d.task_id = tasks.id ORDER BY d.position, p.seq) AS depends_on"
)
_RETURNING = ", ".join(f"tasks.{c}" for c in _TASK_COLUMNS) + ", " + _DEPENDS_ON

# $1 project, $2 agent, $3 roles of an implicit registration.
_ADMIT = """
INSERT INTO agents AS a (project, id, roles, implicit, last_seen, registered_at)
VALUES ($1, $2, $3::text[], true, statement_timestamp(), statement_timestamp())
ON CONFLICT (project, id) DO UPDATE SET last_seen = statement_timestamp()
RETURNING a.*, statement_timestamp() AS now,
    (SELECT routing FROM projects WHERE slug = $1) AS project_routing,
    (SELECT concurrency_limits FROM projects WHERE slug = $1) AS project_limits
"""

# Counted in its own statement, after _ADMIT locked the agent's row: a fresh snapshot then holds
# every claim a racing transaction of the same agent committed while we waited for the lock.
_HOLDING = "SELECT count(*) FROM tasks WHERE project = $1 AND lease_holder = $2 AND status = 'in-progress'"

# Implicit agents idle a day and holding nothing leave the registry.
_DROP_IDLE = """
DELETE FROM agents a WHERE a.project = $1 AND a.implicit AND a.id <> $2
  AND a.last_seen < statement_timestamp() - interval '24 hours'
  AND NOT EXISTS (SELECT 1 FROM tasks WHERE project = $1 AND lease_holder = a.id AND status = 'in-progress')
"""

# Ready tasks of the roles whose required labels the agent carries (JSONB containment), the oldest
# _PER_GROUP of each (role, priority, group), with how many not-done tasks each unblocks.
# $1 project, $2 roles (NULL: any), $3 the agent's labels, $4 per group, $5 limit.
_CANDIDATES = """
WITH ready AS (
    SELECT t.id, t.key, t.role, t.priority, t.seq, t.mission, t.routing,
           row_number() OVER (
               PARTITION BY t.role, t.priority, coalesce(t.routing->>'group', t.mission) ORDER BY t.seq
           ) AS rn
    FROM tasks t
    WHERE t.project = $1 AND t.status = 'not-started' AND t.pending_deps = 0
      AND (t.not_before IS NULL OR t.not_before <= statement_timestamp())
      AND ($2::text[] IS NULL OR t.role = ANY($2::text[]))
      AND (t.routing IS NULL OR t.routing->'requires' IS NULL OR $3::jsonb @> (t.routing->'requires'))
)
SELECT r.key, r.role, r.priority, r.seq, r.mission, r.routing,
       (SELECT count(*) FROM task_dependencies d JOIN tasks c ON c.id = d.task_id
        WHERE d.depends_on_id = r.id AND c.status <> 'done') AS unblocks
FROM ready r WHERE r.rn <= $4 ORDER BY r.priority, r.seq LIMIT $5
"""

_IN_PROGRESS_BY_KEY = """
SELECT routing->>'concurrency_key' AS ck, count(*) AS n FROM tasks
WHERE project = $1 AND status = 'in-progress' AND routing IS NOT NULL
  AND routing->>'concurrency_key' = ANY($2::text[])
GROUP BY 1
"""

_LOCK_KEY = "SELECT pg_advisory_xact_lock(hashtextextended($1, 13))"

_AGENTS = """
SELECT a.*,
       (SELECT count(*) FROM tasks WHERE project = $1 AND lease_holder = a.id AND status = 'in-progress') AS holding
FROM agents a WHERE a.project = $1 ORDER BY a.id
"""

# Claim the first $7 of the planned keys $2 (in that order) that are still ready and that no racing
# claim has locked: SKIP LOCKED makes racers fan out over the plan instead of queueing on its head.
# $1 project, $2 keys in plan order, $3 agent, $4 one token per key, $5 lease seconds, $6 event data.
_CLAIM = f"""
WITH planned AS (
    SELECT p.key, p.token, p.ord FROM unnest($2::text[], $4::text[]) WITH ORDINALITY AS p(key, token, ord)
), pick AS (
    SELECT t.id, planned.token, planned.ord FROM tasks t JOIN planned ON planned.key = t.key
    WHERE t.project = $1 AND t.status = 'not-started' AND t.pending_deps = 0
      AND (t.not_before IS NULL OR t.not_before <= statement_timestamp())
    ORDER BY planned.ord LIMIT $7
    FOR UPDATE OF t SKIP LOCKED
), claimed AS (
    UPDATE tasks
    SET status = 'in-progress', assignee = $3, lease_holder = $3, lease_token = pick.token,
        lease_expires_at = statement_timestamp() + make_interval(secs => $5::float8),
        started_at = coalesce(started_at, statement_timestamp()), updated_at = statement_timestamp(),
        version = version + 1
    FROM pick WHERE tasks.id = pick.id
    RETURNING {_RETURNING}, pick.ord AS claim_ord, pick.token AS claim_token
), logged AS (
    INSERT INTO events (project, task_key, kind, status, version, at, data)
    SELECT project, key, 'claimed', status, version, updated_at, $6::jsonb FROM claimed ORDER BY claim_ord
    RETURNING id, task_key
)
SELECT claimed.*, logged.id AS event_id FROM claimed JOIN logged ON logged.task_key = claimed.key
ORDER BY claimed.claim_ord
"""
#: planned tasks beyond the wanted ones, for racers to fan out over
_SPARE = 8

_TURN = """
INSERT INTO group_turns (project, role, grp, turn) VALUES ($1, $2, $3, $4)
ON CONFLICT (project, role, grp) DO UPDATE SET turn = GREATEST(group_turns.turn, excluded.turn)
"""

_OFFER = """
INSERT INTO task_offers (project, key, agent, expires_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (project, key) DO UPDATE SET agent = excluded.agent, expires_at = excluded.expires_at
"""

_CURSOR = """
INSERT INTO routing_cursors (project, role, position) VALUES ($1, $2, $3)
ON CONFLICT (project, role) DO UPDATE SET position = excluded.position
"""


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
        await conn.execute(_TURN, slug, role, grp, turn)


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
        me_row = await conn.fetchrow(_ADMIT, slug, agent, list(roles or ()))
        now: datetime = me_row["now"]
        me = _record(me_row, slug)
        held = int(await conn.fetchval(_HOLDING, slug, agent))
        free = me.free(held)
        want = min(limit, free)
        if me_row["implicit"] and me_row["registered_at"] == now:
            await conn.execute(_DROP_IDLE, slug, agent)
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
        cand_rows = await conn.fetch(_CANDIDATES, slug, names, dict(me.labels), _PER_GROUP, _MAX_CANDIDATES)
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
            await conn.execute(_LOCK_KEY, f"{slug}\x1f{ck}")
        by_key = {r["ck"]: int(r["n"]) for r in await conn.fetch(_IN_PROGRESS_BY_KEY, slug, limited)} if limited else {}
        routed_roles = sorted({c.task.role for c in candidates if routing.strategy_for(settings, c.task.role) != PULL})
        agents: list[AgentRecord] = [me]
        holding = {me.id: held}
        offers: dict[str, routing.Offer] = {}
        cursors: dict[str, int] = {}
        if routed_roles:
            agents = []
            for r in await conn.fetch(_AGENTS, slug):
                rec = me if r["id"] == me.id else _record(r, slug)
                agents.append(rec)
                holding[rec.id] = int(r["holding"])
            keys = [c.task.key for c in candidates]
            for r in await conn.fetch(
                "SELECT key, agent, expires_at FROM task_offers WHERE project = $1 AND key = ANY($2::text[])",
                slug,
                keys,
            ):
                offers[r["key"]] = routing.Offer(agent=r["agent"], expires_at=r["expires_at"])
            for r in await conn.fetch(
                "SELECT role, position FROM routing_cursors WHERE project = $1 AND role = ANY($2::text[])",
                slug,
                routed_roles,
            ):
                cursors[r["role"]] = int(r["position"])
        turn_rows = await conn.fetch(
            "SELECT role, grp, turn FROM group_turns WHERE project = $1 AND role = ANY($2::text[])",
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
            rows = await conn.fetch(_CLAIM, slug, keys, agent, tokens, lease_seconds, {"agent": agent}, want)
            out.rows.extend(rows)
            out.tokens.extend(r["claim_token"] for r in rows)
        chosen_by_key = {t.key: t for t in plan.chosen}
        for row in out.rows:
            task = chosen_by_key[row["key"]]
            out.turns[(task.role, routing.group_of(task))] = int(row["event_id"])
        claimed = {r["key"] for r in out.rows}
        for key in sorted(claimed | set(plan.offers)):
            if key in claimed:
                await conn.execute("DELETE FROM task_offers WHERE project = $1 AND key = $2", slug, key)
            else:
                offer = plan.offers[key]
                await conn.execute(_OFFER, slug, key, offer.agent, offer.expires_at)
        for role, position in sorted(plan.cursors.items()):
            await conn.execute(_CURSOR, slug, role, position)
    return out
