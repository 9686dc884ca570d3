"""The history checker (issue 10): random concurrent histories against a backend, invariants at rest.

Actors run random operations against one or more :class:`QueueService` replicas over one store
(create single/batch with in-batch deps and deps on running tasks, PATCH deps, cancel, retry, claim
single/batch, heartbeat, complete single/batch, fail, release, sweep) with small random delays,
while a chaos actor occasionally flushes Valkey or kills Postgres connections (when the backend has
them). At quiescence the checker verifies, from the store and its event log:

1. every task's completion was accepted at most once (calls and ``completed`` events);
2. no task was claimed before all its dependencies were ``done`` (event order: a completion that
   committed before a claim has the smaller event id);
3. every not-started task's readiness agrees with its dependencies (``list_tasks(ready=…)``, and on
   Postgres ``pending_deps`` equals the number of dependencies not done);
4. after one sweep every ready task is claimable (Valkey agrees with Postgres);
5. after that sweep nothing is in progress without a live lease, and the sweep's safety net (the
   recount of pending counts that disagree with their dependencies) never had anything to repair;
6. no call failed with a non-domain error: a :class:`BackendError` other than
   :class:`BackendUnavailable` (a 500) or a foreign exception;
7. routing (issue 13), replayed from the event log: no concurrency key ever had more tasks in
   progress than its limit, no registered agent ever held more than its capacity, and no agent was
   handed a task whose required labels it lacks; offers come back: once every actor is unready, one
   agent claims every ready task, including those routed (offered) to the actors.

The seed fixes every actor's choices; the interleaving also depends on timing, so a replay with the
same seed re-runs the same *kind* of history. Violations name the seed.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from queue_service import exceptions
from queue_service.models import Event, Task, TaskFilter, TaskStatus, utcnow
from queue_service.service import QueueService

__all__ = ["Chaos", "History", "RunStats", "check_round"]

S = TaskStatus
T = TypeVar("T")
ROLES = ("a", "b")
#: concurrency limits of every round: k1 at most 2 in progress, any other key at most 3
LIMITS = {"k1": 2, "*": 3}
KEYS = (None, None, None, "k1", "k2", "k3")
GPU = {"gpu": "yes"}


@dataclass
class Chaos:
    """Fault hooks for backends that have the parts to break (None: not applicable)."""

    flush_valkey: Callable[[], Awaitable[None]] | None = None
    kill_connection: Callable[[], Awaitable[None]] | None = None
    #: ``{key: pending_deps}`` straight from the store (Postgres), for invariant 3
    pending_counts: Callable[[str], Awaitable[dict[str, int]]] | None = None


@dataclass
class RunStats:
    """What one round did."""

    operations: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)


@dataclass
class _Held:
    key: str
    token: str


@dataclass
class History:
    """Everything the actors observed, for the checks."""

    project: str = "chk"
    keys: list[str] = field(default_factory=list)
    held: dict[str, _Held] = field(default_factory=dict)
    #: (key, version) -> dependency keys of that version, from the tasks calls returned
    deps_at: dict[tuple[str, int], tuple[str, ...]] = field(default_factory=dict)
    accepted_completions: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    #: issue 13: concurrency key and required labels per task key (fixed at creation)
    concurrency_key: dict[str, str | None] = field(default_factory=dict)
    requires: dict[str, dict[str, str]] = field(default_factory=dict)
    #: capacity and labels of the agents the round registered
    capacity: dict[str, int] = field(default_factory=dict)
    labels: dict[str, dict[str, str]] = field(default_factory=dict)

    def saw(self, task: Task) -> None:
        self.deps_at[(task.key, task.version)] = tuple(task.depends_on)
        self.concurrency_key[task.key] = task.concurrency_key
        self.requires[task.key] = dict(task.requires)
        if task.key not in self.deps_at_keys:
            self.deps_at_keys.add(task.key)
            self.keys.append(task.key)

    deps_at_keys: set[str] = field(default_factory=set)


def _is_500(exc: BaseException) -> bool:
    if isinstance(exc, exceptions.BackendUnavailable):
        return False
    if isinstance(exc, exceptions.BackendError):
        return True
    return not isinstance(exc, exceptions.QueueServiceError)


class _Actor:
    def __init__(self, n: int, replicas: Sequence[QueueService], history: History, stats: RunStats, seed: int):
        self.n = n
        self.replicas = replicas
        self.h = history
        self.stats = stats
        self.rng = random.Random(seed * 1000 + n)

    def svc(self) -> QueueService:
        return self.rng.choice(self.replicas)

    async def call(self, name: str, op: Callable[[], Awaitable[T]]) -> T | None:
        self.stats.operations += 1
        try:
            out = await op()
        except Exception as exc:  # every outcome is classified: domain refusal, 503 or a violation
            if _is_500(exc):
                self.h.errors.append(f"{name}: {type(exc).__name__}: {exc}")
                self.stats.outcomes[f"{name}:500"] += 1
            else:
                self.stats.outcomes[f"{name}:{type(exc).__name__}"] += 1
            return None
        self.stats.outcomes[f"{name}:ok"] += 1
        return out

    def some_keys(self, k: int) -> list[str]:
        if not self.h.keys:
            return []
        recent = self.h.keys[-40:]
        return sorted(set(self.rng.sample(recent, min(k, len(recent)))))

    async def run(self, deadline: float) -> None:
        ops: list[tuple[int, Callable[[], Awaitable[None]]]] = [
            (6, self.create),
            (2, self.create_batch),
            (3, self.patch_deps),
            (1, self.cancel),
            (1, self.retry),
            (6, self.claim),
            (3, self.claim_many),
            (3, self.heartbeat),
            (6, self.complete),
            (2, self.complete_many),
            (2, self.fail),
            (1, self.release),
            (1, self.sweep),
        ]
        weights = [w for w, _ in ops]
        while time.monotonic() < deadline:
            ((_, op),) = self.rng.choices(ops, weights=weights)
            await op()
            if self.rng.random() < 0.5:
                await asyncio.sleep(self.rng.random() * 0.01)

    def lease(self) -> float:
        return self.rng.choice((0.3, 1.0, 5.0))

    def take(self) -> _Held | None:
        if not self.h.held:
            return None
        key = self.rng.choice(sorted(self.h.held))
        return self.h.held.pop(key)

    def routing(self) -> dict[str, Any]:
        """Random routing fields of a new task (issue 13)."""
        return {"concurrency_key": self.rng.choice(KEYS), "requires": GPU if self.rng.random() < 0.2 else {}}

    async def create(self) -> None:
        deps = self.some_keys(self.rng.choice((0, 0, 1, 1, 2, 3)))
        data = {"title": "t", "role": self.rng.choice(ROLES), "depends_on": deps, "max_attempts": 3, **self.routing()}
        svc = self.svc()
        task = await self.call("create", lambda: svc.create_task(self.h.project, data))
        if task is not None:
            self.h.saw(task)

    async def create_batch(self) -> None:
        n = self.rng.randint(2, 4)
        items: list[dict[str, Any]] = []
        for i in range(n):
            deps = [f"#{j}" for j in range(i) if self.rng.random() < 0.5] + self.some_keys(self.rng.randint(0, 2))
            items.append({"title": "b", "role": self.rng.choice(ROLES), "depends_on": deps, **self.routing()})
        svc = self.svc()
        tasks = await self.call("create_batch", lambda: svc.create_tasks(self.h.project, items))
        for task in tasks or ():
            self.h.saw(task)

    async def patch_deps(self) -> None:
        if not self.h.keys:
            return
        key = self.rng.choice(self.h.keys[-40:])
        deps = [d for d in self.some_keys(self.rng.randint(0, 3)) if d != key]
        svc = self.svc()
        task = await self.call("patch", lambda: svc.update_task(self.h.project, key, {"depends_on": deps}))
        if task is not None:
            self.h.saw(task)

    async def cancel(self) -> None:
        if self.h.keys:
            key = self.rng.choice(self.h.keys[-40:])
            svc = self.svc()
            await self.call("cancel", lambda: svc.cancel_task(self.h.project, key))

    async def retry(self) -> None:
        if self.h.keys:
            key = self.rng.choice(self.h.keys)
            svc = self.svc()
            await self.call("retry", lambda: svc.retry(self.h.project, key))

    async def claim(self) -> None:
        svc, lease = self.svc(), self.lease()
        roles = [self.rng.choice(ROLES)] if self.rng.random() < 0.5 else None
        c = await self.call("claim", lambda: svc.claim(self.h.project, f"w{self.n}", roles, 0.0, lease))
        if c is not None:
            self.h.held[c.task.key] = _Held(c.task.key, c.lease.token)

    async def claim_many(self) -> None:
        svc, lease, limit = self.svc(), self.lease(), self.rng.randint(2, 4)
        claims = await self.call(
            "claim_many", lambda: svc.claim_many(self.h.project, f"w{self.n}", None, limit, 0.0, lease)
        )
        for c in claims or ():
            self.h.held[c.task.key] = _Held(c.task.key, c.lease.token)

    async def heartbeat(self) -> None:
        held = self.take()
        if held is not None:
            svc = self.svc()
            if (
                await self.call("heartbeat", lambda: svc.heartbeat(self.h.project, held.key, held.token, 5.0))
                is not None
            ):
                self.h.held[held.key] = held

    async def complete(self) -> None:
        held = self.take()
        if held is not None:
            svc = self.svc()
            if await self.call("complete", lambda: svc.complete(self.h.project, held.key, held.token, {"n": self.n})):
                self.h.accepted_completions[held.key] += 1

    async def complete_many(self) -> None:
        batch = [h for h in (self.take() for _ in range(self.rng.randint(2, 4))) if h is not None]
        if not batch:
            return
        svc = self.svc()
        items = [(h.key, h.token, None) for h in batch]
        out = await self.call("complete_many", lambda: svc.complete_many(self.h.project, items))
        for h, r in zip(batch, out or (), strict=False):
            if isinstance(r, Task):
                self.h.accepted_completions[h.key] += 1
            elif _is_500(r):
                self.h.errors.append(f"complete_many item {h.key}: {type(r).__name__}: {r}")

    async def fail(self) -> None:
        held = self.take()
        if held is not None:
            svc = self.svc()
            retryable = self.rng.random() < 0.8
            await self.call("fail", lambda: svc.fail(self.h.project, held.key, held.token, "boom", retryable))

    async def release(self) -> None:
        held = self.take()
        if held is not None:
            svc = self.svc()
            await self.call("release", lambda: svc.release(self.h.project, held.key, held.token))

    async def sweep(self) -> None:
        svc = self.svc()
        await self.call("sweep", lambda: svc.backend.dispatch.sweep())


async def _chaos(chaos: Chaos, rng: random.Random, deadline: float, stats: RunStats) -> None:
    hooks = [h for h in (chaos.flush_valkey, chaos.kill_connection) if h is not None]
    if not hooks:
        return
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2 + rng.random() * 0.8)
        hook = rng.choice(hooks)
        try:
            await hook()
            stats.outcomes[f"chaos:{getattr(hook, '__name__', 'hook')}"] += 1
        except Exception as exc:  # the chaos tooling itself failing is not the system under test
            stats.outcomes[f"chaos:error:{type(exc).__name__}"] += 1


async def _steady(op: Callable[[], Awaitable[T]]) -> T:
    """An observation at quiescence: a pooled connection that chaos killed answers 503 once (and is
    discarded), so try again a few times; anything else propagates."""
    for _ in range(10):
        try:
            return await op()
        except exceptions.BackendUnavailable:
            await asyncio.sleep(0.05)
    return await op()


async def _all_tasks(svc: QueueService, project: str, **filters: Any) -> list[Task]:
    out: list[Task] = []
    cursor: str | None = None
    while True:
        page = await svc.backend.records.list_tasks(project, TaskFilter(**filters), limit=500, cursor=cursor)
        out.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            return out


async def _all_events(svc: QueueService, project: str) -> list[Event]:
    out: list[Event] = []
    after = 0
    while True:
        page = await svc.backend.records.list_events(project, after_id=after, limit=1000)
        if not page:
            return out
        out.extend(page)
        after = page[-1].id


def _repaired(replicas: Sequence[QueueService]) -> int:
    """Pending counts the Postgres sweep's safety net recounted so far (0 for other backends)."""
    return sum(int(getattr(r.backend.dispatch, "repaired_counts", 0)) for r in replicas)


def _check_routing(events: list[Event], history: History, violations: list[str]) -> None:
    """Invariant 7 from the event log in id order (a slot freed by an event with a larger id than a
    later claim's only makes the replay count lower, never higher, so a violation is real)."""
    status: dict[str, S | None] = {}
    holder_of: dict[str, str | None] = {}
    by_key: Counter[str] = Counter()
    by_agent: Counter[str] = Counter()
    for e in sorted(events, key=lambda e: e.id):
        if e.task is None or e.status is None:
            continue
        key, before = e.task, status.get(e.task)
        status[key] = e.status
        ck = history.concurrency_key.get(key)
        if before is S.IN_PROGRESS and e.status is not S.IN_PROGRESS:
            if ck is not None:
                by_key[ck] -= 1
            holder = holder_of.pop(key, None)
            if holder is not None:
                by_agent[holder] -= 1
        elif e.status is S.IN_PROGRESS and before is not S.IN_PROGRESS:
            agent = e.data.get("agent") if e.kind == "claimed" else None
            if ck is not None:
                by_key[ck] += 1
                limit = LIMITS.get(ck, LIMITS["*"])
                if by_key[ck] > limit:
                    violations.append(f"{key} claimed (event {e.id}): {by_key[ck]} tasks of key {ck} in progress")
            if agent is not None:
                holder_of[key] = agent
                by_agent[agent] += 1
                cap = history.capacity.get(agent)
                if cap is not None and by_agent[agent] > cap:
                    violations.append(f"{key} claimed by {agent} (event {e.id}) over its capacity {cap}")
                labels = history.labels.get(agent, {})
                if any(labels.get(n) != v for n, v in history.requires.get(key, {}).items()):
                    violations.append(f"{key} claimed by {agent} (event {e.id}), which lacks its required labels")


def _check_events(events: list[Event], history: History, violations: list[str]) -> None:
    status: dict[str, S] = {}
    deps: dict[str, tuple[str, ...] | None] = {}
    completed: Counter[str] = Counter()
    for e in sorted(events, key=lambda e: e.id):
        if e.task is None:
            continue
        if e.kind in ("created", "updated") and e.version is not None:
            # unknown (a call whose answer was lost): do not judge this task's claims until known again
            deps[e.task] = history.deps_at.get((e.task, e.version))
        if e.kind == "claimed":
            for dep in deps.get(e.task) or ():
                if status.get(dep) is not S.DONE:
                    violations.append(
                        f"{e.task} claimed (event {e.id}) while its dependency {dep} was {status.get(dep)}"
                    )
        if e.kind == "completed":
            completed[e.task] += 1
        if e.status is not None:
            status[e.task] = e.status
    for key, n in completed.items():
        if n > 1:
            violations.append(f"{key} has {n} completed events")


async def check_round(
    replicas: Sequence[QueueService], seed: int, seconds: float, chaos: Chaos, actors: int = 8
) -> RunStats:
    """One round: a fresh project, *seconds* of random history, quiescence, then every check."""
    stats = RunStats()
    svc = replicas[0]
    project = f"chk{seed}"
    await _steady(lambda: svc.create_project({"slug": project, "key_prefix": "CHK"}))
    history = History(project=project)
    rng = random.Random(seed)
    strategy = rng.choice(("round-robin", "least-busy", "random"))
    await _steady(lambda: svc.update_project(project, {"concurrency_limits": LIMITS, "routing": {"b": strategy}}))
    for n in range(0, actors, 2):  # half the actors register (capacity, labels); the others stay implicit
        agent = {"id": f"w{n}", "capacity": 1 + n % 3, "labels": GPU if n % 4 == 0 else {}}
        await _steady(lambda agent=agent: svc.register_agent(project, agent))  # type: ignore[misc]
        history.capacity[str(agent["id"])] = int(agent["capacity"])  # type: ignore[call-overload]
        history.labels[str(agent["id"])] = dict(agent["labels"])  # type: ignore[call-overload]
    repaired_before = _repaired(replicas)
    deadline = time.monotonic() + seconds
    crew = [_Actor(i, replicas, history, stats, seed) for i in range(actors)]
    await asyncio.gather(*(a.run(deadline) for a in crew), _chaos(chaos, random.Random(seed), deadline, stats))
    violations = stats.violations
    violations.extend(f"non-domain error (a 500): {e}" for e in history.errors)
    for key, n in history.accepted_completions.items():
        if n > 1:
            violations.append(f"{key}: {n} completions accepted")

    # Quiescence: let backoffs come due, then one sweep repairs whatever derived state chaos broke.
    now = utcnow()
    tasks = await _steady(lambda: _all_tasks(svc, project))
    latest = max((t.not_before for t in tasks if t.not_before is not None), default=now)
    if latest > now:
        await asyncio.sleep((latest - now).total_seconds() + 0.05)
    sweep_started: datetime = utcnow()
    await _steady(svc.backend.dispatch.sweep)
    tasks = await _steady(lambda: _all_tasks(svc, project))
    by_key = {t.key: t for t in tasks}
    events = await _steady(lambda: _all_events(svc, project))
    _check_events(events, history, violations)
    _check_routing(events, history, violations)

    for t in tasks:
        if t.status is S.IN_PROGRESS and (t.lease_expires_at is None or t.lease_expires_at < sweep_started):
            violations.append(f"{t.key} in progress without a live lease (expires {t.lease_expires_at})")
    ready_keys = {t.key for t in await _steady(lambda: _all_tasks(svc, project, ready=True))}
    counts = await chaos.pending_counts(project) if chaos.pending_counts else None
    expected_ready: set[str] = set()
    for t in tasks:
        if t.status is not S.NOT_STARTED:
            continue
        not_done = [d for d in t.depends_on if by_key[d].status is not S.DONE]
        if counts is not None and counts.get(t.key) != len(not_done):
            violations.append(f"{t.key}: pending_deps={counts.get(t.key)} but {len(not_done)} deps not done")
        due = t.not_before is None or t.not_before <= utcnow()
        if not not_done and due:
            expected_ready.add(t.key)
        if (t.key in ready_keys) != (not not_done and due) and due:
            violations.append(f"{t.key}: listed ready={t.key in ready_keys} but deps not done: {not_done}")

    # Every ready task is claimable: drain with long leases until the lists run dry. Offers come back:
    # once the actors are unready, the drainer (carrying every label) gets what was offered to them;
    # the limits are lifted so tasks the actors still hold do not hide the ready ones.
    ready_window = svc.backend.config.agent_ready_seconds
    await asyncio.sleep(ready_window + 0.1)
    await _steady(lambda: svc.update_project(project, {"concurrency_limits": {}}))
    await _steady(lambda: svc.register_agent(project, {"id": "drain", "capacity": 1000, "labels": GPU}))
    claimed: set[str] = set()
    while True:
        got = await _steady(lambda: svc.claim_many(project, "drain", None, 100, 0.0, 300.0))
        if not got:
            break
        claimed.update(c.task.key for c in got)
    for key in sorted(expected_ready - claimed):
        violations.append(f"{key} is ready but could not be claimed after a sweep")
    repaired = _repaired(replicas) - repaired_before
    if repaired:
        violations.append(f"the sweep's safety net had to recount {repaired} pending count(s)")
    stats.outcomes["tasks"] += len(tasks)
    return stats


def summarize(stats: Sequence[RunStats]) -> tuple[int, int, dict[str, int]]:
    """Total operations, violations and outcome counts over several rounds."""
    total: defaultdict[str, int] = defaultdict(int)
    for s in stats:
        for k, v in s.outcomes.items():
            total[k] += v
    return sum(s.operations for s in stats), sum(len(s.violations) for s in stats), dict(total)
