"""Client side of task output streams (issue 14): the SSE parser and request shape shared by the
sync and async clients (``Client.stream`` / ``AsyncClient.stream``)."""

from __future__ import annotations

import json
from urllib.parse import quote

from queue_service.streams import DEFAULT_STREAM, StreamChunk

__all__ = ["StreamSSEParser", "stream_request"]


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
