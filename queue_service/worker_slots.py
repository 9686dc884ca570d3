"""Running a worker's function on up to N tasks at once, with batched claims and completions.

``AsyncWorker.run(fn)`` (the typed client's worker helper, and the in-process worker of
``QueueService.worker``) runs here. Per round trip it does what pgqueuer's manager does:

* **claims in batches, never more than the free slots**: with ``concurrency`` slots, *k* jobs
  running and *c* finished tasks whose completion has not landed yet, it asks for at most
  ``concurrency - k - c`` tasks (one ``claim_many`` call): the service counts a task as held until
  its completion lands, and the worker registers ``concurrency`` as its capacity (issue 13); when no
  slot is free but completions are waiting, they are sent at once; a task is never held by a lease
  while it waits for a slot;
* **completions are buffered** and sent together (one ``complete_many`` call) when ``batch`` of them
  are waiting or ``flush_seconds`` after the first, whichever comes first, and always before the
  worker waits idle (a dependent of the task just finished may be the next thing to claim);
* **one heartbeat thread per run** renews every running lease (a job does not start a thread).

Failures and releases are sent at once, one call each (they are rare and their outcome matters to
the next claim). A completion refused because the lease was lost is logged and counted as ``lost``;
a batch that fails because the service is unavailable is retried with backoff (a token completes a
task at most once, so a repeat after a lost answer is refused: each refused item is then checked with
``get_task``, and counted completed if it is done with this result).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from queue_service import exceptions, tracing
from queue_service.models import Claim, Lease, Task

__all__ = ["DEFAULT_BATCH", "DEFAULT_FLUSH_SECONDS", "BatchClient", "SlotRunner", "SlotStats"]

logger = logging.getLogger("queue_service.worker")

#: completions sent together at most, and the longest a finished task's completion waits
DEFAULT_BATCH = 10
DEFAULT_FLUSH_SECONDS = 0.005
_FINISH_TRIES = 6
_FINISH_DELAY = 0.25
_FINISH_DELAY_MAX = 4.0
_IDLE_BACKOFF_MAX = 5.0


class BatchClient(Protocol):
    """What a :class:`SlotRunner` calls: the typed client (``AsyncClient``) and the in-process
    adapter both have these."""

    async def claim_many(
        self,
        project: str,
        agent: str | None = None,
        *,
        roles: Sequence[str] | None = None,
        limit: int = 10,
        wait_seconds: float = 0.0,
        lease_seconds: float | None = None,
    ) -> list[Claim]: ...

    async def complete_many(
        self, project: str, items: Sequence[tuple[str, str, Any]]
    ) -> list[Task | exceptions.QueueServiceError]: ...

    async def complete(self, project: str, key: str, token: str, result: Any = None) -> Task: ...
    async def fail(self, project: str, key: str, token: str, error: str, *, retryable: bool = True) -> Task: ...
    async def release(self, project: str, key: str, token: str) -> Task: ...
    async def get_task(self, project: str, key: str) -> Task: ...


@dataclass
class SlotStats:
    """What one run did."""

    handled: int = 0
    completed: int = 0
    failed: int = 0
    released: int = 0
    lost: int = 0
    claim_calls: int = 0
    complete_calls: int = 0


@dataclass
class _Lease:
    project: str
    key: str
    token: str
    beat: Callable[[], Lease]
    due: float
    valid_until: float
    lost: bool = False


class _Heartbeats:
    """One daemon thread renewing every registered lease each *interval* seconds.

    A thread, not a coroutine: a function that blocks the event loop must not lose its lease. A
    lease whose renewals fail for a whole lease length (timed on this machine's monotonic clock) or
    are refused is marked lost.
    """

    def __init__(self, interval: float, lease_seconds: float) -> None:
        self.interval = interval
        self.lease_seconds = lease_seconds
        self._leases: dict[str, _Lease] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None

    def add(self, project: str, key: str, token: str, beat: Callable[[], Lease]) -> _Lease:
        now = time.monotonic()
        lease = _Lease(project, key, token, beat, now + self.interval, now + self.lease_seconds)
        with self._lock:
            self._leases[token] = lease
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)
                self._thread.start()
        return lease

    def remove(self, lease: _Lease) -> None:
        with self._lock:
            self._leases.pop(lease.token, None)

    def stop(self) -> None:
        with self._lock:
            self._stop = True
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._stop:
                    return
                now = time.monotonic()
                due = [lease for lease in self._leases.values() if lease.due <= now]
                nxt = min((lease.due for lease in self._leases.values()), default=now + self.interval)
            for lease in due:
                self._beat(lease)
            self._wake.wait(max(0.0, nxt - time.monotonic()) if not due else 0.0)
            self._wake.clear()

    def _beat(self, lease: _Lease) -> None:
        sent = time.monotonic()
        lease.due = sent + self.interval
        try:
            lease.beat()
        except exceptions.LeaseError:
            logger.warning("lease lost: %s/%s", lease.project, lease.key)
            lease.lost = True
            self.remove(lease)
            return
        except Exception as exc:
            # transient (service restarting, network): keep trying until the lease runs out
            if time.monotonic() >= lease.valid_until:
                logger.warning("heartbeat of %s failed past the lease expiry (%s): giving up", lease.key, exc)
                lease.lost = True
                self.remove(lease)
            else:
                logger.warning("heartbeat of %s failed, will retry: %s", lease.key, exc)
            return
        lease.valid_until = sent + self.lease_seconds


def _delay(attempt: int) -> float:
    return float(min(_FINISH_DELAY_MAX, _FINISH_DELAY * 2 ** (attempt - 1)))


@dataclass
class _Pending:
    key: str
    token: str
    result: Any


@dataclass
class _Completions:
    """Finished tasks waiting to be completed together."""

    client: BatchClient
    project: str
    stats: SlotStats
    batch: int
    flush_seconds: float
    landed: Callable[[Task, Any], bool]
    items: list[_Pending] = field(default_factory=list)
    sending: set[asyncio.Task[None]] = field(default_factory=set)
    timer: asyncio.TimerHandle | None = None
    #: batches sent so far
    batches: int = 0
    #: the server has no batch completion (older version): one call per task
    one_by_one: bool = False
    #: items sent whose answer has not come back yet
    inflight: int = 0

    @property
    def outstanding(self) -> int:
        """Finished tasks the server still counts as held (buffered or on their way)."""
        return len(self.items) + self.inflight

    def add(self, key: str, token: str, result: Any) -> None:
        self.items.append(_Pending(key, token, result))
        if len(self.items) >= self.batch:
            self.send_now()
        elif self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(self.flush_seconds, self.send_now)

    def send_now(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.items:
            return
        items, self.items = self.items, []
        self.batches += 1
        self.inflight += len(items)
        task = asyncio.get_running_loop().create_task(self._send_counted(items))
        self.sending.add(task)
        task.add_done_callback(self.sending.discard)

    async def flush(self) -> None:
        """Send what is buffered and wait until every batch in flight has its answer."""
        self.send_now()
        while self.sending:
            await asyncio.gather(*list(self.sending), return_exceptions=True)

    async def _complete_one(self, item: _Pending) -> Task | exceptions.QueueServiceError:
        try:
            return await self.client.complete(self.project, item.key, item.token, item.result)
        except exceptions.QueueServiceError as exc:
            return exc

    async def _send_counted(self, items: list[_Pending]) -> None:
        try:
            await self._send(items)
        finally:
            self.inflight -= len(items)

    async def _send(self, items: list[_Pending]) -> None:
        if self.one_by_one:
            outcomes: list[Task | exceptions.QueueServiceError] = [await self._complete_one(i) for i in items]
            self.stats.complete_calls += len(items)
            self._count(items, outcomes)
            return
        attempt = 0
        while True:
            attempt += 1
            try:
                self.stats.complete_calls += 1
                outcomes = await self.client.complete_many(self.project, [(i.key, i.token, i.result) for i in items])
                break
            except exceptions.BackendUnavailable as exc:
                if attempt >= _FINISH_TRIES:
                    logger.error("gave up completing %d task(s) after %d tries: %s", len(items), attempt, exc)
                    self.stats.lost += len(items)
                    return
                logger.warning("could not complete %d task(s) (%s); retrying", len(items), exc)
                await asyncio.sleep(_delay(attempt))
            except (exceptions.NotFound, exceptions.ValidationError) as exc:
                # a server from before POST /completions: complete them one by one from now on
                if not self.one_by_one:
                    logger.warning("batch completion not available (%s): completing one task per call", exc)
                self.one_by_one = True
                outcomes = [await self._complete_one(i) for i in items]
                break
            except Exception:
                logger.exception("completing %d task(s) failed", len(items))
                self.stats.lost += len(items)
                return
        await self._count_async(items, outcomes, retried=attempt > 1)

    def _count(self, items: list[_Pending], outcomes: Sequence[Any]) -> None:
        for item, got in zip(items, outcomes, strict=True):
            if not isinstance(got, Exception):
                self.stats.completed += 1
            else:
                logger.warning("task %s: lease lost before it could be completed: %s", item.key, got)
                self.stats.lost += 1

    async def _count_async(self, items: list[_Pending], outcomes: Sequence[Any], *, retried: bool) -> None:
        for item, got in zip(items, outcomes, strict=True):
            if not isinstance(got, Exception):
                self.stats.completed += 1
                continue
            if retried and isinstance(got, exceptions.LeaseError):
                # an earlier try may have gone through before its answer was lost
                with contextlib.suppress(exceptions.QueueServiceError):
                    task = await self.client.get_task(self.project, item.key)
                    if self.landed(task, item.result):
                        self.stats.completed += 1
                        continue
            logger.warning("task %s: lease lost before it could be completed: %s", item.key, got)
            self.stats.lost += 1


class SlotRunner:
    """Run *fn* on up to *concurrency* tasks at once until stopped (or idle, or *max_tasks* handled)."""

    def __init__(
        self,
        client: BatchClient,
        project: str,
        agent: str,
        roles: Sequence[str] | None,
        *,
        lease_seconds: float,
        interval: float,
        wait_seconds: float,
        stop_when_idle: bool,
        stopping: Callable[[], bool],
        beat_factory: Callable[[str, str, str], Callable[[], Lease]],
        describe: Callable[[BaseException], str],
        permanent: Callable[[BaseException], bool],
        landed: Callable[[Task, Any], bool],
        concurrency: int = 1,
        batch: int = DEFAULT_BATCH,
        flush_seconds: float = DEFAULT_FLUSH_SECONDS,
    ) -> None:
        if concurrency < 1 or batch < 1 or not flush_seconds >= 0:
            raise exceptions.ValidationError("concurrency and batch must be >= 1 and flush_seconds >= 0")
        self.client = client
        self.project = project
        self.agent = agent
        self.roles = list(roles) if roles else None
        self.lease_seconds = lease_seconds
        self.wait_seconds = wait_seconds
        self.stop_when_idle = stop_when_idle
        self.concurrency = concurrency
        self._stopping = stopping
        self._beat_factory = beat_factory
        self._describe = describe
        self._permanent = permanent
        self.stats = SlotStats()
        self._beats = _Heartbeats(interval, lease_seconds)
        self._done = _Completions(client, project, self.stats, batch, flush_seconds, landed)

    async def run(self, fn: Callable[[Task], Any], max_tasks: int | None = None) -> SlotStats:
        """Claim and run until stopped, idle (with ``stop_when_idle``) or *max_tasks* were handed out."""
        running: set[asyncio.Task[None]] = set()
        backoff = 0.0
        try:
            while not self._stopping():
                # a finished task holds its slot until its completion has landed: the service counts
                # it as held until then, and caps a registered agent's claims at its capacity
                free = self.concurrency - len(running) - self._done.outstanding
                if max_tasks is not None:
                    left = max_tasks - self.stats.handled
                    if left <= 0 and not running:
                        break
                    free = min(free, left)
                if free <= 0:
                    if self._done.outstanding:
                        await self._done.flush()
                    else:
                        await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    claims = await self._claim(free, idle=not running)
                except exceptions.BackendUnavailable as exc:
                    backoff = min(_IDLE_BACKOFF_MAX, backoff * 2 or 0.1)
                    logger.warning("claim failed (%s); retrying in %.1fs", exc, backoff)
                    await asyncio.sleep(backoff)
                    continue
                backoff = 0.0
                if not claims:
                    if running:
                        await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    elif self.stop_when_idle:
                        break
                    continue
                for claim in claims:
                    self.stats.handled += 1
                    job = asyncio.get_running_loop().create_task(self._one(fn, claim))
                    running.add(job)
                    job.add_done_callback(running.discard)
        except asyncio.CancelledError:
            # interrupted: every running job hands its task straight back (release, no attempt counted)
            for job in running:
                job.cancel()
            raise
        finally:
            try:
                if running:
                    await asyncio.gather(*running, return_exceptions=True)
                await self._done.flush()
            finally:
                await asyncio.to_thread(self._beats.stop)
        return self.stats

    async def _claim(self, free: int, *, idle: bool) -> list[Claim]:
        """Up to *free* tasks. With nothing running, the buffered completions go out meanwhile; if no
        task is ready, their answers are awaited (a finished task may be what unblocks the next one)
        before the claim is asked again, long-polling unless the worker stops when idle."""
        batches = self._done.batches
        if idle:
            self._done.send_now()
        claims = await self._claim_call(free, 0.0)
        if claims or not idle:
            return claims
        await self._done.flush()
        if self.stop_when_idle and self._done.batches == batches:
            return []  # nothing was completed since the last claim: nothing new can be ready
        return await self._claim_call(free, 0.0 if self.stop_when_idle else self.wait_seconds)

    async def _claim_call(self, limit: int, wait: float) -> list[Claim]:
        self.stats.claim_calls += 1
        return await self.client.claim_many(
            self.project, self.agent, roles=self.roles, limit=limit, wait_seconds=wait, lease_seconds=self.lease_seconds
        )

    async def _one(self, fn: Callable[[Task], Any], claim: Claim) -> None:
        key, token = claim.task.key, claim.lease.token
        lease = self._beats.add(self.project, key, token, self._beat_factory(self.project, key, token))
        # the consumer's span (issue 14), current in this job's context: tasks the handler creates
        # (a thread from to_thread copies the context) continue the producer's trace
        span = tracing.ProcessSpan(claim.task)
        span.attach()
        try:
            if inspect.iscoroutinefunction(fn):
                result = await fn(claim.task)
            else:
                result = await asyncio.to_thread(fn, claim.task)
        except asyncio.CancelledError:
            span.end("released")
            self._beats.remove(lease)
            await self._finish("released", lambda: self.client.release(self.project, key, token), key)
            raise
        except Exception as exc:
            span.end(exc)
            self._beats.remove(lease)
            if lease.lost:
                self.stats.lost += 1
                return
            logger.warning("task %s failed: %s", key, exc, exc_info=exc)
            error, retryable = self._describe(exc), not self._permanent(exc)
            await self._finish(
                "failed", lambda: self.client.fail(self.project, key, token, error, retryable=retryable), key
            )
            return
        span.end("lease lost" if lease.lost else None)
        self._beats.remove(lease)
        if lease.lost:
            self.stats.lost += 1
            return
        self._done.add(key, token, result)

    async def _finish(self, outcome: str, call: Callable[[], Awaitable[Task]], key: str) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                await call()
            except exceptions.BackendUnavailable as exc:
                if attempt >= _FINISH_TRIES:
                    logger.error("task %s: gave up being %s after %d tries: %s", key, outcome, attempt, exc)
                    self.stats.lost += 1
                    return
                await asyncio.sleep(_delay(attempt))
                continue
            except exceptions.LeaseError as exc:
                logger.warning("task %s: lease lost before it could be %s: %s", key, outcome, exc)
                self.stats.lost += 1
                return
            if outcome == "failed":
                self.stats.failed += 1
            else:
                self.stats.released += 1
            return
