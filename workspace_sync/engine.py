"""The sync engine for one TASKS.md: one *cycle* merges the file and the database and writes both.

A cycle (:meth:`FileSync.sync`), under the file's lock:

1. read the stored sync state (the *base*: per task the field values at the last sync, the file's
   hash, the event cursor) and the events since the cursor;
2. skip at once when the file still has the base's hash and nothing happened in the database;
3. otherwise parse the file and, per row, merge base × database × row (:mod:`workspace_sync.merge`),
   writing the database with the task's ``expected_version`` (re-read and re-merge on a
   VersionConflict); create tasks for ``+`` rows and for rows with ids the database does not know
   (*adoption* of an existing file is the same with no base); cancel tasks whose rows were deleted
   (or restore the row when the task changed since the base); append rows for tasks created elsewhere;
   hold back what goes backwards (an old copy of the file; :mod:`workspace_sync.cycle`);
4. mark rows that cannot be applied with ``<!-- sync-error: … -->`` (the row stays as typed, the
   database keeps its state) and merged conflicts with ``<!-- sync-conflict: … -->`` plus a task note;
5. render; write atomically only when the bytes differ; store the state and the base rows that changed
   (never the whole base: the cost of a cycle grows with the change, not with the file); the list of
   errors is stored apart (:func:`errors_key`) and only when it changed.

The service is the only writer of the file; everything else (the watcher, DB events, the periodic
rescan) only asks for a cycle.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from queue_service import exceptions
from queue_service.models import (
    DEFAULT_MISSION,
    Mission,
    Task,
    TaskFilter,
    utcnow,
)
from queue_service.service import QueueService
from queue_service.workspaces import Confined, tasks_file_of
from workspace_sync import history as hist
from workspace_sync import merge as m
from workspace_sync import safe_files
from workspace_sync.companions import CoordCompanions
from workspace_sync.cycle import SYNC_ACTOR, Cycle, SyncReport, TableShape, error_entry, table_shape
from workspace_sync.format import MarkerKind, RowData, TasksDocument, parse, render_document
from workspace_sync.layout import coord_workspace_of
from workspace_sync.writer import SyncLock, content_hash

__all__ = [
    "STATE_FORMAT",
    "SYNC_ACTOR",
    "FileSync",
    "SyncReport",
    "collect_errors",
    "errors_key",
    "load_status_state",
    "mission_path",
    "public_status",
]

logger = logging.getLogger("workspace_sync")

#: Version of the stored sync-state layout (2: base rows stored apart, with their history; issue 17).
STATE_FORMAT = 2
_PAGE = 1000
_EVENT_PAGE = 10_000
_MAX_CONFLICTS_KEPT = 50
#: how many recently created `+` rows are remembered (a stale buffer saving one again)
_MAX_CREATED_KEPT = 200
#: a cycle re-lists every task at least this often even when events say nothing else changed
_FULL_LIST_SECONDS = 60.0
#: more changed tasks than this since the last cycle: list them all rather than fetch them by key
_INCREMENTAL_MAX = 2_000


def mission_path(workspace: Path | str, mission: Mission) -> Path:
    """The stored TASKS.md of *mission*: ``<workspace>/<tasks_file>`` (``TASKS.md`` for the default one unless
    pinned elsewhere; discovery is :mod:`workspace_sync.layout`).

    The result is absolute and normalised (it is also the key of the file's stored sync state). ``~``
    is never expanded (issue 9): stored workspaces are absolute paths.
    """
    root = Path(workspace)
    path = root / tasks_file_of(mission)
    return Path(os.path.normpath(path.absolute()))


@dataclasses.dataclass
class _Memo:
    """What a completed cycle knew, so the next one only looks at what changed since.

    Valid only while the stored state is still the one that cycle wrote (same ``gen``, event cursor
    and file hash): another process syncing the same file, or a failed cycle, drops it.

    Attributes:
        gen: the ``gen`` of the stored state the cycle wrote.
        event_id: the event cursor it stored; ``tasks`` are at least as fresh as that.
        file_hash: the file's hash it stored.
        tasks: every task of the project.
        rows: per key, what the file's row said (data and its table's columns) when the cycle ended;
            only rows that ended clean (no errors anywhere in the file).
        listed_at: ``time.monotonic()`` of the last full listing of the tasks.
        doc: the document as rendered (it renders to the file of ``file_hash``), when it was clean;
            a cycle that finds the file unchanged reuses it instead of parsing the file again.
    """

    gen: int
    event_id: int
    file_hash: str
    tasks: dict[str, Task]
    rows: dict[str, tuple[RowData, TableShape]]
    listed_at: float
    doc: TasksDocument | None = None


class FileSync:
    """Syncs one mission's TASKS.md with the database.

    Args:
        service: the QueueService facade (the only way data is read or written).
        project: project slug.
        mission: mission id.
        path: the TASKS.md file.
        strict_coord: render fresh files with exactly coord's nine columns.
        lock_timeout: seconds to wait for another process's cycle on the same file.
        target: how to reach *path* without following links (from
            :func:`queue_service.workspaces.locate_tasks_file`); default: trust *path*'s directory.
        max_bytes: the largest file read (a larger one is refused).
    """

    def __init__(
        self,
        service: QueueService,
        project: str,
        mission: str,
        path: Path,
        *,
        strict_coord: bool = False,
        lock_timeout: float = 30.0,
        target: Confined | None = None,
        max_bytes: int = safe_files.MAX_FILE_BYTES,
    ) -> None:
        self.service = service
        self.project = project
        self.mission = mission
        # every read/write goes through safe_files from this (issue 9: no links, regular files only)
        self.target = target or Confined.of(path)
        self.path = self.target.path
        self.max_bytes = max_bytes
        self.strict_coord = strict_coord
        self.lock = SyncLock(self.target, timeout=lock_timeout)
        # coord's layout (docs/TASKS.md): the manifest and mission.json are kept with this file (issue 18)
        coord = coord_workspace_of(self.target)
        self.companions = None if coord is None else CoordCompanions(service, project, mission, coord)
        self._mutex = asyncio.Lock()
        #: how many times this object wrote the file
        self.writes = 0
        #: how many cycles ran (skipped ones included)
        self.cycles = 0
        #: hash of the file as we last wrote or read it in a completed cycle (own-write detection)
        self.last_hash: str | None = None
        #: (task, version) pairs this object wrote last cycle: their events need no new cycle
        self.own_versions: set[tuple[str, int]] = set()
        self.last_report: SyncReport | None = None
        self._events: list[Any] = []
        self._cursor = 0
        self._memo: _Memo | None = None
        #: (gen, base rows) as this object last stored them: valid while the stored gen is that gen
        self._rows: tuple[int, dict[str, Any]] | None = None

    @property
    def state_key(self) -> str:
        """The key of the file's sync state: its absolute path."""
        return str(self.path)

    def file_hash(self) -> str | None:
        """The current file's content hash (None when missing, unreadable or refused); blocks."""
        try:
            data = safe_files.read_file(self.target, self.max_bytes)
        except (OSError, safe_files.UnsafeFile):
            return None
        return None if data is None else content_hash(data)

    async def changed_by_agent(self, key: str, entry: dict[str, Any]) -> bool:
        """Whether a change of *key* since its base came from dispatch (claims, completions, sweeps).

        Reads the events again: called after a VersionConflict, when the task changed during the cycle.
        """
        self._events, _ = await self._events_since(self._cursor)
        return any(
            e.task == key and e.kind not in m.HUMAN_EVENT_KINDS and (e.version or 0) > entry["v"] for e in self._events
        )

    def watched_paths(self) -> list[str]:
        """The files whose events ask this file's worker for a cycle."""
        return [str(self.path), *(self.companions.watched_paths() if self.companions else ())]

    def disk_unchanged(self) -> bool:
        """Every watched file is as the last completed cycle left it (a file event changed nothing); blocks."""
        if self.last_hash is None or self.file_hash() != self.last_hash:
            return False
        return self.companions is None or self.companions.disk_unchanged()

    def _write_unless_changed(self, data: bytes, expected_hash: str | None) -> bool:
        """Write *data* atomically unless the file no longer has *expected_hash* (None: it did not exist)."""
        if self.file_hash() != expected_hash:
            return False
        safe_files.write_atomic(self.target, data)
        return True

    def _is_own(self, event: Any, mission_changed: bool) -> bool:
        if event.task is None:
            return mission_changed and event.kind == "mission_updated"
        return (event.task, event.version or 0) in self.own_versions

    async def _events_since(self, cursor: int) -> tuple[list[Any], int]:
        out: list[Any] = []
        while True:
            page = await self.service.list_events(self.project, after_id=cursor, limit=_EVENT_PAGE)
            out.extend(page)
            if page:
                cursor = page[-1].id
            if len(page) < _EVENT_PAGE:
                return out, cursor

    async def _all_tasks(self) -> dict[str, Task]:
        tasks: dict[str, Task] = {}
        cursor: str | None = None
        while True:
            page = await self.service.list_tasks(self.project, TaskFilter(), limit=_PAGE, cursor=cursor)
            for task in page.items:
                tasks[task.key] = task
            cursor = page.next_cursor
            if cursor is None:
                return tasks

    async def _changed_tasks(self, known: dict[str, Task], events: Sequence[Any]) -> dict[str, Task] | None:
        """*known* updated with the tasks *events* name (None: too many, list them all instead)."""
        keys = sorted({e.task for e in events if e.task})
        if len(keys) > _INCREMENTAL_MAX:
            return None
        tasks = dict(known)
        for start in range(0, len(keys), _PAGE):
            chunk = keys[start : start + _PAGE]
            found = {t.key: t for t in await self.service.get_tasks(self.project, chunk)}
            for key in chunk:
                task = found.get(key)
                if task is None:
                    tasks.pop(key, None)
                else:
                    tasks[key] = task
        return tasks

    async def status(self) -> dict[str, Any]:
        """The stored sync state's public part: path, errors, recent conflicts, problem, last sync."""
        state = await load_status_state(self.service, self.project, self.state_key)
        return await asyncio.to_thread(public_status, self.mission, self.path, state, self.target)

    async def sync(self, *, force: bool = False, accept_file: bool = False) -> SyncReport:
        """Run one cycle (see the module docstring); never leaves a half-written file.

        Args:
            force: do the full merge even when neither side seems to have changed.
            accept_file: a person means what the file says: apply the changes earlier cycles held
                back (values going backwards, moves out of done/in-progress, mass cancellations) and
                merge without those guards.

        Raises:
            QueueServiceError: the database failed, or the file's lock is held elsewhere too long.
        """
        async with self._mutex:
            self.cycles += 1
            problem = await asyncio.to_thread(safe_files.directory_problem, self.target)
            if problem:
                return await self._problem(problem)
            try:
                async with self.lock.hold():
                    if self.companions is not None:
                        await self.companions.before()
                    report = await self._cycle(force or accept_file, accept_file)
                    if self.companions is not None and report.problem is None:
                        await self.companions.after(report.skipped)
            except safe_files.UnsafeFile as exc:
                return await self._problem(exc.message)
            self.last_report = report
            return report

    async def _problem(self, message: str) -> SyncReport:
        report = SyncReport(path=str(self.path), problem=message)
        state = await self.service.get_sync_state(self.project, self.state_key) or {}
        if state.get("problem") != message:
            state["problem"] = message
            state["mission"] = self.mission
            await self.service.put_sync_state(self.project, self.state_key, state)
        self.last_report = report
        return report

    async def _apply_held(self, held: dict[str, Any], report: SyncReport) -> None:
        """Apply the changes earlier cycles held back, where the task did not change since."""
        for key, change in held.items():
            try:
                task = await self.service.get_task(self.project, key)
                if task.version != change.get("v"):
                    continue
                if change.get("cancel"):
                    await self.service.cancel_task(
                        self.project, key, reason=f"row removed from {self.path.name} (accepted)", actor=SYNC_ACTOR
                    )
                    report.cancelled.append(key)
                else:
                    update = m.update_from_values(task, change.get("patch", {}))
                    await self.service.update_task(
                        self.project, key, update, expected_version=task.version, actor=SYNC_ACTOR
                    )
                    report.updated.append(key)
            except exceptions.QueueServiceError as exc:
                report.errors.append(error_entry(0, 0, f"could not apply the file's change to {key}: {exc}", key))

    async def _cycle(self, force: bool, accept: bool = False) -> SyncReport:
        svc, slug = self.service, self.project
        report = SyncReport(path=str(self.path))
        state = await svc.get_sync_state(slug, self.state_key) or {}
        carried_held: dict[str, Any] = dict(state.get("held", {}))
        if accept and carried_held:
            await self._apply_held(carried_held, report)
            carried_held = {}
        base: dict[str, Any] | None = state.get("base")
        cursor = self._cursor = int(state.get("event_id", 0))
        gen = int(state.get("gen", 0))
        # taken out first: a cycle that fails or returns early leaves no memo behind
        memo, self._memo = self._memo, None
        if memo is not None and (
            force
            or base is None
            or memo.gen != gen
            or memo.event_id != cursor
            or memo.file_hash != base.get("file_hash")
            or time.monotonic() - memo.listed_at > _FULL_LIST_SECONDS
        ):
            memo = None
        events, new_cursor = await self._events_since(cursor)
        self._events = events
        self.own_versions = set()
        mission_changed = False
        try:
            raw = await asyncio.to_thread(safe_files.read_file, self.target, self.max_bytes)
        except safe_files.UnsafeFile as exc:
            return await self._problem(exc.message)
        except OSError as exc:
            return await self._problem(f"cannot read {self.path}: {exc.strerror or exc}")
        file_hash = None if raw is None else content_hash(raw)
        if (
            not force
            and base is not None
            and raw is not None
            and file_hash == base.get("file_hash")
            and not events
            and state.get("problem") is None
            # a row with an error is retried when something happens (an event), not on every rescan
        ):
            self.last_hash = file_hash
            self._memo = memo
            report.skipped = True
            return report
        text: str | None = None
        if raw is not None:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return await self._problem(f"{self.path} is not UTF-8 text ({exc}); left untouched")
            if not text.strip():
                text = None  # truncated (`: > TASKS.md`, a crashed save): like a deleted file, never "cancel all"
        mission = await svc.get_mission(slug, self.mission)
        changed = None if memo is None else await self._changed_tasks(memo.tasks, events)
        if changed is None or memo is None:
            listed_at = time.monotonic()
            tasks = await self._all_tasks()
            known_rows: dict[str, tuple[RowData, TableShape]] = {}
        else:
            listed_at, tasks, known_rows = memo.listed_at, changed, memo.rows
        agent_keys = {e.task for e in events if e.task and e.kind not in m.HUMAN_EVENT_KINDS}
        hidden: dict[str, int] = dict((base or {}).get("hidden", {}))
        # the base rows live apart from the state (a cycle stores only the ones that changed)
        legacy = (base or {}).get("rows")
        if legacy is not None:
            stored_rows: dict[str, Any] = {}  # a state from before issue 17: moved to the rows on this cycle
            base_rows: dict[str, Any] = dict(legacy)
        elif base is None:
            stored_rows = base_rows = {}
        elif self._rows is not None and self._rows[0] == gen:
            stored_rows = base_rows = self._rows[1]
        else:
            stored_rows = base_rows = await svc.get_sync_rows(slug, self.state_key)
        self._rows = None
        conflicts: list[dict[str, Any]] = list(state.get("conflicts", []))

        old_hash = None if base is None else base.get("file_hash")
        hashes: list[str] = list(state.get("hashes", []))
        created_rows: dict[str, str] = dict(state.get("created", {}))
        held = carried_held
        final: TasksDocument | None = None
        if text is None:
            new_text, new_base = self._fresh(mission, tasks, hidden, base_rows)
        else:
            # the file is still what the last cycle rendered: its document is already parsed
            kept = memo.doc if memo is not None and file_hash == memo.file_hash else None
            # parsing a big file takes a while: keep the event loop free (issue 17)
            doc = kept if kept is not None else await asyncio.to_thread(parse, text)
            if doc.project is not None and (doc.project, doc.mission or DEFAULT_MISSION) != (
                self.project,
                self.mission,
            ):
                # a copy of (or link to) another project's file: adopting it would import that project's
                # tasks and cancel ours (issue 9); only a file without a marker, or with ours, is synced
                return await self._problem(
                    f"{self.path} is marked project={doc.project} mission={doc.mission or DEFAULT_MISSION}, "
                    f"not project={self.project} mission={self.mission}: refused, left untouched"
                )
            if accept:
                doc.clear_all_markers(MarkerKind.CONFLICT)
            cycle = Cycle(
                self,
                mission,
                doc,
                tasks,
                dict(base_rows),
                hidden,
                agent_keys,
                base is None,
                f"sync:{hashlib.sha256(self.state_key.encode()).hexdigest()[:12]}:{gen}",
                report,
                known_rows,
            )
            report.adopted = base is None
            cycle.accept = accept
            cycle.stale_file = file_hash != old_hash and file_hash in hashes
            cycle.created_rows = created_rows
            cycle.held = held
            await cycle.run()
            new_text = await asyncio.to_thread(doc.render)
            new_base = cycle.new_base
            held = cycle.held
            mission_changed = cycle.mission_changed
            final = doc
            conflicts = (conflicts + cycle.conflicts)[-_MAX_CONFLICTS_KEPT:]

        data = new_text.encode("utf-8")
        if data != raw:
            if not await asyncio.to_thread(self._write_unless_changed, data, file_hash):
                # never overwrite an edit made while this cycle ran: the next cycle merges it
                logger.info("%s changed during the sync; merging again", self.path)
                return report
            self.writes += 1
            report.wrote = True
        new_hash = content_hash(data)
        self.last_hash = new_hash
        # skip the events our own writes caused, so the next rescan can take the fast path
        tail, tail_cursor = await self._events_since(new_cursor)
        if all(self._is_own(e, mission_changed) for e in tail):
            new_cursor = tail_cursor
        if final is None or _has_errors(final):
            # line numbers of the rendered text (a clean document has no errors to place)
            final = await asyncio.to_thread(parse, new_text)
        errors = collect_errors(final)
        report.errors = errors
        # the error list can be large (2,000 broken rows: ~300 KB); stored apart, and only when it changed
        errors_digest = _digest(errors)
        if errors_digest != state.get("errors_digest"):
            await svc.put_sync_state(slug, errors_key(self.state_key), {"errors": errors})
        new_state = {
            "format": STATE_FORMAT,
            "mission": self.mission,
            "gen": gen + 1,
            "event_id": new_cursor,
            "base": {"file_hash": new_hash, "count": len(new_base), "hidden": hidden},
            "hashes": hist.push_hash(hashes, old_hash, new_hash),
            "held": {k: v for k, v in held.items() if k in tasks and tasks[k].version == v.get("v")},
            "created": dict(list(created_rows.items())[-_MAX_CREATED_KEPT:]),
            "errors_digest": errors_digest,
            "error_count": len(errors),
            "conflicts": conflicts,
            "problem": None,
            "synced_at": utcnow().isoformat(),
        }
        delta: dict[str, Any] = {k: v for k, v in new_base.items() if _changed(stored_rows.get(k), v)}
        delta.update({k: None for k in stored_rows if k not in new_base})
        await svc.put_sync_state(slug, self.state_key, new_state, delta)
        self._rows = (gen + 1, new_base)
        rows: dict[str, tuple[RowData, TableShape]] = {}
        if not errors:
            shapes: dict[int, TableShape] = {}
            for row in final.rows():
                if row.key is not None and row.data is not None:
                    shape = shapes.get(id(row.table))
                    if shape is None:
                        shape = shapes[id(row.table)] = table_shape(row)
                    rows[row.key] = (row.data, shape)
        self._memo = _Memo(gen + 1, new_cursor, new_hash, tasks, rows, listed_at, None if errors else final)
        return report

    def _fresh(
        self, mission: Mission, tasks: dict[str, Task], hidden: dict[str, int], old_rows: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """A new file from the database (no file yet, or it was deleted: never read as "cancel everything")."""
        mine = sorted(
            (t for t in tasks.values() if t.mission == mission.id and hidden.get(t.key) != t.version),
            key=lambda t: t.seq,
        )
        text = render_document(
            self.project,
            mission.id,
            mission.name,
            mission.milestones,
            [m.rowdata_from_task(t) for t in mine],
            strict_coord=self.strict_coord,
        )
        return text, {t.key: hist.base_entry(t, old_rows.get(t.key), added=t.key not in old_rows) for t in mine}


def errors_key(state_key: str) -> str:
    """Where a file's error list is stored: a sync state of its own beside the file's state."""
    return f"{state_key}#errors"


async def load_status_state(service: QueueService, project: str, state_key: str) -> dict[str, Any]:
    """The stored sync state of a file with its error list put back in (see :func:`public_status`)."""
    state = await service.get_sync_state(project, state_key) or {}
    if "errors_digest" in state:
        state["errors"] = list((await service.get_sync_state(project, errors_key(state_key)) or {}).get("errors", []))
    return state


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _changed(old: Any, new: Any) -> bool:
    return old is not new and old != new


def _has_errors(doc: TasksDocument) -> bool:
    """Whether :func:`collect_errors` would find anything in *doc*."""
    return bool(doc.errors) or any(marker.kind is MarkerKind.ERROR for row in doc.rows() for marker in row.markers)


def collect_errors(doc: TasksDocument) -> list[dict[str, Any]]:
    """The problems a file shows: document errors and every ``sync-error`` marker, with line numbers."""
    out = [error_entry(e.line, e.column, e.message, None) for e in doc.errors]
    for row in doc.rows():
        for marker in row.markers:
            if marker.kind is MarkerKind.ERROR:
                column = row.errors[0].column if row.errors else 1
                out.append(error_entry(row.line, column, marker.message, row.key))
    return sorted(out, key=lambda e: (e["line"], e["column"]))


def public_status(
    mission: str, path: Path, state: dict[str, Any], target: Confined | None = None, *, problem: str | None = None
) -> dict[str, Any]:
    """The part of a stored sync state shown by the API and ``queue-service sync --status``.

    A *problem* (a refused path) is shown instead of the stored one, and the path is not even probed.
    """
    base = state.get("base") or {}
    current: str | None = None
    if problem is None:
        # read like a cycle does (no links, regular files only, size cap): status must not open more
        try:
            data = safe_files.read_file(target or Confined.of(path))
        except (OSError, safe_files.UnsafeFile):
            data = None
        current = None if data is None else content_hash(data)
    return {
        "mission": mission,
        "path": str(path),
        "exists": problem is None and safe_files.is_regular_file(target or Confined.of(path)),
        "synced": bool(base),
        # the file differs from the one last synced: a hand edit no cycle has merged yet
        "pending": bool(base) and current is not None and current != base.get("file_hash"),
        "synced_at": state.get("synced_at"),
        "tasks": base.get("count", len(base.get("rows", {}))),
        "problem": problem or state.get("problem"),
        "errors": list(state.get("errors", [])),
        "conflicts": list(state.get("conflicts", []))[-10:],
    }
