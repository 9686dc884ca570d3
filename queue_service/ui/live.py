"""The UI's own server-sent events, authenticated by the session cookie.

Each stream starts with a ``change`` event (so a page refreshes anything that happened between its
render and the connection, and after every reconnect), then sends one ``change`` event per project
event. The project stream carries the event ids and resumes after ``Last-Event-ID`` (the header a
reconnecting EventSource sends, or ``?last_event_id=``), replaying from the durable log. A session
whose token is revoked is re-checked at least every :data:`RECHECK_SECONDS` and its stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from starlette.responses import Response, StreamingResponse

from queue_service import exceptions
from queue_service.api.deps import get_service
from queue_service.api.routes_events import _event_id
from queue_service.api.sse import stream_events
from queue_service.auth import Action
from queue_service.ui import session, views
from queue_service.ui.pages import throughput_tracker

__all__ = ["RECHECK_SECONDS", "router"]

router = APIRouter(prefix="/ui", include_in_schema=False)

RECHECK_SECONDS = 5.0
_KEEPALIVE = 10.0
_HELLO = b"retry: 1000\n\nevent: change\ndata: connected\n\n"
_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def _still_allowed(request: Request, project: str | None) -> bool:
    try:
        principal = await session.ui_principal(request)
    except session.LoginRequired:
        return False
    return project is None or principal.allows(Action.READ, project)


async def _rechecked(request: Request, project: str | None, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Pass *chunks* through, ending the stream once the session stops being valid."""
    checked = time.monotonic()
    async for chunk in chunks:
        if time.monotonic() - checked >= RECHECK_SECONDS:
            if not await _still_allowed(request, project):
                return
            checked = time.monotonic()
        yield chunk


async def _named(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The API's SSE frames, named ``change`` so htmx can trigger on them."""
    yield _HELLO
    async for chunk in chunks:
        if chunk.startswith(b"id: "):
            yield b"event: change\n" + chunk
        elif chunk.startswith(b"retry:"):
            continue
        else:
            yield chunk


@router.get("/p/{project}/events")
async def project_events(
    request: Request,
    project: str,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID", max_length=40)] = None,
    last_event_id: Annotated[str | None, Query(max_length=40)] = None,
) -> Response:
    """A project's changes for its pages (board, task, dead letter, agents, DAG)."""
    principal = await session.ui_principal(request)
    principal.check(Action.READ, project)
    service = get_service(request)
    after = _event_id(last_event_id_header, "Last-Event-ID")
    if after is None:
        after = _event_id(last_event_id, "last_event_id")
    await service.get_project(project)
    if after is None:
        # start after the newest event now, not at the subscription's first tick: a change made
        # between this connection's first frame and the subscription starting is still sent
        after = await views.last_event_id(throughput_tracker(request), service, project)
    stream = stream_events(service, project, after, follow=True, keepalive_seconds=_KEEPALIVE)
    return StreamingResponse(
        _rechecked(request, project, _named(stream)), media_type="text/event-stream", headers=_HEADERS
    )


async def _all_projects(request: Request) -> AsyncIterator[bytes]:
    service = get_service(request)
    principal = await session.ui_principal(request)
    tracker = throughput_tracker(request)
    slugs = [p.slug for p in await service.list_projects() if principal.allows(Action.READ, p.slug)]
    # each project's stream starts after the newest event seen now: nothing falls between the
    # page's render and the subscriptions starting
    starts = {s: await views.last_event_id(tracker, service, s) for s in slugs}
    wake: asyncio.Queue[str] = asyncio.Queue(maxsize=1)

    async def pump(slug: str) -> None:
        with contextlib.suppress(exceptions.QueueServiceError):
            async for chunk in stream_events(service, slug, starts[slug], keepalive_seconds=_KEEPALIVE):
                if chunk.startswith(b"id: "):
                    with contextlib.suppress(asyncio.QueueFull):
                        wake.put_nowait(slug)

    pumps = [asyncio.create_task(pump(s)) for s in slugs]
    try:
        yield _HELLO
        while True:
            try:
                await asyncio.wait_for(wake.get(), _KEEPALIVE)
            except TimeoutError:
                yield b": keepalive\n\n"
                continue
            yield b"event: change\ndata: {}\n\n"
            # coalesce a burst: the overview re-reads everything anyway
            await asyncio.sleep(0.2)
    finally:
        for p in pumps:
            p.cancel()
        for p in pumps:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await p


@router.get("/events")
async def overview_events(request: Request) -> Response:
    """A ``change`` whenever any project the caller may read changes (the overview page)."""
    await session.ui_principal(request)
    return StreamingResponse(
        _rechecked(request, None, _all_projects(request)), media_type="text/event-stream", headers=_HEADERS
    )
