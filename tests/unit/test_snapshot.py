"""The JSONL export format: deterministic dump, strict load, lossless round trip between backends."""

from __future__ import annotations

import io
import json
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from queue_service import snapshot
from queue_service.models import ProjectSnapshot
from queue_service.service import QueueService
from queue_service.testing import InMemoryBackend
from queue_service.workspaces import WorkspacePolicy

T0 = datetime(2025, 1, 31, 12, 0, 0, tzinfo=UTC)


async def _busy_project(svc: QueueService) -> ProjectSnapshot:
    """A project exercising every record type and awkward values."""
    await svc.create_project({"slug": "web", "name": "Web ✓", "key_prefix": "WEB", "workspace": "/tmp/ws"})
    await svc.create_mission(
        "web",
        {"id": "launch", "name": "Launch", "milestones": [{"id": "m1", "name": "One"}, {"id": "m2", "name": "Two"}]},
    )
    await svc.create_tasks(
        "web",
        [
            {
                "title": "Design | schema",
                "priority": "P1",
                "labels": ["db", "ui"],
                "extra": {"zeta": "1", "alpha": "2"},
            },
            {"title": "Build", "depends_on": ["#0"], "mission": "launch", "milestone": "m1", "role": "dev"},
            {"title": "Ship — ünïcode", "depends_on": ["#1", "#0"], "description": "line1\nline2"},
            {"title": "Imported", "key": "CR-01-02"},
        ],
    )
    claim = await svc.claim("web", "agent-1")
    assert claim is not None
    await svc.add_note("web", claim.task.key, "agent-1", "working on it", claim.lease.token)
    await svc.complete("web", claim.task.key, claim.lease.token, {"z": [1, 2.5, None], "a": {"nested": True}})
    held = await svc.claim("web", "agent-2", roles=["default"])  # left in progress with a live lease
    assert held is not None
    await svc.cancel_task("web", "CR-01-02", reason="dup")
    return await svc.export_project("web")


@pytest.fixture
async def svc() -> QueueService:
    return QueueService(InMemoryBackend(), workspaces=WorkspacePolicy(operator=True))


async def test_dump_is_deterministic_and_canonical(svc: QueueService) -> None:
    snap = await _busy_project(svc)
    text = snapshot.dumps(snap, source="memory", exported_at=T0)
    lines = text.splitlines()
    header = json.loads(lines[0])
    assert list(header)[:2] == ["format", "version"]
    assert header["format"] == "queue-service-export"
    assert header["version"] == 1
    assert header["counts"] == {
        "missions": len(snap.missions),
        "tasks": len(snap.tasks),
        "notes": len(snap.notes),
        "events": len(snap.events),
    }
    assert header["exported_at"] == "2025-01-31T12:00:00.000000Z"
    kinds = [json.loads(line)["type"] for line in lines[1:]]
    assert kinds == sorted(kinds, key=["project", "mission", "task", "note", "event"].index)
    for line in lines[1:]:
        obj = json.loads(line)
        keys = list(obj)
        assert keys[0] == "type"
        assert keys[1:] == sorted(keys[1:])
        assert line == json.dumps(obj, ensure_ascii=False, separators=(",", ":"))  # compact, no spaces
    tasks = [json.loads(line) for line in lines if '"type":"task"' in line]
    assert [t["seq"] for t in tasks] == sorted(t["seq"] for t in tasks)
    assert list(tasks[0]["extra"]) == ["alpha", "zeta"]

    # Same data, shuffled order and other timezone objects: the same bytes.
    plus2 = timezone(timedelta(hours=2))
    shuffled = snap.model_copy(
        update={
            "tasks": tuple(
                t.model_copy(update={"created_at": t.created_at.astimezone(plus2)})
                for t in random.Random(1).sample(snap.tasks, len(snap.tasks))
            ),
            "events": tuple(reversed(snap.events)),
            "missions": tuple(reversed(snap.missions)),
        }
    )
    assert snapshot.dumps(shuffled, source="memory", exported_at=T0) == text


async def test_load_round_trips_exactly(svc: QueueService) -> None:
    snap = await _busy_project(svc)
    text = snapshot.dumps(snap, source="memory", exported_at=T0)
    loaded = snapshot.loads(text)
    assert loaded.project == snap.project
    assert loaded.next_seq == snap.next_seq
    assert {t.key: t for t in loaded.tasks} == {t.key: t for t in snap.tasks}
    assert sorted(loaded.notes, key=lambda n: n.id) == sorted(snap.notes, key=lambda n: n.id)
    assert sorted(loaded.events, key=lambda e: e.id) == sorted(snap.events, key=lambda e: e.id)
    assert snapshot.dumps(loaded, source="memory", exported_at=T0) == text
    # load() accepts a text stream too
    assert snapshot.load(io.StringIO(text)) == loaded


async def test_export_import_export_is_identical_modulo_volatile_fields(svc: QueueService) -> None:
    snap = await _busy_project(svc)
    first = snapshot.dumps(snap, source="memory")
    other = QueueService(InMemoryBackend())
    await other.import_project(snapshot.loads(first))
    second = snapshot.dumps(await other.export_project("web"), source="memory-2")
    assert first != second  # exported_at/source differ, and the live lease is not carried over
    assert snapshot.comparable(first) == snapshot.comparable(second)
    # keys keep working after the move: the next task continues the sequence
    (task,) = await other.create_tasks("web", [{"title": "after the move"}])
    assert task.key == f"WEB-{snap.next_seq}"


def test_comparable_drops_only_documented_fields() -> None:
    text = (
        '{"format":"queue-service-export","version":1,"project":"p","counts":{},"exported_at":"x","source":"s"}\n'
        '{"type":"task","key":"A-1","lease_holder":"h","lease_expires_at":"t","title":"keep"}\n'
    )
    out = snapshot.comparable(text).splitlines()
    assert json.loads(out[0]) == {"format": "queue-service-export", "version": 1, "project": "p", "counts": {}}
    assert json.loads(out[1]) == {"type": "task", "key": "A-1", "title": "keep"}
    assert set(snapshot.VOLATILE_FIELDS) == {"header", "task"}


def test_comparable_ranks_note_and_event_ids() -> None:
    def dump(note_ids: tuple[int, int], event_ids: tuple[int, int], names: int = 1) -> str:
        return (
            '{"format":"queue-service-export","version":1,"project":"p","counts":{}}\n'
            f'{{"type":"note","id":{note_ids[0]},"text":"a"}}\n'
            f'{{"type":"note","id":{note_ids[1]},"text":"b"}}\n'
            f'{{"type":"event","id":{event_ids[0]},"kind":"created","data":{{}}}}\n'
            f'{{"type":"event","id":{event_ids[1]},"kind":"note_added","data":{{"note_id":{note_ids[names]}}}}}\n'
        )

    assert snapshot.comparable(dump((1, 2), (1, 2))) == snapshot.comparable(dump((11, 12), (124, 125)))
    # which note an event names still counts
    assert snapshot.comparable(dump((1, 2), (1, 2))) != snapshot.comparable(dump((11, 12), (124, 125), names=0))


@pytest.fixture
async def good_lines(svc: QueueService) -> list[str]:
    await svc.create_project({"slug": "p"})
    await svc.create_tasks("p", [{"title": "one"}, {"title": "two", "depends_on": ["#0"]}])
    return snapshot.dumps(await svc.export_project("p"), exported_at=T0).splitlines()


def _err(lines: list[str]) -> str:
    with pytest.raises(snapshot.SnapshotError) as info:
        snapshot.load(lines)
    return info.value.message


def _task_line(lines: list[str]) -> int:
    return next(i for i, line in enumerate(lines) if '"type":"task"' in line)


def test_load_rejects_empty_input() -> None:
    assert _err([]) == "line 1: empty input, expected a queue-service export header"
    assert _err(["", "  "]).startswith("line 1: empty input")


def test_load_rejects_bad_json(good_lines: list[str]) -> None:
    good_lines[2] = good_lines[2][:-3]
    assert _err(good_lines).startswith("line 3: not valid JSON")


def test_load_rejects_non_objects(good_lines: list[str]) -> None:
    good_lines[1] = "[1, 2]"
    assert _err(good_lines) == "line 2: expected a JSON object, got list"


def test_load_rejects_foreign_header() -> None:
    assert "not a queue-service export" in _err(['{"format":"something-else","version":1}'])
    assert _err(['{"type":"task"}']).startswith("line 1: not a queue-service export")


def test_load_rejects_newer_version(good_lines: list[str]) -> None:
    good_lines[0] = good_lines[0].replace('"version":1', '"version":2')
    assert _err(good_lines) == "line 1: export version 2 is newer than this queue-service reads (1); upgrade"


def test_load_rejects_unknown_record_type(good_lines: list[str]) -> None:
    good_lines.insert(3, '{"type":"gizmo"}')
    assert _err(good_lines).startswith("line 4: unknown record type 'gizmo'")


def test_load_rejects_records_before_the_project(good_lines: list[str]) -> None:
    good_lines[1], good_lines[2] = good_lines[2], good_lines[1]
    assert _err(good_lines) == "line 2: mission record before the project record"


def test_load_rejects_a_second_project(good_lines: list[str]) -> None:
    good_lines.insert(2, good_lines[1])
    assert _err(good_lines) == "line 3: a second project record (the first is on line 2)"


def test_load_rejects_foreign_records(good_lines: list[str]) -> None:
    i = _task_line(good_lines)
    good_lines[i] = good_lines[i].replace('"project":"p"', '"project":"other"')
    assert _err(good_lines) == f"line {i + 1}: task belongs to project 'other', not 'p'"


def test_load_names_the_invalid_field(good_lines: list[str]) -> None:
    i = _task_line(good_lines)
    good_lines[i] = good_lines[i].replace('"status":"not-started"', '"status":"bogus"')
    message = _err(good_lines)
    assert message.startswith(f"line {i + 1}: task 'P-1': status")
    assert "not-started" in message


def test_load_rejects_unknown_fields(good_lines: list[str]) -> None:
    i = _task_line(good_lines)
    good_lines[i] = good_lines[i].replace('{"type":"task",', '{"type":"task","colour":"red",')
    assert "colour" in _err(good_lines)


def test_load_rejects_duplicates(good_lines: list[str]) -> None:
    i = _task_line(good_lines)
    good_lines.insert(i + 1, good_lines[i])
    assert _err(good_lines) == f"line {i + 2}: duplicate task key 'P-1'"


def test_load_detects_truncation(good_lines: list[str]) -> None:
    truncated = good_lines[:-1]
    message = _err(truncated)
    assert "the header lists" in message
    assert "truncated or edited export" in message


def test_load_needs_next_seq(good_lines: list[str]) -> None:
    good_lines[1] = good_lines[1].replace('"next_seq":3,', "")
    assert _err(good_lines) == "line 2: project record needs an integer next_seq >= 1, got None"


def test_load_without_project_record() -> None:
    header = '{"format":"queue-service-export","version":1,"project":"p","counts":{}}'
    assert _err([header]) == "line 2: end of input before the project record"


def test_load_ignores_blank_lines(good_lines: list[str]) -> None:
    spaced = [x for line in good_lines for x in (line, "")]
    assert snapshot.load(spaced) == snapshot.load(good_lines)


def test_snapshot_error_is_a_validation_error() -> None:
    from queue_service import exceptions

    assert issubclass(snapshot.SnapshotError, exceptions.ValidationError)
    assert snapshot.SnapshotError("x").http_status == 422
