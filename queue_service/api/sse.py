"""Server-sent events of a project's changes, resumable with ``Last-Event-ID``.

The durable event log (``RecordStore.list_events``) is the source of every event sent; the live
subscription (``EventStream.subscribe``, best effort) only says *when* to read it. So a stream never
has gaps (a dropped notification is caught up by id on the next one, or on the keep-alive tick) and
never repeats an id. Each event is written as::

    id: <event id>
    data: <Event as JSON>

A stream that starts without a last id begins with the first live event after it connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator

from queue_service.models import Event
from queue_service.service import QueueService

__all__ = ["format_event", "stream_events"]

logger = logging.getLogger("queue_service.api.sse")

_PAGE = 500
_QUEUE_MAX = 10_000
_RECENT_IDS = 4096


def format_event(event: Event) -> bytes:
    """One event in the ``text/event-stream`` wire format."""
    return f"id: {event.id}\ndata: {event.model_dump_json()}\n\n".encode()


class _Cursor:
    """The last id sent and the ids sent recently (to recognise late-committed, lower ids)."""

    def __init__(self, last: int | None) -> None:
        self.last = last
        self._recent: deque[int] = deque(maxlen=_RECENT_IDS)
        self._recent_set: set[int] = set()

    def sent(self, event_id: int) -> bool:
        return event_id in self._recent_set or (self.last is not None and event_id == self.last)

    def mark(self, event_id: int) -> None:
        if len(self._recent) == self._recent.maxlen:
            self._recent_set.discard(self._recent[0])
        self._recent.append(event_id)
        self._recent_set.add(event_id)
        if self.last is None or event_id > self.last:
            self.last = event_id


async def _replay(
    service: QueueService, project: str, cursor: _Cursor, limit: int | None = None
) -> AsyncIterator[bytes]:
    """Everything in the log after the cursor, oldest first (at most *limit* events, then a
    ``: truncated`` comment when more follow: SSE parsers skip comments)."""
    assert cursor.last is not None
    sent = 0
    while True:
        want = _PAGE if limit is None else min(_PAGE, limit - sent)
        events = await service.list_events(project, after_id=cursor.last, limit=want)
        for event in events:
            if not cursor.sent(event.id):
                cursor.mark(event.id)
                sent += 1
                yield format_event(event)
        if limit is not None and sent >= limit:
            if await service.list_events(project, after_id=cursor.last, limit=1):
                yield f": truncated; {sent:,} events shown; resume with after={cursor.last}\n\n".encode()
            return
        if len(events) < want:
            return


#: how soon a follower re-reads the log once, in case its subscription registered after a change
_SUBSCRIBE_GRACE_SECONDS = 0.5


async def stream_events(
    service: QueueService,
    project: str,
    last_event_id: int | None,
    *,
    follow: bool = True,
    keepalive_seconds: float = 15.0,
    retry_ms: int = 2000,
    replay_limit: int | None = None,
) -> AsyncIterator[bytes]:
    """The event stream: replay after *last_event_id* (if given), then live events if *follow*.

    Ends when the client disconnects (the server cancels the iteration) or the live subscription
    ends (the client reconnects with its last id and loses nothing).
    """
    yield f"retry: {retry_ms}\n\n".encode()
    cursor = _Cursor(last_event_id)
    if not follow:
        if cursor.last is None:
            cursor.last = 0
        async for chunk in _replay(service, project, cursor, replay_limit):
            yield chunk
        return

    queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=_QUEUE_MAX)

    async def pump() -> None:
        try:
            async for event in service.subscribe(project):
                with contextlib.suppress(asyncio.QueueFull):
                    # dropping is safe: the next notification (or tick) catches up by id
                    queue.put_nowait(event)
        except Exception:
            logger.exception("event subscription for %s failed", project)
        finally:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    pump_task = asyncio.create_task(pump())
    try:
        # let the subscription register before reading the log, so nothing falls between the two
        await asyncio.sleep(0)
        if cursor.last is not None:
            async for chunk in _replay(service, project, cursor):
                yield chunk
        # the sleep above lets an in-process subscription register, but a Valkey SUBSCRIBE takes
        # round trips: a change committed before it lands is read from the log after a short grace
        # instead of at the first keepalive
        wait = min(keepalive_seconds, _SUBSCRIBE_GRACE_SECONDS)
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), wait)
            except TimeoutError:
                if cursor.last is not None:
                    async for chunk in _replay(service, project, cursor):
                        yield chunk
                if wait == keepalive_seconds:
                    yield b": keepalive\n\n"
                wait = keepalive_seconds
                continue
            if event is None:
                return
            if cursor.last is None:
                cursor.mark(event.id)
                yield format_event(event)
            elif cursor.sent(event.id):
                continue
            elif event.id < cursor.last:
                # committed after a higher id was already sent (concurrent writers): send it now
                cursor.mark(event.id)
                yield format_event(event)
            else:
                async for chunk in _replay(service, project, cursor):
                    yield chunk
                if not cursor.sent(event.id):
                    cursor.mark(event.id)
                    yield format_event(event)
    finally:
        pump_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pump_task
