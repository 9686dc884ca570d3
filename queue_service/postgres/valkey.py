"""ValkeyBroker: the signal path of the team backend (ready lists, claim locks, pub/sub, leader lock).

Valkey holds only *derived* state: everything here can be rebuilt from Postgres (the dispatcher's
reconcile does so after a flush). So every operation is written to be safe when repeated, and a lost
or stale entry costs latency, never correctness: the claim itself is decided by a conditional update
in Postgres.

Connections: ordinary commands share one pool. Blocking pops (BLPOP) and pub/sub subscriptions each
hold a connection for as long as they wait, so they get a second, separate pool sized for many
waiters; a crowd of idle claimers can never starve enqueues, locks or publishes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_exc
from redis.asyncio.client import PubSub

from queue_service import exceptions
from queue_service.models import DEFAULT_ROLE
from queue_service.postgres.resources import lua_script
from queue_service.postgres.valkey_keys import DEFAULT_PREFIX, PRIORITIES, ValkeyKeys

__all__ = [
    "BrokerBatch",
    "Popped",
    "ReadyItem",
    "Subscription",
    "ValkeyBroker",
    "wrap_valkey_errors",
]

logger = logging.getLogger(__name__)

#: The Lua scripts of ``postgres/lua/`` (one file each; the comments at their top say what they do).
SCRIPTS = (
    "enqueue",
    "push_back",
    "pop",
    "pop_any",
    "pop_many",
    "pop_any_many",
    "forget",
    "extend",
    "release",
    "acquire_leader",
    "unschedule_due",
)


@contextlib.contextmanager
def wrap_valkey_errors(what: str = "valkey") -> Iterator[None]:
    """Translate redis-py and socket errors into the service's error tree.

    Connection problems and timeouts become ``BackendUnavailable``; any other Redis error becomes
    ``BackendError``. The driver error stays reachable as ``__cause__``.
    """
    try:
        yield
    except (redis_exc.ConnectionError, redis_exc.TimeoutError, OSError) as exc:
        raise exceptions.BackendUnavailable(f"{what}: Valkey unreachable: {exc}", reason=str(exc)) from exc
    except redis_exc.RedisError as exc:
        raise exceptions.BackendError(f"{what}: Valkey error: {exc}", reason=str(exc)) from exc


class _ScriptCalls:
    """Script calls (and plain commands) queued on one pipeline, sent in a single round trip.

    redis-py's own ``script(..., client=pipe)`` makes every pipeline that carries a script ask
    ``SCRIPT EXISTS`` first: a second round trip each time. Here scripts go in as bare ``EVALSHA``;
    the rare ``NOSCRIPT`` answer (Valkey restarted or its script cache was flushed) is handled after
    the fact by running just those calls again through the script object, which loads it. Every
    script we pipeline is idempotent, so a late re-run is safe.
    """

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self._n = 0
        self._scripts: list[tuple[int, Any, list[str], list[Any]]] = []

    def command(self, _queued: object) -> None:
        """Count a plain command already queued on the pipeline (``calls.command(pipe.set(...))``)."""
        self._n += 1

    def add(self, script: Any, keys: list[str], args: list[Any]) -> None:
        """Queue *script* as ``EVALSHA``."""
        self.pipe.evalsha(script.sha, len(keys), *keys, *args)
        self._scripts.append((self._n, script, keys, args))
        self._n += 1

    async def execute(self) -> list[Any]:
        """Send everything; re-run script calls that met NOSCRIPT; raise the first other error."""
        results: list[Any] = list(await self.pipe.execute(raise_on_error=False))
        for i, script, keys, args in self._scripts:
            if isinstance(results[i], redis_exc.NoScriptError):
                results[i] = await script(keys=keys, args=args)
        for r in results:
            if isinstance(r, Exception):
                raise r
        return results


@dataclass(frozen=True)
class ReadyItem:
    """A task to put in a ready list."""

    project: str
    key: str
    role: str
    priority: str


@dataclass(frozen=True)
class Popped:
    """A task key taken from a ready list, and the list it came from."""

    project: str
    key: str
    list_key: str


@dataclass
class BrokerBatch:
    """Everything one committed transaction asks of Valkey, sent in one pipelined round trip.

    Order inside the pipeline: locks, unlocks, scheduled, ready (head first), then events, so a subscriber that
    reacts to an event already finds the task queued.
    """

    #: tasks to put in their ready lists (deduplicated)
    ready: list[ReadyItem] = field(default_factory=list)
    #: tasks to put at the *head* of their ready lists (leases that expired: first in line again)
    ready_front: list[ReadyItem] = field(default_factory=list)
    #: ``(project, key, not_before)`` to remember in the scheduled set
    scheduled: list[tuple[str, str, datetime]] = field(default_factory=list)
    #: ``(project, key, token, ttl_seconds)`` claim locks to set
    locks: list[tuple[str, str, str, float]] = field(default_factory=list)
    #: ``(project, key, token)`` claim locks to delete if still held by that token
    unlocks: list[tuple[str, str, str]] = field(default_factory=list)
    #: ``(project, payload)`` events to publish, in order
    events: list[tuple[str, Mapping[str, Any]]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.ready or self.ready_front or self.scheduled or self.locks or self.unlocks or self.events)


class Subscription:
    """A live pub/sub subscription to one project's event channel (already subscribed on creation).

    Iterate it for decoded JSON payloads; ``aclose`` (or ``async with``) gives the connection back.
    """

    def __init__(self, pubsub: PubSub, channel: str) -> None:
        self._pubsub = pubsub
        self.channel = channel
        self._closed = False

    async def get(self, timeout: float = 1.0) -> dict[str, Any] | None:
        """The next payload, or None if none arrived within *timeout* seconds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with wrap_valkey_errors("subscribe"):
                msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=remaining)
            if msg is None or msg.get("type") != "message":
                continue
            try:
                payload = json.loads(msg["data"])
            except (TypeError, ValueError):
                logger.warning("ignoring malformed event on %s: %r", self.channel, msg.get("data"))
                continue
            if isinstance(payload, dict):
                return payload

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[dict[str, Any]]:
        while not self._closed:
            payload = await self.get(timeout=1.0)
            if payload is not None:
                yield payload

    async def aclose(self) -> None:
        """Unsubscribe and give the connection back. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(redis_exc.RedisError, OSError):
            await self._pubsub.unsubscribe(self.channel)
        with contextlib.suppress(redis_exc.RedisError, OSError):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class ValkeyBroker:
    """Ready lists, claim locks, events and the leader lock on Valkey (or Redis ≥ 6.2).

    Args:
        url: ``redis://host:port/db`` (``valkey://`` and ``valkeys://`` are accepted as aliases).
        prefix: key space (see :mod:`queue_service.postgres.valkey_keys`); tests pass a unique one.
        max_connections: size of the pool for ordinary commands.
        max_waiters: size of the pool for blocking pops and subscriptions (one connection each).
        block_slice: longest single BLPOP, seconds; claimers of "all roles" re-read the role set
            between slices, so a new role is seen within this time.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        max_connections: int = 64,
        max_waiters: int = 1024,
        block_slice: float = 1.0,
    ) -> None:
        self.url = _normalise_url(url)
        self.keys = ValkeyKeys(prefix)
        self.block_slice = block_slice
        self._max_connections = max_connections
        self._max_waiters = max_waiters
        self._client: aioredis.Redis | None = None
        self._blocking: aioredis.Redis | None = None
        self._scripts: dict[str, Any] = {}

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        """Create the connection pools (connections are made lazily). Idempotent."""
        if self._client is not None:
            return
        with wrap_valkey_errors("open"):
            # Blocking pools: a burst of more callers than connections waits for one instead of
            # failing with "Too many connections".
            pool = aioredis.BlockingConnectionPool.from_url(
                self.url, max_connections=self._max_connections, timeout=20, decode_responses=True
            )
            self._client = aioredis.Redis(connection_pool=pool)
            # A blocked BLPOP legitimately sends nothing for a whole slice: the read timeout must be
            # longer than the slice, or redis-py would call a healthy idle wait a dead socket.
            blocking_pool = aioredis.BlockingConnectionPool.from_url(
                self.url,
                max_connections=self._max_waiters,
                timeout=None,
                decode_responses=True,
                socket_timeout=self.block_slice + 10.0,
            )
            self._blocking = aioredis.Redis(connection_pool=blocking_pool)
            client = self._client
            # registered once per open; each call is EVALSHA, loading the script on NOSCRIPT
            self._scripts = {name: client.register_script(lua_script(name)) for name in SCRIPTS}

    async def close(self) -> None:
        """Close both pools. Idempotent."""
        client, blocking = self._client, self._blocking
        self._client = self._blocking = None
        for c in (client, blocking):
            if c is not None:
                with contextlib.suppress(redis_exc.RedisError, OSError):
                    await c.aclose()
                with contextlib.suppress(redis_exc.RedisError, OSError):
                    await c.connection_pool.disconnect()

    @property
    def client(self) -> aioredis.Redis:
        """The client for ordinary commands (tests use it to inspect or flush)."""
        if self._client is None:
            raise exceptions.BackendUnavailable("Valkey broker is not open: call open() first")
        return self._client

    @property
    def _blocking_client(self) -> aioredis.Redis:
        if self._blocking is None:
            raise exceptions.BackendUnavailable("Valkey broker is not open: call open() first")
        return self._blocking

    async def ping(self) -> None:
        """Raise BackendUnavailable (with the reason) unless Valkey answers PING."""
        with wrap_valkey_errors("ping"):
            await self.client.ping()

    # -- ready lists -------------------------------------------------------------------------
    async def enqueue(self, project: str, key: str, role: str, priority: str) -> bool:
        """Append a task to its ready list unless it is queued there already.

        A task queued in another list (its role or priority changed) is moved. Returns True if it
        was added or moved, False if it already sat in this list.
        """
        k = self.keys
        with wrap_valkey_errors("enqueue"):
            added = await self._scripts["enqueue"](
                keys=[k.queued(project), k.ready(project, role, priority), k.roles(project)],
                args=[key, role, "0", "0"],
            )
        return bool(added)

    async def enqueue_many(self, items: Iterable[ReadyItem], *, force: bool = False) -> int:
        """Enqueue many tasks in one pipelined round trip; returns how many were added or moved.

        *force* pushes even a key the dedupe hash says is in its list already (after removing it from
        that list): reconcile uses it for entries whose list lost them.
        """
        batch = list(items)
        if not batch:
            return 0
        k = self.keys
        with wrap_valkey_errors("enqueue"):
            async with self.client.pipeline(transaction=False) as pipe:
                calls = _ScriptCalls(pipe)
                for it in batch:
                    calls.add(
                        self._scripts["enqueue"],
                        [k.queued(it.project), k.ready(it.project, it.role, it.priority), k.roles(it.project)],
                        [it.key, it.role, "1" if force else "0", "0"],
                    )
                results = await calls.execute()
        return sum(1 for r in results if r == 1)

    async def apply(self, batch: BrokerBatch) -> None:
        """Send a :class:`BrokerBatch` in one pipelined round trip (nothing is sent for an empty one)."""
        if not batch:
            return
        k = self.keys
        enqueue, release = self._scripts["enqueue"], self._scripts["release"]
        with wrap_valkey_errors("apply"):
            async with self.client.pipeline(transaction=False) as pipe:
                calls = _ScriptCalls(pipe)
                for project, key, token, ttl in batch.locks:
                    calls.command(pipe.set(k.lock(project, key), token, px=_ms(ttl)))
                for project, key, token in batch.unlocks:
                    calls.add(release, [k.lock(project, key)], [token])
                for project, key, at in batch.scheduled:
                    calls.command(pipe.zadd(k.scheduled(project), {key: at.timestamp()}))
                for it in batch.ready_front:
                    calls.add(
                        enqueue,
                        [k.queued(it.project), k.ready(it.project, it.role, it.priority), k.roles(it.project)],
                        [it.key, it.role, "0", "1"],
                    )
                for it in batch.ready:
                    calls.add(
                        enqueue,
                        [k.queued(it.project), k.ready(it.project, it.role, it.priority), k.roles(it.project)],
                        [it.key, it.role, "0", "0"],
                    )
                for project, payload in batch.events:
                    calls.command(pipe.publish(k.events(project), _dumps(payload)))
                await calls.execute()

    async def roles(self, project: str) -> list[str]:
        """Roles known to have ready lists in the project, sorted."""
        with wrap_valkey_errors("roles"):
            members = await self.client.smembers(self.keys.roles(project))
        return sorted(str(m) for m in members)

    async def _lists_for(self, project: str, roles: Sequence[str] | None) -> list[str]:
        if roles is None:
            found = await self.roles(project)
            # The default role's lists are always watched, so a waiter in a project that has never
            # had a ready task still wakes on the first one.
            roles = found if DEFAULT_ROLE in found else [DEFAULT_ROLE, *found]
        return self.keys.ready_lists(project, list(dict.fromkeys(roles)))

    async def try_pop(self, project: str, roles: Sequence[str] | None = None) -> Popped | None:
        """Take the first key from the highest-priority non-empty list of *roles*, without waiting.

        The dedupe entry goes in the same atomic step. Returns None if every list is empty.
        """
        k = self.keys
        with wrap_valkey_errors("pop"):
            if roles is None:
                got = await self._scripts["pop_any"](
                    keys=[k.queued(project), k.roles(project)],
                    args=[k.ready_prefix(project), DEFAULT_ROLE, *PRIORITIES],
                )
            else:
                lists = k.ready_lists(project, list(dict.fromkeys(roles)))
                got = await self._scripts["pop"](keys=[k.queued(project), *lists], args=[])
        if not got:
            return None
        list_key, key = got
        return Popped(project=project, key=str(key), list_key=str(list_key))

    async def try_pop_many(self, project: str, roles: Sequence[str] | None, limit: int) -> list[Popped]:
        """Take up to *limit* keys, best first (as :meth:`try_pop` orders them), in one atomic step
        and one round trip, without waiting. Returns ``[]`` if every list is empty."""
        k = self.keys
        with wrap_valkey_errors("pop"):
            if roles is None:
                got = await self._scripts["pop_any_many"](
                    keys=[k.queued(project), k.roles(project)],
                    args=[k.ready_prefix(project), DEFAULT_ROLE, limit, *PRIORITIES],
                )
            else:
                lists = k.ready_lists(project, list(dict.fromkeys(roles)))
                got = await self._scripts["pop_many"](keys=[k.queued(project), *lists], args=[limit])
        flat = list(got or ())
        return [
            Popped(project=project, key=str(key), list_key=str(lst))
            for lst, key in zip(flat[::2], flat[1::2], strict=True)
        ]

    async def pop(
        self, project: str, roles: Sequence[str] | None = None, timeout: float = 0.0, *, try_first: bool = True
    ) -> Popped | None:
        """Take the best ready key of *roles* (all roles when None), waiting up to *timeout* seconds.

        Waits with BLPOP in slices of at most ``block_slice`` seconds (server-side timeouts, so a wait
        is never cancelled half-way with a popped key in flight); between slices the role set is
        re-read when *roles* is None. *try_first* False skips the initial non-blocking attempt (the
        caller just made one). Returns None when nothing arrived in time.
        """
        if try_first:
            popped = await self.try_pop(project, roles)
            if popped is not None or timeout <= 0:
                return popped
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0.0005:
                return None
            lists = await self._lists_for(project, roles)
            # BLPOP has millisecond resolution; 0 would mean "forever".
            slice_s = max(0.001, min(self.block_slice, remaining))
            with wrap_valkey_errors("pop"):
                got = await self._blocking_client.blpop(lists, timeout=round(slice_s, 3))
            if got:
                list_key, key = got
                try:
                    await self.forget(project, str(key), str(list_key))
                except exceptions.BackendError as exc:
                    # The key is ours (BLPOP took it): claim it anyway. Its dedupe entry may outlive
                    # it; enqueue checks the list before trusting an entry, so none is swallowed.
                    logger.warning("dedupe removal after BLPOP of %s failed: %s", key, exc)
                return Popped(project=project, key=str(key), list_key=str(list_key))

    async def forget(self, project: str, key: str, list_key: str) -> None:
        """Drop a key's dedupe entry after a BLPOP took it off *list_key* (unless it was re-queued
        elsewhere meanwhile)."""
        with wrap_valkey_errors("forget"):
            await self._scripts["forget"](keys=[self.keys.queued(project)], args=[key, list_key])

    async def push_back(self, popped: Sequence[Popped]) -> int:
        """Return popped keys to the head of their lists, in their pop order (a claim failed before
        Postgres decided, or was cancelled). Keys re-queued meanwhile stay where they are. Returns
        how many were pushed back."""
        by_project: dict[str, list[str]] = {}
        for p in popped:
            by_project.setdefault(p.project, []).extend((p.key, p.list_key))
        n = 0
        with wrap_valkey_errors("push back"):
            for project, args in by_project.items():
                n += int(await self._scripts["push_back"](keys=[self.keys.queued(project)], args=args))
        return n

    async def depth(self, project: str) -> dict[str, int]:
        """Ready-list length per role (all priorities summed), for every known role."""
        roles = await self.roles(project)
        if not roles:
            return {}
        with wrap_valkey_errors("depth"):
            async with self.client.pipeline(transaction=False) as pipe:
                for role in roles:
                    for prio in PRIORITIES:
                        pipe.llen(self.keys.ready(project, role, prio))
                lengths = await pipe.execute()
        out: dict[str, int] = {}
        for i, role in enumerate(roles):
            out[role] = sum(int(n) for n in lengths[i * len(PRIORITIES) : (i + 1) * len(PRIORITIES)])
        return out

    async def queued_members(self, project: str) -> dict[str, str]:
        """The dedupe hash: task key → the ready list it is believed to sit in."""
        with wrap_valkey_errors("queued"):
            return {str(k): str(v) for k, v in (await self.client.hgetall(self.keys.queued(project))).items()}

    async def unlist(self, project: str, keys: Sequence[str]) -> None:
        """Take *keys* out of the ready lists the dedupe hash places them in (claimed by a routed
        claim, which picks in Postgres rather than popping). Two round trips; not atomic with a
        re-queue in between, which the next reconcile repairs (the lists are derived state)."""
        if not keys:
            return
        queued = self.keys.queued(project)
        with wrap_valkey_errors("unlist"):
            where = await self.client.hmget(queued, list(keys))
            async with self.client.pipeline(transaction=False) as pipe:
                for key, list_key in zip(keys, where, strict=True):
                    if list_key is not None:
                        pipe.lrem(str(list_key), 0, key)
                pipe.hdel(queued, *keys)
                await pipe.execute()

    async def listed(self, project: str) -> dict[str, set[str]]:
        """Task key → the ready lists it actually sits in, for the whole project (reconcile; O(depth))."""
        roles = await self.roles(project)
        out: dict[str, set[str]] = {}
        if not roles:
            return out
        lists = self.keys.ready_lists(project, roles)
        with wrap_valkey_errors("listed"):
            async with self.client.pipeline(transaction=False) as pipe:
                for list_key in lists:
                    pipe.lrange(list_key, 0, -1)
                chunks = await pipe.execute()
        for list_key, chunk in zip(lists, chunks, strict=True):
            for key in chunk:
                out.setdefault(str(key), set()).add(list_key)
        return out

    async def requeue(self, items: Iterable[ReadyItem]) -> int:
        """Push tasks into their lists even if the dedupe hash claims they are there already.

        Used by reconcile for ready tasks found in none of their lists (a claimer died between BLPOP
        and its dedupe removal, or Valkey lost a write). A duplicate this may create is harmless: the
        second pop finds the task no longer ready and drops it.
        """
        return await self.enqueue_many(items, force=True)

    async def write_depth_gauge(self, project: str, depths: Mapping[str, int]) -> None:
        """Store the latest depth per role in the project's depth hash (for /metrics)."""
        key = self.keys.depth(project)
        with wrap_valkey_errors("depth"):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                if depths:
                    pipe.hset(key, mapping={r: int(n) for r, n in depths.items()})
                await pipe.execute()

    # -- scheduled (backoff) -----------------------------------------------------------------
    async def schedule(self, project: str, key: str, at: datetime) -> None:
        """Remember that *key* becomes ready at *at* (a claimer or the sweep queues it when due)."""
        with wrap_valkey_errors("schedule"):
            await self.client.zadd(self.keys.scheduled(project), {key: at.timestamp()})

    async def schedule_many(self, items: Iterable[tuple[str, str, datetime]]) -> None:
        """Schedule many ``(project, key, at)`` in one round trip."""
        by_project: dict[str, dict[str, float]] = {}
        for project, key, at in items:
            by_project.setdefault(project, {})[key] = at.timestamp()
        if not by_project:
            return
        with wrap_valkey_errors("schedule"):
            async with self.client.pipeline(transaction=False) as pipe:
                for project, mapping in by_project.items():
                    pipe.zadd(self.keys.scheduled(project), mapping)
                await pipe.execute()

    async def due(self, project: str, now: datetime, limit: int = 1000) -> tuple[list[str], float | None]:
        """The project's scheduled keys whose time has come (oldest first, at most *limit*), and the
        seconds until the earliest one still ahead (None if there is none), in one round trip."""
        ts = now.timestamp()
        key = self.keys.scheduled(project)
        with wrap_valkey_errors("due"):
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.zrangebyscore(key, "-inf", ts, start=0, num=limit)
                pipe.zrangebyscore(key, f"({ts}", "+inf", start=0, num=1, withscores=True)
                members, upcoming = await pipe.execute()
        next_in = float(upcoming[0][1]) - ts if upcoming else None
        return [str(m) for m in members], next_in

    async def unschedule(self, project: str, keys: Iterable[str], due_by: datetime | None = None) -> int:
        """Remove keys from the project's scheduled set; returns how many were removed.

        With *due_by*, only entries scheduled at or before it go: a task rescheduled later in the
        meantime (it failed again) keeps its newer entry.
        """
        members = list(keys)
        if not members:
            return 0
        key = self.keys.scheduled(project)
        with wrap_valkey_errors("unschedule"):
            if due_by is None:
                return int(await self.client.zrem(key, *members))
            return int(await self._scripts["unschedule_due"](keys=[key], args=[*members, repr(due_by.timestamp())]))

    # -- claim locks -------------------------------------------------------------------------
    async def set_lock(self, project: str, key: str, token: str, ttl: float) -> None:
        """Set the task's lock to *token* for *ttl* seconds (the claim already won in Postgres)."""
        with wrap_valkey_errors("lock"):
            await self.client.set(self.keys.lock(project, key), token, px=_ms(ttl))

    async def restore_lock(self, project: str, key: str, token: str, ttl: float) -> bool:
        """Re-create a lost lock (reconcile); never overwrites an existing one. True if set."""
        with wrap_valkey_errors("lock"):
            return bool(await self.client.set(self.keys.lock(project, key), token, px=_ms(ttl), nx=True))

    async def extend_lock(self, project: str, key: str, token: str, ttl: float) -> bool:
        """Extend the lock if *token* holds it (or re-create it if it vanished). False if another
        token holds it."""
        with wrap_valkey_errors("lock"):
            return bool(await self._scripts["extend"](keys=[self.keys.lock(project, key)], args=[token, _ms(ttl)]))

    async def release_lock(self, project: str, key: str, token: str) -> bool:
        """Delete the lock only if *token* holds it. True if it was deleted."""
        with wrap_valkey_errors("lock"):
            return bool(await self._scripts["release"](keys=[self.keys.lock(project, key)], args=[token]))

    async def lock_token(self, project: str, key: str) -> str | None:
        """The token currently holding the task's lock, or None."""
        with wrap_valkey_errors("lock"):
            value = await self.client.get(self.keys.lock(project, key))
        return None if value is None else str(value)

    async def lock_ttl(self, project: str, key: str) -> float | None:
        """Seconds left on the task's lock, or None if there is no lock."""
        with wrap_valkey_errors("lock"):
            ms = await self.client.pttl(self.keys.lock(project, key))
        return None if ms is None or ms < 0 else ms / 1000.0

    # -- events ------------------------------------------------------------------------------
    async def publish(self, project: str, payload: Mapping[str, Any]) -> int:
        """Publish one JSON event on the project's channel; returns the number of receivers."""
        with wrap_valkey_errors("publish"):
            return int(await self.client.publish(self.keys.events(project), _dumps(payload)))

    async def publish_many(self, events: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        """Publish ``(project, payload)`` events in order, pipelined in one round trip."""
        batch = list(events)
        if not batch:
            return
        with wrap_valkey_errors("publish"):
            async with self.client.pipeline(transaction=False) as pipe:
                for project, payload in batch:
                    pipe.publish(self.keys.events(project), _dumps(payload))
                await pipe.execute()

    async def subscription(self, project: str) -> Subscription:
        """Subscribe to the project's channel now (events published after this call are seen)."""
        pubsub = self._blocking_client.pubsub()
        channel = self.keys.events(project)
        try:
            with wrap_valkey_errors("subscribe"):
                await pubsub.subscribe(channel)
        except BaseException:
            with contextlib.suppress(redis_exc.RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            raise
        return Subscription(pubsub, channel)

    async def subscribe(self, project: str) -> AsyncIterator[dict[str, Any]]:
        """Yield the project's event payloads from now on, until the consumer stops iterating."""
        sub = await self.subscription(project)
        try:
            async for payload in sub:
                yield payload
        finally:
            await sub.aclose()

    # -- orchestrator ------------------------------------------------------------------------
    async def acquire_leader(self, holder: str, ttl: float) -> bool:
        """Become (or stay) the orchestrator leader for *ttl* seconds. True if *holder* leads."""
        with wrap_valkey_errors("leader"):
            return bool(await self._scripts["acquire_leader"](keys=[self.keys.leader], args=[holder, _ms(ttl)]))

    async def release_leader(self, holder: str) -> bool:
        """Give up leadership if *holder* has it."""
        with wrap_valkey_errors("leader"):
            return bool(await self._scripts["release"](keys=[self.keys.leader], args=[holder]))

    async def epoch(self) -> str | None:
        """The reconcile marker, or None when Valkey lost it (flushed, restarted without persistence)."""
        with wrap_valkey_errors("epoch"):
            value = await self.client.get(self.keys.epoch)
        return None if value is None else str(value)

    async def mark_epoch(self, value: str) -> bool:
        """Set the marker if it is missing; True if this call set it (this caller rebuilds)."""
        with wrap_valkey_errors("epoch"):
            return bool(await self.client.set(self.keys.epoch, value, nx=True))

    async def clear_epoch(self, value: str) -> None:
        """Remove the marker if it still is *value* (a rebuild failed: let the next sweep redo it)."""
        with wrap_valkey_errors("epoch"):
            await self._scripts["release"](keys=[self.keys.epoch], args=[value])

    async def delete_prefix(self) -> int:
        """Delete every key under the prefix (test clean-up); returns how many."""
        n = 0
        with wrap_valkey_errors("cleanup"):
            batch: list[str] = []
            async for key in self.client.scan_iter(match=self.keys.pattern, count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    n += int(await self.client.delete(*batch))
                    batch = []
            if batch:
                n += int(await self.client.delete(*batch))
        return n


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _dumps(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, default=_json_default, separators=(",", ":"))


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _normalise_url(url: str) -> str:
    for alias, real in (("valkeys://", "rediss://"), ("valkey://", "redis://")):
        if url.startswith(alias):
            return real + url[len(alias) :]
    return url
