"""Helpers for the API, client and auth tests: the app on the in-memory backend, httpx clients
over ASGI, a sync transport that runs the app on its own loop thread, and a raw SSE reader."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Coroutine, MutableMapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlencode

import httpx
import pytest
from fastapi import FastAPI

from queue_service.app import create_app
from queue_service.auth import new_token_record
from queue_service.models import TokenRole
from queue_service.settings import Settings
from queue_service.testing import InMemoryBackend
from tests.fixtures.timing import FAST

T = TypeVar("T")

BASE = "http://qs.test"


def settings(**overrides: Any) -> Settings:
    """Settings for a memory-backed app without the orchestrator (tests sweep explicitly)."""
    # the test host names (httpx: qs.test, schemathesis/starlette: testserver) are not loopback names
    values: dict[str, Any] = {
        "backend_url": "memory://",
        "orchestrator": False,
        "sync": False,
        "allowed_hosts": "qs.test,testserver,localhost",
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[FastAPI]:
    """Run the app's lifespan (httpx's ASGITransport does not)."""
    async with app.router.lifespan_context(app):
        yield app


def http_client(app: FastAPI, token: str | None = None) -> httpx.AsyncClient:
    """A raw httpx client talking to *app* in-process."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE, headers=headers)


async def add_token(backend: InMemoryBackend, role: TokenRole | str, project: str | None = None) -> str:
    """Store a token directly in the backend; returns the plain token."""
    plain, record = new_token_record(project, role)
    await backend.records.add_api_token(record)
    return plain


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The ``error`` object of an error response, checking the shape on the way."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body["error"])


@pytest.fixture
async def mem() -> AsyncIterator[InMemoryBackend]:
    backend = InMemoryBackend(config=FAST)
    async with backend:
        yield backend


@pytest.fixture
async def app(mem: InMemoryBackend) -> AsyncIterator[FastAPI]:
    async with running(create_app(settings(), backend=mem)) as application:
        yield application


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(app) as client:
        yield client


@pytest.fixture
async def project(http: httpx.AsyncClient) -> str:
    response = await http.post("/v1/projects", json={"slug": "web", "name": "Web", "key_prefix": "WEB"})
    assert response.status_code == 201, response.text
    return "web"


# -- a sync transport for the sync client -----------------------------------------------------


class ThreadedASGITransport(httpx.BaseTransport):
    """Serve a sync ``httpx.Client`` from an ASGI app running on its own event-loop thread.

    The app (and its in-memory backend) live on that loop, so the calling thread may block, burn
    CPU or run heartbeat threads of its own, as a real client would against a real server.
    """

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="asgi-loop", daemon=True)
        self._thread.start()
        self._inner = httpx.ASGITransport(app=app)
        self._lifespan = app.router.lifespan_context(app)
        self.run(self._lifespan.__aenter__())

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run *coro* on the app's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        content = request.read()

        async def forward() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
            inner = httpx.Request(request.method, request.url, headers=request.headers, content=content)
            response = await self._inner.handle_async_request(inner)
            body = await response.aread()
            return response.status_code, response.headers.raw, body

        status, headers, body = self.run(forward(), timeout=120)
        return httpx.Response(status, headers=headers, content=body, request=request)

    def close(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self.run(self._lifespan.__aexit__(None, None, None))
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            self.loop.close()


# -- server-sent events, read through raw ASGI (httpx's ASGITransport buffers whole bodies) ---------


async def read_sse(
    app: FastAPI,
    path: str,
    *,
    count: int,
    headers: Sequence[tuple[str, str]] = (),
    params: dict[str, str] | None = None,
    timeout: float = 10.0,
    after_start: Any = None,
) -> tuple[int, list[tuple[int, dict[str, Any]]]]:
    """Open an event stream, read *count* events, then disconnect.

    *after_start* (an async callable) runs once the response has started, to make changes while the
    stream is live. Returns the status and ``(id, data)`` of each event read.
    """
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": urlencode(params or {}).encode(),
        "root_path": "",
        "headers": [(b"host", b"qs.test"), *((k.lower().encode(), v.encode()) for k, v in headers)],
        "client": ("127.0.0.1", 50000),
        "server": ("qs.test", 80),
    }
    disconnect = asyncio.Event()
    started = asyncio.Event()
    done = asyncio.Event()
    status = 0
    buffer = b""
    events: list[tuple[int, dict[str, Any]]] = []
    body_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal status, buffer
        if message["type"] == "http.response.start":
            status = message["status"]
            started.set()
            return
        buffer += message.get("body", b"")
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            fields = dict(line.split(": ", 1) for line in block.decode().splitlines() if not line.startswith(":"))
            if "data" in fields:
                events.append((int(fields["id"]), json.loads(fields["data"])))
        if len(events) >= count:
            done.set()
        if not message.get("more_body", False):
            done.set()

    runner = asyncio.create_task(app(scope, receive, send))
    try:
        await asyncio.wait_for(started.wait(), timeout)
        if after_start is not None and status == 200:
            await after_start()
        await asyncio.wait_for(done.wait(), timeout)
    finally:
        disconnect.set()
        try:
            await asyncio.wait_for(runner, timeout)
        except TimeoutError:
            runner.cancel()
    return status, events
