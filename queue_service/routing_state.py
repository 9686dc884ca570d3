"""Routing for the state-machine backends (memory, flatfile): the agent registry and offers of one
project, kept beside its :class:`~queue_service.state.ProjectState`, and the routed pick.

:class:`RoutingIndex` holds what is persisted (agents, offers, round-robin cursors: they travel in
``Changes.routing`` as a :class:`RoutingDelta`, so the flatfile journal replays them) and what is
derived from the tasks (who holds what, in-progress counts per concurrency key, group turns from
claim events, whether any ready task needs the routed pick at all). The policy itself is
:mod:`queue_service.routing`.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from queue_service import routing
from queue_service.agents import IMPLICIT_IDLE, AgentRecord
from queue_service.models import Project, Task, TaskStatus

__all__ = ["RoutingDelta", "RoutingIndex", "StateLike", "pick_routed"]

S = TaskStatus
#: a claim refreshes its agent's ``last_seen`` only when it is older than this (keeps polling
#: claimers from writing a journal line per poll)
_SEEN_RESOLUTION = 1.0


@dataclass
class RoutingDelta:
    """Registry changes of one operation (None removes an agent / an offer)."""

    agents: dict[str, AgentRecord | None] = field(default_factory=dict)
    offers: dict[str, routing.Offer | None] = field(default_factory=dict)
    cursors: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.agents or self.offers or self.cursors)


class RoutingIndex:
    """Registry and routing bookkeeping of one project (see the module docstring)."""

    def __init__(self) -> None:
        self.agents: dict[str, AgentRecord] = {}
        self.offers: dict[str, routing.Offer] = {}
        self.cursors: dict[str, int] = {}
        # derived from tasks / events
        self.holding: dict[str, set[str]] = {}
        self.by_key: dict[str, set[str]] = {}
        self.turns: dict[tuple[str, str], int] = {}
        self._turn = 0
        #: not-started tasks per role that need the routed pick (labels, preferences, keys)
        self._constrained: Counter[str] = Counter()
        #: not-started tasks per role and group (fair share matters once a role has two groups)
        self._groups: dict[str, Counter[str]] = {}
        self.rng = random.Random()

    # -- derived ----------------------------------------------------------------------------
    def observe(self, old: Task | None, new: Task) -> None:
        """Keep the derived indexes in step with one task change."""
        if old is not None:
            self._count(old, -1)
        self._count(new, +1)
        if new.status is not S.NOT_STARTED:
            self.offers.pop(new.key, None)

    def _count(self, task: Task, sign: int) -> None:
        if task.status is S.IN_PROGRESS:
            if task.lease_holder is not None:
                _toggle(self.holding, task.lease_holder, task.key, sign)
            if task.concurrency_key is not None:
                _toggle(self.by_key, task.concurrency_key, task.key, sign)
        elif task.status is S.NOT_STARTED:
            if task.requires or task.prefers or task.concurrency_key is not None:
                self._constrained[task.role] += sign
            groups = self._groups.setdefault(task.role, Counter())
            groups[routing.group_of(task)] += sign
            if groups[routing.group_of(task)] <= 0:
                del groups[routing.group_of(task)]

    def served(self, task: Task) -> None:
        """A claim of *task* happened: its group had its turn."""
        self._turn += 1
        self.turns[(task.role, routing.group_of(task))] = self._turn

    def apply(self, delta: RoutingDelta) -> None:
        """Apply registry changes (journal replay included)."""
        for agent_id, record in delta.agents.items():
            if record is None:
                self.agents.pop(agent_id, None)
            else:
                self.agents[agent_id] = record
        for key, offer in delta.offers.items():
            if offer is None:
                self.offers.pop(key, None)
            else:
                self.offers[key] = offer
        self.cursors.update(delta.cursors)

    # -- claims -----------------------------------------------------------------------------
    def needs_routing(self, project: Project, roles: Iterable[str]) -> bool:
        """False when the plain priority-then-age pick gives the same answer as the routed one."""
        for role in roles:
            if routing.strategy_for(project, role) != routing.PULL:
                return True
            if self._constrained.get(role, 0) > 0 or len(self._groups.get(role, ())) > 1:
                return True
        return False

    def admit(
        self, project: str, agent: str, roles: Sequence[str] | None, now: datetime, delta: RoutingDelta
    ) -> AgentRecord:
        """The claiming agent's record, registering it implicitly (roles from the claim, capacity 1)
        and refreshing ``last_seen``; changes go to *delta*. Idle implicit agents are dropped."""
        for other in list(self.agents.values()):
            idle = now - other.last_seen > IMPLICIT_IDLE
            if other.implicit and idle and other.id != agent and not self.holding.get(other.id):
                delta.agents[other.id] = None
        record = self.agents.get(agent)
        if record is None:
            record = AgentRecord(
                project=project, id=agent, roles=tuple(roles or ()), implicit=True, last_seen=now, registered_at=now
            )
            delta.agents[agent] = record
        elif (now - record.last_seen).total_seconds() >= _SEEN_RESOLUTION:
            record = record.model_copy(update={"last_seen": now})
            delta.agents[agent] = record
        return record

    def free(self, record: AgentRecord) -> int:
        """Slots *record* may still fill: see :meth:`AgentRecord.free`."""
        return record.free(len(self.holding.get(record.id, ())))


class StateLike(Protocol):
    """What :func:`pick_routed` reads of a ProjectState."""

    project: Project
    routing: RoutingIndex

    def ready_ordered(self, roles: Sequence[str] | None, limit: int, now: datetime) -> tuple[list[Task], int]: ...

    def unblocks(self, key: str) -> int: ...


def pick_routed(
    state: StateLike,
    me: AgentRecord,
    roles: Sequence[str],
    limit: int,
    now: datetime,
    ready_seconds: float,
    offer_seconds: float,
    delta: RoutingDelta,
) -> list[Task]:
    """The tasks *me* may claim now by :func:`routing.plan_claims`; offers and cursors go to *delta*."""
    index = state.routing
    ready, _ = state.ready_ordered(roles, 1 << 62, now)
    agents = dict(index.agents)
    agents[me.id] = me
    ctx = routing.RoutingContext(
        project=state.project,
        claimer=me,
        now=now,
        ready_seconds=ready_seconds,
        offer_seconds=offer_seconds,
        agents=sorted(agents.values(), key=lambda a: a.id),
        holding={a: len(keys) for a, keys in index.holding.items()},
        offers=dict(index.offers),
        in_progress_by_key={k: len(keys) for k, keys in index.by_key.items()},
        turns=index.turns,
        cursors=dict(index.cursors),
        rng=index.rng,
    )
    plan = routing.plan_claims(ctx, [routing.Candidate(t, state.unblocks(t.key)) for t in ready], limit)
    delta.offers.update(plan.offers)
    delta.cursors.update(plan.cursors)
    return plan.chosen


def _toggle(index: dict[str, set[str]], name: str, key: str, sign: int) -> None:
    if sign > 0:
        index.setdefault(name, set()).add(key)
    else:
        keys = index.get(name)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del index[name]
