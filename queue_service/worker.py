"""The worker helper of the typed client: claim tasks, keep their leases alive, finish them.

``Client.worker(...)`` / ``AsyncClient.worker(...)`` build these. Each claimed task is a job; while
a job is open a heartbeat **thread** extends its lease, so a task whose work is CPU-bound (or blocks
the event loop) still keeps its lease. Leaving the job:

* normally → complete, with ``job.result`` as the result;
* with an exception → fail; retryable unless it is a :class:`PermanentError`; the exception is
  logged and swallowed so the worker goes on with the next task;
* with ``KeyboardInterrupt``/``SystemExit``/cancellation → release (the task is ready again at
  once, no attempt counted), and the interruption propagates.

If the lease is lost meanwhile (expired and claimed by someone else), finishing is refused by the
service; the job records ``outcome = "lost"`` instead of raising.

Leases: each claim asks for ``lease_seconds`` (default 30 s) and heartbeats every third of it. The
period comes from the lease *length*, never from the server's expiry time read against this machine's
clock (a client whose clock is behind would otherwise wait past the lease).

Finishing survives a short outage: ``complete``/``fail`` are retried (bounded, with backoff) while
the service answers 503 or cannot be reached. That is safe: a token completes (or fails) a task at
most once; a repeat after a lost answer is refused, and a completion that did go through is
recognised (the task is done with this result). After the last try the job ends ``lost`` (the task
is handed out again once its lease runs out) and the worker goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import threading
import time
import traceback
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, Literal, Protocol

from queue_service import exceptions, tracing
from queue_service.models import Claim, Lease, Note, Task, TaskStatus
from queue_service.worker_slots import SlotRunner, SlotStats

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "AsyncJob",
    "AsyncWorker",
    "AsyncWorkerClient",
    "Job",
    "Outcome",
    "PermanentError",
    "Worker",
    "WorkerClient",
    "completed_with",
    "heartbeat_interval",
]

logger = logging.getLogger("queue_service.worker")

Outcome = Literal["completed", "failed", "released", "lost"]

_ERROR_TAIL = 4000
_MIN_INTERVAL = 0.05
_IDLE_BACKOFF_MAX = 5.0
#: the lease the worker helper and ``queue-service run`` ask for when none is given, seconds
DEFAULT_LEASE_SECONDS = 30.0
#: tries of a complete/fail while the service is unavailable, and the first/longest pause between them
_FINISH_TRIES = 6
_FINISH_DELAY = 0.25
_FINISH_DELAY_MAX = 4.0


class PermanentError(Exception):
    """Raise this (or a subclass) from a task to fail it at once, without retries."""


class WorkerClient(Protocol):
    """The calls a :class:`Worker` makes (``queue_service.client.Client`` has them).

    The worker depends on this shape, not on the client module, so the client can build workers
    without an import circle.
    """

    def claim(
        self,
        project: str,
        agent: str | None = None,
        *,
        roles: Sequence[str] | None = None,
        wait_seconds: float = 0.0,
        lease_seconds: float | None = None,
    ) -> Claim | None: ...
    def heartbeat(self, project: str, key: str, token: str, *, lease_seconds: float | None = None) -> Lease: ...
    def complete(self, project: str, key: str, token: str, result: Any = None) -> Task: ...
    def fail(self, project: str, key: str, token: str, error: str, *, retryable: bool = True) -> Task: ...
    def release(self, project: str, key: str, token: str) -> Task: ...
    def get_task(self, project: str, key: str) -> Task: ...
    def add_note(
        self, project: str, key: str, text: str, *, author: str | None = None, token: str | None = None
    ) -> Note: ...
    def publish(
        self, project: str, key: str, chunks: str | Sequence[str], token: str, *, stream: str = ...
    ) -> list[str]: ...
    def end_stream(self, project: str, key: str, token: str, *, stream: str = ...) -> None: ...


class AsyncWorkerClient(Protocol):
    """The calls an :class:`AsyncWorker` awaits (``queue_service.client.AsyncClient`` has them)."""

    async def claim(
        self,
        project: str,
        agent: str | None = None,
        *,
        roles: Sequence[str] | None = None,
        wait_seconds: float = 0.0,
        lease_seconds: float | None = None,
    ) -> Claim | None: ...
    async def heartbeat(self, project: str, key: str, token: str, *, lease_seconds: float | None = None) -> Lease: ...
    async def complete(self, project: str, key: str, token: str, result: Any = None) -> Task: ...
    async def fail(self, project: str, key: str, token: str, error: str, *, retryable: bool = True) -> Task: ...
    async def release(self, project: str, key: str, token: str) -> Task: ...
    async def get_task(self, project: str, key: str) -> Task: ...
    async def add_note(
        self, project: str, key: str, text: str, *, author: str | None = None, token: str | None = None
    ) -> Note: ...
    async def publish(
        self, project: str, key: str, chunks: str | Sequence[str], token: str, *, stream: str = ...
    ) -> list[str]: ...
    async def end_stream(self, project: str, key: str, token: str, *, stream: str = ...) -> None: ...


def _describe(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    tb = "".join(traceback.format_tb(exc.__traceback__)[-3:])
    full = f"{text}\n{tb}" if tb else text
    return full[-_ERROR_TAIL:]


def heartbeat_interval(lease_seconds: float, heartbeat_seconds: float | None = None) -> float:
    """The heartbeat period: *heartbeat_seconds* if given, else a third of the lease *length*.

    Never derived from the lease's absolute expiry: that is the server's clock, and a client whose
    clock is behind would compute a period longer than the lease.
    """
    period = heartbeat_seconds if heartbeat_seconds is not None else lease_seconds / 3
    return max(_MIN_INTERVAL, period)


def completed_with(task: Task, result: Any) -> bool:
    """Is *task* done with *result* (as JSON sees it)? Then an earlier try of a completion landed."""
    if task.status is not TaskStatus.DONE:
        return False
    try:
        return bool(task.result == json.loads(json.dumps(result)))
    except (TypeError, ValueError):
        return False


def _finish_delay(attempt: int) -> float:
    return float(min(_FINISH_DELAY_MAX, _FINISH_DELAY * 2 ** (attempt - 1)))


def _landed(task: Task, outcome: Outcome, result: Any) -> bool:
    """After a finishing call was retried and refused: did an earlier try go through?"""
    return outcome == "completed" and completed_with(task, result)


class _Heartbeat:
    """A daemon thread calling *beat* every *interval* seconds until stopped or the lease is lost.

    It gives up when beats have failed for a whole lease length, timed on this machine's monotonic
    clock from the last success (the server's expiry time is not comparable with our clock).
    """

    def __init__(self, beat: Callable[[], Lease], interval: float, lease_seconds: float, name: str) -> None:
        self._beat = beat
        self.interval = interval
        self.lease_seconds = lease_seconds
        self._valid_until = time.monotonic() + lease_seconds
        self.beats = 0
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            sent = time.monotonic()
            try:
                self._beat()
            except exceptions.LeaseError:
                logger.warning("lease lost: %s", self._thread.name)
                self.lost.set()
                return
            except Exception as exc:
                # transient (service restarting, network): keep trying until the lease runs out
                if time.monotonic() >= self._valid_until:
                    logger.warning("heartbeat failed past the lease expiry (%s): giving up", exc)
                    self.lost.set()
                    return
                logger.warning("heartbeat failed, will retry: %s", exc)
                continue
            self.beats += 1
            self._valid_until = sent + self.lease_seconds


class _JobBase:
    def __init__(self, project: str, claim: Claim, interval: float, lease_seconds: float | None) -> None:
        self.project = project
        #: lease length each heartbeat asks for
        self.lease_seconds = lease_seconds if lease_seconds is not None else DEFAULT_LEASE_SECONDS
        self.task: Task = claim.task
        self.lease: Lease = claim.lease
        #: set this inside the job; it becomes the task's result on completion
        self.result: Any = None
        #: how the job ended (None while it runs)
        self.outcome: Outcome | None = None
        #: the task as the service returned it after finishing (None if the lease was lost)
        self.final: Task | None = None
        self._interval = interval
        self._heartbeat: _Heartbeat | None = None
        #: the ``queue.process`` span (OpenTelemetry), current while the job is open
        self._trace: tracing.ProcessSpan | None = None

    @property
    def key(self) -> str:
        """The task key."""
        return self.task.key

    @property
    def token(self) -> str:
        """The lease token."""
        return self.lease.token

    @property
    def heartbeats(self) -> int:
        """How many heartbeats succeeded so far."""
        return self._heartbeat.beats if self._heartbeat else 0

    @property
    def lease_lost(self) -> bool:
        """True once the service refused a heartbeat: another agent may now hold the task."""
        return bool(self._heartbeat and self._heartbeat.lost.is_set())

    def _start_heartbeat(self, beat: Callable[[], Lease]) -> None:
        self._heartbeat = _Heartbeat(beat, self._interval, self.lease_seconds, self.task.key)
        self._heartbeat.start()

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()

    def _start_trace(self) -> None:
        self._trace = tracing.ProcessSpan(self.task)
        self._trace.attach()

    def _end_trace(self, exc: BaseException | None) -> None:
        if self._trace is not None:
            failed = self.outcome in ("failed", "lost") or (exc is not None and self.outcome != "completed")
            self._trace.end((exc or self.outcome or "failed") if failed else None)
            self._trace = None

    @staticmethod
    def _is_interrupt(exc: BaseException) -> bool:
        return isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit | asyncio.CancelledError)


class Job(_JobBase):
    """A claimed task, used as ``with job: ...`` (see the module docstring for what exit does)."""

    def __init__(
        self, client: WorkerClient, project: str, claim: Claim, interval: float, lease_seconds: float | None = None
    ) -> None:
        super().__init__(project, claim, interval, lease_seconds)
        self._client = client

    def __enter__(self) -> Job:
        self._start_heartbeat(
            lambda: self._client.heartbeat(self.project, self.key, self.token, lease_seconds=self.lease_seconds)
        )
        self._start_trace()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        try:
            return self._exit(exc)
        finally:
            self._end_trace(exc)

    def _exit(self, exc: BaseException | None) -> bool:
        self._stop_heartbeat()
        if self.outcome is not None:
            return False
        if exc is None:
            self.complete(self.result)
            return False
        if self._is_interrupt(exc):
            self.release()
            return False
        if not isinstance(exc, Exception):
            self.release()
            return False
        logger.warning("task %s failed: %s", self.key, exc, exc_info=exc)
        self.fail(_describe(exc), retryable=not isinstance(exc, PermanentError))
        return True

    def _finish(self, outcome: Outcome, call: Callable[[], Task], result: Any = None) -> Task | None:
        self._stop_heartbeat()
        attempt = 0
        while True:
            attempt += 1
            try:
                self.final = call()
                break
            except exceptions.BackendUnavailable as exc:
                if attempt >= _FINISH_TRIES:
                    # the worker lives on; the task is handed out again once its lease runs out
                    logger.error("task %s: gave up being %s after %d tries: %s", self.key, outcome, attempt, exc)
                    self.outcome = "lost"
                    return None
                delay = _finish_delay(attempt)
                logger.warning("task %s: could not be %s (%s); retrying in %.2fs", self.key, outcome, exc, delay)
                time.sleep(delay)
            except exceptions.LeaseError as exc:
                if attempt > 1:
                    with contextlib.suppress(exceptions.QueueServiceError):
                        task = self._client.get_task(self.project, self.key)
                        if _landed(task, outcome, result):
                            self.final, self.outcome = task, outcome
                            return task
                logger.warning("task %s: lease lost before it could be %s: %s", self.key, outcome, exc)
                self.outcome = "lost"
                return None
        self.outcome = outcome
        return self.final

    def complete(self, result: Any = None) -> Task | None:
        """Mark the task done now (None if the lease was lost)."""
        return self._finish(
            "completed", lambda: self._client.complete(self.project, self.key, self.token, result), result
        )

    def fail(self, error: str, *, retryable: bool = True) -> Task | None:
        """Report a failed attempt now (None if the lease was lost)."""
        return self._finish(
            "failed", lambda: self._client.fail(self.project, self.key, self.token, error, retryable=retryable)
        )

    def release(self) -> Task | None:
        """Give the task back now (None if the lease was lost)."""
        return self._finish("released", lambda: self._client.release(self.project, self.key, self.token))

    def note(self, text: str) -> None:
        """Add a note as the lease holder."""
        self._client.add_note(self.project, self.key, text, author=self.lease.holder, token=self.token)

    def publish(self, chunk: str | Sequence[str], stream: str = "default") -> list[str]:
        """Publish output chunk(s) to the task's stream for watchers (renews the lease)."""
        return self._client.publish(self.project, self.key, chunk, self.token, stream=stream)

    def end_stream(self, stream: str = "default") -> None:
        """Mark the task's stream done (watchers stop following)."""
        self._client.end_stream(self.project, self.key, self.token, stream=stream)


class AsyncJob(_JobBase):
    """A claimed task, used as ``async with job: ...``; heartbeats still run in a thread."""

    def __init__(
        self,
        client: AsyncWorkerClient,
        project: str,
        claim: Claim,
        interval: float,
        beat: Callable[[], Lease],
        lease_seconds: float | None = None,
    ) -> None:
        super().__init__(project, claim, interval, lease_seconds)
        self._client = client
        self._beat = beat

    async def __aenter__(self) -> AsyncJob:
        self._start_heartbeat(self._beat)
        self._start_trace()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        try:
            return await self._exit(exc)
        finally:
            self._end_trace(exc)

    async def _exit(self, exc: BaseException | None) -> bool:
        await asyncio.to_thread(self._stop_heartbeat)
        if self.outcome is not None:
            return False
        if exc is None:
            await self.complete(self.result)
            return False
        if self._is_interrupt(exc) or not isinstance(exc, Exception):
            await self.release()
            return False
        logger.warning("task %s failed: %s", self.key, exc, exc_info=exc)
        await self.fail(_describe(exc), retryable=not isinstance(exc, PermanentError))
        return True

    async def _finish(self, outcome: Outcome, call: Callable[[], Awaitable[Task]], result: Any = None) -> Task | None:
        await asyncio.to_thread(self._stop_heartbeat)
        attempt = 0
        while True:
            attempt += 1
            try:
                self.final = await call()
                break
            except exceptions.BackendUnavailable as exc:
                if attempt >= _FINISH_TRIES:
                    # the worker lives on; the task is handed out again once its lease runs out
                    logger.error("task %s: gave up being %s after %d tries: %s", self.key, outcome, attempt, exc)
                    self.outcome = "lost"
                    return None
                delay = _finish_delay(attempt)
                logger.warning("task %s: could not be %s (%s); retrying in %.2fs", self.key, outcome, exc, delay)
                await asyncio.sleep(delay)
            except exceptions.LeaseError as exc:
                if attempt > 1:
                    with contextlib.suppress(exceptions.QueueServiceError):
                        task = await self._client.get_task(self.project, self.key)
                        if _landed(task, outcome, result):
                            self.final, self.outcome = task, outcome
                            return task
                logger.warning("task %s: lease lost before it could be %s: %s", self.key, outcome, exc)
                self.outcome = "lost"
                return None
        self.outcome = outcome
        return self.final

    async def complete(self, result: Any = None) -> Task | None:
        """Mark the task done now (None if the lease was lost)."""
        return await self._finish(
            "completed", lambda: self._client.complete(self.project, self.key, self.token, result), result
        )

    async def fail(self, error: str, *, retryable: bool = True) -> Task | None:
        """Report a failed attempt now (None if the lease was lost)."""
        return await self._finish(
            "failed", lambda: self._client.fail(self.project, self.key, self.token, error, retryable=retryable)
        )

    async def release(self) -> Task | None:
        """Give the task back now (None if the lease was lost)."""
        return await self._finish("released", lambda: self._client.release(self.project, self.key, self.token))

    async def note(self, text: str) -> None:
        """Add a note as the lease holder."""
        await self._client.add_note(self.project, self.key, text, author=self.lease.holder, token=self.token)

    async def publish(self, chunk: str | Sequence[str], stream: str = "default") -> list[str]:
        """Publish output chunk(s) to the task's stream for watchers (renews the lease)."""
        return await self._client.publish(self.project, self.key, chunk, self.token, stream=stream)

    async def end_stream(self, stream: str = "default") -> None:
        """Mark the task's stream done (watchers stop following)."""
        await self._client.end_stream(self.project, self.key, self.token, stream=stream)


class _WorkerBase:
    def __init__(
        self,
        project: str,
        agent: str,
        roles: Sequence[str] | None,
        *,
        lease_seconds: float | None,
        heartbeat_seconds: float | None,
        wait_seconds: float,
        stop_when_idle: bool,
    ) -> None:
        self.project = project
        self.agent = agent
        self.roles = list(roles) if roles else None
        if lease_seconds is not None and not lease_seconds > 0:
            raise exceptions.ValidationError(f"lease_seconds must be positive, got {lease_seconds}")
        #: the lease each claim asks for (and each heartbeat renews)
        self.lease_seconds = lease_seconds if lease_seconds is not None else DEFAULT_LEASE_SECONDS
        self.heartbeat_seconds = heartbeat_seconds
        self.wait_seconds = wait_seconds
        self.stop_when_idle = stop_when_idle
        #: tasks handed out so far
        self.processed = 0
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Stop after the current task (thread-safe)."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopping.is_set()


class Worker(_WorkerBase):
    """Claims tasks one at a time for *agent*; iterate for jobs, or :meth:`run` a function."""

    def __init__(
        self, client: WorkerClient, project: str, agent: str, roles: Sequence[str] | None, **options: Any
    ) -> None:
        super().__init__(project, agent, roles, **options)
        self._client = client

    def __iter__(self) -> Iterator[Job]:
        backoff = 0.0
        while not self.stopping:
            try:
                claim = self._client.claim(
                    self.project,
                    self.agent,
                    roles=self.roles,
                    # stop_when_idle: an empty queue ends the loop at once, not after a long-poll
                    wait_seconds=0.0 if self.stop_when_idle else self.wait_seconds,
                    lease_seconds=self.lease_seconds,
                )
            except exceptions.BackendUnavailable as exc:
                backoff = min(_IDLE_BACKOFF_MAX, backoff * 2 or 0.1)
                logger.warning("claim failed (%s); retrying in %.1fs", exc, backoff)
                self._stopping.wait(backoff)
                continue
            backoff = 0.0
            if claim is None:
                if self.stop_when_idle:
                    return
                continue
            self.processed += 1
            interval = heartbeat_interval(self.lease_seconds, self.heartbeat_seconds)
            yield Job(self._client, self.project, claim, interval, self.lease_seconds)

    def run(self, fn: Callable[[Task], Any], *, max_tasks: int | None = None) -> int:
        """Call ``fn(task)`` for each claimed task; its return value is the result.

        Returns:
            How many tasks were handled (whatever their outcome).
        """
        handled = 0
        for job in self:
            with job:
                job.result = fn(job.task)
            handled += 1
            if max_tasks is not None and handled >= max_tasks:
                break
        return handled


class AsyncWorker(_WorkerBase):
    """The asyncio worker; ``fn`` may be a coroutine function or a plain one (run in a thread)."""

    def __init__(
        self,
        client: AsyncWorkerClient,
        project: str,
        agent: str,
        roles: Sequence[str] | None,
        beat_factory: Callable[[str, str, str, float | None, asyncio.AbstractEventLoop], Callable[[], Lease]],
        *,
        concurrency: int = 1,
        **options: Any,
    ) -> None:
        super().__init__(project, agent, roles, **options)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= 1000:
            raise exceptions.ValidationError(f"concurrency must be an integer from 1 to 1000, got {concurrency!r}")
        self._client = client
        self._beat_factory = beat_factory
        #: tasks :meth:`run` works on at once (it never claims more than its free slots)
        self.concurrency = concurrency
        #: what the last :meth:`run` did (claims, completions, outcomes)
        self.last_run: SlotStats | None = None

    async def _register(self) -> None:
        """Register this worker with its concurrency as its capacity (issue 13's contract: the
        service then never hands the agent more than it runs at once, and routing weighs it by it).
        A server without the agent registry (404 on the route, not on the project) is left alone."""
        register = getattr(self._client, "register_agent", None)
        if register is None:
            return
        body = {"id": self.agent, "roles": list(self.roles or []), "capacity": self.concurrency}
        try:
            await register(self.project, body)
        except exceptions.NotFound as exc:
            if isinstance(exc, exceptions.ProjectNotFound):
                raise
            logger.info("the server has no agent registry (%s); running unregistered", exc)

    async def __aiter__(self) -> AsyncGenerator[AsyncJob, None]:
        loop = asyncio.get_running_loop()
        backoff = 0.0
        while not self.stopping:
            try:
                claim = await self._client.claim(
                    self.project,
                    self.agent,
                    roles=self.roles,
                    # stop_when_idle: an empty queue ends the loop at once, not after a long-poll
                    wait_seconds=0.0 if self.stop_when_idle else self.wait_seconds,
                    lease_seconds=self.lease_seconds,
                )
            except exceptions.BackendUnavailable as exc:
                backoff = min(_IDLE_BACKOFF_MAX, backoff * 2 or 0.1)
                logger.warning("claim failed (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                continue
            backoff = 0.0
            if claim is None:
                if self.stop_when_idle:
                    return
                continue
            self.processed += 1
            beat = self._beat_factory(self.project, claim.task.key, claim.lease.token, self.lease_seconds, loop)
            interval = heartbeat_interval(self.lease_seconds, self.heartbeat_seconds)
            yield AsyncJob(self._client, self.project, claim, interval, beat, self.lease_seconds)

    async def run(self, fn: Callable[[Task], Any], *, max_tasks: int | None = None) -> int:
        """Call ``fn(task)`` (awaited if it is a coroutine function) for each claimed task, on up to
        ``concurrency`` tasks at once.

        Claims come in batches of the free slots and completions are sent together (see
        :mod:`queue_service.worker_slots`); a client without the batch calls gets one call per task.

        Returns:
            How many tasks were handed out (whatever their outcome).
        """
        if hasattr(self._client, "claim_many") and hasattr(self._client, "complete_many"):
            return await self._run_slots(fn, max_tasks)
        handled = 0
        async with contextlib.aclosing(self.__aiter__()) as jobs:
            async for job in jobs:
                async with job:
                    if inspect.iscoroutinefunction(fn):
                        job.result = await fn(job.task)
                    else:
                        job.result = await asyncio.to_thread(fn, job.task)
                handled += 1
                if max_tasks is not None and handled >= max_tasks:
                    break
        return handled

    async def _run_slots(self, fn: Callable[[Task], Any], max_tasks: int | None) -> int:
        loop = asyncio.get_running_loop()
        await self._register()
        runner = SlotRunner(
            self._client,  # type: ignore[arg-type]
            self.project,
            self.agent,
            self.roles,
            lease_seconds=self.lease_seconds,
            interval=heartbeat_interval(self.lease_seconds, self.heartbeat_seconds),
            wait_seconds=self.wait_seconds,
            stop_when_idle=self.stop_when_idle,
            stopping=lambda: self.stopping,
            beat_factory=lambda project, key, token: self._beat_factory(project, key, token, self.lease_seconds, loop),
            describe=_describe,
            permanent=lambda exc: isinstance(exc, PermanentError),
            landed=completed_with,
            concurrency=self.concurrency,
        )
        try:
            stats = await runner.run(fn, max_tasks)
        finally:
            self.last_run = runner.stats
            self.processed += runner.stats.handled
        return stats.handled
