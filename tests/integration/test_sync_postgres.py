"""Workspace sync end to end on Postgres + Valkey: adopt a coord file, edit by hand, agents, new rows."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from queue_service.models import TaskStatus
from queue_service.postgres.backend import PostgresValkeyBackend
from queue_service.service import QueueService
from queue_service.workspaces import WorkspacePolicy
from tests.integration.sync_support import (
    FAST,
    SAMPLES,
    cell,
    editor_save,
    eventually,
    row_line,
    set_cell,
    sync_options,
)
from workspace_sync.manager import WorkspaceSyncManager, sync_status

pytestmark = pytest.mark.postgres


@pytest.fixture
async def svc(pg_url: str, valkey_url: str, valkey_prefix: str) -> AsyncIterator[QueueService]:
    async with PostgresValkeyBackend(pg_url, valkey_url, FAST, key_prefix=valkey_prefix) as backend:
        yield QueueService(backend, workspaces=WorkspacePolicy(operator=True))


async def test_end_to_end_on_postgres(svc: QueueService, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    path = workspace / "TASKS.md"
    shutil.copyfile(SAMPLES / "coord-TASKS.md", path)
    original = path.read_bytes()
    await svc.create_project({"slug": "checkout", "workspace": str(workspace), "key_prefix": "CR"})

    async def status(key: str, wanted: TaskStatus) -> Any:
        task = await svc.get_task("checkout", key)
        return task if task.status is wanted else None

    async def synced() -> bool:
        files = (await sync_status(svc, "checkout"))["files"]
        return bool(files[0]["synced"])

    async with WorkspaceSyncManager(svc, sync_options()) as manager:
        await eventually(synced, "the adoption")
        await manager.wait_idle()
        assert path.read_bytes() == original
        assert len((await svc.list_tasks("checkout")).items) == 8

        # hand edit -> DB (the base lives in Postgres)
        editor_save(path, set_cell(path.read_text(), "CR-02-01", 1, "todo"))
        editor_save(path, set_cell(path.read_text(), "CR-01-03", 1, "done"))
        await eventually(lambda: status("CR-01-03", TaskStatus.DONE), "the hand edit in Postgres")

        # an agent completes a task -> file (events arrive through Valkey)
        claim = await svc.claim("checkout", "agent-1")
        assert claim is not None
        assert claim.task.key == "CR-02-01"
        await svc.complete("checkout", claim.task.key, claim.lease.token)
        await eventually(lambda: cell(path.read_text(), "CR-02-01", 1) == "done", "the completion in the file")

        # a new row gets the project's next key
        text = path.read_text()
        new_row = "| + | todo | Refund flow | — | sonnet | feat/refunds | CR-02-01 | 6K | — |"
        editor_save(path, text.replace(row_line(text, "CR-02-04"), row_line(text, "CR-02-04") + "\n" + new_row))
        await eventually(lambda: "| CR-1 |" in path.read_text(), "the new key in the file")
        task = await svc.get_task("checkout", "CR-1")
        assert task.extra["branch"] == "feat/refunds"
        assert task.milestone == "2"
        assert task.depends_on == ("CR-02-01",)

        async def in_base() -> bool:
            return "CR-1" in await svc.get_sync_rows("checkout", str(path))

        await eventually(in_base, "the new task in the stored base")
