"""Findings 7, 8 and 11: input that used to be accepted wrongly, or answered 500 with driver text.

Each test sends what the review sent, over HTTP, and checks the 4xx and that nothing was stored.
The Postgres cases run on real Postgres + Valkey (the memory backend never overflowed).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from queue_service.app import create_app
from queue_service.service import QueueService
from tests.security.http_support import fingerprint, seed, seeded
from tests.unit.api_support import error_of, http_client, running
from tests.unit.api_support import settings as app_settings

P = "/v1/projects/web"

# -- finding 7: full matches, no trailing newline ------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (f"{P}/tasks", {"title": "t", "key": "WEB-9\n"}),
        (f"{P}/tasks", {"title": "t", "role": "dev\n"}),
        (f"{P}/tasks", {"title": "t", "mission": "default\n"}),
        (f"{P}/tasks", {"title": "t", "labels": ["ui\n"]}),
        ("/v1/projects", {"slug": "nl\n"}),
        (f"{P}/missions", {"id": "m\n"}),
    ],
)
async def test_trailing_newline_is_refused(path: str, body: dict[str, object]) -> None:
    async with seeded() as s, http_client(s.app) as http:
        before = await fingerprint(s.service)
        response = await http.post(path, json=body)
        assert response.status_code == 422, response.text
        assert await fingerprint(s.service) == before


async def test_trailing_newline_in_a_path_key_is_refused() -> None:
    async with seeded() as s, http_client(s.app) as http:
        response = await http.get(f"{P}/tasks/WEB-1%0A")
        assert response.status_code == 422, response.text


# -- finding 11: what TASKS.md cannot carry is refused; the rest round-trips -----------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"title": "line one\nline two"},
        {"title": "carriage\rreturn"},
        {"title": "para\u2029graph"},
        {"title": "-"},
        {"title": "—"},
        {"title": " -- "},
        {"title": "t", "assignee": "-"},
        {"title": "t", "assignee": "bot\nevil"},
        {"title": "t", "milestone": "m\n1"},
        {"title": "t", "labels": ["-"]},
    ],
)
async def test_text_that_tasks_md_cannot_carry_is_refused(body: dict[str, object]) -> None:
    async with seeded() as s, http_client(s.app) as http:
        before = await fingerprint(s.service)
        created = await http.post(f"{P}/tasks", json=body)
        assert created.status_code == 422, created.text
        patched = await http.patch(f"{P}/tasks/WEB-1", json=body)
        assert patched.status_code == 422, patched.text
        assert await fingerprint(s.service) == before


@pytest.mark.parametrize("agent", ["-", "—", "bot\n2026-01-01 forged log line"])
async def test_agent_ids_that_tasks_md_cannot_carry_are_refused(agent: str) -> None:
    async with seeded() as s, http_client(s.app) as http:
        before = await fingerprint(s.service)
        response = await http.post(f"{P}/claims", json={"agent": agent})
        assert response.status_code == 422, response.text
        assert await fingerprint(s.service) == before


async def test_accepted_text_round_trips_exactly() -> None:
    body = {"title": "Fix — the  login | page -", "assignee": "bot-7", "labels": ["a-b", "ü"], "milestone": "m 1"}
    async with seeded() as s, http_client(s.app) as http:
        created = await http.post(f"{P}/tasks", json=body)
        assert created.status_code == 201, created.text
        got = (await http.get(f"{P}/tasks/{created.json()['key']}")).json()
        assert {k: got[k] for k in body} == body


# -- finding 8: bad input answered 500 ---------------------------------------------------------------


async def test_huge_batch_dependency_index_is_a_422() -> None:
    async with seeded() as s, http_client(s.app) as http:
        before = await fingerprint(s.service)
        batch = {"tasks": [{"title": "a", "depends_on": ["#" + "9" * 5000]}]}
        response = await http.post(f"{P}/tasks/batch", json=batch)
        assert response.status_code == 422, response.text
        assert await fingerprint(s.service) == before


@pytest.fixture
async def pg_app(pg_url: str, valkey_url: str, valkey_prefix: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = app_settings(backend_url=None, database_url=pg_url, valkey_url=valkey_url, valkey_prefix=valkey_prefix)
    app = create_app(settings)
    async with running(app):
        service: QueueService = app.state.qs.service
        await seed(service)
        async with http_client(app) as http:
            http.service = service  # type: ignore[attr-defined]
            yield http


def _cursor(seq: int) -> str:
    import base64

    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


@pytest.mark.postgres
@pytest.mark.parametrize("seq", [2**63, 2**64 + 5, 10**40])
async def test_cursor_past_bigint_is_a_422_on_postgres(pg_app: httpx.AsyncClient, seq: int) -> None:
    response = await pg_app.get(f"{P}/tasks", params={"cursor": _cursor(seq)})
    assert response.status_code == 422, response.text
    assert "asyncpg" not in response.text and "sqlalchemy" not in response.text.lower()


@pytest.mark.postgres
@pytest.mark.parametrize("not_before", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
async def test_not_before_outside_the_utc_range_is_a_422_on_postgres(
    pg_app: httpx.AsyncClient, not_before: str
) -> None:
    service: QueueService = pg_app.service  # type: ignore[attr-defined]
    before = await fingerprint(service)
    created = await pg_app.post(f"{P}/tasks", json={"title": "t", "not_before": not_before})
    assert created.status_code == 422, created.text
    assert error_of(created)["code"] == "validation_error"
    patched = await pg_app.patch(f"{P}/tasks/WEB-1", json={"not_before": not_before})
    assert patched.status_code == 422, patched.text
    assert "asyncpg" not in created.text + patched.text
    assert await fingerprint(service) == before
    assert json.loads(created.text)["error"]["message"]


async def test_a_500_never_carries_driver_text() -> None:
    from fastapi import FastAPI

    from queue_service import exceptions
    from queue_service.api.errors import install_error_handlers

    probe = FastAPI()
    install_error_handlers(probe)
    leak = 'Postgres error: (asyncpg.exceptions.NumericValueOutOfRangeError) value "9" * 5000 SELECT secret'

    @probe.get("/domain")
    async def domain() -> None:
        raise exceptions.BackendError(leak, sql="SELECT secret FROM api_tokens")

    @probe.get("/crash")
    async def crash() -> None:
        raise OverflowError(leak)

    async with http_client(probe) as client:
        for path in ("/domain", "/crash"):
            response = await client.get(path)
            assert response.status_code == 500
            assert "asyncpg" not in response.text and "secret" not in response.text, response.text
            assert error_of(response)["message"]
