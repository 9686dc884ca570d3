"""Issue 10 finding 11: ``serve`` on an unmigrated database is one line and exit 2; in direct
(serverless) mode an emptied Valkey does not hide ready tasks from ``qs claim``."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_cli_postgres import _db, cli_on, slug

pytestmark = pytest.mark.postgres

__all__ = ["slug"]

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_on_an_unmigrated_database_is_one_line_and_exit_2(empty_pg_url: str, valkey_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUEUE_", "MOSAIC_"))}
    env.update(
        QUEUE_DATABASE_URL=empty_pg_url,
        QUEUE_VALKEY_URL=_db(valkey_url, 9),
        QUEUE_PORT=str(_free_port()),
        PYTHONPATH=str(ROOT),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "queue_service", "serve"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"serve kept running on an unmigrated database; stderr: {err[-2000:]}")
    assert proc.returncode == 2, (proc.returncode, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "queue-service migrate" in lines[0]
    assert "Traceback" not in err and out == ""


def test_direct_mode_claim_finds_ready_tasks_after_valkey_lost_them(
    monkeypatch: pytest.MonkeyPatch, pg_url: str, valkey_url: str, slug: str
) -> None:
    import redis

    qs = cli_on(monkeypatch, pg_url, valkey_url)
    qs("project", "create", slug, "--prefix", "DM")
    qs("task", "add", "-p", slug, "first")
    client: Any = redis.Redis.from_url(_db(valkey_url, 9))
    with contextlib.closing(client):
        keys = list(client.scan_iter(match=f"mosaic:queue:project:{slug}:*", count=1000))
        assert keys
        client.delete(*keys)  # Valkey lost everything (flush, restart without persistence)
    ready = json.loads(qs("task", "list", "-p", slug, "--ready", "--json").stdout)
    assert [t["title"] for t in ready["items"]] == ["first"]
    got = json.loads(qs("claim", slug, "--json").stdout)
    assert got is not None and got["task"]["title"] == "first"
