"""A workspace laid out as coord leaves it is adopted byte for byte and synced both ways (issue 18).

``docs/TASKS.md``, ``docs/MISSION-MANIFEST.md``, ``.mosaic/orchestrator/{mission,next-task}.json``,
``docs/scratchpads/``: on flatfile and on Postgres + Valkey.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from queue_service.models import MissionStatus, TaskStatus
from queue_service.service import QueueService
from queue_service.testing import InMemoryBackend
from queue_service.workspaces import WorkspacePolicy
from tests.integration.sync_support import FAST, cell, editor_save, eventually, set_cell, sync_options
from workspace_sync.companions import MISSION_SCHEMA
from workspace_sync.manager import WorkspaceSyncManager, sync_once, sync_status

TASKS = """\
# Tasks — Checkout Revamp

> Single-writer: orchestrator only. Workers read but never modify.
> **Schema:** `| id | status | description | issue | agent | branch | depends_on | estimate | notes |`

## Milestone 1 — Cart service foundation

| id | status | description | issue | agent | branch | depends_on | estimate | notes |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
| CR-01-01 | done | Write the PRD | #41 | sonnet | docs/checkout-prd | — | 4K | merged |
| CR-01-02 | in-progress | Cart REST endpoints | #43 | codex | feat/cart-api | CR-01-01 | 12K | — |

## Milestone 2 — Payment flow

| id | status | description | issue | agent | branch | depends_on | estimate | notes |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
| CR-02-01 | not-started | Payment provider adapter | — | — (auto) | feat/pay-adapter | CR-01-02 | 10K | — |
| CR-02-05 | not-started | Refund flow | — | opus | — | — | 3K | — |
"""

MANIFEST = """\
# Mission manifest — Checkout Revamp

Goal: a checkout people finish. Prose here is never touched.

## Milestones

| # | ID | Name | Status | Branch | Issue | Started | Completed |
|---|----|------|--------|--------|-------|---------|-----------|
| 1 | 1 | Cart service foundation | in-progress | feat/cart | #12 | 2026-03-02 | — |
| 2 | 2 | Payment flow | not-started | — | — | — | — |
| 3 | 3 | Launch | not-started | — | — | — | — |

Notes after the table stay as they are.
"""

MISSION = {
    "schema": MISSION_SCHEMA,
    "project": "checkout",
    "mission_id": "default",
    "mission_name": "Checkout Revamp",
    "status": "active",
    "tasks_file": "docs/TASKS.md",
    "manifest_file": "docs/MISSION-MANIFEST.md",
    "quality_gates": ["make lint", "make test"],
    "milestones": [
        {"id": "1", "name": "Cart service foundation", "status": "active"},
        {"id": "2", "name": "Payment flow", "status": "pending"},
        {"id": "3", "name": "Launch", "status": "pending"},
    ],
}


def _coord_workspace(root: Path) -> Path:
    ws = root / "ws"
    (ws / "docs" / "scratchpads").mkdir(parents=True)
    (ws / ".mosaic" / "orchestrator").mkdir(parents=True)
    (ws / "docs" / "TASKS.md").write_text(TASKS)
    (ws / "docs" / "MISSION-MANIFEST.md").write_text(MANIFEST)
    (ws / "docs" / "scratchpads" / "CR-01-02.md").write_text("thinking out loud\n")
    (ws / ".mosaic" / "orchestrator" / "mission.json").write_text(json.dumps(MISSION, indent=2) + "\n")
    (ws / ".mosaic" / "orchestrator" / "next-task.json").write_text('{"project": "checkout"}\n')
    return ws


def _files(ws: Path) -> dict[str, bytes]:
    return {str(p.relative_to(ws)): p.read_bytes() for p in sorted(ws.rglob("*")) if p.is_file()}


async def test_coord_workspace_on_flatfile(tmp_path: Path) -> None:
    from flatfile.backend import FlatfileBackend

    async with FlatfileBackend(tmp_path / "queue-data", config=FAST) as backend:
        policy = WorkspacePolicy(operator=True, data_dir=tmp_path / "queue-data")
        await _adopt_and_sync(QueueService(backend, workspaces=policy), tmp_path)


@pytest.mark.postgres
async def test_coord_workspace_on_postgres(pg_url: str, valkey_url: str, valkey_prefix: str, tmp_path: Path) -> None:
    from queue_service.postgres.backend import PostgresValkeyBackend

    async with PostgresValkeyBackend(pg_url, valkey_url, FAST, key_prefix=valkey_prefix) as backend:
        await _adopt_and_sync(QueueService(backend, workspaces=WorkspacePolicy(operator=True)), tmp_path)


async def _adopt_and_sync(svc: QueueService, tmp_path: Path) -> None:
    """Adopted byte for byte, then both ways: a hand edit reaches the database, an API change the files."""
    ws = _coord_workspace(tmp_path)
    before = _files(ws)
    await svc.create_project({"slug": "checkout", "workspace": str(ws), "key_prefix": "CR"})

    reports = await sync_once(svc)
    assert [r.problem for r in reports] == [None]
    assert reports[0].adopted and reports[0].path == str(ws / "docs" / "TASKS.md")

    # adopted: every file as it was (the sync adds only its lock file), no root TASKS.md
    after = _files(ws)
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(after) - set(before) <= {"docs/.TASKS.md.lock"}
    mission = await svc.get_mission("checkout", "default")
    assert mission.tasks_file == "docs/TASKS.md"  # pinned: the file never moves
    assert (mission.name, mission.quality_gates) == ("Checkout Revamp", ("make lint", "make test"))
    assert [(m.id, m.name, m.status) for m in mission.milestones] == [
        ("1", "Cart service foundation", MissionStatus.ACTIVE),
        ("2", "Payment flow", MissionStatus.PENDING),
        ("3", "Launch", MissionStatus.PENDING),
    ]
    tasks = {t.key: t for t in (await svc.list_tasks("checkout")).items}
    assert sorted(tasks) == ["CR-01-01", "CR-01-02", "CR-02-01", "CR-02-05"]
    assert tasks["CR-02-05"].requires == {"model": "opus"}
    assert tasks["CR-02-01"].requires == {}
    assert tasks["CR-01-02"].assignee == "codex"

    # a second pass changes nothing either
    await sync_once(svc)
    assert _files(ws) == after

    # hand edit of a row -> database
    tasks_md = ws / "docs" / "TASKS.md"
    text = set_cell(tasks_md.read_text(), "CR-02-01", 2, "Payment provider adapter (Stripe)")
    tasks_md.write_text(set_cell(text, "CR-02-01", 4, "sonnet"))
    await sync_once(svc)
    edited = await svc.get_task("checkout", "CR-02-01")
    assert edited.title == "Payment provider adapter (Stripe)"
    assert edited.requires == {"model": "sonnet"} and edited.assignee is None

    # claim + complete through the API -> file (the agent column shows the holder, then who did it)
    # CR-02-05 requires model opus: only an agent with that label may take it (issue 13)
    await svc.register_agent("checkout", {"id": "claude-7", "labels": {"model": "opus"}})
    claim = await svc.claim("checkout", "claude-7")
    assert claim is not None and claim.task.key == "CR-02-05"
    await sync_once(svc)
    assert cell(tasks_md.read_text(), "CR-02-05", 4) == "claude-7"
    await svc.complete("checkout", "CR-02-05", claim.lease.token, "shipped")
    await sync_once(svc)
    text = tasks_md.read_text()
    assert (cell(text, "CR-02-05", 1), cell(text, "CR-02-05", 4)) == ("done", "claude-7")

    # manifest hand edit -> milestone; mission.json follows
    manifest = ws / "docs" / "MISSION-MANIFEST.md"
    manifest.write_text(
        manifest.read_text().replace("| 2 | 2 | Payment flow | not-started |", "| 2 | 2 | Payments | in-progress |")
    )
    await sync_once(svc)
    m2 = (await svc.get_mission("checkout", "default")).milestones[1]
    assert (m2.name, m2.status) == ("Payments", MissionStatus.ACTIVE)
    written = json.loads((ws / ".mosaic" / "orchestrator" / "mission.json").read_text())
    assert written["milestones"][1] == {"id": "2", "name": "Payments", "status": "active"}

    # milestone changed through the API -> its manifest row (date filled), prose untouched
    current = await svc.get_mission("checkout", "default")
    stones = [m.model_dump() for m in current.milestones]
    stones[0]["status"] = "completed"
    await svc.update_mission("checkout", "default", {"id": "default", "name": current.name, "milestones": stones})
    await sync_once(svc)
    text = manifest.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| 1 | 1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "done" and cells[6] == "2026-03-02" and cells[7] != "—"
    assert "Goal: a checkout people finish. Prose here is never touched.\n" in text
    assert text.endswith("\nNotes after the table stay as they are.\n")
    assert json.loads((ws / ".mosaic" / "orchestrator" / "mission.json").read_text())["milestones"][0]["status"] == (
        "completed"
    )
    # untouched: coord's own files we do not own
    assert (ws / ".mosaic" / "orchestrator" / "next-task.json").read_bytes() == before[
        ".mosaic/orchestrator/next-task.json"
    ]
    assert (ws / "docs" / "scratchpads" / "CR-01-02.md").read_text() == "thinking out loud\n"
    assert not (ws / "TASKS.md").exists()

    # a hostile manifest row is reported and changes nothing
    manifest.write_text(
        manifest.read_text().replace("| 3 | 3 | Launch | not-started |", "| 3 | 3 | Launch | sideways |")
    )
    await sync_once(svc)
    assert (await svc.get_mission("checkout", "default")).milestones[2].status is MissionStatus.PENDING
    status = await sync_status(svc, "checkout")
    entry = next(f for f in status["files"] if f.get("kind") == "manifest")
    assert [e["message"] for e in entry["errors"]] == [
        "milestone 3: unknown status 'sideways'; use not-started, in-progress or done"
    ]
    assert "sideways" in manifest.read_text()
    assert (await svc.get_task("checkout", "CR-02-05")).status is TaskStatus.DONE


@pytest.fixture
async def mem() -> AsyncIterator[QueueService]:
    async with InMemoryBackend(config=FAST) as backend:
        yield QueueService(backend, workspaces=WorkspacePolicy(operator=True))


async def test_with_both_files_the_root_one_is_synced_and_docs_left_alone(mem: QueueService, tmp_path: Path) -> None:
    ws = _coord_workspace(tmp_path)
    (ws / "TASKS.md").write_text("# Tasks\n\n| id | status | description |\n|---|---|---|\n| T-1 | todo | Ours |\n")
    before = _files(ws)
    await mem.create_project({"slug": "checkout", "workspace": str(ws), "key_prefix": "CR"})
    reports = await sync_once(mem)
    assert [r.path for r in reports] == [str(ws / "TASKS.md")]
    assert [t.key for t in (await mem.list_tasks("checkout")).items] == ["T-1"]
    assert (await mem.get_mission("checkout", "default")).tasks_file == "TASKS.md"
    after = _files(ws)
    for name in ("docs/TASKS.md", "docs/MISSION-MANIFEST.md", ".mosaic/orchestrator/mission.json"):
        assert after[name] == before[name]


async def test_a_synced_root_file_that_was_deleted_comes_back_at_the_root(mem: QueueService, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    await mem.create_project({"slug": "web", "workspace": str(ws)})
    await mem.create_task("web", {"title": "one"})
    await sync_once(mem)
    assert (ws / "TASKS.md").exists()
    (ws / "TASKS.md").unlink()
    (ws / "docs").mkdir()
    (ws / "docs" / "TASKS.md").write_text("# someone else's notes\n")
    await sync_once(mem)
    assert "WEB-1" in (ws / "TASKS.md").read_text()
    assert (ws / "docs" / "TASKS.md").read_text() == "# someone else's notes\n"
    assert (await mem.get_mission("web", "default")).tasks_file == "TASKS.md"


async def test_a_foreign_or_linked_mission_json_is_never_written(mem: QueueService, tmp_path: Path) -> None:
    ws = _coord_workspace(tmp_path)
    foreign = b'{"mission": "coord wrote this", "milestones": []}\n'
    (ws / ".mosaic" / "orchestrator" / "mission.json").write_bytes(foreign)
    await mem.create_project({"slug": "checkout", "workspace": str(ws), "key_prefix": "CR"})
    await sync_once(mem)
    assert (ws / ".mosaic" / "orchestrator" / "mission.json").read_bytes() == foreign
    mission = await mem.get_mission("checkout", "default")
    assert mission.quality_gates == ()  # not applied either
    assert mission.name == "Checkout Revamp"  # from the manifest's title (the mission had the default name)
    assert [m.id for m in mission.milestones] == ["1", "2", "3"]  # from TASKS.md and the manifest
    entry = next(f for f in (await sync_status(mem, "checkout"))["files"] if f.get("kind") == "manifest")
    assert "is not queue-service's" in entry["note"] and entry["problem"] is None

    # .mosaic/orchestrator swapped for a link to a directory outside: nothing is written through it
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(ws / ".mosaic" / "orchestrator")
    os.symlink(outside, ws / ".mosaic" / "orchestrator")
    current = await mem.get_mission("checkout", "default")
    stones = [m.model_dump() for m in current.milestones]
    stones[2]["name"] = "Ship it"
    await mem.update_mission("checkout", "default", {"id": "default", "name": "Renamed", "milestones": stones})
    await sync_once(mem)
    assert list(outside.iterdir()) == []
    # the manifest still follows the mission (its base is kept although mission.json cannot be written)
    assert "| 3 | 3 | Ship it | not-started |" in (ws / "docs" / "MISSION-MANIFEST.md").read_text()
    await sync_once(mem)
    assert (await mem.get_mission("checkout", "default")).milestones[2].name == "Ship it"
    entry = next(f for f in (await sync_status(mem, "checkout"))["files"] if f.get("kind") == "manifest")
    assert "symlink" in entry["problem"]
    assert "# Tasks — Checkout Revamp" in (ws / "docs" / "TASKS.md").read_text()  # TASKS.md still synced


async def test_the_running_sync_follows_manifest_edits_and_milestone_changes(mem: QueueService, tmp_path: Path) -> None:
    ws = _coord_workspace(tmp_path)
    manifest = ws / "docs" / "MISSION-MANIFEST.md"
    await mem.create_project({"slug": "checkout", "workspace": str(ws), "key_prefix": "CR"})

    async def milestone(index: int) -> Any:
        stones = (await mem.get_mission("checkout", "default")).milestones
        return stones[index] if len(stones) > index else None

    async with WorkspaceSyncManager(mem, sync_options()) as manager:
        await eventually(lambda: milestone(2), "the adoption")
        await manager.wait_idle()
        editor_save(
            manifest, manifest.read_text().replace("| 3 | Launch | not-started |", "| 3 | Go live | not-started |")
        )
        await eventually(lambda: _named(milestone(2), "Go live"), "the manifest edit in the milestone")
        current = await mem.get_mission("checkout", "default")
        stones = [m.model_dump() for m in current.milestones]
        stones[1]["name"] = "Payments"
        await mem.update_mission("checkout", "default", {"id": "default", "name": current.name, "milestones": stones})
        await eventually(
            lambda: "| 2 | 2 | Payments | not-started |" in manifest.read_text(), "the API change in the file"
        )


async def _named(found: Any, name: str) -> bool:
    stone = await found
    return stone is not None and stone.name == name


async def test_agent_column_shows_the_model_then_the_holder_then_the_model_again(
    mem: QueueService, tmp_path: Path
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    await mem.create_project({"slug": "web", "workspace": str(ws)})
    await mem.create_task("web", {"title": "routed", "requires": {"model": "opus", "gpu": "true"}})
    await mem.create_task("web", {"title": "anyone"})
    path = ws / "TASKS.md"
    await sync_once(mem)
    text = path.read_text()
    assert (cell(text, "WEB-1", 3), cell(text, "WEB-2", 3)) == ("opus", "—")
    await mem.register_agent("web", {"id": "claude-3", "labels": {"model": "opus", "gpu": "true"}})
    claim = await mem.claim("web", "claude-3")
    assert claim is not None and claim.task.key == "WEB-1"
    await sync_once(mem)
    assert cell(path.read_text(), "WEB-1", 3) == "claude-3"
    await mem.release("web", "WEB-1", claim.lease.token)
    await sync_once(mem)
    assert cell(path.read_text(), "WEB-1", 3) == "opus"
    # coord's "any" words clear the requirement (other labels kept)
    path.write_text(set_cell(path.read_text(), "WEB-1", 3, "— (auto)"))
    await sync_once(mem)
    assert (await mem.get_task("web", "WEB-1")).requires == {"gpu": "true"}


async def test_coords_marker_alone_starts_the_coord_layout(mem: QueueService, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / ".mosaic" / "orchestrator").mkdir(parents=True)
    await mem.create_project({"slug": "web", "workspace": str(ws)})
    await mem.update_mission(
        "web",
        "default",
        {"id": "default", "name": "Web", "milestones": [{"id": "M1", "name": "One"}, {"id": "M2", "name": "Two"}]},
    )
    await mem.create_task("web", {"title": "first", "milestone": "M1"})
    await sync_once(mem)
    assert not (ws / "TASKS.md").exists()
    assert "| WEB-1 |" in (ws / "docs" / "TASKS.md").read_text()
    manifest = ws / "docs" / "MISSION-MANIFEST.md"
    assert manifest.read_text().startswith("# Mission manifest — Web\n")
    assert "| 2 | M2 | Two | not-started | — | — | — | — |" in manifest.read_text()
    written = json.loads((ws / ".mosaic" / "orchestrator" / "mission.json").read_text())
    assert (written["schema"], written["project"], [m["id"] for m in written["milestones"]]) == (
        MISSION_SCHEMA,
        "web",
        ["M1", "M2"],
    )
    # a row removed by hand comes back (removing a row removes no milestone)
    manifest.write_text(manifest.read_text().replace("| 1 | M1 | One | not-started | — | — | — | — |\n", ""))
    await sync_once(mem)
    assert "| M1 | One | not-started |" in manifest.read_text()
    assert [m.id for m in (await mem.get_mission("web", "default")).milestones] == ["M1", "M2"]


async def test_an_invalid_mission_json_of_ours_does_not_stop_adoption(mem: QueueService, tmp_path: Path) -> None:
    ws = _coord_workspace(tmp_path)
    bad = dict(MISSION, milestones=[{"id": "1", "name": "two\nlines", "status": "active"}])
    (ws / ".mosaic" / "orchestrator" / "mission.json").write_text(json.dumps(bad))
    await mem.create_project({"slug": "checkout", "workspace": str(ws), "key_prefix": "CR"})
    reports = await sync_once(mem)
    assert [r.problem for r in reports] == [None]
    assert len((await mem.list_tasks("checkout")).items) == 4
    assert (await mem.get_mission("checkout", "default")).quality_gates == ()
