"""The runner's files in the work directory (coord parity): ``session.lock``, ``sessions.jsonl`` and
the ``next-task.json`` capsule, all in ``<workdir>/.mosaic/orchestrator/``.

``session.lock`` allows one live runner per workspace (JSON with ``session_id`` ``sess-NNN``,
``runtime``, ``pid``, ``started_at``, ``project_path``); a lock whose pid is no longer running is
stale and taken over. ``sessions.jsonl`` records every session (it is where ``NNN`` comes from).
``next-task.json`` names the task about to run, and says when the session ended.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import filelock

from queue_service import exceptions
from queue_service.coord_capsule import coord_fields
from queue_service.models import Claim, Mission, Task

__all__ = [
    "CAPSULE_FILE",
    "LOCK_FILE",
    "SESSIONS_FILE",
    "SessionLock",
    "SessionLocked",
    "end_capsule",
    "orchestrator_dir",
    "pid_alive",
    "task_capsule",
    "write_capsule",
]

# the runner's logger: one name for every part of ``qs run`` (cli/run.py configures it)
logger = logging.getLogger("queue_service.runner")

LOCK_FILE = "session.lock"
CAPSULE_FILE = "next-task.json"
SESSIONS_FILE = "sessions.jsonl"
_GUARD_FILE = ".session.lock.guard"


class SessionLocked(exceptions.Conflict):
    """Another live runner holds this workspace's session.lock."""

    code = "session_locked"


def orchestrator_dir(workspace: Path) -> Path:
    """``<workspace>/.mosaic/orchestrator`` (coord's layout)."""
    return workspace / ".mosaic" / "orchestrator"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid is running on this machine (zombies count as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in {"Z", "X"}


def _atomic_write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, ensure_ascii=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _session_number(session_id: object) -> int:
    if isinstance(session_id, str) and session_id.startswith("sess-"):
        with contextlib.suppress(ValueError):
            return int(session_id[5:])
    return 0


class SessionLock:
    """The workspace's ``session.lock``: at most one live runner per workspace."""

    def __init__(self, directory: Path, info: dict[str, Any]) -> None:
        self.directory = directory
        self.info = info

    @property
    def path(self) -> Path:
        """The lock file."""
        return self.directory / LOCK_FILE

    @property
    def session_id(self) -> str:
        """``sess-NNN``."""
        return str(self.info["session_id"])

    @classmethod
    def acquire(cls, directory: Path, *, runtime: str, project_path: Path, **extra: Any) -> SessionLock:
        """Take the lock, or raise SessionLocked if a live runner holds it.

        A lock left by a dead process (killed runner, reboot) is taken over. ``NNN`` is one more than
        the highest session recorded in ``sessions.jsonl`` or the stale lock.
        """
        try:
            directory.mkdir(parents=True, exist_ok=True)
            # The guard serialises the read-check-write below between runners starting at once.
            with filelock.FileLock(str(directory / _GUARD_FILE), timeout=30):
                return cls._acquire_locked(directory, runtime=runtime, project_path=project_path, **extra)
        except filelock.Timeout:
            raise exceptions.BackendError(f"timed out waiting for {directory / _GUARD_FILE}") from None
        except OSError as exc:
            raise exceptions.BackendError(f"cannot write the session lock in {directory}: {exc}") from exc

    @classmethod
    def _acquire_locked(cls, directory: Path, *, runtime: str, project_path: Path, **extra: Any) -> SessionLock:
        path = directory / LOCK_FILE
        highest = 0
        old: dict[str, Any] | None = None
        if path.exists():
            try:
                loaded = json.loads(path.read_text(encoding="utf-8"))
                old = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                old = {}  # unreadable: nobody can prove it is alive; treat as stale
            pid = old.get("pid")
            host = old.get("hostname")
            if isinstance(pid, int) and host not in (None, socket.gethostname()):
                raise SessionLocked(
                    f"{path} belongs to a runner on host {host} (pid {pid}); it cannot be checked from here. "
                    "Delete the file if that runner is gone.",
                    path=str(path),
                )
            if isinstance(pid, int) and pid_alive(pid):
                raise SessionLocked(
                    f"another runner is active in this workspace: {old.get('session_id')} (pid {pid}, "
                    f"runtime {old.get('runtime')}, started {old.get('started_at')}); stop it first "
                    f"(lock: {path})",
                    path=str(path),
                    session_id=old.get("session_id"),
                    pid=pid,
                )
            highest = _session_number(old.get("session_id"))
        history = directory / SESSIONS_FILE
        if history.exists():
            for line in history.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(ValueError, AttributeError):
                    highest = max(highest, _session_number(json.loads(line).get("session_id")))
        info: dict[str, Any] = {
            "session_id": f"sess-{highest + 1:03d}",
            "runtime": runtime,
            "pid": os.getpid(),
            "started_at": _now_iso(),
            "project_path": str(project_path),
            "hostname": socket.gethostname(),
            **extra,
        }
        _atomic_write_json(path, info)
        with history.open("a", encoding="utf-8") as fh:
            record = {"event": "started", **info}
            if old is not None:
                record["took_over"] = old.get("session_id")
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        lock = cls(directory, info)
        if old is not None:
            logger.warning(
                "took over a stale %s from %s (pid %s is not running)", LOCK_FILE, old.get("session_id"), old.get("pid")
            )
        return lock

    def release(self, **summary: Any) -> None:
        """Remove the lock if it is still ours, and record the session's end."""
        try:
            with filelock.FileLock(str(self.directory / _GUARD_FILE), timeout=30):
                try:
                    current = json.loads(self.path.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    current = None
                if (
                    isinstance(current, dict)
                    and current.get("session_id") == self.session_id
                    and current.get("pid") == self.info["pid"]
                ):
                    self.path.unlink(missing_ok=True)
                with (self.directory / SESSIONS_FILE).open("a", encoding="utf-8") as fh:
                    record = {"event": "ended", "session_id": self.session_id, "ended_at": _now_iso(), **summary}
                    fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        except (OSError, filelock.Timeout) as exc:
            logger.warning("could not release %s: %s", self.path, exc)


def task_capsule(
    *,
    project: str,
    runtime: str,
    workspace: Path,
    session_id: str,
    agent: str,
    claim: Claim,
    mission: Mission | None,
    mission_tasks: list[Task],
) -> dict[str, Any]:
    """``next-task.json`` for a task about to run: coord's fields plus this session and the lease."""
    capsule = coord_fields(
        project=project,
        runtime=runtime,
        project_path=workspace,
        mission=mission,
        task=claim.task,
        mission_tasks=mission_tasks,
    )
    capsule.update(
        {
            "session_id": session_id,
            "agent": agent,
            "claimed_at": _now_iso(),
            "lease_expires_at": claim.lease.expires_at.isoformat(),
            "task": claim.task.model_dump(mode="json"),
        }
    )
    return capsule


def end_capsule(
    *,
    project: str,
    workspace: Path,
    session_id: str,
    agent: str,
    stop_reason: str,
    last_task: str | None,
    counts: dict[str, int],
) -> dict[str, Any]:
    """``next-task.json`` once the session ended: no task is about to run; what the session did."""
    return {
        "session_id": session_id,
        "project": project,
        "project_path": str(workspace),
        "agent": agent,
        "ended_at": _now_iso(),
        "stop_reason": stop_reason,
        "task": None,
        "last_task": last_task,
        "counts": counts,
    }


def write_capsule(workspace: Path, capsule: dict[str, Any]) -> None:
    """Replace ``next-task.json`` atomically; it is advisory, so a failure is only logged."""
    try:
        _atomic_write_json(orchestrator_dir(workspace) / CAPSULE_FILE, capsule)
    except OSError as exc:
        logger.warning("could not write %s: %s", CAPSULE_FILE, exc)
