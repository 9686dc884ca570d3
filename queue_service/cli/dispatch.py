"""Agent-facing commands: heartbeat, complete, fail, release (claim: agent_loop); and stats, events."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from queue_service import exceptions
from queue_service.cli._core import (
    DEFAULT_LIST_LIMIT,
    Connection,
    JsonOpt,
    ProjectCommand,
    ProjectOpt,
    call,
    dash,
    emit,
    is_json,
    note_cut,
    shown,
    stdout,
    when,
    write_json,
)
from queue_service.models import Event, Lease, QueueStats, Task

__all__ = ["register"]

TokenOpt = Annotated[
    str,
    typer.Option(
        "--token", "-t", envvar="QUEUE_LEASE_TOKEN", help="The lease token from claim (env QUEUE_LEASE_TOKEN)."
    ),
]
KeyArg = Annotated[str, typer.Argument(help="Task key, e.g. WEB-12.")]
LeaseOpt = Annotated[float | None, typer.Option("--lease", help="Lease length in seconds (default: the service's).")]


def heartbeat(
    ctx: typer.Context,
    key: KeyArg,
    project: ProjectOpt,
    token: TokenOpt,
    lease: LeaseOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Extend a lease (JSON: the new lease)."""

    async def body(conn: Connection) -> Lease:
        return await conn.ops.heartbeat(project, key, token, lease)

    new = call(ctx, body)
    emit(ctx, json_out, new, lambda: stdout.print(f"Lease on [bold]{key}[/] extended until {when(new.expires_at)}"))


def _parse_result(result: str | None) -> Any:
    if result is None:
        return None
    text = sys.stdin.read() if result == "-" else result
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        # Plain text is a fine result too; JSON is kept structured.
        return text


def complete(
    ctx: typer.Context,
    key: KeyArg,
    project: ProjectOpt,
    token: TokenOpt,
    result: Annotated[
        str | None, typer.Option(help="Result: JSON, or plain text kept as a string ('-' reads stdin).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Mark a claimed task done.

    Example: qs complete web WEB-1 --token TOKEN --result '{"pr": 12}'
    """
    value = _parse_result(result)

    async def body(conn: Connection) -> Task:
        return await conn.ops.complete(project, key, token, value)

    task = call(ctx, body)
    emit(ctx, json_out, task, lambda: stdout.print(f"Completed [bold]{task.key}[/]"))


def fail(
    ctx: typer.Context,
    key: KeyArg,
    project: ProjectOpt,
    token: TokenOpt,
    error: Annotated[str, typer.Option("--error", "-e", help="What went wrong ('-' reads stdin).")],
    permanent: Annotated[
        bool, typer.Option("--permanent", help="Do not retry: dead-letter at once (default: retry with backoff).")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Report a failed attempt: retried with backoff until max attempts, then dead-lettered.

    Example: qs fail web WEB-1 --token TOKEN --error "tests do not pass"
    """
    message = sys.stdin.read() if error == "-" else error

    async def body(conn: Connection) -> Task:
        return await conn.ops.fail(project, key, token, message, not permanent)

    task = call(ctx, body)

    def human() -> None:
        if task.status.value == "failed":
            stdout.print(f"[red]{task.key} failed[/] after {task.attempts} attempt(s): dead-lettered")
        else:
            stdout.print(
                f"{task.key} will be retried (attempt {task.attempts}/{task.max_attempts}, "
                f"not before {when(task.not_before)})"
            )

    emit(ctx, json_out, task, human)


def release(
    ctx: typer.Context,
    key: KeyArg,
    project: ProjectOpt,
    token: TokenOpt,
    json_out: JsonOpt = False,
) -> None:
    """Give a claimed task back without counting an attempt."""

    async def body(conn: Connection) -> Task:
        return await conn.ops.release(project, key, token)

    task = call(ctx, body)
    emit(ctx, json_out, task, lambda: stdout.print(f"Released [bold]{task.key}[/]"))


def stats(ctx: typer.Context, project: ProjectOpt, json_out: JsonOpt = False) -> None:
    """Counts per status, ready depth per role, in-flight leases, dead-letter size."""

    async def body(conn: Connection) -> QueueStats:
        return await conn.ops.stats(project)

    s = call(ctx, body)

    def human() -> None:
        counts = Table(title=f"{s.project}: tasks by status", header_style="bold")
        counts.add_column("status")
        counts.add_column("tasks", justify="right")
        for status, n in s.by_status.items():
            counts.add_row(status, str(n))
        stdout.print(counts)
        roles = sorted(set(s.ready_by_role) | set(s.queue_depth_by_role))
        if roles:
            depth = Table(title="ready per role", header_style="bold")
            depth.add_column("role")
            depth.add_column("ready", justify="right")
            depth.add_column("queued", justify="right")
            for r in roles:
                depth.add_row(r, str(s.ready_by_role.get(r, 0)), dash(s.queue_depth_by_role.get(r)))
            stdout.print(depth)
        stdout.print(
            f"in flight: {s.in_flight}   dead-letter: {s.dead_letter}   "
            f"completed in the last minute: {s.completed_last_minute}"
        )

    emit(ctx, json_out, s, human)


def _print_event(e: Event, as_json: bool) -> None:
    if as_json:
        write_json(e)
        return
    subject = e.task or "—"
    status = e.status.value if e.status else ""
    version = f"v{e.version}" if e.version is not None else ""
    stdout.print(f"{e.id:>6}  {when(e.at)}  {e.kind:<12} {subject:<12} {status:<12} {version}", markup=False)


async def _latest_event_id(conn: Connection, project: str) -> int:
    last = 0
    while batch := await conn.ops.list_events(project, last, 10_000):
        last = batch[-1].id
    return last


def events(
    ctx: typer.Context,
    project: ProjectOpt,
    after: Annotated[int, typer.Option(help="Only events after this id (resume point).")] = 0,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Print new events as they happen, from now on, until Ctrl-C.")
    ] = False,
    since: Annotated[
        str | None,
        typer.Option(help="Start after this event id, or 'all' for the whole history (with --follow: default now)."),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(help=f"Stop after this many events (default {DEFAULT_LIST_LIMIT} without --follow)."),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Without --follow: print every event, not the first 20.")] = False,
    poll: Annotated[float, typer.Option(help="With --follow: seconds between checks for new events.")] = 0.5,
    json_out: JsonOpt = False,
) -> None:
    """Print the project's event log (JSON: one event per line); --follow prints new events from now on.

    Without --follow it prints the first 20 events after the start point and says when more follow.

    Example: qs events web --follow   (history too: --since all, or --since ID)
    """
    as_json = is_json(ctx, json_out)
    if limit is not None and limit < 1:
        raise exceptions.ValidationError(f"--limit must be at least 1, got {limit}")
    if limit is None and not follow and not all_:
        limit = DEFAULT_LIST_LIMIT  # a listing has a budget (issue 11); --all or --limit N to see more
    if poll <= 0:
        raise exceptions.ValidationError(f"--poll must be positive, got {poll}")

    if since is not None and since != "all" and not since.isdigit():
        raise exceptions.ValidationError(f"--since takes an event id or 'all', got {since[:40]!r}")
    start: int | None = after
    if since == "all":
        start = 0
    elif since is not None:
        start = int(since)
    elif follow and not after:
        start = None  # from now: skip the history

    async def body(conn: Connection) -> None:
        # Polling the durable log (not the live pub/sub) is what makes --follow lossless and work the
        # same on every backend and through the REST client, across processes.
        last = start if start is not None else await _latest_event_id(conn, project)
        printed = 0
        while True:
            want = 1000 if limit is None else min(1000, limit - printed)
            batch = await conn.ops.list_events(project, last, want)
            for e in batch:
                _print_event(e, as_json)
                last, printed = e.id, printed + 1
            if limit is not None and printed >= limit:
                if not follow and await conn.ops.list_events(project, last, 1):
                    line = shown(printed, None, f"--since {last} for the next ones, or --all")
                    if as_json:
                        note_cut(line)
                    else:
                        stdout.print(line, markup=False)
                return
            if len(batch) == want:
                continue  # more are waiting right now
            if not follow:
                return
            await asyncio.sleep(poll)

    try:
        call(ctx, body)
    except KeyboardInterrupt:
        # Ctrl-C is how --follow ends: not an error.
        raise typer.Exit(0) from None


def register(app: typer.Typer) -> None:
    """Add these commands to the root app."""
    for name, fn in (
        ("heartbeat", heartbeat),
        ("complete", complete),
        ("fail", fail),
        ("release", release),
    ):
        app.command(name, cls=ProjectCommand, rich_help_panel="Agents")(fn)
    app.command("stats", cls=ProjectCommand, rich_help_panel="Observe")(stats)
    app.command("events", cls=ProjectCommand, rich_help_panel="Observe")(events)
