"""The MCP server (official ``mcp`` SDK, low-level ``Server``) and its stdio transport.

One server definition serves both transports: ``qs mcp [PROJECT]`` runs it over stdio here, and
``serve`` mounts it at ``/mcp`` (``mcp_server.http``). They differ only in how a call learns who is
calling (``ContextFactory``): stdio runs with the local user's full rights, as the local CLI does;
HTTP with the bearer token's role and project.

The low-level server is used (not ``MCPServer``) because the advertised schemas are ours: compact,
generated from the argument models in ``mcp_server.tools``, so the ``core`` profile's ``tools/list``
stays within its context budget.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.types import (
    CallToolRequestParams,
    CallToolResult,
    ListToolsResult,
    PaginatedRequestParams,
    TextContent,
    Tool,
    ToolAnnotations,
)

from queue_service import __version__, exceptions
from queue_service.auth import Principal
from queue_service.mcp_server import tools
from queue_service.service import QueueService, new_agent_id
from queue_service.settings import Settings

__all__ = ["ContextFactory", "build_server", "error_result", "list_tools_payload", "serve_stdio"]

logger = logging.getLogger("queue_service.mcp")

#: builds the ToolContext of one call from the SDK's request context (raises AuthError to refuse)
ContextFactory = Callable[[ServerRequestContext[Any, Any]], Awaitable[tools.ToolContext]]

_INSTRUCTIONS = (
    "Task queue for agents. Loop: claim_next -> do the work (add_note to report progress) -> complete "
    "(or fail / release). Keep the token claim_next returns; calls with it renew your lease."
)


def _tool(spec: tools.ToolSpec) -> Tool:
    annotations = ToolAnnotations(read_only_hint=True) if spec.read_only else None
    return Tool(
        name=spec.name, description=spec.description, input_schema=tools.input_schema(spec), annotations=annotations
    )


def list_tools_payload(profile: tools.Profile) -> list[dict[str, Any]]:
    """The ``tools`` of a ``tools/list`` answer for *profile*, as sent on the wire."""
    return [_tool(spec).model_dump(mode="json", by_alias=True, exclude_none=True) for spec in tools.tools_for(profile)]


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def error_result(exc: exceptions.QueueServiceError) -> CallToolResult:
    """A refused call as an MCP tool error: our code, message and details, readable by the model."""
    body = exc.to_dict()
    if exc.http_status >= 500 and exc.http_status != 503:
        # our 5xx messages are ours, but details may carry driver text: log them, don't send them
        logger.error("MCP tool failed: %s: %s %r", exc.code, exc.message, exc.details)
        body = {"code": exc.code, "message": exc.message, "details": {}}
    text = f"{body['code']}: {body['message']}"
    if body["details"]:
        text += " " + _json(body["details"])
    return CallToolResult(
        content=[TextContent(type="text", text=text)], structured_content={"error": body}, is_error=True
    )


def build_server(context: ContextFactory, profile: tools.Profile) -> Server[Any]:
    """The MCP server serving *profile*'s tools; each call runs with ``context(request)``."""
    served = {spec.name: spec for spec in tools.tools_for(profile)}
    listing = [_tool(spec) for spec in served.values()]

    async def list_tools(
        _ctx: ServerRequestContext[Any, Any], _params: PaginatedRequestParams | None
    ) -> ListToolsResult:
        return ListToolsResult(tools=listing)

    async def call_tool(ctx: ServerRequestContext[Any, Any], params: CallToolRequestParams) -> CallToolResult:
        try:
            if params.name not in served:
                raise exceptions.ValidationError(
                    f"unknown tool {params.name!r} in the {profile!r} profile (QUEUE_MCP_TOOLS)", tool=params.name
                )
            record = await tools.run_tool(await context(ctx), params.name, params.arguments)
        except exceptions.QueueServiceError as exc:
            return error_result(exc)
        except Exception:
            logger.exception("MCP tool %s raised", params.name)
            return error_result(exceptions.QueueServiceError("internal error; see the server log"))
        return CallToolResult(content=[TextContent(type="text", text=_json(record))], structured_content=record)

    def schema_of(name: str) -> Mapping[str, Any] | None:
        spec = served.get(name)
        return tools.input_schema(spec) if spec is not None else None

    return Server(
        "queue-service",
        version=__version__,
        instructions=_INSTRUCTIONS,
        get_tool_input_schema=schema_of,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


async def serve_stdio(service: QueueService, settings: Settings, project: str | None) -> None:
    """Serve the MCP tools over stdin/stdout until the client closes them (``qs mcp``)."""
    tool_context = tools.ToolContext(
        service=service,
        principal=Principal.open(),
        default_project=project,
        agent_lease_seconds=settings.agent_lease_seconds,
        default_agent=new_agent_id("mcp"),
    )

    async def context(_ctx: ServerRequestContext[Any, Any]) -> tools.ToolContext:
        return tool_context

    server = build_server(context, settings.mcp_tools)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())
