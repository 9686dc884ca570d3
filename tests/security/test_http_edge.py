"""Findings 2 and 4: the HTTP edge, attacked the way the review did.

* finding 2: a large body without a token used to be read and parsed before the token check;
* finding 4: a loopback, no-token server answered any ``Host`` (DNS rebinding) and "simple"
  cross-site POSTs (``text/plain`` or body-less) from any web page.

Every test asserts the refusal and that nothing stored changed.
"""

from __future__ import annotations

import json

import pytest
from starlette.datastructures import Headers

from queue_service.api.edge import HostPolicy, cross_site_reason, split_host
from queue_service.models import TokenRole
from tests.security.http_support import asgi_call, fingerprint, seeded
from tests.unit.api_support import add_token, error_of, http_client

MB = 1024 * 1024
CREATE = "/v1/projects"


def _json_chunks(total: int, chunk: int = 64 * 1024) -> list[bytes]:
    """A syntactically valid JSON project body of about *total* bytes, in chunks."""
    raw = json.dumps({"slug": "evil", "name": "x" * total}).encode()
    return [raw[i : i + chunk] for i in range(0, len(raw), chunk)]


# -- finding 2: auth before body, body cap while streaming ------------------------------------------


async def test_unauthenticated_large_body_is_refused_before_a_byte_is_read() -> None:
    async with seeded() as s:
        await add_token(s.backend, TokenRole.ADMIN)
        before = await fingerprint(s.service)
        chunks = _json_chunks(3 * MB)
        sent = sum(map(len, chunks))
        result = await asgi_call(
            s.app,
            "POST",
            CREATE,
            {"host": "qs.test", "content-type": "application/json", "content-length": str(sent)},
            chunks,
        )
        assert result.status == 401, result.body
        assert result.body["error"]["code"] == "unauthorized"
        assert result.pulled == 0  # not one body byte was read for an unknown caller
        assert await fingerprint(s.service) == before


async def test_streamed_body_without_length_is_cut_at_the_cap() -> None:
    async with seeded(max_body_bytes=64 * 1024) as s:
        token = await add_token(s.backend, TokenRole.ADMIN)
        before = await fingerprint(s.service)
        chunks = _json_chunks(2 * MB, chunk=16 * 1024)
        result = await asgi_call(
            s.app,
            "POST",
            CREATE,
            {
                "host": "qs.test",
                "content-type": "application/json",
                "transfer-encoding": "chunked",
                "authorization": f"Bearer {token}",
            },
            chunks,
        )
        assert result.status == 413, result.body
        assert result.body["error"]["code"] == "payload_too_large"
        assert set(result.body["error"]) == {"code", "message", "details"}
        assert result.pulled <= 64 * 1024 + 16 * 1024  # stopped reading at the cap
        assert await fingerprint(s.service) == before


async def test_content_length_that_lies_does_not_lift_the_cap() -> None:
    async with seeded(max_body_bytes=64 * 1024) as s:
        before = await fingerprint(s.service)
        chunks = _json_chunks(1 * MB, chunk=16 * 1024)
        result = await asgi_call(
            s.app,
            "POST",
            CREATE,
            {"host": "qs.test", "content-type": "application/json", "content-length": "100"},
            chunks,
        )
        assert result.status == 413, result.body
        assert result.body["error"]["code"] == "payload_too_large"
        assert result.pulled <= 64 * 1024 + 16 * 1024
        assert await fingerprint(s.service) == before


async def test_declared_oversized_body_is_refused_without_reading_it() -> None:
    async with seeded(max_body_bytes=64 * 1024) as s:
        before = await fingerprint(s.service)
        chunks = _json_chunks(256 * 1024)
        result = await asgi_call(
            s.app,
            "POST",
            CREATE,
            {"host": "qs.test", "content-type": "application/json", "content-length": str(sum(map(len, chunks)))},
            chunks,
        )
        assert result.status == 413
        assert result.body["error"]["details"] == {"max_body_bytes": 64 * 1024}
        assert result.pulled == 0
        assert await fingerprint(s.service) == before


async def test_body_under_the_cap_still_works() -> None:
    async with seeded(max_body_bytes=64 * 1024) as s, http_client(s.app) as http:
        created = await http.post(CREATE, json={"slug": "ok", "name": "y" * 200})
        assert created.status_code == 201, created.text


# -- finding 4: DNS rebinding -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_rebinding_host_is_refused_on_a_default_loopback_server(method: str) -> None:
    # the README default: bound to 127.0.0.1, no token, QUEUE_ALLOWED_HOSTS unset
    async with seeded(allowed_hosts="") as s, http_client(s.app) as http:
        before = await fingerprint(s.service)
        response = await http.request(
            method,
            "/v1/projects/web/tasks/WEB-1/cancel" if method == "POST" else "/v1/projects/web/tasks",
            headers={"Host": "attacker.example:8000", "Content-Type": "application/json"},
            content=b"{}" if method == "POST" else None,
        )
        assert response.status_code == 421, response.text
        assert error_of(response)["code"] == "host_not_allowed"
        assert await fingerprint(s.service) == before


@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1:8000", "[::1]:8000", "localhost", "127.0.0.2"])
async def test_loopback_names_are_answered_by_default(host: str) -> None:
    async with seeded(allowed_hosts="") as s, http_client(s.app) as http:
        response = await http.get("/v1/projects", headers={"Host": host})
        assert response.status_code == 200, response.text


async def test_allowed_hosts_setting_replaces_the_default() -> None:
    async with seeded(allowed_hosts="queue.example.com") as s, http_client(s.app) as http:
        assert (await http.get("/healthz", headers={"Host": "queue.example.com:443"})).status_code == 200
        refused = await http.get("/healthz", headers={"Host": "localhost"})
        assert refused.status_code == 421


# -- finding 4: cross-site "simple" requests -----------------------------------------------------------


async def test_cross_site_text_plain_cancel_is_refused() -> None:
    async with seeded(allowed_hosts="") as s, http_client(s.app) as http:
        before = await fingerprint(s.service)
        response = await http.post(
            "/v1/projects/web/tasks/WEB-1/cancel",
            headers={
                "Host": "127.0.0.1:8000",
                "Origin": "https://attacker.example",
                "Sec-Fetch-Site": "cross-site",
                "Content-Type": "text/plain",
            },
            content=b"",
        )
        assert response.status_code == 403, response.text
        assert error_of(response)["code"] == "cross_site_refused"
        assert await fingerprint(s.service) == before


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://attacker.example"},
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1:9999"},  # another port on the same machine is another origin
        {"Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "cross-site"},
    ],
)
async def test_cross_site_json_retry_is_refused(headers: dict[str, str]) -> None:
    async with seeded(allowed_hosts="") as s, http_client(s.app) as http:
        await s.service.cancel_task("web", "WEB-2")
        before = await fingerprint(s.service)
        response = await http.post(
            "/v1/projects/web/tasks/WEB-2/retry",
            headers={"Host": "127.0.0.1:8000", "Content-Type": "application/json", **headers},
        )
        assert response.status_code == 403, response.text
        assert error_of(response)["code"] == "cross_site_refused"
        assert await fingerprint(s.service) == before


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
async def test_state_change_needs_json_even_without_origin(content_type: str | None) -> None:
    # an old browser or a page's <form> may send no Origin: the media type alone still refuses it
    async with seeded(allowed_hosts="") as s, http_client(s.app) as http:
        before = await fingerprint(s.service)
        headers = {"Host": "localhost:8000"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        response = await http.post("/v1/projects/web/tasks/WEB-1/cancel", headers=headers, content=b"")
        assert response.status_code == 415, response.text
        assert error_of(response)["code"] == "unsupported_media_type"
        assert await fingerprint(s.service) == before


async def test_same_origin_json_request_is_served() -> None:
    async with seeded(allowed_hosts="") as s, http_client(s.app) as http:
        response = await http.post(
            "/v1/projects/web/tasks/WEB-1/cancel",
            headers={
                "Host": "localhost:8000",
                "Origin": "http://localhost:8000",
                "Sec-Fetch-Site": "same-origin",
                "Content-Type": "application/json; charset=utf-8",
            },
        )
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "cancelled"


# -- the reusable pieces ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ({"host": "localhost:8000"}, False),
        ({"host": "localhost:8000", "origin": "http://localhost:8000"}, False),
        ({"host": "q.example", "origin": "https://q.example"}, False),
        ({"host": "q.example:443", "origin": "https://q.example"}, False),
        ({"host": "q.example", "origin": "https://q.example:8443"}, True),
        ({"host": "q.example", "origin": "https://evil.q.example"}, True),
        ({"host": "q.example", "origin": "ftp://q.example"}, True),
        ({"host": "q.example", "origin": "null"}, True),
        ({"host": "q.example", "sec-fetch-site": "none"}, False),
        ({"host": "q.example", "sec-fetch-site": "same-origin"}, False),
        ({"host": "q.example", "sec-fetch-site": "same-site"}, True),
    ],
)
def test_cross_site_reason(headers: dict[str, str], refused: bool) -> None:
    assert (cross_site_reason(Headers(headers)) is not None) is refused


def test_host_parsing_and_policy() -> None:
    assert split_host("LocalHost:8000") == ("localhost", 8000)
    assert split_host("[::1]:80") == ("::1", 80)
    assert split_host("example.com.") == ("example.com", None)
    for bad in ("", "a b", "x:99999", "user@host", "::1", "[::1"):
        assert split_host(bad) is None
    policy = HostPolicy.from_entries(["api.example.com", "*.corp.example"])
    assert policy.allows("api.example.com:8000") and policy.allows("q.corp.example")
    assert not policy.allows("corp.example.evil") and not policy.allows(None) and not policy.allows("127.0.0.1")
    assert HostPolicy.from_entries(["*"]).allows("anything")
