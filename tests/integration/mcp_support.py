"""Helpers for the MCP tests: seeded projects, a real ``qs mcp`` subprocess, a real uvicorn server,
and the SDK client (``mcp.Client``) talking to either."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.types import CallToolResult

from queue_service.app import create_app
from queue_service.backend import Backend
from queue_service.service import QueueService
from queue_service.settings import Settings

__all__ = [
    "call",
    "error_of",
    "free_port",
    "http_client",
    "record_of",
    "running_app",
    "seed",
    "stdio_client",
]


async def seed(service: QueueService, project: str = "web", tasks: int = 3) -> None:
    """Project *project* with *tasks* independent tasks (the first is P1, the rest P2)."""
    await service.create_project({"slug": project})
    items = [
        {"title": f"task {i}", "description": f"do thing {i}", "priority": "P1" if i == 1 else "P2"}
        for i in range(1, tasks + 1)
    ]
    await service.create_tasks(project, items)


def stdio_client(data_dir: Path, *args: str, env: dict[str, str] | None = None, mode: str = "auto") -> Client:
    """The SDK client driving ``python -m queue_service mcp ARGS`` on a flatfile data dir."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("QUEUE_", "MOSAIC_"))}
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "queue_service", "mcp", *args],
        env={**base, "QUEUE_DATA_DIR": str(data_dir), **(env or {})},
    )
    return Client(params, mode=mode)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def running_app(settings: Settings, backend: Backend) -> AsyncIterator[str]:
    """The real app under a real uvicorn on a free loopback port; yields the base URL."""
    port = free_port()
    config = uvicorn.Config(create_app(settings, backend), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()  # surfaces why it could not start
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def http_client(base_url: str, token: str | None = None, mode: str = "auto") -> AsyncIterator[Client]:
    """The SDK client over streamable HTTP at ``/mcp``, sending *token* as the bearer token.

    *mode* ``legacy`` speaks the initialize handshake of today's agent CLIs; ``auto`` the newest protocol.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with create_mcp_http_client(headers=headers) as http:
        async with Client(streamable_http_client(f"{base_url}/mcp", http_client=http), mode=mode) as client:
            yield client


async def call(client: Client, tool: str, **arguments: Any) -> CallToolResult:
    return await client.call_tool(tool, arguments)


def record_of(result: CallToolResult) -> dict[str, Any]:
    """The JSON record of a successful call (asserting it succeeded); text and structured agree."""
    assert not result.is_error, result.content
    text = result.content[0].text  # type: ignore[union-attr]
    record = json.loads(text)
    assert record == result.structured_content
    assert isinstance(record, dict)
    return record


def error_of(result: CallToolResult) -> dict[str, Any]:
    """The ``{code, message, details}`` of a refused call (asserting it was refused)."""
    assert result.is_error, result.content
    error = result.structured_content["error"]  # type: ignore[index]
    text = result.content[0].text  # type: ignore[union-attr]
    assert text.startswith(f"{error['code']}: {error['message']}")
    assert isinstance(error, dict)
    return error
