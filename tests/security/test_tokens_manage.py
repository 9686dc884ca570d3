"""Tokens a user can manage: list, revoke, purge; revocation reaches every replica within the cache
time; auth stays on while any record exists; the typed clients read QUEUE_TOKEN."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from queue_service.api import auth as api_auth
from queue_service.app import create_app
from queue_service.cli import app as cli_app
from queue_service.client import AsyncClient
from queue_service.models import TokenRole
from queue_service.testing import InMemoryBackend
from tests.security.http_support import fingerprint, seed, seeded
from tests.unit.api_support import BASE, FAST, add_token, error_of, http_client, running
from tests.unit.api_support import settings as app_settings

JSON = {"Content-Type": "application/json"}


async def test_only_a_global_admin_lists_and_revokes_tokens() -> None:
    async with seeded() as s:
        root = await add_token(s.backend, TokenRole.ADMIN)
        project_admin = await add_token(s.backend, TokenRole.ADMIN, "web")
        agent = await add_token(s.backend, TokenRole.AGENT, "web")
        ids = sorted(s.backend.api_tokens)
        for weak in (project_admin, agent, None):
            async with http_client(s.app, weak) as http:
                listed = await http.get("/v1/tokens")
                assert listed.status_code in (401, 403), listed.text
                before = {k: v.revoked_at for k, v in s.backend.api_tokens.items()}
                revoked = await http.delete(f"/v1/tokens/{ids[0]}", headers=JSON)
                assert revoked.status_code in (401, 403), revoked.text
                assert {k: v.revoked_at for k, v in s.backend.api_tokens.items()} == before
        async with http_client(s.app, root) as http:
            listed = await http.get("/v1/tokens")
            assert listed.status_code == 200
            assert sorted(t["id"] for t in listed.json()["items"]) == ids
            assert "token_hash" not in listed.text and root not in listed.text


async def test_revoked_token_is_refused_here_at_once_and_auth_stays_on() -> None:
    async with seeded() as s:
        root = await add_token(s.backend, TokenRole.ADMIN)
        agent = await add_token(s.backend, TokenRole.AGENT, "web")
        agent_id = next(t.id for t in s.backend.api_tokens.values() if t.role is TokenRole.AGENT)
        async with http_client(s.app, agent) as as_agent:
            assert (await as_agent.get("/v1/projects/web/tasks")).status_code == 200  # cached now
        async with http_client(s.app, root) as as_root:
            gone = await as_root.delete(f"/v1/tokens/{agent_id}", headers=JSON)
            assert gone.status_code == 200 and gone.json()["revoked_at"]
        before = await fingerprint(s.service)
        async with http_client(s.app, agent) as as_agent:
            refused = await as_agent.post("/v1/projects/web/claims", json={"agent": "bot"})
            assert refused.status_code == 401
            assert "revoked" in error_of(refused)["message"]
        async with http_client(s.app) as anonymous:
            assert (await anonymous.get("/v1/projects/web/tasks")).status_code == 401
        assert await fingerprint(s.service) == before
        assert not await s.app.state.qs.authenticator.still_valid(agent_id)


async def test_revocation_reaches_another_replica_within_the_cache_time(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(api_auth.time, "monotonic", lambda: now[0])
    async with seeded() as s:
        root = await add_token(s.backend, TokenRole.ADMIN)
        agent = await add_token(s.backend, TokenRole.AGENT, "web")
        agent_id = next(t.id for t in s.backend.api_tokens.values() if t.role is TokenRole.AGENT)
        other = create_app(app_settings(), backend=s.backend)  # a second replica on the same storage
        async with running(other):
            auth_b = other.state.qs.authenticator
            async with http_client(other, agent) as on_b:
                assert (await on_b.get("/v1/projects/web/tasks")).status_code == 200
            assert await auth_b.still_valid(agent_id)
            async with http_client(s.app, root) as on_a:
                assert (await on_a.delete(f"/v1/tokens/{agent_id}", headers=JSON)).status_code == 200
            now[0] += 30.0  # the cache time: replica B must have re-read the record by now
            async with http_client(other, agent) as on_b:
                assert (await on_b.get("/v1/projects/web/tasks")).status_code == 401
            assert not await auth_b.still_valid(agent_id)


def _cli(data_dir: Path, *args: str) -> dict[str, object]:
    result = CliRunner().invoke(cli_app, [*args, "--json"], env={"QUEUE_DATA_DIR": str(data_dir)})
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    parsed: dict[str, object] = json.loads(result.stdout)
    return parsed


async def _statuses(data: Path, token: str | None) -> tuple[int, int]:
    """(GET /v1/projects with *token*, anonymous POST /v1/projects) on a server over *data*."""
    app = create_app(app_settings(backend_url=f"file://{data}"))
    async with running(app), http_client(app, token) as http, http_client(app) as anonymous:
        read = await http.get("/v1/projects")
        write = await anonymous.post("/v1/projects", json={"slug": "x"})
        return read.status_code, write.status_code


def test_cli_list_revoke_purge_and_only_purge_turns_auth_off(tmp_path: Path) -> None:
    data = tmp_path / "data"
    created = _cli(data, "token", "create", "--role", "admin", "--all-projects", "--name", "first-admin")
    listed = _cli(data, "token", "list")
    assert [t["id"] for t in listed["items"]] == [created["id"]]  # type: ignore[index]
    assert "token_hash" not in json.dumps(listed) and str(created["token"]) not in json.dumps(listed)
    assert asyncio.run(_statuses(data, str(created["token"]))) == (200, 401)  # auth on
    revoked = _cli(data, "token", "revoke", str(created["id"]))
    assert revoked["revoked_at"]
    # the revoked token is refused, and auth stays on: a revoked record is still a record
    assert asyncio.run(_statuses(data, str(created["token"]))) == (401, 401)
    refused = CliRunner().invoke(cli_app, ["token", "purge"], env={"QUEUE_DATA_DIR": str(data)})
    assert refused.exit_code != 0 and "--yes" in refused.stderr
    assert _cli(data, "token", "purge", "--yes") == {"deleted": 1}
    assert asyncio.run(_statuses(data, None)) == (200, 201)  # only purge turns auth off
    assert _cli(data, "token", "list") == {"items": []}


async def test_typed_client_reads_queue_token(monkeypatch: pytest.MonkeyPatch) -> None:
    async with seeded() as s:
        token = await add_token(s.backend, TokenRole.ADMIN)
        transport = httpx.ASGITransport(app=s.app)
        async with AsyncClient(BASE, transport=transport) as anonymous:
            with pytest.raises(Exception, match="bearer token"):
                await anonymous.list_projects()
        monkeypatch.setenv("QUEUE_TOKEN", token)
        async with AsyncClient(BASE, transport=transport) as client:
            assert [p.slug for p in await client.list_projects()] == ["web"]
            task = await client.retry_task("web", (await client.cancel_task("web", "WEB-2")).key)
            assert task.status.value == "not-started"  # body-less POSTs carry the JSON media type


async def test_purge_on_a_reachable_server_refuses_everyone_instead_of_running_open() -> None:
    async with InMemoryBackend(config=FAST) as backend:
        root = await add_token(backend, TokenRole.ADMIN)
        app = create_app(app_settings(host="0.0.0.0", allowed_hosts="qs.test"), backend=backend)
        async with running(app):
            await seed(app.state.qs.service)
            async with http_client(app, root) as http:
                assert (await http.get("/v1/projects")).status_code == 200
            assert await backend.records.purge_api_tokens() == 1
            app.state.qs.authenticator.reset()  # as another replica would after its 30 s
            before = await fingerprint(app.state.qs.service)
            async with http_client(app) as anonymous:
                refused = await anonymous.post("/v1/projects/web/tasks/WEB-1/cancel", headers=JSON)
                assert refused.status_code == 401
                assert "no API token" in error_of(refused)["message"]
            assert await fingerprint(app.state.qs.service) == before
