"""Bearer tokens: creation and hashing, the role × project matrix, and the auth cache."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from queue_service import exceptions
from queue_service.api.auth import Authenticator
from queue_service.app import create_app
from queue_service.auth import Action, Principal, create_token, generate_token, hash_token, new_token_record
from queue_service.models import TokenRole
from queue_service.testing import InMemoryBackend
from tests.unit.api_support import add_token, error_of, http_client, mem, running, settings

__all__ = ["mem"]


def test_generate_and_hash() -> None:
    a, b = generate_token(), generate_token()
    assert a.startswith("qs_") and len(a) > 40
    assert a != b
    assert hash_token(a) == hashlib.sha256(a.encode()).hexdigest()


def test_new_token_record_stores_only_the_hash() -> None:
    plain, record = new_token_record("web", "agent", name="ci")
    assert record.token_hash == hash_token(plain)
    assert plain not in record.model_dump_json()
    assert (record.project, record.role, record.name) == ("web", TokenRole.AGENT, "ci")
    with pytest.raises(exceptions.ValidationError, match="unknown token role"):
        new_token_record("web", "root")
    with pytest.raises(exceptions.ValidationError):
        new_token_record("Bad Slug", "viewer")


async def test_create_token_needs_an_existing_project(mem: InMemoryBackend) -> None:
    with pytest.raises(exceptions.ProjectNotFound):
        await create_token(mem.records, "web", "viewer")
    plain, record = await create_token(mem.records, None, "admin")
    assert await mem.records.find_api_token(hash_token(plain)) == record
    assert await mem.records.count_api_tokens() == 1


def test_principal_matrix() -> None:
    viewer = Principal(role=TokenRole.VIEWER, project="a")
    agent = Principal(role=TokenRole.AGENT, project="a")
    admin = Principal(role=TokenRole.ADMIN, project="a")
    root = Principal(role=TokenRole.ADMIN)
    assert viewer.allows(Action.READ, "a") and not viewer.allows(Action.WORK, "a")
    assert agent.allows(Action.WORK, "a") and not agent.allows(Action.ADMIN, "a")
    assert not agent.allows(Action.READ, "b")
    assert admin.allows(Action.ADMIN, "a") and not admin.allows(Action.ADMIN, "b")
    assert not admin.allows(Action.READ, None)  # service-wide needs a global token
    assert root.allows(Action.ADMIN, "anything") and root.allows(Action.READ, None)
    assert Principal.open().allows(Action.ADMIN, None)
    with pytest.raises(exceptions.Forbidden, match="agent token may not admin"):
        agent.check(Action.ADMIN, "a")


async def test_authenticator_caches(mem: InMemoryBackend) -> None:
    auth = Authenticator(mem.records, recheck_seconds=3600)
    assert await auth.authenticate(None) == Principal.open()
    plain = await add_token(mem, "viewer")
    assert await auth.authenticate(None) == Principal.open()  # "off" is cached for recheck_seconds
    auth.reset()
    with pytest.raises(exceptions.AuthError):
        await auth.authenticate(None)
    first = await auth.authenticate(plain)
    mem.api_tokens.clear()  # a verified token is remembered, auth stays on
    assert await auth.authenticate(plain) == first
    with pytest.raises(exceptions.AuthError):
        await auth.authenticate("qs_unknown")
    with pytest.raises(exceptions.AuthError):
        await auth.authenticate("x" * 10_000)


# -- the matrix over HTTP ---------------------------------------------------------------------------


@pytest.fixture
async def secured(mem: InMemoryBackend) -> AsyncIterator[tuple[FastAPI, dict[str, str]]]:
    """An app with projects a and b, a task in each, and one token per role/scope."""
    async with running(create_app(settings(), backend=mem)) as app:
        async with http_client(app) as open_client:
            for slug in ("a", "b"):
                assert (await open_client.post("/v1/projects", json={"slug": slug})).status_code == 201
                await open_client.post(f"/v1/projects/{slug}/tasks", json={"title": "t"})
        tokens = {
            "root": await add_token(mem, "admin"),
            "admin_a": await add_token(mem, "admin", "a"),
            "agent_a": await add_token(mem, "agent", "a"),
            "viewer_a": await add_token(mem, "viewer", "a"),
        }
        app.state.qs.authenticator.reset()
        yield app, tokens


async def _status(app: FastAPI, token: str | None, method: str, path: str, json: object = None) -> httpx.Response:
    async with http_client(app, token) as client:
        # a state change is always JSON, body or not (api.edge)
        headers = {"Content-Type": "application/json"} if method != "GET" else {}
        return await client.request(method, path, json=json, headers=headers)


async def test_open_when_no_tokens(mem: InMemoryBackend) -> None:
    async with running(create_app(settings(), backend=mem)) as app:
        response = await _status(app, None, "POST", "/v1/projects", {"slug": "web"})
    assert response.status_code == 201


async def test_missing_or_bad_token_is_401(secured: tuple[FastAPI, dict[str, str]]) -> None:
    app, _ = secured
    for token in (None, "qs_not-a-real-token"):
        response = await _status(app, token, "GET", "/v1/projects/a/tasks")
        assert response.status_code == 401
        assert error_of(response)["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"] == "Bearer"
    async with http_client(app) as client:
        basic = await client.get("/v1/projects/a/tasks", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert basic.status_code == 401
    assert (await _status(app, None, "GET", "/healthz")).status_code == 200
    assert (await _status(app, None, "GET", "/readyz")).status_code == 200


async def test_401_comes_before_validation(secured: tuple[FastAPI, dict[str, str]]) -> None:
    app, _ = secured
    response = await _status(app, None, "POST", "/v1/projects/a/claims", {"nonsense": True})
    assert response.status_code == 401


async def test_viewer_reads_but_cannot_work(secured: tuple[FastAPI, dict[str, str]]) -> None:
    app, tokens = secured
    viewer = tokens["viewer_a"]
    assert (await _status(app, viewer, "GET", "/v1/projects/a/tasks")).status_code == 200
    assert (await _status(app, viewer, "GET", "/v1/projects/a/stats")).status_code == 200
    claim = await _status(app, viewer, "POST", "/v1/projects/a/claims", {"agent": "v"})
    assert claim.status_code == 403
    assert error_of(claim)["code"] == "forbidden"
    assert (await _status(app, viewer, "POST", "/v1/projects/a/tasks", {"title": "x"})).status_code == 403
    assert (await _status(app, viewer, "POST", "/v1/projects/a/tasks/A-1/notes", {"text": "x"})).status_code == 403
    assert (await _status(app, viewer, "GET", "/v1/projects/b/tasks")).status_code == 403


async def test_agent_works_in_its_project_only(secured: tuple[FastAPI, dict[str, str]]) -> None:
    app, tokens = secured
    agent = tokens["agent_a"]
    claim = await _status(app, agent, "POST", "/v1/projects/a/claims", {"agent": "bot"})
    assert claim.status_code == 200
    lease = claim.json()["lease"]["token"]
    assert (
        await _status(app, agent, "POST", "/v1/projects/a/tasks/A-1/heartbeat", {"token": lease})
    ).status_code == 200
    note = await _status(app, agent, "POST", "/v1/projects/a/tasks/A-1/notes", {"text": "hi", "token": lease})
    assert note.status_code == 201
    assert (await _status(app, agent, "POST", "/v1/projects/a/tasks/A-1/complete", {"token": lease})).status_code == 200
    # agents do not plan work
    assert (await _status(app, agent, "POST", "/v1/projects/a/tasks", {"title": "x"})).status_code == 403
    assert (await _status(app, agent, "PATCH", "/v1/projects/a/tasks/A-1", {"title": "x"})).status_code == 403
    assert (await _status(app, agent, "POST", "/v1/projects/a/tasks/A-1/cancel")).status_code == 403
    # project b is out of reach, whatever the operation, and whether or not the target exists
    for method, path, body in [
        ("POST", "/v1/projects/b/claims", {"agent": "bot"}),
        ("GET", "/v1/projects/b/tasks", None),
        ("GET", "/v1/projects/b", None),
        ("POST", "/v1/projects/b/tasks/B-1/complete", {"token": lease}),
        ("GET", "/v1/projects/zzz/tasks", None),
        ("GET", "/v1/projects/b/events", None),
    ]:
        response = await _status(app, agent, method, path, body)
        assert response.status_code == 403, (method, path)
    assert (await _status(app, agent, "GET", "/api/coord/status", None)).json()["project"] == "a"
    assert (await _status(app, agent, "GET", "/api/coord/status?project=b", None)).status_code == 403


async def test_admins(secured: tuple[FastAPI, dict[str, str]]) -> None:
    app, tokens = secured
    admin_a, root = tokens["admin_a"], tokens["root"]
    assert (await _status(app, admin_a, "POST", "/v1/projects/a/tasks", {"title": "x"})).status_code == 201
    assert (await _status(app, admin_a, "POST", "/v1/projects/a/missions", {"id": "m"})).status_code == 201
    assert (await _status(app, admin_a, "POST", "/v1/projects/b/tasks", {"title": "x"})).status_code == 403
    assert (await _status(app, admin_a, "POST", "/v1/projects", {"slug": "c"})).status_code == 403
    assert (await _status(app, root, "POST", "/v1/projects", {"slug": "c"})).status_code == 201
    assert (await _status(app, root, "POST", "/v1/projects/b/tasks", {"title": "x"})).status_code == 201


async def test_project_list_and_metrics_are_scoped(secured: tuple[FastAPI, dict[str, str]]) -> None:
    app, tokens = secured
    listed = await _status(app, tokens["viewer_a"], "GET", "/v1/projects")
    assert [p["slug"] for p in listed.json()["items"]] == ["a"]
    everything = await _status(app, tokens["root"], "GET", "/v1/projects")
    assert [p["slug"] for p in everything.json()["items"]] == ["a", "b"]
    assert (await _status(app, tokens["viewer_a"], "GET", "/metrics")).status_code == 403
    assert (await _status(app, tokens["root"], "GET", "/metrics")).status_code == 200
    assert (await _status(app, None, "GET", "/metrics")).status_code == 401


async def test_actor_is_recorded(secured: tuple[FastAPI, dict[str, str]], mem: InMemoryBackend) -> None:
    app, tokens = secured
    note = await _status(app, tokens["agent_a"], "POST", "/v1/projects/a/tasks/A-1/notes", {"text": "hello"})
    assert note.json()["author"].startswith("token:")
