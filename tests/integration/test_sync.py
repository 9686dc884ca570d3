"""Workspace sync end to end on the real file system with a running watcher (in-memory backend).

Each test starts a :class:`WorkspaceSyncManager` (inotify watcher, DB events, 0.5 s rescans) over a
temporary workspace and edits TASKS.md the way editors do (temp file renamed over the original).
Conditions are polled with a deadline; nothing asserts on timing. To make "simultaneous" edits
deterministic, a test holds the file's sync lock while it changes both sides, so the next cycle sees
both changes at once.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from queue_service.models import TaskStatus
from queue_service.service import QueueService
from queue_service.testing import InMemoryBackend
from queue_service.workspaces import WorkspacePolicy
from tests.integration.sync_support import (
    FAST,
    SAMPLES,
    cell,
    editor_save,
    eventually,
    line_before,
    row_line,
    set_cell,
    sync_options,
)
from workspace_sync.engine import FileSync
from workspace_sync.format import COORD_COLUMNS
from workspace_sync.manager import WorkspaceSyncManager, sync_status
from workspace_sync.writer import SyncLock

# columns of a fresh file: id | status | description | agent | priority | depends_on | notes
ID, STATUS, TITLE, AGENT, PRIORITY, DEPS, NOTES = range(7)


@pytest.fixture
async def svc() -> AsyncIterator[QueueService]:
    async with InMemoryBackend(config=FAST) as backend:
        yield QueueService(backend, workspaces=WorkspacePolicy(operator=True))


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "ws"
    path.mkdir()
    return path


@contextlib.asynccontextmanager
async def running(svc: QueueService, **settings: Any) -> AsyncIterator[WorkspaceSyncManager]:
    polling = bool(settings.pop("polling", False))
    manager = WorkspaceSyncManager(svc, sync_options(**settings), polling=polling)
    async with manager:
        yield manager


def syncer(manager: WorkspaceSyncManager, project: str = "web", mission: str = "default") -> FileSync:
    found = manager.file_sync(project, mission)
    assert found is not None, manager.file_syncs()
    return found


async def started(svc: QueueService, workspace: Path, *titles: str) -> Path:
    """Project ``web`` with tasks WEB-1.. in *workspace*; returns its TASKS.md path."""
    await svc.create_project({"slug": "web", "workspace": str(workspace)})
    for title in titles:
        await svc.create_task("web", {"title": title})
    return workspace / "TASKS.md"


async def shows(path: Path, *needles: str) -> str:
    def check() -> str | None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        return text if all(n in text for n in needles) else None

    return await eventually(check, f"{path.name} to show {needles}")


async def task_is(svc: QueueService, key: str, **fields: Any) -> Any:
    async def check() -> Any:
        task = await svc.get_task("web", key)
        return task if all(getattr(task, k) == v for k, v in fields.items()) else None

    return await eventually(check, f"{key} to have {fields}")


# -- DB -> file ---------------------------------------------------------------------------------


async def test_fresh_file_is_rendered_from_the_database(svc: QueueService, workspace: Path) -> None:
    path = await started(svc, workspace, "Design the schema", "Write the login page")
    async with running(svc):
        text = await shows(path, "WEB-1", "WEB-2")
    assert text.startswith("# Tasks — web\n<!-- queue-service: project=web mission=default")
    assert cell(text, "WEB-2", TITLE) == "Write the login page"
    assert cell(text, "WEB-2", STATUS) == "not-started"


async def test_agent_completing_a_task_appears_in_the_file(svc: QueueService, workspace: Path) -> None:
    path = await started(svc, workspace, "Design the schema")
    async with running(svc):
        await shows(path, "WEB-1")
        claim = await svc.claim("web", "agent-1")
        assert claim is not None
        text = await shows(path, "| in-progress |")
        assert cell(text, "WEB-1", STATUS) == "in-progress"
        await svc.complete("web", "WEB-1", claim.lease.token, {"ok": True})
        text = await shows(path, "| done |")
    assert cell(text, "WEB-1", STATUS) == "done"


# -- file -> DB ---------------------------------------------------------------------------------


async def test_editor_save_of_a_status_change_reaches_the_database(svc: QueueService, workspace: Path) -> None:
    path = await started(svc, workspace, "Design the schema", "Write the login page")
    async with running(svc):
        text = await shows(path, "WEB-2")
        editor_save(path, set_cell(text, "WEB-1", STATUS, "done"))
        await task_is(svc, "WEB-1", status=TaskStatus.DONE)
        # an alias is accepted, and the row keeps the word as typed (the value did not change)
        text = await shows(path, "| done |")
        editor_save(path, set_cell(text, "WEB-2", STATUS, "wip"))
        await task_is(svc, "WEB-2", status=TaskStatus.IN_PROGRESS)
    assert cell(path.read_text(), "WEB-2", STATUS) == "wip"


async def test_new_plus_row_is_created_and_its_key_written_back(svc: QueueService, workspace: Path) -> None:
    path = await started(svc, workspace, "Design the schema")
    async with running(svc):
        text = await shows(path, "WEB-1")
        new_row = "| + | todo | Write the login page | sonnet | P1 | WEB-1 | from the file |\n"
        editor_save(path, text.replace(row_line(text, "WEB-1") + "\n", row_line(text, "WEB-1") + "\n" + new_row))
        text = await shows(path, "| WEB-2 |")
        task = await svc.get_task("web", "WEB-2")
        assert "| + |" not in text
    assert task.title == "Write the login page"
    # a not-started row's agent is the model that should run it (issue 18)
    assert (task.requires, task.assignee) == ({"model": "sonnet"}, None)
    assert task.priority.value == "P1"
    assert task.depends_on == ("WEB-1",)
    assert task.extra["notes"] == "from the file"
    # only the id cell changed: the rest of the row keeps its bytes
    assert row_line(text, "WEB-2") == new_row.strip().replace("| + |", "| WEB-2 |")


async def test_details_text_becomes_the_description(svc: QueueService, workspace: Path) -> None:
    path = await started(svc, workspace, "Design the schema")
    async with running(svc):
        text = await shows(path, "WEB-1")
        editor_save(path, text + "\n## Details\n\n### WEB-1\nAcceptance: tables for users and sessions.\n")
        await task_is(svc, "WEB-1", description="Acceptance: tables for users and sessions.")
        await svc.update_task("web", "WEB-1", {"description": "Changed through the API."})
        await shows(path, "Changed through the API.")


async def test_simultaneous_edits_of_different_fields_both_survive(svc: QueueService, workspace: Path) -> None:
    path = await started(svc, workspace, "Design the schema")
    async with running(svc) as manager:
        text = await shows(path, "WEB-1")
        await manager.wait_idle()
        async with SyncLock(path).hold():  # the next cycle sees both changes at once
            await svc.update_task("web", "WEB-1", {"assignee": "alice", "priority": "P0"})
            editor_save(path, set_cell(text, "WEB-1", STATUS, "done"))
        task = await task_is(svc, "WEB-1", status=TaskStatus.DONE)
        text = await shows(path, "| done |", "alice")
    assert task.assignee == "alice"
    assert task.priority.value == "P0"
    assert cell(text, "WEB-1", PRIORITY) == "P0"
    assert "sync-conflict" not in text
    assert not [n for n in await svc.list_notes("web", "WEB-1") if n.author == "workspace-sync"]


async def test_same_field_agent_status_wins_with_marker_and_note(svc: QueueService, workspace: Path) -> None:
    path = await started(svc, workspace, "Design the schema")
    async with running(svc) as manager:
        text = await shows(path, "WEB-1")
        await manager.wait_idle()
        async with SyncLock(path).hold():
            claim = await svc.claim("web", "agent-7")
            assert claim is not None
            editor_save(path, set_cell(text, "WEB-1", STATUS, "blocked"))
        text = await shows(path, "sync-conflict")
        task = await svc.get_task("web", "WEB-1")
    assert task.status is TaskStatus.IN_PROGRESS
    assert task.lease_holder == "agent-7"
    assert cell(text, "WEB-1", STATUS) == "in-progress"
    marker = line_before(text, "WEB-1")
    assert marker.startswith("<!-- sync-conflict: status: file said blocked, service said in-progress (agent)")
    notes = [n for n in await svc.list_notes("web", "WEB-1") if n.author == "workspace-sync"]
    assert len(notes) == 1
    assert "blocked" in notes[0].text  # the losing hand edit is kept in the note


async def test_same_field_scalar_takes_the_file_value_and_keeps_the_other(svc: QueueService, workspace: Path) -> None:
    path = await started(svc, workspace, "Design the schema")
    async with running(svc) as manager:
        text = await shows(path, "WEB-1")
        await manager.wait_idle()
        async with SyncLock(path).hold():
            await svc.update_task("web", "WEB-1", {"title": "Title from the API", "labels": ["api"]})
            editor_save(path, set_cell(text, "WEB-1", TITLE, "Title from the file"))
        await task_is(svc, "WEB-1", title="Title from the file")
        text = await shows(path, "sync-conflict")
    assert "description: file said Title from the file, service said Title from the API" in line_before(text, "WEB-1")
    notes = [n.text for n in await svc.list_notes("web", "WEB-1") if n.author == "workspace-sync"]
    assert len(notes) == 1
    assert "Title from the API" in notes[0]
    assert (await svc.get_task("web", "WEB-1")).labels == ("api",)  # a field the file does not show


async def test_depends_on_merges_as_a_set(svc: QueueService, workspace: Path) -> None:
    path = await started(svc, workspace, "A", "B", "C", "D")
    await svc.update_task("web", "WEB-4", {"depends_on": ["WEB-1"]})
    async with running(svc) as manager:
        text = await shows(path, "WEB-4")
        await eventually(lambda: cell(path.read_text(), "WEB-4", DEPS) == "WEB-1", "deps shown")
        text = path.read_text()
        await manager.wait_idle()
        async with SyncLock(path).hold():
            await svc.update_task("web", "WEB-4", {"depends_on": ["WEB-1", "WEB-2"]})
            editor_save(path, set_cell(text, "WEB-4", DEPS, "WEB-1, WEB-3"))
        task = await eventually(lambda: _deps(svc, "WEB-4", {"WEB-1", "WEB-2", "WEB-3"}), "deps merged from both sides")
        await shows(path, "sync-conflict")
    assert set(task.depends_on) == {"WEB-1", "WEB-2", "WEB-3"}


async def _deps(svc: QueueService, key: str, wanted: set[str]) -> Any:
    task = await svc.get_task("web", key)
    return task if set(task.depends_on) == wanted else None


# -- rows that cannot be applied ------------------------------------------------------------------

BROKEN = [
    pytest.param(STATUS, "bogus", "unknown status", id="unknown-status"),
    pytest.param(DEPS, "WEB-99", "WEB-99", id="unknown-dependency"),
    pytest.param(DEPS, "WEB-2", "cycle", id="cycle"),
    pytest.param(None, None, "cells", id="bad-cell-count"),
    # done -> in-progress by the file alone is held back with a conflict marker instead (issue 17,
    # tests/integration/test_sync_file_ops.py::test_file_alone_never_moves_a_task_out_of_done)
]


@pytest.mark.parametrize(("column", "value", "message"), BROKEN)
async def test_broken_row_is_neither_applied_nor_dropped(
    svc: QueueService, workspace: Path, column: int | None, value: str | None, message: str
) -> None:
    path = await started(svc, workspace, "Design the schema", "Write the login page")
    await svc.update_task("web", "WEB-2", {"depends_on": ["WEB-1"]})
    await svc.update_task("web", "WEB-1", {"status": "done"})
    async with running(svc) as manager:
        text = await shows(path, "WEB-2", "| done |")
        await manager.wait_idle()
        before = await svc.get_task("web", "WEB-1")
        if column is None:
            broken = text.replace(row_line(text, "WEB-1"), row_line(text, "WEB-1") + " extra |")
        else:
            assert value is not None
            broken = set_cell(text, "WEB-1", column, value)
        typed = row_line(broken, "WEB-1")
        editor_save(path, broken)
        text = await shows(path, "sync-error")
        status = await eventually(lambda: _errors(svc), "the error in the sync status")
        after = await svc.get_task("web", "WEB-1")
        # the DB kept its state, the row stays as typed with the marker above it
        assert after.version == before.version
        assert row_line(text, "WEB-1") == typed
        marker = line_before(text, "WEB-1")
        assert marker.startswith("<!-- sync-error:")
        assert message in marker
        assert status[0]["key"] == "WEB-1"
        assert message in status[0]["message"]
        # the rest of the file is untouched by the failure: the other row still syncs
        await svc.update_task("web", "WEB-2", {"requires": {"model": "bob"}})  # agent column of a not-started row
        text = await shows(path, "bob")
        assert row_line(text, "WEB-1") == typed
        # fixing the row clears the marker and the error
        editor_save(path, text.replace(typed, row_line(await _render_ok(path, text), "WEB-1")))
        await eventually(lambda: "sync-error" not in path.read_text(), "the marker to go")
        await eventually(lambda: _no_errors(svc), "the error to leave the status")


async def _render_ok(path: Path, text: str) -> str:
    """The text with WEB-1's row as the service would render it (done, no deps)."""
    line = row_line(text, "WEB-1")
    cells = [" WEB-1 ", " done ", " Design the schema ", " — ", " P2 ", " — ", " — "]
    return text.replace(line, "|" + "|".join(cells) + "|")


async def _errors(svc: QueueService) -> list[dict[str, Any]] | None:
    files = (await sync_status(svc, "web"))["files"]
    return files[0]["errors"] or None


async def _no_errors(svc: QueueService) -> bool:
    files = (await sync_status(svc, "web"))["files"]
    return not files[0]["errors"]


async def test_new_row_with_unknown_dependency_stays_with_a_marker(svc: QueueService, workspace: Path) -> None:
    path = await started(svc, workspace, "Design the schema")
    async with running(svc):
        text = await shows(path, "WEB-1")
        new_row = "| + | todo | Needs a ghost | — | P2 | GHOST-1 | — |"
        editor_save(path, text.replace(row_line(text, "WEB-1"), row_line(text, "WEB-1") + "\n" + new_row))
        text = await shows(path, "sync-error")
    assert new_row in text
    assert "GHOST-1" in text.splitlines()[text.splitlines().index(new_row) - 1]
    assert [t.key for t in (await svc.list_tasks("web")).items] == ["WEB-1"]


# -- deleted rows -----------------------------------------------------------------------------------


async def test_deleted_row_cancels_an_unchanged_task(svc: QueueService, workspace: Path) -> None:
    path = await started(svc, workspace, "Design the schema", "Write the login page")
    async with running(svc) as manager:
        text = await shows(path, "WEB-2")
        editor_save(path, text.replace(row_line(text, "WEB-2") + "\n", ""))
        await task_is(svc, "WEB-2", status=TaskStatus.CANCELLED)
        await manager.wait_idle()
        await eventually(lambda: syncer(manager).cycles >= 3, "a few more cycles")
        await manager.wait_idle()
    assert "WEB-2" not in path.read_text()  # the row stays gone


async def test_deleted_row_of_a_changed_task_is_restored(svc: QueueService, workspace: Path) -> None:
    path = await started(svc, workspace, "Design the schema", "Write the login page")
    async with running(svc) as manager:
        text = await shows(path, "WEB-2")
        await manager.wait_idle()
        async with SyncLock(path).hold():
            await svc.update_task("web", "WEB-2", {"priority": "P0"})
            editor_save(path, text.replace(row_line(text, "WEB-2") + "\n", ""))
        text = await shows(path, "WEB-2", "sync-conflict")
    task = await svc.get_task("web", "WEB-2")
    assert task.status is TaskStatus.NOT_STARTED
    assert cell(text, "WEB-2", PRIORITY) == "P0"
    assert "restored" in line_before(text, "WEB-2")


# -- no write loop, locking, failures -----------------------------------------------------------------


async def test_no_write_loop(svc: QueueService, workspace: Path) -> None:
    path = await started(svc, workspace, "Design the schema")
    async with running(svc) as manager:
        await shows(path, "WEB-1")
        fs = syncer(manager)
        await manager.wait_idle()
        writes = fs.writes
        # a change in the database: exactly one write, however many cycles follow
        await svc.update_task("web", "WEB-1", {"requires": {"model": "carol"}})
        await shows(path, "carol")
        cycles = fs.cycles
        await eventually(lambda: fs.cycles >= cycles + 3, "three more cycles (rescans)")
        await manager.wait_idle()
        assert fs.writes == writes + 1
        # a hand edit the service has nothing to add to: no write at all
        text = path.read_text()
        editor_save(path, set_cell(text, "WEB-1", STATUS, "done"))
        edited_inode = path.stat().st_ino
        await task_is(svc, "WEB-1", status=TaskStatus.DONE)
        cycles = fs.cycles
        await eventually(lambda: fs.cycles >= cycles + 3, "three more cycles (rescans)")
        await manager.wait_idle()
        assert fs.writes == writes + 1
        # still the editor's file: the service did not replace it (inode numbers freed by earlier
        # renames may be reused, so only "unchanged since the edit" is meaningful)
        assert path.stat().st_ino == edited_inode


async def test_two_managers_on_one_file_create_a_new_row_once(svc: QueueService, workspace: Path) -> None:
    path = await started(svc, workspace, "Design the schema")
    async with running(svc) as first, running(svc) as second:
        text = await shows(path, "WEB-1")
        await first.wait_idle()
        await second.wait_idle()
        editor_save(path, text + "| + | todo | Only once | — | P2 | — | — |\n")
        await shows(path, "| WEB-2 |")
        await first.wait_idle()
        await second.wait_idle()
    assert [t.key for t in (await svc.list_tasks("web")).items] == ["WEB-1", "WEB-2"]
    assert path.read_text().count("Only once") == 1


async def test_missing_workspace_is_reported_and_picked_up_later(
    svc: QueueService, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    workspace = tmp_path / "not-yet"
    await svc.create_project({"slug": "web", "workspace": str(workspace)})
    await svc.create_task("web", {"title": "Design the schema"})
    caplog.set_level(logging.WARNING, "workspace_sync")
    async with running(svc) as manager:
        status = await eventually(lambda: _problem(manager), "the problem in the status")
        assert "does not exist" in status
        fs = syncer(manager)
        cycles = fs.cycles
        await eventually(lambda: fs.cycles >= cycles + 2, "retries on rescan")
        assert sum("does not exist" in r.getMessage() for r in caplog.records) == 1  # logged once
        workspace.mkdir()
        await shows(workspace / "TASKS.md", "WEB-1")
        await eventually(lambda: _problem(manager, none=True), "the problem to clear")


async def _problem(manager: WorkspaceSyncManager, none: bool = False) -> Any:
    files = (await manager.status("web"))["files"]
    problem = files[0]["problem"]
    return (problem is None) if none else problem


async def test_inotify_limit_falls_back_to_polling(
    svc: QueueService, workspace: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import workspace_sync.watcher as watcher

    class Exhausted:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def start(self) -> None:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

        def stop(self) -> None:
            pass

        def join(self, timeout: float | None = None) -> None:
            pass

    monkeypatch.setattr(watcher, "Observer", Exhausted)
    caplog.set_level(logging.WARNING, "workspace_sync")
    path = await started(svc, workspace, "Design the schema")
    async with running(svc, sync_rescan_seconds=30.0) as manager:
        text = await shows(path, "WEB-1")
        assert manager.polling_fallback is not None
        assert (await manager.status("web"))["watch"] == "polling"
        editor_save(path, set_cell(text, "WEB-1", STATUS, "done"))
        await task_is(svc, "WEB-1", status=TaskStatus.DONE)  # the poller saw it (rescans are 30 s apart)
    assert any("falls back to polling" in r.getMessage() for r in caplog.records)


async def test_strict_coord_renders_coords_columns(svc: QueueService, workspace: Path) -> None:
    path = await started(svc, workspace, "Design the schema")
    await svc.update_task("web", "WEB-1", {"extra": {"branch": "feat/schema"}})
    report = await FileSync(svc, "web", "default", path, strict_coord=True).sync()
    assert report.wrote
    text = path.read_text()
    assert "| " + " | ".join(COORD_COLUMNS) + " |" in text
    assert cell(text, "WEB-1", 5) == "feat/schema"


async def test_project_created_later_is_picked_up(svc: QueueService, workspace: Path) -> None:
    async with running(svc):
        path = await started(svc, workspace, "Design the schema")
        await shows(path, "WEB-1")


# -- the coord samples ------------------------------------------------------------------------------

SAMPLE_FILES = [
    pytest.param("coord-TASKS.md", "CR", "CR-02-01", id="coord"),
    pytest.param("coord-TASKS-wide.md", "GW", "GW-003", id="coord-wide"),
]


@pytest.mark.parametrize(("sample", "prefix", "edit_key"), SAMPLE_FILES)
async def test_sample_is_adopted_byte_for_byte_and_syncs(
    svc: QueueService, workspace: Path, sample: str, prefix: str, edit_key: str
) -> None:
    original = (SAMPLES / sample).read_bytes()
    path = workspace / "TASKS.md"
    shutil.copyfile(SAMPLES / sample, path)
    await svc.create_project({"slug": "web", "workspace": str(workspace), "key_prefix": prefix})
    async with running(svc) as manager:
        await eventually(lambda: _synced(svc), "the adoption")
        await manager.wait_idle()
        fs = syncer(manager)
        cycles = fs.cycles
        await eventually(lambda: fs.cycles >= cycles + 2, "more cycles")
        await manager.wait_idle()
        assert path.read_bytes() == original  # adopted without rewriting a byte
        assert fs.writes == 0
        tasks = {t.key: t for t in (await svc.list_tasks("web", limit=100)).items}
        expected_keys = [line.split("|")[1].strip() for line in original.decode().splitlines() if _is_row(line)]
        assert list(tasks) == expected_keys
        for line in original.decode().splitlines():
            if _is_row(line):
                key = line.split("|")[1].strip()
                assert tasks[key].status.value == line.split("|")[2].strip()
        # a hand edit reaches the DB; an API task continues the project's own sequence
        editor_save(path, set_cell(path.read_text(), edit_key, 1, "in-progress"))
        await task_is(svc, edit_key, status=TaskStatus.IN_PROGRESS)
        new = await svc.create_task("web", {"title": "Brand new"})
        assert new.key == f"{prefix}-1"
        text = await shows(path, f"| {prefix}-1 |", "Brand new")
        # only the edited row and the new row differ from the sample
        changed = set(text.splitlines()) ^ set(original.decode().splitlines())
        assert {line.split("|")[1].strip() for line in changed if line.startswith("|")} == {edit_key, f"{prefix}-1"}
        assert all(line.startswith("|") for line in changed), changed
    if sample == "coord-TASKS.md":
        cr = tasks["CR-01-04"]
        assert cr.title == "Price rounding rules | currency edge cases"
        assert cr.extra == {"issue": "#44", "branch": "fix/rounding", "estimate": "3K", "notes": "QA: check JPY"}
        assert cr.milestone == "1"
        assert tasks["CR-02-04"].depends_on == ("CR-02-01", "CR-02-03")
        mission = await svc.get_mission("web", "default")
        assert [(m.id, m.name) for m in mission.milestones] == [("1", "Cart service foundation"), ("2", "Payment flow")]
    else:
        gw = tasks["GW-001"]
        assert gw.extra["blocks"] == "GW-002"
        assert gw.extra["used"] == "1.8K"
        assert tasks["GW-003"].extra["notes"] == "needs a flaky-network harness"


def _is_row(line: str) -> bool:
    return line.startswith("| ") and not line.startswith("| id") and not line.startswith("| ---")


async def _synced(svc: QueueService) -> bool:
    files = (await sync_status(svc, "web"))["files"]
    return bool(files and files[0]["synced"])


# -- CLI and API --------------------------------------------------------------------------------------


async def test_api_route_shows_sync_errors(workspace: Path) -> None:
    from queue_service.app import create_app
    from tests.unit.api_support import http_client
    from tests.unit.api_support import running as app_running
    from tests.unit.api_support import settings as api_settings

    async with InMemoryBackend(config=FAST) as backend:
        # the API names a workspace relative to the operator's root (issue 9)
        config = api_settings(sync=True, sync_rescan_seconds=0.5, sync_debounce_seconds=0.1, workspace=workspace.parent)
        app = create_app(config, backend=backend)
        async with app_running(app), http_client(app) as client:
            response = await client.post("/v1/projects", json={"slug": "web", "workspace": workspace.name})
            assert response.status_code == 201, response.text
            response = await client.post("/v1/projects/web/tasks", json={"title": "Design the schema"})
            assert response.status_code == 201, response.text
            path = workspace / "TASKS.md"
            text = await shows(path, "WEB-1")
            editor_save(path, set_cell(text, "WEB-1", STATUS, "sideways"))
            await shows(path, "sync-error")

            async def errors() -> Any:
                body = (await client.get("/v1/projects/web/sync")).json()
                return body if body["files"][0]["errors"] else None

            body = await eventually(errors, "the error in GET /sync")
    entry = body["files"][0]
    assert entry["path"] == str(path)
    assert entry["errors"][0]["key"] == "WEB-1"
    assert "sideways" in entry["errors"][0]["message"]
    assert body["watch"] in ("inotify", "polling")


def test_cli_sync_once_and_status(workspace: Path) -> None:
    from typer.testing import CliRunner

    from queue_service.cli import app
    from tests.unit.test_cli import Cli

    cli = Cli(InMemoryBackend(config=FAST))
    cli("project", "create", "web", "--workspace", str(workspace))
    cli("task", "add", "Design the schema", "-p", "web")
    result = cli("sync", "web")
    assert "file written" in result.stdout
    path = workspace / "TASKS.md"
    assert "| WEB-1 |" in path.read_text()
    editor_save(path, set_cell(path.read_text(), "WEB-1", STATUS, "nope"))
    result = cli("sync", "web", code=1)
    assert f"{path}:" in result.stdout
    status = json.loads(cli("sync", "web", "--status", "--json", code=1).stdout)
    assert status["files"][0]["errors"][0]["key"] == "WEB-1"
    help_text = CliRunner().invoke(app, ["sync", "--help"]).stdout
    assert "--watch" in help_text and "--strict-coord" in help_text


async def test_flatfile_backend_syncs_both_ways(tmp_path: Path, workspace: Path) -> None:
    from flatfile.backend import FlatfileBackend

    async with FlatfileBackend(tmp_path / "queue-data", config=FAST) as backend:
        svc = QueueService(backend, workspaces=WorkspacePolicy(operator=True))
        path = await started(svc, workspace, "Design the schema")
        async with running(svc):
            text = await shows(path, "WEB-1")
            editor_save(path, set_cell(text, "WEB-1", STATUS, "done") + "| + | todo | Next | — | P2 | WEB-1 | — |\n")
            await task_is(svc, "WEB-1", status=TaskStatus.DONE)
            await shows(path, "| WEB-2 |")
            await svc.update_task("web", "WEB-2", {"requires": {"model": "dora"}})
            await shows(path, "dora")

            async def in_base() -> bool:
                rows = await svc.get_sync_rows("web", str(path))
                return set(rows) == {"WEB-1", "WEB-2"}

            await eventually(in_base, "both tasks in the stored base")


async def test_row_with_a_new_explicit_key_and_a_dependency_on_it_in_one_save(
    svc: QueueService, workspace: Path
) -> None:
    path = await started(svc, workspace, "Design the schema")
    async with running(svc):
        text = await shows(path, "WEB-1")
        edited = (
            set_cell(text, "WEB-1", DEPS, "API-7") + "| API-7 | todo | Imported with its own id | — | P1 | — | — |\n"
        )
        editor_save(path, edited)
        task = await task_is(svc, "WEB-1", depends_on=("API-7",))
        assert (await svc.get_task("web", "API-7")).title == "Imported with its own id"
        text = await shows(path, "API-7")
    assert "sync-error" not in text
    assert task.status is TaskStatus.NOT_STARTED
