"""``project`` and ``mission`` commands."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from queue_service.cli._core import (
    DEFAULT_LIST_LIMIT,
    Connection,
    JsonOpt,
    ListAllOpt,
    ListLimitOpt,
    ProjectCommand,
    ProjectOpt,
    UsageCommand,
    call,
    cut_listing,
    dash,
    emit,
    is_json,
    note_cut,
    split_csv,
    stdout,
    when,
)
from queue_service.models import Milestone, Mission, MissionStatus, Project

__all__ = ["mission_app", "project_app"]

project_app = typer.Typer(help="Create and list projects.", no_args_is_help=True)
mission_app = typer.Typer(help="Create and list missions (plans with milestones and a TASKS.md).", no_args_is_help=True)


def _project_table(projects: list[Project]) -> Table:
    table = Table(header_style="bold")
    for name in ("slug", "name", "prefix", "workspace", "created"):
        table.add_column(name, overflow="fold")
    for p in projects:
        table.add_row(p.slug, p.name, p.key_prefix, dash(p.workspace), when(p.created_at))
    return table


@project_app.command("create", cls=UsageCommand)
def project_create(
    ctx: typer.Context,
    slug: Annotated[str, typer.Argument(help="Project slug: lowercase letters, digits and dashes.")],
    name: Annotated[str | None, typer.Option(help="Display name (default: the slug).")] = None,
    prefix: Annotated[str | None, typer.Option(help="Task key prefix, e.g. WEB (default: from the slug).")] = None,
    workspace: Annotated[
        str | None,
        typer.Option(
            help="Workspace directory, relative to QUEUE_WORKSPACE (default <root>/<slug>); without "
            "QUEUE_WORKSPACE and no server, a directory on this machine."
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a project (and its default mission)."""
    data: dict[str, object] = {"slug": slug, "name": name, "key_prefix": prefix, "workspace": workspace}

    async def body(conn: Connection) -> Project:
        return await conn.ops.create_project({k: v for k, v in data.items() if v is not None})

    project = call(ctx, body)
    emit(
        ctx,
        json_out,
        project,
        lambda: stdout.print(f"Created project [bold]{project.slug}[/] (keys {project.key_prefix}-N)"),
    )


@project_app.command("list")
def project_list(
    ctx: typer.Context,
    limit: ListLimitOpt = DEFAULT_LIST_LIMIT,
    all_: ListAllOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """List projects (the first 20 unless --limit N or --all)."""

    async def body(conn: Connection) -> list[Project]:
        return await conn.ops.list_projects()

    projects, cut = cut_listing(call(ctx, body), limit, all_)

    def human() -> None:
        stdout.print(_project_table(projects) if projects else "No projects yet: qs project create SLUG")
        if cut:
            stdout.print(cut, markup=False)

    emit(ctx, json_out, projects, human)
    if cut and is_json(ctx, json_out):
        note_cut(cut)


@project_app.command("show", cls=UsageCommand)
def project_show(
    ctx: typer.Context,
    slug: Annotated[str, typer.Argument(help="Project slug.")],
    json_out: JsonOpt = False,
) -> None:
    """Show one project."""

    async def body(conn: Connection) -> Project:
        return await conn.ops.get_project(slug)

    project = call(ctx, body)
    emit(ctx, json_out, project, lambda: stdout.print(_project_table([project])))


def _parse_milestones(values: list[str]) -> list[Milestone]:
    """``id:name`` or just ``name`` (id = its position, ``M1``…)."""
    out = []
    for i, v in enumerate(split_csv(values), start=1):
        mid, sep, name = v.partition(":")
        if not sep:
            mid, name = f"M{i}", v
        out.append(Milestone(id=mid.strip(), name=name.strip()))
    return out


@mission_app.command("create", cls=ProjectCommand)
def mission_create(
    ctx: typer.Context,
    mission_id: Annotated[str, typer.Argument(metavar="ID", help="Mission id (a slug).")],
    project: ProjectOpt,
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    milestone: Annotated[
        list[str] | None,
        typer.Option("--milestone", "-m", help="A milestone as ID:NAME (repeat, or comma-separate), in order."),
    ] = None,
    status: Annotated[MissionStatus, typer.Option(help="Mission status.")] = MissionStatus.ACTIVE,
    tasks_file: Annotated[
        str | None, typer.Option(help="Its TASKS.md, relative to the workspace (default TASKS.md).")
    ] = None,
    quality_gate: Annotated[
        list[str] | None,
        typer.Option("--quality-gate", help="A command that must pass (coord's quality_gates; repeat)."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a mission in a project.

    Example: qs mission create web launch -m m1:Design -m m2:Build
    """
    data: dict[str, object] = {"id": mission_id, "status": status}
    if name is not None:
        data["name"] = name
    if tasks_file is not None:
        data["tasks_file"] = tasks_file
    data["milestones"] = _parse_milestones(milestone or [])
    if quality_gate:
        data["quality_gates"] = quality_gate

    async def body(conn: Connection) -> Mission:
        return await conn.ops.create_mission(project, data)

    mission = call(ctx, body)
    emit(ctx, json_out, mission, lambda: stdout.print(f"Created mission [bold]{mission.id}[/] in {project}"))


@mission_app.command("list", cls=ProjectCommand)
def mission_list(
    ctx: typer.Context,
    project: ProjectOpt,
    limit: ListLimitOpt = DEFAULT_LIST_LIMIT,
    all_: ListAllOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """List a project's missions (the first 20 unless --limit N or --all)."""

    async def body(conn: Connection) -> list[Mission]:
        return await conn.ops.list_missions(project)

    missions, cut = cut_listing(call(ctx, body), limit, all_)

    def human() -> None:
        table = Table(header_style="bold")
        for col in ("id", "name", "status", "milestones", "tasks file"):
            table.add_column(col, overflow="fold")
        for m in missions:
            stones = ", ".join(f"{s.id}:{s.name}" for s in m.milestones)
            table.add_row(m.id, m.name, m.status.value, dash(stones), m.tasks_file)
        stdout.print(table)
        if cut:
            stdout.print(cut, markup=False)

    emit(ctx, json_out, missions, human)
    if cut and is_json(ctx, json_out):
        note_cut(cut)
