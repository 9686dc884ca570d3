"""The dashboard in headless Chromium against a real server: what a team lead does with it.

Waits use Playwright's auto-waiting ``expect`` (it polls until the page shows the state); no test
asserts on how long anything took.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.support import ROOT, Server, fail_until_dead, seed_demo

NO_RELOAD = "window.__qs_marker === 42"


def open_live(page: Page, url: str) -> None:
    """Open *url*, wait until its event stream is connected, and mark the window (a reload clears it)."""
    page.goto(url)
    expect(page.locator("html")).to_have_attribute("data-live", "open")
    page.evaluate("window.__qs_marker = 42")


def test_open_board_and_create_a_task_through_the_form(page: Page, server: Server, project: str) -> None:
    page.goto(f"{server.url}/")
    expect(page).to_have_url(f"{server.url}/ui/")
    page.get_by_role("link", name=f"Project {project}").click()
    expect(page.get_by_test_id("col-not-started")).to_be_visible()
    form = page.get_by_test_id("create-form")
    form.locator("input[name=title]").fill("Write the release notes")
    form.locator("textarea[name=description]").fill("For v1.")
    form.locator("input[name=role]").fill("writer")
    form.locator("select[name=priority]").select_option("P1")
    form.get_by_role("button", name="Create").click()
    card = page.get_by_test_id("col-not-started").locator(".card", has_text="Write the release notes")
    expect(card).to_be_visible()
    expect(card).to_contain_text("writer")
    expect(card).to_contain_text("P1")
    with server.client() as c:
        (task,) = c.list_tasks(project).items
    assert (task.title, task.role, task.priority.value, task.description) == (
        "Write the release notes",
        "writer",
        "P1",
        "For v1.",
    )


@pytest.mark.parametrize("backend", ["flatfile", pytest.param("postgres+valkey", marks=pytest.mark.postgres)])
def test_completing_through_the_api_moves_the_card_without_reload(
    page: Page, backend: str, request: pytest.FixtureRequest
) -> None:
    server: Server = request.getfixturevalue("server" if backend == "flatfile" else "pg_server")
    project = f"move{backend[:2]}"
    with server.client() as c:
        c.create_project({"slug": project})
        task = c.create_task(project, {"title": "Ship it"})
        open_live(page, f"{server.url}/ui/p/{project}")
        expect(page.get_by_test_id("col-not-started").get_by_test_id(f"card-{task.key}")).to_be_visible()
        claim = c.claim(project, "agent-1")
        assert claim is not None
        expect(page.get_by_test_id("col-in-progress").get_by_test_id(f"card-{task.key}")).to_be_visible()
        c.complete(project, task.key, claim.lease.token, {"ok": True})
    expect(page.get_by_test_id("col-done").get_by_test_id(f"card-{task.key}")).to_be_visible()
    expect(page.get_by_test_id("col-in-progress").get_by_test_id(f"card-{task.key}")).to_have_count(0)
    expect(page.get_by_test_id("count-done")).to_have_text("1")
    assert page.evaluate(NO_RELOAD), "the page was reloaded"


def test_task_page_shows_the_live_output_without_reload(page: Page, server: Server, project: str) -> None:
    with server.client() as c:
        task = c.create_task(project, {"title": "Chatty build"})
        claim = c.claim(project, "agent-1")
        assert claim is not None
        token = claim.lease.token
        c.publish(project, task.key, "compiling 1/3", token)
        open_live(page, f"{server.url}/ui/p/{project}/tasks/{task.key}")
        lines = page.get_by_test_id("stream-lines")
        expect(lines).to_have_text("compiling 1/3\n")  # replayed: published before the page opened
        expect(page.get_by_test_id("stream-state")).to_have_text("live")
        c.publish(project, task.key, ["compiling 2/3", "<b>warning</b>: unused import"], token)
        expect(lines).to_contain_text("<b>warning</b>: unused import")
        # a change to the task refreshes the page's live part; the output keeps what it showed
        c.add_note(project, task.key, "halfway there", token=token)
        expect(page.get_by_test_id("notes")).to_contain_text("halfway there")
        c.publish(project, task.key, "compiling 3/3", token)
        expect(lines).to_contain_text("compiling 3/3")
        # finished without ending the stream: the page's follower ends anyway
        c.complete(project, task.key, token, {"ok": True})
    expect(page.get_by_test_id("stream-state")).to_have_text("ended")
    expect(lines).to_have_text("compiling 1/3\ncompiling 2/3\n<b>warning</b>: unused import\ncompiling 3/3\n")
    assert lines.locator("b").count() == 0, "a chunk was inserted as HTML"
    expect(page.get_by_test_id("stream-empty")).to_be_hidden()
    assert page.evaluate(NO_RELOAD), "the page was reloaded"


def test_retry_a_dead_lettered_task_from_the_ui(page: Page, server: Server, project: str) -> None:
    with server.client() as c:
        task = c.create_task(project, {"title": "Flaky import", "role": "etl", "max_attempts": 1})
        fail_until_dead(c, project, task.key, "etl", ["supplier feed returned 502"])
        page.goto(f"{server.url}/ui/p/{project}/dead-letter")
        row = page.get_by_test_id(f"row-{task.key}")
        expect(row).to_contain_text("supplier feed returned 502")
        row.get_by_test_id(f"retry-{task.key}").click()
        expect(page.get_by_test_id(f"row-{task.key}")).to_have_count(0)
        assert c.get_task(project, task.key).status.value == "not-started"
        # the task page lists that attempt's error
        page.goto(f"{server.url}/ui/p/{project}/tasks/{task.key}")
        expect(page.get_by_test_id("attempts")).to_contain_text("supplier feed returned 502")


def test_filter_the_board_by_two_statuses(page: Page, server: Server, project: str) -> None:
    with server.client() as c:
        todo = c.create_task(project, {"title": "todo one"})
        review = c.create_task(project, {"title": "review one", "status": "needs-qa"})
        held = c.create_task(project, {"title": "held one", "status": "blocked"})
    page.goto(f"{server.url}/ui/p/{project}")
    filters = page.get_by_test_id("filters")
    filters.locator("input[name=status][value=needs-qa]").check()
    filters.locator("input[name=status][value=blocked]").check()
    filters.get_by_role("button", name="Filter").click()
    expect(page.locator("section.col")).to_have_count(2)
    assert page.locator("section.col").evaluate_all("cols => cols.map(c => c.dataset.status)") == [
        "needs-qa",
        "blocked",
    ]
    expect(page.get_by_test_id(f"card-{review.key}")).to_be_visible()
    expect(page.get_by_test_id(f"card-{held.key}")).to_be_visible()
    expect(page.get_by_test_id(f"card-{todo.key}")).to_have_count(0)
    assert re.search(r"status=needs-qa.*status=blocked", page.url)


def test_open_the_dag_view(page: Page, server: Server) -> None:
    with server.client() as c:
        keys = seed_demo(c, "dagdemo")
    open_live(page, f"{server.url}/ui/p/dagdemo")
    page.get_by_role("link", name="DAG: launch").click()
    svg = page.get_by_test_id("dag")
    expect(svg).to_be_visible()
    expect(svg.locator("g.node")).to_have_count(9)
    expect(svg.locator("path[marker-end]")).to_have_count(11)
    first = svg.locator(f'g.node[data-key="{keys["first"]}"]')
    assert first.get_attribute("data-status") == "done"
    assert first.locator("rect").get_attribute("fill") == "#4ade80"
    busy = svg.locator(f'g.node[data-key="{keys["busy"]}"]')
    assert busy.get_attribute("data-status") == "in-progress"
    # live: a change recolours the node without a reload
    page.evaluate("window.__qs_marker = 42")
    expect(page.locator("html")).to_have_attribute("data-live", "open")
    with server.client() as c:
        c.update_task("dagdemo", keys["busy"], {"status": "blocked", "blocked_reason": "waiting"})
    expect(svg.locator(f'g.node[data-key="{keys["busy"]}"]')).to_have_attribute("data-status", "blocked")
    assert page.evaluate(NO_RELOAD)


def _token(server: Server, role: str) -> str:
    """A token made the way an operator makes one: ``queue-service token create``."""
    out = subprocess.run(
        [sys.executable, "-m", "queue_service", "token", "create", "--role", role, "--all-projects", "--json"],
        cwd=ROOT,
        env={**os.environ, **server.env},
        capture_output=True,
        text=True,
        check=True,
    )
    return str(json.loads(out.stdout)["token"])


def _wait_until_auth_is_on(server: Server) -> None:
    """A running server notices its first token at its next re-check (while auth is off it re-checks
    every second, ``Authenticator(recheck_seconds=1.0)``): wait for that instead of racing it."""
    deadline = time.monotonic() + 10
    while httpx.get(f"{server.url}/v1/projects", timeout=5).status_code != 401:
        assert time.monotonic() < deadline, "the server did not turn auth on after the first token"
        time.sleep(0.1)


def test_a_viewer_logs_in_and_finds_no_action_buttons(page: Page, fresh_server: Server) -> None:
    server = fresh_server
    with server.client() as c:
        c.create_project({"slug": "web", "name": "Web"})
        failed = c.create_task("web", {"title": "dead", "role": "etl", "max_attempts": 1})
        fail_until_dead(c, "web", failed.key, "etl", ["boom"])
    viewer = _token(server, "viewer")
    admin = _token(server, "admin")
    _wait_until_auth_is_on(server)
    page.goto(f"{server.url}/ui/p/web")
    expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    page.locator("input[name=token]").fill(viewer)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{server.url}/ui/p/web")
    expect(page.get_by_test_id("role")).to_contain_text("viewer")
    for path in ("/ui/p/web", f"/ui/p/web/tasks/{failed.key}", "/ui/p/web/dead-letter", "/ui/"):
        page.goto(server.url + path)
        expect(page.locator("main")).to_be_visible()
        assert page.locator("main form[method=post]").count() == 0, path
        for name in ("Create", "Retry", "Cancel task", "Save", "Add note", "Retry selected", "Retry all matching"):
            assert page.get_by_role("button", name=name, exact=True).count() == 0, (path, name)
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["qs_session"]["httpOnly"] and cookies["qs_session"]["sameSite"] == "Strict"
    # the same browser with an admin session gets the buttons
    page.get_by_role("button", name="Sign out").click()
    page.locator("input[name=token]").fill(admin)
    page.get_by_role("button", name="Sign in").click()
    page.goto(f"{server.url}/ui/p/web/tasks/{failed.key}")
    expect(page.get_by_role("button", name="Retry", exact=True)).to_be_visible()


def test_live_updates_survive_a_server_restart(page: Page, fresh_server: Server) -> None:
    server = fresh_server
    with server.client() as c:
        c.create_project({"slug": "web", "name": "Web"})
        task = c.create_task("web", {"title": "across restarts"})
    open_live(page, f"{server.url}/ui/p/web")
    expect(page.get_by_test_id("col-not-started").get_by_test_id(f"card-{task.key}")).to_be_visible()
    server.stop()
    expect(page.locator("html")).not_to_have_attribute("data-live", "open")
    server.start()
    with server.client() as c:
        c.update_task("web", task.key, {"status": "needs-qa"})
    expect(page.get_by_test_id("col-needs-qa").get_by_test_id(f"card-{task.key}")).to_be_visible()
    expect(page.locator("html")).to_have_attribute("data-live", "open")
    assert page.evaluate(NO_RELOAD), "the page was reloaded"
