"""Route tests of the /ui dashboard on every backend: each page and action (status codes, content),
the auth matrix (off, viewer, agent, admin, other project, unknown token), CSRF and cross-site
refusal, and the UI's own event streams."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from queue_service.app import create_app
from queue_service.auth import hash_token, new_token_record
from queue_service.backend import Backend
from queue_service.models import TaskStatus, TokenRole
from queue_service.settings import Settings
from queue_service.testing import InMemoryBackend
from queue_service.ui import live

BASE = "http://qs.test"
S = TaskStatus


@pytest.fixture
async def app(backend: Backend) -> AsyncIterator[FastAPI]:
    settings = Settings(backend_url="memory://", orchestrator=False, sync=False, allowed_hosts="qs.test")
    application = create_app(settings, backend)
    async with application.router.lifespan_context(application):
        svc = application.state.qs.service
        await svc.create_project({"slug": "web", "name": "Web shop", "key_prefix": "WEB"})
        await svc.create_project({"slug": "ops", "name": "Ops", "key_prefix": "OPS"})
        await svc.create_mission("web", {"id": "launch"})
        a = await svc.create_task("web", {"title": "Design <model>", "mission": "launch", "labels": ["v1"]})
        await svc.create_task("web", {"title": "Build API", "mission": "launch", "depends_on": [a.key]})
        yield application


def browser(app: FastAPI) -> httpx.AsyncClient:
    """A client that keeps cookies, like a browser on the same origin."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE, follow_redirects=False)


async def csrf_of(client: httpx.AsyncClient, path: str = "/ui/login") -> str:
    page = await client.get(path)
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
    assert found, page.text[:500]
    return found.group(1)


async def post(
    client: httpx.AsyncClient, path: str, data: dict[str, Any] | None = None, **headers: str
) -> httpx.Response:
    token = await csrf_of(client)
    return await client.post(path, data={"csrf_token": token, **(data or {})}, headers=headers)


async def add_token(app: FastAPI, role: TokenRole, project: str | None = None) -> str:
    plain, record = new_token_record(project, role)
    await app.state.qs.backend.records.add_api_token(record)
    app.state.qs.authenticator.reset()
    return plain


async def login(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await post(client, "/ui/login", {"token": token, "next": "/ui/p/web"})


PAGES = [
    "/ui/",
    "/ui/p/web",
    "/ui/p/web/tasks/WEB-1",
    "/ui/p/web/dead-letter",
    "/ui/p/web/agents",
    "/ui/p/web/missions/launch/dag",
    "/ui/p/web/list",
]


# -- pages with auth off ----------------------------------------------------------------------


async def test_root_redirects_to_ui_and_docs_are_offline(app: FastAPI) -> None:
    async with browser(app) as c:
        r = await c.get("/")
        assert r.status_code == 307 and r.headers["location"] == "/ui/"
        for path, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
            page = await c.get(path)
            assert page.status_code == 200
            assert "/ui/static/vendor/" in page.text and asset in page.text
            assert "cdn" not in page.text.lower() and "fonts.googleapis" not in page.text
            src = re.search(r'src="([^"]+' + re.escape(asset) + ')"', page.text)
            assert src, page.text
            js = await c.get(src.group(1))
            assert js.status_code == 200 and len(js.content) > 100_000


@pytest.mark.parametrize("path", PAGES)
async def test_every_page_opens_directly_with_auth_off(app: FastAPI, path: str) -> None:
    async with browser(app) as c:
        r = await c.get(path)
    assert r.status_code == 200, r.text[:500]
    assert r.headers["content-type"].startswith("text/html")
    assert "auth off (loopback)" in r.text
    assert "/ui/static/vendor/htmx/htmx.min.js" in r.text


async def test_overview_shows_counts_chart_and_failures(app: FastAPI) -> None:
    svc = app.state.qs.service
    claim = await svc.claim("web", "bot-1")
    await svc.complete("web", claim.task.key, claim.lease.token, {"ok": 1})
    async with browser(app) as c:
        r = await c.get("/ui/")
    assert 'data-testid="project-web"' in r.text and 'data-testid="project-ops"' in r.text
    assert "1 completed" in r.text and "<svg" in r.text and "done 1" in r.text


async def test_board_columns_cards_and_filters(app: FastAPI) -> None:
    async with browser(app) as c:
        r = await c.get("/ui/p/web")
        assert 'data-testid="col-not-started"' in r.text and 'data-testid="col-failed"' in r.text
        assert 'data-testid="card-WEB-1"' in r.text and "Design &lt;model&gt;" in r.text  # escaped
        r = await c.get("/ui/p/web", params=[("status", "done"), ("status", "needs-qa")])
        cols = re.findall(r'data-testid="col-([a-z-]+)"', r.text)
        assert cols == ["needs-qa", "done"]
        r = await c.get("/ui/p/web", params={"q": "api"})
        assert 'data-testid="card-WEB-2"' in r.text and 'data-testid="card-WEB-1"' not in r.text
        # the search runs in the store (issue 12): the same on the list page, and bad input is a 422
        r = await c.get("/ui/p/web/list", params={"q": "API"})
        assert 'tasks/WEB-2"' in r.text and 'tasks/WEB-1"' not in r.text
        r = await c.get("/ui/p/web", params={"q": "two\tlines"})
        assert r.status_code == 422 and "control characters" in r.text
        r = await c.get("/ui/p/web", params={"label": "v1", "mission": "launch"})
        assert 'data-testid="card-WEB-1"' in r.text and 'data-testid="card-WEB-2"' not in r.text
        r = await c.get("/ui/p/web", params={"status": "bogus"})
        assert r.status_code == 422 and "unknown status" in r.text


async def test_board_of_unknown_project_is_404(app: FastAPI) -> None:
    async with browser(app) as c:
        assert (await c.get("/ui/p/nope")).status_code == 404
        assert (await c.get("/ui/p/web/tasks/WEB-99")).status_code == 404
        assert (await c.get("/ui/p/web/missions/nope/dag")).status_code == 404
        assert (await c.get("/ui/p/Bad%20Slug")).status_code in (404, 422)


async def test_task_page_shows_deps_both_ways_attempts_and_history(app: FastAPI) -> None:
    svc = app.state.qs.service
    await svc.update_task("web", "WEB-1", {"max_attempts": 2})
    for error in ("first boom", "second boom"):
        claim = None
        for _ in range(100):
            await svc.backend.dispatch.sweep()
            claim = await svc.claim("web", "bot-1", wait=0.1)
            if claim is not None:
                break
        assert claim is not None and claim.task.key == "WEB-1"
        await svc.fail("web", "WEB-1", claim.lease.token, error)
    await svc.add_note("web", "WEB-1", "ann", "looked at it")
    async with browser(app) as c:
        one = (await c.get("/ui/p/web/tasks/WEB-1")).text
        two = (await c.get("/ui/p/web/tasks/WEB-2")).text
    assert "first boom" in one and "second boom" in one and "dead-lettered" in one
    assert "looked at it" in one and "note_added" in one and "created" in one
    assert 'href="/ui/p/web/tasks/WEB-2"' in one  # blocks WEB-2
    assert 'href="/ui/p/web/tasks/WEB-1"' in two  # blocked by WEB-1
    assert 'data-testid="live-output"' in one and 'data-stream-url="/ui/p/web/tasks/WEB-1/stream"' in one
    assert 'data-testid="retry"' in one


async def test_dag_is_svg_coloured_by_status(app: FastAPI) -> None:
    async with browser(app) as c:
        r = await c.get("/ui/p/web/missions/launch/dag")
    assert '<svg xmlns="http://www.w3.org/2000/svg" data-testid="dag"' in r.text
    assert 'data-key="WEB-1" data-status="not-started"' in r.text and '<path d="M' in r.text


async def test_agents_view_lists_holders_with_lease_left(app: FastAPI) -> None:
    svc = app.state.qs.service
    claim = await svc.claim("web", "builder-7", lease_seconds=600)
    assert claim is not None
    await svc.create_task("web", {"title": "later", "assignee": "alice"})
    async with browser(app) as c:
        r = await c.get("/ui/p/web/agents")
    row = r.text.split('data-testid="agent-builder-7"', 1)[1].split("</tr>", 1)[0]
    assert f">{claim.task.key}</a>" in row and re.search(rf"{claim.task.key}: \d+m \d+s", row)
    assert 'data-testid="agent-alice"' not in r.text  # assigned, but holds nothing
    assert "ready" in row and "0 / 1" not in row  # from the registry (implicit: capacity 1, holding 1)
    assert "1 / 1" in row


async def test_agents_view_shows_the_registry(app: FastAPI) -> None:
    svc = app.state.qs.service
    await svc.register_agent("web", {"id": "gpu-box", "roles": ["ml"], "capacity": 4})
    await svc.register_agent("web", {"id": "retired"})
    await svc.drain_agent("web", "retired")
    async with browser(app) as c:
        r = await c.get("/ui/p/web/agents")
    box = r.text.split('data-testid="agent-gpu-box"', 1)[1].split("</tr>", 1)[0]
    assert ">ready<" in box and "0 / 4" in box and "ml" in box
    retired = r.text.split('data-testid="agent-retired"', 1)[1].split("</tr>", 1)[0]
    assert ">drained<" in retired


# -- actions ------------------------------------------------------------------------------------


async def test_create_edit_note_cancel_retry_through_forms(app: FastAPI) -> None:
    svc = app.state.qs.service
    async with browser(app) as c:
        r = await post(
            c, "/ui/p/web/tasks", {"title": "From form", "priority": "P1", "role": "ui", "depends_on": "WEB-1, WEB-2"}
        )
        assert r.status_code == 303
        assert r.headers["location"].startswith("/ui/p/web?created=")
        key = r.headers["location"].rsplit("=", 1)[1]
        assert f'href="/ui/p/web/tasks/{key}"' in (await c.get(r.headers["location"])).text
        task = await svc.get_task("web", key)
        assert (task.title, task.priority.value, task.role, task.depends_on) == (
            "From form",
            "P1",
            "ui",
            ("WEB-1", "WEB-2"),
        )
        r = await post(c, f"/ui/p/web/tasks/{key}/edit", {"status": "blocked", "priority": "P0", "assignee": "bob"})
        assert r.status_code == 303
        task = await svc.get_task("web", key)
        assert (task.status, task.priority.value, task.assignee) == (S.BLOCKED, "P0", "bob")
        r = await post(c, f"/ui/p/web/tasks/{key}/notes", {"text": "from the board"})
        assert r.status_code == 303 and [n.text for n in await svc.list_notes("web", key)] == ["from the board"]
        r = await post(c, f"/ui/p/web/tasks/{key}/cancel", {"reason": "dup"})
        assert r.status_code == 303 and (await svc.get_task("web", key)).status is S.CANCELLED
        r = await post(c, f"/ui/p/web/tasks/{key}/retry")
        assert r.status_code == 303 and (await svc.get_task("web", key)).status is S.NOT_STARTED


async def test_bad_form_input_is_refused_and_changes_nothing(app: FastAPI) -> None:
    svc = app.state.qs.service
    before = await svc.export_project("web")
    async with browser(app) as c:
        r = await post(c, "/ui/p/web/tasks", {"title": ""})
        assert r.status_code == 422
        r = await post(c, "/ui/p/web/tasks", {"title": "x", "depends_on": "WEB-404"})
        assert r.status_code == 422 and "WEB-404" in r.text
        r = await post(c, "/ui/p/web/tasks", {"title": "x" * 600})
        assert r.status_code == 422
        r = await post(c, "/ui/p/web/tasks/WEB-1/edit", {"status": "sideways"})
        assert r.status_code == 422
        r = await post(c, "/ui/p/web/tasks/WEB-1/edit", {"priority": "P1", "version": "99"})
        assert r.status_code == 412  # the form was rendered from an older version
        r = await post(c, "/ui/p/web/tasks/WEB-1/notes", {"text": "  "})
        assert r.status_code == 422
        r = await post(c, "/ui/p/web/tasks", {"title": "big", "description": "x" * (1024 * 1024)})
        assert r.status_code == 422 and "Content-Length" in r.text
    after = await svc.export_project("web")
    assert after.tasks == before.tasks and after.notes == before.notes


async def _dead(app: FastAPI, title: str, role: str) -> str:
    svc = app.state.qs.service
    task = await svc.create_task("web", {"title": title, "role": role, "max_attempts": 1})
    claim = await svc.claim("web", "bot", roles=[role])
    assert claim is not None and claim.task.key == task.key
    await svc.fail("web", task.key, claim.lease.token, f"{title} broke")
    return task.key


async def test_dead_letter_retry_one_selection_and_all_matching(app: FastAPI) -> None:
    svc = app.state.qs.service
    keys = [await _dead(app, f"job {i}", "etl" if i < 3 else "mail") for i in range(5)]
    async with browser(app) as c:
        page = (await c.get("/ui/p/web/dead-letter")).text
        assert all(f'data-testid="row-{k}"' in page for k in keys) and "job 0 broke" in page
        r = await post(c, f"/ui/p/web/tasks/{keys[0]}/retry")
        assert r.status_code == 303
        r = await c.post(
            "/ui/p/web/dead-letter/retry",
            data={"csrf_token": await csrf_of(c), "key": [keys[1], keys[3]]},
        )
        assert r.status_code == 303 and "retried+2+of+2" in r.headers["location"]
        r = await post(c, "/ui/p/web/dead-letter/retry", {"all": "1", "role": "etl"})
        assert r.status_code == 303 and "retried+1+of+1" in r.headers["location"]
        status = {k: (await svc.get_task("web", k)).status for k in keys}
        assert status == {
            keys[0]: S.NOT_STARTED,
            keys[1]: S.NOT_STARTED,
            keys[2]: S.NOT_STARTED,
            keys[3]: S.NOT_STARTED,
            keys[4]: S.FAILED,
        }
        r = await post(c, "/ui/p/web/dead-letter/retry", {})
        assert r.status_code == 422


# -- CSRF and cross-site ------------------------------------------------------------------------


async def test_post_without_or_with_wrong_csrf_is_refused(app: FastAPI) -> None:
    svc = app.state.qs.service
    async with browser(app) as c:
        await csrf_of(c)
        r = await c.post("/ui/p/web/tasks", data={"title": "no token"})
        assert r.status_code == 403 and "CSRF" in r.text
        r = await c.post("/ui/p/web/tasks", data={"title": "wrong", "csrf_token": "x" * 32})
        assert r.status_code == 403
    async with browser(app) as fresh:  # a form token without the matching cookie (another browser)
        r = await fresh.post("/ui/p/web/tasks", data={"title": "stolen", "csrf_token": "y" * 32})
        assert r.status_code == 403
    assert len((await svc.list_tasks("web")).items) == 2


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "http://qs.test.evil.example"},
    ],
)
async def test_cross_site_posts_are_refused(app: FastAPI, headers: dict[str, str]) -> None:
    svc = app.state.qs.service
    async with browser(app) as c:
        r = await post(c, "/ui/p/web/tasks", {"title": "csrf"}, **headers)
        assert r.status_code == 403 and "cross-site" in r.text
        r = await post(c, "/ui/p/web/tasks/WEB-1/cancel", {}, **headers)
        assert r.status_code == 403
        ok = await post(
            c, "/ui/p/web/tasks", {"title": "same origin"}, Origin=BASE, **{"Sec-Fetch-Site": "same-origin"}
        )
        assert ok.status_code == 303
    titles = sorted(t.title for t in (await svc.list_tasks("web")).items)
    assert "csrf" not in titles and "same origin" in titles
    assert (await svc.get_task("web", "WEB-1")).status is S.NOT_STARTED


# -- auth matrix ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PAGES)
async def test_auth_on_without_session_redirects_to_login(app: FastAPI, path: str) -> None:
    await add_token(app, TokenRole.ADMIN)
    async with browser(app) as c:
        r = await c.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/login?next=")
        assert (await c.get("/ui/login")).status_code == 200
        events = await c.get("/ui/p/web/events")
        assert events.status_code == 401


async def test_login_sets_httponly_strict_cookie_and_bad_token_is_refused(app: FastAPI) -> None:
    token = await add_token(app, TokenRole.VIEWER)
    async with browser(app) as c:
        bad = await login(c, "qs_" + "x" * 43)
        assert bad.status_code == 401 and "invalid" in bad.text
        r = await login(c, token)
        assert r.status_code == 303 and r.headers["location"] == "/ui/p/web"
        cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith("qs_session="))
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
        assert (await c.get("/ui/p/web")).status_code == 200
        open_redirect = await post(c, "/ui/login", {"token": token, "next": "//evil.example/x"})
        assert open_redirect.headers["location"] == "/ui/"
        out = await post(c, "/ui/logout")
        assert out.status_code == 303
        assert (await c.get("/ui/p/web")).status_code == 303


async def test_viewer_sees_read_only_pages_and_every_action_is_refused(app: FastAPI) -> None:
    svc = app.state.qs.service
    dead = await _dead(app, "dead", "etl")
    token = await add_token(app, TokenRole.VIEWER)
    async with browser(app) as c:
        await login(c, token)
        for path in [*PAGES, f"/ui/p/web/tasks/{dead}"]:
            r = await c.get(path)
            assert r.status_code == 200, path
            # the only form that posts is "sign out"; no action (create/retry/cancel/edit/note) is offered
            assert re.findall(r'<form method="post" action="([^"]+)"', r.text) == ["/ui/logout"], path
            assert 'data-testid="retry' not in r.text and 'data-testid="create-form"' not in r.text
        before = await svc.export_project("web")
        for path, data in [
            ("/ui/p/web/tasks", {"title": "viewer"}),
            ("/ui/p/web/tasks/WEB-1/edit", {"priority": "P0"}),
            ("/ui/p/web/tasks/WEB-1/cancel", {}),
            (f"/ui/p/web/tasks/{dead}/retry", {}),
            ("/ui/p/web/tasks/WEB-1/notes", {"text": "hi"}),
            ("/ui/p/web/dead-letter/retry", {"all": "1"}),
        ]:
            r = await post(c, path, data)
            assert r.status_code == 403, path
        after = await svc.export_project("web")
        assert after.tasks == before.tasks and after.notes == before.notes


async def test_agent_may_add_notes_but_not_edit(app: FastAPI) -> None:
    token = await add_token(app, TokenRole.AGENT, "web")
    async with browser(app) as c:
        await login(c, token)
        page = (await c.get("/ui/p/web/tasks/WEB-1")).text
        assert 'data-testid="note-form"' in page and 'data-testid="task-actions"' not in page
        assert (await post(c, "/ui/p/web/tasks/WEB-1/notes", {"text": "agent note"})).status_code == 303
        assert (await post(c, "/ui/p/web/tasks/WEB-1/edit", {"priority": "P0"})).status_code == 403


async def test_project_token_sees_only_its_project(app: FastAPI) -> None:
    token = await add_token(app, TokenRole.ADMIN, "ops")
    async with browser(app) as c:
        await login(c, token)
        overview = (await c.get("/ui/")).text
        assert 'data-testid="project-ops"' in overview and 'data-testid="project-web"' not in overview
        assert (await c.get("/ui/p/web")).status_code == 403
        assert (await c.get("/ui/p/nope")).status_code == 403  # no hint whether it exists
        assert (await c.get("/ui/p/web/events")).status_code == 403
        assert (await post(c, "/ui/p/web/tasks", {"title": "x"})).status_code == 403
        assert (await c.get("/ui/p/ops")).status_code == 200


async def test_admin_sees_actions(app: FastAPI) -> None:
    token = await add_token(app, TokenRole.ADMIN)
    async with browser(app) as c:
        await login(c, token)
        assert 'data-testid="create-form"' in (await c.get("/ui/p/web")).text
        assert 'data-testid="task-actions"' in (await c.get("/ui/p/web/tasks/WEB-1")).text
        assert (await post(c, "/ui/p/web/tasks", {"title": "by admin"})).status_code == 303


async def test_removed_token_ends_the_session(app: FastAPI) -> None:
    token = await add_token(app, TokenRole.ADMIN)
    keep = await add_token(app, TokenRole.VIEWER)
    async with browser(app) as c:
        await login(c, token)
        assert (await c.get("/ui/p/web")).status_code == 200
        await revoke(app, token)
        r = await c.get("/ui/p/web")
        assert r.status_code == 303 and "session+has+ended" in r.headers["location"].replace("%20", "+")
        refused = await post(c, "/ui/p/web/tasks", {"title": "after revoke"})
        assert refused.status_code == 303 and refused.headers["location"].startswith("/ui/login")
        assert (await c.get("/ui/p/web/events")).status_code == 401
    assert keep  # another token stays, so auth stays on
    titles = [t.title for t in (await app.state.qs.service.list_tasks("web")).items]
    assert "after revoke" not in titles


async def revoke(app: FastAPI, token: str) -> None:
    """Revoke *token* as each store allows today (no revocation API yet: the security issue adds it),
    then drop the authenticator's cache (its revocation cache does that part in production)."""
    backend = app.state.qs.backend
    digest = hash_token(token)
    record = await backend.records.find_api_token(digest)
    if record is not None and hasattr(backend.records, "revoke_api_token"):
        await backend.records.revoke_api_token(record.id)
    elif isinstance(backend, InMemoryBackend):
        backend.api_tokens = {k: v for k, v in backend.api_tokens.items() if v.token_hash != digest}
    elif hasattr(backend, "tokens"):  # flatfile: the operator removes it from tokens.json
        path = backend.tokens.path
        doc = json.loads(path.read_text())
        doc["tokens"] = [t for t in doc["tokens"] if t["token_hash"] != digest]
        path.write_text(json.dumps(doc))
    else:
        async with backend.engine.begin() as conn:
            await conn.execute(text("DELETE FROM api_tokens WHERE token_hash = :h"), {"h": digest})
    app.state.qs.authenticator.reset()


# -- the UI's event streams -------------------------------------------------------------------------


async def read_frames(
    app: FastAPI,
    path: str,
    count: int,
    headers: dict[str, str] | None = None,
    after_start: Callable[[], Awaitable[Any]] | None = None,
    timeout: float = 10.0,
) -> tuple[int, list[str]]:
    """Open one of the UI's event streams over raw ASGI (httpx's ASGI transport buffers whole
    bodies), run *after_start* once the first frame arrived, collect *count* ``change`` frames, then
    disconnect. Returns the status and the frames."""
    path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"qs.test"), *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items())],
        "client": ("127.0.0.1", 50000),
        "server": ("qs.test", 80),
    }
    disconnect, started, hello, done = asyncio.Event(), asyncio.Event(), asyncio.Event(), asyncio.Event()
    status = 0
    buffer = b""
    frames: list[str] = []
    asked = False

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
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
            if b"event: change" in block:
                frames.append(block.decode())
                hello.set()
        if len(frames) >= count or not message.get("more_body", False):
            done.set()

    runner = asyncio.create_task(app(scope, receive, send))
    try:
        await asyncio.wait_for(started.wait(), timeout)
        if after_start is not None and status == 200:
            # the stream is live once its first frame is out (a browser refreshes on it)
            await asyncio.wait_for(hello.wait(), timeout)
            await after_start()
        await asyncio.wait_for(done.wait(), timeout)
    finally:
        disconnect.set()
        try:
            await asyncio.wait_for(runner, timeout)
        except TimeoutError:
            runner.cancel()
    return status, frames


async def test_project_stream_says_change_and_resumes_after_last_event_id(app: FastAPI) -> None:
    svc = app.state.qs.service
    last = (await svc.list_events("web"))[-1].id

    async def change() -> None:
        await svc.create_task("web", {"title": "live one"})

    status, frames = await read_frames(app, "/ui/p/web/events", 2, after_start=change)
    assert status == 200
    assert frames[0] == "event: change\ndata: connected"
    sent = re.match(r"event: change\nid: (\d+)\ndata: (.*)$", frames[1])
    assert sent and int(sent.group(1)) > last
    assert json.loads(sent.group(2))["task"] == "WEB-3" and json.loads(sent.group(2))["kind"] == "created"
    # a reconnect with Last-Event-ID (header, or ?last_event_id=) replays what it missed, from the log
    _, replay = await read_frames(app, "/ui/p/web/events", 2, {"Last-Event-ID": str(last)})
    assert replay[1] == frames[1]
    _, resumed = await read_frames(app, f"/ui/p/web/events?last_event_id={last}", 2)
    assert resumed[1] == frames[1]


async def test_overview_stream_fires_on_any_project(app: FastAPI) -> None:
    svc = app.state.qs.service

    async def change() -> None:
        await svc.create_task("ops", {"title": "ops work"})

    status, frames = await read_frames(app, "/ui/events", 2, after_start=change)
    assert status == 200 and len(frames) == 2


async def test_stream_of_a_revoked_session_ends(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "RECHECK_SECONDS", 0.0)
    svc = app.state.qs.service
    token = await add_token(app, TokenRole.VIEWER)
    await add_token(app, TokenRole.ADMIN)  # another token stays, so auth stays on
    cookie = {"Cookie": f"qs_session={token}"}

    async def revoke_then_change() -> None:
        await revoke(app, token)
        await svc.create_task("web", {"title": "after revoke"})

    status, frames = await read_frames(app, "/ui/p/web/events", 3, cookie, after_start=revoke_then_change)
    assert status == 200
    assert frames == ["event: change\ndata: connected"]  # ended: the change after revocation never came
    status, _ = await read_frames(app, "/ui/p/web/events", 1, cookie)
    assert status == 401
