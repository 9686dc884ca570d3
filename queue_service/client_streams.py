"""Client side of the two server-sent-event feeds: a project's events and a task's output stream
(issue 14). Each feed is a small state object (what to ask on each (re)connection, how to read a
line, when to give up, how long to pause); ``Client`` and ``AsyncClient`` drive them with one loop
each (``_follow``), so the reconnect rules are written once."""

from __future__ import annotations

import json
from typing import Protocol, TypeVar
from urllib.parse import quote

from queue_service.models import Event
from queue_service.wire import DEFAULT_STREAM, StreamChunk

__all__ = ["EventFeed", "EventSSEParser", "Feed", "StreamFeed", "StreamSSEParser", "stream_request"]

T_co = TypeVar("T_co", covariant=True)


class Feed(Protocol[T_co]):
    """One followed SSE resource, as the clients' ``_follow`` loops see it."""

    def request(self, base_headers: dict[str, str]) -> tuple[str, dict[str, str], dict[str, str]]:
        """Path, query and headers of the next (re)connection."""
        ...

    def feed(self, line: str) -> T_co | None:
        """The item a line completes (None: nothing to yield yet)."""
        ...

    def gives_up(self, failures: int) -> bool:
        """After the *failures*-th dropped connection in a row: stop (raise) instead of reconnecting?"""
        ...

    def pause(self, failures: int) -> tuple[int, float | None] | None:
        """After a connection ended: None to stop, else ``RetryPolicy.delay`` arguments for the pause."""
        ...


class EventSSEParser:
    """Incremental ``text/event-stream`` parser yielding our Events."""

    def __init__(self, last_id: int | None = None) -> None:
        self.data: list[str] = []
        self.last_id = last_id
        self.retry_ms: int | None = None

    def feed(self, line: str) -> Event | None:
        if not line:
            if not self.data:
                return None
            payload = "\n".join(self.data)
            self.data = []
            event = Event.model_validate_json(payload, extra="ignore")
            self.last_id = event.id
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self.data.append(value)
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None


class StreamSSEParser:
    """Incremental parser of ``event: chunk|done`` / ``id`` / ``data`` frames."""

    def __init__(self, last_id: str | None = None) -> None:
        self.last_id = last_id
        self.retry_ms: int | None = None
        self.finished = False
        self._event = ""
        self._id: str | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> StreamChunk | None:
        if not line:
            event, data, frame_id = self._event, "\n".join(self._data), self._id
            self._event, self._data, self._id = "", [], None
            if event not in ("chunk", "done") or frame_id is None:
                return None
            self.last_id = frame_id
            if event == "done":
                self.finished = True
                return StreamChunk(id=frame_id, done=True)
            return StreamChunk(id=frame_id, chunk=str(json.loads(data).get("chunk", "")))
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        elif name == "data":
            self._data.append(value)
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None


def stream_request(
    base_headers: dict[str, str], project: str, key: str, last_id: str | None, stream: str, follow: bool
) -> tuple[dict[str, str], str, dict[str, str]]:
    """Headers, path and query of one (re)connection to a task's stream, resuming after *last_id*."""
    headers = dict(base_headers, Accept="text/event-stream")
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    params = {"follow": "true" if follow else "false"}
    if stream != DEFAULT_STREAM:
        params["stream"] = stream
    return headers, f"/v1/projects/{quote(project, safe='')}/tasks/{quote(key, safe='')}/stream", params


class EventFeed:
    """A project's events, oldest first, resuming after the last id seen."""

    def __init__(self, project: str, last_event_id: int | None, follow: bool, reconnect: bool, attempts: int) -> None:
        self.parser = EventSSEParser(last_event_id)
        self.project = project
        self.follow = follow
        self.reconnect = reconnect
        self.attempts = attempts

    def request(self, base_headers: dict[str, str]) -> tuple[str, dict[str, str], dict[str, str]]:
        """See Feed.request."""
        headers = dict(base_headers, Accept="text/event-stream")
        if self.parser.last_id is not None:
            headers["Last-Event-ID"] = str(self.parser.last_id)
        elif not self.follow:
            headers["Last-Event-ID"] = "0"  # replay the whole log
        path = f"/v1/projects/{quote(self.project, safe='')}/events"
        return path, {"follow": "true" if self.follow else "false"}, headers

    def feed(self, line: str) -> Event | None:
        """See Feed.feed."""
        return self.parser.feed(line)

    def gives_up(self, failures: int) -> bool:
        """See Feed.gives_up."""
        return not (self.follow and self.reconnect) or failures >= self.attempts

    def pause(self, failures: int) -> tuple[int, float | None] | None:
        """See Feed.pause: the server's ``retry:`` hint after a clean end, backoff after a drop."""
        if not self.follow or not self.reconnect:
            return None
        return max(1, failures), (self.parser.retry_ms or 1000) / 1000 if failures == 0 else None


class StreamFeed:
    """A task's output chunks from the start (or after *after*), until the stream is done."""

    def __init__(
        self, project: str, key: str, after: str | None, stream: str, follow: bool, include_done: bool, attempts: int
    ) -> None:
        self.parser = StreamSSEParser(after)
        self.project, self.key, self.stream = project, key, stream
        self.follow = follow
        self.include_done = include_done
        self.attempts = attempts

    def request(self, base_headers: dict[str, str]) -> tuple[str, dict[str, str], dict[str, str]]:
        """See Feed.request."""
        headers, path, params = stream_request(
            base_headers, self.project, self.key, self.parser.last_id, self.stream, self.follow
        )
        return path, params, headers

    def feed(self, line: str) -> StreamChunk | None:
        """See Feed.feed: the done marker only with *include_done*."""
        item = self.parser.feed(line)
        return item if item is not None and (self.include_done or not item.done) else None

    def gives_up(self, failures: int) -> bool:
        """See Feed.gives_up."""
        return not self.follow or failures >= self.attempts

    def pause(self, failures: int) -> tuple[int, float | None] | None:
        """See Feed.pause."""
        if self.parser.finished or not self.follow:
            return None
        return max(1, failures), None
