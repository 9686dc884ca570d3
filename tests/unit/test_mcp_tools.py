"""The MCP tools through the SDK's client, connected in-process to the server (memory backend).

The transports have their own tests (``tests/integration/test_mcp_stdio.py``, ``test_mcp_http.py``);
these cover what every transport shares: arguments, results, truncation, profiles, and roles.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from mcp import Client

from queue_service import exceptions
from queue_service.auth import Principal
from queue_service.mcp_server import server, tools
from queue_service.models import ApiToken, TokenRole, utcnow
from queue_service.service import QueueService
from queue_service.testing import InMemoryBackend
from tests.integration.mcp_support import call, error_of, record_of, seed


@pytest.fixture
async def service() -> AsyncIterator[QueueService]:
    async with InMemoryBackend() as backend:
        svc = QueueService(backend)
        await seed(svc)
        yield svc


def _principal(role: str | None, project: str | None = "web") -> Principal:
    if role is None:
        return Principal.open()
    record = ApiToken(
        id="t1", project=project, role=TokenRole(role), token_hash="x", name=f"{role}-bot", created_at=utcnow()
    )
    return Principal.from_token(record)


@contextlib.asynccontextmanager
async def connect(
    service: QueueService,
    *,
    profile: tools.Profile = "core",
    project: str | None = "web",
    role: str | None = None,
    token_project: str | None = "web",
) -> AsyncIterator[Client]:
    ctx = tools.ToolContext(
        service=service,
        principal=_principal(role, token_project),
        default_project=project,
        agent_lease_seconds=1800.0,
        default_agent="agent-under-test",
    )

    async def context(_request: Any) -> tools.ToolContext:
        return ctx

    async with Client(server.build_server(context, profile)) as client:
        yield client


async def test_claim_next_returns_task_token_lease_and_how_to_finish(service: QueueService) -> None:
    async with connect(service) as client:
        claimed = record_of(await call(client, "claim_next", agent="me"))
        nothing_for_role = record_of(await call(client, "claim_next", role="reviewer"))
    assert claimed["task"]["key"] == "WEB-1" and claimed["task"]["description"] == "do thing 1"
    assert claimed["lease_seconds"] == 1800.0
    task = await service.get_task("web", "WEB-1")
    assert task.assignee == "me"
    assert task.lease_expires_at is not None and claimed["lease_expires_at"] == task.lease_expires_at.isoformat()
    assert claimed["next"].startswith("When done: complete(project='web', key='WEB-1'")
    assert nothing_for_role["task"] is None and "reviewer" in nothing_for_role["message"]


async def test_heartbeat_fail_release(service: QueueService) -> None:
    async with connect(service) as client:
        first = record_of(await call(client, "claim_next"))
        beat = record_of(await call(client, "heartbeat", key="WEB-1", token=first["token"]))
        failed = record_of(await call(client, "fail", key="WEB-1", token=first["token"], error="boom"))
        second = record_of(await call(client, "claim_next"))
        released = record_of(await call(client, "release", key=second["task"]["key"], token=second["token"]))
        final = record_of(await call(client, "claim_next"))
        dead = record_of(
            await call(client, "fail", key=final["task"]["key"], token=final["token"], error="no", retryable=False)
        )
    assert beat["key"] == "WEB-1" and beat["lease_expires_at"]
    assert failed["attempts"] == "1/3"
    assert released["status"] == "not-started"
    assert dead["status"] == "failed"


async def test_add_note_without_token_uses_the_agent_name(service: QueueService) -> None:
    async with connect(service) as client:
        record_of(await call(client, "add_note", key="WEB-2", text="looked at it"))
    (note,) = await service.list_notes("web", "WEB-2")
    assert note.author == "agent-under-test" and note.text == "looked at it"


async def test_arguments_are_validated_and_named(service: QueueService) -> None:
    async with connect(service) as client:
        unknown_arg = error_of(await call(client, "ready", colour="red"))
        bad_limit = error_of(await call(client, "ready", limit=0))
        bad_cursor = error_of(await call(client, "ready", cursor="abc"))
        missing = error_of(await call(client, "complete", key="WEB-1"))
        bad_priority = error_of(await call(client, "create_task", title="x", priority="P9"))
        no_task = error_of(await call(client, "coord_task_detail", key="WEB-99"))
        nul = error_of(await call(client, "add_note", key="WEB-1", text="a\x00b"))
    assert unknown_arg["code"] == "validation_error" and "colour" in unknown_arg["message"]
    assert bad_limit["code"] == "validation_error" and "limit" in bad_limit["message"]
    assert bad_cursor["code"] == "validation_error" and "cursor" in bad_cursor["message"]
    assert missing["code"] == "validation_error" and "token" in missing["message"]
    assert bad_priority["code"] == "validation_error" and "priority" in bad_priority["message"]
    assert no_task["code"] == "task_not_found"
    assert nul["code"] == "validation_error"
    assert await service.list_notes("web", "WEB-1") == []


async def test_project_defaults(service: QueueService) -> None:
    await service.create_project({"slug": "api"})
    async with connect(service, project=None) as client:
        ambiguous = error_of(await call(client, "ready"))
        named = record_of(await call(client, "ready", project="web"))
        missing = error_of(await call(client, "ready", project="nope"))
    async with connect(service, project=None, role="agent", token_project="web") as client:
        from_token = record_of(await call(client, "ready"))
    assert ambiguous["code"] == "validation_error" and "web" in ambiguous["message"]
    assert named["project"] == "web" and named["total"] == 3
    assert missing["code"] == "project_not_found"
    assert from_token["project"] == "web"


async def test_ready_truncates_explicitly_and_the_cursor_pages_on(service: QueueService) -> None:
    async with connect(service) as client:
        first = record_of(await call(client, "ready", limit=2))
        rest = record_of(await call(client, "ready", limit=2, cursor="2"))
    assert first["total"] == 3
    assert [t["key"] for t in first["tasks"]] == ["WEB-1", "WEB-2"]
    assert first["more"] == "1 more; pass cursor=2"
    assert [t["key"] for t in rest["tasks"]] == ["WEB-3"] and "more" not in rest
    assert set(first["tasks"][0]) == {"key", "title", "status", "priority", "role"}


async def test_create_task_records_discovered_from(service: QueueService) -> None:
    async with connect(service) as client:
        claimed = record_of(await call(client, "claim_next"))
        key = claimed["task"]["key"]
        made = record_of(
            await call(
                client,
                "create_task",
                title="fix the flaky login test",
                description="seen while doing WEB-1",
                role="qa",
                priority="P1",
                depends_on=[key],
                discovered_from=key,
            )
        )
        detail = record_of(await call(client, "coord_task_detail", key=made["key"]))
        typo = error_of(await call(client, "create_task", title="x", discovered_from="WEB-404"))
    assert made["discovered_from"] == key and made["role"] == "qa" and made["priority"] == "P1"
    assert detail["discovered_from"] == key  # an extra column, as coord shows it
    assert detail["depends_on"] == [key] and detail["details"] == "seen while doing WEB-1"
    assert typo["code"] == "task_not_found"
    stored = await service.get_task("web", made["key"])
    assert stored.extra == {"discovered_from": key}
    snapshot = await service.export_project("web")
    assert next(t for t in snapshot.tasks if t.key == made["key"]).extra == {"discovered_from": key}


async def test_agent_creates_tasks_only_for_work_it_holds(service: QueueService) -> None:
    async with connect(service, role="agent") as client:
        plain = error_of(await call(client, "create_task", title="unasked"))
        claimed = record_of(await call(client, "claim_next"))
        key = claimed["task"]["key"]
        wrong = error_of(await call(client, "create_task", title="x", discovered_from=key, token="qs_not-the-lease"))
        made = record_of(await call(client, "create_task", title="found", discovered_from=key, token=claimed["token"]))
    assert plain["code"] == "forbidden" and "discovered_from" in plain["message"]
    assert wrong["code"] == "lease_invalid"
    assert made["discovered_from"] == key
    assert len((await service.list_tasks("web")).items) == 4


@pytest.mark.parametrize("tool", ["claim_next", "heartbeat", "complete", "add_note", "create_task"])
async def test_viewer_may_read_but_not_work(service: QueueService, tool: str) -> None:
    args: dict[str, Any] = {
        "claim_next": {},
        "heartbeat": {"key": "WEB-1", "token": "t"},
        "complete": {"key": "WEB-1", "token": "t"},
        "add_note": {"key": "WEB-1", "text": "hi"},
        "create_task": {"title": "x"},
    }[tool]
    async with connect(service, role="viewer") as client:
        refused = error_of(await call(client, tool, **args))
        record_of(await call(client, "ready"))
        record_of(await call(client, "coord_task_detail", key="WEB-1"))
    assert refused["code"] == "forbidden"
    assert (await service.get_task("web", "WEB-1")).status.value == "not-started"


async def test_a_token_of_another_project_is_refused(service: QueueService) -> None:
    await service.create_project({"slug": "api"})
    async with connect(service, project=None, role="admin", token_project="api") as client:
        refused = error_of(await call(client, "ready", project="web"))
    assert refused["code"] == "forbidden"


@pytest.mark.parametrize(("profile", "count"), [("core", 9), ("all", 11), ("readonly", 4)])
async def test_profiles(service: QueueService, profile: tools.Profile, count: int) -> None:
    async with connect(service, profile=profile) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        claim = await call(client, "claim_next")
    assert len(names) == count
    if profile == "core":
        assert names == set(tools.CORE_TOOLS)
    if profile == "readonly":
        assert names == {"coord_mission_status", "coord_list_tasks", "coord_task_detail", "ready"}
        assert "readonly" in error_of(claim)["message"]
    else:
        assert record_of(claim)["task"]["key"] == "WEB-1"


def test_core_tools_list_fits_the_context_budget() -> None:
    import json

    payload = json.dumps({"tools": server.list_tools_payload("core")})
    assert len(payload) / 4 < 2000, len(payload)
    for tool in server.list_tools_payload("all"):
        schema = tool["inputSchema"]
        assert "title" not in schema and '"null"' not in json.dumps(schema)
        assert all("title" not in prop for prop in schema["properties"].values())
        assert set(schema.get("required", [])) <= set(schema["properties"])
        model = tools.TOOLS[tool["name"]].args
        assert set(schema["properties"]) == set(model.model_fields)


async def test_coord_tools(service: QueueService) -> None:
    async with connect(service, profile="all") as client:
        record_of(await call(client, "claim_next"))
        status = record_of(await call(client, "coord_mission_status"))
        listed = record_of(await call(client, "coord_list_tasks", limit=1))
    assert status["counts"]["total"] == 3 and status["counts"]["in-progress"] == 1
    assert [t["id"] for t in status["active_tasks"]] == ["WEB-1"]
    assert listed["total"] == 3 and listed["more"] == "2 more; pass cursor=1"
    assert listed["tasks"][0] == {
        "key": "WEB-1",
        "title": "task 1",
        "status": "in-progress",
        "priority": "P1",
        "role": "default",
        "assignee": "agent-under-test",
    }


async def test_task_detail_cuts_big_results_and_long_note_logs(service: QueueService) -> None:
    async with connect(service) as client:
        claimed = record_of(await call(client, "claim_next"))
        for i in range(25):
            await service.add_note("web", "WEB-1", "bot", f"note {i}")
        record_of(await call(client, "complete", key="WEB-1", token=claimed["token"], result={"log": "x" * 10_000}))
        detail = record_of(await call(client, "coord_task_detail", key="WEB-1"))
    assert len(detail["notes_log"]) == 20 and detail["notes_log"][-1]["text"] == "note 24"
    assert detail["notes_more"] == "5 earlier notes not shown"
    assert len(detail["result"]) == 4000 and detail["result_cut"].endswith("characters of JSON not shown")


async def test_internal_errors_do_not_leak_details(service: QueueService) -> None:
    class Broken(exceptions.BackendError):
        pass

    result = server.error_result(Broken("driver said no", dsn="postgres://secret"))
    error = result.structured_content["error"]  # type: ignore[index]
    assert result.is_error and error["details"] == {} and "secret" not in result.content[0].text  # type: ignore[union-attr]


async def test_heartbeat_and_note_keep_the_agent_lease_and_a_refusal_says_why(service: QueueService) -> None:
    async with connect(service) as client:
        claimed = record_of(await call(client, "claim_next", agent="me"))
        key, token = claimed["task"]["key"], claimed["token"]
        record_of(await call(client, "heartbeat", key=key, token=token))
        after_beat = await service.get_task("web", key)
        record_of(await call(client, "add_note", key=key, token=token, text="still thinking"))
        record_of(await call(client, "release", key=key, token=token))
        refused = error_of(await call(client, "complete", key=key, token=token, result={"ok": True}))
    # a heartbeat without a length renews for the length granted (not the 30 s worker default)
    assert after_beat.lease_expires_at is not None and after_beat.updated_at is not None
    left = (after_beat.lease_expires_at - utcnow()).total_seconds()
    assert left >= 900, left
    assert refused["code"] == "lease_invalid" and refused["details"]["reason"] == "released"


async def test_claim_next_follows_the_dispatch_order(service: QueueService) -> None:
    # WEB-1 is P1; among the P2s, WEB-3 unblocks a task, so it goes before the older WEB-2
    await service.create_task("web", {"title": "after three", "depends_on": ["WEB-3"]})
    expected = [t.key for t in (await service.ready("web", limit=2)).tasks]
    async with connect(service) as client:
        listed = record_of(await call(client, "ready", limit=2))
        first = record_of(await call(client, "claim_next", agent="me"))
        second = record_of(await call(client, "claim_next", agent="me"))
    assert expected == ["WEB-1", "WEB-3"]
    assert [t["key"] for t in listed["tasks"]] == expected
    assert [first["task"]["key"], second["task"]["key"]] == expected
