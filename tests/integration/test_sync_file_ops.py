"""TASKS.md sync under real file operations (issue 17): truncation, old copies, moved workspaces, typos.

Every test runs the real manager (inotify watcher, DB events, rescans) over a temporary workspace and
changes the file the way people and tools do: ``: > TASKS.md`` (truncate in place), ``git checkout``
of an old version (a real git repository), ``cp`` of a backup (write in place), an editor saving a
stale buffer (temp file + rename). Conditions are polled with a deadline; nothing asserts on timing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from queue_service.models import TaskStatus
from queue_service.service import QueueService
from queue_service.testing import InMemoryBackend
from queue_service.workspaces import WorkspacePolicy
from tests.integration.sync_support import FAST, cell, editor_save, eventually, line_before, row_line, set_cell
from tests.integration.test_sync import STATUS, TITLE, _synced, running, shows, started, syncer, task_is
from workspace_sync.engine import FileSync
from workspace_sync.manager import sync_status
from workspace_sync.writer import SyncLock


@pytest.fixture
async def svc() -> AsyncIterator[QueueService]:
    async with InMemoryBackend(config=FAST) as backend:
        # the test is the operator: it names its own temporary workspace (issue 9)
        yield QueueService(backend, workspaces=WorkspacePolicy(operator=True))


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "ws"
    path.mkdir()
    return path


async def _settled(manager: object, rounds: int = 3) -> None:
    """Let a few more cycles (rescans) run, then wait until none is pending."""
    fs = syncer(manager)  # type: ignore[arg-type]
    cycles = fs.cycles
    await eventually(lambda: fs.cycles >= cycles + rounds, f"{rounds} more cycles")
    await manager.wait_idle()  # type: ignore[attr-defined]


async def _notes(svc: QueueService, key: str) -> list[str]:
    return [n.text for n in await svc.list_notes("web", key) if n.author == "workspace-sync"]


async def _complete(svc: QueueService, agent: str = "agent-1") -> str:
    claim = await svc.claim("web", agent)
    assert claim is not None
    await svc.complete("web", claim.task.key, claim.lease.token, {"ok": True})
    return claim.task.key


def _git(cwd: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@x"
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env=env)


# -- finding 1: truncation ------------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["", "\n\n", "# Tasks — web\n\nJust prose now.\n"], ids=["empty", "blank", "prose"])
async def test_truncated_or_tableless_file_cancels_nothing(svc: QueueService, workspace: Path, content: str) -> None:
    path = await started(svc, workspace, "Design the schema", "Write the login page")
    async with running(svc) as manager:
        await shows(path, "WEB-2")
        await manager.wait_idle()
        with path.open("w", encoding="utf-8") as handle:  # `: > TASKS.md` truncates in place
            handle.write(content)
        text = await shows(path, "| WEB-1 |", "| WEB-2 |")
        await _settled(manager)
    for key in ("WEB-1", "WEB-2"):
        assert (await svc.get_task("web", key)).status is TaskStatus.NOT_STARTED
    if content.strip():
        assert "Just prose now." in text  # the person's prose stays


# -- finding 2: old copies ------------------------------------------------------------------------------


async def _diverge(svc: QueueService, path: Path) -> None:
    """After the old copy was taken: an agent finishes WEB-1, the API retitles WEB-2 and adds WEB-4."""
    assert await _complete(svc) == "WEB-1"
    await svc.update_task("web", "WEB-2", {"title": "Write the login page (API)"})
    await svc.create_task("web", {"title": "Created through the API"})
    await shows(path, "| done |", "(API)", "| WEB-4 |")


async def _nothing_lost(svc: QueueService, path: Path) -> str:
    """The database state won everywhere the file went backwards, with markers and notes."""
    one = await svc.get_task("web", "WEB-1")
    assert one.status is TaskStatus.DONE
    assert (await svc.get_task("web", "WEB-2")).title == "Write the login page (API)"
    assert (await svc.get_task("web", "WEB-4")).status is TaskStatus.NOT_STARTED
    text = await shows(path, "| WEB-4 |", "(API)", "sync-conflict")
    assert cell(text, "WEB-1", STATUS) == "done"
    assert "sync-conflict" in line_before(text, "WEB-1")
    assert "accept-file" in line_before(text, "WEB-1")
    assert await _notes(svc, "WEB-1")
    return text


async def test_git_checkout_of_an_old_version_loses_nothing(svc: QueueService, workspace: Path) -> None:
    path = await started(svc, workspace, "Design the schema", "Write the login page", "Ship it")
    async with running(svc) as manager:
        await shows(path, "WEB-3")
        await manager.wait_idle()
        _git(workspace, "init", "-q")
        _git(workspace, "add", "TASKS.md")
        _git(workspace, "commit", "-q", "-m", "tasks")
        await _diverge(svc, path)
        await manager.wait_idle()
        _git(workspace, "checkout", "--", "TASKS.md")
        await _nothing_lost(svc, path)
        await _settled(manager)
        await _nothing_lost(svc, path)


async def test_cp_of_a_backup_loses_nothing(svc: QueueService, workspace: Path, tmp_path: Path) -> None:
    path = await started(svc, workspace, "Design the schema", "Write the login page", "Ship it")
    backup = tmp_path / "TASKS.md.bak"
    async with running(svc) as manager:
        await shows(path, "WEB-3")
        await manager.wait_idle()
        shutil.copyfile(path, backup)
        await _diverge(svc, path)
        await manager.wait_idle()
        subprocess.run(["cp", str(backup), str(path)], check=True)  # in place, same inode
        await _nothing_lost(svc, path)
        await _settled(manager)


async def test_accept_file_applies_what_was_held(svc: QueueService, workspace: Path, tmp_path: Path) -> None:
    path = await started(svc, workspace, "Design the schema", "Write the login page", "Ship it")
    backup = tmp_path / "TASKS.md.bak"
    async with running(svc) as manager:
        await shows(path, "WEB-3")
        await manager.wait_idle()
        shutil.copyfile(path, backup)
        await _diverge(svc, path)
        await manager.wait_idle()
        shutil.copyfile(backup, path)
        await _nothing_lost(svc, path)
        await manager.wait_idle()
        async with SyncLock(path).hold():
            pass
        report = await FileSync(svc, "web", "default", path).sync(accept_file=True)
    assert "WEB-1" in report.updated
    assert "WEB-4" in report.cancelled
    assert (await svc.get_task("web", "WEB-1")).status is TaskStatus.NOT_STARTED
    assert (await svc.get_task("web", "WEB-2")).title == "Write the login page"
    assert (await svc.get_task("web", "WEB-4")).status is TaskStatus.CANCELLED
    assert "sync-conflict" not in path.read_text()


async def test_stale_buffer_beside_a_running_agent_reverts_no_completion(svc: QueueService, workspace: Path) -> None:
    titles = [f"Task {i}" for i in range(1, 9)]
    path = await started(svc, workspace, *titles)
    async with running(svc) as manager:
        buffer = await shows(path, "WEB-8")
        await manager.wait_idle()
        done = [await _complete(svc, f"agent-{i}") for i in range(5)]
        await shows(path, *(f"| {k} | done |" for k in done))
        await manager.wait_idle()
        versions = {key: (await svc.get_task("web", key)).version for key in done}
        # the person edits one cell of the buffer they opened before the agent ran, and saves it
        editor_save(path, set_cell(buffer, "WEB-8", TITLE, "Task 8, reworded"))
        await task_is(svc, "WEB-8", title="Task 8, reworded")
        await _settled(manager)
        for key in done:
            task = await svc.get_task("web", key)
            assert task.status is TaskStatus.DONE, key
            assert task.version == versions[key], key  # untouched: not reverted, never ran again
        claim = await svc.claim("web", "agent-x")
        assert claim is not None
        assert claim.task.key == "WEB-6"  # the next undone task, not a reverted one
        text = path.read_text()
    assert all(cell(text, key, STATUS) == "done" for key in done)


async def test_file_alone_never_moves_a_task_out_of_done(svc: QueueService, workspace: Path) -> None:
    path = await started(svc, workspace, "Design the schema")
    await svc.update_task("web", "WEB-1", {"status": "done"})
    async with running(svc) as manager:
        text = await shows(path, "| done |")
        await manager.wait_idle()
        editor_save(path, set_cell(text, "WEB-1", STATUS, "todo"))
        text = await shows(path, "sync-conflict")
        await _settled(manager)
    assert (await svc.get_task("web", "WEB-1")).status is TaskStatus.DONE
    assert cell(path.read_text(), "WEB-1", STATUS) == "done"
    assert "never moves a task out of it" in line_before(text, "WEB-1")
    assert await _notes(svc, "WEB-1")


async def test_file_alone_never_moves_running_work_back(svc: QueueService, workspace: Path) -> None:
    path = await started(svc, workspace, "Design the schema", "Write the login page")
    async with running(svc) as manager:
        text = await shows(path, "WEB-2")
        claim = await svc.claim("web", "agent-1")
        assert claim is not None
        text = await shows(path, "| in-progress |")
        await manager.wait_idle()
        editor_save(path, set_cell(text, "WEB-1", STATUS, "todo"))
        text = await shows(path, "sync-conflict")
        await _settled(manager)
        task = await svc.get_task("web", "WEB-1")
        assert task.status is TaskStatus.IN_PROGRESS
        assert task.lease_holder == "agent-1"
        assert "kept in-progress" in line_before(text, "WEB-1")
        # forward is an edit: a person may finish running work by hand
        editor_save(path, set_cell(path.read_text(), "WEB-1", STATUS, "done"))
        await task_is(svc, "WEB-1", status=TaskStatus.DONE)


async def test_more_than_three_removed_rows_cancel_nothing(svc: QueueService, workspace: Path) -> None:
    path = await started(svc, workspace, *(f"Task {i}" for i in range(1, 7)))
    async with running(svc) as manager:
        text = await shows(path, "WEB-6")
        await manager.wait_idle()
        for key in ("WEB-2", "WEB-3", "WEB-4", "WEB-5"):
            text = text.replace(row_line(text, key) + "\n", "")
        editor_save(path, text)
        text = await shows(path, "| WEB-5 |", "sync-conflict")
        await _settled(manager)
        tasks = {t.key: t.status for t in (await svc.list_tasks("web")).items}
        assert set(tasks.values()) == {TaskStatus.NOT_STARTED}
        assert "at most 3" in line_before(text, "WEB-2")
        # three at once is an edit: applied
        text = path.read_text()
        for key in ("WEB-2", "WEB-3", "WEB-4"):
            text = text.replace(row_line(text, key) + "\n", "")
        editor_save(path, text)
        await task_is(svc, "WEB-4", status=TaskStatus.CANCELLED)
    assert (await svc.get_task("web", "WEB-2")).status is TaskStatus.CANCELLED


# -- finding 3: milestones from the API -------------------------------------------------------------------


async def test_milestone_set_through_the_api_survives(svc: QueueService, workspace: Path) -> None:
    path = await started(svc, workspace, "Design the schema")
    async with running(svc) as manager:
        await shows(path, "WEB-1")
        await manager.wait_idle()
        await svc.create_task("web", {"title": "Milestone work", "milestone": "M9"})
        text = await shows(path, "WEB-2")
        await _settled(manager)
        assert (await svc.get_task("web", "WEB-2")).milestone == "M9"
        await svc.update_task("web", "WEB-1", {"milestone": "M9"})
        await shows(path, "| WEB-1 |")
        await _settled(manager)
        assert (await svc.get_task("web", "WEB-1")).milestone == "M9"
        text = path.read_text()
    assert "## M9" in text or "## Milestone M9" in text
    assert text.index("WEB-2") > text.index("M9")


# -- finding 4: recreated workspace directory ----------------------------------------------------------


@pytest.mark.parametrize("how", ["recreated", "moved-away-and-back"])
async def test_watch_resumes_after_the_workspace_directory_comes_back(
    svc: QueueService, workspace: Path, tmp_path: Path, how: str
) -> None:
    path = await started(svc, workspace, "Design the schema")
    # rescans only when asked: a file event is the only thing that starts a cycle on its own
    async with running(svc, sync_rescan_seconds=3600) as manager:
        text = await shows(path, "WEB-1")
        await manager.wait_idle()
        if how == "recreated":
            shutil.rmtree(workspace)
            workspace.mkdir()
            path.write_text(text, encoding="utf-8")
        else:
            aside = tmp_path / "aside"
            workspace.rename(aside)
            aside.rename(workspace)
        await manager.rescan()  # what the periodic rescan does
        await manager.wait_idle()
        editor_save(path, set_cell(path.read_text(), "WEB-1", STATUS, "blocked"))
        await task_is(svc, "WEB-1", status=TaskStatus.BLOCKED)


# -- finding 6 --------------------------------------------------------------------------------------------


async def test_stale_buffer_with_a_plus_row_creates_the_task_once(svc: QueueService, workspace: Path) -> None:
    path = await started(svc, workspace, "Design the schema")
    async with running(svc) as manager:
        text = await shows(path, "WEB-1")
        await manager.wait_idle()
        buffer = text + "| + | todo | Write the login page | — | P2 | — | — |\n"
        editor_save(path, buffer)
        await shows(path, "| WEB-2 |")
        await manager.wait_idle()
        await svc.update_task("web", "WEB-1", {"requires": {"model": "carol"}})  # something else moves on
        await shows(path, "carol")
        await manager.wait_idle()
        editor_save(path, buffer)  # the editor still had the `+` row
        await shows(path, "| WEB-2 |")
        await _settled(manager)
    titles = [t.title for t in (await svc.list_tasks("web")).items]
    assert titles.count("Write the login page") == 1
    assert path.read_text().count("Write the login page") == 1


async def test_id_typo_neither_cancels_nor_creates(svc: QueueService, workspace: Path) -> None:
    path = await started(svc, workspace, "Design the schema", "Write the login page")
    await svc.update_task("web", "WEB-2", {"depends_on": ["WEB-1"]})
    async with running(svc) as manager:
        text = await shows(path, "WEB-2")
        await manager.wait_idle()
        editor_save(path, text.replace("| WEB-1 |", "| WEB-11 |", 1))
        text = await shows(path, "sync-error")
        await _settled(manager)
        assert (await svc.get_task("web", "WEB-1")).status is TaskStatus.NOT_STARTED
        assert [t.key for t in (await svc.list_tasks("web")).items] == ["WEB-1", "WEB-2"]
        marker = line_before(text, "WEB-11")
        assert "unknown id WEB-11" in marker
        assert "WEB-1 " in marker
        # fixing the id clears the marker
        editor_save(path, path.read_text().replace("| WEB-11 |", "| WEB-1 |", 1))
        await eventually(lambda: "sync-error" not in path.read_text(), "the marker to go")
    assert (await svc.get_task("web", "WEB-1")).status is TaskStatus.NOT_STARTED


async def test_document_level_error_gets_a_marker_in_the_file(svc: QueueService, workspace: Path) -> None:
    path = await started(svc, workspace, "Design the schema")
    async with running(svc) as manager:
        text = await shows(path, "WEB-1")
        await manager.wait_idle()
        header = next(line for line in text.splitlines() if line.startswith("| id"))
        editor_save(path, text.replace(header, header.replace("| notes |", "| description |"), 1))
        text = await shows(path, "<!-- sync-error: line")
        await _settled(manager)
        assert path.read_text().count("<!-- sync-error: line") == 1  # stable, not repeated
        editor_save(path, path.read_text().replace("| description |\n", "| notes |\n", 1))
        await eventually(lambda: "sync-error" not in path.read_text(), "the marker to go")
    assert "column" in text


async def test_new_projects_file_appears_without_waiting_for_a_rescan(svc: QueueService, workspace: Path) -> None:
    async with running(svc, sync_rescan_seconds=3600):
        path = await started(svc, workspace, "Design the schema")
        await shows(path, "WEB-1")


async def test_adoption_keeps_the_file_byte_identical(svc: QueueService, workspace: Path) -> None:
    original = "# Tasks — web\n\nNo marker line, no Details.\n\n| id | status | description |\n| --- | --- | --- |\n"
    original += "| WEB-1 | todo | Design the schema |\n"
    path = workspace / "TASKS.md"
    path.write_text(original, encoding="utf-8")
    await svc.create_project({"slug": "web", "workspace": str(workspace)})
    async with running(svc) as manager:
        await eventually(lambda: _synced(svc), "the adoption")
        await _settled(manager)
        assert (await svc.get_task("web", "WEB-1")).title == "Design the schema"
        assert path.read_text(encoding="utf-8") == original
        assert syncer(manager).writes == 0


# -- finding 7: solo mode ----------------------------------------------------------------------------------


def _qs(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "queue_service", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_solo_cli_keeps_the_file_in_step_and_reports_pending_edits(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUE_")}
    env["QUEUE_BACKEND_URL"] = f"file://{tmp_path / 'data'}"
    assert _qs(env, "project", "create", "web", "--workspace", str(ws)).returncode == 0
    assert _qs(env, "task", "add", "Design the schema", "-p", "web").returncode == 0
    path = ws / "TASKS.md"
    assert "| WEB-1 |" in path.read_text()  # written by the command itself, no `qs sync`
    editor_save(path, set_cell(path.read_text(), "WEB-1", STATUS, "blocked"))
    status = json.loads(_qs(env, "sync", "web", "--status", "--json").stdout)
    assert status["files"][0]["pending"] is True
    human = _qs(env, "sync", "web", "--status").stdout
    assert "pending" in human
    # the next direct command merges the hand edit
    assert _qs(env, "task", "add", "Write the login page", "-p", "web").returncode == 0
    shown = json.loads(_qs(env, "task", "show", "WEB-1", "-p", "web", "--json").stdout)
    assert shown["task"]["status"] == "blocked"
    assert "| WEB-2 |" in path.read_text()
    status = json.loads(_qs(env, "sync", "web", "--status", "--json").stdout)
    assert status["files"][0]["pending"] is False


async def test_status_reports_a_pending_edit(svc: QueueService, workspace: Path) -> None:
    path = await started(svc, workspace, "Design the schema")
    await FileSync(svc, "web", "default", path).sync()
    assert (await sync_status(svc, "web"))["files"][0]["pending"] is False
    editor_save(path, set_cell(path.read_text(), "WEB-1", STATUS, "blocked"))
    assert (await sync_status(svc, "web"))["files"][0]["pending"] is True
