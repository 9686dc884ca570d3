"""The JSONL export format: one project, moved losslessly between backends.

Layout (UTF-8, one JSON object per line, ``\\n`` line ends)::

    {"format":"queue-service-export","version":1,"project":"web","counts":{...},"exported_at":"…","source":"…"}
    {"type":"project",...,"next_seq":13}
    {"type":"mission",...}        # ``default`` first, then by created_at, id
    {"type":"task",...}           # by seq
    {"type":"note",...}           # by id
    {"type":"event",...}          # by id
    {"type":"sync",...}           # by path: a TASKS.md's sync state and base rows (issue 17; only when any)

The output is deterministic: record keys are sorted (``type`` first), nested objects too, no
whitespace, and every timestamp is written in one canonical UTC form
(``2025-01-31T12:00:00.000000Z``) whatever timezone object the backend returned. So an export
taken from flatfile, imported into Postgres and exported again is byte-identical except for the
fields listed in :data:`VOLATILE_FIELDS`:

* header ``exported_at`` and ``source`` — when and from which backend the dump was taken;
* task ``lease_holder`` and ``lease_expires_at`` — live leases are not carried over by an import
  (the token is never exported, so the holder could not use it anyway);
* note ``id`` and event ``id`` (and an event's ``data.note_id``) — backend-assigned sequence numbers:
  Postgres draws them from sequences shared by all projects, so an import keeps their order but may
  renumber them. :func:`comparable` replaces each with its rank in the dump, so order still counts.

:func:`comparable` drops exactly those fields, for tests and for ``diff``-ing two dumps.

The header's ``counts`` let :func:`load` detect a truncated file. Every error :func:`load` raises
is a :class:`SnapshotError` naming the line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from enum import Enum
from typing import IO, Any

import pydantic

from queue_service import exceptions
from queue_service.models import (
    Event,
    Mission,
    Note,
    Project,
    ProjectSnapshot,
    SyncFileState,
    Task,
    validation_error_from,
)

__all__ = [
    "FORMAT",
    "VERSION",
    "VOLATILE_FIELDS",
    "SnapshotError",
    "comparable",
    "dump",
    "dumps",
    "load",
    "loads",
]

FORMAT = "queue-service-export"
VERSION = 1

#: Fields that may legitimately differ between two exports of the same data (see the module doc).
VOLATILE_FIELDS: Mapping[str, frozenset[str]] = {
    "header": frozenset({"exported_at", "source"}),
    "task": frozenset({"lease_holder", "lease_expires_at"}),
}

_RECORD_TYPES = ("project", "mission", "task", "note", "event", "sync")
_COUNTED = ("missions", "tasks", "notes", "events", "sync")


class SnapshotError(exceptions.ValidationError):
    """The export file is not valid; the message names the line."""

    code = "invalid_snapshot"


# ---------------------------------------------------------------------------------------------
# writing


def _timestamp(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _canonical(value: Any) -> Any:
    """Plain JSON data with sorted keys and canonical timestamps."""
    if isinstance(value, pydantic.BaseModel):
        return _canonical(value.model_dump(mode="python"))
    if isinstance(value, datetime):
        return _timestamp(value)
    if isinstance(value, Enum):
        return _canonical(value.value)
    if isinstance(value, Mapping):
        return {str(k): _canonical(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    # Results are JSON from the API or the runner; anything else is stored by a Python caller.
    return str(value)


def _line(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n"


def _record(kind: str, model: pydantic.BaseModel, **extra: Any) -> str:
    body = _canonical({**model.model_dump(mode="python"), **extra})
    return _line({"type": kind, **body})


def _mission_order(m: Mission) -> tuple[bool, str, str]:
    return (m.id != "default", _timestamp(m.created_at), m.id)


def dump(
    snapshot: ProjectSnapshot,
    stream: IO[str],
    *,
    source: str | None = None,
    exported_at: datetime | None = None,
) -> int:
    """Write *snapshot* to *stream* in the export format.

    Args:
        snapshot: what ``QueueService.export_project`` returned.
        stream: a text stream (stdout, an open file).
        source: the backend it came from (informational, volatile).
        exported_at: the export time (default now; volatile).

    Returns:
        The number of lines written.
    """
    missions = sorted(snapshot.missions, key=_mission_order)
    tasks = sorted(snapshot.tasks, key=lambda t: (t.seq, t.key))
    notes = sorted(snapshot.notes, key=lambda n: n.id)
    events = sorted(snapshot.events, key=lambda e: e.id)
    syncs = sorted(snapshot.sync, key=lambda s: s.path)
    counts = {"missions": len(missions), "tasks": len(tasks), "notes": len(notes), "events": len(events)}
    if syncs:
        counts["sync"] = len(syncs)
    header: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "project": snapshot.project.slug,
        "counts": counts,
        "exported_at": _timestamp(exported_at or datetime.now(UTC)),
        "source": source,
    }
    stream.write(_line(header))
    stream.write(_record("project", snapshot.project, next_seq=snapshot.next_seq))
    lines = 2
    records: tuple[tuple[str, Iterable[pydantic.BaseModel]], ...] = (
        ("mission", missions),
        ("task", tasks),
        ("note", notes),
        ("event", events),
        ("sync", syncs),
    )
    for kind, items in records:
        for item in items:
            stream.write(_record(kind, item))
            lines += 1
    return lines


def dumps(snapshot: ProjectSnapshot, **kwargs: Any) -> str:
    """:func:`dump` into a string."""
    import io

    buf = io.StringIO()
    dump(snapshot, buf, **kwargs)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# reading


def _fail(lineno: int, message: str) -> SnapshotError:
    return SnapshotError(f"line {lineno}: {message}", line=lineno)


def _parse_header(lineno: int, obj: dict[str, Any]) -> dict[str, int]:
    if obj.get("format") != FORMAT:
        raise _fail(lineno, f"not a queue-service export (expected a header with format {FORMAT!r})")
    version = obj.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise _fail(lineno, f"export header has no integer version (got {version!r})")
    if version > VERSION:
        raise _fail(lineno, f"export version {version} is newer than this queue-service reads ({VERSION}); upgrade")
    if version < 1:
        raise _fail(lineno, f"unknown export version {version}")
    counts = obj.get("counts") or {}
    if not isinstance(counts, dict) or not all(
        isinstance(counts.get(k, 0), int) and not isinstance(counts.get(k, 0), bool) for k in _COUNTED
    ):
        raise _fail(lineno, "export header 'counts' must map missions/tasks/notes/events to integers")
    return {k: int(counts[k]) for k in _COUNTED if k in counts}


def _validate(lineno: int, model: type[pydantic.BaseModel], obj: dict[str, Any], what: str) -> Any:
    try:
        return model.model_validate(obj)
    except pydantic.ValidationError as exc:
        raise _fail(lineno, f"{what}: {validation_error_from(exc).message}") from None


def load(stream: IO[str] | Iterable[str]) -> ProjectSnapshot:
    """Read an export written by :func:`dump`.

    Blank lines are ignored. Records may come in any order after the header, but there must be
    exactly one ``project`` record, every record must belong to that project, keys and ids must be
    unique, and the numbers of records must match the header's ``counts``.

    Raises:
        SnapshotError: naming the line and the problem (bad JSON, unknown record type, a field that
            does not validate, a duplicate, a truncated file).
    """
    counts: dict[str, int] | None = None
    project: Project | None = None
    next_seq: int | None = None
    project_line = 0
    missions: dict[str, Mission] = {}
    tasks: dict[str, Task] = {}
    notes: dict[int, Note] = {}
    events: dict[int, Event] = {}
    syncs: dict[str, SyncFileState] = {}
    lineno = 0
    for lineno, raw in enumerate(stream, start=1):
        text = raw.strip()
        if not text:
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _fail(lineno, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise _fail(lineno, f"expected a JSON object, got {type(obj).__name__}")
        if counts is None:
            counts = _parse_header(lineno, obj)
            continue
        kind = obj.pop("type", None)
        if kind not in _RECORD_TYPES:
            raise _fail(lineno, f"unknown record type {kind!r} (expected one of {', '.join(_RECORD_TYPES)})")
        if kind == "project":
            if project is not None:
                raise _fail(lineno, f"a second project record (the first is on line {project_line})")
            seq = obj.pop("next_seq", None)
            if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
                raise _fail(lineno, f"project record needs an integer next_seq >= 1, got {seq!r}")
            project = _validate(lineno, Project, obj, "project")
            next_seq, project_line = seq, lineno
            continue
        if project is None:
            raise _fail(lineno, f"{kind} record before the project record")
        owner = obj.get("project")
        if owner != project.slug:
            raise _fail(lineno, f"{kind} belongs to project {owner!r}, not {project.slug!r}")
        if kind == "mission":
            mission: Mission = _validate(lineno, Mission, obj, f"mission {obj.get('id')!r}")
            if mission.id in missions:
                raise _fail(lineno, f"duplicate mission {mission.id!r}")
            missions[mission.id] = mission
        elif kind == "task":
            task: Task = _validate(lineno, Task, obj, f"task {obj.get('key')!r}")
            if task.key in tasks:
                raise _fail(lineno, f"duplicate task key {task.key!r}")
            tasks[task.key] = task
        elif kind == "note":
            note: Note = _validate(lineno, Note, obj, f"note {obj.get('id')!r}")
            if note.id in notes:
                raise _fail(lineno, f"duplicate note id {note.id}")
            notes[note.id] = note
        elif kind == "sync":
            sync: SyncFileState = _validate(lineno, SyncFileState, obj, f"sync state {obj.get('path')!r}")
            if sync.path in syncs:
                raise _fail(lineno, f"duplicate sync state for {sync.path!r}")
            syncs[sync.path] = sync
        else:
            event: Event = _validate(lineno, Event, obj, f"event {obj.get('id')!r}")
            if event.id in events:
                raise _fail(lineno, f"duplicate event id {event.id}")
            events[event.id] = event
    if counts is None:
        raise SnapshotError("line 1: empty input, expected a queue-service export header", line=1)
    if project is None or next_seq is None:
        raise _fail(lineno + 1, "end of input before the project record")
    found = {
        "missions": len(missions),
        "tasks": len(tasks),
        "notes": len(notes),
        "events": len(events),
        "sync": len(syncs),
    }
    for name, expected in counts.items():
        if found[name] != expected:
            raise _fail(
                lineno + 1,
                f"the header lists {expected} {name} but the file holds {found[name]} (truncated or edited export?)",
            )
    return ProjectSnapshot(
        project=project,
        missions=tuple(missions.values()),
        tasks=tuple(tasks.values()),
        notes=tuple(notes.values()),
        events=tuple(events.values()),
        next_seq=next_seq,
        sync=tuple(syncs.values()),
    )


def loads(text: str) -> ProjectSnapshot:
    """:func:`load` from a string."""
    return load(text.splitlines())


def comparable(text: str) -> str:
    """*text* (an export) without the :data:`VOLATILE_FIELDS`, for comparing two exports."""
    objs = [json.loads(raw) for raw in text.splitlines() if raw.strip()]
    ranks: dict[str, dict[int, int]] = {"note": {}, "event": {}}
    for obj in objs[1:]:
        kind = obj.get("type", "")
        if kind in ranks and isinstance(obj.get("id"), int):
            ranks[kind].setdefault(obj["id"], len(ranks[kind]) + 1)
    out = []
    for i, obj in enumerate(objs):
        kind = "header" if i == 0 else obj.get("type", "")
        for name in VOLATILE_FIELDS.get(kind, ()):
            obj.pop(name, None)
        if kind in ranks and isinstance(obj.get("id"), int):
            obj["id"] = ranks[kind][obj["id"]]
        data = obj.get("data")
        if kind == "event" and isinstance(data, dict) and isinstance(data.get("note_id"), int):
            data["note_id"] = ranks["note"].get(data["note_id"], data["note_id"])
        out.append(_line(obj))
    return "".join(out)
