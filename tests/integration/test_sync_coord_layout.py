"""A workspace laid out as coord leaves it is adopted byte for byte and synced both ways (issue 18).

``docs/TASKS.md``, ``docs/MISSION-MANIFEST.md``, ``.mosaic/orchestrator/{mission,next-task}.json``,
``docs/scratchpads/``: on flatfile and on Postgres + Valkey.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from queue_service.models import MissionStatus, TaskStatus
from queue_service.service import QueueService
from queue_service.workspaces import WorkspacePolicy
from tests.integration.sync_support import FAST, cell, set_cell
from workspace_sync.companions import MISSION_SCHEMA
from workspace_sync.manager import sync_once, sync_status

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
