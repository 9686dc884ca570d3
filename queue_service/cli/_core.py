"""What every CLI command shares: the operations protocol, the connection, output, and errors.

Commands are written once against :class:`QueueOps`, a structural protocol that both
:class:`~queue_service.service.QueueService` (local mode: the configured backend opened in this
process) and :class:`~queue_service.client.AsyncClient` (remote mode: ``QUEUE_URL`` is set) satisfy.
:func:`open_ops` picks one; :func:`call` runs a command body against it on a fresh event loop.
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
from typing import Annotated, Any, Protocol, TypeVar

import pydantic
import typer
from rich.console import Console
from rich.table import Table

from queue_service import exceptions
from queue_service.models import (
    Claim,
    Event,
    Lease,
    Mission,
    MissionCreate,
    Note,
    Project,
    ProjectCreate,
    ProjectSnapshot,
    QueueStats,
    Task,
    TaskCreate,
    TaskFilter,
    TaskPage,
    TaskStatus,
    TaskUpdate,
)
from queue_service.settings import Settings

__all__ = [
    "EXIT_DOMAIN",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "CliState",
    "JsonOpt",
    "ProjectOpt",
    "QueueOps",
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


class QueueOps(Protocol):
    """The operations the CLI and the runner use, as both QueueService and AsyncClient spell them."""

    async def create_project(self, data: ProjectCreate | Mapping[str, Any], /) -> Project: ...
    async def get_project(self, slug: str, /) -> Project: ...
    async def list_projects(self) -> list[Project]: ...
    async def create_mission(self, project: str, data: MissionCreate | Mapping[str, Any], /) -> Mission: ...
    async def list_missions(self, project: str, /) -> list[Mission]: ...
    async def create_tasks(self, project: str, items: Sequence[TaskCreate | Mapping[str, Any]], /) -> list[Task]: ...
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
    async def retry(self, project: str, key: str, /) -> Task: ...
    async def add_note(self, project: str, key: str, author: str, text: str, token: str | None = None, /) -> Note: ...
    async def list_notes(self, project: str, key: str, /) -> list[Note]: ...
    async def blockers(self, project: str, key: str, /) -> list[Task]: ...
    async def dependents(self, project: str, key: str, /) -> list[Task]: ...
    async def list_events(self, project: str, after_id: int = 0, limit: int = 1000, /) -> list[Event]: ...
    async def stats(self, project: str, /) -> QueueStats: ...
    async def claim(
        self,
        project: str,
        agent: str,
        roles: Sequence[str] | None = None,
        wait: float = 0.0,
        lease_seconds: float | None = None,
        /,
    ) -> Claim | None: ...
    async def heartbeat(self, project: str, key: str, token: str, lease_seconds: float | None = None, /) -> Lease: ...
    async def complete(self, project: str, key: str, token: str, result: Any = None, /) -> Task: ...
    async def fail(self, project: str, key: str, token: str, error: str, retryable: bool = True, /) -> Task: ...
    async def release(self, project: str, key: str, token: str, /) -> Task: ...
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

    settings = state.settings()
    url = settings.resolved_backend_url()
    try:
        backend = settings.build_backend()
    except ImportError as exc:
        raise exceptions.ConfigurationError(f"the backend for {url!r} is not available: {exc}") from None
    async with backend:
        service = QueueService(backend, workspace_root=settings.workspace)
        yield Connection(
            ops=service, mode="local", source=backend.name, sweep=backend.dispatch.sweep, settings=settings
        )


@contextlib.asynccontextmanager
async def _remote(state: CliState) -> AsyncIterator[Connection]:
    from queue_service.cli._remote import RemoteOps
    from queue_service.client import AsyncClient

    assert state.url is not None
    async with AsyncClient(state.url, token=state.token) as client:
        yield Connection(ops=RemoteOps(client), mode="remote", source=state.url)


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
# output

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
ProjectOpt = Annotated[
    str,
    typer.Option(
        "--project", "-p", envvar="QUEUE_PROJECT", help="Project slug (env QUEUE_PROJECT).", show_default=False
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
