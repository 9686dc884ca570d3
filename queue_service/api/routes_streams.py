"""Task output streams (issue 14): the lease holder publishes chunks, watchers follow them as SSE.

``POST …/stream`` with ``{"token", "chunk"}``, ``{"token", "chunks": [...]}`` or ``{"token", "done": true}``;
``GET …/stream`` answers ``text/event-stream``: ``event: chunk`` / ``id: <stream id>`` /
``data: {"chunk": "text"}`` per chunk and a final ``event: done``. A reader resumes after
``Last-Event-ID`` (or ``?after=ID``); without one it replays everything retained from the start.
Followers hold an event-stream slot (``QUEUE_MAX_EVENT_STREAMS``) as ``/events`` readers do.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query
from pydantic import Field, model_validator
from starlette.responses import StreamingResponse

from queue_service import exceptions
from queue_service.api.deps import KeyPath, ProjectPath, ReadDep, ServiceDep, StateDep, StrictJSONRoute, WorkDep
from queue_service.api.limits import SlotStreamingResponse
from queue_service.api.schemas import ErrorBody, _Body
from queue_service.service import QueueService
from queue_service.streams import DEFAULT_STREAM, StreamChunk, parse_cursor, validate_stream_name

__all__ = ["router"]

router = APIRouter(prefix="/v1/projects/{project}", tags=["streams"], route_class=StrictJSONRoute)

StreamName = Annotated[str, Query(max_length=64, description="named stream within the task (default: default)")]


class StreamPublish(_Body):
    """Chunks to append (``chunk`` or ``chunks``), or ``done: true`` to end the stream."""

    token: str = Field(min_length=1, max_length=200)
    chunk: str | None = None
    chunks: list[str] | None = Field(default=None, max_length=10_000)
    done: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> StreamPublish:
        if self.chunk is not None and self.chunks is not None:
            raise ValueError("give chunk or chunks, not both")
        if not self.done and self.chunk is None and self.chunks is None:
            raise ValueError("give chunk, chunks, or done: true")
        return self


class StreamPublished(_Body):
    """Ids of the appended chunks (and of the end marker when ``done``)."""

    ids: list[str]
    done: bool = False


@router.post("/tasks/{key}/stream", response_model=StreamPublished, responses={409: {"model": ErrorBody}})
async def publish(
    project: ProjectPath,
    key: KeyPath,
    body: StreamPublish,
    service: ServiceDep,
    _: WorkDep,
    stream: StreamName = DEFAULT_STREAM,
) -> StreamPublished:
    """Append to the task's stream (lease holder only: 409 ``lease_invalid`` otherwise; renews the lease)."""
    validate_stream_name(stream)
    chunks = [body.chunk] if body.chunk is not None else list(body.chunks or [])
    ids = await service.publish(project, key, chunks, body.token, stream) if chunks or not body.done else []
    if body.done:
        ids.append(await service.end_stream(project, key, body.token, stream))
    return StreamPublished(ids=ids, done=body.done)


def format_chunk(item: StreamChunk) -> bytes:
    """One chunk (or the end marker) in the ``text/event-stream`` wire format."""
    if item.done:
        return f"event: done\nid: {item.id}\ndata: {{}}\n\n".encode()
    data = json.dumps({"chunk": item.chunk}, ensure_ascii=False)
    return f"event: chunk\nid: {item.id}\ndata: {data}\n\n".encode()


async def _sse(
    service: QueueService, project: str, key: str, after: str, stream: str, follow: bool
) -> AsyncIterator[bytes]:
    yield b"retry: 2000\n\n"
    if not follow:
        while True:
            page = await service.read_stream(project, key, after, stream)
            for item in page.chunks:
                yield format_chunk(item)
            if page.done and not (page.chunks and page.chunks[-1].done):
                # the task finished without its holder ending the stream: end it for the reader
                yield format_chunk(StreamChunk(id=page.cursor, done=True))
            if page.done or not page.chunks:
                return
            after = page.cursor
    items = await service.follow_stream(project, key, after, stream)
    async for live in items:
        yield b": keepalive\n\n" if live is None else format_chunk(live)


@router.get(
    "/tasks/{key}/stream",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "`event: chunk` / `id` / `data: {chunk}`"},
        **{code: {"model": ErrorBody} for code in (401, 403, 404, 422, 429)},
    },
)
async def watch(
    project: ProjectPath,
    key: KeyPath,
    service: ServiceDep,
    state: StateDep,
    _: ReadDep,
    stream: StreamName = DEFAULT_STREAM,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=45)] = None,
    after: Annotated[str | None, Query(max_length=45, description="resume after this stream id")] = None,
    follow: Annotated[bool, Query(description="false: send what is retained, then close")] = True,
) -> StreamingResponse:
    """The task's output as server-sent events, replayed from the start or resumed after an id."""
    validate_stream_name(stream)
    try:
        cursor = parse_cursor(last_event_id if last_event_id and last_event_id.strip() else after)
    except exceptions.ValidationError as exc:
        raise exceptions.ValidationError(f"Last-Event-ID/after: {exc.message}") from None
    await service.get_task(project, key)  # a 404 now, not a broken stream later
    state.streams.acquire()  # 429 past QUEUE_MAX_EVENT_STREAMS; the response gives it back
    return SlotStreamingResponse(
        _sse(service, project, key, cursor, stream, follow),
        state.streams,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
