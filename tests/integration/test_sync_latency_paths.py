"""Issue 17, cost and latency of a sync cycle, on the real file system:

* the watcher says whether a write finished (renamed into place, closed after writing), and such a
  save is applied without waiting for the debounce (it was most of the save -> database latency);
* the list of row errors is stored apart from the sync state and only rewritten when it changes
  (2,000 error rows made every cycle rewrite ~300 KB).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from flatfile.backend import FlatfileBackend
from queue_service.service import QueueService
from queue_service.workspaces import WorkspacePolicy
from tests.integration.sync_support import FAST, editor_save, eventually, set_cell
from tests.integration.test_sync import TITLE, running, shows, started, task_is
from workspace_sync.engine import errors_key
from workspace_sync.manager import sync_status
from workspace_sync.watcher import CHANGED, SAVED, DirectoryWatcher


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "ws"
    path.mkdir()
    return path


async def test_watcher_says_whether_a_write_finished(workspace: Path) -> None:
    path = workspace / "TASKS.md"
    path.write_text("old\n", encoding="utf-8")
    got: list[tuple[str, str]] = []
    watcher = DirectoryWatcher(asyncio.get_running_loop(), lambda p, kind: got.append((os.path.basename(p), kind)))
    watcher.watch(workspace)
    try:
        editor_save(path, "renamed into place\n")
        await eventually(lambda: got, "the rename's event")
        assert got == [("TASKS.md", SAVED)]  # the temp file's own events are dropped
        got.clear()
        with path.open("w", encoding="utf-8") as fh:
            fh.write("written in place\n")
            fh.flush()
            await eventually(lambda: got, "the in-place write's event")
            assert set(got) == {("TASKS.md", CHANGED)}  # still open: the write may go on
        await eventually(lambda: got[-1] == ("TASKS.md", SAVED), "the close after writing")
    finally:
        watcher.stop()


@pytest.fixture
async def svc(tmp_path: Path) -> AsyncIterator[QueueService]:
    async with FlatfileBackend(tmp_path / "data", config=FAST) as backend:
        yield QueueService(backend, workspaces=WorkspacePolicy(operator=True))


async def test_a_finished_save_does_not_wait_for_the_debounce(svc: QueueService, workspace: Path) -> None:
    path = await started(svc, workspace, "Design", "Build")
    # a debounce and rescan far longer than the test's deadline: only the finished-save path applies it
    async with running(svc, sync_debounce_seconds=120.0, sync_rescan_seconds=120.0) as manager:
        text = await shows(path, "| WEB-2 |")
        await manager.wait_idle()
        editor_save(path, set_cell(text, "WEB-2", TITLE, "Build it fast"))
        await task_is(svc, "WEB-2", title="Build it fast")


def _bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


async def test_error_list_is_stored_apart_and_only_when_it_changes(
    svc: QueueService, workspace: Path, tmp_path: Path
) -> None:
    path = await started(svc, workspace, "Design", "Build")
    async with running(svc) as manager:
        text = await shows(path, "| WEB-2 |")
        await manager.wait_idle()
        broken = "".join(f"| + | bogus-{i} | Broken {i} | — | P2 | — | — |\n" for i in range(100))
        editor_save(path, text + broken)
        await shows(path, *(f"Broken {i}" for i in (0, 99)))
        status = await eventually(
            lambda: _errors_shown(svc, 100), "the status to list the 100 row errors", timeout=30.0
        )
        await manager.wait_idle()
        stored = await svc.get_sync_state("web", errors_key(str(path)))
        assert stored is not None and len(stored["errors"]) == 100
        error_list = len(json.dumps(stored["errors"]))
        assert "errors" not in (await svc.get_sync_state("web", str(path)) or {})
        data = tmp_path / "data"
        for n in range(3):
            before = _bytes(data)
            editor_save(path, set_cell(path.read_text(encoding="utf-8"), "WEB-1", TITLE, f"Design v{n}"))
            await task_is(svc, "WEB-1", title=f"Design v{n}")
            await manager.wait_idle()
            # the cycle stored the row and the state, not the unchanged error list again
            assert _bytes(data) - before < error_list, (n, _bytes(data) - before, error_list)
        assert len(status["errors"]) == 100


async def _errors_shown(svc: QueueService, count: int) -> dict[str, object] | None:
    entry = (await sync_status(svc, "web"))["files"][0]
    return entry if len(entry["errors"]) == count else None
