"""Size and count limits the API enforces (issue 9, finding 12), from ``Settings``:

* ``QUEUE_MAX_RESULT_BYTES``: a task result, JSON-encoded (422 past it);
* ``QUEUE_MAX_NOTE_CHARS``: a note's text (422 past it);
* ``QUEUE_MAX_EVENT_STREAMS``: open event streams per replica (429 past it);
* a page of tasks stops growing once its JSON passes :func:`page_budget` bytes (at least one task per
  page, so paging always progresses), and ``next_cursor`` continues from there.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from queue_service import exceptions
from queue_service.cursors import encode_cursor
from queue_service.models import Task
from queue_service.settings import Settings

__all__ = [
    "SlotStreamingResponse",
    "StreamSlots",
    "TooManyStreams",
    "bounded_tasks",
    "check_note_text",
    "check_result",
    "cursor_after",
    "page_budget",
]


class TooManyStreams(exceptions.QueueServiceError):
    """Too many event streams are open on this replica; try again later."""

    code = "too_many_streams"
    http_status = 429


def check_result(result: Any, settings: Settings) -> None:
    """Refuse a task result whose JSON is larger than ``max_result_bytes``."""
    size = len(json.dumps(result, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))
    if size > settings.max_result_bytes:
        raise exceptions.ValidationError(
            f"result is {size} bytes of JSON; at most {settings.max_result_bytes} are accepted "
            "(QUEUE_MAX_RESULT_BYTES): store large outputs elsewhere and return a reference",
            size=size,
            max_result_bytes=settings.max_result_bytes,
        )


def check_note_text(text: str, settings: Settings) -> None:
    """Refuse a note longer than ``max_note_chars``."""
    if len(text) > settings.max_note_chars:
        raise exceptions.ValidationError(
            f"note text is {len(text)} characters; at most {settings.max_note_chars} are accepted "
            "(QUEUE_MAX_NOTE_CHARS)",
            length=len(text),
            max_note_chars=settings.max_note_chars,
        )


def page_budget(settings: Settings) -> int:
    """Bytes of task JSON one page may carry: a few maximal results, never less than one body."""
    return max(4 * settings.max_result_bytes, settings.max_body_bytes)


def bounded_tasks(tasks: Sequence[Task], budget: int) -> tuple[tuple[Task, ...], bool]:
    """The leading tasks whose JSON fits in *budget* bytes (at least one), and whether any were cut."""
    kept: list[Task] = []
    used = 0
    for task in tasks:
        size = len(task.model_dump_json())
        if kept and used + size > budget:
            return tuple(kept), True
        kept.append(task)
        used += size
    return tuple(kept), False


def cursor_after(task: Task) -> str:
    """The cursor that continues a listing after *task*."""
    return encode_cursor(task.seq)


class StreamSlots:
    """Counts open event streams; :meth:`acquire` refuses past the limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def acquire(self) -> None:
        """Take a slot, or raise TooManyStreams (before the response starts, so it is a clean 429);
        hand it to a :class:`SlotStreamingResponse`, which gives it back."""
        if self.open >= self.limit:
            raise TooManyStreams(
                f"{self.open} event streams are open on this replica, the most allowed "
                "(QUEUE_MAX_EVENT_STREAMS); close one or retry later",
                limit=self.limit,
            )
        self.open += 1

    def release(self) -> None:
        """Give a slot back."""
        self.open -= 1


class SlotStreamingResponse(StreamingResponse):
    """A streaming response that gives its stream slot back when it ends, however it ends (even a
    client that disconnects before the first byte)."""

    def __init__(self, content: AsyncIterator[bytes], slots: StreamSlots, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._slots = slots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._slots.release()
