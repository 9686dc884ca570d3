"""The FastAPI application: ``create_app(settings)``.

The lifespan opens the backend, refuses to start open to the network (bound to a non-loopback host
with no API token stored), starts the orchestrator monitor when configured, and closes everything
on shutdown. Nothing is module-global: every app has its own backend, service, auth cache and
metrics registry.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.routing import Route

from queue_service import __version__, exceptions
from queue_service.api import (
    errors,
    routes_agents,
    routes_coord,
    routes_dispatch,
    routes_events,
    routes_health,
    routes_projects,
    routes_streams,
    routes_sync,
    routes_tasks,
    routes_tokens,
)
from queue_service.api.auth import Authenticator
from queue_service.api.deps import AppState
from queue_service.api.edge import EdgeMiddleware
from queue_service.api.limits import StreamSlots
from queue_service.api.metrics import Metrics
from queue_service.backend import Backend
from queue_service.mcp_server.http import MCP_PATH, McpEndpoint
from queue_service.service import QueueService
from queue_service.settings import Settings, is_loopback
from queue_service.sweeper import Sweeper
from queue_service.ui import install_ui
from queue_service.workspaces import WorkspacePolicy
from workspace_sync.manager import WorkspaceSyncManager
from workspace_sync.options import SyncOptions

__all__ = ["check_exposure", "create_app"]

logger = logging.getLogger("queue_service.app")


def _make_orchestrator(backend: Backend, interval: float) -> Sweeper:
    """The orchestrator monitor (a seam for tests)."""
    return Sweeper(backend, interval)


async def check_exposure(settings: Settings, backend: Backend) -> None:
    """Refuse to serve without auth on an address other machines can reach.

    Raises:
        ConfigurationError: bound to a non-loopback host and no API token is stored.
    """
    if is_loopback(settings.host):
        return
    if await backend.records.count_api_tokens() == 0:
        raise exceptions.ConfigurationError(
            f"refusing to start: bound to {settings.host}, which other machines can reach, and no API token "
            "exists. Create one first (queue-service token create --role admin) or bind to 127.0.0.1."
        )


def create_app(settings: Settings, backend: Backend | None = None) -> FastAPI:
    """Build the app.

    Args:
        settings: the configuration (``Settings()`` reads the environment).
        backend: use this backend instead of the one ``settings`` name. The app opens it (``open`` is
            idempotent) but does not close it: whoever made it owns it.
    """

    mcp_endpoint = McpEndpoint()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = backend is None
        be = backend or settings.build_backend()
        orchestrator: Sweeper | None = None
        workspace_sync: WorkspaceSyncManager | None = None
        mcp_running: contextlib.AbstractAsyncContextManager[None] | None = None
        try:
            await be.open()
            await check_exposure(settings, be)
            # API callers name workspaces only relative to QUEUE_WORKSPACE (issue 9)
            service = QueueService(
                be,
                workspaces=WorkspacePolicy.from_settings(settings, operator=False),
                agent_lease_seconds=settings.agent_lease_seconds,
            )
            app.state.qs = AppState(
                settings=settings,
                backend=be,
                service=service,
                authenticator=Authenticator(be.records, require_tokens=not is_loopback(settings.host)),
                metrics=Metrics(),
                streams=StreamSlots(settings.max_event_streams),
            )
            # /mcp: the MCP tools over streamable HTTP, on this app's service (issue 11)
            mcp_running = mcp_endpoint.running(app.state.qs)
            await mcp_running.__aenter__()
            if settings.orchestrator:
                orchestrator = _make_orchestrator(be, settings.sweep_seconds)
                orchestrator.start()
            if settings.sync:
                # TASKS.md <-> database for every project with a workspace (workspace_sync.manager)
                workspace_sync = WorkspaceSyncManager(
                    service,
                    SyncOptions(
                        rescan_seconds=settings.sync_rescan_seconds, debounce_seconds=settings.sync_debounce_seconds
                    ),
                )
                await workspace_sync.start()
                app.state.workspace_sync = workspace_sync
            logger.info("queue-service ready on backend %s", be.name)
            yield
        finally:
            if mcp_running is not None:
                try:
                    await mcp_running.__aexit__(None, None, None)
                except Exception:
                    logger.exception("stopping the MCP endpoint failed")
            if workspace_sync is not None:
                try:
                    await workspace_sync.stop()
                except Exception:
                    logger.exception("stopping workspace sync failed")
                app.state.workspace_sync = None
            if orchestrator is not None:
                try:
                    await orchestrator.stop()
                except Exception:
                    logger.exception("stopping the orchestrator failed")
            if owned:
                await be.close()
            app.state.qs = None

    app = FastAPI(
        title="queue-service",
        version=__version__,
        description="Task orchestration for teams of AI agents. Errors are `{error: {code, message, details}}`.",
        lifespan=lifespan,
        # served by install_ui from vendored assets, so they work offline (no CDN)
        docs_url=None,
        redoc_url=None,
    )
    # inside the catch-all (added next), so a failure in an edge check is still a JSON error
    app.add_middleware(EdgeMiddleware, settings=settings)
    errors.install_error_handlers(app)
    for module in (
        routes_health,
        routes_projects,
        routes_tasks,
        routes_dispatch,
        routes_agents,
        routes_events,
        routes_streams,
        routes_coord,
        routes_sync,
        routes_tokens,
    ):
        app.include_router(module.router)
    # a plain route, not a mount: MCP clients POST to /mcp itself (a mount would redirect to /mcp/)
    app.router.routes.append(Route(MCP_PATH, endpoint=mcp_endpoint, include_in_schema=False))
    install_ui(app)
    return app
