"""``qs agents PROJECT`` and ``qs agent register|heartbeat|drain|route|limit PROJECT …`` (issue 13)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from queue_service import exceptions
from queue_service.agents import Agent
from queue_service.cli._core import (
    Connection,
    JsonOpt,
    ProjectCommand,
    ProjectOpt,
    call,
    dash,
    emit,
    split_csv,
    stdout,
    when,
)
from queue_service.models import ROUTING_STRATEGIES, Project

__all__ = ["agent_app", "parse_labels", "register"]

agent_app = typer.Typer(
    help="Register, heartbeat and drain agents; set a role's routing strategy and concurrency limits.",
    no_args_is_help=True,
)

AgentIdArg = Annotated[str, typer.Argument(metavar="ID", help="Agent id (no spaces or '/').")]


def parse_labels(values: list[str] | None) -> dict[str, str]:
    """``["model=opus", "gpu=yes,os=linux"]`` → a label map (bad items: ValidationError)."""
    out: dict[str, str] = {}
    for item in split_csv(values):
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise exceptions.ValidationError(f"label {item!r}: write NAME=VALUE, e.g. model=opus", label=item)
        out[name.strip()] = value.strip()
    return out


def _agent_table(agents: list[Agent]) -> Table:
    table = Table(header_style="bold")
    for name in ("id", "roles", "labels", "cap", "ready", "last seen", "holding (lease left)", "done", "failed"):
        table.add_column(name, overflow="fold")
    for a in agents:
        state = "drained" if a.drained else ("yes" if a.ready else "no")
        holding = ", ".join(f"{h.key} ({h.lease_seconds_left:.0f}s)" for h in a.holding)
        labels = ", ".join(f"{k}={v}" for k, v in sorted(a.labels.items()))
        table.add_row(
            a.id,
            dash(a.roles),
            dash(labels),
            str(a.capacity),
            state,
            when(a.last_seen),
            dash(holding),
            str(a.done),
            str(a.failed),
        )
    return table


def agents(ctx: typer.Context, project: ProjectOpt, json_out: JsonOpt = False) -> None:
    """List a project's agents: readiness, capacity, what each holds with its lease left, done/failed."""

    async def body(conn: Connection) -> list[Agent]:
        return await conn.ops.list_agents(project)

    found = call(ctx, body)
    emit(
        ctx,
        json_out,
        found,
        lambda: stdout.print(_agent_table(found) if found else f"No agents in {project} yet: qs agent register"),
    )


@agent_app.command("register", cls=ProjectCommand)
def agent_register(
    ctx: typer.Context,
    agent_id: AgentIdArg,
    project: ProjectOpt,
    role: Annotated[
        list[str] | None, typer.Option("--role", "-r", help="A role it takes (repeat or comma-separate; none: any).")
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", help="A label NAME=VALUE, e.g. model=opus (repeat).")
    ] = None,
    capacity: Annotated[int, typer.Option(min=1, max=1000, help="Tasks it may hold at once.")] = 1,
    json_out: JsonOpt = False,
) -> None:
    """Register an agent (or replace its roles, labels and capacity; this also undrains it)."""
    data = {"id": agent_id, "roles": split_csv(role), "labels": parse_labels(label), "capacity": capacity}

    async def body(conn: Connection) -> Agent:
        return await conn.ops.register_agent(project, data)

    agent = call(ctx, body)
    emit(ctx, json_out, agent, lambda: stdout.print(f"Registered [bold]{agent.id}[/] (capacity {agent.capacity})"))


@agent_app.command("heartbeat", cls=ProjectCommand)
def agent_heartbeat(ctx: typer.Context, agent_id: AgentIdArg, project: ProjectOpt, json_out: JsonOpt = False) -> None:
    """Mark the agent alive (it stays ready for QUEUE_AGENT_READY_SECONDS)."""

    async def body(conn: Connection) -> Agent:
        return await conn.ops.agent_heartbeat(project, agent_id)

    agent = call(ctx, body)
    emit(ctx, json_out, agent, lambda: stdout.print(f"{agent.id} is {'ready' if agent.ready else 'not ready'}"))


@agent_app.command("drain", cls=ProjectCommand)
def agent_drain(ctx: typer.Context, agent_id: AgentIdArg, project: ProjectOpt, json_out: JsonOpt = False) -> None:
    """Hand the agent no new work (it keeps what it holds; register it again to undrain)."""

    async def body(conn: Connection) -> Agent:
        return await conn.ops.drain_agent(project, agent_id)

    agent = call(ctx, body)
    emit(ctx, json_out, agent, lambda: stdout.print(f"Drained [bold]{agent.id}[/] ({len(agent.holding)} held)"))


@agent_app.command("route", cls=ProjectCommand)
def agent_route(
    ctx: typer.Context,
    role: Annotated[str, typer.Argument(metavar="ROLE", help="The role whose tasks are routed.")],
    strategy: Annotated[str, typer.Argument(metavar="STRATEGY", help="|".join(ROUTING_STRATEGIES))],
    project: ProjectOpt,
    json_out: JsonOpt = False,
) -> None:
    """Set how a role's tasks are routed: pull (default), round-robin, least-busy or random."""

    async def body(conn: Connection) -> Project:
        current = await conn.ops.get_project(project)
        routing = {**current.routing, role: strategy}
        if strategy == "pull":
            routing.pop(role)
        return await conn.ops.update_project(project, {"routing": routing})

    updated = call(ctx, body)
    emit(ctx, json_out, updated, lambda: stdout.print(f"Role {role} of {project}: {strategy}"))


@agent_app.command("limit", cls=ProjectCommand)
def agent_limit(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(metavar="KEY", help="A concurrency key, or * for keys not listed.")],
    limit: Annotated[int, typer.Argument(metavar="N", help="Most tasks with that key in progress at once.")],
    project: ProjectOpt,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the key's limit instead.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Cap how many tasks with a concurrency key are in progress at once, across all agents."""

    async def body(conn: Connection) -> Project:
        current = await conn.ops.get_project(project)
        limits = dict(current.concurrency_limits)
        if clear:
            limits.pop(key, None)
        else:
            limits[key] = limit
        return await conn.ops.update_project(project, {"concurrency_limits": limits})

    updated = call(ctx, body)
    emit(ctx, json_out, updated, lambda: stdout.print(f"Concurrency limits of {project}: {updated.concurrency_limits}"))


def register(app: typer.Typer) -> None:
    """Add ``agents`` and ``agent …`` to the root app."""
    app.command("agents", cls=ProjectCommand, rich_help_panel="Agents")(agents)
    app.add_typer(agent_app, name="agent", rich_help_panel="Agents")
