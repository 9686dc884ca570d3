"""``qs mcp`` over stdio: the SDK's client drives a real ``qs mcp`` subprocess on a flatfile data dir."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flatfile.backend import FlatfileBackend
from queue_service.mcp_server.tools import CORE_TOOLS
from queue_service.models import TaskStatus
from queue_service.service import QueueService
from tests.integration.mcp_support import call, error_of, record_of, seed, stdio_client


@pytest.fixture
async def data_dir(tmp_path: Path) -> Path:
    """A flatfile data dir holding project ``web`` with WEB-1 (P1), WEB-2, WEB-3."""
    path = tmp_path / "queue-data"
    async with FlatfileBackend(path) as backend:
        await seed(QueueService(backend))
    return path


async def _service_view(path: Path) -> tuple[FlatfileBackend, QueueService]:
    backend = FlatfileBackend(path)
    await backend.open()
    return backend, QueueService(backend)


async def test_core_profile_lists_exactly_the_nine_tools_within_budget(data_dir: Path) -> None:
    async with stdio_client(data_dir, "web") as client:
        listed = await client.list_tools()
    names = [tool.name for tool in listed.tools]
    assert sorted(names) == sorted(CORE_TOOLS)
    assert len(names) == 9
    payload = json.dumps(listed.model_dump(mode="json", by_alias=True, exclude_none=True))
    # the context budget of the core profile: under 2,000 tokens, measured as characters / 4
    assert len(payload) / 4 < 2000, len(payload)
    claim = next(t for t in listed.tools if t.name == "claim_next")
    assert set(claim.input_schema["properties"]) == {"project", "agent", "role"}


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_claim_note_complete_in_three_calls_then_a_stale_token_is_refused(data_dir: Path, mode: str) -> None:
    calls = 0
    async with stdio_client(data_dir, "web", mode=mode) as client:
        claimed = record_of(await call(client, "claim_next"))
        calls += 1
        key, token = claimed["task"]["key"], claimed["token"]
        assert key == "WEB-1"  # P1 first
        assert claimed["task"]["description"] == "do thing 1"
        assert claimed["lease_seconds"] >= 900
        assert "complete(" in claimed["next"] and "\n" not in claimed["next"]
        record_of(await call(client, "add_note", key=key, token=token, text="halfway there"))
        calls += 1
        done = record_of(await call(client, "complete", key=key, token=token, result={"ok": True}))
        calls += 1
        # the token is stale now: refused, with our error code and the reason
        refused = error_of(await call(client, "complete", key=key, token=token))
    assert calls <= 3
    assert refused["code"] == "lease_invalid" and key in refused["message"]
    assert done["status"] == TaskStatus.DONE.value
    backend, service = await _service_view(data_dir)
    try:
        task = await service.get_task("web", key)
        notes = await service.list_notes("web", key)
    finally:
        await backend.close()
    assert task.status is TaskStatus.DONE
    assert task.result == {"ok": True}
    assert [n.text for n in notes] == ["halfway there"]


def test_qs_mcp_refuses_a_remote_url(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "queue_service", "mcp", "web"],
        env={"PATH": "/usr/bin:/bin", "QUEUE_URL": "http://127.0.0.1:9", "QUEUE_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert out.stdout == ""
    assert "http://127.0.0.1:9/mcp" in out.stderr
