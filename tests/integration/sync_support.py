"""Helpers for the workspace-sync tests: polling with a deadline, editor-style saves, row edits."""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from queue_service.settings import Settings
from tests.fixtures.timing import fast
from workspace_sync.options import SyncOptions

T = TypeVar("T")

FAST = fast(lease_seconds=5.0, heartbeat_seconds=1.0)
SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
DEADLINE = 20.0


def sync_settings(**overrides: Any) -> Settings:
    """Settings with short sync timings (the backend URL is unused: tests pass their own service)."""
    values: dict[str, Any] = {
        "backend_url": "memory://",
        "sync_rescan_seconds": 0.5,
        "sync_debounce_seconds": 0.1,
        "orchestrator": False,
    }
    values.update(overrides)
    return Settings(**values)


def sync_options(**overrides: Any) -> SyncOptions:
    """:class:`SyncOptions` from :func:`sync_settings` (the manager never reads Settings itself)."""
    settings = sync_settings(**overrides)
    return SyncOptions(rescan_seconds=settings.sync_rescan_seconds, debounce_seconds=settings.sync_debounce_seconds)


async def eventually(check: Callable[[], Awaitable[T | None] | T | None], what: str, timeout: float = DEADLINE) -> T:
    """Poll *check* until it returns something truthy; fail with *what* after the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        value = check()
        if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        last = value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last: {last!r})")
        await asyncio.sleep(0.02)


def editor_save(path: Path, text: str) -> None:
    """Save like an editor does: write a temp file next to it, then rename it over the original."""
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:6]}.swp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def row_line(text: str, key: str) -> str:
    """The table line of *key*."""
    for line in text.splitlines():
        if re.match(rf"^\|\s*{re.escape(key)}\s*\|", line):
            return line
    raise AssertionError(f"no row for {key} in:\n{text}")


def set_cell(text: str, key: str, column: int, value: str) -> str:
    """*text* with cell *column* (0-based, id = 0) of *key*'s row replaced by *value*."""
    line = row_line(text, key)
    cells = line.split("|")
    cells[column + 1] = f" {value} "
    return text.replace(line, "|".join(cells), 1)


def cell(text: str, key: str, column: int) -> str:
    """The stripped text of cell *column* of *key*'s row."""
    return row_line(text, key).split("|")[column + 1].strip()


def line_before(text: str, key: str) -> str:
    """The line just above *key*'s row."""
    lines = text.splitlines()
    index = lines.index(row_line(text, key))
    return lines[index - 1]
