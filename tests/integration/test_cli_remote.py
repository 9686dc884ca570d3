"""Remote mode: the CLI (a subprocess, as users run it) talking to a real ``queue-service serve``.

The server runs the in-memory backend, so state lives in the server process and is shared by every
CLI call; the CLI hands the AsyncClient for ``QUEUE_URL`` to the same commands as local mode.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("QUEUE_", "MOSAIC_"))}


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    port = _free_port()
    env = {**_clean_env(), "QUEUE_BACKEND_URL": "memory://", "QUEUE_BACKOFF_BASE_SECONDS": "0.05"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "queue_service", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"serve exited: {proc.stderr.read() if proc.stderr else ''}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("serve did not come up")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def qs(server: str, *args: str, code: int = 0, input: str | None = None) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-m", "queue_service", *args],
        env={**_clean_env(), "QUEUE_URL": server},
        capture_output=True,
        text=True,
        input=input,
        timeout=120,
        check=False,
    )
    assert out.returncode == code, (args, out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    return out


def qs_json(server: str, *args: str) -> Any:
    return json.loads(qs(server, *args, "--json").stdout)


def test_remote_task_lifecycle(server: str) -> None:
    assert qs_json(server, "project", "create", "rweb", "--prefix", "RW")["slug"] == "rweb"
    qs(server, "task", "add", "First", "-p", "rweb", "-P", "P0", "-r", "dev")
    qs(server, "task", "add", "Second", "-p", "rweb", "-d", "RW-1", "-r", "dev")
    page = qs_json(server, "task", "list", "-p", "rweb", "--status", "todo")
    assert [t["key"] for t in page["items"]] == ["RW-1", "RW-2"]
    assert [t["key"] for t in qs_json(server, "task", "list", "-p", "rweb", "--ready")["items"]] == ["RW-1"]

    got = qs_json(server, "claim", "-p", "rweb", "-r", "dev", "--agent", "remote-agent")
    assert got["task"]["key"] == "RW-1"
    token = got["lease"]["token"]
    qs(server, "heartbeat", "RW-1", "-p", "rweb", "-t", token)
    qs(server, "task", "note", "RW-1", "halfway", "-p", "rweb", "--author", "remote-agent", "--token", token)
    done = qs_json(server, "complete", "RW-1", "-p", "rweb", "-t", token, "--result", '{"ok": true}')
    assert done["status"] == "done"
    err = qs(server, "complete", "RW-1", "-p", "rweb", "-t", token, code=1).stderr
    assert err.startswith("error: ")

    shown = qs_json(server, "task", "show", "RW-2", "-p", "rweb")
    assert shown["blockers"] == []
    assert qs_json(server, "task", "show", "RW-1", "-p", "rweb")["notes"][0]["text"] == "halfway"

    second = qs_json(server, "claim", "-p", "rweb", "--wait", "1")
    failed = qs_json(server, "fail", "RW-2", "-p", "rweb", "-t", second["lease"]["token"], "-e", "nope", "--permanent")
    assert failed["status"] == "failed"
    assert qs_json(server, "task", "retry", "RW-2", "-p", "rweb")["status"] == "not-started"
    third = qs_json(server, "claim", "-p", "rweb", "--wait", "2")
    assert qs_json(server, "release", "RW-2", "-p", "rweb", "-t", third["lease"]["token"])["attempts"] == 0
    assert qs_json(server, "task", "cancel", "RW-2", "-p", "rweb")["status"] == "cancelled"

    stats = qs_json(server, "stats", "-p", "rweb")
    assert stats["by_status"]["done"] == 1
    assert stats["by_status"]["cancelled"] == 1
    events = [json.loads(line) for line in qs(server, "events", "-p", "rweb", "--json").stdout.splitlines()]
    assert [e["kind"] for e in events if e["task"] == "RW-1"][:3] == ["created", "claimed", "note_added"]
    assert len(qs(server, "events", "-p", "rweb", "--json", "--limit", "2").stdout.splitlines()) == 2


def test_remote_project_argument_option_and_env(server: str) -> None:
    # the same three spellings as in local mode, through QUEUE_URL (parsing happens before the connection)
    qs(server, "project", "create", "rpos", "--prefix", "RP")
    assert qs_json(server, "task", "add", "rpos", "Design the schema", "--priority", "P1")["key"] == "RP-1"
    assert qs_json(server, "task", "add", "-p", "rpos", "Second", "-d", "RP-1")["key"] == "RP-2"
    env = {**_clean_env(), "QUEUE_URL": server, "QUEUE_PROJECT": "rpos"}
    third = subprocess.run(
        [sys.executable, "-m", "queue_service", "task", "add", "Third", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert third.returncode == 0, third.stderr
    assert json.loads(third.stdout)["key"] == "RP-3"
    assert [t["key"] for t in qs_json(server, "task", "list", "rpos")["items"]] == ["RP-1", "RP-2", "RP-3"]
    got = qs_json(server, "claim", "rpos", "--agent", "me")
    assert got["task"]["key"] == "RP-1"
    done = qs_json(server, "complete", "rpos", "RP-1", "--token", got["lease"]["token"])
    assert done["status"] == "done"
    assert qs_json(server, "task", "show", "rpos", "RP-2")["blockers"] == []
    assert qs_json(server, "stats", "rpos")["by_status"]["done"] == 1
    assert "Missing argument 'PROJECT'" in qs(server, "stats", code=2).stderr


def test_remote_agents_and_routing(server: str) -> None:
    # issue 13's commands through the AsyncClient (the same QueueOps calls as in local mode)
    qs(server, "project", "create", "ragt", "--prefix", "RA")
    reg = qs_json(server, "agent", "register", "ragt", "gpu-1", "-r", "dev", "-l", "model=opus", "--capacity", "2")
    assert (reg["id"], reg["roles"], reg["labels"], reg["capacity"]) == ("gpu-1", ["dev"], {"model": "opus"}, 2)
    assert qs_json(server, "agent", "heartbeat", "ragt", "gpu-1")["ready"] is True
    assert qs_json(server, "agent", "route", "ragt", "dev", "least-busy")["routing"] == {"dev": "least-busy"}
    assert qs_json(server, "agent", "limit", "ragt", "repo-a", "2")["concurrency_limits"] == {"repo-a": 2}
    qs(server, "task", "add", "ragt", "Routed", "-r", "dev")
    got = qs_json(server, "claim", "ragt", "-r", "dev", "--agent", "gpu-1")
    assert got["task"]["key"] == "RA-1"
    listed = qs_json(server, "agents", "ragt")
    assert [(a["id"], [h["key"] for h in a["holding"]]) for a in listed] == [("gpu-1", ["RA-1"])]
    assert qs_json(server, "agent", "drain", "ragt", "gpu-1")["drained"] is True
    assert "gpu-1" in qs(server, "agents", "ragt").stdout


def test_remote_errors(server: str) -> None:
    qs(server, "project", "create", "rerr")
    qs(server, "task", "add", "One", "-p", "rerr")
    assert "not found" in qs(server, "task", "show", "RERR-9", "-p", "rerr", code=1).stderr
    assert (
        "version"
        in qs(server, "task", "edit", "RERR-1", "-p", "rerr", "--title", "x", "--if-version", "7", code=1).stderr
    )
    assert "invalid slug" in qs(server, "project", "create", "Nope!", code=1).stderr
    exported = qs(server, "export", "rerr", code=2)
    assert "unset QUEUE_URL" in exported.stderr
    unreachable = subprocess.run(
        [sys.executable, "-m", "queue_service", "project", "list"],
        env={**_clean_env(), "QUEUE_URL": f"http://127.0.0.1:{_free_port()}"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert unreachable.returncode == 3
    assert unreachable.stderr.startswith("error: cannot reach")


def test_remote_run(server: str, tmp_path: Path) -> None:
    qs(server, "project", "create", "rrun")
    qs(server, "task", "add", "Remote job", "-p", "rrun")
    qs(server, "task", "add", "Breaks once", "-p", "rrun")
    child = (
        "import json, os, sys; t = json.load(sys.stdin)\n"
        "if t['title'] == 'Breaks once' and os.environ['QUEUE_TASK_ATTEMPT'] == '1': sys.exit('flaky')\n"
        "print(os.environ['QUEUE_TASK_KEY'])"
    )
    out = qs(
        server,
        "run",
        "rrun",
        "--max-tasks",
        "3",
        "--idle-exit",
        "30",
        "--lease",
        "1",
        "--workspace",
        str(tmp_path),
        "--json",
        "--",
        sys.executable,
        "-c",
        child,
        code=4,  # a task it ran failed once (then completed on its retry)
    )
    summary = json.loads(out.stdout)
    assert summary["exit_code"] == 4
    assert sorted(t["outcome"] for t in summary["tasks"]) == ["completed", "completed", "retry"]
    for key in ("RRUN-1", "RRUN-2"):
        task = qs_json(server, "task", "show", key, "-p", "rrun")["task"]
        assert task["status"] == "done"
        assert task["result"]["stdout"] == f"{key}\n"
