"""Issue 11: what ``qs run`` tells its user and its children — exit codes, prefixed output, whole
results up to QUEUE_MAX_RESULT_BYTES, QUEUE_LEASE_TOKEN, next-task.json at the end."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from queue_service.models import TaskStatus
from queue_service.runner import CAPSULE_FILE, EXIT_TASK_FAILED, orchestrator_dir
from queue_service.service import QueueService
from tests.integration.test_runner import py, runner, svc  # noqa: F401 - the shared runner fixture

QS = str(Path(sys.executable).with_name("qs"))


async def test_exit_code_is_4_when_a_task_failed_and_0_when_all_completed(svc: QueueService, tmp_path: Path) -> None:  # noqa: F811
    await svc.create_task("web", {"title": "ok"})
    ok = await runner(svc, tmp_path, py("print('fine')")).run(handle_signals=False)
    assert [o.outcome for o in ok.outcomes] == ["completed"] and ok.exit_code == 0
    await svc.create_task("web", {"title": "bad", "max_attempts": 1})
    bad = await runner(svc, tmp_path, py("import sys; sys.exit(2)")).run(handle_signals=False)
    assert [o.outcome for o in bad.outcomes] == ["failed"] and bad.exit_code == EXIT_TASK_FAILED == 4


async def test_output_is_echoed_with_the_key_and_kept_whole_up_to_the_cap(svc: QueueService, tmp_path: Path) -> None:  # noqa: F811
    await svc.create_tasks("web", [{"title": "chatty"}, {"title": "huge"}])
    child = py(
        """
        import json, os, sys
        task = json.load(sys.stdin)
        if task["title"] == "chatty":
            for i in range(3000):
                print(f"line {i}")
            sys.stderr.write("a warning\\n")
        else:
            for i in range(20000):
                print(f"row {i:06d} " + "x" * 40)
        """
    )
    echo = io.StringIO()
    summary = await runner(svc, tmp_path, child, max_result_bytes=64 * 1024, echo=echo).run(handle_signals=False)
    assert summary.exit_code == 0
    lines = echo.getvalue().splitlines()
    assert "WEB-1| line 0" in lines and "WEB-1| line 2999" in lines and "WEB-1! a warning" in lines
    assert "WEB-2| row 019999 " + "x" * 40 in lines
    chatty = (await svc.get_task("web", "WEB-1")).result
    assert chatty["stdout_truncated"] is False
    assert chatty["stdout"].splitlines() == [f"line {i}" for i in range(3000)]  # all of it, not a 4 KB tail
    huge = (await svc.get_task("web", "WEB-2")).result
    assert huge["stdout_truncated"] is True
    body, marker = huge["stdout"].rstrip("\n").rsplit("\n", 1)
    assert marker.startswith("[output cut at a line:") and "QUEUE_MAX_RESULT_BYTES" in marker
    kept = body.split("\n")
    assert kept[0] == "row 000000 " + "x" * 40
    assert all(len(line) == len(kept[0]) for line in kept)  # cut at a line boundary
    assert len(json.dumps(huge).encode()) <= 64 * 1024


async def test_children_get_the_lease_token_and_can_note_with_it(svc: QueueService, tmp_path: Path) -> None:  # noqa: F811
    await svc.create_task("web", {"title": "t"})
    child = py("import os; print(os.environ['QUEUE_LEASE_TOKEN'])")
    await runner(svc, tmp_path, child).run(handle_signals=False)
    task = await svc.get_task("web", "WEB-1")
    assert task.status is TaskStatus.DONE
    token = task.result["stdout"].strip()
    assert token  # the holder's token for this task; notes with it were valid while it ran
    events = await svc.list_events("web")
    assert any(e.kind == "claimed" for e in events)


def test_child_adds_a_note_with_its_token_through_the_cli(tmp_path: Path) -> None:
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "QUEUE_DATA_DIR": str(tmp_path / "data")}
    run = lambda *a: subprocess.run([QS, *a], env=env, capture_output=True, text=True, timeout=120, check=False)  # noqa: E731
    assert run("project", "create", "web", "--prefix", "WEB").returncode == 0
    assert run("task", "add", "web", "note it").returncode == 0
    # the child is `qs task note` itself: project from QUEUE_PROJECT, token from QUEUE_LEASE_TOKEN
    script = tmp_path / "agent.sh"
    script.write_text('#!/bin/sh\nexec qs task note "$QUEUE_TASK_KEY" "working on it"\n')
    script.chmod(0o755)
    (tmp_path / "ws").mkdir()
    # the child reaches the same local data (children get no QUEUE_* paths unless passed, issue 9)
    ws = str(tmp_path / "ws")
    done = run("run", "-p", "web", "--once", "--workspace", ws, "--pass-env", "QUEUE_DATA_DIR", "--", str(script))
    assert done.returncode == 0, done.stderr
    shown = json.loads(run("--json", "task", "show", "web", "WEB-1").stdout)
    assert shown["task"]["status"] == "done"
    assert [n["text"] for n in shown["notes"]] == ["working on it"]
    capsule = json.loads((orchestrator_dir(tmp_path / "ws") / CAPSULE_FILE).read_text())
    assert capsule["task"] is None and capsule["last_task"] == "WEB-1" and capsule["counts"]["completed"] == 1


def test_run_takes_the_project_from_queue_project(tmp_path: Path) -> None:
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "QUEUE_DATA_DIR": str(tmp_path / "data")}
    subprocess.run([QS, "project", "create", "web"], env=env, check=True, capture_output=True, timeout=120)
    env["QUEUE_PROJECT"] = "web"
    got = subprocess.run(
        [QS, "run", "--once", "--workspace", str(tmp_path), "--", "true"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert got.returncode == 0, got.stderr
    assert "run needs the command" not in got.stderr
