"""The CLI without a server: the user is the operator (docs/plans/security.md, "The CLI without a server").

With ``QUEUE_WORKSPACE`` set it follows the API's rules exactly; unset, ``--workspace`` is a directory
on this machine, still never ``~``-expanded, never in the data directory, never overlapping.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from queue_service.cli import app


def _qs(monkeypatch: pytest.MonkeyPatch, **env: str) -> Any:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        return runner.invoke(app, list(args))

    return invoke


def test_direct_mode_with_a_root_follows_the_api_rules(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    qs = _qs(monkeypatch, QUEUE_DATA_DIR=str(tmp_path / "data"), QUEUE_WORKSPACE=str(root))
    refused = qs("project", "create", "web", "--workspace", str(tmp_path / "elsewhere"))
    assert refused.exit_code != 0
    assert "relative to QUEUE_WORKSPACE" in refused.stderr
    assert "No projects yet" in qs("project", "list").stdout  # nothing stored
    made = qs("project", "create", "web", "--workspace", "team/web", "--json")
    assert made.exit_code == 0, made.stderr
    assert json.loads(made.stdout)["workspace"] == str(root / "team" / "web")
    default = qs("project", "create", "api", "--json")
    assert json.loads(default.stdout)["workspace"] == str(root / "api")
    synced = qs("sync", "web")
    assert synced.exit_code == 0, synced.stderr
    assert (root / "team" / "web" / "TASKS.md").is_file()  # created inside the root, like the server does
    overlap = qs("project", "create", "team", "--workspace", "team")
    assert overlap.exit_code != 0
    assert "overlaps the workspace of project web" in overlap.stderr


def test_direct_mode_without_a_root_takes_a_local_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    data = tmp_path / "data"
    qs = _qs(monkeypatch, QUEUE_DATA_DIR=str(data))
    monkeypatch.chdir(tmp_path)
    made = qs("project", "create", "solo", "--workspace", "ws", "--json")
    assert made.exit_code == 0, made.stderr
    assert json.loads(made.stdout)["workspace"] == str(tmp_path / "ws")
    for bad, rule in (("~", "'~'"), (str(data / "x"), "data directory"), (str(tmp_path / "ws" / "in"), "overlaps")):
        result = qs("project", "create", "other", "--workspace", bad)
        assert result.exit_code != 0, bad
        assert rule in result.stderr, result.stderr
    (tmp_path / "ws").mkdir()
    synced = qs("sync", "solo", "--json")
    assert synced.exit_code == 0, synced.stderr
    assert (tmp_path / "ws" / "TASKS.md").is_file()
