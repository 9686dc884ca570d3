"""``qs mcp [PROJECT]``: the MCP tools over stdio, for a local agent CLI (Claude Code, Codex…).

It opens the configured backend in-process, like every local command: stdout carries the MCP
protocol only (messages and errors go to stderr). Against a running server, point the agent at
the server's ``/mcp`` endpoint instead (HTTP, with a bearer token).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Annotated

import typer

from queue_service import exceptions
from queue_service.cli._core import state_of
from queue_service.models import validate_slug
from queue_service.settings import Settings

__all__ = ["mcp", "register"]


def mcp(
    ctx: typer.Context,
    project: Annotated[
        str | None,
        typer.Argument(
            envvar="QUEUE_PROJECT", help="Default project of every tool (else each call names one).", show_default=False
        ),
    ] = None,
) -> None:
    """Serve the MCP tools over stdio (QUEUE_MCP_TOOLS=core|all|readonly picks the tool set)."""
    state = state_of(ctx)
    if state.url:
        raise exceptions.ConfigurationError(
            f"qs mcp serves the local backend; with QUEUE_URL set, connect the agent to {state.url.rstrip('/')}/mcp "
            "(streamable HTTP, Authorization: Bearer <token>) instead"
        )
    slug = validate_slug(project) if project is not None else None
    settings = state.settings()
    # stdout is the protocol channel: anything logged goes to stderr
    logging.basicConfig(stream=sys.stderr, level=settings.log_level.upper())
    if logging.getLogger().level > logging.DEBUG:
        # the SDK logs every request at INFO: noise in the agent CLI's server log
        logging.getLogger("mcp").setLevel(logging.WARNING)
    asyncio.run(_serve(settings, slug))


async def _serve(settings: Settings, project: str | None) -> None:
    from queue_service.mcp_server.server import serve_stdio
    from queue_service.service import QueueService
    from queue_service.sweeper import Sweeper

    backend = settings.build_backend()
    async with backend:
        service = QueueService(
            backend, workspace_root=settings.workspace, agent_lease_seconds=settings.agent_lease_seconds
        )
        if project is not None:
            await service.get_project(project)  # a typo fails here, once, not on every call
        # with no server running, someone has to take expired leases back
        orchestrator = Sweeper(backend, settings.sweep_seconds) if settings.orchestrator else None
        if orchestrator is not None:
            orchestrator.start()
        try:
            await serve_stdio(service, settings, project)
        finally:
            if orchestrator is not None:
                await orchestrator.stop()


def register(app: typer.Typer) -> None:
    """Add ``mcp`` to the root app."""
    app.command("mcp", rich_help_panel="Agents")(mcp)
