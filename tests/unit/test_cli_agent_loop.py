"""Issue 11: the CLI an agent drives — prime, next, ready, claim output, dead-letter, dep, budgets."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from queue_service.cli.agent_loop import prime_text
from queue_service.testing import InMemoryBackend
from tests.unit.test_cli import SLOW_BACKOFF, Cli


@pytest.fixture
def cli() -> Cli:
    c = Cli(InMemoryBackend(config=SLOW_BACKOFF))
    c("project", "create", "web", "--prefix", "WEB")
    return c


def test_prime_fits_two_kilobytes_with_long_names() -> None:
    text = prime_text("a" * 64, ["r" * 64] * 3, [], 1800, 10**6)
    assert len(text.encode()) <= 2048


def test_claim_prints_description_lease_and_next_commands(cli: Cli) -> None:
    cli("task", "add", "web", "Design", "-D", "Draw the schema first.")
    out = cli("claim", "web", "--agent", "me").stdout
    assert "Draw the schema first." in out
    assert "lease: 1800 s" in out
    assert re.search(r"^finish:\s+qs complete web WEB-1 --token \S+", out, re.M)
    got = cli.json("claim", "web")
    assert got is None


def test_claim_json_is_slim_unless_full_or_fields(cli: Cli) -> None:
    cli("task", "add", "web", "A", "-D", "desc")
    cli("task", "add", "web", "B")
    got = cli.json("claim", "web")
    assert got["lease"]["seconds"] == 1800
    assert set(got["task"]) == {
        "key", "title", "status", "role", "priority", "assignee", "depends_on", "attempts", "description",
    }  # fmt: skip
    full = cli.json("claim", "web", "--full")
    assert "created_at" in full["task"] and "version" in full["task"]
    listed = cli.json("task", "list", "web", "--fields", "key,status")
    assert listed["items"][0] == {"key": "WEB-1", "status": "in-progress"}
    assert "unknown task field" in cli.error("task", "list", "web", "--json", "--fields", "nope")


def test_next_shows_best_task_and_exact_claim_command(cli: Cli) -> None:
    cli("task", "add", "web", "Leaf")
    cli("task", "add", "web", "Hub", "-D", "Unblocks the rest")
    cli("task", "add", "web", "After hub", "-d", "WEB-2")
    out = cli("next", "web").stdout
    assert out.startswith("Next: WEB-2")
    assert "Unblocks the rest" in out
    assert "claim it: qs next web --claim" in out
    got = cli.json("next", "web", "--role", "default")
    assert got["task"]["key"] == "WEB-2" and got["unblocks"] == 1 and got["ready"] == 2
    assert got["claim"] == "qs next web --role default --claim"
    claimed = cli.json("next", "web", "--claim")
    assert claimed["task"]["key"] == "WEB-2" and claimed["lease"]["seconds"] == 1800
    assert cli.json("next", "web", "--role", "qa") is None
    assert "No task is ready" in cli("next", "web", "--role", "qa").stdout


def test_unknown_next_like_command_does_not_suggest_export(cli: Cli) -> None:
    # "next" exists now; a typo still gets a usage error, never an unrelated suggestion
    assert "export" not in cli("nxt", "web", code=2).stderr


def test_ready_lists_in_dispatch_order_and_says_when_cut(cli: Cli) -> None:
    cli("task", "add", "--from", "-", "web", input="\n".join(json.dumps({"title": f"t{i}"}) for i in range(25)))
    out = cli("ready", "web").stdout
    assert "20 of 25 shown; --limit N or --all" in out
    everything = cli.json("ready", "web", "--all")
    assert everything["total"] == 25 and len(everything["items"]) == 25
    assert [t["key"] for t in cli.json("ready", "web", "--limit", "2")["items"]] == ["WEB-1", "WEB-2"]


def test_task_list_default_limit_says_how_many_and_how_to_see_more(cli: Cli) -> None:
    cli("task", "add", "--from", "-", "web", input="\n".join(json.dumps({"title": f"t{i}"}) for i in range(25)))
    out = cli("task", "list", "web").stdout
    assert re.search(r"20 of 25 shown; --cursor \S+ or --all", out), out
    assert len(cli.json("task", "list", "web", "--all")["items"]) == 25


def test_bulk_add_prints_one_line(cli: Cli) -> None:
    out = cli("task", "add", "--from", "-", "web", input="\n".join(json.dumps({"title": f"t{i}"}) for i in range(30)))
    assert out.stdout.strip().splitlines() == ["Added 30 tasks: WEB-1 … WEB-30"]
    one = cli("task", "add", "--from", "-", "web", input=json.dumps({"title": "solo"}))
    assert one.stdout.strip() == "Added 1 task: WEB-31"


def test_dead_letter_lists_and_retries_in_bulk(cli: Cli) -> None:
    for title in ("a", "b"):
        cli("task", "add", "web", title, "--max-attempts", "1")
        got = cli.json("claim", "web")
        cli("fail", "web", got["task"]["key"], "-t", got["lease"]["token"], "-e", f"{title} broke")
    out = cli("dead-letter", "web").stdout
    assert "WEB-1" in out and "b broke" in out
    listed = cli.json("dead-letter", "web")
    assert listed["total"] == 2 and {t["key"] for t in listed["items"]} == {"WEB-1", "WEB-2"}
    assert "Requeued 2 tasks" in cli("dead-letter", "web", "--retry").stdout
    assert cli.json("dead-letter", "web")["total"] == 0
    assert cli.json("ready", "web")["total"] == 2


def test_dep_add_and_rm_keep_the_other_dependencies(cli: Cli) -> None:
    for title in ("a", "b", "c", "d"):
        cli("task", "add", "web", title)
    cli("dep", "add", "web", "WEB-4", "WEB-1")
    assert cli.json("dep", "add", "web", "WEB-4", "WEB-2", "WEB-3")["depends_on"] == ["WEB-1", "WEB-2", "WEB-3"]
    assert cli.json("dep", "rm", "web", "WEB-4", "WEB-2")["depends_on"] == ["WEB-1", "WEB-3"]
    assert "does not depend on WEB-2" in cli.error("dep", "rm", "web", "WEB-4", "WEB-2")
    assert "cycle" in cli.error("dep", "add", "web", "WEB-1", "WEB-4")


def test_dep_with_queue_project(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    cli("task", "add", "web", "a")
    cli("task", "add", "web", "b")
    monkeypatch.setenv("QUEUE_PROJECT", "web")
    assert cli.json("dep", "add", "WEB-2", "WEB-1")["depends_on"] == ["WEB-1"]


def test_refused_token_is_one_line_with_the_reason(cli: Cli) -> None:
    cli("task", "add", "web", "a")
    got = cli.json("claim", "web", "--agent", "me")
    key, token = got["task"]["key"], got["lease"]["token"]
    cli("release", "web", key, "-t", token)
    cli.json("claim", "web", "--agent", "other")
    message = cli.error("complete", "web", key, "-t", token)
    assert "reclaimed by other" in message


def test_version_and_completion(cli: Cli) -> None:
    assert re.match(r"queue-service \d+\.\d+", cli("--version").stdout)
    assert "--install-completion" in cli("--help").stdout


def _json_lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
