"""The coord-style runner behind ``queue-service run``: claim → spawn → heartbeat → complete/fail.

For each claimed task the runner spawns the agent command with the task as JSON on stdin and
``QUEUE_TASK_KEY``/``QUEUE_TASK_TITLE``/``QUEUE_PROJECT`` (and a few more) in the environment, in
the work directory the user chose (``--workdir``/``QUEUE_WORKDIR``, else the current directory): never a
path received from the server, which could otherwise point the runner at any directory of this
machine (issue 9, finding 10). The child's environment is the runner's minus the service's own
``QUEUE_*``/``MOSAIC_*`` variables (``QUEUE_TOKEN``, database and Valkey URLs), except ``QUEUE_URL`` and
the names the user passes with ``--pass-env``. Log lines escape control characters, so a task title
cannot forge lines. While the child runs, a separate asyncio task heartbeats the lease, so a
child that is busy (or hung) never loses its lease by itself; if the lease is lost anyway (for
example the runner was stopped with SIGSTOP past the lease), the child is stopped and its result
discarded — a zombie never completes a task someone else now holds. Exit 0 completes the task with
the tail of stdout as the result; any other exit is a retryable failure carrying the tail of stderr.
SIGINT/SIGTERM stop the children and release their tasks (no attempt counted).

The session files (``session.lock``, ``next-task.json``) are written by ``runner.session``, the
child's environment is built by ``runner.child``, its output captured by ``runner.output`` and
published by ``runner.stream``; this module is the run loop.

The runner only needs :class:`RunnerOps`, which QueueService (local mode) and the REST
:class:`~queue_service.client.AsyncClient` (remote mode) both satisfy as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO, cast

from queue_service import exceptions, tracing
from queue_service.agents import Agent
from queue_service.ids import new_agent_id
from queue_service.models import Claim, Lease, Mission, Project, Task, TaskFilter, TaskPage, TaskStatus
from queue_service.runner.child import child_environment
from queue_service.runner.output import feed_stdin, fit_result, read_head, read_tail, stdout_budget
from queue_service.runner.session import (
    CAPSULE_FILE,
    SessionLock,
    end_capsule,
    orchestrator_dir,
    task_capsule,
    write_capsule,
)
from queue_service.runner.stream import LinePublisher, StreamTee
from queue_service.worker import DEFAULT_LEASE_SECONDS, heartbeat_interval

__all__ = [
    "EXIT_TASK_FAILED",
    "RunSummary",
    "Runner",
    "RunnerOps",
    "RunnerOptions",
    "TaskOutcome",
]

logger = logging.getLogger("queue_service.runner")

#: ``run``'s exit code when a task it ran failed (see RunSummary.exit_code)
EXIT_TASK_FAILED = 4


class RunnerOps(Protocol):
    """What the runner needs from the service (QueueService, or the REST AsyncClient itself)."""

    async def get_project(self, slug: str, /) -> Project: ...
    async def register_agent(self, project: str, data: Mapping[str, Any], /) -> Agent: ...
    async def claim(
        self,
        project: str,
        agent: str,
        roles: Sequence[str] | None = None,
        wait: float = 0.0,
        lease_seconds: float | None = None,
        /,
    ) -> Claim | None: ...
    async def heartbeat(self, project: str, key: str, token: str, lease_seconds: float | None = None, /) -> Lease: ...
    async def complete(self, project: str, key: str, token: str, result: Any = None, /) -> Task: ...
    async def fail(self, project: str, key: str, token: str, error: str, retryable: bool = True, /) -> Task: ...
    async def release(self, project: str, key: str, token: str, /) -> Task: ...
    async def publish(self, project: str, key: str, chunks: list[str], token: str, /) -> list[str]: ...
    async def end_stream(self, project: str, key: str, token: str, /) -> str | None: ...
    # issue 18: next-task.json's progress fields (coord parity)
    async def list_missions(self, project: str, /) -> list[Mission]: ...
    async def list_tasks(
        self,
        project: str,
        filters: TaskFilter | Mapping[str, Any] | None = None,
        limit: int = 100,
        cursor: str | None = None,
        /,
    ) -> TaskPage: ...


@dataclass(frozen=True)
class RunnerOptions:
    """How ``run`` behaves; see ``queue-service run --help``."""

    project: str
    command: Sequence[str]
    roles: Sequence[str] | None = None
    #: tasks run at the same time
    concurrency: int = 1
    #: lease length asked for each claim (None: ``worker.DEFAULT_LEASE_SECONDS``, 30 s)
    lease_seconds: float | None = None
    #: heartbeat period (None: a third of the lease length)
    heartbeat_seconds: float | None = None
    #: stop after this many tasks were claimed (None: no limit)
    max_tasks: int | None = None
    #: stop once nothing ran for this many seconds (None: never)
    idle_exit: float | None = None
    #: agent name; the id gets host, pid and a nonce appended so it is unique per start
    agent_name: str | None = None
    #: the ``runtime`` written to session.lock (default: the command's basename)
    runtime: str | None = None
    #: where to run and write .mosaic/orchestrator (``--workdir``; default: the current directory).
    #: Never taken from the server: the project's workspace is the server's path, not this machine's.
    workspace: Path | None = None
    #: environment variables passed to children although private (``--pass-env QUEUE_TOKEN``)
    pass_env: Sequence[str] = ()
    #: how much of stderr to keep for the error of a failed attempt
    tail_chars: int = 4000
    #: the completed result keeps stdout up to this size (QUEUE_MAX_RESULT_BYTES), cut at a line
    #: boundary and marked (issue 11)
    max_result_bytes: int = 1024 * 1024
    #: copy each child's output to this stream, every line prefixed with the task key (None: don't)
    echo: TextIO | None = None
    #: how long one claim waits for a ready task before checking for stop/idle
    poll_seconds: float = 2.0
    #: after SIGTERM to a child, how long before SIGKILL
    stop_grace_seconds: float = 5.0
    #: period of the local orchestrator sweep (only when a sweep function is given)
    sweep_seconds: float = 1.0

    def check(self) -> None:
        """Raise ValidationError for impossible settings."""
        if not self.command:
            raise exceptions.ValidationError("run needs a COMMAND after '--'")
        if self.concurrency < 1:
            raise exceptions.ValidationError(f"--concurrency must be at least 1, got {self.concurrency}")
        if self.max_tasks is not None and self.max_tasks < 1:
            raise exceptions.ValidationError(f"--max-tasks must be at least 1, got {self.max_tasks}")
        if self.idle_exit is not None and self.idle_exit < 0:
            raise exceptions.ValidationError(f"--idle-exit must be >= 0, got {self.idle_exit}")
        if self.lease_seconds is not None and self.lease_seconds <= 0:
            raise exceptions.ValidationError(f"--lease must be positive, got {self.lease_seconds}")
        if self.heartbeat_seconds is not None and self.heartbeat_seconds <= 0:
            raise exceptions.ValidationError(f"--heartbeat must be positive, got {self.heartbeat_seconds}")


@dataclass(frozen=True)
class TaskOutcome:
    """What happened to one claimed task."""

    key: str
    #: completed | retry | failed (dead-lettered) | released | lost (lease lost; result discarded)
    outcome: str
    exit_code: int | None
    seconds: float


@dataclass
class RunSummary:
    """The result of one ``run`` session."""

    session_id: str
    agent: str
    outcomes: list[TaskOutcome] = field(default_factory=list)
    stop_reason: str = ""
    signal: int | None = None
    error: str | None = None

    def count(self, outcome: str) -> int:
        """How many tasks ended with *outcome*."""
        return sum(1 for o in self.outcomes if o.outcome == outcome)

    @property
    def exit_code(self) -> int:
        """1 after a fatal error, 128+signal after SIGINT/SIGTERM, 4 when any task it ran did not
        complete (failed, to be retried, or its lease was lost), else 0 (every task completed)."""
        if self.error:
            return 1
        if self.signal is not None:
            return 128 + self.signal
        if any(o.outcome in ("retry", "failed", "lost") for o in self.outcomes):
            return EXIT_TASK_FAILED
        return 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "session_id": self.session_id,
            "agent": self.agent,
            "stop_reason": self.stop_reason,
            "error": self.error,
            "exit_code": self.exit_code,
            "tasks": [o.__dict__ for o in self.outcomes],
            "counts": {k: self.count(k) for k in ("completed", "retry", "failed", "released", "lost")},
        }


@dataclass
class _Running:
    key: str
    token: str
    proc: asyncio.subprocess.Process
    stopping: bool = False
    lost: bool = False
    kill_handle: asyncio.TimerHandle | None = None


class Runner:
    """Claims tasks and runs a command for each; see the module docstring."""

    def __init__(
        self,
        ops: RunnerOps,
        options: RunnerOptions,
        *,
        sweep: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        options.check()
        self.ops = ops
        self.options = options
        self._sweep = sweep
        #: every claim and heartbeat asks for this lease, so the heartbeat period is known exactly
        self._lease_seconds = options.lease_seconds if options.lease_seconds is not None else DEFAULT_LEASE_SECONDS
        self.agent = new_agent_id(options.agent_name or "runner")
        self._running: dict[str, _Running] = {}
        self._stopping = False
        self._stop_reason = ""
        self._signal: int | None = None
        self._error: str | None = None
        self._budget = options.max_tasks
        self._active = 0
        self._last_busy = time.monotonic()
        self._outcomes: list[TaskOutcome] = []
        self._workspace = Path.cwd()
        self._session = ""

    # -- control ----------------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self._stopping

    def stop(self, reason: str, signum: int | None = None, *, error: bool = False) -> None:
        """Stop claiming, stop running children (SIGTERM, then SIGKILL) and release their tasks.

        A second stop while stopping kills the children at once.
        """
        if self._stopping:
            if signum is not None:
                logger.warning("stopping now: killing %d child process(es)", len(self._running))
                for r in list(self._running.values()):
                    self._signal_child(r, signal.SIGKILL)
            return
        self._stopping = True
        self._stop_reason = reason
        self._signal = signum
        if error:
            self._error = reason
        if self._running:
            logger.info("stopping (%s): stopping %d running task(s)", reason, len(self._running))
        for r in list(self._running.values()):
            self._terminate(r)

    def _signal_child(self, r: _Running, sig: signal.Signals) -> None:
        if r.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            # The child leads its own process group (start_new_session), so this reaches its children too.
            os.killpg(r.proc.pid, sig)

    def _terminate(self, r: _Running) -> None:
        r.stopping = True
        self._signal_child(r, signal.SIGTERM)
        if r.kill_handle is None:
            loop = asyncio.get_running_loop()
            r.kill_handle = loop.call_later(self.options.stop_grace_seconds, self._signal_child, r, signal.SIGKILL)

    # -- main loop --------------------------------------------------------------------------
    async def run(self, *, handle_signals: bool = True) -> RunSummary:
        """Run until stopped, idle (``idle_exit``) or out of budget (``max_tasks``)."""
        opts = self.options
        self._check_command()
        project = await self.ops.get_project(opts.project)
        del project  # checked to exist; its workspace is a path on the server, never used here
        workspace = (opts.workspace or Path.cwd()).expanduser().resolve()
        if not workspace.is_dir():
            raise exceptions.ValidationError(
                f"work directory {workspace} does not exist or is not a directory (--workdir / QUEUE_WORKDIR)"
            )
        self._workspace = workspace
        self._runtime = opts.runtime or Path(opts.command[0]).name
        lock = SessionLock.acquire(
            orchestrator_dir(workspace),
            runtime=self._runtime,
            project_path=workspace,
            project=opts.project,
            agent=self.agent,
        )
        self._session = lock.session_id
        summary = RunSummary(session_id=lock.session_id, agent=self.agent)
        logger.info(
            "%s: running %s for project %s in %s (agent %s, concurrency %d)",
            lock.session_id,
            shlex.join(opts.command),
            opts.project,
            workspace,
            self.agent,
            opts.concurrency,
        )
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, self.stop, f"signal {sig.name}", int(sig))
                    installed.append(sig)
                except (ValueError, RuntimeError, NotImplementedError):
                    pass  # not the main thread: the caller handles stopping
        # issue 13: the session registers its concurrency as its capacity, so the service never
        # hands it more tasks than it runs at once (and routing strategies weigh it by it)
        roles = list(opts.roles) if opts.roles else []
        await self.ops.register_agent(opts.project, {"id": self.agent, "roles": roles, "capacity": opts.concurrency})
        sweeper_done = asyncio.Event()
        sweeper = asyncio.create_task(self._sweeper(sweeper_done)) if self._sweep is not None else None
        try:
            await asyncio.gather(*(self._slot() for _ in range(opts.concurrency)))
        finally:
            for installed_sig in installed:
                loop.remove_signal_handler(installed_sig)
            if sweeper is not None:
                await _finish_background(sweeper, sweeper_done)
            summary.outcomes = list(self._outcomes)
            summary.stop_reason = self._stop_reason or "stopped"
            summary.signal = self._signal
            summary.error = self._error
            self._write_end_capsule(summary)
            lock.release(
                stop_reason=summary.stop_reason,
                completed=summary.count("completed"),
                failed=summary.count("failed") + summary.count("retry"),
            )
        logger.info(
            "%s ended (%s): %d completed, %d to retry, %d dead-lettered, %d released, %d lost",
            summary.session_id,
            summary.stop_reason,
            summary.count("completed"),
            summary.count("retry"),
            summary.count("failed"),
            summary.count("released"),
            summary.count("lost"),
        )
        return summary

    def _check_command(self) -> None:
        exe = self.options.command[0]
        if os.sep in exe:
            if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
                raise exceptions.ValidationError(f"command {exe!r} is not an executable file")
        elif shutil.which(exe) is None:
            raise exceptions.ValidationError(f"command {exe!r} not found on PATH")

    async def _sweeper(self, done: asyncio.Event) -> None:
        assert self._sweep is not None
        while not await _wait_event(done, self.options.sweep_seconds):
            try:
                await self._sweep()
            except exceptions.QueueServiceError as exc:
                logger.debug("sweep failed: %s", exc)

    def _take_budget(self) -> bool:
        if self._budget is None:
            return True
        if self._budget <= 0:
            return False
        self._budget -= 1
        return True

    def _claim_wait(self) -> float:
        idle = self.options.idle_exit
        if idle is None or self._active:
            return self.options.poll_seconds
        remaining = idle - (time.monotonic() - self._last_busy)
        return max(0.0, min(self.options.poll_seconds, remaining))

    async def _slot(self) -> None:
        opts = self.options
        failures = 0
        while not self._stopping:
            if not self._take_budget():
                if not self._active and not self._stopping:
                    self._stop_reason = self._stop_reason or f"max-tasks ({opts.max_tasks}) reached"
                return
            try:
                got = await self.ops.claim(
                    opts.project,
                    self.agent,
                    list(opts.roles) if opts.roles else None,
                    self._claim_wait(),
                    self._lease_seconds,
                )
                failures = 0
            except exceptions.BackendError as exc:
                self._budget = None if self._budget is None else self._budget + 1
                failures += 1
                delay = min(10.0, 0.5 * 2**failures)
                logger.warning("claim failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            except exceptions.QueueServiceError as exc:
                self.stop(f"claim refused: {exc.message}", error=True)
                return
            if got is None:
                self._budget = None if self._budget is None else self._budget + 1
                idle = opts.idle_exit
                if idle is not None and not self._active and time.monotonic() - self._last_busy >= idle:
                    self.stop(f"idle for {idle:g}s")
                    return
                continue
            if self.stopping:
                await self._release_now(got)
                return
            await self._execute(got)

    # -- one task ---------------------------------------------------------------------------
    async def _release_now(self, claim: Claim) -> None:
        key, token = claim.task.key, claim.lease.token
        await self._finish(key, "released", lambda: self.ops.release(self.options.project, key, token))

    async def _mission_state(self, task: Task) -> tuple[Mission | None, list[Task]]:
        """The claimed task's mission and its tasks (for coord's progress fields)."""
        project = self.options.project
        missions = {m.id: m for m in await self.ops.list_missions(project)}
        tasks: list[Task] = []
        cursor: str | None = None
        while True:
            page = await self.ops.list_tasks(project, {"mission": task.mission}, 1000, cursor)
            tasks.extend(page.items)
            cursor = page.next_cursor
            if cursor is None:
                return missions.get(task.mission), tasks

    async def _write_capsule(self, claim: Claim) -> None:
        try:
            mission, mission_tasks = await self._mission_state(claim.task)
        except exceptions.QueueServiceError as exc:
            # the capsule is advisory: a failed read must not stop the task
            logger.warning("could not read the mission of %s for %s: %s", claim.task.key, CAPSULE_FILE, exc)
            mission, mission_tasks = None, [claim.task]
        capsule = task_capsule(
            project=self.options.project,
            runtime=self._runtime,
            workspace=self._workspace,
            session_id=self._session,
            agent=self.agent,
            claim=claim,
            mission=mission,
            mission_tasks=mission_tasks,
        )
        write_capsule(self._workspace, capsule)

    def _write_end_capsule(self, summary: RunSummary) -> None:
        """The session ended: next-task.json says so (no task is about to run), with what it did."""
        capsule = end_capsule(
            project=self.options.project,
            workspace=self._workspace,
            session_id=self._session,
            agent=self.agent,
            stop_reason=summary.stop_reason,
            last_task=summary.outcomes[-1].key if summary.outcomes else None,
            counts={k: summary.count(k) for k in ("completed", "retry", "failed", "released", "lost")},
        )
        write_capsule(self._workspace, capsule)

    def _child_env(self, task: Task, token: str, span: tracing.ProcessSpan) -> dict[str, str]:
        # TRACEPARENT/TRACESTATE: the task's trace context (issue 14), never the runner's own
        env = tracing.child_env(child_environment(os.environ, self.options.pass_env), span)
        env.update(
            {
                "QUEUE_PROJECT": self.options.project,
                "QUEUE_TASK_KEY": task.key,
                "QUEUE_TASK_TITLE": task.title,
                "QUEUE_TASK_ROLE": task.role,
                "QUEUE_TASK_ATTEMPT": str(task.attempts + 1),
                "QUEUE_SESSION_ID": self._session,
                "QUEUE_AGENT": self.agent,
                "QUEUE_PROJECT_PATH": str(self._workspace),
                # the holder's token for this task only: notes with it renew the lease
                "QUEUE_LEASE_TOKEN": token,
            }
        )
        return env

    async def _execute(self, claim: Claim) -> None:
        opts = self.options
        task, token = claim.task, claim.lease.token
        key = task.key
        started = time.monotonic()
        self._active += 1
        self._last_busy = started
        span = tracing.ProcessSpan(task)
        rc: int | None = None
        try:
            await self._write_capsule(claim)
            try:
                proc = await asyncio.create_subprocess_exec(
                    *opts.command,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    cwd=self._workspace,
                    env=self._child_env(task, token, span),
                    start_new_session=True,
                )
            except OSError as exc:
                await self._finish(key, "released", lambda: self.ops.release(opts.project, key, token))
                self.stop(f"cannot start {opts.command[0]!r}: {exc.strerror or exc}", error=True)
                return
            running = _Running(key=key, token=token, proc=proc)
            self._running[key] = running
            if self._stopping:
                self._terminate(running)
            logger.info("%s: started %s %s (pid %d)", self._session, key, task.title, proc.pid)
            # from the lease length, never from the server's expiry read against our own clock
            interval = heartbeat_interval(self._lease_seconds, opts.heartbeat_seconds)
            beat_done = asyncio.Event()
            beat = asyncio.create_task(self._heartbeat(running, interval, beat_done))
            payload = json.dumps(task.model_dump(mode="json"), ensure_ascii=False).encode() + b"\n"
            try:
                publisher = LinePublisher(self.ops, opts.project, key, token)
                try:
                    rc, out, err = await self._communicate(proc, payload, key, publisher)
                finally:
                    await publisher.close()
            except asyncio.CancelledError:
                self._signal_child(running, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.ops.release(opts.project, key, token), 5)
                raise
            finally:
                await _finish_background(beat, beat_done)
                if running.kill_handle is not None:
                    running.kill_handle.cancel()
                self._running.pop(key, None)
            seconds = time.monotonic() - started
            await self._settle(running, rc, out, err, seconds)
        finally:
            span.end(None if rc == 0 else f"exit code {rc}" if rc is not None else "not run")
            self._active -= 1
            self._last_busy = time.monotonic()

    async def _settle(self, r: _Running, rc: int, out: tuple[str, bool], err: tuple[str, bool], seconds: float) -> None:
        opts = self.options
        key, token = r.key, r.token
        if r.lost:
            logger.warning("%s: lease on %s was lost; its result (exit %d) is discarded", self._session, key, rc)
            self._record(key, "lost", rc, seconds)
            return
        if rc == 0:
            result = fit_result(
                {
                    "exit_code": 0,
                    "stdout": out[0],
                    "stdout_truncated": out[1],
                    "duration_seconds": round(seconds, 3),
                },
                opts.max_result_bytes,
            )
            await self._finish(
                key, "completed", lambda: self.ops.complete(opts.project, key, token, result), rc, seconds
            )
            return
        if r.stopping:
            await self._finish(key, "released", lambda: self.ops.release(opts.project, key, token), rc, seconds)
            return
        if rc < 0:
            try:
                why = f"killed by {signal.Signals(-rc).name}"
            except ValueError:
                why = f"killed by signal {-rc}"
        else:
            why = f"exit code {rc}"
        tail = err[0].strip()
        error = f"{why}: {tail}" if tail else why

        async def do_fail() -> Task:
            return await self.ops.fail(opts.project, key, token, error, True)

        await self._finish(key, "retry", do_fail, rc, seconds)

    async def _finish(
        self,
        key: str,
        outcome: str,
        op: Callable[[], Awaitable[Task]],
        rc: int | None = None,
        seconds: float = 0.0,
    ) -> None:
        for attempt in range(4):
            try:
                task = await op()
            except exceptions.BackendError as exc:
                if attempt == 3:
                    logger.error("%s: could not record %s for %s: %s", self._session, outcome, key, exc)
                    self._record(key, "lost", rc, seconds)
                    return
                await asyncio.sleep(0.5 * 2**attempt)
                continue
            except (exceptions.LeaseError, exceptions.NotFound, exceptions.Conflict) as exc:
                logger.warning("%s: %s of %s refused (%s); the result is discarded", self._session, outcome, key, exc)
                self._record(key, "lost", rc, seconds)
                return
            if outcome == "retry" and task.status is TaskStatus.FAILED:
                outcome = "failed"
            self._record(key, outcome, rc, seconds)
            return

    def _record(self, key: str, outcome: str, rc: int | None, seconds: float) -> None:
        self._outcomes.append(TaskOutcome(key=key, outcome=outcome, exit_code=rc, seconds=round(seconds, 3)))
        verb = {
            "completed": "completed",
            "retry": "failed; will be retried",
            "failed": "failed; dead-lettered",
            "released": "released",
            "lost": "lost its lease",
        }[outcome]
        logger.info("%s: %s %s (exit %s, %.1fs)", self._session, key, verb, rc, seconds)

    async def _heartbeat(self, r: _Running, interval: float, done: asyncio.Event) -> None:
        opts = self.options
        delay = interval
        while not await _wait_event(done, delay):
            try:
                await self.ops.heartbeat(opts.project, r.key, r.token, self._lease_seconds)
                delay = interval
            except exceptions.BackendError as exc:
                # Keep trying (sooner): the lease may still be saved before it runs out.
                logger.warning("heartbeat for %s failed: %s", r.key, exc)
                delay = max(0.05, min(interval, 1.0))
            except exceptions.QueueServiceError as exc:
                logger.warning("%s: lease on %s lost (%s); stopping its command", self._session, r.key, exc)
                r.lost = True
                self._terminate(r)
                return

    async def _communicate(
        self, proc: asyncio.subprocess.Process, payload: bytes, key: str, publisher: LinePublisher
    ) -> tuple[int, tuple[str, bool], tuple[str, bool]]:
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        # every line also goes to the task's output stream (issue 14), echoed or not
        echo: TextIO = cast(TextIO, StreamTee(self.options.echo, publisher, (f"{key}| ", f"{key}! ")))
        readers = [
            asyncio.create_task(read_head(proc.stdout, stdout_budget(self.options.max_result_bytes), echo, f"{key}| ")),
            asyncio.create_task(read_tail(proc.stderr, self.options.tail_chars, echo, f"{key}! ")),
        ]
        feeder = asyncio.create_task(feed_stdin(proc.stdin, payload))
        try:
            rc = await proc.wait()
            # A grandchild that kept our pipes open must not hold the task forever.
            _, pending = await asyncio.wait([*readers, feeder], timeout=2.0)
            for t in pending:
                t.cancel()
            out = readers[0].result() if not readers[0].cancelled() and readers[0].done() else ("", True)
            err = readers[1].result() if not readers[1].cancelled() and readers[1].done() else ("", True)
        finally:
            for t in (*readers, feeder):
                if not t.done():
                    t.cancel()
        return rc, out, err


async def _wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait up to *timeout* for *event*; True if it is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
    return event.is_set()


async def _finish_background(task: asyncio.Task[None], done: asyncio.Event, timeout: float = 15.0) -> None:
    """Ask a background loop to end and let a call it has in flight finish (cancelling a database call
    half-way is what we avoid); cancel it only if it does not end within *timeout*."""
    done.set()
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    except Exception as exc:  # a background loop's own failure must not hide the run's result
        logger.warning("background task failed: %s", exc)
