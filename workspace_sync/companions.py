"""coord's other workspace files, kept with the mission whose TASKS.md is at ``docs/TASKS.md`` (issue 18).

* ``docs/MISSION-MANIFEST.md`` is synced both ways, like TASKS.md: its milestone table
  (:mod:`workspace_sync.manifest`) against the mission's milestones, three-way with a stored base
  (the name and status of every milestone at the last sync). A row edited by hand changes the
  milestone; a row for an unknown ID adds a milestone; a milestone changed through the API changes
  its row (a status moving to in-progress/done fills an empty Started/Completed cell with the UTC
  date); a milestone the file lacks gets a row appended; when both sides changed one field the file
  wins and the conflict is kept in the state. Removing a row removes no milestone (its tasks still
  name it): the row comes back. A row names its milestone as long as it is there: like a TASKS.md
  section, it adds the milestone back if the mission drops it. Branch, Issue, Started and Completed
  are the file's: kept as typed. Everything else in the file is kept byte for byte. A row that
  breaks a rule is reported in the sync status (line and reason), kept as typed, and changes nothing.
* ``.mosaic/orchestrator/mission.json`` is written by the service (our schema,
  :data:`MISSION_SCHEMA`; no schema of coord's reached us) whenever its content would change, and read
  back when the workspace is adopted (no stored state yet): name, status, quality gates and
  milestones of the same project and mission are applied. A ``mission.json`` that is not ours (no
  ``schema`` key of ours) or names another project is left untouched and reported.

Every access goes through :mod:`workspace_sync.safe_files` (no links followed, regular files only,
size caps, atomic writes). Both run inside the TASKS.md cycle, under its lock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any, Literal

import pydantic

from queue_service import exceptions
from queue_service.models import Milestone, Mission, MissionCreate, MissionStatus, utcnow, validated
from queue_service.service import QueueService
from queue_service.workspaces import COORD_TASKS_FILE, Confined
from workspace_sync import manifest as mf
from workspace_sync import safe_files
from workspace_sync.layout import coord_workspace_of
from workspace_sync.writer import content_hash

__all__ = ["MANIFEST_FILE", "MISSION_FILE", "MISSION_SCHEMA", "CoordCompanions", "companion_status"]

logger = logging.getLogger("workspace_sync")

MANIFEST_FILE = "docs/MISSION-MANIFEST.md"
MISSION_FILE = ".mosaic/orchestrator/mission.json"
#: the ``schema`` value of the mission.json we write
MISSION_SCHEMA = "queue-service.mission/1"
_MAX_MISSION_JSON = 256 * 1024
_MAX_CONFLICTS = 20
#: coord's manifest title: ``# Mission manifest — NAME``
_TITLE = re.compile(r"#\s+Mission manifest\s+[—–-]\s+([^\x00-\x1f\x7f]+?)\s*$", re.IGNORECASE)


class MissionFile(pydantic.BaseModel):
    """Our ``mission.json`` (documented in docs/plans/mosaic-parity.md)."""

    model_config = pydantic.ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    schema_: Literal["queue-service.mission/1"] = pydantic.Field(alias="schema")
    project: str = pydantic.Field(min_length=1, max_length=64)
    mission_id: str = pydantic.Field(min_length=1, max_length=64)
    mission_name: str = pydantic.Field(min_length=1, max_length=200)
    status: MissionStatus = MissionStatus.ACTIVE
    tasks_file: str = pydantic.Field(default=COORD_TASKS_FILE, max_length=1024)
    manifest_file: str = pydantic.Field(default=MANIFEST_FILE, max_length=1024)
    quality_gates: list[str] = pydantic.Field(default_factory=list, max_length=50)
    milestones: list[Milestone] = pydantic.Field(default_factory=list, max_length=mf.MAX_ROWS)


def render_mission_json(project: str, mission: Mission) -> bytes:
    """Our mission.json for *mission*: no timestamps or versions, so equal missions give equal bytes."""
    body = {
        "schema": MISSION_SCHEMA,
        "project": project,
        "mission_id": mission.id,
        "mission_name": mission.name,
        "status": mission.status.value,
        "tasks_file": COORD_TASKS_FILE,
        "manifest_file": MANIFEST_FILE,
        "quality_gates": list(mission.quality_gates),
        "milestones": [{"id": m.id, "name": m.name, "status": m.status.value} for m in mission.milestones],
    }
    return (json.dumps(body, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _mission_data(mission: Mission, **changes: Any) -> MissionCreate:
    data: dict[str, Any] = {
        "id": mission.id,
        "name": mission.name,
        "status": mission.status,
        "milestones": list(mission.milestones),
        "tasks_file": mission.tasks_file,
        "quality_gates": list(mission.quality_gates),
    }
    data.update(changes)
    return validated(MissionCreate, data)


class CoordCompanions:
    """The manifest and mission.json of one coord-layout workspace (see the module docstring)."""

    def __init__(self, service: QueueService, project: str, mission: str, workspace: Confined) -> None:
        self.service = service
        self.project = project
        self.mission = mission
        self.workspace = workspace
        self.manifest = workspace.child(MANIFEST_FILE)
        self.mission_file = workspace.child(MISSION_FILE)
        #: hash of the manifest as the last run left it (None: not run yet, or missing)
        self.last_hash: str | None = None
        self._ran = False

    @property
    def state_key(self) -> str:
        """The manifest's sync-state key: its absolute path."""
        return str(self.manifest.path)

    def watched_paths(self) -> list[str]:
        """Files whose events ask for a cycle (the manifest; mission.json is only read on adoption)."""
        return [str(self.manifest.path)]

    def manifest_hash(self) -> str | None:
        """The manifest's current hash (None when missing or refused); blocks."""
        try:
            data = safe_files.read_file(self.manifest, mf.MAX_MANIFEST_BYTES)
        except (OSError, safe_files.UnsafeFile):
            return None
        return None if data is None else content_hash(data)

    def disk_unchanged(self) -> bool:
        """The manifest is as the last run left it (blocks)."""
        return self._ran and self.manifest_hash() == self.last_hash

    # -- adoption: mission.json read back -------------------------------------------------------
    async def before(self) -> None:
        """On adoption (no stored manifest state), apply our mission.json to the mission."""
        if self._ran or await self.service.get_sync_state(self.project, self.state_key):
            return  # adopted already (a completed run stored the state)
        try:
            await self._adopt_mission_file()
        except exceptions.QueueServiceError as exc:
            # never stops the TASKS.md cycle: the file is reported and the mission keeps its values
            logger.warning("%s not applied on adoption: %s", self.mission_file.path, exc.message)

    async def _adopt_mission_file(self) -> None:
        try:
            raw = await asyncio.to_thread(safe_files.read_file, self.mission_file, _MAX_MISSION_JSON)
        except FileNotFoundError:
            return  # no .mosaic/orchestrator/ yet
        except (OSError, safe_files.UnsafeFile) as exc:
            logger.warning("%s not read on adoption: %s", self.mission_file.path, exc)
            return
        if raw is None:
            return
        found = _read_mission_file(raw)
        if isinstance(found, str) or found.project != self.project or found.mission_id != self.mission:
            logger.info(
                "%s is not this mission's (%s/%s): not applied", self.mission_file.path, self.project, self.mission
            )
            return
        mission = await self.service.get_mission(self.project, self.mission)
        known = {m.id: m for m in mission.milestones}
        for ms in found.milestones:
            known[ms.id] = ms
        ordered = [known.pop(m.id) for m in found.milestones if m.id in known] + list(known.values())
        data = _mission_data(
            mission,
            name=found.mission_name,
            status=found.status,
            quality_gates=found.quality_gates,
            milestones=ordered,
        )
        await self.service.update_mission(self.project, self.mission, data)

    # -- every cycle ----------------------------------------------------------------------------
    async def after(self, tasks_skipped: bool) -> None:
        """Sync the manifest and write mission.json; trouble is stored in the state, never raised."""
        try:
            if tasks_skipped and self._ran:
                current = await asyncio.to_thread(self.manifest_hash)
                if current == self.last_hash:
                    return  # nothing happened in the project and nobody touched the manifest
            await self._sync()
        except asyncio.CancelledError:
            raise
        except (exceptions.QueueServiceError, OSError, safe_files.UnsafeFile) as exc:
            message = getattr(exc, "message", None) or str(exc)
            await self._store_problem(f"{self.manifest.path}: {message}")

    async def _store_problem(self, problem: str) -> None:
        state = await self.service.get_sync_state(self.project, self.state_key) or {}
        if state.get("problem") != problem:
            logger.warning("coord files of %s/%s: %s", self.project, self.mission, problem)
            state.update(problem=problem, mission=self.mission, kind="manifest")
            await self.service.put_sync_state(self.project, self.state_key, state)
        self._ran = False

    async def _sync(self) -> None:
        svc = self.service
        state = await svc.get_sync_state(self.project, self.state_key) or {}
        base: dict[str, dict[str, str]] | None = state.get("base")
        raw = await asyncio.to_thread(safe_files.read_file, self.manifest, mf.MAX_MANIFEST_BYTES)
        text: str | None = None
        if raw is not None:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                await self._store_problem(f"{self.manifest.path} is not UTF-8 text ({exc}); left untouched")
                return
            if "\x00" in text:
                await self._store_problem(f"{self.manifest.path} contains NUL characters; left untouched")
                return
        mission = await svc.get_mission(self.project, self.mission)
        errors: list[dict[str, Any]] = []
        conflicts: list[dict[str, Any]] = list(state.get("conflicts", []))
        if text is None or not text.strip():
            new_text = mf.render_manifest(mission.name, mission.milestones)
        else:
            doc = mf.parse_manifest(text)
            if doc.header is None:
                glue = "" if text.endswith("\n") else "\n"
                new_text = text + glue + "\n## Milestones\n\n" + mf.table_text(mission.milestones)
            else:
                mission = await self._merge(doc, mission, base, errors, conflicts)
                new_text = doc.render()
                errors.extend(_error(line, message) for line, message in doc.errors)
        data = new_text.encode("utf-8")
        if data != raw:
            if await asyncio.to_thread(self._write_unless_changed, data, raw):
                self.last_hash = content_hash(data)
            else:
                self.last_hash = None  # edited while we merged: the next cycle merges it
        else:
            self.last_hash = content_hash(data)
        try:
            await asyncio.to_thread(self._write_mission_json, mission)
            write_problem = None
        except (OSError, safe_files.UnsafeFile) as exc:
            # the manifest's state is stored all the same: its base must follow the mission
            write_problem = f"cannot write {self.mission_file.path}: {getattr(exc, 'message', None) or exc}"
        problem, note = await asyncio.to_thread(self._mission_json_problem)
        problem = problem or write_problem
        new_state = {
            "kind": "manifest",
            "mission": self.mission,
            "base": {m.id: {"name": m.name, "status": m.status.value} for m in mission.milestones},
            "file_hash": self.last_hash,
            "errors": sorted(errors, key=lambda e: e["line"]),
            "conflicts": conflicts[-_MAX_CONFLICTS:],
            "problem": problem,
            "note": note,
            "synced_at": utcnow().isoformat(),
        }
        await svc.put_sync_state(self.project, self.state_key, new_state)
        self._ran = True

    def _write_unless_changed(self, data: bytes, expected: bytes | None) -> bool:
        try:
            current = safe_files.read_file(self.manifest, mf.MAX_MANIFEST_BYTES)
        except FileNotFoundError:
            return False
        if current != expected:
            return False
        safe_files.write_atomic(self.manifest, data)
        return True

    async def _merge(
        self,
        doc: mf.ManifestDocument,
        mission: Mission,
        base: dict[str, dict[str, str]] | None,
        errors: list[dict[str, Any]],
        conflicts: list[dict[str, Any]],
    ) -> Mission:
        """Three-way merge of the table's rows with the mission's milestones; returns the stored mission."""
        base = base or {}
        current = {m.id: m for m in mission.milestones}
        wanted: dict[str, Milestone] = dict(current)
        order = [m.id for m in mission.milestones]
        for row in doc.rows:
            if row.error is not None or row.id is None:
                errors.append(_error(row.line, row.error or "invalid row"))
                continue
            assert row.name is not None
            assert row.status is not None
            file_values = {"name": row.name, "status": row.status.value}
            db = current.get(row.id)
            if db is None:
                # a row for an unknown milestone: added (on adoption, or typed in by hand)
                wanted[row.id] = Milestone(id=row.id, name=row.name, status=row.status)
                order.append(row.id)
                continue
            b = base.get(row.id)
            db_values = {"name": db.name, "status": db.status.value}
            merged = dict(db_values)
            for field in ("name", "status"):
                fv, dv = file_values[field], db_values[field]
                bv = None if b is None else b.get(field)
                if fv in (dv, bv):
                    continue  # unchanged in the file (the database's value shows)
                if bv is not None and dv != bv:
                    conflicts.append(
                        {
                            "key": row.id,
                            "field": field,
                            "file": fv,
                            "service": dv,
                            "kept": fv,
                            "rule": "file-wins",
                        }
                    )
                merged[field] = fv
            if merged != db_values:
                wanted[row.id] = Milestone(id=row.id, name=merged["name"], status=MissionStatus(merged["status"]))
        milestones = [wanted[i] for i in order]
        name = mission.name
        if not base:
            # adoption: coord's title names the mission, unless it has a name of its own already
            project = await self.service.get_project(self.project)
            title = _TITLE.match(doc.lines[0] if doc.lines else "")
            if title and mission.name in (project.name, project.slug):
                name = title.group(1).strip()[:200] or name
        if tuple(milestones) != mission.milestones or name != mission.name:
            mission = await self.service.update_mission(
                self.project, self.mission, _mission_data(mission, milestones=milestones, name=name)
            )
        self._render_rows(doc, mission)
        return mission

    def _render_rows(self, doc: mf.ManifestDocument, mission: Mission) -> None:
        """Rows show the stored milestones: changed cells rewritten, missing milestones appended."""
        today = utcnow().date().isoformat()
        shown: set[str] = set()
        by_id = {m.id: m for m in mission.milestones}
        for row in doc.rows:
            if row.id is None or row.id not in by_id or row.id in shown:
                continue
            shown.add(row.id)
            ms = by_id[row.id]
            cells = list(row.cells)
            if row.name != ms.name:
                cells[2] = mf.cell(ms.name)
            if row.status is not ms.status:
                cells[3] = mf.status_word(ms.status)
                if ms.status is MissionStatus.ACTIVE and cells[6] in mf.EMPTY:
                    cells[6] = today
                if ms.status is MissionStatus.COMPLETED and cells[7] in mf.EMPTY:
                    cells[7] = today
            doc.set_cells(row, cells)
        position = len(doc.rows)
        for ms in mission.milestones:
            if ms.id not in shown:
                position += 1
                doc.append(mf.row_cells(position, ms))

    # -- mission.json ----------------------------------------------------------------------------
    def _mission_json_problem(self) -> tuple[str | None, str | None]:
        """(problem, note): a refused path is a problem; a mission.json that is not ours only a note."""
        try:
            raw = safe_files.read_file(self.mission_file, _MAX_MISSION_JSON)
        except FileNotFoundError:
            return None, None
        except (OSError, safe_files.UnsafeFile) as exc:
            return f"{self.mission_file.path}: {getattr(exc, 'message', None) or exc}", None
        if raw is None:
            return None, None
        found = _read_mission_file(raw)
        if isinstance(found, str):
            return None, f"{self.mission_file.path} {found}: left as it is, ours is not written"
        if found.project != self.project:
            return f"{self.mission_file.path} belongs to project {found.project}: left untouched", None
        return None, None

    def _write_mission_json(self, mission: Mission) -> None:
        """Write our mission.json when its bytes would change; a file that is not ours is left alone."""
        data = render_mission_json(self.project, mission)
        try:
            raw = safe_files.read_file(self.mission_file, _MAX_MISSION_JSON)
        except FileNotFoundError:
            raw = None  # .mosaic/orchestrator does not exist yet
        except (OSError, safe_files.UnsafeFile):
            return  # reported by _mission_json_problem
        if raw == data:
            return
        if raw is not None:
            found = _read_mission_file(raw)
            if isinstance(found, str) or found.project != self.project:
                return
        safe_files.ensure_directory(Confined(self.mission_file.base, self.mission_file.parts[:-1]))
        safe_files.write_atomic(self.mission_file, data)


def _error(line: int, message: str) -> dict[str, Any]:
    return {"line": line, "column": 1, "key": None, "message": message}


def _read_mission_file(raw: bytes) -> MissionFile | str:
    """Our mission.json, or why it is not one (not JSON, another schema, invalid)."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return f"is not JSON ({exc.__class__.__name__})"
    if not isinstance(obj, dict) or obj.get("schema") != MISSION_SCHEMA:
        return f'is not queue-service\'s (no "schema": "{MISSION_SCHEMA}")'
    try:
        return MissionFile.model_validate(obj)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        return f"is invalid ({'.'.join(str(p) for p in first['loc'])}: {first['msg']})"


async def companion_status(
    service: QueueService, project: str, mission: Mission, target: Confined
) -> list[dict[str, Any]]:
    """The sync-status entry of the manifest kept with *target* (none unless it is ``docs/TASKS.md``)."""
    workspace = coord_workspace_of(target)
    if workspace is None:
        return []
    manifest = workspace.child(MANIFEST_FILE)
    state = await service.get_sync_state(project, str(manifest.path)) or {}

    def look() -> tuple[bool, str | None]:
        try:
            data = safe_files.read_file(manifest, mf.MAX_MANIFEST_BYTES)
        except (OSError, safe_files.UnsafeFile):
            data = None
        return safe_files.is_regular_file(manifest), None if data is None else content_hash(data)

    exists, current = await asyncio.to_thread(look)
    synced = state.get("base") is not None
    return [
        {
            "mission": mission.id,
            "kind": "manifest",
            "path": str(manifest.path),
            "exists": exists,
            "synced": synced,
            "pending": synced and current is not None and current != state.get("file_hash"),
            "synced_at": state.get("synced_at"),
            "milestones": len(state.get("base") or {}),
            "problem": state.get("problem"),
            "note": state.get("note"),
            "errors": list(state.get("errors", [])),
            "conflicts": list(state.get("conflicts", []))[-10:],
        }
    ]
