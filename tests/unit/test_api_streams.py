"""Issue 14 REST contract: POST/GET /v1/projects/{project}/tasks/{key}/stream (SSE, resumable)."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI

from queue_service.api.limits import StreamSlots
from queue_service.testing import InMemoryBackend
from tests.unit.api_support import add_token, app, error_of, http, http_client, mem, project, read_sse, running
from tests.unit.api_support import settings as make_settings

__all__ = ["app", "http", "mem", "project"]

P = "/v1/projects/web/tasks"


def frames(text: str) -> list[dict[str, str]]:
    out = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "event" in fields:
            out.append(fields)
    return out


async def _claimed(http: httpx.AsyncClient) -> tuple[str, str]:
    r = await http.post(f"{P}", json={"title": "a"})
    assert r.status_code == 201, r.text
    r = await http.post("/v1/projects/web/claims", json={"agent": "agent-1"})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body["task"]["key"], body["lease"]["token"]


async def test_publish_then_sse_replay_and_reconnect_with_last_event_id(http: httpx.AsyncClient, project: str) -> None:
    key, token = await _claimed(http)
    r = await http.post(f"{P}/{key}/stream", json={"token": token, "chunk": "one"})
    assert r.status_code == 200, r.text
    r = await http.post(f"{P}/{key}/stream", json={"token": token, "chunks": ["two", "three"]})
    ids = r.json()["ids"]
    assert len(ids) == 2
    r = await http.get(f"{P}/{key}/stream", params={"follow": "false"})
    assert r.headers["content-type"].startswith("text/event-stream")
    got = frames(r.text)
    assert [f["event"] for f in got] == ["chunk"] * 3
    assert [f["data"] for f in got] == ['{"chunk": "one"}', '{"chunk": "two"}', '{"chunk": "three"}']
    # the watcher drops after "two"; it reconnects with Last-Event-ID and gets the rest, then done
    await http.post(f"{P}/{key}/stream", json={"token": token, "chunk": "four"})
    r = await http.post(f"{P}/{key}/stream", json={"token": token, "done": True})
    assert r.status_code == 200 and r.json()["done"] is True
    r = await http.get(f"{P}/{key}/stream", headers={"Last-Event-ID": got[1]["id"]})
    rest = frames(r.text)
    assert [f.get("data") for f in rest[:-1]] == ['{"chunk": "three"}', '{"chunk": "four"}']
    assert rest[-1]["event"] == "done"
    # ?after= does the same; ?stream= names another stream
    r = await http.get(f"{P}/{key}/stream", params={"after": got[2]["id"]})
    assert [f["event"] for f in frames(r.text)] == ["chunk", "done"]
    r = await http.get(f"{P}/{key}/stream", params={"stream": "other", "follow": "false"})
    assert frames(r.text) == []


async def test_live_follower_gets_chunks_published_after_it_connected(
    app: FastAPI, http: httpx.AsyncClient, project: str
) -> None:
    key, token = await _claimed(http)

    async def work() -> None:
        for text in ("a", "b"):
            r = await http.post(f"{P}/{key}/stream", json={"token": token, "chunk": text})
            assert r.status_code == 200

    status, events = await read_sse(app, f"{P}/{key}/stream", count=2, after_start=work)
    assert status == 200
    assert [data for _, data in events] == [{"chunk": "a"}, {"chunk": "b"}]


async def test_publish_refusals(http: httpx.AsyncClient, project: str) -> None:
    key, token = await _claimed(http)
    r = await http.post(f"{P}/{key}/stream", json={"token": "stale", "chunk": "x"})
    assert r.status_code == 409 and error_of(r)["code"] == "lease_invalid"
    r = await http.post(f"{P}/{key}/stream", json={"token": token})
    assert r.status_code == 422
    r = await http.post(f"{P}/{key}/stream", json={"token": token, "chunk": "x" * 70_000})
    assert r.status_code == 422
    r = await http.post(f"{P}/{key}/stream", params={"stream": "../etc"}, json={"token": token, "chunk": "x"})
    assert r.status_code == 422
    r = await http.get(f"{P}/{key}/stream", headers={"Last-Event-ID": "nope"})
    assert r.status_code == 422
    r = await http.get(f"{P}/WEB-99/stream")
    assert r.status_code == 404


async def test_followers_count_against_the_event_stream_cap(mem: InMemoryBackend) -> None:
    async with running(_app_with(mem, max_event_streams=1)) as app, http_client(app) as client:
        await client.post("/v1/projects", json={"slug": "web", "name": "Web", "key_prefix": "WEB"})
        key, _ = await _claimed(client)
        slots: StreamSlots = app.state.qs.streams
        slots.acquire()  # another follower holds the only slot
        r = await client.get(f"{P}/{key}/stream")
        assert r.status_code == 429
        slots.release()


async def test_viewer_reads_agent_token_publishes(mem: InMemoryBackend) -> None:
    admin = await add_token(mem, "admin")
    async with running(_app_with(mem)) as app, http_client(app, admin) as client:
        await client.post("/v1/projects", json={"slug": "web", "name": "Web", "key_prefix": "WEB"})
        key, token = await _claimed(client)
        viewer = await add_token(mem, "viewer", "web")
        async with http_client(app, viewer) as v:
            r = await v.post(f"{P}/{key}/stream", json={"token": token, "chunk": "x"})
            assert r.status_code == 403
            r = await v.get(f"{P}/{key}/stream", params={"follow": "false"})
            assert r.status_code == 200


def _app_with(mem: InMemoryBackend, **overrides: Any) -> FastAPI:
    from queue_service.app import create_app

    return create_app(make_settings(**overrides), backend=mem)


async def test_sse_ends_with_done_when_the_task_completes_without_it(
    app: FastAPI, http: httpx.AsyncClient, project: str
) -> None:
    key, token = await _claimed(http)

    async def work() -> None:
        r = await http.post(f"{P}/{key}/stream", json={"token": token, "chunk": "a"})
        assert r.status_code == 200
        r = await http.post(f"{P}/{key}/complete", json={"token": token, "result": {"ok": True}})
        assert r.status_code == 200, r.text

    # the live follower gets the chunk, then the final `event: done`, and the response ends
    status, events = await read_sse(app, f"{P}/{key}/stream", count=3, after_start=work, timeout=30)
    assert status == 200
    assert [data for _, data in events] == [{"chunk": "a"}, {}]
    # late readers, following or not, get the same ending
    for params in ({"follow": "true"}, {"follow": "false"}):
        got = frames((await http.get(f"{P}/{key}/stream", params=params)).text)
        assert [f["event"] for f in got] == ["chunk", "done"], params
        assert got[1]["id"] == got[0]["id"]
