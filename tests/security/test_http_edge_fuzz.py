"""The HTTP edge under random hostile headers and bodies: never a 5xx, and every refusal (4xx)
leaves stored data as it was. Complements the schemathesis run over /openapi.json
(tests/unit/test_api_fuzz.py), which only sends well-formed headers."""

from __future__ import annotations

import asyncio
import concurrent.futures

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from queue_service.models import TokenRole
from tests.security.http_support import asgi_call, fingerprint, seeded
from tests.unit.api_support import add_token

_header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=60)
_hosts = st.one_of(st.sampled_from(["qs.test", "qs.test:1", "attacker.example", "[::1]", "", "a b"]), _header_text)
_origins = st.one_of(st.none(), st.sampled_from(["null", "http://qs.test", "https://evil.example"]), _header_text)
_fetch_sites = st.one_of(st.none(), st.sampled_from(["cross-site", "same-site", "same-origin", "none"]), _header_text)
_types = st.one_of(st.none(), st.sampled_from(["application/json", "text/plain", "application/x+json"]), _header_text)
_lengths = st.one_of(st.none(), st.sampled_from(["0", "-1", "1e3", "99999999999999999999", " 5"]), _header_text)
_auth = st.one_of(st.none(), st.sampled_from(["Bearer ", "Bearer qs_x", "Basic a", "ROOT"]), _header_text)
_paths = st.sampled_from(
    [
        "/v1/projects",
        "/v1/projects/web/tasks",
        "/v1/projects/web/tasks/WEB-1/cancel",
        "/v1/tokens/x",
        "/mcp",
        "/healthz",
    ]
)
_methods = st.sampled_from(["GET", "POST", "PATCH", "DELETE", "PUT"])
_bodies = st.lists(st.binary(max_size=300), max_size=4)


async def _one(
    method: str,
    path: str,
    headers: dict[str, str | None],
    chunks: list[bytes],
) -> None:
    async with seeded(max_body_bytes=1024) as s:
        root = await add_token(s.backend, TokenRole.ADMIN)
        if headers.get("authorization") == "ROOT":
            headers["authorization"] = f"Bearer {root}"
        before = await fingerprint(s.service)
        sent = {k: v for k, v in headers.items() if v is not None}
        result = await asgi_call(s.app, method, path, sent, chunks)
        assert result.status < 500, (method, path, sent, result.body)
        if result.status >= 400:
            assert await fingerprint(s.service) == before, (method, path, sent, result.status)


@given(
    method=_methods,
    path=_paths,
    host=_hosts,
    origin=_origins,
    fetch_site=_fetch_sites,
    content_type=_types,
    length=_lengths,
    auth=_auth,
    chunks=_bodies,
)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
def test_edge_never_fails_and_refusals_change_nothing(
    method: str,
    path: str,
    host: str,
    origin: str | None,
    fetch_site: str | None,
    content_type: str | None,
    length: str | None,
    auth: str | None,
    chunks: list[bytes],
) -> None:
    headers = {
        "host": host,
        "origin": origin,
        "sec-fetch-site": fetch_site,
        "content-type": content_type,
        "content-length": length,
        "authorization": auth,
    }
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, _one(method, path, headers, chunks)).result()
