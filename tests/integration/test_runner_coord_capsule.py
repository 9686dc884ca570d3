"""Issue 18: ``qs run`` writes next-task.json with coord's thirteen fields, in coord's order, with
progress computed from the mission, then its own keys."""

from __future__ import annotations

import json
from pathlib import Path

from queue_service.coord_capsule import COORD_FIELDS, current_branch, progress
from queue_service.models import Task, TaskStatus
from queue_service.runner import CAPSULE_FILE, orchestrator_dir
from queue_service.service import QueueService
from tests.integration.test_runner import py, runner, svc  # noqa: F401  (fixture)

READ_CAPSULE = """
import json, os, sys
print(open(os.path.join(".mosaic", "orchestrator", "next-task.json")).read())
"""


async def test_run_writes_the_thirteen_coord_fields_with_progress(svc: QueueService, tmp_path: Path) -> None:  # noqa: F811
    await svc.create_mission(
        "web",
        {
            "id": "launch",
            "name": "Launch the web app",
            "milestones": [
                {"id": "M1", "name": "Schema", "status": "completed"},
                {"id": "M2", "name": "Accounts"},
            ],
            "quality_gates": ["make lint", "make test"],
        },
    )
    for title, status in [("a", "done"), ("b", "completed"), ("c", "cancelled"), ("d", "pending"), ("e", "todo")]:
        await svc.create_task("web", {"title": title, "mission": "launch", "status": status, "priority": "P3"})
    target = await svc.create_task(
        "web", {"title": "Accounts", "mission": "launch", "milestone": "M2", "priority": "P0"}
    )
    await svc.create_task("web", {"title": "elsewhere", "status": "done"})  # default mission: not counted
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/feat/accounts\n")

    summary = await runner(svc, tmp_path, py(READ_CAPSULE), max_tasks=1, runtime="claude").run(handle_signals=False)
    assert [(o.key, o.outcome) for o in summary.outcomes] == [(target.key, "completed")]
    seen = json.loads((await svc.get_task("web", target.key)).result["stdout"])
    assert tuple(seen)[: len(COORD_FIELDS)] == COORD_FIELDS
    assert {k: seen[k] for k in COORD_FIELDS} == {
        "project": "web",
        "runtime": "claude",
        "mission_id": "launch",
        "mission_name": "Launch the web app",
        "project_path": str(tmp_path.resolve()),
        "quality_gates": ["make lint", "make test"],
        "current_ms_id": "M2",
        "current_ms_name": "Accounts",
        "next_task": target.key,
        "tasks_done": 2,
        "tasks_total": 5,  # the cancelled one is not part of the plan
        "pct": 40,
        "current_branch": "feat/accounts",
    }
    # ours follow as extra keys
    assert seen["session_id"] == "sess-001" and seen["task"]["key"] == target.key and seen["agent"]
    assert (orchestrator_dir(tmp_path) / CAPSULE_FILE).exists()


def test_progress_floors_the_percentage() -> None:
    def tasks(*statuses: TaskStatus) -> list[Task]:
        now = "2026-01-01T00:00:00Z"
        return [
            Task.model_validate(
                {
                    "project": "p",
                    "key": f"P-{i}",
                    "seq": i + 1,
                    "title": "t",
                    "status": s,
                    "created_at": now,
                    "updated_at": now,
                }
            )
            for i, s in enumerate(statuses)
        ]

    d, n = TaskStatus.DONE, TaskStatus.NOT_STARTED
    assert progress(tasks(d, d, n)) == (2, 3, 66)
    assert progress(tasks(d, n, n, n, n, n)) == (1, 6, 16)
    assert progress(tasks(d)) == (1, 1, 100)
    assert progress([]) == (0, 0, 0)


def test_current_branch_reads_head_without_git(tmp_path: Path) -> None:
    assert current_branch(tmp_path) is None
    git = tmp_path / ".git"
    git.mkdir()
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    assert current_branch(tmp_path) == "main"
    sha = "0123456789abcdef0123456789abcdef01234567"
    (git / "HEAD").write_text(sha + "\n")
    assert current_branch(tmp_path) == sha  # detached
    (git / "HEAD").write_text("garbage\x00\n")
    assert current_branch(tmp_path) is None
    # a linked worktree: .git is a file naming the real git dir
    wt = tmp_path / "wt"
    wt.mkdir()
    real = tmp_path / "real-gitdir"
    real.mkdir()
    (real / "HEAD").write_text("ref: refs/heads/feat/x\n")
    (wt / ".git").write_text(f"gitdir: {real}\n")
    assert current_branch(wt) == "feat/x"
