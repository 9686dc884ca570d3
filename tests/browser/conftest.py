"""Browser fixtures: Debian's chromium (never skipped: a missing browser fails the run, and
``make test`` installs it) driven by Playwright, against a real ``queue-service serve``."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from tests.browser.support import CHROMIUM, Server, launch_options, serve

_projects = itertools.count(1)


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (make test does it)")
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    b = playwright.chromium.launch(**launch_options())
    yield b
    b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    p = context.new_page()
    p.set_default_timeout(15_000)
    yield p
    context.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One auth-off flatfile server per module; tests keep apart by using their own project."""
    with serve(tmp_path_factory.mktemp("ui") / "data") as s:
        yield s


@pytest.fixture
def pg_server(tmp_path: Path, pg_url: str, valkey_url: str) -> Iterator[Server]:
    """The same server on Postgres + Valkey (a fresh database and key space for the test).

    The key space is cleaned with the sync redis client: Playwright's sync API keeps an event loop
    of its own in this thread, so the async ``valkey_prefix`` fixture cannot run here.
    """
    prefix = f"mosaic:queue:ui{uuid.uuid4().hex[:12]}"
    env = {"QUEUE_DATABASE_URL": pg_url, "QUEUE_VALKEY_URL": valkey_url, "QUEUE_TEST_KEY_PREFIX": prefix}
    try:
        with serve(tmp_path / "data", "tests.acceptance.serve_app", **env) as s:
            yield s
    finally:
        client = redis.Redis.from_url(valkey_url)
        try:
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            for i in range(0, len(keys), 1000):
                client.delete(*keys[i : i + 1000])
            client.delete(prefix)
        finally:
            client.close()


@pytest.fixture
def project(server: Server) -> str:
    slug = f"p{next(_projects)}"
    with server.client() as c:
        c.create_project({"slug": slug, "name": f"Project {slug}"})
    return slug


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[Server]:
    """A server of the test's own (auth on, or restarted by the test)."""
    with serve(tmp_path / "data") as s:
        yield s
