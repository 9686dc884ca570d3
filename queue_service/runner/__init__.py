"""The coord-style runner behind ``queue-service run``: claim → spawn → heartbeat → complete/fail.

* ``loop`` — :class:`Runner`, the run loop (claims, children, heartbeats, finishing, signals);
* ``session`` — the files in ``<workdir>/.mosaic/orchestrator/`` (coord parity): ``session.lock``
  (one live runner per workspace), ``sessions.jsonl`` and the ``next-task.json`` capsule;
* ``child`` — the child's environment and log-line escaping;
* ``output`` — capturing a child's output (terminal echo, the stored result);
* ``stream`` — publishing a child's output lines to the task's stream (issue 14).
"""

from queue_service.runner.child import child_environment, escape_control
from queue_service.runner.loop import (
    EXIT_TASK_FAILED,
    Runner,
    RunnerOps,
    RunnerOptions,
    RunSummary,
    TaskOutcome,
)
from queue_service.runner.session import (
    CAPSULE_FILE,
    LOCK_FILE,
    SESSIONS_FILE,
    SessionLock,
    SessionLocked,
    orchestrator_dir,
    pid_alive,
)

__all__ = [
    "CAPSULE_FILE",
    "EXIT_TASK_FAILED",
    "LOCK_FILE",
    "SESSIONS_FILE",
    "RunSummary",
    "Runner",
    "RunnerOps",
    "RunnerOptions",
    "SessionLock",
    "SessionLocked",
    "TaskOutcome",
    "child_environment",
    "escape_control",
    "orchestrator_dir",
    "pid_alive",
]
