"""``export`` and ``import``: move a project between backends as JSONL (see queue_service.snapshot)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from queue_service import exceptions, snapshot
from queue_service.cli._core import (
    Connection,
    JsonOpt,
    ProjectCommand,
    ProjectOpt,
    SnapshotOps,
    UsageCommand,
    call,
    emit,
    plural,
    stdout,
)
from queue_service.models import Project, ProjectSnapshot

__all__ = ["register"]


def export(
    ctx: typer.Context,
    project: ProjectOpt,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")] = None,
) -> None:
    """Write a project (tasks, missions, notes, events, versions) as JSONL to stdout."""

    async def body(conn: Connection) -> tuple[ProjectSnapshot, str]:
        return await _storage(conn, "export").export_project(project), conn.source

    snap, source = call(ctx, body)
    if output is None:
        snapshot.dump(snap, sys.stdout, source=source)
        sys.stdout.flush()
        return
    tmp = output.with_name(output.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8", newline="\n") as fh:
            snapshot.dump(snap, fh, source=source)
        tmp.replace(output)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise exceptions.ValidationError(f"cannot write {output}: {exc.strerror or exc}") from None
    sys.stderr.write(f"exported {snap.project.slug}: {plural(len(snap.tasks), 'task')} to {output}\n")


def import_(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(metavar="FILE", help="An export file, or '-' for stdin.")],
    json_out: JsonOpt = False,
) -> None:
    """Recreate an exported project in the configured backend (refused if the slug exists)."""
    try:
        if file == "-":
            snap = snapshot.load(sys.stdin)
        else:
            with open(file, encoding="utf-8") as fh:
                snap = snapshot.load(fh)
    except OSError as exc:
        raise exceptions.ValidationError(f"cannot read {file}: {exc.strerror or exc}") from None
    except snapshot.SnapshotError as exc:
        raise snapshot.SnapshotError(f"{'stdin' if file == '-' else file}: {exc.message}", **exc.details) from None

    async def body(conn: Connection) -> Project:
        return await _storage(conn, "import").import_project(snap)

    project = call(ctx, body)
    emit(
        ctx,
        json_out,
        {"project": project, "tasks": len(snap.tasks), "notes": len(snap.notes), "events": len(snap.events)},
        lambda: stdout.print(
            f"Imported project [bold]{project.slug}[/]: {plural(len(snap.tasks), 'task')}, "
            f"{plural(len(snap.missions), 'mission')}, {plural(len(snap.notes), 'note')}, "
            f"{plural(len(snap.events), 'event')}"
        ),
    )


def _storage(conn: Connection, verb: str) -> SnapshotOps:
    """The connection's storage for *verb*: REST has no export/import, so a server URL is refused."""
    if not isinstance(conn.ops, SnapshotOps):
        raise exceptions.ConfigurationError(
            f"{verb} works on the storage directly, not through a server: unset QUEUE_URL and point "
            "QUEUE_DATABASE_URL/QUEUE_VALKEY_URL (or QUEUE_DATA_DIR) at the backend"
        )
    return conn.ops


def register(app: typer.Typer) -> None:
    """Add these commands to the root app."""
    app.command("export", cls=ProjectCommand, rich_help_panel="Move")(export)
    app.command("import", cls=UsageCommand, rich_help_panel="Move")(import_)
