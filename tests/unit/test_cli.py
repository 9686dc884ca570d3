"""The CLI through its real entry point, in process (typer's CliRunner on the root group; the cases that
spawn processes or open sockets are in tests/integration/test_cli_processes.py).

Multi-step scenarios share one InMemoryBackend across invocations by injecting the connection
(``CliState.connect``); everything else (parsing, output, error mapping, exit codes) is the real path.
Claims use ``--wait 0`` here: the in-memory backend's wake-up condition belongs to one event loop, and
each CLI invocation runs its own.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from queue_service import snapshot
from queue_service.backend import DispatchConfig
from queue_service.cli import app
from queue_service.cli._core import CliState, Connection
from queue_service.service import QueueService
from queue_service.testing import InMemoryBackend
from queue_service.workspaces import WorkspacePolicy

EXPECTED_COMMANDS = {
    "agents",
    "agent",
    "project",
    "mission",
    "task",
    "claim",
    "heartbeat",
    "complete",
    "fail",
    "release",
    "run",
    "stats",
    "events",
    "export",
    "import",
    "serve",
    "migrate",
    "token",
    "sync",  # registered by the workspace-sync engineer (queue_service/cli/sync.py)
    # issue 11: the agent loop (queue_service/cli/agent_loop.py)
    "next",
    "ready",
    "prime",
    "dead-letter",
    "dep",
    "watch",  # issue 14: follow a task output stream
    "mcp",  # the MCP tools over stdio (issue 11, queue_service/cli/mcp.py)
    "queue",  # issue 18: the Mosaic queue CLI's verbs (queue_service/cli/mosaic_queue.py)
    "backlog",  # issue 18: the Mosaic backlog CLI's verbs
}


class Cli:
    """Invoke the CLI against one shared in-memory backend."""

    def __init__(self, backend: InMemoryBackend) -> None:
        self.backend = backend
        self.runner = CliRunner()

    def _connect(self, state: CliState) -> contextlib.AbstractAsyncContextManager[Connection]:
        backend = self.backend

        @contextlib.asynccontextmanager
        async def conn() -> AsyncIterator[Connection]:
            yield Connection(
                ops=QueueService(backend, workspaces=WorkspacePolicy(operator=True)),
                mode="local",
                source="memory",
                sweep=backend.dispatch.sweep,
            )

        return conn()

    def __call__(self, *args: str, input: str | None = None, code: int = 0) -> Any:
        result = self.runner.invoke(app, list(args), obj=CliState(connect=self._connect), input=input)
        assert result.exit_code == code, (args, result.exit_code, result.stdout, result.stderr, result.exception)
        assert "Traceback" not in result.stderr
        return result

    def json(self, *args: str, input: str | None = None) -> Any:
        return json.loads(self(*args, "--json", input=input).stdout)

    def error(self, *args: str, code: int = 1, input: str | None = None) -> str:
        result = self(*args, code=code, input=input)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("error: ")
        return str(lines[0]).removeprefix("error: ")


#: A backoff far longer than any run of CLI invocations, so "WEB-1 is backing off" holds on a busy
#: machine too (each in-process invocation can take half a second under load).
SLOW_BACKOFF = DispatchConfig(backoff_base_seconds=600.0, backoff_max_seconds=600.0, backoff_jitter=0.0)


@pytest.fixture
def backend() -> InMemoryBackend:
    return InMemoryBackend(config=SLOW_BACKOFF)


@pytest.fixture
def cli(backend: InMemoryBackend) -> Cli:
    c = Cli(backend)
    c("project", "create", "web", "--prefix", "WEB")
    return c


def plain(monkeypatch: pytest.MonkeyPatch, **env: str) -> Callable[..., Any]:
    """Invoke without injection: the configured backend is opened as a user would."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Any:
        return runner.invoke(app, list(args), input=input)

    return invoke


# ---------------------------------------------------------------------------------------------
# help


def _commands(help_text: str) -> set[str]:
    """Command names in a rich help screen: rows like ``│ claim      Claim the next…``."""
    return set(re.findall(r"^│ ([a-z][a-z-]*)\s{2,}\S", help_text, flags=re.MULTILINE))


def test_help_lists_exactly_the_working_commands() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert _commands(result.stdout) == EXPECTED_COMMANDS
    for group, subs in {
        "task": {"add", "list", "show", "edit", "cancel", "retry", "note"},
        "project": {"create", "list", "show"},
        "mission": {"create", "list"},
        "token": {"create", "list", "revoke", "purge"},
        "dep": {"add", "rm"},
        "agent": {"register", "heartbeat", "drain", "route", "limit"},
    }.items():
        sub = CliRunner().invoke(app, [group, "--help"])
        assert sub.exit_code == 0
        assert _commands(sub.stdout) == subs


@pytest.mark.parametrize("command", sorted(EXPECTED_COMMANDS))
def test_every_command_has_help(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.stderr
    assert "Usage:" in result.stdout


def test_no_arguments_shows_help() -> None:
    result = CliRunner().invoke(app, [])
    assert "Usage:" in result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# projects, missions, tasks


def test_project_commands(cli: Cli) -> None:
    created = cli.json("project", "create", "api", "--name", "The API", "--workspace", "/tmp/api-ws")
    assert created["slug"] == "api"
    assert created["key_prefix"] == "API"
    assert created["workspace"] == "/tmp/api-ws"
    assert [p["slug"] for p in cli.json("project", "list")] == ["api", "web"]
    assert cli.json("project", "show", "api")["name"] == "The API"
    table = cli("project", "list").stdout
    assert "api" in table
    assert "The API" in table
    assert "already" in cli.error("project", "create", "web")
    assert "invalid slug 'Bad Slug'" in cli.error("project", "create", "Bad Slug")
    assert "not found" in cli.error("project", "show", "nope")


def test_mission_commands(cli: Cli) -> None:
    m = cli.json("mission", "create", "launch", "-p", "web", "--name", "Launch", "-m", "m1:Design", "-m", "m2:Build")
    assert [s["id"] for s in m["milestones"]] == ["m1", "m2"]
    plain_names = cli.json("mission", "create", "later", "-p", "web", "-m", "First,Second")
    assert [(s["id"], s["name"]) for s in plain_names["milestones"]] == [("M1", "First"), ("M2", "Second")]
    assert [x["id"] for x in cli.json("mission", "list", "-p", "web")] == ["default", "launch", "later"]
    assert "launch" in cli("mission", "list", "-p", "web").stdout


def test_task_add_list_show(cli: Cli) -> None:
    one = cli.json("task", "add", "Design the schema", "-p", "web", "-P", "P1", "-l", "db,ui", "--role", "dev")
    assert one["key"] == "WEB-1"
    assert one["priority"] == "P1"
    assert one["labels"] == ["db", "ui"]
    two = cli.json("task", "add", "Build it", "-p", "web", "-d", "WEB-1", "-D", "long text")
    assert two["depends_on"] == ["WEB-1"]
    assert cli("task", "add", "Third", "-p", "web").stdout.startswith("Added WEB-3 Third")

    page = cli.json("task", "list", "-p", "web")
    assert [t["key"] for t in page["items"]] == ["WEB-1", "WEB-2", "WEB-3"]
    assert page["next_cursor"] is None
    assert [t["key"] for t in cli.json("task", "list", "-p", "web", "--role", "dev")["items"]] == ["WEB-1"]
    assert [t["key"] for t in cli.json("task", "list", "-p", "web", "--ready")["items"]] == ["WEB-1", "WEB-3"]
    first = cli.json("task", "list", "-p", "web", "--limit", "2")
    assert len(first["items"]) == 2
    assert first["next_cursor"]
    rest = cli.json("task", "list", "-p", "web", "--limit", "2", "--cursor", first["next_cursor"])
    assert [t["key"] for t in rest["items"]] == ["WEB-3"]
    everything = cli.json("task", "list", "-p", "web", "--limit", "1", "--all")
    assert [t["key"] for t in everything["items"]] == ["WEB-1", "WEB-2", "WEB-3"]
    human = cli("task", "list", "-p", "web").stdout
    assert "Design the schema" in human
    assert "not-started" in human

    shown = cli.json("task", "show", "WEB-2", "-p", "web")
    assert shown["task"]["description"] == "long text"
    assert shown["blockers"] == ["WEB-1"]
    assert cli.json("task", "show", "WEB-1", "-p", "web")["dependents"] == ["WEB-2"]
    text = cli("task", "show", "WEB-2", "-p", "web").stdout
    assert "long text" in text
    assert "WEB-1" in text

    assert "WEB-9" in cli.error("task", "show", "WEB-9", "-p", "web")
    assert "WEB-99, which does not exist" in cli.error("task", "add", "Bad dep", "-p", "web", "-d", "WEB-99")
    assert "needs a TITLE" in cli.error("task", "add", "-p", "web")


def test_project_from_environment(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUEUE_PROJECT", "web")
    assert cli.json("task", "add", "from env")["project"] == "web"


# The project of per-project commands: first positional, -p/--project, or QUEUE_PROJECT (ProjectCommand).


def test_project_as_first_argument(cli: Cli) -> None:
    # every example of the README's first session, as typed
    assert cli.json("task", "add", "web", "Design the schema", "--priority", "P1")["key"] == "WEB-1"
    assert cli.json("task", "add", "web", "Write the login page", "--depends-on", "WEB-1")["depends_on"] == ["WEB-1"]
    assert [t["key"] for t in cli.json("task", "list", "web")["items"]] == ["WEB-1", "WEB-2"]
    assert cli.json("task", "show", "web", "WEB-2")["blockers"] == ["WEB-1"]
    got = cli.json("claim", "web", "--agent", "me")
    assert (got["task"]["key"], got["lease"]["holder"]) == ("WEB-1", "me")
    token = got["lease"]["token"]
    assert cli.json("heartbeat", "web", "WEB-1", "--token", token)["token"] == token
    cli("task", "note", "web", "WEB-1", "halfway", "--author", "me")
    assert cli.json("complete", "web", "WEB-1", "--token", token)["status"] == "done"
    assert cli.json("stats", "web")["by_status"]["done"] == 1
    assert "claimed" in cli("events", "web").stdout
    assert cli.json("task", "edit", "web", "WEB-2", "--title", "Login")["title"] == "Login"
    assert cli.json("task", "cancel", "web", "WEB-2")["status"] == "cancelled"
    assert cli.json("task", "retry", "web", "WEB-2")["status"] == "not-started"
    again = cli.json("claim", "web")
    assert cli.json("fail", "web", "WEB-2", "-t", again["lease"]["token"], "-e", "boom")["attempts"] == 1
    cli("task", "add", "web", "Third")
    third = cli.json("claim", "web")
    assert cli.json("release", "web", third["task"]["key"], "-t", third["lease"]["token"])["attempts"] == 0
    assert cli.json("mission", "create", "web", "m1", "-m", "a:A")["id"] == "m1"
    assert [m["id"] for m in cli.json("mission", "list", "web")] == ["default", "m1"]
    assert [n["text"] for n in cli.json("task", "show", "web", "WEB-1")["notes"]] == ["halfway"]


@pytest.mark.parametrize(
    ("form", "env"),
    [
        (("web",), None),  # qs task show web WEB-1
        (("-p", "web"), None),  # qs task show -p web WEB-1
        (("--project=web",), None),
        ((), "web"),  # QUEUE_PROJECT=web qs task show WEB-1
        (("web",), "other"),  # an explicit argument beats the environment
        (("-p", "web"), "other"),  # so does the option
    ],
)
def test_three_ways_to_name_the_project(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, form: tuple[str, ...], env: str | None
) -> None:
    if env is not None:
        monkeypatch.setenv("QUEUE_PROJECT", env)
    added = cli.json("task", "add", *form, "A title with spaces", "-P", "P1")
    assert (added["project"], added["key"], added["title"]) == ("web", "WEB-1", "A title with spaces")
    assert [t["key"] for t in cli.json("task", "list", *form)["items"]] == ["WEB-1"]
    assert cli.json("task", "show", *form, "WEB-1")["task"]["title"] == "A title with spaces"
    got = cli.json("claim", *form, "--agent", "me")
    assert got["task"]["key"] == "WEB-1"
    note = cli.json("task", "note", *form, "WEB-1", "from the holder", "--token", got["lease"]["token"])
    assert note["text"] == "from the holder"
    assert cli.json("complete", *form, "WEB-1", "--token", got["lease"]["token"])["status"] == "done"
    assert cli.json("stats", *form)["by_status"]["done"] == 1
    assert cli.json("mission", "create", *form, "launch")["id"] == "launch"


def test_positionals_keep_their_meaning_with_the_option(cli: Cli) -> None:
    # With -p anywhere on the line, the positionals are the command's own: the option may come last.
    assert cli.json("task", "add", "web", "-p", "web")["title"] == "web"  # TITLE "web" in project web
    assert cli.json("task", "show", "WEB-1", "-p", "web")["task"]["title"] == "web"
    assert cli.json("task", "note", "WEB-1", "-", "-p", "web", input="stdin text")["text"] == "stdin text"
    assert cli.json("task", "note", "web", "WEB-1", "-", input="more")["text"] == "more"
    # a batch: PROJECT only, then --from
    added = cli.json("task", "add", "web", "--from", "-", input='[{"title": "a"}, {"title": "b"}]')
    assert [t["key"] for t in added] == ["WEB-2", "WEB-3"]


def test_project_errors_are_one_line_usage_errors(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = cli.error("claim", code=2)
    assert missing.startswith("Missing argument 'PROJECT': give it first, or use --project/-p, or set QUEUE_PROJECT")
    assert missing.endswith("(see 'queue-service claim --help')")
    # the project left out: the title takes its place and is not a slug
    forgot = cli.error("task", "add", "Design the schema", code=2)
    assert "Invalid value for 'PROJECT': 'Design the schema' is not a project slug" in forgot
    assert "the project comes first: queue-service task add PROJECT [TITLE]" in forgot
    assert "'WEB-1' is not a project slug" in cli.error("task", "show", "WEB-1", code=2)
    assert "Missing argument 'KEY'" in cli.error("task", "show", "web", code=2)
    assert "Invalid value for '--project': 'Web App' is not a project slug" in cli.error(
        "stats", "-p", "Web App", code=2
    )
    assert "already given with --project" in cli.error("task", "show", "-p", "web", "web", "WEB-1", code=2)
    assert "unexpected extra argument" in cli.error("stats", "web", "extra", code=2)
    monkeypatch.setenv("QUEUE_PROJECT", "Bad")
    assert "Invalid value for QUEUE_PROJECT: 'Bad'" in cli.error("stats", code=2)
    assert "not found" in cli.error("stats", "nope")  # a valid slug that does not exist: a domain error
    monkeypatch.setenv("QUEUE_PROJECT", "")
    assert "Missing argument 'PROJECT'" in cli.error("stats", code=2)  # empty = unset


PER_PROJECT = {
    ("task", "add"): "PROJECT [TITLE]",
    ("task", "list"): "PROJECT",
    ("task", "show"): "PROJECT KEY",
    ("task", "edit"): "PROJECT KEY",
    ("task", "cancel"): "PROJECT KEY",
    ("task", "retry"): "PROJECT KEY",
    ("task", "note"): "PROJECT KEY TEXT",
    ("mission", "create"): "PROJECT ID",
    ("mission", "list"): "PROJECT",
    ("claim",): "PROJECT",
    ("heartbeat",): "PROJECT KEY",
    ("complete",): "PROJECT KEY",
    ("fail",): "PROJECT KEY",
    ("release",): "PROJECT KEY",
    ("stats",): "PROJECT",
    ("events",): "PROJECT",
    ("run",): "PROJECT",  # run takes PROJECT (or -p/QUEUE_PROJECT) before '--'
    ("export",): "PROJECT",
    ("sync",): "PROJECT",
    ("next",): "PROJECT",
    ("ready",): "PROJECT",
    ("prime",): "PROJECT",
    ("dead-letter",): "PROJECT",
    ("dep", "add"): "PROJECT KEY DEP...",
    ("dep", "rm"): "PROJECT KEY DEP...",
    # issue 13: the agent registry and routing settings (queue_service/cli/agents.py)
    ("agents",): "PROJECT",
    ("agent", "register"): "PROJECT ID",
    ("agent", "heartbeat"): "PROJECT ID",
    ("agent", "drain"): "PROJECT ID",
    ("agent", "route"): "PROJECT ROLE STRATEGY",
    ("agent", "limit"): "PROJECT KEY N",
    # issue 18: the Mosaic queue / backlog verbs (queue_service/cli/mosaic_queue.py)
    ("queue", "create"): "PROJECT",
    ("queue", "list"): "PROJECT",
    ("queue", "get"): "PROJECT KEY",
    ("queue", "claim"): "PROJECT",
    ("queue", "release"): "PROJECT KEY",
    ("queue", "complete"): "PROJECT KEY",
    ("backlog", "create"): "PROJECT",
    ("backlog", "list"): "PROJECT",
    ("backlog", "claim"): "PROJECT",
    ("backlog", "reclaim"): "PROJECT KEY",
    ("backlog", "link"): "PROJECT KEY DEP...",
    ("backlog", "stats"): "PROJECT",
    ("backlog", "block"): "PROJECT KEY",
    ("backlog", "complete"): "PROJECT KEY",
}


@pytest.mark.parametrize(
    ("command", "usage"), PER_PROJECT.items(), ids=lambda v: " ".join(v) if isinstance(v, tuple) else v
)
def test_usage_lines_start_with_project(command: tuple[str, ...], usage: str) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], prog_name="qs")
    assert result.exit_code == 0, result.stderr
    line = next(x.strip() for x in result.stdout.splitlines() if "Usage:" in x)
    assert line.startswith(f"Usage: qs {' '.join(command)} [OPTIONS] {usage}"), line


def test_every_command_with_a_project_option_is_a_project_command() -> None:
    import typer

    from queue_service.cli._core import ProjectCommand

    root = typer.main.get_command(app)
    found: set[tuple[str, ...]] = set()

    def walk(command: Any, path: tuple[str, ...]) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                walk(sub, (*path, name))
            return
        # token create: --project scopes the token; run: PROJECT or -p before '--' (its own parser)
        if any("--project" in getattr(p, "opts", ()) for p in command.params) and path not in {
            ("token", "create"),
            ("run",),
        }:
            assert isinstance(command, ProjectCommand), path
            found.add(path)

    walk(root, ())
    assert found == {k for k in PER_PROJECT if k != ("run",)}


def test_task_add_batch(cli: Cli, tmp_path: Path) -> None:
    batch = [{"title": "a"}, {"title": "b", "depends_on": ["#0"]}]
    added = cli.json("task", "add", "-p", "web", "--from", "-", input=json.dumps(batch))
    assert [t["key"] for t in added] == ["WEB-1", "WEB-2"]
    assert added[1]["depends_on"] == ["WEB-1"]
    lines = tmp_path / "tasks.jsonl"
    lines.write_text('{"title": "c"}\n\n{"title": "d", "role": "qa"}\n')
    assert [t["title"] for t in cli.json("task", "add", "-p", "web", "--from", str(lines))] == ["c", "d"]
    assert "not valid JSON" in cli.error("task", "add", "-p", "web", "--from", "-", input="[{")
    assert "cannot read" in cli.error("task", "add", "-p", "web", "--from", str(tmp_path / "missing.json"))
    # all or nothing: the second item is invalid, nothing is added
    assert "task #1" in cli.error("task", "add", "-p", "web", "--from", "-", input='[{"title":"ok"},{"title":""}]')
    assert len(cli.json("task", "list", "-p", "web")["items"]) == 4


def test_task_edit_cancel_retry_note(cli: Cli) -> None:
    cli("task", "add", "One", "-p", "web")
    cli("task", "add", "Two", "-p", "web", "-d", "WEB-1", "--assignee", "bob")
    edited = cli.json("task", "edit", "WEB-2", "-p", "web", "--title", "Two!", "--assignee", "-", "--if-version", "1")
    assert edited["title"] == "Two!"
    assert edited["assignee"] is None
    assert edited["version"] == 2
    assert "version" in cli.error("task", "edit", "WEB-2", "-p", "web", "--title", "x", "--if-version", "1")
    assert cli.json("task", "edit", "WEB-2", "-p", "web", "--depends-on", "-")["depends_on"] == []
    assert cli.json("task", "edit", "WEB-2", "-p", "web", "-s", "wip")["status"] == "in-progress"
    assert "unknown status 'nah'" in cli.error("task", "edit", "WEB-2", "-p", "web", "-s", "nah")
    assert "nothing to change" in cli.error("task", "edit", "WEB-2", "-p", "web")

    assert cli.json("task", "cancel", "WEB-1", "-p", "web", "--reason", "dup")["status"] == "cancelled"
    assert cli.json("task", "retry", "WEB-1", "-p", "web")["status"] == "not-started"
    note = cli.json("task", "note", "WEB-1", "first note", "-p", "web", "--author", "alice")
    assert (note["author"], note["text"]) == ("alice", "first note")
    cli("task", "note", "WEB-1", "-", "-p", "web", "--author", "bob", input="from stdin\n")
    assert [n["text"] for n in cli.json("task", "show", "WEB-1", "-p", "web")["notes"]] == [
        "first note",
        "from stdin\n",
    ]


# ---------------------------------------------------------------------------------------------
# dispatch


def test_claim_heartbeat_complete(cli: Cli) -> None:
    cli("task", "add", "One", "-p", "web", "-P", "P0")
    cli("task", "add", "Two", "-p", "web", "-d", "WEB-1")
    got = cli.json("claim", "-p", "web", "--agent", "agent-7", "--lease", "60")
    assert got["task"]["key"] == "WEB-1"
    assert got["lease"]["holder"] == "agent-7"
    token = got["lease"]["token"]
    assert cli.json("claim", "-p", "web") is None  # WEB-2 waits for WEB-1
    assert "No task is ready" in cli("claim", "-p", "web").stdout
    lease = cli.json("heartbeat", "WEB-1", "-p", "web", "-t", token, "--lease", "120")
    assert lease["token"] == token
    assert "not valid" in cli.error("complete", "WEB-1", "-p", "web", "-t", "wrong-token")
    done = cli.json("complete", "WEB-1", "-p", "web", "-t", token, "--result", '{"pr": 12}')
    assert done["status"] == "done"
    assert done["result"] == {"pr": 12}
    assert "not valid" in cli.error("complete", "WEB-1", "-p", "web", "-t", token)  # a second completion

    nxt = cli.json("claim", "-p", "web")
    assert nxt["task"]["key"] == "WEB-2"
    text_result = cli.json("complete", "WEB-2", "-p", "web", "-t", nxt["lease"]["token"], "--result", "plain words")
    assert text_result["result"] == "plain words"


def test_claim_human_output_and_token_from_env(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    cli("task", "add", "One", "-p", "web")
    out = cli("claim", "-p", "web").stdout
    assert "Claimed WEB-1" in out
    token = next(line.split("token: ")[1] for line in out.splitlines() if "token: " in line).strip()
    monkeypatch.setenv("QUEUE_LEASE_TOKEN", token)
    assert "Released WEB-1" in cli("release", "WEB-1", "-p", "web").stdout


def test_claim_by_role(cli: Cli) -> None:
    cli("task", "add", "Dev work", "-p", "web", "-r", "dev")
    cli("task", "add", "QA work", "-p", "web", "-r", "qa")
    assert cli.json("claim", "-p", "web", "-r", "qa")["task"]["title"] == "QA work"
    assert cli.json("claim", "-p", "web", "-r", "ops,qa") is None


def test_fail_retry_and_dead_letter(cli: Cli) -> None:
    cli("task", "add", "Flaky", "-p", "web", "--max-attempts", "2")
    got = cli.json("claim", "-p", "web")
    failed = cli.json("fail", "WEB-1", "-p", "web", "-t", got["lease"]["token"], "-e", "boom")
    assert failed["status"] == "not-started"
    assert failed["attempts"] == 1
    assert failed["last_error"] == "boom"
    cli("task", "add", "Broken", "-p", "web")
    got2 = cli.json("claim", "-p", "web")
    assert got2["task"]["key"] == "WEB-2"  # WEB-1 is backing off
    out = cli("fail", "WEB-2", "-p", "web", "-t", got2["lease"]["token"], "-e", "bad input", "--permanent").stdout
    assert "dead-lettered" in out
    stats = cli.json("stats", "-p", "web")
    assert stats["dead_letter"] == 1
    assert stats["by_status"]["failed"] == 1
    assert "dead-letter: 1" in cli("stats", "-p", "web").stdout


def test_release(cli: Cli) -> None:
    cli("task", "add", "One", "-p", "web")
    got = cli.json("claim", "-p", "web")
    released = cli.json("release", "WEB-1", "-p", "web", "-t", got["lease"]["token"])
    assert released["status"] == "not-started"
    assert released["attempts"] == 0


def test_events(cli: Cli) -> None:
    cli("task", "add", "One", "-p", "web")
    got = cli.json("claim", "-p", "web")
    cli("complete", "WEB-1", "-p", "web", "-t", got["lease"]["token"])
    lines = [json.loads(x) for x in cli("events", "-p", "web", "--json").stdout.splitlines()]
    kinds = [e["kind"] for e in lines if e["task"] == "WEB-1"]
    assert kinds == ["created", "claimed", "completed"]
    ids = [e["id"] for e in lines]
    assert ids == sorted(ids)
    after = [json.loads(x)["id"] for x in cli("events", "-p", "web", "--json", "--after", str(ids[1])).stdout.split()]
    assert after == ids[2:]
    assert len(cli("events", "-p", "web", "--json", "--limit", "2").stdout.splitlines()) == 2
    # --follow starts at now; --since all (or an id) replays history first; it stops after --limit events
    out = cli("events", "-p", "web", "--json", "--follow", "--since", "all", "--limit", "3", "--poll", "0.01").stdout
    assert len(out.splitlines()) == 3
    since = cli("events", "-p", "web", "--json", "--follow", "--since", str(ids[1]), "--limit", "1", "--poll", "0.01")
    assert [json.loads(x)["id"] for x in since.stdout.split()] == [ids[2]]
    assert "--since takes an event id or 'all'" in cli.error("events", "-p", "web", "--since", "yesterday")
    assert "claimed" in cli("events", "-p", "web").stdout


def test_global_json_flag(cli: Cli) -> None:
    result = cli("--json", "project", "list")
    assert json.loads(result.stdout)[0]["slug"] == "web"


# ---------------------------------------------------------------------------------------------
# export / import


def test_export_import(cli: Cli, tmp_path: Path) -> None:
    cli("mission", "create", "launch", "-p", "web", "-m", "m1:One")
    cli("task", "add", "One", "-p", "web", "-M", "launch", "--milestone", "m1")
    cli("task", "add", "Two", "-p", "web", "-d", "WEB-1")
    got = cli.json("claim", "-p", "web")
    cli("task", "note", "WEB-1", "hello", "-p", "web", "--author", "me")
    cli("complete", "WEB-1", "-p", "web", "-t", got["lease"]["token"])
    dump = cli("export", "web").stdout
    assert dump.startswith('{"format":"queue-service-export","version":1,')
    out_file = tmp_path / "web.jsonl"
    cli("export", "web", "-o", str(out_file))
    assert snapshot.comparable(out_file.read_text()) == snapshot.comparable(dump)

    other = Cli(InMemoryBackend())
    summary = other.json("import", str(out_file))
    assert summary["project"]["slug"] == "web"
    assert summary["tasks"] == 2
    assert snapshot.comparable(other("export", "web").stdout) == snapshot.comparable(dump)
    assert other.json("task", "show", "WEB-1", "-p", "web")["notes"][0]["text"] == "hello"
    assert "already" in other.error("import", str(out_file))

    third = Cli(InMemoryBackend())
    assert "Imported project web: 2 tasks" in third("import", "-", input=dump).stdout


def test_import_errors_name_file_and_line(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format":"queue-service-export","version":1,"project":"x","counts":{}}\n{oops\n')
    assert cli.error("import", str(bad)).startswith(f"{bad}: line 2: not valid JSON")
    assert cli.error("import", "-", input="").startswith("stdin: line 1: empty input")
    assert "cannot read" in cli.error("import", str(tmp_path / "missing.jsonl"))
    assert "not found" in cli.error("export", "nope")


# ---------------------------------------------------------------------------------------------
# configuration, errors, operator commands


def test_usage_errors_exit_2_with_one_line(cli: Cli) -> None:
    message = cli.error("task", "list", code=2)
    assert "Missing argument 'PROJECT'" in message
    assert message.endswith("(see 'queue-service task list --help')")
    assert "No such command" in cli.error("frobnicate", code=2)
    assert "requires an argument" in cli.error("task", "add", "x", "-p", "web", "--priority", code=2)
    assert "Invalid value for '--limit'" in cli.error("task", "list", "-p", "web", "--limit", "many", code=2)
    assert "after '--'" in cli.error("run", "web", code=2)


def test_domain_errors_exit_1(cli: Cli) -> None:
    assert "limit must be between" in cli.error("task", "list", "-p", "web", "--limit", "0")
    assert "not found" in cli.error("task", "list", "-p", "nope")


def test_bad_configuration_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    invoke = plain(monkeypatch, QUEUE_PORT="not-a-port")
    result = invoke("project", "list")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: QUEUE_PORT:")
    monkeypatch.setenv("QUEUE_PORT", "8000")
    monkeypatch.setenv("QUEUE_BACKEND_URL", "bogus://x")
    result = invoke("project", "list")
    assert result.exit_code == 2
    assert "unsupported backend URL" in result.stderr


def test_memory_backend_within_one_invocation(monkeypatch: pytest.MonkeyPatch) -> None:
    invoke = plain(monkeypatch, QUEUE_BACKEND_URL="memory://")
    result = invoke("project", "create", "solo", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["slug"] == "solo"


def test_migrate_without_postgres(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    invoke = plain(monkeypatch, QUEUE_DATA_DIR=str(tmp_path / "data"))
    result = invoke("migrate")
    assert result.exit_code == 0
    assert "Nothing to migrate: the flatfile backend" in result.stdout
    monkeypatch.setenv("QUEUE_BACKEND_URL", "memory://")
    assert "the memory backend" in invoke("migrate").stdout
    # Regression: --json printed the prose line.
    assert json.loads(invoke("migrate", "--json").stdout) == {"backend": "memory", "revision": None}
    assert json.loads(invoke("--json", "migrate").stdout) == {"backend": "memory", "revision": None}


def test_token_create(monkeypatch: pytest.MonkeyPatch) -> None:
    invoke = plain(monkeypatch, QUEUE_BACKEND_URL="memory://")
    result = invoke("token", "create", "--role", "admin", "--all-projects", "--name", "ops", "--json")
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["token"].startswith("qs_")
    assert shown["role"] == "admin"
    assert shown["project"] is None
    assert "token_hash" not in shown
    human = invoke("token", "create", "--role", "admin", "--all-projects")
    assert "not shown again" in human.stdout
    assert "qs_" in human.stdout
    bad = invoke("token", "create", "--role", "agent")
    assert bad.exit_code == 1
    assert "--project" in bad.stderr
    missing = invoke("token", "create", "--role", "viewer", "--project", "nope")
    assert missing.exit_code == 1
    assert "not found" in missing.stderr
    assert invoke("token", "create", "--role", "boss", "--all-projects").exit_code == 2


# ---------------------------------------------------------------------------------------------
# run (in-process; the cross-process cases are in tests/integration/test_runner.py)


def test_run_rejects_bad_options(cli: Cli, tmp_path: Path) -> None:
    assert "--concurrency" in cli.error("run", "web", "-c", "0", "--", "true")
    assert "not found on PATH" in cli.error("run", "web", "--workspace", str(tmp_path), "--", "no-such-cmd-xyz")
    assert "not found" in cli.error("run", "nope", "--", "true")


def test_serve_refuses_reachable_address_without_tokens_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Regression: the refusal came out of the app's lifespan, under uvicorn's multi-page traceback.
    invoke = plain(monkeypatch, QUEUE_DATA_DIR=str(tmp_path / "data"), QUEUE_HOST="0.0.0.0")
    result = invoke("serve", "--port", "1")
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: refusing to start: bound to 0.0.0.0")


def test_listings_have_a_default_limit_and_say_when_they_cut(cli: Cli) -> None:
    """Issue 11: project list, mission list and events print 20 by default and say how to see more."""
    for i in range(20):
        cli("project", "create", f"p{i:02d}")
        cli("mission", "create", "web", f"m{i:02d}")
    out = cli("project", "list").stdout
    assert "20 of 21 shown; --limit N or --all" in out
    assert "p19" in out and "web" not in out  # by slug: p00..p19, then web
    assert "shown" not in cli("project", "list", "--all").stdout
    listed = cli("project", "list", "--json")
    assert len(json.loads(listed.stdout)) == 20 and "20 of 21 shown" in listed.stderr
    assert len(cli.json("project", "list", "--limit", "3")) == 3
    assert "20 of 21 shown; --limit N or --all" in cli("mission", "list", "-p", "web").stdout
    assert len(cli.json("mission", "list", "-p", "web", "--all")) == 21
    assert "less than or equal to 1000" in cli("project", "list", "--limit", "1001", code=2).stderr
    cli("task", "add", "-p", "web", "--from", "-", input=json.dumps([{"title": f"T{i}"} for i in range(30)]))
    events = cli("events", "-p", "web")
    assert "20 shown; --since " in events.stdout and "or --all" in events.stdout
    as_json = cli("events", "-p", "web", "--json")
    assert len(as_json.stdout.splitlines()) == 20 and "20 shown; --since" in as_json.stderr
    last = json.loads(as_json.stdout.splitlines()[-1])["id"]
    rest = cli("events", "-p", "web", "--json", "--since", str(last)).stdout.splitlines()
    assert len(rest) == 20 and json.loads(rest[0])["id"] > last
    every = cli("events", "-p", "web", "--json", "--all")
    assert len(every.stdout.splitlines()) >= 20 + 30 and "shown" not in every.stderr
