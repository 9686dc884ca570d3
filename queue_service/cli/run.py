"""``run``: the coord-style runner (see queue_service.runner)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from queue_service.cli._core import Connection, JsonOpt, UsageCommand, call, is_json, split_csv, write_json
from queue_service.runner import Runner, RunnerOptions, RunSummary

__all__ = ["register"]


def run(
    ctx: typer.Context,
    project: Annotated[str, typer.Argument(metavar="PROJECT", help="Project slug.")],
    command: Annotated[
        list[str] | None, typer.Argument(metavar="-- COMMAND [ARGS...]", help="The agent command to run per task.")
    ] = None,
    role: Annotated[
        list[str] | None, typer.Option("--role", "-r", help="Only claim these roles (repeat, or comma-separate).")
    ] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", help="Tasks run at the same time.")] = 1,
    lease: Annotated[float | None, typer.Option(help="Lease seconds per claim (default: the service's).")] = None,
    heartbeat: Annotated[float | None, typer.Option(help="Heartbeat period in seconds (default: lease/3).")] = None,
    once: Annotated[
        bool, typer.Option("--once", help="Run at most one task; exit at once if none is ready (see --idle-exit).")
    ] = False,
    max_tasks: Annotated[int | None, typer.Option(help="Exit after this many tasks.")] = None,
    idle_exit: Annotated[
        float | None, typer.Option(help="Exit once no task was ready or running for this many seconds.")
    ] = None,
    agent: Annotated[str | None, typer.Option(envvar="QUEUE_AGENT", help="Agent name (an id is derived).")] = None,
    runtime: Annotated[
        str | None, typer.Option(help="runtime written to session.lock (default: the command's name).")
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(
            "--workdir",
            "--workspace",
            envvar="QUEUE_WORKDIR",
            help="Run the commands and write session.lock here (default: the current directory). "
            "--workspace is an old spelling.",
        ),
    ] = None,
    pass_env: Annotated[
        list[str] | None,
        typer.Option(
            "--pass-env",
            metavar="NAME",
            help="Give the commands this private variable too (repeat), e.g. --pass-env QUEUE_TOKEN.",
        ),
    ] = None,
    grace: Annotated[float, typer.Option(help="Seconds between SIGTERM and SIGKILL when stopping.")] = 5.0,
    json_out: JsonOpt = False,
) -> None:
    """Claim tasks and run COMMAND for each (coord runner).

    The task is JSON on the command's stdin; QUEUE_TASK_KEY, QUEUE_TASK_TITLE and QUEUE_PROJECT are in
    its environment. Exit 0 completes the task (stdout tail as result); any other
    exit is a retryable failure (stderr tail). Ctrl-C/SIGTERM stops the commands and releases their tasks.
    Runs in --workdir (env QUEUE_WORKDIR, default: the current directory), never in a path the server
    names, and writes session.lock and next-task.json in <workdir>/.mosaic/orchestrator/. The commands
    get this environment minus QUEUE_*/MOSAIC_* variables (QUEUE_TOKEN, database URLs) except
    QUEUE_URL; --pass-env NAME passes one anyway.

    Example: qs run web --role dev -c 2 -- claude -p "do the task on stdin"
    """
    if not command:
        from queue_service.cli._core import fail_usage

        raise fail_usage("run needs the command to start after '--', e.g. qs run web -- ./agent.sh")
    options = RunnerOptions(
        project=project,
        command=list(command),
        roles=split_csv(role) or None,
        concurrency=concurrency,
        lease_seconds=lease,
        heartbeat_seconds=heartbeat,
        max_tasks=1 if once else max_tasks,
        idle_exit=(0.0 if idle_exit is None else idle_exit) if once else idle_exit,
        agent_name=agent,
        runtime=runtime,
        workspace=workdir,
        pass_env=tuple(pass_env or ()),
        stop_grace_seconds=grace,
    )
    options.check()
    _setup_logging()

    async def body(conn: Connection) -> RunSummary:
        sweep_seconds = conn.settings.sweep_seconds if conn.settings is not None else 1.0
        opts = RunnerOptions(**{**options.__dict__, "sweep_seconds": sweep_seconds})
        return await Runner(conn.ops, opts, sweep=conn.sweep).run()

    summary = call(ctx, body)
    if is_json(ctx, json_out):
        write_json(summary.to_dict())
    if summary.error:
        sys.stderr.write(f"error: {summary.error}\n")
    raise typer.Exit(summary.exit_code)


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at the time (test runners swap it per invocation)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def _setup_logging() -> None:
    log = logging.getLogger("queue_service.runner")
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def register(app: typer.Typer) -> None:
    """Add ``run`` to the root app."""
    app.command("run", cls=UsageCommand, rich_help_panel="Agents")(run)
