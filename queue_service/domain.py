"""Pure domain rules shared by every backend: transitions, readiness, dependency graphs, backoff.

Backends persist; these functions decide. Keeping them here (and free of I/O) is what lets the
in-memory, Postgres and flatfile backends agree, and the contract suite check that they do.
"""

from __future__ import annotations

import math
import random
import re
import secrets
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

from queue_service import exceptions
from queue_service.models import Event, Priority, Task, TaskStatus

__all__ = [
    "lease_length",
    "HUMAN_TRANSITIONS",
    "TERMINAL_FAILURE",
    "LEASE_REFUSAL_REASONS",
    "backoff_delay",
    "check_transition",
    "dispatch_order",
    "lease_length_of",
    "lease_refusal",
    "new_lease_token",
    "find_cycle",
    "format_key",
    "is_ready",
    "key_number",
    "resolve_batch_deps",
]

S = TaskStatus

#: Status changes allowed through patch/TASKS.md edits (claims, completions and failures have their
#: own operations, which check their own preconditions).
HUMAN_TRANSITIONS: Mapping[TaskStatus, frozenset[TaskStatus]] = {
    S.NOT_STARTED: frozenset({S.IN_PROGRESS, S.NEEDS_QA, S.DONE, S.BLOCKED, S.CANCELLED, S.FAILED}),
    S.IN_PROGRESS: frozenset({S.NOT_STARTED, S.NEEDS_QA, S.DONE, S.BLOCKED, S.FAILED, S.CANCELLED}),
    S.NEEDS_QA: frozenset({S.DONE, S.NOT_STARTED, S.IN_PROGRESS, S.BLOCKED, S.CANCELLED}),
    S.DONE: frozenset({S.NOT_STARTED, S.NEEDS_QA}),
    S.BLOCKED: frozenset({S.NOT_STARTED, S.CANCELLED, S.DONE}),
    S.FAILED: frozenset({S.NOT_STARTED, S.CANCELLED}),
    S.CANCELLED: frozenset({S.NOT_STARTED}),
}

#: A dependency in one of these states will never become done by itself: dependents get blocked.
TERMINAL_FAILURE = frozenset({S.FAILED, S.CANCELLED})

#: Prefix of ``blocked_reason`` set when a dependency failed; lets the unblock step tell these apart
#: from blocks a human set (which only a human lifts).
DEPENDENCY_BLOCK_PREFIX = "dependency "


def check_transition(key: str, current: TaskStatus, target: TaskStatus) -> None:
    """Raise InvalidTransition unless a human/patch may move *key* from *current* to *target*."""
    if current == target:
        return
    if target not in HUMAN_TRANSITIONS[current]:
        allowed = ", ".join(sorted(s.value for s in HUMAN_TRANSITIONS[current]))
        raise exceptions.InvalidTransition(
            f"task {key} cannot go from {current.value} to {target.value} (allowed: {allowed})",
            task=key,
            current=current.value,
            target=target.value,
        )


def is_ready(task: Task, dep_status: Mapping[str, TaskStatus], now: datetime) -> bool:
    """The readiness rule: not-started, every dependency done, and ``not_before`` passed."""
    if task.status is not S.NOT_STARTED:
        return False
    if task.not_before is not None and task.not_before > now:
        return False
    return all(dep_status.get(dep) is S.DONE for dep in task.depends_on)


def dependency_block_reason(dep_key: str, dep_status: TaskStatus) -> str:
    """The ``blocked_reason`` written on dependents of a task that failed or was cancelled."""
    return f"{DEPENDENCY_BLOCK_PREFIX}{dep_key} is {dep_status.value}"


def is_dependency_block(reason: str | None) -> bool:
    """True when a task was blocked automatically because a dependency failed."""
    return bool(reason and reason.startswith(DEPENDENCY_BLOCK_PREFIX))


def find_cycle(edges: Mapping[str, Iterable[str]]) -> list[str] | None:
    """Return one dependency cycle (``[a, b, …, a]``) in *edges* (task → its deps), or None.

    Iterative DFS so a 10,000-long chain does not hit the recursion limit.
    """
    white, grey, black = 0, 1, 2
    colour: dict[str, int] = {}
    for root in edges:
        if colour.get(root, white) != white:
            continue
        stack: list[tuple[str, list[str]]] = [(root, list(edges.get(root, ())))]
        path = [root]
        colour[root] = grey
        while stack:
            node, pending = stack[-1]
            if pending:
                nxt = pending.pop()
                state = colour.get(nxt, white)
                if state == grey:
                    return [*path[path.index(nxt) :], nxt]
                if state == white:
                    colour[nxt] = grey
                    path.append(nxt)
                    stack.append((nxt, list(edges.get(nxt, ()))))
            else:
                colour[node] = black
                stack.pop()
                path.pop()
    return None


def check_no_cycle(edges: Mapping[str, Iterable[str]]) -> None:
    """Raise DependencyCycle naming the cycle if *edges* has one."""
    cycle = find_cycle(edges)
    if cycle:
        raise exceptions.DependencyCycle(f"dependency cycle: {' -> '.join(cycle)}", cycle=cycle)


def resolve_batch_deps(deps: Iterable[str], batch_keys: list[str], index: int) -> list[str]:
    """Replace ``#i`` references with the key of the *i*-th task of the batch."""
    out: list[str] = []
    for dep in deps:
        if dep.startswith("#"):
            i = int(dep[1:])
            if i >= len(batch_keys) or i < 0:
                raise exceptions.UnknownDependency(
                    f"task #{index} depends on {dep}, but the batch has only {len(batch_keys)} tasks",
                    dependency=dep,
                )
            if i == index:
                raise exceptions.DependencyCycle(f"task #{index} depends on itself", cycle=[dep, dep])
            out.append(batch_keys[i])
        else:
            out.append(dep)
    return list(dict.fromkeys(out))


def format_key(prefix: str, number: int) -> str:
    """The allocated key for *number* (``WEB-12``)."""
    return f"{prefix}-{number}"


def key_number(prefix: str, key: str) -> int | None:
    """The N of a ``PREFIX-N`` key, or None for keys of another shape (imported ones)."""
    m = re.fullmatch(re.escape(prefix) + r"-(\d+)", key)
    return int(m.group(1)) if m and not m.group(1).startswith("0") else None


def backoff_delay(
    attempt: int, base: float, cap: float, jitter: float = 0.1, rng: random.Random | None = None
) -> timedelta:
    """Delay before retry number *attempt* (1-based): ``base·2^(attempt-1)``, capped, ±jitter."""
    raw = min(cap, base * (2 ** max(0, attempt - 1)))
    spread = raw * jitter
    r = rng or random
    return timedelta(seconds=max(0.0, raw + r.uniform(-spread, spread)))


#: the longest lease anyone may ask for, seconds (the API's bound; a lease token names at most this)
MAX_LEASE_SECONDS = 86_400.0


def lease_length(requested: float | None, default: float) -> float:
    """The lease to grant: *requested*, or *default* when None. Zero, negative or non-finite is a
    ValidationError (422) on every backend: ``0`` must never silently mean "the default"; so is a
    requested lease longer than :data:`MAX_LEASE_SECONDS` (the API refuses it too)."""
    lease = float(default if requested is None else requested)
    if not math.isfinite(lease) or lease <= 0:
        raise exceptions.ValidationError(f"lease_seconds must be positive, got {requested}", value=requested)
    if requested is not None and lease > MAX_LEASE_SECONDS:
        raise exceptions.ValidationError(
            f"lease_seconds must be at most {MAX_LEASE_SECONDS:g}, got {requested}", value=requested
        )
    return lease


# -- leases (issue 11) -------------------------------------------------------------------------
#: Why a lease token is refused (``LeaseError.details["reason"]``).
LEASE_REFUSAL_REASONS = ("expired", "reclaimed", "released", "cancelled", "blocked", "completed")

_PRIORITY_RANK = {Priority.P0: 0, Priority.P1: 1, Priority.P2: 2, Priority.P3: 3}


def new_lease_token(lease_seconds: float) -> str:
    """A fresh, unguessable lease token that also names the lease length it was granted with.

    The length rides in the token (``<random>.<seconds>``) so that a renewal by any call carrying the
    token (heartbeat without a length, a note) keeps the holder's own lease length on every backend,
    without a stored column: an agent's 30-minute lease is never shrunk to a worker's 30 seconds.
    The token is compared whole, so altering the suffix only makes it invalid. A length the lease
    rules refuse (:func:`lease_length`) raises ValidationError: no token is minted for it.
    """
    lease = lease_length(lease_seconds, lease_seconds)
    return f"{secrets.token_urlsafe(24)}.{max(1, round(lease))}"


def lease_length_of(token: str) -> float | None:
    """The lease length a token was granted with, or None (older tokens, or not ours)."""
    _, sep, tail = token.rpartition(".")
    if not sep or not tail.isdigit() or len(tail) > 6:
        return None
    seconds = int(tail)
    return float(seconds) if 0 < seconds <= 86_400 else None


def dispatch_order(task: Task, unblocks: int) -> tuple[int, int, int]:
    """The one dispatch order (claims, ``next``, ``ready``, MCP): priority, then how many not-done
    tasks it unblocks (more first), then age (``seq``). Group round-robin slots in after priority
    once tasks have groups (routing issue)."""
    return (_PRIORITY_RANK[task.priority], -unblocks, task.seq)


def lease_refusal(task: Task, recent: list[Event]) -> dict[str, object]:
    """Why a lease token for *task* is refused, from the task as it is now and its newest events
    (newest first). The lease-expired-but-not-yet-swept case is decided by the backend (it knows the
    clock and the token); this covers everything after the lease ended.

    Returns ``{"reason": …, "at": iso or None, "by": who or None}``.
    """

    def last(*kinds: str) -> Event | None:
        return next((e for e in recent if e.kind in kinds), None)

    def actor(e: Event | None) -> str | None:
        if e is None:
            return None
        who = e.data.get("actor") or e.data.get("agent")
        return str(who) if who else None

    def at(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    if task.status is S.DONE:
        return {"reason": "completed", "at": at(task.completed_at), "by": task.assignee}
    if task.status is S.CANCELLED:
        e = last("cancelled", "updated")
        return {"reason": "cancelled", "at": at(e.at if e else task.updated_at), "by": actor(e)}
    if task.status is S.BLOCKED:
        e = last("updated", "blocked")
        return {"reason": "blocked", "at": at(e.at if e else task.updated_at), "by": actor(e) or task.blocked_reason}
    if task.status is S.IN_PROGRESS:
        e = last("claimed")
        return {"reason": "reclaimed", "at": at(e.at if e else task.updated_at), "by": task.lease_holder}
    e = last("lease_expired", "released", "failed", "updated", "retried")
    if e is not None and e.kind == "lease_expired":
        return {"reason": "expired", "at": at(e.at), "by": None}
    return {"reason": "released", "at": at(e.at if e else task.updated_at), "by": actor(e)}
