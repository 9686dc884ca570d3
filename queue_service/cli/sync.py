"""``sync``: two-way sync of a project's TASKS.md files with the service (see workspace_sync).

``queue-service sync PROJECT`` runs one cycle per mission file and exits; ``--watch`` keeps syncing
(watchdog + events + periodic rescan) until Ctrl-C/SIGTERM; ``--status`` only shows the stored sync
state (errors with line:column, recent conflicts, problems) and also works against a server
(``QUEUE_URL``) through ``GET /v1/projects/{project}/sync``.

The sync itself needs the files, so it runs against the local backend (a server already syncs every
project with a workspace inside ``serve``; a file lock keeps the two from syncing one file at once).
Exit status: 0 when every file synced cleanly, 1 when a row carries a ``sync-error`` marker or a file
has a problem (for example a missing workspace).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Annotated, Any

import typer

from queue_service import exceptions
from queue_service.cli._core import (
    EXIT_DOMAIN,
    Connection,
    JsonOpt,
    ProjectCommand,
    ProjectOpt,
    call,
    emit,
    is_json,
    plural,
    state_of,
    stdout,
)
from queue_service.settings import Settings

__all__ = ["register"]


def _print_status(status: dict[str, Any]) -> None:
    if not status.get("workspace"):
        stdout.print(f"Project {status['project']} has no workspace: nothing to sync.", markup=False)
        return
    stdout.print(f"Project {status['project']} — workspace {status['workspace']}", markup=False)
    if status.get("watch_fallback"):
        stdout.print(f"  watching by polling: {status['watch_fallback']}", markup=False)
    for entry in status.get("files", []):
        state = "synced " + str(entry.get("synced_at")) if entry.get("synced") else "never synced"
        if entry.get("pending"):
            state += "; the file changed since (edits pending: run `qs sync` or start the server)"
        if entry.get("kind") == "manifest":  # coord's MISSION-MANIFEST.md (issue 18)
            count = plural(entry.get("milestones", 0), "milestone")
        else:
            count = plural(entry["tasks"], "task")
        stdout.print(f"  {entry['path']} (mission {entry['mission']}): {state}, {count}", markup=False)
        if entry.get("problem"):
            stdout.print(f"    problem: {entry['problem']}", markup=False)
        if entry.get("note"):
            stdout.print(f"    note: {entry['note']}", markup=False)
        for error in entry.get("errors", []):
            key = f" [{error['key']}]" if error.get("key") else ""
            stdout.print(f"    error {error['line']}:{error['column']}{key}: {error['message']}", markup=False)
        for conflict in entry.get("conflicts", []):
            stdout.print(
                f"    conflict {conflict['key']} {conflict['field']}: kept {conflict['kept']!r} ({conflict['rule']})",
                markup=False,
            )


def _print_report(report: dict[str, Any]) -> None:
    parts = [
        f"{name} {len(report[name])}"
        for name in ("created", "updated", "cancelled", "restored", "appended", "conflicts")
        if report[name]
    ]
    what = ", ".join(parts) or "no changes"
    if report.get("adopted"):
        what = "adopted existing file; " + what
    wrote = "file written" if report.get("wrote") else "file unchanged"
    stdout.print(f"{report['path']}: {what}; {wrote}", markup=False)
    if report.get("problem"):
        stdout.print(f"  problem: {report['problem']}", markup=False)
    for error in report.get("errors", []):
        stdout.print(f"  {report['path']}:{error['line']}:{error['column']}: {error['message']}", markup=False)


def _print_reports(reports: list[dict[str, Any]]) -> None:
    for report in reports:
        _print_report(report)


def _has_trouble(files: list[dict[str, Any]]) -> bool:
    return any(f.get("errors") or f.get("problem") for f in files)


async def _remote_status(url: str, token: str | None, project: str) -> dict[str, Any]:
    import httpx

    from queue_service.client import error_from_response

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30.0) as client:
        response = await client.get(f"/v1/projects/{project}/sync")
    if response.status_code >= 400:
        raise error_from_response(response)
    data: dict[str, Any] = response.json()
    return data


def sync(
    ctx: typer.Context,
    project: ProjectOpt,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Keep syncing until Ctrl-C.")] = False,
    status: Annotated[bool, typer.Option("--status", help="Only show the sync status (errors, conflicts).")] = False,
    strict_coord: Annotated[
        bool, typer.Option("--strict-coord", help="Write new files with exactly coord's nine columns.")
    ] = False,
    polling: Annotated[bool, typer.Option("--polling", help="Watch by polling instead of inotify.")] = False,
    accept_file: Annotated[
        bool,
        typer.Option(
            "--accept-file",
            help="Apply what the file says even where it goes backwards (changes held with a conflict marker).",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Sync PROJECT's TASKS.md files with the service (two-way, conflict-safe).

    Rows you edit, add (id `+`) or delete in TASKS.md reach the service; changes made through the API
    or by agents are written back. Rows that cannot be applied get a `<!-- sync-error: … -->` marker
    and are listed here with their line and column.

    Example: qs sync web --watch
    """
    state = state_of(ctx)
    state.solo_sync = False  # this command syncs by itself; --status must not merge anything
    if status and state.url and state.connect is None:
        result = asyncio.run(_remote_status(state.url, state.token, project))
        emit(ctx, json_out, result, lambda: _print_status(result))
        if _has_trouble(result.get("files", [])):
            raise typer.Exit(EXIT_DOMAIN)
        return

    async def body(conn: Connection) -> dict[str, Any]:
        from queue_service.service import QueueService
        from queue_service.workspaces import locate_workspace
        from workspace_sync import safe_files
        from workspace_sync.engine import FileSync, SyncReport, mission_path
        from workspace_sync.layout import locate_mission_files
        from workspace_sync.manager import WorkspaceSyncManager, sync_status
        from workspace_sync.options import SyncOptions

        service = conn.ops
        if not isinstance(service, QueueService):
            raise exceptions.ConfigurationError(
                "sync needs the files and the backend on this machine: unset QUEUE_URL (a server syncs "
                "projects with a workspace by itself; see `qs sync PROJECT --status`)"
            )
        if status:
            return await sync_status(service, project)
        proj = await service.get_project(project)
        if not proj.workspace:
            raise exceptions.ValidationError(
                f"project {project} has no workspace; set one with PATCH /v1/projects/{project} (workspace)"
            )
        if watch:
            settings = conn.settings or Settings()
            options = SyncOptions(
                rescan_seconds=settings.sync_rescan_seconds,
                debounce_seconds=settings.sync_debounce_seconds,
                strict_coord=strict_coord,
            )
            manager = WorkspaceSyncManager(service, options, projects=[project], polling=polling)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, stop.set)
            async with manager:
                if not is_json(ctx, json_out):
                    stdout.print(f"Syncing {project} in {proj.workspace} (Ctrl-C to stop)…", markup=False)
                await stop.wait()
                return await manager.status(project)
        located = locate_workspace(service.workspaces, proj, await service.list_projects())
        if isinstance(located, str):
            raise exceptions.ValidationError(f"project {project}: {located}")
        if located.parts:  # below QUEUE_WORKSPACE: created as the server's sync would
            with contextlib.suppress(OSError, safe_files.UnsafeFile):
                await asyncio.to_thread(safe_files.ensure_directory, located)
        reports = []
        missions = await service.list_missions(project)
        for mission, target in await locate_mission_files(service, service.workspaces, project, located, missions):
            if isinstance(target, str):
                path = mission_path(proj.workspace, mission)
                reports.append(SyncReport(path=str(path), problem=target).to_dict())
                continue
            file_sync = FileSync(service, project, mission.id, target.path, strict_coord=strict_coord, target=target)
            reports.append((await file_sync.sync(force=True, accept_file=accept_file)).to_dict())
        return {"project": project, "reports": reports}

    result = call(ctx, body)
    if status or watch:
        emit(ctx, json_out, result, lambda: _print_status(result))
        files = result.get("files", [])
    else:
        emit(ctx, json_out, result, lambda: _print_reports(result["reports"]))
        files = result["reports"]
    if _has_trouble(files):
        raise typer.Exit(EXIT_DOMAIN)


def register(app: typer.Typer) -> None:
    """Add ``sync`` to the root app."""
    app.command("sync", cls=ProjectCommand, rich_help_panel="Plan")(sync)
