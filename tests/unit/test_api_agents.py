"""The agent registry over HTTP (issue 13): the contract's paths, verbs, fields and errors, and the
typed clients (async and sync) over the same routes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from fastapi import FastAPI

from queue_service import exceptions
from queue_service.agents import Agent
from queue_service.client import AsyncClient, Client, RetryPolicy
from queue_service.models import TokenRole
from queue_service.testing import InMemoryBackend
from tests.unit.api_support import (
    BASE,
    FAST,
    ThreadedASGITransport,
    add_token,
    app,
    error_of,
    http,
    http_client,
    mem,
    settings,
)
from tests.unit.api_support import project as project

__all__ = ["app", "http", "mem", "project"]  # fixtures used below

P = "/v1/projects/web"
#: every state change on /v1 is JSON, body or not (the edge refuses others: a CSRF guard)
JSON = {"Content-Type": "application/json"}
FIELDS = {"id", "roles", "labels", "capacity", "ready", "drained", "last_seen", "holding", "done", "failed"}


async def test_register_heartbeat_drain_list_over_http(http: httpx.AsyncClient, project: str) -> None:
    r = await http.post(f"{P}/agents", json={"id": "w1", "roles": ["dev"], "labels": {"model": "opus"}, "capacity": 2})
    assert r.status_code == 200, r.text
    assert set(r.json()) == FIELDS and r.json()["capacity"] == 2 and r.json()["ready"] is True
    assert (await http.post(f"{P}/tasks", json={"title": "t", "role": "dev"})).status_code == 201
    claim = await http.post(f"{P}/claims", json={"agent": "w1", "roles": ["dev"], "lease_seconds": 60})
    assert claim.status_code == 200, claim.text
    listed = await http.get(f"{P}/agents")
    assert listed.status_code == 200
    (w1,) = listed.json()
    assert set(w1) == FIELDS
    assert [h["key"] for h in w1["holding"]] == ["WEB-1"]
    assert 0 < w1["holding"][0]["lease_seconds_left"] <= 60
    assert (await http.post(f"{P}/agents/w1/heartbeat", headers=JSON)).json()["ready"] is True
    drained = await http.post(f"{P}/agents/w1/drain", headers=JSON)
    assert drained.status_code == 200 and drained.json()["drained"] is True


async def test_project_patch_takes_routing_and_concurrency_limits(http: httpx.AsyncClient, project: str) -> None:
    r = await http.patch(P, json={"routing": {"dev": "round-robin"}, "concurrency_limits": {"repo": 2, "*": 5}})
    assert r.status_code == 200, r.text
    assert r.json()["routing"] == {"dev": "round-robin"} and r.json()["concurrency_limits"] == {"repo": 2, "*": 5}
    bad = await http.patch(P, json={"routing": {"dev": "fastest"}})
    assert bad.status_code == 422 and "fastest" in error_of(bad)["message"]
    assert (await http.get(P)).json()["routing"] == {"dev": "round-robin"}  # unchanged
    task = await http.post(
        f"{P}/tasks",
        json={
            "title": "t",
            "requires": {"model": "opus"},
            "prefers": [{"labels": {"gpu": "true"}, "weight": 2}],
            "concurrency_key": "repo",
            "group": "team-a",
        },
    )
    assert task.status_code == 201, task.text
    body = task.json()
    assert body["requires"] == {"model": "opus"} and body["group"] == "team-a" and body["concurrency_key"] == "repo"
    assert body["prefers"] == [{"labels": {"gpu": "true"}, "weight": 2}]


@pytest.mark.parametrize(
    "body",
    [
        {"id": "a b"},
        {"id": ""},
        {"id": "x", "capacity": 0},
        {"id": "x", "capacity": 1001},
        {"id": "x", "labels": {"k": "v" * 201}},
        {"id": "x", "surprise": True},
    ],
)
async def test_bad_registrations_are_422_and_store_nothing(http: httpx.AsyncClient, project: str, body: dict) -> None:  # type: ignore[type-arg]
    r = await http.post(f"{P}/agents", json=body)
    assert r.status_code == 422, r.text
    assert (await http.get(f"{P}/agents")).json() == []


async def test_unknown_agent_and_project_are_404(http: httpx.AsyncClient, project: str) -> None:
    assert (await http.post(f"{P}/agents/ghost/heartbeat", headers=JSON)).status_code == 404
    assert (await http.post(f"{P}/agents/ghost/drain", headers=JSON)).status_code == 404
    assert (await http.get("/v1/projects/nope/agents")).status_code == 404


async def test_registry_needs_the_right_token(mem: InMemoryBackend) -> None:
    from queue_service.app import create_app
    from tests.unit.api_support import running

    async with running(create_app(settings(auth="on"), backend=mem)) as application:
        admin = await add_token(mem, TokenRole.ADMIN)
        viewer = await add_token(mem, TokenRole.VIEWER, "web")
        async with http_client(application, admin) as a, http_client(application, viewer) as v:
            assert (await a.post("/v1/projects", json={"slug": "web"})).status_code == 201
            assert (await v.get(f"{P}/agents")).status_code == 200
            assert (await v.post(f"{P}/agents", json={"id": "w"})).status_code == 403


@pytest.fixture
async def qs(app: FastAPI) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(BASE, transport=httpx.ASGITransport(app=app), retry=RetryPolicy(attempts=1)) as client:
        await client.create_project({"slug": "web"})
        yield client


async def test_async_client_agent_methods(qs: AsyncClient) -> None:
    agent = await qs.register_agent("web", {"id": "w1", "capacity": 3, "labels": {"gpu": "yes"}})
    assert isinstance(agent, Agent) and agent.capacity == 3
    assert (await qs.agent_heartbeat("web", "w1")).ready
    assert (await qs.drain_agent("web", "w1")).drained
    assert [a.id for a in await qs.list_agents("web")] == ["w1"]
    with pytest.raises(exceptions.NotFound):
        await qs.agent_heartbeat("web", "nobody")


@pytest.fixture
def sync_qs() -> Iterator[Client]:
    transport = ThreadedASGITransport(create_app_for_sync())
    try:
        with Client(BASE, transport=transport, retry=RetryPolicy(attempts=1)) as client:
            client.create_project({"slug": "web"})
            yield client
    finally:
        transport.close()


def create_app_for_sync() -> FastAPI:
    from queue_service.app import create_app

    return create_app(settings(), backend=InMemoryBackend(config=FAST))


def test_sync_client_agent_methods(sync_qs: Client) -> None:
    assert sync_qs.register_agent("web", {"id": "w1", "roles": ["dev"]}).roles == ["dev"]
    assert sync_qs.agent_heartbeat("web", "w1").ready
    assert sync_qs.drain_agent("web", "w1").drained
    assert [a.id for a in sync_qs.list_agents("web")] == ["w1"]
