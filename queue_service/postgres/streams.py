"""Valkey Streams store for the Postgres+Valkey backend (``QUEUE_STREAM_URL``, default the Valkey URL).

One Valkey stream per task stream: ``{prefix}:stream:{project}:{key}:{stream}``; chunks are entries
``c=<text>``, the end marker is ``d=1``. ``XADD … MAXLEN ~ retention`` bounds each stream (Valkey
trims whole nodes, so a little more than the retention may stay), and every publish resets the key's
TTL to ``retention_seconds``. Followers block in ``XREAD BLOCK`` on a pool of their own.

Only stream data lives here: a flush of this Valkey loses retained chunks, never task state (which
is in Postgres).
"""

from __future__ import annotations

import contextlib
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_exc

from queue_service import exceptions
from queue_service.streams import StreamChunk, StreamPage, StreamStore

__all__ = ["ValkeyStreamStore"]

_APPEND = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last > 0 then
  local f = last[1][2]
  for i = 1, #f, 2 do
    if f[i] == 'd' then return {'done', last[1][1]} end
  end
end
local ids = {'ok'}
for i = 4, #ARGV do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'c', ARGV[i])
end
if ARGV[3] == '1' then
  ids[#ids + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'd', '1')
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return ids
"""


class ValkeyStreamStore(StreamStore):
    """The stream contract on Valkey Streams."""

    def __init__(self, url: str, prefix: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.url = url.replace("valkey://", "redis://", 1).replace("valkeys://", "rediss://", 1)
        self.prefix = prefix
        self._client: aioredis.Redis | None = None
        self._blocking: aioredis.Redis | None = None
        self._script: Any = None

    async def open(self) -> None:
        if self._client is not None:
            return
        self._client = aioredis.Redis.from_url(self.url, decode_responses=True, max_connections=64)
        self._blocking = aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool.from_url(
                self.url,
                decode_responses=True,
                max_connections=self.config.max_followers + 1,
                timeout=None,
                socket_timeout=30.0,
            )
        )
        self._script = self._client.register_script(_APPEND)

    async def close(self) -> None:
        client, blocking = self._client, self._blocking
        self._client = self._blocking = None
        for c in (client, blocking):
            if c is not None:
                with contextlib.suppress(redis_exc.RedisError, OSError):
                    await c.aclose()
                with contextlib.suppress(redis_exc.RedisError, OSError):
                    await c.connection_pool.disconnect()

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            raise exceptions.BackendUnavailable("the stream store is not open", service="valkey")
        return self._client

    def stream_key(self, project: str, key: str, stream: str) -> str:
        return f"{self.prefix}:stream:{project}:{key}:{stream}"

    @staticmethod
    def _chunk(entry_id: str, fields: dict[str, str]) -> StreamChunk:
        if "d" in fields:
            return StreamChunk(id=entry_id, done=True)
        return StreamChunk(id=entry_id, chunk=fields.get("c", ""))

    async def _append(self, project: str, key: str, stream: str, chunks: list[str], *, done: bool) -> list[str]:
        name = self.stream_key(project, key, stream)
        args = [self.config.retention_chunks, self.config.retention_seconds, "1" if done else "0", *chunks]
        try:
            out = await self._script(keys=[name], args=args)
        except (redis_exc.RedisError, OSError) as exc:
            raise exceptions.BackendUnavailable(f"Valkey stream append failed: {exc}", service="valkey") from exc
        if out[0] == "done":
            if done and not chunks:
                return [str(out[1])]
            raise exceptions.InvalidTransition(f"stream {stream!r} of {key} is done", stream=stream)
        return [str(i) for i in out[1:]]

    async def _read(self, project: str, key: str, stream: str, cursor: str, limit: int) -> StreamPage:
        name = self.stream_key(project, key, stream)
        try:
            entries: list[tuple[str, dict[str, str]]] = await self.client.xrange(
                name, min=f"({cursor}", max="+", count=limit
            )  # type: ignore[assignment]
        except (redis_exc.RedisError, OSError) as exc:
            raise exceptions.BackendUnavailable(f"Valkey stream read failed: {exc}", service="valkey") from exc
        out = [self._chunk(eid, fields) for eid, fields in entries]
        last = out[-1] if out else None
        return StreamPage(chunks=out, done=bool(last and last.done), cursor=last.id if last else cursor)

    async def _wait(self, project: str, key: str, stream: str, cursor: str, timeout: float) -> bool:
        if self._blocking is None:
            raise exceptions.BackendUnavailable("the stream store is not open", service="valkey")
        name = self.stream_key(project, key, stream)
        try:
            got = await self._blocking.xread({name: cursor}, count=1, block=max(1, int(timeout * 1000)))
        except (redis_exc.RedisError, OSError) as exc:
            raise exceptions.BackendUnavailable(f"Valkey stream wait failed: {exc}", service="valkey") from exc
        return bool(got)
