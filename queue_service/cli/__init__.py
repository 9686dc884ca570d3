"""The ``queue-service`` command line (alias ``qs``).

Every data command is written once against :class:`~queue_service.cli._core.QueueOps`: with
``QUEUE_URL`` set it talks to that server through the REST client (bearer ``QUEUE_TOKEN``), otherwise
it opens the configured backend in-process (``QUEUE_DATABASE_URL``…, default flatfile in
``./.queue-data``), so a solo user needs no server. Tables are for people; ``--json`` prints
machine-readable JSON on stdout.

Errors print one line, ``error: <message>``, on stderr and exit non-zero: 1 for domain errors
(validation, not found, conflict, lease, auth), 2 for usage or configuration errors, 3 when the
backend or server is unavailable, 130 after Ctrl-C.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from queue_service import exceptions
from queue_service.cli import admin, agent_loop, agents, dispatch, mcp, mosaic_queue, sync, transfer, watch
from queue_service.cli import run as run_cmd
from queue_service.cli._core import (
    EXIT_DOMAIN,
    EXIT_INTERRUPTED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CliState,
    env_flag,
    exit_code_for,
    usage_message,
)
from queue_service.cli.projects import mission_app, project_app
from queue_service.cli.tasks import task_app

__all__ = ["app", "main"]


class _Group(TyperGroup):
    """The root group: turns every error into one ``error:`` line and an exit code."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        code = self._run(args, prog_name, complete_var, windows_expand_args, **extra)
        if standalone_mode:
            sys.exit(code)
        return code

    def _run(
        self,
        args: Sequence[str] | None,
        prog_name: str | None,
        complete_var: str | None,
        windows_expand_args: bool,
        **extra: Any,
    ) -> int:
        try:
            rv = super().main(
                args=args,
                prog_name=prog_name,
                complete_var=complete_var,
                standalone_mode=False,
                windows_expand_args=windows_expand_args,
                **extra,
            )
        except typer.Abort:
            _error("aborted")
            return EXIT_INTERRUPTED
        except KeyboardInterrupt:
            _error("interrupted")
            return EXIT_INTERRUPTED
        except exceptions.QueueServiceError as exc:
            _error(exc.message)
            return exit_code_for(exc)
        except (ConnectionError, TimeoutError) as exc:
            _error(f"cannot reach the service: {exc}")
            return EXIT_UNAVAILABLE
        except BrokenPipeError:
            return EXIT_DOMAIN  # stdout closed early (| head): nothing more to say
        except Exception as exc:
            if _is_click_error(exc):
                # Usage errors (exit 2) and other command-line errors from typer's click.
                _error(usage_message(exc))
                return int(getattr(exc, "exit_code", EXIT_USAGE))
            # A bug, not an expected error: keep the traceback available, but one line by default.
            if env_flag("QUEUE_DEBUG"):
                traceback.print_exc()
            _error(f"unexpected {type(exc).__name__}: {exc} (set QUEUE_DEBUG=1 for the traceback)")
            return EXIT_DOMAIN
        return rv if isinstance(rv, int) else 0


def _is_click_error(exc: BaseException) -> bool:
    # typer vendors its own click, whose exception classes are private: recognise them by shape.
    return callable(getattr(exc, "format_message", None)) and isinstance(getattr(exc, "exit_code", None), int)


def _error(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


app = typer.Typer(
    cls=_Group,
    name="queue-service",
    help="Task orchestration for teams of AI agents. Set QUEUE_URL to use a server; otherwise the configured "
    "backend is opened directly (flatfile in ./.queue-data by default).",
    no_args_is_help=True,
    # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from queue_service import __version__

        sys.stdout.write(f"queue-service {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _root(
    ctx: typer.Context,
    url: Annotated[
        str | None, typer.Option(envvar="QUEUE_URL", help="Server URL; unset = open the backend directly.")
    ] = None,
    token: Annotated[str | None, typer.Option(envvar="QUEUE_TOKEN", help="Bearer token for --url.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="JSON output for every command.")] = False,
    version: Annotated[  # noqa: ARG001 - handled by its eager callback
        bool, typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit.")
    ] = False,
) -> None:
    state = ctx.obj if isinstance(ctx.obj, CliState) else CliState()
    state.url = url or None
    state.token = token or None
    state.json = state.json or json_out
    ctx.obj = state


app.add_typer(project_app, name="project", rich_help_panel="Plan")
app.add_typer(mission_app, name="mission", rich_help_panel="Plan")
app.add_typer(task_app, name="task", rich_help_panel="Plan")
agent_loop.register(app)  # claim, next, ready, prime (Agents); dead-letter (Observe); dep (Plan)
agents.register(app)  # agents, agent register|heartbeat|drain|route|limit (Agents, issue 13)
dispatch.register(app)  # heartbeat, complete, fail, release (Agents); stats, events (Observe)
run_cmd.register(app)  # run (Agents)
mcp.register(app)  # mcp (Agents): the MCP tools over stdio
transfer.register(app)  # export, import (Move)
mosaic_queue.register(app)  # issue 18: qs queue / qs backlog (Mosaic CLI parity)
admin.register(app)  # serve, migrate, token (Operate)
sync.register(app)  # sync (Plan): TASKS.md <-> service, see workspace_sync
watch.register(app)  # watch (Observe): follow a task's output stream (issue 14)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``queue-service`` and ``qs``)."""
    command = typer.main.get_command(app)
    command.main(args=list(argv) if argv is not None else None, prog_name=_prog_name())


def _prog_name() -> str:
    import os

    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "queue-service"
    return name if name in {"qs", "queue-service"} else "queue-service"
