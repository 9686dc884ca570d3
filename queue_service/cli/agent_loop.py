"""The agent loop on the command line (issue 11): ``next``, ``ready``, ``prime``, and the human side of
a claim (``claim`` prints the description and the exact commands that finish the task);
``dead-letter`` and ``dep`` for the people watching.

Every agent-facing claim goes through ``claim_next`` (QueueService / REST ``lease_profile=agent``):
the best ready task by the one dispatch order, with the agent lease.
"""

from __future__ import annotations

import shlex
from typing import Annotated, Any

import typer

from queue_service import exceptions
from queue_service.cli._core import (
    Connection,
    FieldsOpt,
    FullOpt,
    JsonOpt,
    ProjectCommand,
    ProjectOpt,
    call,
    is_json,
    plural,
    shown,
    slim,
    split_csv,
    stdout,
    task_fields,
    task_table,
    when,
    write_json,
)
from queue_service.models import Claim, ReadyList, Task
from queue_service.service import DEFAULT_AGENT_LEASE_SECONDS, new_agent_id

__all__ = ["claim_command", "print_claim", "register"]

RoleOpt = Annotated[
    list[str] | None, typer.Option("--role", "-r", help="Only these roles (repeat, or comma-separate).")
]
AgentOpt = Annotated[
    str | None, typer.Option(envvar="QUEUE_AGENT", help="Agent id (env QUEUE_AGENT; default a fresh unique id).")
]
LeaseOpt = Annotated[
    float | None,
    typer.Option("--lease", help="Lease seconds (default: the agent lease, QUEUE_AGENT_LEASE_SECONDS, 1800)."),
]
#: the description printed with a claim is cut here (the whole one is in ``qs task show``)
_DESCRIPTION_BUDGET = 4000


def _q(value: str) -> str:
    return shlex.quote(value)


def _role_flags(roles: list[str]) -> str:
    return f" --role {_q(','.join(roles))}" if roles else ""


def _description(task: Task) -> str:
    text = task.description.strip()
    if len(text) > _DESCRIPTION_BUDGET:
        text = text[:_DESCRIPTION_BUDGET] + f"\n… (cut; whole text: qs task show {task.project} {task.key})"
    return text


def finish_commands(project: str, key: str, token: str) -> list[tuple[str, str]]:
    """The exact commands that end (or extend) a claim, for people and agents to copy."""
    p, k, t = _q(project), _q(key), _q(token)
    return [
        ("finish", f"qs complete {p} {k} --token {t} --result 'what you did'"),
        ("progress", f"qs task note {p} {k} 'what you found' --token {t}"),
        ("give up", f"qs fail {p} {k} --token {t} --error 'why'   (or: qs release {p} {k} --token {t})"),
    ]


def print_claim(got: Claim) -> None:
    """A claim for people: the task with its description, the lease, and what to run next."""
    t, lease = got.task, got.lease
    stdout.print(f"Claimed {t.key} [{t.priority.value}, role {t.role}] {t.title}", markup=False)
    text = _description(t)
    if text:
        stdout.print(text, markup=False)
    seconds = f"{lease.seconds:g} s, " if lease.seconds else ""
    stdout.print(f"lease: {seconds}until {when(lease.expires_at)}; any call with the token renews it", markup=False)
    stdout.print(f"token: {lease.token}", markup=False)
    for label, line in finish_commands(t.project, t.key, lease.token):
        stdout.print(f"{label + ':':<10}{line}", markup=False)


def _claim_json(got: Claim | None, fields: str | None, full: bool) -> Any:
    if got is None:
        return None
    keep = task_fields(fields, full, extra=("description",))
    return {"task": slim(got.task, keep), "lease": got.lease.model_dump(mode="json")}


def claim_command(
    ctx: typer.Context,
    project: ProjectOpt,
    role: RoleOpt = None,
    agent: AgentOpt = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for a task to become ready (0-300).")] = 0.0,
    lease: LeaseOpt = None,
    fields: FieldsOpt = None,
    full: FullOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Claim the best ready task for your roles (agent lease, 30 min by default).

    Prints the task with its description, the lease token and the exact commands to finish it
    (JSON: {task, lease} or null).

    Example: qs claim web --role dev
    """
    _claim(ctx, project, role, agent, wait, lease, fields, full, json_out)


def _claim(
    ctx: typer.Context,
    project: str,
    role: list[str] | None,
    agent: str | None,
    wait: float,
    lease: float | None,
    fields: str | None,
    full: bool,
    json_out: bool,
) -> None:
    agent_id = agent or new_agent_id("cli")
    roles = split_csv(role)

    async def body(conn: Connection) -> Claim | None:
        return await conn.ops.claim_next(project, agent_id, roles or None, lease, wait)

    got = call(ctx, body)
    if is_json(ctx, json_out):
        write_json(_claim_json(got, fields, full))
    elif got is None:
        stdout.print(f"No task is ready for {('role ' + ', '.join(roles)) if roles else 'any role'}.", markup=False)
    else:
        print_claim(got)


def next_command(
    ctx: typer.Context,
    project: ProjectOpt,
    role: RoleOpt = None,
    claim: Annotated[bool, typer.Option("--claim", help="Claim it now, atomically (one call).")] = False,
    agent: AgentOpt = None,
    lease: LeaseOpt = None,
    fields: FieldsOpt = None,
    full: FullOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """The best ready task for your roles and the command that claims it; --claim claims it.

    Shows its description and the exact claim command (JSON: {task, unblocks, ready, claim} or null).
    With --claim: claims it atomically, as `qs claim` does.

    Example: qs next web --role dev --claim
    """
    if claim:
        _claim(ctx, project, role, agent, 0.0, lease, fields, full, json_out)
        return
    roles = split_csv(role)

    async def body(conn: Connection) -> ReadyList:
        return await conn.ops.ready_tasks(project, roles or None, 1)

    got = call(ctx, body)
    claim_line = f"qs next {_q(project)}{_role_flags(roles)} --claim"
    task = got.tasks[0] if got.tasks else None
    if is_json(ctx, json_out):
        if task is None:
            write_json(None)
            return
        keep = task_fields(fields, full, extra=("description",))
        write_json(
            {
                "task": slim(task, keep),
                "unblocks": got.unblocks.get(task.key, 0),
                "ready": got.total,
                "claim": claim_line,
            }
        )
        return
    if task is None:
        stdout.print(
            f"No task is ready for {('role ' + ', '.join(roles)) if roles else 'any role'}. "
            f"See what is waiting: qs task list {_q(project)} --status not-started,in-progress,blocked",
            markup=False,
        )
        return
    unblocks = got.unblocks.get(task.key, 0)
    stdout.print(
        f"Next: {task.key} [{task.priority.value}, role {task.role}] {task.title}"
        f"  ({plural(got.total, 'ready task')}; unblocks {unblocks})",
        markup=False,
    )
    text = _description(task)
    if text:
        stdout.print(text, markup=False)
    stdout.print(f"claim it: {claim_line}", markup=False)


def ready_command(
    ctx: typer.Context,
    project: ProjectOpt,
    role: RoleOpt = None,
    limit: Annotated[int, typer.Option(help="How many to show (1-1000).")] = 20,
    all_: Annotated[bool, typer.Option("--all", help="Show every ready task.")] = False,
    fields: FieldsOpt = None,
    full: FullOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Ready tasks in dispatch order (priority, tasks unblocked, age).

    JSON: {items, total, unblocks}.

    Example: qs ready web --role dev
    """
    roles = split_csv(role)

    async def body(conn: Connection) -> ReadyList:
        first = await conn.ops.ready_tasks(project, roles or None, 1000 if all_ else limit)
        return first

    got = call(ctx, body)
    note = "" if all_ and got.total <= 1000 else shown(len(got.tasks), got.total, "--limit N or --all")
    if is_json(ctx, json_out):
        keep = task_fields(fields, full)
        write_json({"items": [slim(t, keep) for t in got.tasks], "total": got.total, "unblocks": got.unblocks})
        return
    if not got.tasks:
        stdout.print("No task is ready.", markup=False)
        return
    stdout.print(task_table(got.tasks, title=f"{plural(got.total, 'ready task')} in dispatch order"))
    if note:
        stdout.print(note, markup=False)


def dead_letter_command(
    ctx: typer.Context,
    project: ProjectOpt,
    retry: Annotated[bool, typer.Option("--retry", help="Send every listed task back to the queue.")] = False,
    limit: Annotated[int, typer.Option(help="How many to show / retry (1-1000).")] = 20,
    all_: Annotated[bool, typer.Option("--all", help="Every dead-lettered task.")] = False,
    fields: FieldsOpt = None,
    full: FullOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Failed (dead-lettered) tasks, newest first; --retry requeues them in bulk.

    JSON: {items, total}.

    Example: qs dead-letter web --retry
    """
    if not 1 <= limit <= 1000:
        raise exceptions.ValidationError(f"--limit must be between 1 and 1000, got {limit}")

    async def body(conn: Connection) -> tuple[list[Task], int, list[Task]]:
        stats = await conn.ops.stats(project)
        total = stats.dead_letter
        failed = await conn.ops.dead_letter(project, max(total, 1) if all_ else limit)
        retried = [await conn.ops.retry_task(project, t.key) for t in failed] if retry else []
        return failed, total, retried

    failed, total, retried = call(ctx, body)
    if is_json(ctx, json_out):
        keep = task_fields(fields, full, extra=("last_error",))
        out: dict[str, Any] = {"items": [slim(t, keep) for t in failed], "total": total}
        if retry:
            out["retried"] = [t.key for t in retried]
        write_json(out)
        return
    if not failed:
        stdout.print("The dead-letter queue is empty.", markup=False)
        return
    if retry:
        stdout.print(f"Requeued {plural(len(retried), 'task')}: {', '.join(t.key for t in retried)}", markup=False)
    else:
        for t in failed:
            stdout.print(f"{t.key}  attempts {t.attempts}/{t.max_attempts}  {t.title}", markup=False)
            if t.last_error:
                stdout.print(f"    {t.last_error.splitlines()[0][:200]}", markup=False)
    more = shown(len(failed), total, "--limit N or --all")
    if more:
        stdout.print(more, markup=False)


dep_app = typer.Typer(help="Add or remove dependencies of a task (the others stay).", no_args_is_help=True)


def _change_deps(ctx: typer.Context, project: str, key: str, deps: list[str], add: bool, json_out: bool) -> None:
    wanted = split_csv(deps)
    if not wanted:
        raise exceptions.ValidationError("name at least one dependency key")

    async def body(conn: Connection) -> Task:
        task = await conn.ops.get_task(project, key)
        current = list(task.depends_on)
        if add:
            new = current + [d for d in wanted if d not in current]
        else:
            missing = [d for d in wanted if d not in current]
            if missing:
                has = ", ".join(current) or "nothing"
                raise exceptions.ValidationError(
                    f"task {key} does not depend on {', '.join(missing)} (it depends on {has})"
                )
            new = [d for d in current if d not in wanted]
        # expected_version: a concurrent edit of the list is refused, not silently overwritten
        return await conn.ops.update_task(project, key, {"depends_on": new}, task.version)

    task = call(ctx, body)
    if is_json(ctx, json_out):
        write_json(task)
    else:
        stdout.print(f"{task.key} depends on: {', '.join(task.depends_on) or 'nothing'}", markup=False)


@dep_app.command("add", cls=ProjectCommand)
def dep_add(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The task that waits.")],
    deps: Annotated[list[str], typer.Argument(metavar="DEP...", help="Keys it should wait for.")],
    project: ProjectOpt,
    json_out: JsonOpt = False,
) -> None:
    """Make KEY also wait for DEP… (existing dependencies stay).

    Example: qs dep add web WEB-5 WEB-2 WEB-3
    """
    _change_deps(ctx, project, key, deps, True, json_out)


@dep_app.command("rm", cls=ProjectCommand)
def dep_rm(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The task that waits.")],
    deps: Annotated[list[str], typer.Argument(metavar="DEP...", help="Keys it should no longer wait for.")],
    project: ProjectOpt,
    json_out: JsonOpt = False,
) -> None:
    """Stop KEY waiting for DEP… (the other dependencies stay).

    Example: qs dep rm web WEB-5 WEB-3
    """
    _change_deps(ctx, project, key, deps, False, json_out)


def prime_text(project: str, roles: list[str], known: list[str], lease_seconds: float | None, ready: int) -> str:
    """The start-of-session text for an agent (kept under 2 KB; a test holds it to that). Every ``qs``
    line runs as printed once KEY and TOKEN are filled in from the claim's output."""
    p = _q(project)
    role_line = ", ".join(roles or known) or "default"
    role_flag = _role_flags(roles)
    lease = (
        f"{lease_seconds:g} s"
        if lease_seconds
        else f"the server's QUEUE_AGENT_LEASE_SECONDS ({DEFAULT_AGENT_LEASE_SECONDS:g} s by default)"
    )
    return "\n".join(
        [
            f"You are an agent on queue-service project {project!r}. Roles: {role_line}. Ready now: {ready}.",
            "Loop: claim the best ready task, do it, complete it. Commands:",
            f"qs next {p}{role_flag} --claim",
            "  prints the task, its description, the token and the exact finish command, e.g.",
            f"qs complete {p} KEY --token TOKEN --result 'what you did'",
            "Progress notes (renew the lease; others see them):",
            f"qs task note {p} KEY 'what you found' --token TOKEN",
            "Stuck: qs fail ... --error 'why' (retried later) or qs release ... (back to the queue).",
            f"Found more work? qs task add {p} 'title' --description '...'",
            f"Lease: {lease} per claim; any call with the token (note, heartbeat) renews it;",
            f"a long silent step: qs heartbeat {p} KEY --token TOKEN. If a call says lease_invalid",
            "(expired, reclaimed, released, cancelled, blocked, completed), stop that task and claim again.",
            f"Look first: qs next {p}{role_flag}   All ready: qs ready {p}",
        ]
    )


def prime_command(
    ctx: typer.Context,
    project: ProjectOpt,
    role: RoleOpt = None,
) -> None:
    """The text an agent reads at session start: the work loop for this project (under 2 KB).

    The claim → work → complete loop with this project's names, roles, lease rules and commands.

    Example: qs prime web
    """
    roles = split_csv(role)

    async def body(conn: Connection) -> tuple[list[str], float | None, int]:
        stats = await conn.ops.stats(project)
        known = sorted(set(stats.ready_by_role) | set(stats.queue_depth_by_role))
        ready = await conn.ops.ready_tasks(project, roles or None, 1)
        # local mode knows the agent lease; through a server it is the server's setting
        lease = getattr(conn.ops, "agent_lease_seconds", None) if conn.mode == "local" else None
        return known, lease, ready.total

    known, lease, ready = call(ctx, body)
    stdout.print(prime_text(project, roles, known, lease, ready), markup=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add these commands to the root app."""
    app.command("claim", cls=ProjectCommand, rich_help_panel="Agents")(claim_command)
    app.command("next", cls=ProjectCommand, rich_help_panel="Agents")(next_command)
    app.command("ready", cls=ProjectCommand, rich_help_panel="Agents")(ready_command)
    app.command("prime", cls=ProjectCommand, rich_help_panel="Agents")(prime_command)
    app.command("dead-letter", cls=ProjectCommand, rich_help_panel="Observe")(dead_letter_command)
    app.add_typer(dep_app, name="dep", rich_help_panel="Plan")
