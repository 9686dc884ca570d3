"""Routing policy (issue 13): which ready tasks one claim may take. Pure: no I/O, no clock.

Every backend loads a :class:`RoutingContext` (the claiming agent, the other agents and their
loads, live offers, in-progress counts per concurrency key, group turns) and the ready candidates
in dispatch order, then calls :func:`plan_claims`; it persists what the returned
:class:`ClaimPlan` says (claims, new offers, round-robin cursors). The rules live here once so the
in-memory, flatfile and Postgres backends cannot drift (STYLE rule 26).

The order a claim sees tasks in: priority; then fair share — within one priority, groups take turns
(the group served longest ago first, a group never served before any served one, ties by the age
of the group's oldest task); then, within a group, the claiming agent's label preferences, how many
tasks a task unblocks, and age. A task is skipped when the agent lacks a required label, when its
concurrency key is at its limit, when it is offered to another ready agent, or when its role routes
by a strategy that picks another agent (the task is then offered to that agent for the offer window).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from queue_service import domain
from queue_service.agents import AgentRecord
from queue_service.models import Preference, Project, Task

__all__ = [
    "Candidate",
    "ClaimPlan",
    "FairQueue",
    "Offer",
    "RoutingContext",
    "choose_agent",
    "fair_order",
    "group_of",
    "limit_for",
    "plan_claims",
    "preference_score",
    "satisfies",
    "strategy_for",
]

PULL = "pull"


def group_of(task: Task) -> str:
    """The task's fair-share group: its ``group``, or its mission."""
    return task.group or task.mission


def satisfies(requires: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """True if *labels* carry every required label with the required value."""
    return all(labels.get(name) == value for name, value in requires.items())


def preference_score(prefers: Sequence[Preference], labels: Mapping[str, str]) -> int:
    """Sum of the weights of the preferences whose labels all match."""
    return sum(p.weight for p in prefers if satisfies(p.labels, labels))


def limit_for(limits: Mapping[str, int], key: str | None) -> int | None:
    """The in-progress cap for concurrency key *key* (its own, else ``"*"``), or None: unlimited."""
    if key is None:
        return None
    if key in limits:
        return limits[key]
    return limits.get("*")


def strategy_for(project: Project, role: str) -> str:
    """The routing strategy of *role* in *project* (``pull`` unless set)."""
    return project.routing.get(role, PULL)


@dataclass(frozen=True)
class Offer:
    """A task reserved for one agent until ``expires_at``."""

    agent: str
    expires_at: datetime


@dataclass(frozen=True)
class Candidate:
    """A ready task and how many not-done tasks wait on it."""

    task: Task
    unblocks: int = 0


@dataclass
class RoutingContext:
    """What one claim decision reads. Backends fill it inside the claim's transaction/lock."""

    project: Project
    claimer: AgentRecord
    now: datetime
    ready_seconds: float
    offer_seconds: float
    #: every registered agent of the project (the claimer included)
    agents: Sequence[AgentRecord]
    #: tasks each agent holds now (in progress)
    holding: dict[str, int]
    #: live offers by task key (expired ones may be present: they are ignored)
    offers: dict[str, Offer]
    #: tasks in progress per concurrency key
    in_progress_by_key: dict[str, int]
    #: last turn each (role, group) was served; higher = more recent
    turns: Mapping[tuple[str, str], int]
    #: round-robin position per role
    cursors: dict[str, int]
    rng: random.Random = field(default_factory=random.Random)

    def free(self) -> int:
        """Slots the claiming agent may still fill (0 when drained)."""
        return self.claimer.free(self.holding.get(self.claimer.id, 0))

    def offer_live(self, offer: Offer | None) -> bool:
        """An offer counts while unexpired and its agent is registered, ready and not drained."""
        if offer is None or offer.expires_at <= self.now:
            return False
        agent = next((a for a in self.agents if a.id == offer.agent), None)
        return agent is not None and agent.ready(self.now, self.ready_seconds)


@dataclass
class ClaimPlan:
    """What a claim decided: tasks to claim (in order), offers to record, cursors to store."""

    chosen: list[Task] = field(default_factory=list)
    #: new offers by task key
    offers: dict[str, Offer] = field(default_factory=dict)
    #: round-robin cursors that moved, by role
    cursors: dict[str, int] = field(default_factory=dict)


def choose_agent(strategy: str, task: Task, ctx: RoutingContext, outstanding: Mapping[str, int]) -> AgentRecord | None:
    """The agent *strategy* routes *task* to, among ready agents that serve its role, carry its
    required labels and have a free slot; label preferences narrow the field first. Ties are broken
    by agent id, so the choice is deterministic except for ``random``."""
    pool = [
        a
        for a in ctx.agents
        if a.ready(ctx.now, ctx.ready_seconds)
        and a.serves(task.role)
        and satisfies(task.requires, a.labels)
        and a.free(ctx.holding.get(a.id, 0)) > 0
    ]
    if not pool:
        return None
    if task.prefers:
        best = max(preference_score(task.prefers, a.labels) for a in pool)
        pool = [a for a in pool if preference_score(task.prefers, a.labels) == best]
    pool.sort(key=lambda a: a.id)
    if strategy == "round-robin":
        at = ctx.cursors.get(task.role, 0)
        ctx.cursors[task.role] = at + 1
        return pool[at % len(pool)]
    if strategy == "least-busy":
        # in-progress (plus offers waiting for it) per slot; offers count so one idle agent does not
        # collect every offer before it had a chance to claim
        return min(pool, key=lambda a: ((ctx.holding.get(a.id, 0) + outstanding.get(a.id, 0)) / a.capacity, a.id))
    return ctx.rng.choice(pool)


class FairQueue:
    """Ready candidates in fair-share order (see the module docstring): the top priority first and,
    within it, the (role, group) served longest ago; within a group, the claimer's label preferences,
    then tasks unblocked, then age. :meth:`served` records that a popped task was taken."""

    def __init__(
        self, candidates: Sequence[Candidate], turns: Mapping[tuple[str, str], int], labels: Mapping[str, str]
    ) -> None:
        self._turns = dict(turns)
        self._next_turn = max(self._turns.values(), default=0) + 1
        levels: dict[int, list[Candidate]] = {}
        for c in candidates:
            levels.setdefault(_order(c)[0], []).append(c)
        self._levels = [levels[rank] for rank in sorted(levels, reverse=True)]
        self._labels = labels
        self._queues: dict[tuple[str, str], deque[Candidate]] = {}

    def pop(self) -> tuple[tuple[str, str], Candidate] | None:
        """The next candidate and its (role, group) slot, or None when every one was popped."""
        while not self._queues:
            if not self._levels:
                return None
            lines: dict[tuple[str, str], list[Candidate]] = {}
            for c in self._levels.pop():
                lines.setdefault((c.task.role, group_of(c.task)), []).append(c)
            for key, members in lines.items():
                members.sort(key=lambda c: (-preference_score(c.task.prefers, self._labels), *_order(c)))
                self._queues[key] = deque(members)
        slot = min(self._queues, key=lambda g: (self._turns.get(g, 0), self._queues[g][0].task.seq))
        line = self._queues[slot]
        cand = line.popleft()
        if not line:
            del self._queues[slot]
        return slot, cand

    def served(self, slot: tuple[str, str]) -> None:
        """The task last popped from *slot* was taken: its group had its turn."""
        self._turns[slot] = self._next_turn
        self._next_turn += 1


def fair_order(candidates: Sequence[Candidate], turns: Mapping[tuple[str, str], int], limit: int) -> list[Candidate]:
    """The first *limit* of *candidates* in the order claims take them (every one taken in turn):
    what ``ready`` lists and ``next`` shows (issue 11's one dispatch order)."""
    fair = FairQueue(candidates, turns, {})
    out: list[Candidate] = []
    while len(out) < limit and (picked := fair.pop()) is not None:
        slot, cand = picked
        out.append(cand)
        fair.served(slot)
    return out


def plan_claims(ctx: RoutingContext, candidates: Sequence[Candidate], want: int, spare: int = 0) -> ClaimPlan:
    """Choose up to *want* of *candidates* (ready tasks of the claim's roles, in dispatch order) for
    ``ctx.claimer``, by the rules in the module docstring. Mutates ``ctx`` counters as it goes.

    *spare*: after the *want* first, up to that many more acceptable tasks, in order, for a backend
    whose racing claimers may win some of the first ones (it claims the first *want* it can lock).
    Spares make no offers and move no cursor, and each counts against its concurrency key as if
    claimed, so any subset of the returned tasks respects the limits.
    """
    plan = ClaimPlan()
    want = min(want, ctx.free())
    if want <= 0:
        return plan
    total = want + spare
    me = ctx.claimer
    outstanding: dict[str, int] = {}
    for offer in ctx.offers.values():
        if ctx.offer_live(offer):
            outstanding[offer.agent] = outstanding.get(offer.agent, 0) + 1
    cursors_before = dict(ctx.cursors)
    fair = FairQueue(candidates, ctx.turns, me.labels)
    while len(plan.chosen) < total and (picked := fair.pop()) is not None:
        slot, cand = picked
        if _take(ctx, plan, cand.task, outstanding, may_offer=len(plan.chosen) < want):
            plan.chosen.append(cand.task)
            fair.served(slot)
    plan.cursors = {r: n for r, n in ctx.cursors.items() if cursors_before.get(r) != n}
    return plan


def _order(c: Candidate) -> tuple[int, int, int]:
    return domain.dispatch_order(c.task, c.unblocks)


def _take(ctx: RoutingContext, plan: ClaimPlan, task: Task, outstanding: dict[str, int], *, may_offer: bool) -> bool:
    me = ctx.claimer
    if not satisfies(task.requires, me.labels):
        return False
    limit = limit_for(ctx.project.concurrency_limits, task.concurrency_key)
    key = task.concurrency_key
    if limit is not None and key is not None and ctx.in_progress_by_key.get(key, 0) >= limit:
        return False
    offer = ctx.offers.get(task.key)
    if ctx.offer_live(offer):
        assert offer is not None
        if offer.agent != me.id:
            return False
    else:
        strategy = strategy_for(ctx.project, task.role)
        if strategy != PULL and not may_offer:
            return False  # a spare never routes: the strategy decides only for the tasks wanted
        if strategy != PULL:
            target = choose_agent(strategy, task, ctx, outstanding)
            if target is not None and target.id != me.id:
                offer = Offer(agent=target.id, expires_at=ctx.now + timedelta(seconds=ctx.offer_seconds))
                ctx.offers[task.key] = offer
                plan.offers[task.key] = offer
                outstanding[target.id] = outstanding.get(target.id, 0) + 1
                return False
    ctx.holding[me.id] = ctx.holding.get(me.id, 0) + 1
    if task.concurrency_key is not None:
        ctx.in_progress_by_key[task.concurrency_key] = ctx.in_progress_by_key.get(task.concurrency_key, 0) + 1
    return True
