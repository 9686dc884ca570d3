"""The task page's live output (issues 12 and 14): the task's stream as server-sent events under ``/ui``.

The same frames as the API's ``GET …/tasks/{key}/stream`` (``event: chunk`` / ``id`` /
``data: {"chunk"}``, then ``event: done``), but authenticated by the session cookie like every UI
page, re-checked while it runs (a revoked token ends the stream), and holding one of the replica's
event-stream slots. The page's script (``static/ui.js``) appends each chunk as text; a reconnect
resumes after ``Last-Event-ID``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from starlette.responses import Response

from queue_service import exceptions
from queue_service.api.deps import get_service, get_state
from queue_service.api.limits import SlotStreamingResponse
from queue_service.api.routes_streams import format_chunk
from queue_service.auth import Action
from queue_service.streams import DEFAULT_STREAM, StreamChunk, parse_cursor, validate_stream_name
from queue_service.ui import session
from queue_service.ui.live import _rechecked

__all__ = ["router"]

router = APIRouter(prefix="/ui", include_in_schema=False)

_KEEPALIVE = 10.0
_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def _frames(items: AsyncIterator[StreamChunk | None]) -> AsyncIterator[bytes]:
    yield b"retry: 2000\n\n"
    async for item in items:
        yield b": keepalive\n\n" if item is None else format_chunk(item)


@router.get("/p/{project}/tasks/{key}/stream")
async def task_output(
    request: Request,
    project: str,
    key: str,
    stream: Annotated[str, Query(max_length=64)] = DEFAULT_STREAM,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=45)] = None,
) -> Response:
    """The task's output, replayed from the start (or after ``Last-Event-ID``), then live."""
    principal = await session.ui_principal(request)
    principal.check(Action.READ, project)
    validate_stream_name(stream)
    try:
        cursor = parse_cursor(last_event_id)
    except exceptions.ValidationError as exc:
        raise exceptions.ValidationError(f"Last-Event-ID: {exc.message}") from None
    items = await get_service(request).follow_stream(project, key, cursor, stream, idle_seconds=_KEEPALIVE)
    slots = get_state(request).streams
    slots.acquire()  # 429 past QUEUE_MAX_EVENT_STREAMS, as for the API's streams
    return SlotStreamingResponse(
        _rechecked(request, project, _frames(items)), slots, media_type="text/event-stream", headers=_HEADERS
    )
