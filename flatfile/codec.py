"""On-disk encoding of journal entries (one :class:`~queue_service.state.Changes` per line) and snapshots.

Journal line (``journal-<gen>.jsonl``; empty fields are left out)::

    {"v":1,"project":{…},"missions":{"id":{…}},"tasks":{"KEY":{…}},"tokens":{"KEY":"tok"|null},
     "notes":[{…}],"events":[{…}],"next_seq":13,"sync_state":{"path":{…}}}

Snapshot (``snapshot-<gen>.jsonl``), one record per line so errors can name the line::

    {"format":"queue-service-flatfile","version":1,"generation":3,"project":"web","counts":{…}}
    {"type":"project","project":{…},"next_seq":13}
    {"type":"mission","mission":{…}}
    {"type":"task","task":{…},"token":"…"|null}
    {"type":"note","note":{…}}
    {"type":"event","event":{…}}
    {"type":"sync","path":"TASKS.md","state":{…}}

Models are written with pydantic ``model_dump(mode="json")`` and read back with ``model_validate``,
so every line is schema-checked on load. Decoding problems raise :class:`Malformed` with a message;
the caller turns it into ``CorruptData`` naming the file and line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any, TypeVar

import pydantic
import pydantic_core

from queue_service import exceptions
from queue_service.agents import AgentRecord
from queue_service.models import Event, Mission, Note, Project, Task
from queue_service.routing import Offer
from queue_service.routing_state import RoutingDelta
from queue_service.state import Changes, ProjectState

__all__ = [
    "JOURNAL_VERSION",
    "SNAPSHOT_FORMAT",
    "SNAPSHOT_VERSION",
    "Malformed",
    "SnapshotReader",
    "decode_changes",
    "encode_changes",
    "encode_snapshot",
    "parse_line",
]

JOURNAL_VERSION = 1
SNAPSHOT_FORMAT = "queue-service-flatfile"
SNAPSHOT_VERSION = 1
_COUNTED = ("missions", "tasks", "notes", "events", "sync")

M = TypeVar("M", bound=pydantic.BaseModel)


class Malformed(Exception):
    """A stored line does not decode; the message says why (file and line are added by the caller)."""


def _json(obj: Any) -> bytes:
    try:
        # No indent: json.dumps escapes newlines inside strings, so a record is exactly one line.
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise exceptions.ValidationError(f"value cannot be stored as JSON: {exc}") from None


def _dump(model: pydantic.BaseModel) -> Any:
    try:
        return model.model_dump(mode="json")
    except pydantic_core.PydanticSerializationError as exc:
        raise exceptions.ValidationError(f"value cannot be stored as JSON: {exc}") from None


def parse_line(raw: bytes) -> dict[str, Any]:
    """One JSON object from one line. Raises Malformed."""
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        detail = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise Malformed(f"not valid JSON ({detail})") from None
    if not isinstance(obj, dict):
        raise Malformed(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _model(cls: type[M], obj: Any, what: str) -> M:
    try:
        return cls.model_validate(obj)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in first["loc"]) or "value"
        raise Malformed(f"{what}: {loc}: {first['msg']} ({exc.error_count()} problem(s))") from None


def _mapping(obj: dict[str, Any], name: str) -> dict[str, Any]:
    value = obj.get(name, {})
    if not isinstance(value, dict):
        raise Malformed(f"field {name!r} must be an object, got {type(value).__name__}")
    return value


def _list(obj: dict[str, Any], name: str) -> list[Any]:
    value = obj.get(name, [])
    if not isinstance(value, list):
        raise Malformed(f"field {name!r} must be a list, got {type(value).__name__}")
    return value


# -- journal ---------------------------------------------------------------------------------


def encode_changes(changes: Changes) -> bytes:
    """One journal line (without the newline). Raises ValidationError for data JSON cannot hold."""
    obj: dict[str, Any] = {"v": JOURNAL_VERSION}
    if changes.project is not None:
        obj["project"] = _dump(changes.project)
    if changes.missions:
        obj["missions"] = {k: _dump(m) for k, m in changes.missions.items()}
    if changes.tasks:
        obj["tasks"] = {k: _dump(t) for k, t in changes.tasks.items()}
    if changes.tokens:
        obj["tokens"] = dict(changes.tokens)
    if changes.notes:
        obj["notes"] = [_dump(n) for n in changes.notes]
    if changes.events:
        obj["events"] = [_dump(e) for e in changes.events]
    if changes.next_seq is not None:
        obj["next_seq"] = changes.next_seq
    if changes.sync_state:
        obj["sync_state"] = changes.sync_state
    if changes.sync_rows:
        obj["sync_rows"] = changes.sync_rows
    if changes.routing:
        obj["routing"] = _encode_routing(changes.routing)
    return _json(obj)


def decode_changes(obj: dict[str, Any]) -> Changes:
    """The Changes a journal line holds. Raises Malformed."""
    version = obj.get("v")
    if version != JOURNAL_VERSION:
        raise Malformed(f"unknown journal entry version {version!r} (this build reads {JOURNAL_VERSION})")
    unknown = set(obj) - {
        "v",
        "project",
        "missions",
        "tasks",
        "tokens",
        "notes",
        "events",
        "next_seq",
        "sync_state",
        "sync_rows",
        "routing",
    }
    if unknown:
        raise Malformed(f"unknown field(s) {', '.join(sorted(unknown))}")
    changes = Changes()
    if "project" in obj:
        changes.project = _model(Project, obj["project"], "project")
    for key, value in _mapping(obj, "missions").items():
        changes.missions[key] = _model(Mission, value, f"mission {key!r}")
    for key, value in _mapping(obj, "tasks").items():
        changes.tasks[key] = _model(Task, value, f"task {key!r}")
    for key, value in _mapping(obj, "tokens").items():
        if value is not None and not isinstance(value, str):
            raise Malformed(f"lease token of {key!r} must be a string or null")
        changes.tokens[key] = value
    changes.notes = [_model(Note, n, "note") for n in _list(obj, "notes")]
    changes.events = [_model(Event, e, "event") for e in _list(obj, "events")]
    if "next_seq" in obj:
        seq = obj["next_seq"]
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise Malformed(f"next_seq must be an integer >= 1, got {seq!r}")
        changes.next_seq = seq
    for path, value in _mapping(obj, "sync_state").items():
        if not isinstance(value, dict):
            raise Malformed(f"sync state of {path!r} must be an object")
        changes.sync_state[path] = value
    for path, value in _mapping(obj, "sync_rows").items():
        changes.sync_rows[path] = _sync_rows(path, value, deletions=True)
    if "routing" in obj:
        changes.routing = _decode_routing(obj["routing"])
    return changes


def _encode_routing(delta: RoutingDelta) -> dict[str, Any]:
    return {
        "agents": {k: None if a is None else _dump(a) for k, a in delta.agents.items()},
        "offers": {
            k: None if o is None else {"agent": o.agent, "expires_at": o.expires_at.isoformat()}
            for k, o in delta.offers.items()
        },
        "cursors": dict(delta.cursors),
    }


def _decode_routing(obj: Any) -> RoutingDelta:
    """The registry part of a journal line or snapshot (issue 13). Raises Malformed."""
    if not isinstance(obj, dict):
        raise Malformed("routing must be an object")
    delta = RoutingDelta()
    for key, value in _mapping(obj, "agents").items():
        delta.agents[key] = None if value is None else _model(AgentRecord, value, f"agent {key!r}")
    for key, value in _mapping(obj, "offers").items():
        if value is None:
            delta.offers[key] = None
            continue
        if not isinstance(value, dict) or not isinstance(value.get("agent"), str):
            raise Malformed(f"offer of {key!r} needs a string 'agent'")
        try:
            expires = datetime.fromisoformat(str(value.get("expires_at")))
        except ValueError:
            raise Malformed(f"offer of {key!r}: bad expires_at {value.get('expires_at')!r}") from None
        delta.offers[key] = Offer(agent=value["agent"], expires_at=expires)
    for role, value in _mapping(obj, "cursors").items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise Malformed(f"round-robin cursor of {role!r} must be a non-negative integer")
        delta.cursors[role] = value
    return delta


def _sync_rows(path: str, value: Any, *, deletions: bool) -> dict[str, dict[str, Any] | None]:
    if not isinstance(value, dict) or not all(isinstance(v, dict) or (deletions and v is None) for v in value.values()):
        raise Malformed(f"sync rows of {path!r} must map task keys to objects")
    return value


# -- snapshots -------------------------------------------------------------------------------


def encode_snapshot(state: ProjectState, generation: int) -> Iterator[bytes]:
    """The snapshot lines (each ending in a newline) of *state* as generation *generation*."""
    tasks = sorted(state.tasks.values(), key=lambda t: t.seq)
    notes = sorted((n for ns in state.notes.values() for n in ns), key=lambda n: n.id)
    counts = {
        "missions": len(state.missions),
        "tasks": len(tasks),
        "notes": len(notes),
        "events": len(state.events),
        "sync": len(state.sync_state),
    }
    header = {
        "format": SNAPSHOT_FORMAT,
        "version": SNAPSHOT_VERSION,
        "generation": generation,
        "project": state.project.slug,
        "counts": counts,
    }
    yield _json(header) + b"\n"
    yield _json({"type": "project", "project": _dump(state.project), "next_seq": state.next_seq}) + b"\n"
    for mission in state.missions.values():
        yield _json({"type": "mission", "mission": _dump(mission)}) + b"\n"
    # Batch small records: one write per ~1000 lines instead of one per record.
    batch: list[bytes] = []
    for task in tasks:
        batch.append(_json({"type": "task", "task": _dump(task), "token": state.tokens.get(task.key)}))
    for note in notes:
        batch.append(_json({"type": "note", "note": _dump(note)}))
    for event in state.events:
        batch.append(_json({"type": "event", "event": _dump(event)}))
    for path, value in state.sync_state.items():
        batch.append(_json({"type": "sync", "path": path, "state": value}))
    for path, rows in state.sync_rows.items():
        batch.append(_json({"type": "sync_rows", "path": path, "rows": rows}))
    index = state.routing
    if index.agents or index.offers or index.cursors:
        delta = RoutingDelta(agents=dict(index.agents), offers=dict(index.offers), cursors=dict(index.cursors))
        batch.append(_json({"type": "routing", "routing": _encode_routing(delta)}))
    for start in range(0, len(batch), 1000):
        yield b"\n".join(batch[start : start + 1000]) + b"\n"


class SnapshotReader:
    """Builds a ProjectState from snapshot lines fed one at a time (so errors can name the line)."""

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.counts: dict[str, int] | None = None
        self.slug: str | None = None
        self.project: Project | None = None
        self.next_seq = 1
        self.changes = Changes()
        self.found = dict.fromkeys(_COUNTED, 0)

    def feed(self, obj: dict[str, Any]) -> None:
        """Take one decoded line. Raises Malformed."""
        if self.counts is None:
            self._header(obj)
            return
        kind = obj.get("type")
        if kind == "project":
            if self.project is not None:
                raise Malformed("a second project record")
            self.project = _model(Project, obj.get("project"), "project")
            if self.project.slug != self.slug:
                raise Malformed(f"project record is {self.project.slug!r}, the header says {self.slug!r}")
            seq = obj.get("next_seq")
            if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
                raise Malformed(f"next_seq must be an integer >= 1, got {seq!r}")
            self.next_seq = seq
            return
        if self.project is None:
            raise Malformed(f"{kind!r} record before the project record")
        if kind == "mission":
            mission = _model(Mission, obj.get("mission"), "mission")
            self.changes.missions[mission.id] = mission
            self.found["missions"] += 1
        elif kind == "task":
            task = _model(Task, obj.get("task"), "task")
            if task.key in self.changes.tasks:
                raise Malformed(f"duplicate task {task.key!r}")
            self.changes.tasks[task.key] = task
            token = obj.get("token")
            if token is not None:
                if not isinstance(token, str):
                    raise Malformed(f"lease token of {task.key!r} must be a string or null")
                self.changes.tokens[task.key] = token
            self.found["tasks"] += 1
        elif kind == "note":
            self.changes.notes.append(_model(Note, obj.get("note"), "note"))
            self.found["notes"] += 1
        elif kind == "event":
            self.changes.events.append(_model(Event, obj.get("event"), "event"))
            self.found["events"] += 1
        elif kind == "sync":
            path, value = obj.get("path"), obj.get("state")
            if not isinstance(path, str) or not isinstance(value, dict):
                raise Malformed("sync record needs a string 'path' and an object 'state'")
            self.changes.sync_state[path] = value
            self.found["sync"] += 1
        elif kind == "sync_rows":
            path = obj.get("path")
            if not isinstance(path, str):
                raise Malformed("sync_rows record needs a string 'path'")
            self.changes.sync_rows[path] = _sync_rows(path, obj.get("rows"), deletions=False)
        elif kind == "routing":
            self.changes.routing = _decode_routing(obj.get("routing"))
        else:
            raise Malformed(f"unknown record type {kind!r}")

    def _header(self, obj: dict[str, Any]) -> None:
        if obj.get("format") != SNAPSHOT_FORMAT:
            raise Malformed(f"not a flatfile snapshot header (expected format {SNAPSHOT_FORMAT!r})")
        if obj.get("version") != SNAPSHOT_VERSION:
            raise Malformed(f"unknown snapshot version {obj.get('version')!r} (this build reads {SNAPSHOT_VERSION})")
        if obj.get("generation") != self.generation:
            raise Malformed(f"header generation {obj.get('generation')!r} does not match the file name")
        slug = obj.get("project")
        counts = obj.get("counts")
        if not isinstance(slug, str) or not isinstance(counts, dict):
            raise Malformed("snapshot header needs 'project' and 'counts'")
        if not all(isinstance(counts.get(k), int) for k in _COUNTED):
            raise Malformed(f"snapshot header 'counts' must give integers for {', '.join(_COUNTED)}")
        self.slug = slug
        self.counts = {k: int(counts[k]) for k in _COUNTED}

    def finish(self) -> ProjectState:
        """The state, after every line was fed. Raises Malformed for a truncated snapshot."""
        if self.counts is None or self.project is None:
            raise Malformed("snapshot ends before its header and project record")
        for name, expected in self.counts.items():
            if self.found[name] != expected:
                raise Malformed(f"the header lists {expected} {name} but the file holds {self.found[name]}")
        state = ProjectState(self.project)
        changes = self.changes
        changes.project = self.project
        changes.next_seq = self.next_seq
        changes.notes.sort(key=lambda n: n.id)
        changes.events.sort(key=lambda e: e.id)
        state.apply(changes)
        return state
