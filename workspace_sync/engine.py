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
4. mark rows that cannot be applied with ``<!-- sync-error: … -->`` (the row stays as typed, the
   database keeps its state) and merged conflicts with ``<!-- sync-conflict: … -->`` plus a task note;
5. render; write atomically only when the bytes differ; store the new base and the current errors.

The service is the only writer of the file; everything else (the watcher, DB events, the periodic
rescan) only asks for a cycle.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from queue_service import domain, exceptions
from queue_service.models import (
    DEFAULT_MISSION,
    Milestone,
    Mission,
    MissionCreate,
    Task,
    TaskFilter,
    TaskStatus,
    utcnow,
)
from queue_service.service import QueueService
from queue_service.workspaces import Confined
from workspace_sync import merge as m
from workspace_sync import safe_files
from workspace_sync.format import MarkerKind, Row, RowData, TasksDocument, parse, render_document
from workspace_sync.writer import SyncLock, content_hash

__all__ = [
    "STATE_FORMAT",
    "SYNC_ACTOR",
    "FileSync",
    "SyncReport",
    "collect_errors",
    "mission_path",
    "public_status",
]

logger = logging.getLogger("workspace_sync")

#: Author of conflict notes and actor of the database writes the sync makes.
SYNC_ACTOR = "workspace-sync"
#: Version of the stored sync-state layout.
STATE_FORMAT = 1
_PAGE = 1000
_EVENT_PAGE = 10_000
_MAX_RETRIES = 5
_MAX_CONFLICTS_KEPT = 50
#: a cycle re-lists every task at least this often even when events say nothing else changed
_FULL_LIST_SECONDS = 60.0
#: more changed tasks than this since the last cycle: list them all rather than fetch them by key
_INCREMENTAL_MAX = 2_000
#: how a table's columns read a row (a changed header changes what an unchanged row means)
_TableShape = tuple[tuple[str, str], ...]


def mission_path(workspace: Path | str, mission: Mission) -> Path:
    """The TASKS.md of *mission*: ``<workspace>/TASKS.md`` for the default one, else ``<workspace>/<tasks_file>``.

    The result is absolute and normalised (it is also the key of the file's stored sync state). ``~``
    is never expanded (issue 9): stored workspaces are absolute paths.
    """
    root = Path(workspace)
    path = root / "TASKS.md" if mission.id == DEFAULT_MISSION else root / mission.tasks_file
    return Path(os.path.normpath(path.absolute()))


@dataclasses.dataclass
class SyncReport:
    """What one cycle did (also the ``last`` entry of the sync status)."""

    path: str
    skipped: bool = False
    adopted: bool = False
    wrote: bool = False
    created: list[str] = dataclasses.field(default_factory=list)
    updated: list[str] = dataclasses.field(default_factory=list)
    cancelled: list[str] = dataclasses.field(default_factory=list)
    restored: list[str] = dataclasses.field(default_factory=list)
    appended: list[str] = dataclasses.field(default_factory=list)
    conflicts: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    errors: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dataclasses.asdict(self)


def _error_entry(line: int, column: int, message: str, key: str | None) -> dict[str, Any]:
    return {"line": line, "column": column, "key": key, "message": message}


def _table_shape(row: Row) -> _TableShape:
    return tuple((c.name, c.field) for c in row.table.columns)


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
    rows: dict[str, tuple[RowData, _TableShape]]
    listed_at: float
    doc: TasksDocument | None = None


class _Cycle:
    """The state of one sync cycle over a parsed document."""

    def __init__(
        self,
        sync: FileSync,
        mission: Mission,
        doc: TasksDocument,
        tasks: dict[str, Task],
        base_rows: dict[str, Any],
        hidden: dict[str, int],
        agent_keys: set[str],
        adopting: bool,
        idem_prefix: str,
        report: SyncReport,
        known_rows: dict[str, tuple[RowData, _TableShape]] | None = None,
    ) -> None:
        self.s = sync
        self.svc = sync.service
        self.slug = sync.project
        self.mission = mission
        self.doc = doc
        self.tasks = tasks
        self.base_rows = base_rows
        self.hidden = hidden
        self.agent_keys = agent_keys
        self.adopting = adopting
        self.idem_prefix = idem_prefix
        self.report = report
        self.known_rows = known_rows or {}
        self.new_base: dict[str, Any] = {}
        self.conflicts: list[dict[str, Any]] = []
        self.own_versions = sync.own_versions
        self.mission_changed = False
        self.milestone_names = {ms.id: ms.name for ms in mission.milestones}

    # -- helpers ----------------------------------------------------------------------------
    def error(self, row: Row, message: str) -> None:
        """Mark a row that cannot be applied; the database and the row's text stay as they are."""
        self.doc.set_marker(row, MarkerKind.ERROR, message)
        if row.key is not None and row.key in self.base_rows:
            self.new_base[row.key] = self.base_rows[row.key]

    def remember(self, task: Task) -> None:
        self.tasks[task.key] = task
        self.new_base[task.key] = {"v": task.version, "f": m.task_values(task)}
        self.own_versions.add((task.key, task.version))

    async def note(self, key: str, text: str) -> None:
        try:
            await self.svc.add_note(self.slug, key, SYNC_ACTOR, text, system=True)
        except exceptions.QueueServiceError as exc:  # a note must never stop the sync
            logger.warning("could not add a sync note to %s/%s: %s", self.slug, key, exc)

    # -- the cycle ----------------------------------------------------------------------------
    async def run(self) -> None:
        doc = self.doc
        doc.annotate_errors()
        await self.add_milestones()
        present: set[str] = set()
        new_rows: list[Row] = []
        keyed_new: list[Row] = []
        existing: list[tuple[Row, Task]] = []
        for row in list(doc.rows()):
            if row.key is not None:
                present.add(row.key)
            if row.errors or row.data is None:
                if row.key is not None and row.key in self.base_rows:
                    self.new_base[row.key] = self.base_rows[row.key]
                continue
            if row.key is None:
                new_rows.append(row)
                continue
            task = self.tasks.get(row.key)
            if task is None:
                keyed_new.append(row)
            elif task.mission != self.mission.id:
                if row.key in self.base_rows:
                    doc.remove_row(row)  # moved to another mission since the last sync
                    present.discard(row.key)
                else:
                    self.error(row, f"task {row.key} belongs to mission {task.mission}; edit it in that mission's file")
            elif self.unchanged(row, task):
                # neither side changed since the last cycle: the merge would do nothing
                self.new_base[row.key] = self.base_rows[row.key]
            else:
                existing.append((row, task))
        # new rows first: an edited row may name a task created in the same save
        if keyed_new or new_rows:
            await self.create(keyed_new + new_rows)
        for row, task in existing:
            await self.merge_existing(row, task)
        if not doc.errors:
            await self.deletions(present)
        else:
            # a broken table hides its rows: never read a missing row as a deletion then
            for key, entry in self.base_rows.items():
                self.new_base.setdefault(key, entry)
        self.append_missing(present)

    def unchanged(self, row: Row, task: Task) -> bool:
        """The row says what it said when the last cycle ended, and the task kept the base's version."""
        assert row.key is not None
        known = self.known_rows.get(row.key)
        if known is None:
            return False
        entry = self.base_rows.get(row.key)
        return (
            entry is not None and entry["v"] == task.version and known[0] == row.data and known[1] == _table_shape(row)
        )

    async def add_milestones(self) -> None:
        """Sections the mission does not know yet become milestones of the mission."""
        known = {ms.id for ms in self.mission.milestones}
        added: list[Milestone] = []
        for ref in self.doc.milestones():
            if ref.id in known or not ref.id or len(ref.id) > 64:
                continue
            known.add(ref.id)
            added.append(Milestone(id=ref.id, name=(ref.name or ref.id)[:200]))
        if not added:
            return
        mission = self.mission
        data = MissionCreate(
            id=mission.id,
            name=mission.name,
            status=mission.status,
            milestones=[*mission.milestones, *added],
            tasks_file=mission.tasks_file,
        )
        self.mission = await self.svc.update_mission(self.slug, mission.id, data)
        self.mission_changed = True
        self.milestone_names.update({ms.id: ms.name for ms in added})

    async def merge_existing(self, row: Row, task: Task) -> None:
        assert row.data is not None
        assert row.key is not None
        key = row.key
        table = row.table
        extra_columns = [c.name for c in table.columns if c.field == "extra"]
        file_values = m.row_values(row.data, table.fields, extra_columns)
        entry = self.base_rows.get(key)
        # no base for this task (adoption, or a row re-added by hand): two-way, the file wins
        base_values: dict[str, Any] = entry["f"] if entry is not None else m.task_values(task)
        agent = entry is not None and key in self.agent_keys
        result = m.MergeResult()
        for _attempt in range(_MAX_RETRIES):
            result = m.merge_row(base_values, m.task_values(task), file_values, agent_status=agent)
            if not result.patch:
                break
            update = m.update_from_values(task, result.patch)
            try:
                task = await self.svc.update_task(
                    self.slug, key, update, expected_version=task.version, actor=SYNC_ACTOR
                )
                self.report.updated.append(key)
                break
            except exceptions.VersionConflict:
                task = await self.svc.get_task(self.slug, key)
                agent = entry is not None and (agent or await self.s.changed_by_agent(key, entry))
            except (exceptions.ValidationError, exceptions.InvalidTransition, exceptions.NotFound) as exc:
                self.error(row, exc.message)
                return
        else:
            self.error(row, f"task {key} kept changing while syncing; will retry")
            return
        if result.conflicts:
            await self.record_conflicts(row, key, result.conflicts)
        elif result.file_changed:
            self.doc.clear_markers(row, MarkerKind.CONFLICT)
        self.doc.update_row(row, m.rowdata_from_task(task))
        self.remember(task)

    async def record_conflicts(self, row: Row, key: str, conflicts: Sequence[m.Conflict]) -> None:
        text = "; ".join(c.describe() for c in conflicts)
        self.doc.set_marker(row, MarkerKind.CONFLICT, text)
        show = m.show_value
        details = [
            f"- {c.name}: base {show(c.base)!r}, service {show(c.db)!r}, file {show(c.file)!r} → kept "
            f"{show(c.kept)!r} ({c.rule})"
            for c in conflicts
        ]
        await self.note(
            key,
            f"TASKS.md and the service both changed this task since the last sync ({self.s.path.name}):\n"
            + "\n".join(details),
        )
        for c in conflicts:
            entry = {"key": key, "field": c.name, "file": c.file, "service": c.db, "kept": c.kept, "rule": c.rule}
            self.conflicts.append(entry)
            self.report.conflicts.append(entry)

    async def deletions(self, present: set[str]) -> None:
        for key, entry in self.base_rows.items():
            if key in present:
                continue
            task = self.tasks.get(key)
            if task is None or task.mission != self.mission.id:
                continue
            if task.version == entry["v"]:
                if task.status in (TaskStatus.DONE, TaskStatus.CANCELLED):
                    self.hidden[key] = task.version  # finished work: the row may go, the task stays
                    continue
                try:
                    task = await self.svc.cancel_task(
                        self.slug, key, reason=f"row removed from {self.s.path.name}", actor=SYNC_ACTOR
                    )
                except exceptions.QueueServiceError as exc:
                    row = self.restore(task, f"row removed from the file, but the task cannot be cancelled: {exc}")
                    self.doc.set_marker(row, MarkerKind.ERROR, f"cannot cancel {key}: {exc}")
                    continue
                self.hidden[key] = task.version
                self.tasks[key] = task
                self.own_versions.add((key, task.version))
                self.report.cancelled.append(key)
            else:
                message = (
                    f"row was deleted from the file, but {key} changed since the last sync (now {task.status.value}, "
                    f"version {task.version}); restored. Delete it again to cancel the task"
                )
                self.restore(task, message)
                await self.note(key, f"{self.s.path.name}: {message}.")
                self.report.restored.append(key)
            present.add(key)

    def restore(self, task: Task, message: str) -> Row:
        row = self.doc.append_row(m.rowdata_from_task(task), milestone_name=self._milestone_name(task))
        self.doc.set_marker(row, MarkerKind.CONFLICT, message)
        self.remember(task)
        return row

    def _milestone_name(self, task: Task) -> str | None:
        return None if task.milestone is None else self.milestone_names.get(task.milestone)

    async def create(self, rows: list[Row]) -> None:
        """Create tasks for new rows (``+``) and rows with unknown ids, in one batch when possible."""
        known = set(self.tasks)
        keyed = {row.key: row for row in rows if row.key is not None}
        items: dict[int, dict[str, Any]] = {}
        failed: set[int] = set()
        for index, row in enumerate(rows):
            assert row.data is not None
            items[index] = self._create_item(row, row.data, index)
        # unknown dependencies, then rows that depend on rows that cannot be created (to a fixpoint)
        by_key_index = {row.key: i for i, row in enumerate(rows) if row.key is not None}
        for index, row in enumerate(rows):
            assert row.data is not None
            missing = [d for d in row.data.depends_on if d not in known and d not in keyed]
            if missing:
                self.error(row, f"unknown dependency {', '.join(missing)}: no such task in project {self.slug}")
                failed.add(index)
        edges = {row.key: list(row.data.depends_on) for row in rows if row.key is not None and row.data is not None}
        cycle = domain.find_cycle({k: [d for d in v if d in keyed] for k, v in edges.items()})
        while cycle:
            for key in cycle[:-1]:
                index = by_key_index[key]
                if index not in failed:
                    self.error(rows[index], f"dependency cycle: {' -> '.join(cycle)}")
                    failed.add(index)
            edges = {k: v for k, v in edges.items() if by_key_index[k] not in failed}
            cycle = domain.find_cycle({k: [d for d in v if d in edges] for k, v in edges.items()})
        changed = True
        while changed:
            changed = False
            for index, row in enumerate(rows):
                assert row.data is not None
                if index in failed:
                    continue
                bad = [d for d in row.data.depends_on if d in by_key_index and by_key_index[d] in failed]
                if bad:
                    self.error(row, f"depends on {', '.join(bad)}, which cannot be created (see its marker)")
                    failed.add(index)
                    changed = True
        todo = [i for i in range(len(rows)) if i not in failed]
        if not todo:
            return
        # batch: dependencies on rows of the same batch become #i references
        position = {rows[i].key: n for n, i in enumerate(todo) if rows[i].key is not None}
        batch = []
        for i in todo:
            item = dict(items[i])
            item["depends_on"] = [f"#{position[d]}" if d in position else d for d in item["depends_on"]]
            batch.append(item)
        try:
            created = await self.svc.create_tasks(self.slug, batch)
        except exceptions.QueueServiceError as exc:
            logger.info("batch create in %s failed (%s); creating the rows one by one", self.s.path, exc)
            await self._create_one_by_one(rows, todo, items)
            return
        for i, task in zip(todo, created, strict=True):
            self._created(rows[i], task)

    def _create_item(self, row: Row, data: RowData, index: int) -> dict[str, Any]:
        extra = dict(data.extra)
        if data.notes:
            extra["notes"] = data.notes
        item: dict[str, Any] = {
            "title": data.title,
            "description": data.details or "",
            "status": (data.status or TaskStatus.NOT_STARTED).value,
            "assignee": data.assignee,
            "mission": self.mission.id,
            "milestone": data.milestone,
            "depends_on": list(data.depends_on),
            "labels": list(data.labels),
            "extra": extra,
        }
        if data.priority is not None:
            item["priority"] = data.priority.value
        if data.role is not None:
            item["role"] = data.role
        if row.key is not None:
            item["key"] = row.key
        else:
            # a retry after a crash between creating and writing the file must not create it twice
            digest = hashlib.sha256(row.text.encode()).hexdigest()[:16]
            item["idempotency_key"] = f"{self.idem_prefix}:{digest}:{index}"
        return item

    async def _create_one_by_one(self, rows: list[Row], todo: list[int], items: dict[int, dict[str, Any]]) -> None:
        pending = list(todo)
        failed_keys: set[str] = set()
        progress = True
        while pending and progress:
            progress = False
            for i in list(pending):
                item = items[i]
                deps = item["depends_on"]
                if any(d in failed_keys for d in deps):
                    bad = ", ".join(d for d in deps if d in failed_keys)
                    self.error(rows[i], f"depends on {bad}, which cannot be created")
                    if rows[i].key:
                        failed_keys.add(rows[i].key or "")
                    pending.remove(i)
                    progress = True
                    continue
                if any(d not in self.tasks for d in deps):
                    continue  # waits for a dependency created later in this loop
                pending.remove(i)
                progress = True
                try:
                    task = await self.svc.create_task(self.slug, item)
                except exceptions.QueueServiceError as exc:
                    self.error(rows[i], exc.message)
                    if rows[i].key:
                        failed_keys.add(rows[i].key or "")
                    continue
                self._created(rows[i], task)
        for i in pending:
            self.error(rows[i], "could not be created: its dependencies could not be resolved")

    def _created(self, row: Row, task: Task) -> None:
        self.doc.clear_markers(row, MarkerKind.ERROR)
        self.doc.update_row(row, m.rowdata_from_task(task))
        self.remember(task)
        self.report.created.append(task.key)

    def append_missing(self, present: set[str]) -> None:
        """Rows for the mission's tasks the file does not show yet (created through the API or by agents)."""
        for task in sorted(self.tasks.values(), key=lambda t: t.seq):
            key = task.key
            if task.mission != self.mission.id or key in present or key in self.new_base:
                continue
            hidden = self.hidden.get(key)
            if hidden is not None:
                if hidden == task.version:
                    continue
                del self.hidden[key]  # changed since it was removed from the file: show it again
            if key in self.base_rows and self.doc.errors:
                continue  # probably inside the broken table
            self.doc.append_row(m.rowdata_from_task(task), milestone_name=self._milestone_name(task))
            self.new_base[key] = {"v": task.version, "f": m.task_values(task)}
            self.report.appended.append(key)


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
        state = await self.service.get_sync_state(self.project, self.state_key) or {}
        return public_status(self.mission, self.path, state, self.target)

    async def sync(self, *, force: bool = False) -> SyncReport:
        """Run one cycle (see the module docstring); never leaves a half-written file.

        Args:
            force: do the full merge even when neither side seems to have changed.

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
                    report = await self._cycle(force)
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

    async def _cycle(self, force: bool) -> SyncReport:
        svc, slug = self.service, self.project
        report = SyncReport(path=str(self.path))
        state = await svc.get_sync_state(slug, self.state_key) or {}
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
            and not state.get("errors")  # a row may become valid once another task exists: retry it
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
        mission = await svc.get_mission(slug, self.mission)
        changed = None if memo is None else await self._changed_tasks(memo.tasks, events)
        if changed is None or memo is None:
            listed_at = time.monotonic()
            tasks = await self._all_tasks()
            known_rows: dict[str, tuple[RowData, _TableShape]] = {}
        else:
            listed_at, tasks, known_rows = memo.listed_at, changed, memo.rows
        agent_keys = {e.task for e in events if e.task and e.kind not in m.HUMAN_EVENT_KINDS}
        hidden: dict[str, int] = dict((base or {}).get("hidden", {}))
        conflicts: list[dict[str, Any]] = list(state.get("conflicts", []))

        final: TasksDocument | None = None
        if text is None:
            new_text, new_base = self._fresh(mission, tasks, hidden)
        else:
            # the file is still what the last cycle rendered: its document is already parsed
            kept = memo.doc if memo is not None and file_hash == memo.file_hash else None
            doc = kept if kept is not None else parse(text)
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
            cycle = _Cycle(
                self,
                mission,
                doc,
                tasks,
                dict((base or {}).get("rows", {})),
                hidden,
                agent_keys,
                base is None,
                f"sync:{hashlib.sha256(self.state_key.encode()).hexdigest()[:12]}:{gen}",
                report,
                known_rows,
            )
            report.adopted = base is None
            await cycle.run()
            new_text = doc.render()
            new_base = cycle.new_base
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
            final = parse(new_text)
        errors = collect_errors(final)
        report.errors = errors
        new_state = {
            "format": STATE_FORMAT,
            "mission": self.mission,
            "gen": gen + 1,
            "event_id": new_cursor,
            "base": {"file_hash": new_hash, "rows": new_base, "hidden": hidden},
            "errors": errors,
            "conflicts": conflicts,
            "problem": None,
            "synced_at": utcnow().isoformat(),
        }
        await svc.put_sync_state(slug, self.state_key, new_state)
        rows: dict[str, tuple[RowData, _TableShape]] = {}
        if not errors:
            shapes: dict[int, _TableShape] = {}
            for row in final.rows():
                if row.key is not None and row.data is not None:
                    shape = shapes.get(id(row.table))
                    if shape is None:
                        shape = shapes[id(row.table)] = _table_shape(row)
                    rows[row.key] = (row.data, shape)
        self._memo = _Memo(gen + 1, new_cursor, new_hash, tasks, rows, listed_at, None if errors else final)
        return report

    def _fresh(self, mission: Mission, tasks: dict[str, Task], hidden: dict[str, int]) -> tuple[str, dict[str, Any]]:
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
        return text, {t.key: {"v": t.version, "f": m.task_values(t)} for t in mine}


def _has_errors(doc: TasksDocument) -> bool:
    """Whether :func:`collect_errors` would find anything in *doc*."""
    return bool(doc.errors) or any(marker.kind is MarkerKind.ERROR for row in doc.rows() for marker in row.markers)


def collect_errors(doc: TasksDocument) -> list[dict[str, Any]]:
    """The problems a file shows: document errors and every ``sync-error`` marker, with line numbers."""
    out = [_error_entry(e.line, e.column, e.message, None) for e in doc.errors]
    for row in doc.rows():
        for marker in row.markers:
            if marker.kind is MarkerKind.ERROR:
                column = row.errors[0].column if row.errors else 1
                out.append(_error_entry(row.line, column, marker.message, row.key))
    return sorted(out, key=lambda e: (e["line"], e["column"]))


def public_status(
    mission: str, path: Path, state: dict[str, Any], target: Confined | None = None, *, problem: str | None = None
) -> dict[str, Any]:
    """The part of a stored sync state shown by the API and ``queue-service sync --status``.

    A *problem* (a refused path) is shown instead of the stored one, and the path is not even probed.
    """
    base = state.get("base") or {}
    return {
        "mission": mission,
        "path": str(path),
        "exists": problem is None and safe_files.is_regular_file(target or Confined.of(path)),
        "synced": bool(base),
        "synced_at": state.get("synced_at"),
        "tasks": len(base.get("rows", {})),
        "problem": problem or state.get("problem"),
        "errors": list(state.get("errors", [])),
        "conflicts": list(state.get("conflicts", []))[-10:],
    }
