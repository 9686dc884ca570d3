"""``qs run`` publishes each child's stdout/stderr lines to the task's stream (issue 14).

:class:`StreamTee` stands where the runner's echo target stands (``output.echo_lines`` writes
prefixed lines to it): it passes the text on to the real echo (if any) and queues each line, without
its ``KEY| `` / ``KEY! `` prefix, for :class:`LinePublisher`, which sends them in batches as the lease
holder and ends the stream before the task is settled. A failed publish is logged and its lines
dropped: watching is best effort, the task's outcome never depends on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol, TextIO

__all__ = ["LinePublisher", "StreamTee"]

logger = logging.getLogger("queue_service.runner")

_BATCH = 500
_MAX_LINE_BYTES = 60_000


class _Ops(Protocol):
    async def publish(self, project: str, key: str, chunks: list[str], token: str, /) -> Any: ...
    async def end_stream(self, project: str, key: str, token: str, /) -> Any: ...


class LinePublisher:
    """Batches lines and publishes them in order; ``close()`` flushes and ends the stream."""

    def __init__(self, ops: _Ops, project: str, key: str, token: str, interval: float = 0.1) -> None:
        self.ops, self.project, self.key, self.token = ops, project, key, token
        self.interval = interval
        self._lines: list[str] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._run())

    def add(self, line: str) -> None:
        raw = line.encode("utf-8", "replace")
        if len(raw) > _MAX_LINE_BYTES:
            line = raw[:_MAX_LINE_BYTES].decode("utf-8", "ignore")
        self._lines.append(line)
        if len(self._lines) >= _BATCH:
            self._wake.set()

    async def _send(self) -> None:
        while self._lines:
            batch, self._lines = self._lines[:_BATCH], self._lines[_BATCH:]
            try:
                await self.ops.publish(self.project, self.key, batch, self.token)
            except Exception as exc:
                logger.warning("publishing output of %s failed: %s", self.key, exc)

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            await self._send()

    async def close(self) -> None:
        """Publish what is left and end the stream (call before settling the task)."""
        self._closing = True
        self._wake.set()
        with contextlib.suppress(Exception):
            await self._task
        await self._send()
        try:
            await self.ops.end_stream(self.project, self.key, self.token)
        except Exception as exc:
            logger.warning("ending the output stream of %s failed: %s", self.key, exc)


class StreamTee:
    """A text sink for ``echo_lines``: forwards to *echo* and queues unprefixed lines to *publisher*."""

    def __init__(self, echo: TextIO | None, publisher: LinePublisher, prefixes: tuple[str, ...]) -> None:
        self.echo, self.publisher, self.prefixes = echo, publisher, prefixes

    def write(self, text: str) -> int:
        for line in text.splitlines():
            for prefix in self.prefixes:
                if line.startswith(prefix):
                    line = line[len(prefix) :]
                    break
            self.publisher.add(line)
        if self.echo is not None:
            self.echo.write(text)
        return len(text)

    def flush(self) -> None:
        if self.echo is not None:
            self.echo.flush()
