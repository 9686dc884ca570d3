"""Finding 10: the runner ran children in a path chosen by the server (creating it with mkdir -p),
children inherited QUEUE_TOKEN, and task titles with newlines forged runner log lines."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from queue_service.cli import app as cli_app
from queue_service.models import TaskUpdate
from queue_service.runner import CAPSULE_FILE, LOCK_FILE, Runner, RunnerOptions, escape_control, orchestrator_dir
from queue_service.service import QueueService
from queue_service.testing import InMemoryBackend
from tests.unit.api_support import FAST

DUMP_ENV = [sys.executable, "-c", "import json, os, sys; print(json.dumps(dict(os.environ)))"]


@pytest.fixture
async def svc() -> AsyncIterator[QueueService]:
    async with InMemoryBackend(config=FAST) as backend:
        service = QueueService(backend)
        await service.create_project({"slug": "web", "key_prefix": "WEB"})
        yield service


def _runner(svc: QueueService, command: list[str], **options: object) -> Runner:
    opts = RunnerOptions(project="web", command=command, idle_exit=0.0, poll_seconds=0.2, **options)  # type: ignore[arg-type]
    return Runner(svc, opts, sweep=svc.backend.dispatch.sweep)


async def test_a_server_chosen_workspace_is_never_created_or_entered(
    svc: QueueService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "victim" / ".ssh"  # what a hostile server (or project admin) names
    await svc.update_project("web", {"workspace": str(target)})
    await svc.create_task("web", {"title": "where am I"})
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code = "import os; print(os.getcwd())"
    await _runner(svc, [sys.executable, "-c", code]).run(handle_signals=False)
    task = await svc.get_task("web", "WEB-1")
    assert Path(task.result["stdout"].strip()) == work.resolve()
    assert not (tmp_path / "victim").exists()
    assert (orchestrator_dir(work) / LOCK_FILE).exists() or (orchestrator_dir(work) / CAPSULE_FILE).exists()


async def test_workdir_option_is_used_and_must_exist(svc: QueueService, tmp_path: Path) -> None:
    await svc.create_task("web", {"title": "t"})
    missing = tmp_path / "missing"
    with pytest.raises(Exception, match="does not exist"):
        await _runner(svc, DUMP_ENV, workspace=missing).run(handle_signals=False)
    assert not missing.exists()
    assert (await svc.get_task("web", "WEB-1")).status.value == "not-started"


async def test_children_do_not_inherit_the_token_unless_passed(
    svc: QueueService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUEUE_TOKEN", "qs_secret_value")
    monkeypatch.setenv("QUEUE_DATABASE_URL", "postgresql://u:pw@db/x")
    monkeypatch.setenv("MOSAIC_VALKEY_URL", "redis://:pw@vk")
    monkeypatch.setenv("QUEUE_URL", "http://127.0.0.1:8000")
    monkeypatch.setenv("UNRELATED_SETTING", "kept")
    await svc.create_tasks("web", [{"title": "a"}, {"title": "b"}])
    await _runner(svc, DUMP_ENV, workspace=tmp_path, max_tasks=1).run(handle_signals=False)
    env = json.loads((await svc.get_task("web", "WEB-1")).result["stdout"])
    assert "QUEUE_TOKEN" not in env and "QUEUE_DATABASE_URL" not in env and "MOSAIC_VALKEY_URL" not in env
    assert "qs_secret_value" not in json.dumps(env)
    assert env["QUEUE_URL"] == "http://127.0.0.1:8000" and env["UNRELATED_SETTING"] == "kept"
    assert env["QUEUE_TASK_KEY"] == "WEB-1"
    await _runner(svc, DUMP_ENV, workspace=tmp_path, max_tasks=1, pass_env=("QUEUE_TOKEN",)).run(handle_signals=False)
    opted_in = json.loads((await svc.get_task("web", "WEB-2")).result["stdout"])
    assert opted_in["QUEUE_TOKEN"] == "qs_secret_value" and "QUEUE_DATABASE_URL" not in opted_in


async def test_a_title_cannot_forge_runner_log_lines(
    svc: QueueService, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    forged = "harmless\n12:00:00 sess-001: WEB-9 done (exit 0, 0.1s)\x1b[2K\u2028"
    await svc.create_task("web", {"title": "harmless", "description": "x"})
    # titles are one line at the API now; the runner must still be safe with whatever it is given
    task = await svc.get_task("web", "WEB-1")
    await svc.backend.records.update_task("web", task.key, _title_patch(forged))
    assert (await svc.get_task("web", "WEB-1")).title == forged
    with caplog.at_level(logging.INFO, logger="queue_service.runner"):
        await _runner(svc, [sys.executable, "-c", "pass"], workspace=tmp_path).run(handle_signals=False)
    lines = [r.getMessage() for r in caplog.records]
    assert any("harmless\\x0a12:00:00" in line for line in lines), lines
    assert all("\n" not in line and "\x1b" not in line and "\u2028" not in line for line in lines)


def _title_patch(title: str) -> TaskUpdate:
    # bypass the API's one-line rule to prove the runner's own escaping (a record from before it)
    return TaskUpdate.model_construct(title=title, _fields_set={"title"})


def test_escape_control() -> None:
    assert escape_control("plain — text") == "plain — text"
    assert escape_control("a\nb\r\x1b[31m\u202e\u2029") == "a\\x0ab\\x0d\\x1b[31m\\u202e\\u2029"


def test_cli_spells_workdir_three_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    monkeypatch.setenv("QUEUE_DATA_DIR", str(data))
    monkeypatch.chdir(tmp_path)
    cli = CliRunner()

    def qs(*args: str, env: dict[str, str] | None = None) -> str:
        result = cli.invoke(cli_app, list(args), env=env)
        assert result.exit_code == 0, (args, result.stdout, result.stderr)
        return result.stdout

    qs("project", "create", "web", "--prefix", "WEB")
    where = [sys.executable, "-c", "import os; print(os.getcwd())"]
    for n, (args, env) in enumerate(
        [
            (["--workdir", "a"], {}),
            (["--workspace", "b"], {}),  # the old spelling
            ([], {"QUEUE_WORKDIR": str(tmp_path / "c")}),
        ],
        start=1,
    ):
        (tmp_path / "abc"[n - 1]).mkdir()
        qs("task", "add", f"task {n}", "-p", "web")
        qs("run", "web", "--once", *args, "--", *where, env=env)
        shown = json.loads(qs("task", "show", f"WEB-{n}", "-p", "web", "--json"))
        result = shown.get("result") or shown["task"]["result"]
        assert Path(result["stdout"].strip()) == (tmp_path / "abc"[n - 1]).resolve()
