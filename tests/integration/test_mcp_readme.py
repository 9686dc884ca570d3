"""The README's MCP snippets, run as written: the command ``claude mcp add`` registers and the
``.mcp.json`` entries are started/contacted exactly as an agent CLI would, with the SDK's client."""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from mcp import Client, StdioServerParameters

from flatfile.backend import FlatfileBackend
from queue_service import auth
from queue_service.models import TaskStatus
from queue_service.service import QueueService
from queue_service.settings import Settings
from tests.integration.mcp_support import call, http_client, record_of, running_app, seed

_README = Path(__file__).resolve().parents[2] / "README.md"


def _mcp_section() -> str:
    text = _README.read_text(encoding="utf-8")
    start = text.index("### MCP")  # a subsection of "For agents"
    return text[start : text.index("\n## ", start)]


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", _mcp_section(), flags=re.S)


def _servers() -> list[dict[str, Any]]:
    return [json.loads(block)["mcpServers"]["queue"] for block in _blocks("json")]


async def _three_calls(client: Client) -> str:
    claimed = record_of(await call(client, "claim_next"))
    key, token = claimed["task"]["key"], claimed["token"]
    record_of(await call(client, "add_note", key=key, token=token, text="working"))
    record_of(await call(client, "complete", key=key, token=token, result={"ok": True}))
    return str(key)


def test_claude_mcp_add_commands_register_the_entries_shown() -> None:
    """Each ``claude mcp add`` line and the ``.mcp.json`` entry shown after it say the same thing (the
    shapes are what Claude Code 2.1 writes for these lines)."""
    stdio_line, http_line = (shlex.split(block.strip()) for block in _blocks("bash"))
    stdio, remote = _servers()
    assert stdio_line[:3] == ["claude", "mcp", "add"] and stdio["type"] == "stdio"
    assert stdio_line[stdio_line.index("--") + 1 :] == [stdio["command"], *stdio["args"]]
    assert http_line[:3] == ["claude", "mcp", "add"] and remote["type"] == "http"
    assert http_line[http_line.index("--transport") + 1] == "http"
    assert remote["url"] in http_line
    name, value = http_line[http_line.index("--header") + 1].split(": ", 1)
    assert remote["headers"] == {name: value}


async def test_the_stdio_entry_runs_and_completes_a_task_in_three_calls(tmp_path: Path) -> None:
    stdio = next(s for s in _servers() if "command" in s)
    project = stdio["args"][-1]
    # an agent CLI starts the command in the project's root, where ./.queue-data is the default
    async with FlatfileBackend(tmp_path / ".queue-data") as backend:
        await seed(QueueService(backend), project)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUEUE_", "MOSAIC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # where `qs` is installed
    params = StdioServerParameters(command=stdio["command"], args=stdio["args"], env=env, cwd=tmp_path)
    async with Client(params) as client:
        key = await _three_calls(client)
    async with FlatfileBackend(tmp_path / ".queue-data") as backend:
        assert (await QueueService(backend).get_task(project, key)).status is TaskStatus.DONE


async def test_the_http_entry_reaches_serve_with_a_bearer_token(tmp_path: Path) -> None:
    remote = next(s for s in _servers() if s.get("type") == "http")
    assert remote["url"].endswith("/mcp")
    async with FlatfileBackend(tmp_path / "data") as backend:
        await seed(QueueService(backend), "web")
        token, _ = await auth.create_token(backend.records, "web", "agent")
        settings = Settings(data_dir=tmp_path / "data", orchestrator=False, sync=False)
        async with running_app(settings, backend) as base:
            url = remote["url"].replace("http://127.0.0.1:8000", base)
            header = remote["headers"]["Authorization"].replace("${QUEUE_TOKEN}", token)
            assert header == f"Bearer {token}"
            async with http_client(url.removesuffix("/mcp"), token) as client:
                key = await _three_calls(client)
        assert (await QueueService(backend).get_task("web", key)).status is TaskStatus.DONE
