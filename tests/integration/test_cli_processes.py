"""The CLI in real processes and against real files and sockets (moved from tests/unit/test_cli.py,
whose in-process cases stay unit tests): the installed entry points, ``run`` spawning its children,
the flatfile default across invocations, and an unreachable backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from queue_service import snapshot
from tests.unit.test_cli import Cli, backend, cli, plain  # noqa: F401  (fixtures)


def test_unreachable_backend_exits_3(monkeypatch: pytest.MonkeyPatch) -> None:
    invoke = plain(
        monkeypatch,
        QUEUE_DATABASE_URL="postgresql+asyncpg://postgres@127.0.0.1:9/nothing",
        QUEUE_VALKEY_URL="redis://127.0.0.1:9/0",
    )
    result = invoke("project", "list")
    assert result.exit_code == 3, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: ")
    assert len(result.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# the installed entry points


def _module(
    *args: str, env: dict[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("QUEUE_", "MOSAIC_"))}
    return subprocess.run(
        [sys.executable, "-m", "queue_service", *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        input=input,
        timeout=60,
        check=False,
    )


def test_python_m_entry_point() -> None:
    helped = _module("--help")
    assert helped.returncode == 0
    assert "Usage:" in helped.stdout
    made = _module("project", "create", "solo", "--json", env={"QUEUE_BACKEND_URL": "memory://"})
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["slug"] == "solo"
    failed = _module("task", "show", "X-1", "-p", "solo", env={"QUEUE_BACKEND_URL": "memory://"})
    assert failed.returncode == 1
    assert failed.stderr == "error: project 'solo' not found\n"
    usage = _module("task", "show")
    assert usage.returncode == 2
    assert usage.stderr.startswith("error: ")
    assert "Traceback" not in usage.stderr


def test_console_scripts_exist() -> None:
    bindir = Path(sys.executable).parent
    for name in ("qs", "queue-service"):
        script = bindir / name
        assert script.exists(), script
        out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 0
        assert f"Usage: {name}" in out.stdout


# ---------------------------------------------------------------------------------------------
# run (in-process runner, real children; more in tests/integration/test_runner.py)


def test_run_once(cli: Cli, tmp_path: Path) -> None:  # noqa: F811  (the fixture)
    cli("task", "add", "Say hi", "-p", "web")
    code = "import json,os,sys; t=json.load(sys.stdin); print(os.environ['QUEUE_TASK_KEY'], t['title'])"
    result = cli("run", "web", "--once", "--workspace", str(tmp_path), "--json", "--", sys.executable, "-c", code)
    summary = json.loads(result.stdout)
    assert summary["counts"]["completed"] == 1
    assert summary["session_id"] == "sess-001"
    assert summary["exit_code"] == 0
    task = cli.json("task", "show", "WEB-1", "-p", "web")["task"]
    assert task["status"] == "done"
    assert task["result"]["stdout"] == "WEB-1 Say hi\n"
    assert (tmp_path / ".mosaic" / "orchestrator" / "next-task.json").exists()
    assert not (tmp_path / ".mosaic" / "orchestrator" / "session.lock").exists()
    # nothing ready: --once exits at once
    again = cli("run", "web", "--once", "--workspace", str(tmp_path), "--json", "--", sys.executable, "-c", "pass")
    assert json.loads(again.stdout)["tasks"] == []
    assert json.loads(again.stdout)["session_id"] == "sess-002"


# ---------------------------------------------------------------------------------------------
# the embedded default: flatfile in QUEUE_DATA_DIR, state kept between invocations


def test_flatfile_default_mode_across_invocations(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    invoke = plain(monkeypatch, QUEUE_DATA_DIR=str(tmp_path / "data"))

    def ok(*args: str, input: str | None = None) -> Any:
        result = invoke(*args, input=input)
        assert result.exit_code == 0, (args, result.stdout, result.stderr)
        return result

    ok("project", "create", "solo", "--workspace", str(tmp_path / "ws"))
    ok("task", "add", "First", "-p", "solo")
    ok("task", "add", "Second", "-p", "solo", "-d", "SOLO-1")
    got = json.loads(ok("claim", "-p", "solo", "--json").stdout)
    ok("complete", "SOLO-1", "-p", "solo", "-t", got["lease"]["token"])
    code = "import json, sys; print(json.load(sys.stdin)['title'])"
    (tmp_path / "here").mkdir()
    run = ("run", "solo", "--once", "--json", "--workdir", str(tmp_path / "here"), "--", sys.executable, "-c", code)
    summary = json.loads(ok(*run).stdout)
    assert [t["outcome"] for t in summary["tasks"]] == ["completed"]
    # the runner's own directory, never the project's workspace (issue 9, finding 10)
    assert (tmp_path / "here" / ".mosaic" / "orchestrator" / "next-task.json").exists()
    page = json.loads(ok("task", "list", "-p", "solo", "--json", "--full").stdout)
    assert [(t["key"], t["status"]) for t in page["items"]] == [("SOLO-1", "done"), ("SOLO-2", "done")]
    assert page["items"][1]["result"]["stdout"] == "Second\n"
    dump = ok("export", "solo").stdout
    # move it to another data dir and back out again
    monkeypatch.setenv("QUEUE_DATA_DIR", str(tmp_path / "other"))
    ok("import", "-", input=dump)
    assert snapshot.comparable(ok("export", "solo").stdout) == snapshot.comparable(dump)
