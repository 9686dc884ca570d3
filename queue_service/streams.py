"""The stream channel (issue 14): partial output a task's lease holder publishes for watchers.

A task has any number of named streams (``default`` unless named). Each is an ordered, bounded log
of text chunks ending with an optional ``done`` marker. Readers replay what is retained from any
cursor and follow live; a reader who connects late still gets everything retained from the start
(unlike pub/sub channels, which drop what was published before the subscription).

:class:`StreamStore` is the backend capability. The lease check lives here once for every backend:
``publish``/``done`` go through ``Dispatcher.heartbeat`` with the caller's token, so a stale token
is refused with ``lease_invalid`` exactly as a note is, and every publish renews the lease like a
note does. Backends implement only the storage (``_append``, ``read``, ``_wait``).

Stream ids are opaque strings that sort in publish order within one stream: ``N`` (1, 2, …) on the
memory and flatfile backends, Valkey stream ids (``<ms>-<seq>``) on Postgres+Valkey.
"""

from __future__ import annotations

import abc
import re
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Protocol

from queue_service import domain, exceptions

# the chunk and page models are wire bodies the typed client reads too: they live server-free
from queue_service.models import Lease
from queue_service.wire import DEFAULT_STREAM, StreamChunk, StreamPage

__all__ = [
    "DEFAULT_STREAM",
    "LeaseRenewer",
    "StreamChunk",
    "StreamConfig",
    "StreamPage",
    "StreamStore",
    "parse_cursor",
    "validate_stream_name",
]

_STREAM_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_NAME_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_CURSOR = re.compile(r"^[0-9]{1,20}(-[0-9]{1,20})?$")


@dataclass(frozen=True)
class StreamConfig:
    """Bounds of the stream channel (settings: QUEUE_STREAM_*)."""

    #: largest chunk, UTF-8 bytes
    max_chunk_bytes: int = 64 * 1024
    #: most chunks in one publish call
    max_chunks_per_publish: int = 1000
    #: chunks kept per stream; older ones are dropped (approximately, on Valkey)
    retention_chunks: int = 10_000
    #: seconds a stream stays readable after its last publish (Valkey key TTL)
    retention_seconds: int = 7 * 24 * 3600
    #: followers open at once in this process
    max_followers: int = 256


def validate_stream_name(name: str) -> str:
    """A stream name: 1-64 of ``A-Z a-z 0-9 _ . -`` (it becomes part of a file name / key)."""
    if not isinstance(name, str) or not _STREAM_NAME.match(name):
        raise exceptions.ValidationError(
            f"stream name must be 1-64 characters of A-Z a-z 0-9 _ . -, got {str(name)[:70]!r}"
        )
    return name


def parse_cursor(value: str | None) -> str:
    """A cursor (``0`` = from the start): ``N`` or ``<ms>-<seq>``."""
    if value is None or not str(value).strip():
        return "0"
    text = str(value).strip()
    if not _CURSOR.match(text):
        raise exceptions.ValidationError(f"stream cursor must look like 12 or 1712345678901-0, got {text[:40]!r}")
    return text


def _check_names(project: str, key: str, stream: str) -> None:
    validate_stream_name(stream)
    for label, part in (("project", project), ("task key", key)):
        if not _NAME_PART.match(part):
            raise exceptions.ValidationError(f"invalid {label} {part[:70]!r}")


def cursor_key(value: str) -> tuple[int, int]:
    """Sort key of an id/cursor (both id forms compare correctly within one backend)."""
    head, _, tail = value.partition("-")
    return int(head), int(tail or 0)


class LeaseRenewer(Protocol):
    """What a stream store needs of the dispatcher: renewing the writer's lease (``Dispatcher.heartbeat``).

    A protocol rather than the Dispatcher itself keeps this module below the Backend interface.
    """

    async def heartbeat(self, project: str, key: str, token: str, lease_seconds: float | None = None) -> Lease:
        """Extend the lease; LeaseError for a wrong or expired token."""
        ...


class StreamStore(abc.ABC):
    """Per-task chunk streams: holder-only publish, replayable bounded reads, live follow."""

    def __init__(self, dispatch: LeaseRenewer, config: StreamConfig | None = None) -> None:
        self.dispatch = dispatch
        self.config = config or StreamConfig()
        self._followers = 0

    # -- writers ----------------------------------------------------------------------------
    async def publish(
        self, project: str, key: str, chunks: Sequence[str], token: str, stream: str = DEFAULT_STREAM
    ) -> list[str]:
        """Append *chunks* (in order) and return their ids. Only the live lease holder may publish
        (LeaseError ``lease_invalid`` otherwise); the call renews the lease. A chunk over
        ``max_chunk_bytes`` or more than ``max_chunks_per_publish`` chunks raise ValidationError and
        append nothing; publishing to a stream that is done raises InvalidTransition."""
        validate_stream_name(stream)
        items = self._check_chunks(chunks)
        await self.dispatch.heartbeat(project, key, token, domain.lease_length_of(token))
        if not items:
            return []
        return await self._append(project, key, stream, items, done=False)

    async def done(self, project: str, key: str, token: str, stream: str = DEFAULT_STREAM) -> str:
        """End the stream (followers stop after the last chunk); holder only, renews the lease.
        Ending a stream that is already done is a no-op returning the existing end marker's id."""
        validate_stream_name(stream)
        await self.dispatch.heartbeat(project, key, token, domain.lease_length_of(token))
        return (await self._append(project, key, stream, [], done=True))[-1]

    def _check_chunks(self, chunks: Sequence[str]) -> list[str]:
        if isinstance(chunks, str):
            raise exceptions.ValidationError("chunks must be a list of strings")
        items = list(chunks)
        if len(items) > self.config.max_chunks_per_publish:
            raise exceptions.ValidationError(
                f"at most {self.config.max_chunks_per_publish} chunks per publish, got {len(items)}"
            )
        for i, chunk in enumerate(items):
            if not isinstance(chunk, str):
                raise exceptions.ValidationError(f"chunk {i} is not a string")
            if len(chunk.encode("utf-8", "surrogatepass")) > self.config.max_chunk_bytes:
                raise exceptions.ValidationError(
                    f"chunk {i} is over the {self.config.max_chunk_bytes}-byte chunk cap", index=i
                )
        return items

    # -- readers ----------------------------------------------------------------------------
    async def read(
        self, project: str, key: str, after: str | None = None, stream: str = DEFAULT_STREAM, limit: int = 1000
    ) -> StreamPage:
        """Retained chunks after the cursor (``None``/``0`` = from the start), oldest first, at most
        *limit*; ``done`` once the end marker has been read. An unknown stream reads as empty."""
        _check_names(project, key, stream)
        cursor = parse_cursor(after)
        limit = max(1, min(limit, 10_000))
        return await self._read(project, key, stream, cursor, limit)

    async def follow(
        self,
        project: str,
        key: str,
        after: str | None = None,
        stream: str = DEFAULT_STREAM,
        *,
        idle_seconds: float = 15.0,
    ) -> AsyncGenerator[StreamChunk | None, None]:
        """Every chunk after the cursor, then live ones, ending after the done marker (yielded).

        Yields ``None`` after *idle_seconds* without news (for keep-alives). Raises QueueFull when
        ``max_followers`` followers are already open in this process.
        """
        _check_names(project, key, stream)
        cursor = parse_cursor(after)
        if self._followers >= self.config.max_followers:
            raise exceptions.QueueFull(
                f"too many stream followers open (max {self.config.max_followers})", limit=self.config.max_followers
            )
        self._followers += 1
        try:
            while True:
                page = await self._read(project, key, stream, cursor, 1000)
                for item in page.chunks:
                    yield item
                cursor = page.cursor
                if page.done:
                    return
                if page.chunks:
                    continue
                if not await self._wait(project, key, stream, cursor, idle_seconds):
                    yield None
        finally:
            self._followers -= 1

    # -- storage (per backend) --------------------------------------------------------------
    @abc.abstractmethod
    async def _append(self, project: str, key: str, stream: str, chunks: list[str], *, done: bool) -> list[str]:
        """Append chunks (and the end marker if *done*) atomically; ids returned in order.

        Raises InvalidTransition if the stream is already done (for ``done=True`` return the
        existing marker's id instead). Trims to ``retention_chunks``."""

    @abc.abstractmethod
    async def _read(self, project: str, key: str, stream: str, cursor: str, limit: int) -> StreamPage:
        """See :meth:`read` (arguments already validated)."""

    @abc.abstractmethod
    async def _wait(self, project: str, key: str, stream: str, cursor: str, timeout: float) -> bool:
        """Wait until something after *cursor* exists; False after *timeout* seconds without."""

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect (idempotent)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
