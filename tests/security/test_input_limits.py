"""Finding 12: no caps. Results, notes, pages and event streams are bounded; a note's author cannot
impersonate the service, and a token's notes carry its principal."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from queue_service.models import TokenRole
from tests.security.http_support import fingerprint, seeded
from tests.unit.api_support import add_token, error_of, http_client

P = "/v1/projects/web"
KB = 1024


async def test_oversized_result_is_refused_and_the_task_stays_claimed() -> None:
    async with seeded(max_result_bytes=4 * KB) as s, http_client(s.app) as http:
        claim = (await http.post(f"{P}/claims", json={"agent": "bot"})).json()
        before = await fingerprint(s.service)
        response = await http.post(
            f"{P}/tasks/{claim['task']['key']}/complete",
            json={"token": claim["lease"]["token"], "result": {"blob": "x" * 5 * KB}},
        )
        assert response.status_code == 422, response.text
        assert "QUEUE_MAX_RESULT_BYTES" in error_of(response)["message"]
        assert await fingerprint(s.service) == before


async def test_task_page_is_bounded_in_bytes_and_paging_still_reaches_every_task() -> None:
    # five results at the cap used to make one page five caps long (210 MB in the review)
    async with seeded(max_result_bytes=4 * KB, max_body_bytes=4 * KB) as s, http_client(s.app) as http:
        for _ in range(2):
            claim = await s.service.claim("web", "bot")
            assert claim is not None
            await s.service.complete("web", claim.task.key, claim.lease.token, {"blob": "y" * (4 * KB - 20)})
        await s.service.create_tasks("web", [{"title": f"t{i}"} for i in range(3)])
        keys: list[str] = []
        cursor = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 100}
            if cursor:
                params["cursor"] = cursor
            response = await http.get(f"{P}/tasks", params=params)
            assert response.status_code == 200
            assert len(response.content) < 4 * 4 * KB + 8 * KB  # the page budget plus one task
            page = response.json()
            keys += [t["key"] for t in page["items"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert keys == [f"WEB-{i}" for i in range(1, 6)]
        assert pages >= 1


async def test_long_note_is_refused() -> None:
    async with seeded(max_note_chars=100) as s, http_client(s.app) as http:
        before = await fingerprint(s.service)
        response = await http.post(f"{P}/tasks/WEB-1/notes", json={"text": "n" * 101})
        assert response.status_code == 422, response.text
        assert "QUEUE_MAX_NOTE_CHARS" in error_of(response)["message"]
        assert await fingerprint(s.service) == before


@pytest.mark.parametrize("author", ["workspace-sync", "Workspace-Sync ", "orchestrator", "system"])
@pytest.mark.parametrize("with_token", [False, True])
async def test_note_cannot_be_signed_as_the_service(author: str, with_token: bool) -> None:
    async with seeded() as s:
        token = await add_token(s.backend, TokenRole.AGENT, "web") if with_token else None
        async with http_client(s.app, token) as http:
            before = await fingerprint(s.service)
            response = await http.post(f"{P}/tasks/WEB-1/notes", json={"text": "all rows removed", "author": author})
            assert response.status_code == 422, response.text
            assert "reserved" in error_of(response)["message"]
            assert await fingerprint(s.service) == before


async def test_token_notes_carry_the_principal() -> None:
    async with seeded() as s:
        token = await add_token(s.backend, TokenRole.AGENT, "web")
        record = next(iter(s.backend.api_tokens.values()))
        async with http_client(s.app, token) as http:
            named = await http.post(f"{P}/tasks/WEB-1/notes", json={"text": "hi", "author": "lead-dev"})
            plain = await http.post(f"{P}/tasks/WEB-1/notes", json={"text": "hi"})
        assert named.json()["author"] == f"lead-dev [token:{record.id}]"
        assert plain.json()["author"] == f"token:{record.id}"


async def test_event_streams_past_the_limit_get_429_and_slots_come_back() -> None:
    async with seeded(max_event_streams=1) as s:
        started = asyncio.Event()
        disconnect = asyncio.Event()

        async def receive() -> dict[str, Any]:
            await disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                assert message["status"] == 200
                started.set()

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": f"{P}/events",
            "raw_path": f"{P}/events".encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"qs.test")],
            "client": ("127.0.0.1", 5),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        first = asyncio.create_task(s.app(scope, receive, send))
        await started.wait()
        async with http_client(s.app) as http:
            refused = await http.get(f"{P}/events", params={"follow": "false"})
            assert refused.status_code == 429, refused.text
            assert error_of(refused)["code"] == "too_many_streams"
            disconnect.set()
            await first
            replay = await http.get(f"{P}/events", params={"follow": "false"})
            assert replay.status_code == 200
        assert s.app.state.qs.streams.open == 0
