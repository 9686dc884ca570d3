"""DispatchRules: the plans of fenced leases (claim, heartbeat, complete, fail, release, retry, sweep).

The dispatch order and the heaps that serve it live in ``core.py`` (``apply`` keeps them); this module
reads them to claim, and writes the lease transitions.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from queue_service import domain, exceptions
from queue_service.dispatch_config import DispatchConfig
from queue_service.models import (
    Claim,
    Lease,
    Task,
    TaskStatus,
)
from queue_service.routing_state import RoutingDelta, StateLike, pick_routed
from queue_service.state.changes import Changes
from queue_service.state.core import EVENT_LEASE_EXPIRED, StateCore, View

__all__ = ["DispatchRules"]

S = TaskStatus


class DispatchRules(StateCore):
    """Plans for lease operations; each returns Changes and mutates nothing but stale heap entries."""

    def has_expired_lease(self, now: datetime) -> bool:
        """True if some lease is past its expiry: O(in-flight leases), the check before a full plan_sweep."""
        return any(
            (exp := self.tasks[k].lease_expires_at) is not None and exp <= now for k in self.leased if k in self.tasks
        )

    def next_due(self, roles: Sequence[str] | None, now: datetime, *, leases: bool) -> float | None:
        """Seconds until a backoff of *roles* comes due (and, with *leases*, until a lease of *roles*
        expires: a backend that sweeps on claim can hand that task out then), or None."""
        best: float | None = None

        def consider(at: datetime | None) -> None:
            nonlocal best
            if at is not None:
                secs = max(0.0, (at - now).total_seconds())
                best = secs if best is None else min(best, secs)

        for role in roles or self.roles():
            for key in self.eligible.get(role, ()):
                not_before = self.tasks[key].not_before
                if not_before is not None and not_before > now:
                    consider(not_before)
        if leases:
            for key in self.leased:
                task = self.tasks.get(key)
                if task is not None and (not roles or task.role in roles):
                    consider(task.lease_expires_at)
        return best

    def plan_claim(
        self,
        agent: str,
        roles: Sequence[str] | None,
        lease_seconds: float,
        now: datetime,
        config: DispatchConfig | None = None,
    ) -> tuple[Changes, Claim] | None:
        """Claim the best ready task of *roles*, or None. Stale heap entries are dropped as found."""
        changes, claims = self.plan_claim_many(agent, roles, 1, lease_seconds, now, config)
        return (changes, claims[0]) if claims else None

    def plan_claim_many(
        self,
        agent: str,
        roles: Sequence[str] | None,
        limit: int,
        lease_seconds: float,
        now: datetime,
        config: DispatchConfig | None = None,
    ) -> tuple[Changes, list[Claim]]:
        """Claim up to *limit* ready tasks of *roles* for *agent*, in one Changes (one token each).

        The agent is registered implicitly if unknown, and a registered agent never gets more than its
        free capacity (issue 13). When routing matters (strategies, labels, concurrency keys, several
        groups) the pick is :func:`queue_service.routing_state.pick_routed`; otherwise the heap pick.
        (The Changes may hold only a registry update when nothing was claimed.)
        """
        cfg = config or DispatchConfig()
        delta = RoutingDelta()
        me = self.routing.admit(self.project.slug, agent, roles, now, delta)
        # a claim without roles takes any role, as before (registered roles steer routing only)
        names = list(dict.fromkeys(roles)) if roles else list(self._heaps)
        want = min(limit, self.routing.free(me))
        if want <= 0:
            chosen: list[Task] = []
        elif self.routing.needs_routing(self.project, names):
            # a ProjectState (these rules' only concrete class) has the read projections pick_routed needs
            state = cast(StateLike, self)
            chosen = pick_routed(state, me, names, want, now, cfg.agent_ready_seconds, cfg.offer_seconds, delta)
        else:
            chosen = self._pick_heap(names, want, now)
        changes = Changes(routing=delta if delta else None)
        claims: list[Claim] = []
        expires = now + timedelta(seconds=lease_seconds)
        for task in chosen:
            token = domain.new_lease_token(lease_seconds)
            new = task.model_copy(
                update={"status": S.IN_PROGRESS, "assignee": agent, "lease_holder": agent, "lease_expires_at": expires}
            )
            stored = self._transition(changes, task, new, "claimed", now, token=token, agent=agent)
            claims.append(
                Claim(task=stored, lease=Lease(token=token, holder=agent, expires_at=expires, seconds=lease_seconds))
            )
        return changes, claims

    def _pick_heap(self, names: list[str], limit: int, now: datetime) -> list[Task]:
        """The first *limit* ready tasks of roles *names* in dispatch order, off the heaps.

        Stale heap entries are dropped as found; every entry still eligible goes back into its heap
        (the chosen ones too: ``apply`` drops them once they are in-progress, and a commit that fails
        must not lose them).
        """
        deferred: list[tuple[str, tuple[int, int, str]]] = []
        chosen: list[Task] = []
        picked: set[str] = set()
        try:
            while len(chosen) < limit:
                best: tuple[tuple[int, int, str], str] | None = None
                for role in names:
                    heap = self._heaps.get(role)
                    while heap and heap[0][2] not in self.eligible.get(role, ()):
                        heapq.heappop(heap)  # stale: no longer eligible
                    if heap and (best is None or heap[0] < best[0]):
                        best = (heap[0], role)
                if best is None:
                    break
                entry, role = best
                heapq.heappop(self._heaps[role])
                task = self.tasks[entry[2]]
                if task.not_before is not None and task.not_before > now:
                    deferred.append((role, entry))
                    continue
                if task.status is not S.NOT_STARTED or self.pending.get(task.key, 0) != 0:
                    continue
                deferred.append((role, entry))  # stays in the heap until apply() removes eligibility
                if task.key in picked:
                    continue  # a second entry for the same key (left by a priority change)
                picked.add(task.key)
                chosen.append(task)
        finally:
            for role, entry in deferred:
                heapq.heappush(self._heaps[role], entry)
        return self._dispatch_first(chosen, names, limit, now)

    def _dispatch_first(self, by_age: list[Task], names: list[str], limit: int, now: datetime) -> list[Task]:
        """The first *limit* ready tasks in ``domain.dispatch_order``, from *by_age* (the first *limit*
        by priority then age, off the heaps) plus the first *limit* ready tasks of each role's boost
        heap (the tasks that unblock something, already in dispatch order).

        Why this is enough: a task that unblocks nothing sorts exactly as on the age heap, so any such
        task in the true first *limit* is already in *by_age*; the others are at the top of a boost heap.
        """
        pool = {t.key: t for t in by_age}
        boosted = False
        for role in names:
            heap = self._boost.get(role)
            kept: list[tuple[int, int, int, str]] = []
            seen: set[str] = set()
            found = 0
            while heap and found < limit:
                entry = heapq.heappop(heap)
                key = entry[3]
                task = self.tasks.get(key)
                if task is None or key in seen or not self._boost_valid(entry, task, role):
                    continue  # stale or duplicate: dropped
                seen.add(key)
                kept.append(entry)
                if task.not_before is not None and task.not_before > now:
                    continue  # backing off: stays, not a candidate yet
                pool[key] = task
                found += 1
                boosted = True
            for entry in kept:
                heapq.heappush(self._boost.setdefault(role, []), entry)
        if not boosted:
            return by_age
        ordered = sorted(pool.values(), key=lambda t: domain.dispatch_order(t, self.unblocks(t.key)))
        return ordered[:limit]

    def plan_heartbeat(self, key: str, token: str, lease_seconds: float, now: datetime) -> tuple[Changes, Lease]:
        """Extend a lease. Not a task change: no version bump, no event (lease bookkeeping only)."""
        task = self._check_token(key, token, now)
        expires = now + timedelta(seconds=lease_seconds)
        changes = Changes(tasks={key: task.model_copy(update={"lease_expires_at": expires})})
        return changes, Lease(token=token, holder=task.lease_holder or "", expires_at=expires, seconds=lease_seconds)

    def plan_complete(self, key: str, token: str, result: Any, now: datetime) -> tuple[Changes, Task]:
        """Done with result; dependents promoted."""
        task = self._check_token(key, token, now)
        changes = Changes()
        new = task.model_copy(update={"status": S.DONE, "result": result})
        return changes, self._transition(changes, task, new, "completed", now, token=None)

    def plan_complete_many(
        self, items: Sequence[tuple[str, str, Any]], now: datetime
    ) -> tuple[Changes, list[Task | exceptions.QueueServiceError]]:
        """Complete each valid ``(key, token, result)`` in one Changes; see Dispatcher.complete_many.

        Items are checked in order against the state *including* this batch's earlier items, so a
        repeated item finds its task already done and gets a LeaseError.
        """
        changes = Changes()
        view = View(self, changes)
        out: list[Task | exceptions.QueueServiceError] = []
        for key, token, result in items:
            try:
                task = self._check_token(key, token, now, view)
            except exceptions.LeaseError as exc:
                out.append(exc)
                continue
            new = task.model_copy(update={"status": S.DONE, "result": result})
            out.append(self._transition(changes, task, new, "completed", now, token=None))
        return changes, out

    def _failure(
        self,
        changes: Changes,
        task: Task,
        error: str,
        retryable: bool,
        config: DispatchConfig,
        now: datetime,
        kind: str,
        backoff: bool = True,
    ) -> Task:
        attempts = task.attempts + 1
        if retryable and attempts < task.max_attempts and not backoff:
            # an expired lease: the holder vanished, the task is not at fault; ready again at once
            new = task.model_copy(
                update={
                    "status": S.NOT_STARTED,
                    "attempts": attempts,
                    "last_error": error,
                    "not_before": None,
                    "assignee": None,
                }
            )
            return self._transition(
                changes, task, new, kind, now, token=None, retry_in=0.0, attempt=attempts, error=error
            )
        if retryable and attempts < task.max_attempts:
            delay = domain.backoff_delay(
                attempts, config.backoff_base_seconds, config.backoff_max_seconds, config.backoff_jitter
            )
            new = task.model_copy(
                update={
                    "status": S.NOT_STARTED,
                    "attempts": attempts,
                    "last_error": error,
                    "not_before": now + delay,
                    "assignee": None,
                }
            )
            return self._transition(
                changes, task, new, kind, now, token=None, retry_in=delay.total_seconds(), attempt=attempts, error=error
            )
        update: dict[str, Any] = {"status": S.FAILED, "attempts": attempts, "last_error": error}
        if kind == "lease_expired":
            update["assignee"] = None  # an expired holder is not working on it any more
        new = task.model_copy(update=update)
        # every attempt's error stays in the event log (the task keeps only the last): the UI lists them all
        return self._transition(
            changes, task, new, kind, now, token=None, dead_letter=True, attempt=attempts, error=error
        )

    def plan_fail(
        self, key: str, token: str, error: str, retryable: bool, config: DispatchConfig, now: datetime
    ) -> tuple[Changes, Task]:
        """Count an attempt; backoff or dead-letter."""
        task = self._check_token(key, token, now)
        changes = Changes()
        return changes, self._failure(changes, task, error, retryable, config, now, "failed")

    def plan_release(self, key: str, token: str, now: datetime) -> tuple[Changes, Task]:
        """Give back without counting an attempt."""
        task = self._check_token(key, token, now)
        changes = Changes()
        # nobody works on it any more: the old holder no longer shows as its assignee
        new = task.model_copy(update={"status": S.NOT_STARTED, "assignee": None})
        return changes, self._transition(changes, task, new, "released", now, token=None)

    def plan_retry(self, key: str, actor: str, now: datetime) -> tuple[Changes, Task]:
        """Revive a failed/blocked/cancelled task."""
        task = self.require(key)
        if task.status not in (S.FAILED, S.BLOCKED, S.CANCELLED):
            raise exceptions.InvalidTransition(
                f"task {key} is {task.status.value}; only failed, blocked or cancelled tasks can be retried",
                task=key,
                current=task.status.value,
                target=S.NOT_STARTED.value,
            )
        changes = Changes()
        new = task.model_copy(
            update={"status": S.NOT_STARTED, "attempts": 0, "not_before": None, "blocked_reason": None}
        )
        return changes, self._transition(changes, task, new, "retried", now, actor=actor)

    def plan_sweep(self, config: DispatchConfig, now: datetime) -> tuple[Changes, list[str]]:
        """Expire leases past their expiry (counts an attempt; ready again at once, first in line)."""
        changes = Changes()
        expired: list[str] = []
        for key in sorted(self.leased, key=lambda k: self.tasks[k].seq):
            task = self.tasks[key]
            if task.lease_expires_at is not None and task.lease_expires_at <= now:
                expired.append(key)
                self._failure(
                    changes,
                    task,
                    f"lease of {task.lease_holder} expired",
                    True,
                    config,
                    now,
                    EVENT_LEASE_EXPIRED,
                    backoff=False,
                )
        # backoffs that came due: ready now (their heap entries were deferred)
        for role_keys in self.eligible.values():
            for key in role_keys:
                task = self.tasks[key]
                if task.not_before is not None and task.not_before <= now and key not in changes.tasks:
                    changes.ready.append(key)
        return changes, expired
