"""``/mcp`` over streamable HTTP: the SDK's client against the real app under a real uvicorn, behind
the same bearer tokens as ``/v1`` (viewer reads, agent works, admin creates; per project)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from queue_service import auth
from queue_service.backend import Backend
from queue_service.mcp_server.tools import CORE_TOOLS
from queue_service.models import TaskStatus
from queue_service.service import QueueService
from queue_service.settings import Settings
from tests.integration.mcp_support import call, error_of, http_client, record_of, running_app, seed

_SETTINGS = Settings(backend_url="memory://", orchestrator=False, sync=False)


@pytest.fixture
async def served(backend: Backend) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """The app on *backend* (every backend of the contract suite) with project ``web`` seeded, and a
    token per role, scoped to ``web``."""
    await seed(QueueService(backend))
    tokens = {role: (await auth.create_token(backend.records, "web", role))[0] for role in ("viewer", "agent", "admin")}
    async with running_app(_SETTINGS, backend) as url:
        yield url, tokens


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_agent_lists_claims_notes_and_completes_in_three_calls(
    served: tuple[str, dict[str, str]], backend: Backend, mode: str
) -> None:
    url, tokens = served
    async with http_client(url, tokens["agent"], mode) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        claimed = record_of(await call(client, "claim_next", project="web"))
        key, token = claimed["task"]["key"], claimed["token"]
        record_of(await call(client, "add_note", project="web", key=key, token=token, text="on it"))
        done = record_of(await call(client, "complete", project="web", key=key, token=token, result="shipped"))
        stale = error_of(await call(client, "heartbeat", project="web", key=key, token=token))
    assert names == set(CORE_TOOLS)
    assert claimed["lease_seconds"] >= 900
    assert done["status"] == TaskStatus.DONE.value
    assert stale["code"] == "lease_invalid"
    service = QueueService(backend)
    task = await service.get_task("web", key)
    assert task.status is TaskStatus.DONE and task.result == "shipped"
    (note,) = await service.list_notes("web", key)
    assert note.text == "on it"


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_viewer_token_is_refused_on_claim_next(
    served: tuple[str, dict[str, str]], backend: Backend, mode: str
) -> None:
    url, tokens = served
    async with http_client(url, tokens["viewer"], mode) as client:
        refused = error_of(await call(client, "claim_next", project="web"))
        ready = record_of(await call(client, "ready"))  # the token's project is the default
    assert refused["code"] == "forbidden" and "viewer" in refused["message"]
    assert ready["total"] == 3
    assert (await QueueService(backend).get_task("web", "WEB-1")).status is TaskStatus.NOT_STARTED


async def test_agent_creates_only_discovered_work_admin_creates_any(served: tuple[str, dict[str, str]]) -> None:
    url, tokens = served
    async with http_client(url, tokens["agent"]) as client:
        refused = error_of(await call(client, "create_task", title="unasked"))
        claimed = record_of(await call(client, "claim_next"))
        found = record_of(
            await call(
                client, "create_task", title="found", discovered_from=claimed["task"]["key"], token=claimed["token"]
            )
        )
    async with http_client(url, tokens["admin"]) as client:
        planned = record_of(await call(client, "create_task", title="planned", priority="P0"))
    assert refused["code"] == "forbidden"
    assert found["discovered_from"] == claimed["task"]["key"]
    assert planned["priority"] == "P0"


@pytest.mark.parametrize("backend", ["memory_backend"], indirect=True)
async def test_no_or_unknown_token_is_401_before_mcp(served: tuple[str, dict[str, str]]) -> None:
    url, _ = served
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    async with httpx.AsyncClient() as http:
        missing = await http.post(f"{url}/mcp", json=body, headers=headers)
        wrong = await http.post(f"{url}/mcp", json=body, headers={**headers, "Authorization": "Bearer qs_nope"})
        other_scheme = await http.post(f"{url}/mcp", json=body, headers={**headers, "Authorization": "Basic eDp5"})
    for response in (missing, wrong, other_scheme):
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("backend", ["memory_backend"], indirect=True)
async def test_token_of_another_project_is_refused(served: tuple[str, dict[str, str]], backend: Backend) -> None:
    url, _ = served
    await QueueService(backend).create_project({"slug": "api"})
    other, _ = await auth.create_token(backend.records, "api", "admin")
    async with http_client(url, other) as client:
        refused = error_of(await call(client, "claim_next", project="web"))
        own = record_of(await call(client, "ready"))
    assert refused["code"] == "forbidden"
    assert own["project"] == "api" and own["total"] == 0
