"""In-process stream store (memory backend): lists per stream and one condition for followers."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from queue_service import exceptions
from queue_service.streams import StreamChunk, StreamPage, StreamStore, cursor_key

__all__ = ["MemoryStreamStore"]


class _Log:
    def __init__(self) -> None:
        self.items: list[StreamChunk] = []
        self.next_id = 1

    @property
    def done(self) -> StreamChunk | None:
        return self.items[-1] if self.items and self.items[-1].done else None


class MemoryStreamStore(StreamStore):
    """The stream contract in memory; ids are ``1``, ``2``, … per stream."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._logs: dict[tuple[str, str, str], _Log] = {}
        # created on first use so it binds to the running loop
        self._changed: asyncio.Condition | None = None

    def _log(self, project: str, key: str, stream: str) -> _Log:
        return self._logs.setdefault((project, key, stream), _Log())

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def _append(self, project: str, key: str, stream: str, chunks: list[str], *, done: bool) -> list[str]:
        log = self._log(project, key, stream)
        if log.done is not None:
            if done and not chunks:
                return [log.done.id]
            raise exceptions.InvalidTransition(f"stream {stream!r} of {key} is done", stream=stream)
        ids: list[str] = []
        for text in chunks:
            ids.append(str(log.next_id))
            log.items.append(StreamChunk(id=ids[-1], chunk=text))
            log.next_id += 1
        if done:
            ids.append(str(log.next_id))
            log.items.append(StreamChunk(id=ids[-1], done=True))
            log.next_id += 1
        overflow = len(log.items) - self.config.retention_chunks
        if overflow > 0:
            del log.items[:overflow]
        cond = self._condition()
        async with cond:
            cond.notify_all()
        return ids

    async def _read(self, project: str, key: str, stream: str, cursor: str, limit: int) -> StreamPage:
        log = self._log(project, key, stream)
        after = cursor_key(cursor)
        out = [c for c in log.items if cursor_key(c.id) > after][:limit]
        last = out[-1] if out else None
        return StreamPage(chunks=out, done=bool(last and last.done), cursor=last.id if last else cursor)

    async def _wait(self, project: str, key: str, stream: str, cursor: str, timeout: float) -> bool:
        log = self._log(project, key, stream)
        after = cursor_key(cursor)

        def ready() -> bool:
            return bool(log.items) and cursor_key(log.items[-1].id) > after

        cond = self._condition()
        async with cond:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cond.wait_for(ready), timeout)
            return ready()
