"""A ProjectState as a ProjectSnapshot and back: export/import of the in-process backends."""

from __future__ import annotations

from queue_service.models import ProjectSnapshot, SyncFileState
from queue_service.state.changes import Changes
from queue_service.state.project import ProjectState

__all__ = ["snapshot_of", "state_from_snapshot"]


def snapshot_of(state: ProjectState) -> ProjectSnapshot:
    """Export a project state (shared by the in-memory and flatfile backends)."""
    return ProjectSnapshot(
        project=state.project,
        missions=tuple(state.missions.values()),
        tasks=tuple(state.tasks.values()),
        notes=tuple(n for key in state.tasks for n in state.notes.get(key, [])),
        events=tuple(state.events),
        next_seq=state.next_seq,
        sync=tuple(
            SyncFileState(project=state.project.slug, path=path, state=value, rows=state.sync_rows.get(path, {}))
            for path, value in sorted(state.sync_state.items())
        ),
    )


def state_from_snapshot(snapshot: ProjectSnapshot) -> tuple[ProjectState, Changes]:
    """A state holding *snapshot*, and the Changes that build it (for journaling backends).

    Leases are not carried over: an in-progress task keeps its status but loses holder and expiry,
    since its token never left the old backend.
    """
    state = ProjectState(snapshot.project)
    tasks = {}
    for task in sorted(snapshot.tasks, key=lambda t: t.seq):
        if task.lease_holder or task.lease_expires_at:
            task = task.model_copy(update={"lease_holder": None, "lease_expires_at": None})
        tasks[task.key] = task
    changes = Changes(
        tasks=tasks,
        notes=list(snapshot.notes),
        events=list(snapshot.events),
        project=snapshot.project,
        missions={m.id: m for m in snapshot.missions},
        next_seq=snapshot.next_seq,
        sync_state={s.path: dict(s.state) for s in snapshot.sync},
        sync_rows={s.path: dict(s.rows) for s in snapshot.sync if s.rows},
    )
    state.apply(changes)
    return state, changes
