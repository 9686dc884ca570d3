"""``/mcp``: the MCP server over streamable HTTP, inside the FastAPI app, behind the API's tokens.

The endpoint authenticates the ``Authorization: Bearer`` token exactly as ``/v1`` does (same
:class:`~queue_service.api.auth.Authenticator`; 401 in the API's error shape before the body is
read), and each tool then checks the token's role and project (viewer reads, agent works, admin
creates) as the REST routes do.

The SDK's session manager runs stateless with JSON responses: every POST is one self-contained
exchange, so any replica can answer it and no per-client state lives in the process. Host/Origin
checks and body caps are the app's middleware's job (one rule for ``/v1`` and ``/mcp``), so the
SDK's own DNS-rebinding check is left off; its body cap is set to ``QUEUE_MAX_BODY_BYTES``.

The SDK is imported and its session manager started at the first ``/mcp`` request, not when the
app is built: importing it costs seconds of CPU (issue 11) that a server nobody asks for MCP never
needs to pay. The manager runs in a task of its own (its task group must enter and exit in one
task), stopped when the app's lifespan ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from queue_service import exceptions
from queue_service.api.deps import AppState
from queue_service.api.errors import error_response
from queue_service.auth import Principal
from queue_service.mcp_server import tools

if TYPE_CHECKING:
    from mcp.server import ServerRequestContext
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

__all__ = ["MCP_PATH", "McpEndpoint"]

MCP_PATH = "/mcp"
#: where the endpoint leaves the authenticated caller for the tools (the ASGI scope of the request)
_PRINCIPAL = "queue_service.principal"


def _bearer(scope: Scope) -> str | None:
    value = Headers(scope=scope).get("authorization")
    if not value:
        return None
    scheme, _, credential = value.partition(" ")
    return credential.strip() or None if scheme.lower() == "bearer" else None


class McpEndpoint:
    """The ASGI app at ``/mcp``. :meth:`running` (entered by the app's lifespan) starts it."""

    def __init__(self) -> None:
        self._manager: StreamableHTTPSessionManager | None = None
        self._state: AppState | None = None
        self._runner: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._starting = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def running(self, state: AppState) -> AsyncIterator[None]:
        """Serve MCP requests with *state*'s service until exit; the SDK starts at the first request
        (a session manager runs only once, so every lifespan gets a new one)."""
        self._state = state
        try:
            yield
        finally:
            runner, stop = self._runner, self._stop
            self._manager = self._state = self._runner = self._stop = None
            if runner is not None and stop is not None:
                stop.set()
                with contextlib.suppress(asyncio.CancelledError):
                    await runner

    async def _started(self, state: AppState) -> StreamableHTTPSessionManager:
        """The running session manager, imported and started on first use."""
        async with self._starting:
            if self._manager is not None:
                return self._manager
            from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

            from queue_service.mcp_server.server import build_server

            server = build_server(self._context, state.settings.mcp_tools)
            manager = StreamableHTTPSessionManager(
                app=server,
                json_response=True,
                stateless=True,
                security_settings=None,
                max_request_body_size=state.settings.max_body_bytes,
            )
            ready, stop = asyncio.Event(), asyncio.Event()

            async def run() -> None:
                async with manager.run():
                    ready.set()
                    await stop.wait()

            runner = asyncio.create_task(run(), name="mcp session manager")
            waiter = asyncio.create_task(ready.wait())
            await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if runner.done():
                runner.result()  # the manager failed to start: raise its error
            self._manager, self._runner, self._stop = manager, runner, stop
            return manager

    async def _context(self, ctx: ServerRequestContext[Any, Any]) -> tools.ToolContext:
        state = self._state
        scope = getattr(ctx.request, "scope", None)
        principal = scope.get(_PRINCIPAL) if isinstance(scope, dict) else None
        if state is None or not isinstance(principal, Principal):
            # never fall back to an open caller: a call that did not come through __call__ is refused
            raise exceptions.AuthError("this MCP call carries no authenticated caller")
        return tools.ToolContext(
            service=state.service,
            principal=principal,
            default_project=None,
            agent_lease_seconds=state.settings.agent_lease_seconds,
            default_agent=f"mcp:{principal.actor}",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self._state
        if scope["type"] != "http":
            return
        if state is None:
            response = error_response(503, "backend_unavailable", "the service is not started")
            await response(scope, receive, send)
            return
        try:
            principal = await state.authenticator.authenticate(_bearer(scope))
        except exceptions.QueueServiceError as exc:
            headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else None
            await error_response(exc.http_status, exc.code, exc.message, exc.details, headers)(scope, receive, send)
            return
        manager = await self._started(state)
        await manager.handle_request({**scope, _PRINCIPAL: principal}, receive, send)
