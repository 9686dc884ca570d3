"""One sync cycle over a parsed TASKS.md: the row-by-row merge, creations, deletions, guards.

:class:`Cycle` is what :meth:`workspace_sync.engine.FileSync.sync` runs once it has read the stored
state, the events and the file (see the engine's module docstring for the whole cycle). Issue 17
added the guards against old copies of the file: values the row had at an earlier sync and moves
out of done/in-progress are held back (the database keeps its value, the row gets a conflict
marker, the task a note) until ``qs sync PROJECT --accept-file``; more than
:data:`~workspace_sync.history.MAX_CANCELS_PER_CYCLE` removed rows cancel nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from queue_service import domain, exceptions
from queue_service.models import Milestone, Mission, MissionCreate, Task, TaskStatus
from queue_service.service import QueueService
from workspace_sync import history as hist
from workspace_sync import merge as m
from workspace_sync.format import MarkerKind, Row, RowData, TasksDocument

__all__ = ["SYNC_ACTOR", "Cycle", "SyncHost", "SyncReport", "TableShape", "error_entry", "table_shape"]

logger = logging.getLogger("workspace_sync")

#: Author of conflict notes and actor of the database writes the sync makes.
SYNC_ACTOR = "workspace-sync"
_MAX_RETRIES = 5
#: how a table's columns read a row (a changed header changes what an unchanged row means)
TableShape = tuple[tuple[str, str], ...]


class SyncHost(Protocol):
    """What a cycle needs from the file's :class:`~workspace_sync.engine.FileSync`."""

    service: QueueService
    project: str
    path: Path
    own_versions: set[tuple[str, int]]

    async def changed_by_agent(self, key: str, entry: dict[str, Any]) -> bool:
        """Whether a change of *key* since its base came from dispatch."""
        ...


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


def error_entry(line: int, column: int, message: str, key: str | None) -> dict[str, Any]:
    return {"line": line, "column": column, "key": key, "message": message}


def table_shape(row: Row) -> TableShape:
    return tuple((c.name, c.field) for c in row.table.columns)


class Cycle:
    """The state of one sync cycle over a parsed document."""

    def __init__(
        self,
        sync: SyncHost,
        mission: Mission,
        doc: TasksDocument,
        tasks: dict[str, Task],
        base_rows: dict[str, Any],
        hidden: dict[str, int],
        agent_keys: set[str],
        adopting: bool,
        idem_prefix: str,
        report: SyncReport,
        known_rows: dict[str, tuple[RowData, TableShape]] | None = None,
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
        #: `qs sync --accept-file`: apply what the file says even where it goes backwards
        self.accept = False
        #: the file is byte-identical to one the service rendered earlier (git checkout, cp of a backup)
        self.stale_file = False
        #: this cycle found values the row had at an earlier sync (an old copy of the file)
        self.stale_seen = False
        #: changes held back (issue 17): key -> {"v": version, "patch": values} or {"v", "cancel": True}
        self.held: dict[str, dict[str, Any]] = {}
        #: digests of recently created `+` rows -> the key they got
        self.created_rows: dict[str, str] = {}
        #: keys whose missing row is explained by an id typo on another row: neither cancelled nor re-added
        self.protected: set[str] = set()
        #: the file has no task table at all (truncated, or emptied): its missing rows mean nothing
        self.rows_unknown = False
        self.present: set[str] = set()
        self._digests: dict[int, str] = {}
        #: per table (by id): its shape, computed once per cycle rather than once per row
        self._shapes: dict[int, TableShape] = {}

    # -- helpers ----------------------------------------------------------------------------
    def error(self, row: Row, message: str) -> None:
        """Mark a row that cannot be applied; the database and the row's text stay as they are."""
        self.doc.set_marker(row, MarkerKind.ERROR, message)
        if row.key is not None and row.key in self.base_rows:
            self.new_base[row.key] = self.base_rows[row.key]

    def remember(self, task: Task, *, added: bool = False) -> None:
        self.tasks[task.key] = task
        self.new_base[task.key] = hist.base_entry(task, self.base_rows.get(task.key), added=added)
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
        doc.set_document_errors([f"line {e.line}: {e.message}" for e in doc.errors])
        self.rows_unknown = bool(self.base_rows) and not doc.tables()
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
        self.present = present
        keyed_new = self.typos(keyed_new, present)
        # new rows first: an edited row may name a task created in the same save
        if keyed_new or new_rows:
            await self.create(keyed_new + new_rows)
        for row, task in existing:
            await self.merge_existing(row, task)
        if not doc.errors and not self.rows_unknown:
            await self.deletions(present)
        elif doc.errors:
            # a broken table hides its rows: never read a missing row as a deletion then
            for key, entry in self.base_rows.items():
                self.new_base.setdefault(key, entry)
        self.append_missing(present)

    def typos(self, keyed_new: list[Row], present: set[str]) -> list[Row]:
        """Rows with an unknown id that are a synced row with a mistyped id: marked, not created.

        Creating them would cancel the real task (its row looks deleted) and block its dependents.
        """
        missing = {
            entry["f"].get("title"): key
            for key, entry in self.base_rows.items()
            if key not in present and key in self.tasks and self.tasks[key].mission == self.mission.id
        }
        if not missing or self.accept:
            return keyed_new
        out: list[Row] = []
        for row in keyed_new:
            assert row.data is not None
            assert row.key is not None
            original = missing.get(row.data.title) if row.key not in self.base_rows else None
            if original is None or original in self.protected:
                out.append(row)
                continue
            self.protected.add(original)
            self.new_base[original] = self.base_rows[original]
            self.error(
                row,
                f"unknown id {row.key}: {original} has this description and its row is gone; fix the id "
                f"(use + for a new task)",
            )
        return out

    def hold_back(
        self, task: Task, entry: dict[str, Any] | None, base: m.Values, file: m.Values, agent: bool
    ) -> dict[str, Any]:
        """The file's values that go backwards (issue 17): they keep the database's value until accepted.

        A value the row had at an earlier sync (an old copy of the file) and a status that would move
        a task out of done, or out of in-progress other than forward (to done or needs-qa), are
        removed from *file* and returned.
        """
        if self.accept:
            return {}
        db = m.task_values(task)
        held: dict[str, Any] = {}
        for field, fv in list(file.items()):
            if m.same(field, fv, base.get(field)) or m.same(field, fv, db.get(field)):
                continue
            # status goes back on purpose (failed -> not-started to retry): only the guard below holds it
            stale = field != "status" and hist.was_synced(entry, field, fv)
            if entry is not None and (self.stale_file or stale):
                self.stale_seen = True
                held[field] = fv
            elif field == "status" and hist.status_held(task.status, fv, entry):
                if agent and not m.same(field, db.get(field), base.get(field)):
                    continue  # the merge keeps the agent's status anyway (agent-status rule)
                held[field] = fv
        for field in held:
            del file[field]
        return held

    async def record_held(self, row: Row, task: Task, held: dict[str, Any], conflicts: Sequence[m.Conflict]) -> None:
        db = m.task_values(task)
        show = m.show_value
        parts = [c.describe() for c in conflicts]
        for field, fv in held.items():
            name = m.Conflict(field, None, None, None, None, "").name
            why = (
                f"{task.key} is {task.status.value}; the file alone never moves a task out of it"
                if field == "status" and not hist.was_synced(self.base_rows.get(task.key), field, fv)
                else "an older synced value (an old copy of the file?)"
            )
            parts.append(f"{name}: file said {show(fv)}, {why}; kept {show(db.get(field))}")
        hint = f"`qs sync {self.slug} --accept-file` applies the file's value"
        self.doc.set_marker(row, MarkerKind.CONFLICT, "; ".join(parts) + f" ({hint})")
        await self.note(
            task.key,
            f"{self.s.path.name} went backwards for this task; kept the service's values:\n"
            + "\n".join(f"- {p}" for p in parts[len(conflicts) :])
            + f"\n{hint}.",
        )
        self.held[task.key] = {"v": task.version, "patch": held}
        for field, fv in held.items():
            entry = {"key": task.key, "field": field, "file": fv, "service": db.get(field), "kept": db.get(field)}
            entry["rule"] = "held"
            self.conflicts.append(entry)
            self.report.conflicts.append(entry)

    def unchanged(self, row: Row, task: Task) -> bool:
        """The row says what it said when the last cycle ended, and the task kept the base's version."""
        assert row.key is not None
        known = self.known_rows.get(row.key)
        if known is None:
            return False
        entry = self.base_rows.get(row.key)
        if entry is None or entry["v"] != task.version or known[0] != row.data:
            return False
        shape = self._shapes.get(id(row.table))
        if shape is None:
            shape = self._shapes[id(row.table)] = table_shape(row)
        return known[1] == shape

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
        held: dict[str, Any] = {}
        shown = file_values
        for _attempt in range(_MAX_RETRIES):
            file_values = dict(shown)
            held = self.hold_back(task, entry, base_values, file_values, agent)
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
        if held:
            await self.record_held(row, task, held, result.conflicts)
        elif result.conflicts:
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

    def to_cancel(self, present: set[str]) -> list[str]:
        """Keys whose missing row would cancel their task."""
        out = []
        for key, entry in self.base_rows.items():
            task = self.tasks.get(key)
            if key in present or key in self.protected or task is None or task.mission != self.mission.id:
                continue
            if task.version == entry["v"] and task.status not in (TaskStatus.DONE, TaskStatus.CANCELLED):
                out.append(key)
        return out

    async def deletions(self, present: set[str]) -> None:
        cancels = self.to_cancel(present)
        # an old copy lacks the rows added since; more than a few at once is an accident, not an edit
        too_many = len(cancels) > hist.MAX_CANCELS_PER_CYCLE
        for key, entry in self.base_rows.items():
            if key in present or key in self.protected:
                continue
            task = self.tasks.get(key)
            if task is None or task.mission != self.mission.id:
                continue
            if task.version == entry["v"]:
                if task.status in (TaskStatus.DONE, TaskStatus.CANCELLED):
                    self.hidden[key] = task.version  # finished work: the row may go, the task stays
                    continue
                stale = (self.stale_file or self.stale_seen) and bool(entry.get("a"))
                if not self.accept and (too_many or stale):
                    why = (
                        f"{len(cancels)} rows were removed in one save; the file alone cancels at most "
                        f"{hist.MAX_CANCELS_PER_CYCLE}"
                        if too_many
                        else "the file is an old copy that predates this task"
                    )
                    message = (
                        f"row was missing from the file ({why}); kept {key} ({task.status.value}). "
                        f"`qs sync {self.slug} --accept-file` cancels it"
                    )
                    self.restore(task, message)
                    self.held[key] = {"v": task.version, "cancel": True}
                    await self.note(key, f"{self.s.path.name}: {message}.")
                    self.report.restored.append(key)
                    present.add(key)
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

    def reuse_created(self, rows: list[Row]) -> list[Row]:
        """`+` rows the service already created (a stale buffer saved again) take their task's key."""
        out: list[Row] = []
        for row in rows:
            if row.key is not None:
                out.append(row)
                continue
            digest = _row_digest(row)
            self._digests[id(row)] = digest
            key = self.created_rows.get(digest)
            task = None if key is None or self.accept else self.tasks.get(key)
            if task is None or task.key in self.present or task.mission != self.mission.id:
                out.append(row)
                continue
            self.doc.update_row(row, m.rowdata_from_task(task))
            self.remember(task)
            self.present.add(task.key)
        return out

    async def create(self, rows: list[Row]) -> None:
        """Create tasks for new rows (``+``) and rows with unknown ids, in one batch when possible."""
        rows = self.reuse_created(rows)
        if not rows:
            return
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
        status = data.status or TaskStatus.NOT_STARTED
        item: dict[str, Any] = {
            "title": data.title,
            "description": data.details or "",
            "status": status.value,
            **m.agent_fields(status, {}, data.assignee),  # a not-started row's agent is a model (issue 18)
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
        digest = self._digests.get(id(row))
        if digest is not None:
            self.created_rows[digest] = task.key
        self.doc.clear_markers(row, MarkerKind.ERROR)
        self.doc.update_row(row, m.rowdata_from_task(task))
        self.remember(task)
        self.report.created.append(task.key)

    def append_missing(self, present: set[str]) -> None:
        """Rows for the mission's tasks the file does not show yet (created through the API or by agents)."""
        mission = self.mission.id
        # filter first, then sort the few that are missing (sorting all 5,000 every cycle cost ms)
        missing = [
            t
            for t in self.tasks.values()
            if t.mission == mission and t.key not in present and t.key not in self.new_base
        ]
        for task in sorted(missing, key=lambda t: t.seq):
            key = task.key
            hidden = self.hidden.get(key)
            if hidden is not None:
                if hidden == task.version:
                    continue
                del self.hidden[key]  # changed since it was removed from the file: show it again
            if key in self.base_rows and self.doc.errors:
                continue  # probably inside the broken table
            self.doc.append_row(m.rowdata_from_task(task), milestone_name=self._milestone_name(task))
            self.new_base[key] = hist.base_entry(task, self.base_rows.get(key), added=key not in self.base_rows)
            self.report.appended.append(key)


def _row_digest(row: Row) -> str:
    return hashlib.sha256(row.text.strip().encode()).hexdigest()[:16]
