"""``task`` commands: add, list, show, edit, cancel, retry, note."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from queue_service import exceptions, tracing
from queue_service.cli._core import (
    Connection,
    FieldsOpt,
    FullOpt,
    JsonOpt,
    ProjectCommand,
    ProjectOpt,
    call,
    dash,
    emit,
    is_json,
    plural,
    shown,
    slim,
    split_csv,
    status_text,
    stdout,
    task_fields,
    task_table,
    when,
    write_json,
)
from queue_service.cli.agents import parse_labels
from queue_service.models import Note, Task, TaskPage, validate_key

__all__ = ["task_app"]

task_app = typer.Typer(help="Add, list, show and change tasks.", no_args_is_help=True)

#: values that clear an optional field in ``task edit`` (TASKS.md uses the same words for "none")
_NONE_WORDS = {"-", "—", "none", ""}

DependsOpt = Annotated[
    list[str] | None,
    typer.Option("--depends-on", "-d", help="Task keys this one waits for (repeat, or comma-separate)."),
]
LabelOpt = Annotated[list[str] | None, typer.Option("--label", "-l", help="A label (repeat, or comma-separate).")]


def _read_text(value: str | None, path: Path | None) -> str | None:
    if path is None:
        return value
    if value is not None:
        raise exceptions.ValidationError("give --description or --description-file, not both")
    try:
        return sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except OSError as exc:
        raise exceptions.ValidationError(f"cannot read {path}: {exc.strerror or exc}") from None


def _read_batch(path: str) -> list[dict[str, Any]]:
    """A JSON array of tasks, or JSON lines, from a file or ``-``."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise exceptions.ValidationError(f"cannot read {path}: {exc.strerror or exc}") from None
    stripped = text.strip()
    try:
        if stripped.startswith("["):
            items = json.loads(stripped)
        else:
            items = [json.loads(line) for line in stripped.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise exceptions.ValidationError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise exceptions.ValidationError(f"{path}: expected a JSON array of task objects or one object per line")
    return items


@task_app.command("add", cls=ProjectCommand)
def task_add(
    ctx: typer.Context,
    project: ProjectOpt,
    title: Annotated[str | None, typer.Argument(help="Task title (omit with --from).")] = None,
    key: Annotated[str | None, typer.Option(help="Explicit key (default: the next PREFIX-N).")] = None,
    description: Annotated[str | None, typer.Option("--description", "-D", help="Longer description.")] = None,
    description_file: Annotated[
        Path | None, typer.Option(help="Read the description from a file ('-' = stdin).")
    ] = None,
    role: Annotated[str | None, typer.Option("--role", "-r", help="Queue role (default: default).")] = None,
    priority: Annotated[str | None, typer.Option("--priority", "-P", help="P0 (first) .. P3; default P2.")] = None,
    assignee: Annotated[str | None, typer.Option(help="Assignee / agent.")] = None,
    mission: Annotated[str | None, typer.Option("--mission", "-M", help="Mission id (default: default).")] = None,
    milestone: Annotated[str | None, typer.Option(help="Milestone id.")] = None,
    depends_on: DependsOpt = None,
    label: LabelOpt = None,
    status: Annotated[str | None, typer.Option(help="Initial status (default not-started).")] = None,
    max_attempts: Annotated[int | None, typer.Option(help="Attempts before dead-letter (default 3).")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Adding again with the same key returns the existing task.")
    ] = None,
    from_file: Annotated[
        str | None,
        typer.Option("--from", help="Add many tasks at once from a JSON array or JSON lines file ('-' = stdin)."),
    ] = None,
    discovered_from: Annotated[
        str | None,
        typer.Option(help="Found while working on this task: your lease on it (--token) lets an agent add it."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="QUEUE_LEASE_TOKEN", help="Your lease on --discovered-from; renews it (env QUEUE_LEASE_TOKEN)."
        ),
    ] = None,
    requires: Annotated[
        list[str] | None,
        typer.Option("--requires", help="A label NAME=VALUE an agent must carry to get it (repeat)."),
    ] = None,
    concurrency_key: Annotated[
        str | None, typer.Option(help="Tasks sharing it obey the project's concurrency_limits.")
    ] = None,
    group: Annotated[str | None, typer.Option(help="Fair-share group (default: the mission).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Add a task (JSON: the task), or with --from a batch (JSON: the list; all or nothing; '#0' in depends_on
    names the batch's first task).

    Example: qs task add web "Write the login page" --depends-on WEB-1
    A child of qs run adds what it found: qs task add "Fix the parser" --discovered-from "$QUEUE_TASK_KEY"
    """
    if from_file is not None:
        if title is not None:
            raise exceptions.ValidationError("give a TITLE or --from FILE, not both")
        items: list[dict[str, Any]] = _read_batch(from_file)
    else:
        if title is None:
            raise exceptions.ValidationError("a task needs a TITLE (or use --from FILE)")
        item: dict[str, Any] = {
            "title": title,
            "key": key,
            "description": _read_text(description, description_file),
            "role": role,
            "priority": priority,
            "assignee": assignee,
            "mission": mission,
            "milestone": milestone,
            "depends_on": split_csv(depends_on) or None,
            "labels": split_csv(label) or None,
            "status": status,
            "max_attempts": max_attempts,
            "idempotency_key": idempotency_key,
            "requires": parse_labels(requires) or None,
            "concurrency_key": concurrency_key,
            "group": group,
        }
        items = [{k: v for k, v in item.items() if v is not None}]

    # TRACEPARENT/TRACESTATE (set by a tracing caller, or by `qs run` for its children) continue the
    # caller's trace in the agent that runs the task; a task's own fields win
    trace_fields = tracing.producer_fields(os.environ)
    items = [tracing.with_producer_context(item, trace_fields) for item in items]

    if discovered_from is not None and from_file is not None:
        raise exceptions.ValidationError("--discovered-from adds one task, not a --from batch")

    async def body(conn: Connection) -> list[Task]:
        if discovered_from is not None and token:
            return [await conn.ops.create_discovered_task(project, items[0], discovered_from, token)]
        if discovered_from is not None:
            extra = {**items[0].get("extra", {}), "discovered_from": validate_key(discovered_from)}
            items[0] = {**items[0], "extra": extra}
        return await conn.ops.create_tasks(project, items)

    tasks = call(ctx, body)
    if is_json(ctx, json_out):
        emit(ctx, True, tasks if from_file is not None else tasks[0], lambda: None)
    elif from_file is None:
        stdout.print(f"Added [bold]{tasks[0].key}[/] {tasks[0].title}")
    else:
        # a bulk add answers in one line, not a table as long as the batch
        span = tasks[0].key if len(tasks) == 1 else f"{tasks[0].key} … {tasks[-1].key}"
        stdout.print(f"Added {plural(len(tasks), 'task')}: {span}", markup=False)


@task_app.command("list", cls=ProjectCommand)
def task_list(
    ctx: typer.Context,
    project: ProjectOpt,
    status: Annotated[
        list[str] | None, typer.Option("--status", "-s", help="Only these statuses (repeat, or comma-separate).")
    ] = None,
    role: Annotated[str | None, typer.Option("--role", "-r", help="Only this role.")] = None,
    assignee: Annotated[str | None, typer.Option(help="Only this assignee.")] = None,
    mission: Annotated[str | None, typer.Option("--mission", "-M", help="Only this mission.")] = None,
    milestone: Annotated[str | None, typer.Option(help="Only this milestone.")] = None,
    label: Annotated[str | None, typer.Option("--label", "-l", help="Only tasks with this label.")] = None,
    ready: Annotated[bool, typer.Option("--ready", help="Only tasks that are ready to claim now.")] = False,
    limit: Annotated[int, typer.Option(help="Page size (1-1000).")] = 20,
    cursor: Annotated[str | None, typer.Option(help="Continue from a previous page's next_cursor.")] = None,
    all_pages: Annotated[bool, typer.Option("--all", help="Fetch every page.")] = False,
    fields: FieldsOpt = None,
    full: FullOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """List a project's tasks, oldest first (JSON: {items, next_cursor}).

    Example: qs task list web --ready
    """
    filters: dict[str, Any] = {
        "status": split_csv(status) or None,
        "role": role,
        "assignee": assignee,
        "mission": mission,
        "milestone": milestone,
        "label": label,
        "ready": True if ready else None,
    }
    filters = {k: v for k, v in filters.items() if v is not None}

    keep = task_fields(fields, full)

    async def body(conn: Connection) -> tuple[TaskPage, int | None]:
        page = await conn.ops.list_tasks(project, filters, limit, cursor)
        total: int | None = None
        if page.next_cursor and cursor is None and set(filters) <= {"status"}:
            # the plain "20 of 3,000" needs a count: cheap from the status counts when only status filters
            counts = (await conn.ops.stats(project)).by_status
            wanted = filters.get("status") or list(counts)
            total = sum(counts.get(s, 0) for s in wanted)
        if not all_pages:
            return page, total
        items = list(page.items)
        while page.next_cursor:
            page = await conn.ops.list_tasks(project, filters, 1000, page.next_cursor)
            items.extend(page.items)
        return TaskPage(items=tuple(items), next_cursor=None), None

    page, total = call(ctx, body)
    if is_json(ctx, json_out):
        write_json({"items": [slim(t, keep) for t in page.items], "next_cursor": page.next_cursor})
        return
    if not page.items:
        stdout.print("No tasks match.")
        return
    stdout.print(task_table(page.items))
    if page.next_cursor:
        stdout.print(shown(len(page.items), total, f"--cursor {page.next_cursor} or --all"), markup=False)


@task_app.command("show", cls=ProjectCommand)
def task_show(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="Task key, e.g. WEB-12.")],
    project: ProjectOpt,
    json_out: JsonOpt = False,
) -> None:
    """Show a task with its notes, blockers and dependents (JSON: {task, notes, blockers, dependents}).

    Example: qs task show web WEB-1
    """

    async def body(conn: Connection) -> dict[str, Any]:
        task = await conn.ops.get_task(project, key)
        return {
            "task": task,
            "notes": await conn.ops.list_notes(project, key),
            "blockers": [t.key for t in await conn.ops.blockers(project, key)],
            "dependents": [t.key for t in await conn.ops.dependents(project, key)],
        }

    shown = call(ctx, body)

    def human() -> None:
        t: Task = shown["task"]
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        rows: list[tuple[str, str]] = [
            ("key", t.key),
            ("title", t.title),
            ("status", status_text(t.status)),
            ("priority", t.priority.value),
            ("role", t.role),
            ("assignee", dash(t.assignee)),
            ("mission", f"{t.mission}" + (f" / {t.milestone}" if t.milestone else "")),
            ("depends on", dash(t.depends_on)),
            ("blocked by", dash(shown["blockers"])),
            ("unblocks", dash(shown["dependents"])),
            ("labels", dash(t.labels)),
            ("attempts", f"{t.attempts}/{t.max_attempts}"),
            ("version", str(t.version)),
            ("created", when(t.created_at)),
            ("updated", when(t.updated_at)),
        ]
        optional = {
            "not before": when(t.not_before) if t.not_before else None,
            "lease holder": t.lease_holder,
            "lease until": when(t.lease_expires_at) if t.lease_expires_at else None,
            "blocked reason": t.blocked_reason,
            "last error": t.last_error,
            "result": json.dumps(t.result, ensure_ascii=False) if t.result is not None else None,
        }
        rows.extend((k, v) for k, v in optional.items() if v)
        rows.extend((f"extra.{k}", v) for k, v in t.extra.items())
        for k, v in rows:
            table.add_row(k, v)
        stdout.print(table)
        if t.description:
            stdout.print()
            stdout.print(t.description, markup=False)
        notes: list[Note] = shown["notes"]
        if notes:
            stdout.print()
            stdout.print("[bold]notes[/]")
            for n in notes:
                stdout.print(f"  {when(n.created_at)} [bold]{n.author}[/]: ", end="")
                stdout.print(n.text, markup=False)

    emit(ctx, json_out, shown, human)


@task_app.command("edit", cls=ProjectCommand)
def task_edit(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="Task key.")],
    project: ProjectOpt,
    title: Annotated[str | None, typer.Option(help="New title.")] = None,
    description: Annotated[str | None, typer.Option("--description", "-D", help="New description.")] = None,
    status: Annotated[str | None, typer.Option("--status", "-s", help="New status (aliases accepted).")] = None,
    role: Annotated[str | None, typer.Option("--role", "-r", help="New role.")] = None,
    priority: Annotated[str | None, typer.Option("--priority", "-P", help="New priority.")] = None,
    assignee: Annotated[str | None, typer.Option(help="New assignee ('-' clears).")] = None,
    mission: Annotated[str | None, typer.Option("--mission", "-M", help="Move to this mission.")] = None,
    milestone: Annotated[str | None, typer.Option(help="New milestone ('-' clears).")] = None,
    depends_on: DependsOpt = None,
    label: LabelOpt = None,
    max_attempts: Annotated[int | None, typer.Option(help="New attempt limit.")] = None,
    blocked_reason: Annotated[str | None, typer.Option(help="Why it is blocked ('-' clears).")] = None,
    if_version: Annotated[
        int | None, typer.Option(help="Refuse (exit 1) if the task's version is no longer this one.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Change fields of a task; only the options given change. '--depends-on -' and '--label -' clear lists.

    Example: qs task edit web WEB-2 --priority P0 --assignee alice
    """
    patch: dict[str, Any] = {}
    for name, value in (
        ("title", title),
        ("description", description),
        ("status", status),
        ("role", role),
        ("priority", priority),
        ("mission", mission),
        ("max_attempts", max_attempts),
    ):
        if value is not None:
            patch[name] = value
    for name, value in (("assignee", assignee), ("milestone", milestone), ("blocked_reason", blocked_reason)):
        if value is not None:
            patch[name] = None if value.strip() in _NONE_WORDS else value
    for name, values in (("depends_on", depends_on), ("labels", label)):
        if values is not None:
            patch[name] = [v for v in split_csv(values) if v not in _NONE_WORDS]
    if not patch:
        raise exceptions.ValidationError("nothing to change: give at least one option (see --help)")

    async def body(conn: Connection) -> Task:
        return await conn.ops.update_task(project, key, patch, if_version)

    task = call(ctx, body)
    emit(ctx, json_out, task, lambda: stdout.print(f"Updated [bold]{task.key}[/] (version {task.version})"))


@task_app.command("cancel", cls=ProjectCommand)
def task_cancel(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="Task key.")],
    project: ProjectOpt,
    reason: Annotated[str | None, typer.Option(help="Why (kept on the task).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Cancel a task (its dependents become blocked)."""

    async def body(conn: Connection) -> Task:
        return await conn.ops.cancel_task(project, key, reason)

    task = call(ctx, body)
    emit(ctx, json_out, task, lambda: stdout.print(f"Cancelled [bold]{task.key}[/]"))


@task_app.command("retry", cls=ProjectCommand)
def task_retry(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="Task key.")],
    project: ProjectOpt,
    json_out: JsonOpt = False,
) -> None:
    """Send a failed, blocked or cancelled task back to the queue with its attempts reset."""

    async def body(conn: Connection) -> Task:
        return await conn.ops.retry_task(project, key)

    task = call(ctx, body)
    emit(ctx, json_out, task, lambda: stdout.print(f"Requeued [bold]{task.key}[/] ({task.status.value})"))


@task_app.command("note", cls=ProjectCommand)
def task_note(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="Task key.")],
    text: Annotated[str, typer.Argument(help="The note ('-' reads stdin).")],
    project: ProjectOpt,
    author: Annotated[
        str | None, typer.Option(envvar="QUEUE_AGENT", help="Who writes it (env QUEUE_AGENT; default $USER).")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="QUEUE_LEASE_TOKEN",
            help="Lease token: write as the task's current holder; renews the lease (env QUEUE_LEASE_TOKEN).",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Append a note to a task.

    Example: qs task note web WEB-1 "schema agreed with the API team"
    """
    body_text = sys.stdin.read() if text == "-" else text
    who = author or os.environ.get("USER") or "cli"

    async def body(conn: Connection) -> Note:
        return await conn.ops.add_note(project, key, author=who, text=body_text, token=token)

    note = call(ctx, body)
    emit(ctx, json_out, note, lambda: stdout.print(f"Noted on [bold]{note.task}[/]"))
