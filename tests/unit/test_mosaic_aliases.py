"""Issue 18: the Mosaic status and priority vocabularies are accepted wherever a status or priority is read
(``models.STATUS_ALIASES`` / ``models.PRIORITY_ALIASES``, the one place both live): the API, the CLI and
TASKS.md."""

from __future__ import annotations

import httpx
import pytest

from queue_service import exceptions
from queue_service.models import Priority, TaskStatus, parse_priority, parse_status
from tests.unit.api_support import app, http, mem, project  # noqa: F401  (fixtures)
from tests.unit.test_cli import Cli, backend, cli  # noqa: F401  (fixtures)
from workspace_sync.format import parse

STATUS_WORDS = [
    # the orchestrator task schema
    ("pending", TaskStatus.NOT_STARTED),
    ("running", TaskStatus.IN_PROGRESS),
    ("gated", TaskStatus.NEEDS_QA),
    ("completed", TaskStatus.DONE),
    ("failed", TaskStatus.FAILED),
    ("escalated", TaskStatus.BLOCKED),
    # the DB-side Tasks API
    ("NOT_STARTED", TaskStatus.NOT_STARTED),
    ("IN_PROGRESS", TaskStatus.IN_PROGRESS),
    ("NEEDS_QA", TaskStatus.NEEDS_QA),
    ("DONE", TaskStatus.DONE),
    ("BLOCKED", TaskStatus.BLOCKED),
    ("CANCELLED", TaskStatus.CANCELLED),
    ("COMPLETED", TaskStatus.DONE),
]
PRIORITY_WORDS = [
    ("CRITICAL", Priority.P0),
    ("HIGH", Priority.P1),
    ("MEDIUM", Priority.P2),
    ("LOW", Priority.P3),
    ("high", Priority.P1),
    ("p0", Priority.P0),
    ("3", Priority.P3),
]


@pytest.mark.parametrize(("word", "status"), STATUS_WORDS)
def test_parse_status_aliases(word: str, status: TaskStatus) -> None:
    assert parse_status(word) is status


@pytest.mark.parametrize(("word", "priority"), PRIORITY_WORDS)
def test_parse_priority_aliases(word: str, priority: Priority) -> None:
    assert parse_priority(word) is priority


@pytest.mark.parametrize("word", ["URGENT", "P4", "", "4", "highest"])
def test_unknown_priority_is_a_clear_error(word: str) -> None:
    with pytest.raises(exceptions.ValidationError, match="unknown priority"):
        parse_priority(word)


@pytest.mark.parametrize(("word", "status"), STATUS_WORDS)
def test_tasks_md_status_aliases(word: str, status: TaskStatus) -> None:
    doc = parse(
        "| id | status | description | priority |\n| --- | --- | --- | --- |\n"
        f"| A-1 | {word} | t | HIGH |\n| A-2 | todo | u | CRITICAL |\n"
    )
    first, second = doc.rows_data()
    assert first.status is status
    assert (first.priority, second.priority) == (Priority.P1, Priority.P0)


def test_tasks_md_unknown_priority_keeps_the_row_with_an_error() -> None:
    doc = parse("| id | status | description | priority |\n| --- | --- | --- | --- |\n| A-1 | todo | t | URGENT |\n")
    (row,) = doc.rows()
    assert row.data is None
    assert any("URGENT" in e.message for e in row.errors)


@pytest.mark.parametrize(("word", "status"), STATUS_WORDS)
def test_cli_status_aliases(cli: Cli, word: str, status: TaskStatus) -> None:  # noqa: F811
    added = cli.json("task", "add", "t", "-p", "web", "--status", word, "-P", "LOW")
    assert (added["status"], added["priority"]) == (status.value, "P3")
    listed = cli.json("task", "list", "-p", "web", "--status", word)["items"]
    assert [t["key"] for t in listed] == [added["key"]]
    edited = cli.json("task", "edit", "web", added["key"], "--priority", "critical")
    assert edited["priority"] == "P0"


async def test_api_status_and_priority_aliases(http: httpx.AsyncClient, project: str) -> None:  # noqa: F811
    for word, status in STATUS_WORDS:
        r = await http.post(f"/v1/projects/{project}/tasks", json={"title": word, "status": word, "priority": "HIGH"})
        assert r.status_code == 201, r.text
        assert (r.json()["status"], r.json()["priority"]) == (status.value, "P1")
    r = await http.get(f"/v1/projects/{project}/tasks", params={"status": "gated,escalated"})
    assert sorted(t["title"] for t in r.json()["items"]) == ["BLOCKED", "NEEDS_QA", "escalated", "gated"]
    key = r.json()["items"][0]["key"]
    r = await http.patch(f"/v1/projects/{project}/tasks/{key}", json={"priority": "CRITICAL"})
    assert r.status_code == 200, r.text
    assert r.json()["priority"] == "P0"
    r = await http.post(f"/v1/projects/{project}/tasks", json={"title": "x", "priority": "URGENT"})
    assert r.status_code == 422
