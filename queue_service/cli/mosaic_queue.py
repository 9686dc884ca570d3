"""Issue 18: ``qs queue`` and ``qs backlog``, the verbs and flags of the Mosaic queue CLI
(``packages/queue/src/cli.ts``) and its backlog CLI, mapped onto the service's own operations.

Flag mapping: ``--lane`` → role, ``--dependency`` → depends_on, ``--ttl`` (seconds) → lease,
``--summary`` → result. ``claim`` is an agent-facing claim (``QueueService.claim_next``, the agent lease
unless ``--ttl``) and keeps the lease token in a local file (mode 0600) so ``complete``/``release`` need
only the key and the agent, as theirs do; the server still never completes without the token.
See docs/plans/mosaic-parity.md for the JSON shapes.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any

import typer

from queue_service import exceptions
from queue_service.cli._core import (
    Connection,
    ProjectCommand,
    ProjectOpt,
    call,
    split_csv,
    write_json,
)
from queue_service.models import Claim, QueueStats, Task, TaskStatus, validate_key, validate_slug

__all__ = ["backlog_app", "lease_file", "queue_app", "register"]

queue_app = typer.Typer(help="The Mosaic queue CLI's verbs (create, list, get, claim, release, complete).")
backlog_app = typer.Typer(
    help="The Mosaic backlog CLI's verbs (create, list, claim, reclaim, link, stats, block, complete)."
)

KeyArg = Annotated[str, typer.Argument(help="Task key, e.g. WEB-12.")]
AgentOpt = Annotated[str, typer.Option("--agent", envvar="QUEUE_AGENT", help="Agent id (env QUEUE_AGENT).")]
TtlOpt = Annotated[
    float | None, typer.Option("--ttl", help="Lease seconds (default: the agent lease, QUEUE_AGENT_LEASE_SECONDS).")
]
LaneOpt = Annotated[list[str] | None, typer.Option("--lane", help="Lane = our role (repeat or comma-separate).")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Accepted for the backlog CLI; output is always JSON.")]
_AGENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")


def lease_dir() -> Path:
    """Where claimed lease tokens are kept: ``QUEUE_LEASE_DIR``, else ``$XDG_STATE_HOME/queue-service/leases``
    (``~/.local/state/queue-service/leases``)."""
    explicit = os.environ.get("QUEUE_LEASE_DIR")
    if explicit:
        return Path(explicit)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "queue-service" / "leases"


def lease_file(project: str, key: str) -> Path:
    """The token file of one claim: keyed by project and task (both validated, so no path tricks)."""
    return lease_dir() / validate_slug(project) / f"{validate_key(key)}.json"


def _save_lease(got: Claim) -> None:
    path = lease_file(got.task.project, got.task.key)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    data = json.dumps({"agent": got.lease.holder, "token": got.lease.token}).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    os.replace(tmp, path)  # atomic: a reader sees the old token or the new one


def _load_token(project: str, key: str, agent: str) -> str:
    path = lease_file(project, key)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise exceptions.ValidationError(
            f"no stored lease for {key} in {project} ({path}); claim it with 'qs queue claim' first"
        ) from None
    except (OSError, ValueError) as exc:
        raise exceptions.ValidationError(f"unreadable lease file {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("token"), str):
        raise exceptions.ValidationError(f"lease file {path} has no token")
    if data.get("agent") != agent:
        raise exceptions.ValidationError(f"{key} was claimed by agent {data.get('agent')!r} here, not {agent!r}")
    return str(data["token"])


def _forget(project: str, key: str) -> None:
    lease_file(project, key).unlink(missing_ok=True)


def _check_agent(agent: str) -> str:
    if not _AGENT_RE.match(agent):
        raise exceptions.ValidationError(f"invalid agent id {agent!r}: letters, digits and ._:@- (max 128)")
    return agent


def _claim_json(got: Claim | None) -> Any:
    if got is None:
        return None
    return {"task": got.task.model_dump(mode="json"), "lease": got.lease.model_dump(mode="json")}


# -- the shared verbs ---------------------------------------------------------------------------


def do_create(
    ctx: typer.Context,
    project: str,
    title: str,
    description: str | None,
    priority: str | None,
    lane: list[str] | None,
    dependency: list[str] | None,
    mission: str | None,
) -> None:
    roles = split_csv(lane)
    if len(roles) > 1:
        raise exceptions.ValidationError("a task has one lane (role); give --lane once")
    item: dict[str, Any] = {
        "title": title,
        "description": description,
        "priority": priority,
        "role": roles[0] if roles else None,
        "depends_on": split_csv(dependency) or None,
        "mission": mission,
    }

    async def body(conn: Connection) -> Task:
        (task,) = await conn.ops.create_tasks(project, [{k: v for k, v in item.items() if v is not None}])
        return task

    write_json(call(ctx, body))


def do_list(
    ctx: typer.Context, project: str, mission: str | None, status: list[str] | None, lane: list[str] | None
) -> None:
    filters: dict[str, Any] = {}
    if mission:
        filters["mission"] = mission
    if status:
        filters["status"] = split_csv(status)
    if lane:
        filters["role"] = split_csv(lane)

    async def body(conn: Connection) -> list[Task]:
        out: list[Task] = []
        cursor: str | None = None
        while True:
            page = await conn.ops.list_tasks(project, filters, 1000, cursor)
            out.extend(page.items)
            cursor = page.next_cursor
            if cursor is None:
                return out

    write_json(call(ctx, body))


def do_claim(ctx: typer.Context, project: str, agent: str, ttl: float | None, lane: list[str] | None) -> None:
    _check_agent(agent)
    roles = split_csv(lane)

    async def body(conn: Connection) -> Claim | None:
        return await conn.ops.claim_next(project, agent, roles or None, ttl)

    got = call(ctx, body)
    if got is not None:
        _save_lease(got)
    write_json(_claim_json(got))


def do_complete(ctx: typer.Context, project: str, key: str, agent: str, summary: str | None) -> None:
    token = _load_token(project, key, _check_agent(agent))

    async def body(conn: Connection) -> Task:
        return await conn.ops.complete(project, key, token, summary)

    task = call(ctx, body)
    _forget(project, key)
    write_json(task)


# -- qs queue -----------------------------------------------------------------------------------


@queue_app.command("create", cls=ProjectCommand)
def queue_create(
    ctx: typer.Context,
    project: ProjectOpt,
    title: Annotated[str, typer.Option("--title", help="Task title.")],
    description: Annotated[str | None, typer.Option("--description", help="Longer description.")] = None,
    priority: Annotated[str | None, typer.Option("--priority", help="P0..P3 or CRITICAL/HIGH/MEDIUM/LOW.")] = None,
    lane: LaneOpt = None,
    dependency: Annotated[list[str] | None, typer.Option("--dependency", help="Key it waits for (repeat).")] = None,
    mission: Annotated[str | None, typer.Option("--mission", help="Mission id.")] = None,
) -> None:
    """Create a task (JSON: the task). Example: qs queue create web --title "Login" --lane dev --priority HIGH"""
    do_create(ctx, project, title, description, priority, lane, dependency, mission)


@queue_app.command("list", cls=ProjectCommand)
def queue_list(
    ctx: typer.Context,
    project: ProjectOpt,
    mission: Annotated[str | None, typer.Option("--mission", help="Only this mission.")] = None,
    status: Annotated[
        list[str] | None, typer.Option("--status", help="Only these statuses (aliases accepted).")
    ] = None,
    lane: LaneOpt = None,
) -> None:
    """List tasks (JSON: an array of tasks, every page)."""
    do_list(ctx, project, mission, status, lane)


@queue_app.command("get", cls=ProjectCommand)
def queue_get(ctx: typer.Context, key: KeyArg, project: ProjectOpt) -> None:
    """One task (JSON: the task)."""

    async def body(conn: Connection) -> Task:
        return await conn.ops.get_task(project, key)

    write_json(call(ctx, body))


@queue_app.command("claim", cls=ProjectCommand)
def queue_claim(
    ctx: typer.Context, project: ProjectOpt, agent: AgentOpt, ttl: TtlOpt = None, lane: LaneOpt = None
) -> None:
    """Claim the best ready task (JSON: {task, lease} or null); the token is kept locally (mode 0600)."""
    do_claim(ctx, project, agent, ttl, lane)


@queue_app.command("release", cls=ProjectCommand)
def queue_release(ctx: typer.Context, key: KeyArg, project: ProjectOpt, agent: AgentOpt) -> None:
    """Give a claimed task back with the stored token (JSON: the task)."""
    token = _load_token(project, key, _check_agent(agent))

    async def body(conn: Connection) -> Task:
        return await conn.ops.release(project, key, token)

    task = call(ctx, body)
    _forget(project, key)
    write_json(task)


@queue_app.command("complete", cls=ProjectCommand)
def queue_complete(
    ctx: typer.Context,
    key: KeyArg,
    project: ProjectOpt,
    agent: AgentOpt,
    summary: Annotated[str | None, typer.Option("--summary", help="What was done (stored as the result).")] = None,
) -> None:
    """Complete a task claimed here with the stored token (JSON: the task)."""
    do_complete(ctx, project, key, agent, summary)


# -- qs backlog ---------------------------------------------------------------------------------


@backlog_app.command("create", cls=ProjectCommand)
def backlog_create(
    ctx: typer.Context,
    project: ProjectOpt,
    title: Annotated[str, typer.Option("--title", help="Task title.")],
    description: Annotated[str | None, typer.Option("--description", help="Longer description.")] = None,
    priority: Annotated[str | None, typer.Option("--priority", help="P0..P3 or CRITICAL/HIGH/MEDIUM/LOW.")] = None,
    lane: LaneOpt = None,
    dependency: Annotated[list[str] | None, typer.Option("--dependency", help="Key it waits for (repeat).")] = None,
    mission: Annotated[str | None, typer.Option("--mission", help="Mission id.")] = None,
    _json: JsonFlag = True,
) -> None:
    """Create a task (JSON: the task)."""
    do_create(ctx, project, title, description, priority, lane, dependency, mission)


@backlog_app.command("list", cls=ProjectCommand)
def backlog_list(
    ctx: typer.Context,
    project: ProjectOpt,
    mission: Annotated[str | None, typer.Option("--mission", help="Only this mission.")] = None,
    status: Annotated[
        list[str] | None, typer.Option("--status", help="Only these statuses (aliases accepted).")
    ] = None,
    lane: LaneOpt = None,
    _json: JsonFlag = True,
) -> None:
    """List tasks (JSON: an array of tasks)."""
    do_list(ctx, project, mission, status, lane)


@backlog_app.command("claim", cls=ProjectCommand)
def backlog_claim(
    ctx: typer.Context,
    project: ProjectOpt,
    agent: AgentOpt,
    ttl: TtlOpt = None,
    lane: LaneOpt = None,
    _json: JsonFlag = True,
) -> None:
    """Claim the best ready task (JSON: {task, lease} or null); the token is kept locally."""
    do_claim(ctx, project, agent, ttl, lane)


@backlog_app.command("reclaim", cls=ProjectCommand)
def backlog_reclaim(
    ctx: typer.Context, key: KeyArg, project: ProjectOpt, agent: AgentOpt, ttl: TtlOpt = None, _json: JsonFlag = True
) -> None:
    """Take your claim on KEY back: renew the stored lease (JSON: {task, lease}). A lease that already
    expired cannot be revived (another agent may hold the task now): the error says so; claim again."""
    token = _load_token(project, key, _check_agent(agent))

    async def body(conn: Connection) -> Claim:
        lease = await conn.ops.heartbeat(project, key, token, ttl)
        return Claim(task=await conn.ops.get_task(project, key), lease=lease)

    got = call(ctx, body)
    _save_lease(got)
    write_json(_claim_json(got))


@backlog_app.command("link", cls=ProjectCommand)
def backlog_link(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The task that waits.")],
    deps: Annotated[list[str], typer.Argument(metavar="DEP...", help="Keys it should wait for.")],
    project: ProjectOpt,
    _json: JsonFlag = True,
) -> None:
    """Make KEY also wait for DEP… (= qs dep add; JSON: the task)."""
    wanted = split_csv(deps)

    async def body(conn: Connection) -> Task:
        task = await conn.ops.get_task(project, key)
        new = list(task.depends_on) + [d for d in wanted if d not in task.depends_on]
        return await conn.ops.update_task(project, key, {"depends_on": new}, task.version)

    write_json(call(ctx, body))


@backlog_app.command("stats", cls=ProjectCommand)
def backlog_stats(ctx: typer.Context, project: ProjectOpt, _json: JsonFlag = True) -> None:
    """Counts by status (= qs stats; JSON: the stats)."""

    async def body(conn: Connection) -> QueueStats:
        return await conn.ops.stats(project)

    write_json(call(ctx, body))


@backlog_app.command("block", cls=ProjectCommand)
def backlog_block(
    ctx: typer.Context,
    key: KeyArg,
    project: ProjectOpt,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (kept as a note).")] = None,
    _json: JsonFlag = True,
) -> None:
    """Mark KEY blocked (JSON: the task)."""

    async def body(conn: Connection) -> Task:
        task = await conn.ops.update_task(project, key, {"status": TaskStatus.BLOCKED})
        if reason:
            await conn.ops.add_note(project, key, author="cli", text=reason)
        return task

    write_json(call(ctx, body))


@backlog_app.command("complete", cls=ProjectCommand)
def backlog_complete(
    ctx: typer.Context,
    key: KeyArg,
    project: ProjectOpt,
    agent: AgentOpt,
    summary: Annotated[str | None, typer.Option("--summary", help="What was done (stored as the result).")] = None,
    _json: JsonFlag = True,
) -> None:
    """Complete a task claimed here with the stored token (JSON: the task)."""
    do_complete(ctx, project, key, agent, summary)


def register(app: typer.Typer) -> None:
    app.add_typer(queue_app, name="queue", rich_help_panel="Mosaic")
    app.add_typer(backlog_app, name="backlog", rich_help_panel="Mosaic")
