"""The task page's live output (issues 12 + 14): the UI's own stream endpoint under /ui, on every
backend — the API's SSE frames, cookie-authenticated with the API's scopes, resumable."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from queue_service.models import TokenRole
from tests.integration.test_ui_routes import add_token, app, browser, login

__all__ = ["app"]

URL = "/ui/p/web/tasks/WEB-1/stream"


def frames(text: str) -> list[dict[str, str]]:
    out = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "event" in fields:
            out.append(fields)
    return out


async def _finished_with_output(app: FastAPI) -> list[str]:
    svc = app.state.qs.service
    claim = await svc.claim_next("web", "agent-1")
    assert claim is not None and claim.task.key == "WEB-1"
    ids = await svc.publish("web", "WEB-1", ["building…", "<b>not html</b>", "done: 3 files"], claim.lease.token)
    # completed without ending the stream: the page's follower ends anyway
    await svc.complete("web", "WEB-1", claim.lease.token, {"ok": True})
    return ids


async def test_task_output_replays_then_ends_and_resumes(app: FastAPI) -> None:
    ids = await _finished_with_output(app)
    async with browser(app) as c:
        r = await c.get(URL)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        got = frames(r.text)
        assert [f["event"] for f in got] == ["chunk", "chunk", "chunk", "done"]
        assert [f["id"] for f in got[:3]] == ids
        assert got[1]["data"] == '{"chunk": "<b>not html</b>"}'
        resumed = frames((await c.get(URL, headers={"Last-Event-ID": ids[1]})).text)
        assert [(f["event"], f.get("data")) for f in resumed] == [
            ("chunk", '{"chunk": "done: 3 files"}'),
            ("done", "{}"),
        ]
        assert (await c.get(URL, headers={"Last-Event-ID": "nope"})).status_code == 422
        assert (await c.get("/ui/p/web/tasks/WEB-9/stream")).status_code == 404
        page = (await c.get("/ui/p/web/tasks/WEB-1")).text
    assert f'data-stream-url="{URL}"' in page and 'hx-preserve="true"' in page


async def test_task_output_has_the_ui_auth(app: FastAPI) -> None:
    await _finished_with_output(app)
    viewer = await add_token(app, TokenRole.VIEWER, "web")
    other = await add_token(app, TokenRole.ADMIN, "ops")
    async with browser(app) as c:
        assert (await c.get(URL)).status_code == 401  # an EventSource cannot follow a login redirect
        await login(c, viewer)
        assert [f["event"] for f in frames((await c.get(URL)).text)][-1] == "done"
    async with browser(app) as c:
        await login(c, other)
        assert (await c.get(URL)).status_code == 403
    # the API's bearer token is not a UI session
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://qs.test", headers={"Authorization": f"Bearer {viewer}"}
    ) as api:
        assert (await api.get(URL)).status_code == 401
