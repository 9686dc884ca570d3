"""Server-sent events of a project's changes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query
from starlette.responses import StreamingResponse

from queue_service import exceptions
from queue_service.api.deps import ProjectPath, ReadDep, ServiceDep, StateDep, StrictJSONRoute
from queue_service.api.limits import SlotStreamingResponse
from queue_service.api.schemas import ErrorBody
from queue_service.api.sse import stream_events

#: the largest ``limit`` of a ``follow=false`` replay (without one it streams the whole log: the typed
#: client's ``events(follow=False)`` promises every event, and it cannot resume a cut replay yet)
REPLAY_MAX = 10_000

__all__ = ["router"]

router = APIRouter(prefix="/v1/projects/{project}", tags=["events"], route_class=StrictJSONRoute)


def _event_id(value: str | None, source: str) -> int | None:
    if value is None or not value.strip():
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise exceptions.ValidationError(f"{source} must be an event id (a non-negative integer), got {value[:40]!r}")
    return int(text)


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "`id: <event id>` / `data: <Event JSON>`"},
        **{code: {"model": ErrorBody} for code in (401, 403, 404, 422, 429)},
    },
)
async def events(
    project: ProjectPath,
    service: ServiceDep,
    state: StateDep,
    _: ReadDep,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID", max_length=40)] = None,
    last_event_id: Annotated[
        str | None, Query(max_length=40, description="resume after this id (same as the Last-Event-ID header)")
    ] = None,
    after: Annotated[
        str | None, Query(max_length=40, description="resume after this id (same as last_event_id)")
    ] = None,
    follow: Annotated[bool, Query(description="keep streaming live events; false: replay, then close")] = True,
    limit: Annotated[
        int | None,
        Query(ge=1, le=REPLAY_MAX, description=f"with follow=false: at most this many events (1-{REPLAY_MAX:,})"),
    ] = None,
) -> StreamingResponse:
    """Every change of the project as server-sent events, resumable after ``Last-Event-ID``.

    Without a last id the stream starts with the next change (``follow=false`` replays from the
    start instead; with ``limit``, at most that many events and, when more follow, a final
    ``: truncated`` comment naming the id to resume after).
    """
    start = _event_id(last_event_id_header, "Last-Event-ID")
    if start is None:
        start = _event_id(last_event_id, "last_event_id")
    if start is None:
        start = _event_id(after, "after")
    await service.get_project(project)  # a 404 now, not a broken stream later
    state.streams.acquire()  # 429 past QUEUE_MAX_EVENT_STREAMS; the response gives it back
    return SlotStreamingResponse(
        stream_events(service, project, start, follow=follow, replay_limit=limit),
        state.streams,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
