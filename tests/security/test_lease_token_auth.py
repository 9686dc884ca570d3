"""Issue 11: a child of ``qs run`` holds only ``QUEUE_LEASE_TOKEN``. With auth on, that lease stands in
for a bearer (``X-Queue-Lease-Token``) for its own task only — read it, note, publish, heartbeat,
create tasks ``?discovered_from=KEY`` — checked before the body like a bearer, renewing the lease.
Everything else is refused and stores nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import httpx
import pytest

from queue_service.models import TokenRole
from tests.security.http_support import Seeded, fingerprint, seeded
from tests.unit.api_support import add_token, error_of, http_client

P = "/v1/projects/web"


@pytest.fixture
async def world() -> AsyncIterator[tuple[Seeded, httpx.AsyncClient, str]]:
    """Auth on; the runner (agent token) holds WEB-1 with a 1000 s lease. Yields the app, the
    runner's client, and the lease token its child gets."""
    async with seeded() as s:
        agent = await add_token(s.backend, TokenRole.AGENT, "web")
        await add_token(s.backend, TokenRole.ADMIN)
        async with http_client(s.app, agent) as runner:
            r = await runner.post(f"{P}/claims", json={"agent": "runner-1", "lease_seconds": 1000})
            assert r.status_code == 200, r.text
            assert r.json()["task"]["key"] == "WEB-1"
            yield s, runner, r.json()["lease"]["token"]


def _child(s: Seeded, token: str) -> httpx.AsyncClient:
    client = http_client(s.app)
    client.headers["X-Queue-Lease-Token"] = token
    return client


async def _expiry(s: Seeded, key: str = "WEB-1") -> datetime:
    task = await s.service.get_task("web", key)
    assert task.lease_expires_at is not None
    return task.lease_expires_at


async def test_the_lease_works_its_own_task_and_renews_on_every_call(
    world: tuple[Seeded, httpx.AsyncClient, str],
) -> None:
    s, runner, token = world
    async with _child(s, token) as child:
        calls = [
            ("GET", f"{P}/tasks/WEB-1", None, 200),
            ("POST", f"{P}/tasks/WEB-1/notes", {"text": "found a bug in the parser"}, 201),
            ("POST", f"{P}/tasks/WEB-1/stream", {"token": token, "chunk": "step 1"}, 200),
            ("POST", f"{P}/tasks/WEB-1/heartbeat", {"token": token}, 200),
            ("POST", f"{P}/tasks?discovered_from=WEB-1", {"title": "Fix the parser"}, 201),
        ]
        for method, path, body, code in calls:
            # shorten the lease first: the call itself must renew it to the claim's 1000 s
            await runner.post(f"{P}/tasks/WEB-1/heartbeat", json={"token": token, "lease_seconds": 60})
            short = await _expiry(s)
            r = await child.request(method, path, json=body)
            assert r.status_code == code, (path, r.text)
            assert (await _expiry(s) - short).total_seconds() > 500, f"{method} {path} did not renew the lease"
        note = (await s.service.list_notes("web", "WEB-1"))[-1]
        assert note.author == "runner-1" and note.text == "found a bug in the parser"
        found = r.json()
        assert found["key"] == "WEB-3" and found["extra"] == {"discovered_from": "WEB-1"}
        assert [c.chunk for c in (await s.service.read_stream("web", "WEB-1")).chunks] == ["step 1"]


@pytest.mark.parametrize(
    ("method", "path", "body", "code"),
    [
        ("GET", f"{P}/tasks/WEB-2", None, 409),
        ("POST", f"{P}/tasks/WEB-2/notes", {"text": "x"}, 409),
        ("GET", f"{P}/tasks", None, 403),
        ("POST", f"{P}/tasks", {"title": "not discovered"}, 403),
        ("POST", f"{P}/tasks?discovered_from=WEB-2", {"title": "from another task"}, 409),
        ("POST", f"{P}/tasks/batch?discovered_from=WEB-1", {"tasks": [{"title": "t"}]}, 403),
        ("PATCH", f"{P}/tasks/WEB-1", {"title": "renamed"}, 403),
        ("POST", f"{P}/tasks/WEB-1/complete", {"token": "T"}, 403),
        ("POST", f"{P}/tasks/WEB-1/cancel", {}, 403),
        ("POST", f"{P}/claims", {"agent": "child"}, 403),
        ("GET", "/v1/projects", None, 403),
        ("GET", "/v1/projects/ops/tasks/WEB-1", None, 409),
    ],
)
async def test_everything_else_is_refused_and_stores_nothing(
    world: tuple[Seeded, httpx.AsyncClient, str], method: str, path: str, body: object, code: int
) -> None:
    s, _, token = world
    before = await fingerprint(s.service)
    async with _child(s, token) as child:
        r = await child.request(method, path, json=body)
    assert r.status_code == code, r.text
    assert error_of(r)["code"] == {403: "forbidden", 409: "lease_invalid"}[code]
    assert await fingerprint(s.service) == before


async def test_a_lease_that_ended_authorises_nothing(world: tuple[Seeded, httpx.AsyncClient, str]) -> None:
    s, runner, token = world
    r = await runner.post(f"{P}/tasks/WEB-1/complete", json={"token": token, "result": {"ok": True}})
    assert r.status_code == 200, r.text
    before = await fingerprint(s.service)
    async with _child(s, token) as child:
        r = await child.post(f"{P}/tasks/WEB-1/notes", json={"text": "too late"})
        assert r.status_code == 409
        assert error_of(r)["details"]["reason"] == "completed"
        r = await child.post(f"{P}/tasks?discovered_from=WEB-1", json={"title": "too late"})
        assert r.status_code == 409
    async with http_client(s.app) as nobody:
        assert (await nobody.get(f"{P}/tasks/WEB-1")).status_code == 401
        bogus = await nobody.get(f"{P}/tasks/WEB-1", headers={"X-Queue-Lease-Token": "x" * 300})
        assert bogus.status_code == 422
    assert await fingerprint(s.service) == before


async def test_agent_bearer_creates_discovered_tasks_with_its_lease(
    world: tuple[Seeded, httpx.AsyncClient, str],
) -> None:
    _, runner, token = world
    r = await runner.post(f"{P}/tasks?discovered_from=WEB-1", json={"title": "no lease given"})
    assert r.status_code == 403 and "X-Queue-Lease-Token" in error_of(r)["message"]
    r = await runner.post(
        f"{P}/tasks?discovered_from=WEB-1", json={"title": "found it"}, headers={"X-Queue-Lease-Token": token}
    )
    assert r.status_code == 201 and r.json()["extra"] == {"discovered_from": "WEB-1"}
    r = await runner.post(
        f"{P}/tasks?discovered_from=WEB-2", json={"title": "not mine"}, headers={"X-Queue-Lease-Token": token}
    )
    assert r.status_code == 409


async def test_with_auth_off_discovered_from_names_a_real_task() -> None:
    async with seeded() as s, http_client(s.app) as open_client:
        r = await open_client.post(f"{P}/tasks?discovered_from=WEB-1", json={"title": "found"})
        assert r.status_code == 201 and r.json()["extra"] == {"discovered_from": "WEB-1"}
        r = await open_client.post(f"{P}/tasks?discovered_from=WEB-9", json={"title": "typo"})
        assert r.status_code == 404
