"""Row history: the last few synced versions of each row, so an old copy of TASKS.md is recognised (issue 17).

A TASKS.md restored by ``git checkout``, ``cp`` of a backup, or an editor saving a stale buffer
differs from the base exactly like a hand edit does. What tells them apart is that its values are
ones the file *used to* have. The service therefore keeps, per row of the stored base, a short
history of earlier synced values (only the fields that changed, newest first), plus the hashes of
the last few files it rendered. The history lives in the stored sync state, never in the file.

A base entry is ``{"v": version, "f": values, "h": [older deltas], "a": 1}``; ``a`` is present when
the service (not the file) brought the row into the file (a task created through the API or by an
agent), so an old copy that lacks the row is recognised as old.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from queue_service.models import Task, TaskStatus
from workspace_sync import merge as m

__all__ = [
    "GUARDED_STATUSES",
    "HISTORY_DEPTH",
    "MAX_CANCELS_PER_CYCLE",
    "RECENT_FILES",
    "base_entry",
    "push_hash",
    "status_held",
    "was_synced",
]

#: how many earlier versions of a row are kept
HISTORY_DEPTH = 4
#: how many earlier rendered file hashes are kept
RECENT_FILES = 16
#: the file alone never cancels more tasks than this in one cycle
MAX_CANCELS_PER_CYCLE = 3
#: the file alone never moves a task out of these statuses ...
GUARDED_STATUSES = frozenset({TaskStatus.DONE, TaskStatus.IN_PROGRESS})
#: ... except forward: finishing running work by hand (in-progress -> done or needs-qa) is an edit,
#: unless the row had that status before (then it is an old copy)
FORWARD = {TaskStatus.IN_PROGRESS: frozenset({"done", "needs-qa"})}


def status_held(current: TaskStatus, wanted: Any, entry: Mapping[str, Any] | None) -> bool:
    """Whether the file alone may not move a task from *current* to the status *wanted*."""
    if current not in GUARDED_STATUSES:
        return False
    return wanted not in FORWARD.get(current, ()) or was_synced(entry, "status", wanted)


def base_entry(task: Task, previous: Mapping[str, Any] | None, *, added: bool = False) -> dict[str, Any]:
    """The base entry of *task* after a sync, carrying *previous*'s history forward.

    Args:
        task: the task as synced.
        previous: its entry in the last base (None: new to this file).
        added: the service wrote this row into the file (no row for it came from the file).
    """
    values = m.task_values(task)
    entry: dict[str, Any] = {"v": task.version, "f": values}
    history: list[dict[str, Any]] = []
    if previous is not None:
        history = list(previous.get("h", ()))
        old = previous.get("f") or {}
        delta = {k: old.get(k) for k in set(old) | set(values) if not m.same(k, old.get(k), values.get(k))}
        if delta:
            history = [delta, *history][:HISTORY_DEPTH]
        if previous.get("a"):
            added = True
    if history:
        entry["h"] = history
    if added:
        entry["a"] = 1
    return entry


def was_synced(entry: Mapping[str, Any] | None, field: str, value: Any) -> bool:
    """Whether *value* is an earlier synced value of *field* in this row's history."""
    if entry is None:
        return False
    return any(field in delta and m.same(field, delta[field], value) for delta in entry.get("h", ()))


def push_hash(hashes: list[str], old: str | None, new: str) -> list[str]:
    """The recent rendered hashes after the file went from *old* to *new* (newest first, bounded)."""
    out = [h for h in hashes if h != new]
    if old is not None and old != new and old not in out:
        out.insert(0, old)
    return out[:RECENT_FILES]
