"""Issue 18: ``qs queue`` and ``qs backlog`` (the Mosaic queue/backlog CLI verbs) from the real CLI, in
flatfile direct mode; the lease token is kept locally (mode 0600) so ``complete KEY --agent A`` needs
no token. The same scenario on Postgres + Valkey is in tests/integration/test_cli_postgres.py."""

from __future__ import annotations

import json
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from queue_service.cli import app
from queue_service.cli.mosaic_queue import lease_file

Invoke = Callable[..., Any]


def flatfile(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Invoke:
    monkeypatch.setenv("QUEUE_DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()

    def invoke(*args: str, code: int | None = 0, input: str | None = None) -> Any:
        result = runner.invoke(app, list(args), input=input)
        if code is None:
            assert result.exit_code != 0, (args, result.stdout)
        else:
            assert result.exit_code == code, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        return result

    return invoke


def j(qs: Invoke, *args: str) -> Any:
    return json.loads(qs(*args).stdout)


def scenario(qs: Invoke, project: str) -> None:
    qs("project", "create", project, "--prefix", "MQ")
    one = j(qs, "queue", "create", "-p", project, "--title", "Design", "--priority", "HIGH", "--lane", "dev")
    assert (one["key"], one["priority"], one["role"], one["status"]) == ("MQ-1", "P1", "dev", "not-started")
    two = j(qs, "queue", "create", "-p", project, "--title", "Build", "--description", "d", "--dependency", "MQ-1")
    assert (two["depends_on"], two["description"], two["priority"]) == (["MQ-1"], "d", "P2")
    assert [t["key"] for t in j(qs, "queue", "list", "--project", project, "--status", "pending")] == ["MQ-1", "MQ-2"]
    assert j(qs, "queue", "list", "-p", project, "--mission", "default", "--status", "running") == []
    assert j(qs, "queue", "get", "-p", project, "MQ-2")["title"] == "Build"

    # claim: agent lease unless --ttl; the token is stored 0600 and never needed on the command line
    got = j(qs, "queue", "claim", "-p", project, "--agent", "a1", "--ttl", "120")
    assert got["task"]["key"] == "MQ-1" and got["lease"]["holder"] == "a1" and got["lease"]["seconds"] == 120
    path = lease_file(project, "MQ-1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["token"] == got["lease"]["token"]
    assert "not 'a2'" in qs("queue", "complete", "-p", project, "MQ-1", "--agent", "a2", code=None).stderr
    released = j(qs, "queue", "release", "-p", project, "MQ-1", "--agent", "a1")
    assert released["status"] == "not-started" and not path.exists()
    assert "no stored lease" in qs("queue", "complete", "-p", project, "MQ-1", "--agent", "a1", code=None).stderr
    got = j(qs, "queue", "claim", "-p", project, "--agent", "a1")
    assert got["task"]["key"] == "MQ-1" and got["lease"]["seconds"] == 1800  # the agent lease
    done = j(qs, "queue", "complete", "-p", project, "MQ-1", "--agent", "a1", "--summary", "schema drafted")
    assert (done["status"], done["result"]) == ("done", "schema drafted")
    assert j(qs, "queue", "claim", "-p", project, "--agent", "a1", "--lane", "ops") is None

    # backlog verbs
    three = j(qs, "backlog", "create", "-p", project, "--title", "Ship", "--priority", "CRITICAL", "--json")
    assert three["priority"] == "P0"
    assert j(qs, "backlog", "link", "-p", project, "MQ-3", "MQ-2", "--json")["depends_on"] == ["MQ-2"]
    assert [t["key"] for t in j(qs, "backlog", "list", "-p", project, "--status", "NOT_STARTED", "--json")] == [
        "MQ-2",
        "MQ-3",
    ]
    got = j(qs, "backlog", "claim", "-p", project, "--agent", "b1", "--json")
    assert got["task"]["key"] == "MQ-2"
    again = j(qs, "backlog", "reclaim", "-p", project, "MQ-2", "--agent", "b1", "--ttl", "300", "--json")
    assert again["lease"]["token"] == got["lease"]["token"] and again["lease"]["seconds"] == 300
    assert j(qs, "backlog", "complete", "-p", project, "MQ-2", "--agent", "b1", "--json")["status"] == "done"
    blocked = j(qs, "backlog", "block", "-p", project, "MQ-3", "--reason", "waiting on legal", "--json")
    assert blocked["status"] == "blocked"
    stats = j(qs, "backlog", "stats", "-p", project, "--json")
    assert stats["by_status"]["done"] == 2 and stats["by_status"]["blocked"] == 1
    assert (
        "error: priority:"
        in qs("queue", "create", "-p", project, "--title", "x", "--priority", "URGENT", code=None).stderr
    )


def test_queue_and_backlog_verbs_flatfile(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("QUEUE_LEASE_DIR", raising=False)
    scenario(flatfile(monkeypatch, tmp_path), f"mq-{uuid.uuid4().hex[:8]}")
    assert (tmp_path / "state" / "queue-service" / "leases").is_dir()
