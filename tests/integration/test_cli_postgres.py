"""Local mode on Postgres + Valkey: ``migrate``, state across CLI invocations, tokens, and a
Postgres → export → import into another database → export round trip (byte-identical modulo
``snapshot.VOLATILE_FIELDS``)."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from typer.testing import CliRunner

from queue_service import snapshot
from queue_service.cli import app
from queue_service.postgres import migrate

pytestmark = pytest.mark.postgres


def _db(valkey_url: str, number: int) -> str:
    # The CLI has no key-prefix setting: keep its default key space off database 0, which others share,
    # and give each Postgres database of a test its own Valkey database.
    p = urlsplit(valkey_url)
    return urlunsplit((p.scheme, p.netloc, f"/{number}", p.query, p.fragment))


@pytest.fixture
def slug(valkey_url: str) -> Iterator[str]:
    import redis

    name = f"cli-{uuid.uuid4().hex[:10]}"
    yield name
    for number in (9, 10):
        client: Any = redis.Redis.from_url(_db(valkey_url, number))
        with contextlib.closing(client):
            keys = list(client.scan_iter(match=f"mosaic:queue:project:{name}:*", count=1000))
            if keys:
                client.delete(*keys)


def cli_on(monkeypatch: pytest.MonkeyPatch, database_url: str, valkey_url: str, db: int = 9) -> Callable[..., Any]:
    runner = CliRunner()
    env = {"QUEUE_DATABASE_URL": database_url, "QUEUE_VALKEY_URL": _db(valkey_url, db)}

    def invoke(*args: str, code: int | None = 0, input: str | None = None) -> Any:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        result = runner.invoke(app, list(args), input=input)
        if code is None:
            assert result.exit_code != 0, (args, result.stdout)
        else:
            assert result.exit_code == code, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        return result

    return invoke


def test_migrate(monkeypatch: pytest.MonkeyPatch, empty_pg_url: str, valkey_url: str) -> None:
    qs = cli_on(monkeypatch, empty_pg_url, valkey_url)
    out = qs("migrate").stdout
    assert out.strip() == f"Database schema is at revision {migrate.head()}."
    assert qs("migrate").stdout == out  # idempotent
    assert json.loads(qs("migrate", "--json").stdout) == {"backend": "postgres", "revision": migrate.head()}


def test_unmigrated_database_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, empty_pg_url: str, valkey_url: str
) -> None:
    qs = cli_on(monkeypatch, empty_pg_url, valkey_url)
    result = qs("project", "list", code=None)
    assert result.stderr.startswith("error: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "queue-service migrate" in result.stderr  # tells the user what to do


def test_local_mode_keeps_state_between_invocations_and_round_trips(
    monkeypatch: pytest.MonkeyPatch, pg_url: str, empty_pg_url: str, valkey_url: str, slug: str
) -> None:
    qs = cli_on(monkeypatch, pg_url, valkey_url)
    qs("project", "create", slug, "--prefix", "CLI")
    qs("mission", "create", "launch", "-p", slug, "-m", "m1:One,m2:Two")
    qs(
        "task",
        "add",
        "-p",
        slug,
        "--from",
        "-",
        input=json.dumps(
            [
                {"title": "Design", "priority": "P1", "labels": ["db"], "extra": {"b": "2", "a": "1"}},
                {"title": "Build", "depends_on": ["#0"], "mission": "launch", "milestone": "m1"},
                {"title": "Ship", "depends_on": ["#1", "#0"]},
                {"title": "Legacy", "key": "GW-001"},
            ]
        ),
    )
    got = json.loads(qs("claim", "-p", slug, "--json").stdout)
    assert got["task"]["key"] == "CLI-1"
    qs("task", "note", "CLI-1", "on it", "-p", slug, "--author", "me", "--token", got["lease"]["token"])
    # the project as the first argument works the same as -p
    qs("complete", slug, "CLI-1", "-t", got["lease"]["token"], "--result", '{"z": [1, 2], "a": null}')
    qs("task", "cancel", "GW-001", "-p", slug, "--reason", "obsolete")
    assert json.loads(qs("task", "show", slug, "CLI-2", "--json").stdout)["blockers"] == []

    token = json.loads(qs("token", "create", "--role", "agent", "-p", slug, "--json").stdout)
    assert token["token"].startswith("qs_")
    first = qs("export", slug).stdout

    # a second database: migrate it, import, export again
    target = cli_on(monkeypatch, empty_pg_url, valkey_url, db=10)
    target("migrate")
    target("import", "-", input=first)
    second = target("export", slug).stdout
    assert snapshot.comparable(second) == snapshot.comparable(first)
    assert second != first  # exported_at differs
    # and the imported project keeps working
    nxt = json.loads(target("claim", slug, "--json").stdout)
    assert nxt["task"]["key"] == "CLI-2"
    assert json.loads(target("task", "add", slug, "After", "--json").stdout)["key"] == "CLI-4"


def test_flatfile_to_postgres_round_trip_is_byte_identical(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, pg_url: str, valkey_url: str, slug: str
) -> None:
    """DESIGN §5 / issue 6: flatfile → export → import into Postgres → export: identical modulo the
    documented volatile fields."""
    runner = CliRunner()

    def flat(*args: str, input: str | None = None) -> Any:
        monkeypatch.delenv("QUEUE_DATABASE_URL", raising=False)
        monkeypatch.delenv("QUEUE_VALKEY_URL", raising=False)
        monkeypatch.setenv("QUEUE_DATA_DIR", str(tmp_path / "data"))
        result = runner.invoke(app, list(args), input=input)
        assert result.exit_code == 0, (args, result.stdout, result.stderr)
        return result

    flat("project", "create", slug, "--name", "Flat ✓", "--prefix", "FF", "--workspace", "/srv/ws")
    flat("mission", "create", "launch", "-p", slug, "--name", "Launch", "-m", "m1:One,m2:Two")
    flat(
        "task",
        "add",
        "-p",
        slug,
        "--from",
        "-",
        input=json.dumps(
            [
                {"title": "Design | schema", "priority": "P1", "labels": ["db", "ui"], "extra": {"z": "1", "a": "2"}},
                {"title": "Build", "depends_on": ["#0"], "mission": "launch", "milestone": "m1", "role": "dev"},
                {"title": "Ship — ünïcode", "depends_on": ["#1", "#0"], "description": "line1\nline2"},
                {"title": "Imported", "key": "CR-01-02", "max_attempts": 5},
            ]
        ),
    )
    got = json.loads(flat("claim", "-p", slug, "--json").stdout)
    flat("task", "note", got["task"]["key"], "working", "-p", slug, "--author", "a1", "--token", got["lease"]["token"])
    flat("complete", got["task"]["key"], "-p", slug, "-t", got["lease"]["token"], "--result", '{"pr": 12, "a": [1.5]}')
    held = json.loads(flat("claim", "-p", slug, "--json").stdout)
    flat("fail", held["task"]["key"], "-p", slug, "-t", held["lease"]["token"], "-e", "flaky")
    flat("task", "cancel", "CR-01-02", "-p", slug, "--reason", "dup")
    flat("task", "edit", "FF-3", "-p", slug, "--assignee", "bob", "--label", "x")
    first = flat("export", slug).stdout

    pg = cli_on(monkeypatch, pg_url, valkey_url)
    # another project already in Postgres has used the shared note/event sequences: the imported ids
    # get renumbered, which comparable() allows (documented), keeping their order
    pg("project", "create", "busy")
    pg("task", "add", "busy", "occupies ids")
    pg("task", "note", "busy", "BUSY-1", "a note", "--author", "x")
    pg("import", "-", input=first)
    second = pg("export", slug).stdout
    assert second != first
    assert snapshot.comparable(second) == snapshot.comparable(first)


def test_queue_and_backlog_verbs_postgres(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pg_url: str, valkey_url: str, slug: str
) -> None:
    """Issue 18's ``qs queue``/``qs backlog`` scenario (tests/unit/test_cli_mosaic_queue.py) on Postgres + Valkey."""
    from tests.unit.test_cli_mosaic_queue import scenario

    monkeypatch.setenv("QUEUE_LEASE_DIR", str(tmp_path / "leases"))
    scenario(cli_on(monkeypatch, pg_url, valkey_url), slug)
