"""Issue 18: coord's ``next-task.json`` fields, in coord's order.

The orchestrator shell tool writes ``project, runtime, mission_id, mission_name, project_path,
quality_gates, current_ms_id, current_ms_name, next_task, tasks_done, tasks_total, pct, current_branch``;
``qs run`` writes those first and its own keys after them (see docs/plans/mosaic-parity.md).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from queue_service.models import Mission, MissionStatus, Task, TaskStatus

__all__ = ["COORD_FIELDS", "coord_fields", "current_branch", "progress"]

COORD_FIELDS = (
    "project",
    "runtime",
    "mission_id",
    "mission_name",
    "project_path",
    "quality_gates",
    "current_ms_id",
    "current_ms_name",
    "next_task",
    "tasks_done",
    "tasks_total",
    "pct",
    "current_branch",
)
#: a ref name as git allows it, bounded (HEAD is outside input)
_REF_RE = re.compile(r"^ref: refs/heads/([^\s\x00-\x1f\x7f~^:?*\[\\]{1,250})$")
_SHA_RE = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_HEAD_LIMIT = 1024


def _git_dir(workdir: Path) -> Path | None:
    dot_git = workdir / ".git"
    if dot_git.is_dir():
        return dot_git
    if dot_git.is_file():  # a worktree or submodule: "gitdir: <path>"
        try:
            text = dot_git.read_text(encoding="utf-8", errors="replace")[:_HEAD_LIMIT].strip()
        except OSError:
            return None
        if text.startswith("gitdir: "):
            target = Path(text.removeprefix("gitdir: ").strip())
            return target if target.is_absolute() else (workdir / target)
    return None


def current_branch(workdir: Path) -> str | None:
    """The checked-out branch, read from ``.git/HEAD`` (no git process); a detached HEAD gives its
    commit id, no repository (or an unreadable HEAD) gives None."""
    git_dir = _git_dir(workdir)
    if git_dir is None:
        return None
    try:
        with (git_dir / "HEAD").open("r", encoding="utf-8", errors="replace") as fh:
            head = fh.read(_HEAD_LIMIT).strip()
    except OSError:
        return None
    match = _REF_RE.match(head)
    if match:
        return match.group(1)
    return head if _SHA_RE.match(head) else None


def progress(tasks: Sequence[Task]) -> tuple[int, int, int]:
    """``(tasks_done, tasks_total, pct)`` of a mission; cancelled tasks are not counted (withdrawn work
    is no part of the plan); ``pct`` = floor(100·done/total), 0 for an empty mission."""
    counted = [t for t in tasks if t.status is not TaskStatus.CANCELLED]
    done = sum(1 for t in counted if t.status is TaskStatus.DONE)
    total = len(counted)
    return done, total, (100 * done) // total if total else 0


def _current_milestone(mission: Mission | None, task: Task) -> tuple[str | None, str | None]:
    if mission is None:
        return None, None
    names = {m.id: m.name for m in mission.milestones}
    if task.milestone:
        return task.milestone, names.get(task.milestone)
    # no milestone on the task: the first one not completed is where the mission stands
    for m in mission.milestones:
        if m.status is not MissionStatus.COMPLETED:
            return m.id, m.name
    return None, None


def coord_fields(
    *,
    project: str,
    runtime: str,
    project_path: Path,
    mission: Mission | None,
    task: Task,
    mission_tasks: Sequence[Task],
) -> dict[str, Any]:
    """The thirteen coord fields, in coord's order."""
    done, total, pct = progress(mission_tasks)
    ms_id, ms_name = _current_milestone(mission, task)
    return {
        "project": project,
        "runtime": runtime,
        "mission_id": task.mission,
        "mission_name": mission.name if mission else task.mission,
        "project_path": str(project_path),
        "quality_gates": list(mission.quality_gates) if mission else [],
        "current_ms_id": ms_id,
        "current_ms_name": ms_name,
        "next_task": task.key,
        "tasks_done": done,
        "tasks_total": total,
        "pct": pct,
        "current_branch": current_branch(project_path),
    }
