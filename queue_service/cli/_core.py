"""What every CLI command shares: the operations protocol, the connection, output, and errors.

Commands are written once against :class:`QueueOps`, a structural protocol that both
:class:`~queue_service.service.QueueService` (local mode: the configured backend opened in this
process) and the typed :class:`~queue_service.client.AsyncClient` (remote mode: ``QUEUE_URL`` is set)
satisfy as they are: the client spells each operation as the service does (positional arguments in
the same order, ``retry_task``, ``ready_tasks``, ``claim_next``, ``list_events``, ``read_stream``), and
``add_note`` is called with keywords. ``export``/``import`` need the storage itself
(:class:`SnapshotOps`, local only). :func:`open_ops` picks one; :func:`call` runs a command body
against it on a fresh event loop.

Per-project commands are registered with ``cls=ProjectCommand``: their project is the first
positional argument (``qs task show web WEB-1``), or ``-p/--project``, or ``QUEUE_PROJECT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Protocol, TypeVar, runtime_checkable

import pydantic
import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperArgument, TyperCommand, TyperOption

from queue_service import exceptions
from queue_service.agents import Agent, AgentRegister
from queue_service.models import (
    Claim,
    Event,
    Mission,
    MissionCreate,
    Note,
    Project,
    ProjectCreate,
    ProjectSnapshot,
    ProjectUpdate,
    QueueStats,
    ReadyList,
    Task,
    TaskCreate,
    TaskFilter,
    TaskPage,
    TaskStatus,
    TaskUpdate,
    validate_slug,
)
from queue_service.runner import RunnerOps
from queue_service.settings import Settings
from queue_service.streams import StreamPage

if TYPE_CHECKING:
    # typer vendors click privately; these names are only needed to spell the overridden signatures.
    from typer._click.core import Context as ClickContext
    from typer._click.parser import _OptionParser

__all__ = [
    "EXIT_DOMAIN",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "CliState",
    "JsonOpt",
    "ProjectCommand",
    "ProjectOpt",
    "UsageCommand",
    "QueueOps",
    "SnapshotOps",
    "call",
    "emit",
    "exit_code_for",
    "fail_usage",
    "open_ops",
    "state_of",
    "stdout",
]

#: success
EXIT_OK = 0
#: a domain error: validation, not found, conflict, lease, queue full, auth
EXIT_DOMAIN = 1
#: bad command line or bad configuration
EXIT_USAGE = 2
#: the backend or the server cannot be reached / failed
EXIT_UNAVAILABLE = 3
#: stopped with Ctrl-C
EXIT_INTERRUPTED = 130

T = TypeVar("T")

stdout = Console(highlight=False, soft_wrap=True)


class QueueOps(RunnerOps, Protocol):
    """The operations the CLI uses (the runner's plus these): QueueService and AsyncClient both have them."""

    async def create_project(self, data: ProjectCreate | Mapping[str, Any], /) -> Project: ...
    async def list_projects(self) -> list[Project]: ...
    async def get_project(self, slug: str, /) -> Project: ...
    async def update_project(self, slug: str, data: ProjectUpdate | Mapping[str, Any], /) -> Project: ...
    async def register_agent(self, project: str, data: AgentRegister | Mapping[str, Any], /) -> Agent: ...
    async def agent_heartbeat(self, project: str, agent_id: str, /) -> Agent: ...
    async def drain_agent(self, project: str, agent_id: str, /) -> Agent: ...
    async def list_agents(self, project: str, /) -> list[Agent]: ...
    async def create_mission(self, project: str, data: MissionCreate | Mapping[str, Any], /) -> Mission: ...
    async def list_missions(self, project: str, /) -> list[Mission]: ...
    async def create_tasks(self, project: str, items: Sequence[TaskCreate | Mapping[str, Any]], /) -> list[Task]: ...
    async def create_discovered_task(
        self, project: str, data: TaskCreate | Mapping[str, Any], discovered_from: str, token: str, /
    ) -> Task: ...
    async def get_task(self, project: str, key: str, /) -> Task: ...
    async def list_tasks(
        self,
        project: str,
        filters: TaskFilter | Mapping[str, Any] | None = None,
        limit: int = 100,
        cursor: str | None = None,
        /,
    ) -> TaskPage: ...
    async def update_task(
        self,
        project: str,
        key: str,
        patch: TaskUpdate | Mapping[str, Any],
        expected_version: int | None = None,
        /,
    ) -> Task: ...
    async def cancel_task(self, project: str, key: str, reason: str | None = None, /) -> Task: ...
    async def retry_task(self, project: str, key: str, /) -> Task: ...
    # keywords: the service takes (author, text), the client (text, *, author) positionally
    async def add_note(
        self, project: str, key: str, /, *, author: str, text: str, token: str | None = None
    ) -> Note: ...
    async def list_notes(self, project: str, key: str, /) -> list[Note]: ...
    async def blockers(self, project: str, key: str, /) -> list[Task]: ...
    async def dependents(self, project: str, key: str, /) -> list[Task]: ...
    async def list_events(self, project: str, after_id: int = 0, limit: int = 1000, /) -> list[Event]: ...
    async def stats(self, project: str, /) -> QueueStats: ...
    async def read_stream(
        self, project: str, key: str, after: str | None = None, stream: str = "default", /
    ) -> StreamPage: ...
    async def claim_next(
        self,
        project: str,
        agent: str,
        roles: Sequence[str] | None = None,
        lease_seconds: float | None = None,
        wait: float = 0.0,
        /,
    ) -> Claim | None: ...
    async def ready_tasks(self, project: str, roles: Sequence[str] | None = None, limit: int = 20, /) -> ReadyList: ...
    async def dead_letter(self, project: str, limit: int = 100, /) -> list[Task]: ...


@runtime_checkable
class SnapshotOps(Protocol):
    """``export``/``import``: the storage itself (QueueService). REST has no such endpoints, so a
    remote connection's client does not offer them."""

    async def export_project(self, project: str, /) -> ProjectSnapshot: ...
    async def import_project(self, snapshot: ProjectSnapshot, /) -> Project: ...


@dataclass
class Connection:
    """An open :class:`QueueOps` plus what only a local connection has (for ``run``'s sweeper)."""

    ops: QueueOps
    #: ``"local"`` or ``"remote"``
    mode: str
    #: the backend's name (``memory``, ``flatfile``, ``postgres+valkey``) or the server URL
    source: str
    #: the orchestrator sweep, in local mode only (a server runs its own)
    sweep: Callable[[], Awaitable[Any]] | None = None
    settings: Settings | None = None


ConnectFactory = Callable[["CliState"], contextlib.AbstractAsyncContextManager[Connection]]


@dataclass
class CliState:
    """Global options, kept on the click context (``ctx.obj``)."""

    url: str | None = None
    token: str | None = None
    json: bool = False
    #: tests may inject their own connection (e.g. one shared in-memory backend)
    connect: ConnectFactory | None = None
    #: local mode syncs workspace files after the command (off for `sync` itself: --status only reads)
    solo_sync: bool = True
    _settings: Settings | None = field(default=None, repr=False)

    def settings(self) -> Settings:
        """The configuration from the environment, loaded once (ConfigurationError if invalid)."""
        if self._settings is None:
            self._settings = Settings.load()
        return self._settings


def state_of(ctx: typer.Context) -> CliState:
    """The CliState of this invocation (created by the root callback)."""
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState()
    return root.obj


@contextlib.asynccontextmanager
async def _local(state: CliState) -> AsyncIterator[Connection]:
    from queue_service.service import QueueService
    from queue_service.workspaces import WorkspacePolicy

    settings = state.settings()
    url = settings.resolved_backend_url()
    try:
        backend = settings.build_backend()
    except ImportError as exc:
        raise exceptions.ConfigurationError(f"the backend for {url!r} is not available: {exc}") from None
    async with backend:
        # no server: the user is the operator of this machine (see queue_service.workspaces)
        service = QueueService(
            backend,
            workspaces=WorkspacePolicy.from_settings(settings, operator=True),
            agent_lease_seconds=settings.agent_lease_seconds,
        )
        yield Connection(
            ops=service, mode="local", source=backend.name, sweep=backend.dispatch.sweep, settings=settings
        )
        if settings.sync and state.solo_sync:
            # solo mode (no server): keep every workspace's TASKS.md in step after each command (issue 17)
            from workspace_sync.manager import sync_once

            await sync_once(service)


@contextlib.asynccontextmanager
async def _remote(state: CliState) -> AsyncIterator[Connection]:
    from queue_service.client import AsyncClient

    assert state.url is not None
    async with AsyncClient(state.url, token=state.token) as client:
        yield Connection(ops=client, mode="remote", source=state.url)


def open_ops(state: CliState) -> contextlib.AbstractAsyncContextManager[Connection]:
    """Connect as configured: the server at ``QUEUE_URL`` if set, else the local backend."""
    if state.connect is not None:
        return state.connect(state)
    if state.url:
        return _remote(state)
    return _local(state)


def call(ctx: typer.Context, body: Callable[[Connection], Awaitable[T]]) -> T:
    """Run *body* against a fresh connection on a new event loop, and return its result."""
    state = state_of(ctx)

    async def go() -> T:
        async with open_ops(state) as conn:
            return await body(conn)

    return asyncio.run(go())


# ---------------------------------------------------------------------------------------------
# errors


def exit_code_for(exc: BaseException) -> int:
    """The process exit code for an error (see the EXIT_* constants)."""
    if isinstance(exc, exceptions.ConfigurationError):
        return EXIT_USAGE
    if isinstance(exc, (exceptions.BackendError, ConnectionError, TimeoutError)):
        return EXIT_UNAVAILABLE
    return EXIT_DOMAIN


def fail_usage(message: str) -> typer.Exit:
    """Print a usage error and return the Exit to raise."""
    sys.stderr.write(f"error: {message}\n")
    return typer.Exit(EXIT_USAGE)


# ---------------------------------------------------------------------------------------------
# the project of per-project commands

_PROJECT_HELP = "Project slug (or give -p/--project, or set QUEUE_PROJECT)."


def _project_argument() -> TyperArgument:
    """A ``PROJECT`` positional built by typer itself (so help and parsing treat it like any argument).

    It is not passed to the command function (``expose_value`` off): :class:`ProjectCommand` moves its
    value into the ``project`` option before the parameters are processed.
    """
    probe = typer.Typer()

    @probe.command()
    def _probe(
        project_arg: Annotated[
            str | None, typer.Argument(metavar="PROJECT", help=_PROJECT_HELP, show_default=False)
        ] = None,
    ) -> None:
        """Never run."""

    param = typer.main.get_command(probe).params[0]
    assert isinstance(param, TyperArgument)
    param.expose_value = False
    return param


class UsageCommand(TyperCommand):
    """A command whose usage line reads ``[OPTIONS] PROJECT KEY [TEXT]``: required positionals bare, optional
    ones in brackets (typer's own style writes ``{key}``)."""

    def _positionals(self) -> list[TyperArgument]:
        return [p for p in self.params if isinstance(p, TyperArgument) and not p.hidden]

    def collect_usage_pieces(self, ctx: ClickContext) -> list[str]:
        """The options placeholder, then one piece per positional argument."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for arg in self._positionals():
            if arg.metavar is not None and arg.nargs != 1:
                pieces.append(arg.metavar)  # spelled out already, e.g. "-- COMMAND [ARGS...]"
                continue
            name = (arg.metavar or arg.name or "").upper() + ("..." if arg.nargs != 1 else "")
            pieces.append(name if arg.required or arg.metavar == "PROJECT" else f"[{name}]")
        return pieces


class ProjectCommand(UsageCommand):
    """A per-project command: ``qs task show PROJECT KEY``, with ``-p/--project`` and ``QUEUE_PROJECT`` as alternatives.

    The command function declares ``project: ProjectOpt`` and its other positionals as usual (KEY, TITLE…);
    this class adds a leading ``PROJECT`` argument and decides, once for every command, where the project
    comes from:

    * ``-p/--project`` given: the positionals mean what the command declares (``qs task show -p web WEB-1``);
    * otherwise the first positional is the project (``qs task show web WEB-1``), unless only
      ``QUEUE_PROJECT`` is set and there is no positional to spare: then the environment names the project
      (``QUEUE_PROJECT=web qs task show WEB-1``). An explicit argument beats the environment.

    A missing project or an invalid slug is a one-line usage error (exit 2).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        options = [p for p in self.params if isinstance(p, TyperOption) and p.name == "project"]
        if len(options) != 1:
            raise TypeError(f"command {self.name!r}: a ProjectCommand declares `project: ProjectOpt`")
        self._option = options[0]
        # Always filled in by _place_project; not "required" so help does not claim the option is needed.
        self._option.required = False
        self._arguments = [p for p in self.params if isinstance(p, TyperArgument)]
        for i, arg in enumerate(self._arguments):
            # one value each, except that the last may take the rest (``qs dep add PROJECT KEY DEP...``)
            if arg.nargs != 1 and not (arg.nargs == -1 and i == len(self._arguments) - 1):
                raise TypeError(f"command {self.name!r}: positionals of a ProjectCommand take one value each")
            if arg.metavar is None and arg.name:
                arg.metavar = arg.name.upper()  # KEY, TITLE… in usage lines and error messages
        self._project_arg = _project_argument()
        self.params.insert(0, self._project_arg)

    def make_parser(self, ctx: ClickContext) -> _OptionParser:
        """Click's parser, with the project put in place between parsing and processing the values."""
        parser = super().make_parser(ctx)
        parse = parser.parse_args

        def parse_args(args: list[str]) -> tuple[dict[str, Any], list[str], list[Any]]:
            opts, extra, order = parse(args)
            help_option = self.get_help_option(ctx)
            asking_help = help_option is not None and bool(opts.get(help_option.name or ""))
            if not ctx.resilient_parsing and not asking_help:
                extra = self._place_project(ctx, opts, extra)
            return opts, extra, order

        parser.parse_args = parse_args  # type: ignore[method-assign]
        return parser

    def _place_project(self, ctx: ClickContext, opts: dict[str, Any], extra: list[str]) -> list[str]:
        """Decide the project; rewrite *opts* so every positional gets its meaning; return what is left over."""
        slots = [self._project_arg, *self._arguments]
        # The parser filled the slots in order and left any surplus in *extra*: together, every positional.
        tokens: list[str] = []
        for value in (opts.pop(a.name or "", None) for a in slots):
            if isinstance(value, (list, tuple)):
                tokens.extend(value)
            elif value is not None:
                tokens.append(value)
        tokens += list(extra)
        variadic = bool(self._arguments) and self._arguments[-1].nargs == -1
        fixed = self._arguments[:-1] if variadic else self._arguments
        option_name = self._option.name or "project"
        explicit: str | None = opts.get(option_name)
        from_env = self._option.resolve_envvar_value(ctx)
        if explicit is not None:
            project, source, rest = explicit, "'--project'", tokens
            if not variadic and len(rest) > len(self._arguments):
                ctx.fail(
                    f"unexpected extra argument {rest[len(self._arguments)]!r} "
                    "(the project is already given with --project)"
                )
        elif (from_env and not variadic and len(tokens) <= len(self._arguments)) or (
            from_env and variadic and not (tokens and _is_slug(tokens[0]))
        ):
            project, source, rest = from_env, "QUEUE_PROJECT", tokens
        elif tokens:
            project, source, rest = tokens[0], "'PROJECT'", tokens[1:]
        else:
            ctx.fail("Missing argument 'PROJECT': give it first, or use --project/-p, or set QUEUE_PROJECT")
        try:
            validate_slug(project)
        except exceptions.ValidationError:
            hint = ""
            if source == "'PROJECT'":  # most likely the project was left out and a KEY or TITLE took its place
                hint = f"; the project comes first: {ctx.command_path} {' '.join(self.collect_usage_pieces(ctx)[1:])}"
            raise typer.BadParameter(
                f"{project!r} is not a project slug (lowercase letters, digits and dashes){hint}",
                ctx=ctx,
                param_hint=source,
            ) from None
        opts[option_name] = project
        for arg, value in zip(fixed, rest, strict=False):
            opts[arg.name or ""] = value
        if variadic:
            opts[self._arguments[-1].name or ""] = tuple(rest[len(fixed) :])
            return []
        return rest[len(self._arguments) :]


def _is_slug(value: str) -> bool:
    try:
        validate_slug(value)
    except exceptions.ValidationError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# output

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
#: The ``project`` parameter of every per-project command (registered with ``cls=ProjectCommand``, which
#: also accepts the project as the first positional argument and always fills this in).
ProjectOpt = Annotated[
    str,
    typer.Option(
        "--project",
        "-p",
        envvar="QUEUE_PROJECT",
        help="Project slug, instead of the PROJECT argument (for scripts).",
        show_default=False,
    ),
]


def to_jsonable(value: Any) -> Any:
    """Models, lists of models and plain data → JSON-ready data."""
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def write_json(value: Any) -> None:
    """One compact JSON document (or JSON line) on stdout."""
    sys.stdout.write(json.dumps(to_jsonable(value), ensure_ascii=False, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def emit(ctx: typer.Context, json_flag: bool, data: Any, human: Callable[[], None]) -> None:
    """Print *data* as JSON (``--json``) or call *human* to print it for people."""
    if json_flag or state_of(ctx).json:
        write_json(data)
    else:
        human()


def is_json(ctx: typer.Context, json_flag: bool) -> bool:
    """Whether this invocation prints JSON."""
    return json_flag or state_of(ctx).json


_STATUS_STYLE = {
    TaskStatus.NOT_STARTED: "white",
    TaskStatus.IN_PROGRESS: "cyan",
    TaskStatus.NEEDS_QA: "magenta",
    TaskStatus.DONE: "green",
    TaskStatus.BLOCKED: "yellow",
    TaskStatus.FAILED: "red",
    TaskStatus.CANCELLED: "dim",
}


def status_text(status: TaskStatus) -> str:
    """A status word with its colour markup."""
    return f"[{_STATUS_STYLE.get(status, 'white')}]{status.value}[/]"


def when(value: datetime | None) -> str:
    """A timestamp for tables (local-independent: UTC, seconds)."""
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def dash(value: object) -> str:
    """``—`` for empty values."""
    if value is None or value == "" or value == () or value == []:
        return "—"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def task_table(tasks: Sequence[Task], title: str | None = None) -> Table:
    """The standard task table."""
    table = Table(title=title, show_lines=False, header_style="bold")
    for name in ("key", "status", "pri", "role", "assignee", "deps", "title"):
        table.add_column(name, overflow="fold")
    for t in tasks:
        table.add_row(
            t.key,
            status_text(t.status),
            t.priority.value,
            t.role,
            dash(t.assignee),
            dash(t.depends_on),
            t.title,
        )
    return table


#: The fields of a task in ``--json`` listings unless ``--fields``/``--full`` say otherwise (issue 11:
#: an agent's context is a budget; the whole record is one ``--full`` or ``qs task show`` away).
SLIM_FIELDS = ("key", "title", "status", "role", "priority", "assignee", "depends_on", "attempts")
FieldsOpt = Annotated[
    str | None,
    typer.Option("--fields", help="With --json: the task fields to print, comma-separated (e.g. key,title,status)."),
]
FullOpt = Annotated[bool, typer.Option("--full", help="With --json: every task field (default: a slim record).")]


def task_fields(fields: str | None, full: bool, extra: Sequence[str] = ()) -> tuple[str, ...] | None:
    """The task fields a ``--json`` record keeps (None: all). Unknown names are a clear error."""
    if full:
        return None
    if fields is None:
        return (*SLIM_FIELDS, *extra)
    names = tuple(dict.fromkeys(split_csv([fields])))
    unknown = [n for n in names if n not in Task.model_fields]
    if unknown or not names:
        known = ", ".join(Task.model_fields)
        raise exceptions.ValidationError(
            f"--fields: unknown task field(s) {', '.join(unknown) or '(none)'}; known: {known}"
        )
    return names


def slim(task: Task, keep: tuple[str, ...] | None) -> dict[str, Any]:
    """A task as JSON data holding only *keep* (all fields when None)."""
    data: dict[str, Any] = task.model_dump(mode="json")
    return data if keep is None else {k: data[k] for k in keep if k in data}


def shown(count: int, total: int | None, more: str) -> str:
    """The plain truncation line: ``20 of 3,000 shown; <more>`` (empty when nothing was cut)."""
    if total is not None and count >= total:
        return ""
    of = f" of {total:,}" if total is not None else ""
    return f"{count:,}{of} shown; {more}"


#: rows a listing prints unless --limit or --all says otherwise (issue 11: output budgets)
DEFAULT_LIST_LIMIT = 20
#: the largest --limit a listing takes
MAX_LIST_LIMIT = 1000
ListLimitOpt = Annotated[
    int, typer.Option("--limit", help=f"Show at most this many (1-{MAX_LIST_LIMIT}).", min=1, max=MAX_LIST_LIMIT)
]
ListAllOpt = Annotated[bool, typer.Option("--all", help="Show every one.")]


def cut_listing(items: Sequence[T], limit: int, all_: bool) -> tuple[list[T], str]:
    """The first *limit* of *items* (all with --all) and the truncation line (empty when nothing was cut).

    The line goes to stderr with --json (stdout stays one JSON document) and after the table otherwise.
    """
    if all_ or len(items) <= limit:
        return list(items), ""
    return list(items[:limit]), shown(limit, len(items), "--limit N or --all")


def note_cut(line: str) -> None:
    """Print a truncation line where it never breaks --json output (stderr)."""
    if line:
        print(line, file=sys.stderr)


def plural(n: int, word: str) -> str:
    """``1 task``, ``2 tasks``."""
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def split_csv(values: Sequence[str] | None) -> list[str]:
    """``["a,b", "c"]`` → ``["a", "b", "c"]`` (options given repeatedly or comma-separated)."""
    out: list[str] = []
    for v in values or ():
        out.extend(p.strip() for p in v.split(",") if p.strip())
    return out


def usage_message(exc: Exception) -> str:
    """A one-line command-line error naming the help command (typer's click errors)."""
    format_message = getattr(exc, "format_message", None)
    message = str(format_message()) if callable(format_message) else str(exc)
    ctx = getattr(exc, "ctx", None)
    path = getattr(ctx, "command_path", None)
    hint = f" (see '{path} --help')" if path else ""
    return f"{message}{hint}"


def env_flag(name: str) -> bool:
    """True when the environment variable is set to something truthy."""
    return os.environ.get(name, "").strip().lower() not in {"", "0", "false", "no"}
