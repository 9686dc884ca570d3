"""``qs mcp`` over stdio: the SDK's client drives a real ``qs mcp`` subprocess on a flatfile data dir."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from flatfile.backend import FlatfileBackend
from queue_service.mcp_server.tools import CORE_TOOLS
from queue_service.models import TaskStatus
from queue_service.service import QueueService
from tests.integration.mcp_support import call, error_of, record_of, seed, stdio_client


@pytest.fixture
async def data_dir(tmp_path: Path) -> AsyncIterator[Path]:
    """A flatfile data dir holding project ``web`` with WEB-1 (P1), WEB-2, WEB-3."""
    path = tmp_path / "queue-data"
    async with FlatfileBackend(path) as backend:
        await seed(QueueService(backend))
    yield path


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


async def test_claim_note_complete_in_three_calls(data_dir: Path) -> None:
    calls = 0
    async with stdio_client(data_dir, "web") as client:
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
    assert calls <= 3
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


async def test_stale_token_is_refused_with_lease_invalid(data_dir: Path) -> None:
    async with stdio_client(data_dir, "web") as client:
        claimed = record_of(await call(client, "claim_next"))
        key, token = claimed["task"]["key"], claimed["token"]
        record_of(await call(client, "release", key=key, token=token))
        refused = error_of(await call(client, "complete", key=key, token=token))
        again = record_of(await call(client, "claim_next"))
        # the released task is claimable again, under a new token
        assert again["task"]["key"] == key and again["token"] != token
    assert refused["code"] == "lease_invalid"
    assert key in refused["message"]


async def test_project_argument_and_default(data_dir: Path) -> None:
    async with FlatfileBackend(data_dir) as backend:
        await QueueService(backend).create_project({"slug": "api"})
    async with stdio_client(data_dir) as client:
        # no default project and two projects: the call must name one
        ambiguous = error_of(await call(client, "ready"))
        named = record_of(await call(client, "ready", project="web"))
    assert ambiguous["code"] == "validation_error" and "web" in ambiguous["message"]
    assert named["total"] == 3


async def test_bad_arguments_name_the_field(data_dir: Path) -> None:
    async with stdio_client(data_dir, "web") as client:
        unknown_arg = error_of(await call(client, "ready", colour="red"))
        bad_limit = error_of(await call(client, "ready", limit=0))
        missing = error_of(await call(client, "complete", key="WEB-1"))
        no_task = error_of(await call(client, "coord_task_detail", key="WEB-99"))
    assert unknown_arg["code"] == "validation_error" and "colour" in unknown_arg["message"]
    assert bad_limit["code"] == "validation_error" and "limit" in bad_limit["message"]
    assert missing["code"] == "validation_error" and "token" in missing["message"]
    assert no_task["code"] == "task_not_found"


async def test_ready_truncates_explicitly_and_the_cursor_pages_on(data_dir: Path) -> None:
    async with stdio_client(data_dir, "web") as client:
        first = record_of(await call(client, "ready", limit=2))
        assert first["total"] == 3
        assert [t["key"] for t in first["tasks"]] == ["WEB-1", "WEB-2"]
        assert first["more"] == "1 more; pass cursor=2"
        rest = record_of(await call(client, "ready", limit=2, cursor="2"))
    assert [t["key"] for t in rest["tasks"]] == ["WEB-3"]
    assert "more" not in rest
    assert set(first["tasks"][0]) <= {"key", "title", "status", "priority", "role", "assignee", "depends_on"}


async def test_create_task_records_discovered_from(data_dir: Path) -> None:
    async with stdio_client(data_dir, "web") as client:
        claimed = record_of(await call(client, "claim_next"))
        key = claimed["task"]["key"]
        made = record_of(
            await call(
                client,
                "create_task",
                title="fix the flaky login test",
                description="seen while doing WEB-1",
                priority="P1",
                depends_on=[key],
                discovered_from=key,
            )
        )
        detail = record_of(await call(client, "coord_task_detail", key=made["key"]))
        typo = error_of(await call(client, "create_task", title="x", discovered_from="WEB-404"))
    assert made["discovered_from"] == key
    assert detail["discovered_from"] == key  # an extra column, as coord shows it
    assert detail["depends_on"] == [key] and detail["details"] == "seen while doing WEB-1"
    assert typo["code"] == "task_not_found"


@pytest.mark.parametrize(
    ("profile", "count"),
    [("core", 9), ("all", 11), ("readonly", 4)],
)
async def test_profiles(data_dir: Path, profile: str, count: int) -> None:
    async with stdio_client(data_dir, "web", env={"QUEUE_MCP_TOOLS": profile}) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        claim = await call(client, "claim_next")
    assert len(names) == count
    if profile == "readonly":
        assert names == {"coord_mission_status", "coord_list_tasks", "coord_task_detail", "ready"}
        assert error_of(claim)["code"] == "validation_error"
    else:
        assert record_of(claim)["task"]["key"] == "WEB-1"


async def test_coord_tools(data_dir: Path) -> None:
    async with stdio_client(data_dir, "web", env={"QUEUE_MCP_TOOLS": "all"}) as client:
        record_of(await call(client, "claim_next"))
        status = record_of(await call(client, "coord_mission_status"))
        listed = record_of(await call(client, "coord_list_tasks", limit=1))
    assert status["counts"]["total"] == 3 and status["counts"]["in-progress"] == 1
    assert [t["id"] for t in status["active_tasks"]] == ["WEB-1"]
    assert listed["total"] == 3 and listed["more"] == "2 more; pass cursor=1"
    assert listed["tasks"][0]["key"] == "WEB-1" and listed["tasks"][0]["status"] == "in-progress"


def test_qs_mcp_refuses_a_remote_url(tmp_path: Path) -> None:
    import subprocess
    import sys

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
