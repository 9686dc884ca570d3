"""Helpers for the HTTP-edge security tests: a seeded in-memory app, a raw ASGI caller that counts
how many body bytes the app pulled, and a fingerprint of everything stored."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

from queue_service.app import create_app
from queue_service.service import QueueService
from queue_service.testing import InMemoryBackend
from tests.unit.api_support import FAST, running
from tests.unit.api_support import settings as app_settings

__all__ = ["AsgiResult", "Seeded", "asgi_call", "fingerprint", "seeded"]


@dataclass
class Seeded:
    app: FastAPI
    backend: InMemoryBackend
    service: QueueService


async def fingerprint(service: QueueService) -> str:
    """Everything stored, as one string: equal before and after means nothing changed."""
    out: list[Any] = []
    for project in await service.list_projects():
        snap = await service.export_project(project.slug)
        out.append(json.loads(snap.model_dump_json()))
    return json.dumps(out, sort_keys=True)


async def seed(service: QueueService) -> None:
    await service.create_project({"slug": "web", "key_prefix": "WEB"})
    await service.create_tasks("web", [{"title": "first"}, {"title": "second"}])


@contextlib.asynccontextmanager
async def seeded(**overrides: Any) -> AsyncIterator[Seeded]:
    """A running app (settings from ``api_support.settings(**overrides)``) on a seeded memory backend:
    project ``web`` with tasks WEB-1 and WEB-2."""
    backend = InMemoryBackend(config=FAST)
    async with backend:
        app = create_app(app_settings(**overrides), backend=backend)
        async with running(app):
            service = app.state.qs.service
            await seed(service)
            yield Seeded(app, backend, service)


@dataclass
class AsgiResult:
    status: int
    body: dict[str, Any]
    #: body bytes the app (edge included) pulled from the client
    pulled: int


async def asgi_call(
    app: FastAPI,
    method: str,
    path: str,
    headers: dict[str, str],
    chunks: Iterable[bytes] = (),
) -> AsgiResult:
    """Send one request the way a server would (body in chunks, ``more_body`` until the last), and
    count the body bytes the application actually asked for."""
    pending = list(chunks)
    pulled = 0
    raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw_headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        if not pending:
            return {"type": "http.disconnect"}
        chunk = pending.pop(0)
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    status = 0
    body = b""

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, body
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body += message.get("body", b"")

    await app(scope, receive, send)
    return AsgiResult(status, json.loads(body) if body else {}, pulled)
