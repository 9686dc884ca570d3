"""PostgresValkeyBackend: the team backend — Postgres records, Valkey dispatch signals and events.

Composition (STYLE rule 5): :class:`~queue_service.postgres.records.PostgresRecordStore` (the truth),
:class:`~queue_service.postgres.dispatch.PostgresValkeyDispatcher` (claims and leases) and
:class:`ValkeyEventStream` (pub/sub), sharing one SQLAlchemy engine and one
:class:`~queue_service.postgres.valkey.ValkeyBroker`. The record store's ``on_commit`` hook is the
dispatcher's ``apply_effects``: tasks a transaction made ready are queued, backoffs scheduled and
events published, all after commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from queue_service import exceptions
from queue_service.backend import Backend, DispatchConfig, EventStream
from queue_service.models import Event, TaskStatus
from queue_service.postgres.agents import PostgresAgentRegistry
from queue_service.postgres.dispatch import PostgresValkeyDispatcher
from queue_service.postgres.errors import is_connection_failure, wrap_errors
from queue_service.postgres.records import PostgresRecordStore
from queue_service.postgres.streams import ValkeyStreamStore
from queue_service.postgres.valkey import ValkeyBroker
from queue_service.postgres.valkey_keys import DEFAULT_PREFIX

__all__ = ["PostgresValkeyBackend", "ValkeyEventStream", "event_from_payload", "normalise_database_url"]

#: How long ``ping`` waits for each service before calling it unavailable.
PING_TIMEOUT = 5.0


def normalise_database_url(url: str) -> str:
    """``postgres://`` / ``postgresql://`` → ``postgresql+asyncpg://`` (the only driver we ship)."""
    for plain in ("postgres://", "postgresql://"):
        if url.startswith(plain):
            return "postgresql+asyncpg://" + url[len(plain) :]
    return url


def event_from_payload(payload: dict[str, Any]) -> Event | None:
    """Rebuild an :class:`Event` from a published payload; None if it is not one of ours."""
    try:
        status = payload.get("status")
        return Event(
            id=int(payload["id"]),
            project=str(payload["project"]),
            task=payload.get("task"),
            kind=str(payload["kind"]),
            status=TaskStatus(status) if status else None,
            version=payload.get("version"),
            at=datetime.fromisoformat(str(payload["at"])),
            data=dict(payload.get("data") or {}),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _discard_broken_connections(ctx: ExceptionContext) -> None:
    """Tell SQLAlchemy a driver-level connection failure is a disconnect, so the connection (and the
    pool's other connections, which saw the same server go away) are discarded, not reused.

    SQLAlchemy's asyncpg dialect only recognises a few messages; asyncpg's client-side errors after
    ``pg_terminate_backend`` or a restart ("cannot switch to state 12", "connection was closed in
    the middle of operation") would otherwise leave a dead connection in the pool.
    """
    if not ctx.is_disconnect and is_connection_failure(ctx.original_exception):
        ctx.is_disconnect = True


class ValkeyEventStream(EventStream):
    """Events from the project's Valkey channel, published by the dispatcher after each commit."""

    def __init__(self, broker: ValkeyBroker, dispatcher: PostgresValkeyDispatcher) -> None:
        self.broker = broker
        self._dispatcher = dispatcher

    async def subscribe(self, project: str) -> AsyncIterator[Event]:
        """See :meth:`EventStream.subscribe`. Raises ProjectNotFound for an unknown project."""
        await self._dispatcher.require_project(None, project)
        sub = await self.broker.subscription(project)
        try:
            async for payload in sub:
                event = event_from_payload(payload)
                if event is not None:
                    yield event
        finally:
            await sub.aclose()


class PostgresValkeyBackend(Backend):
    """Postgres (system of record) + Valkey (ready lists, locks, pub/sub).

    Args:
        database_url: ``postgresql+asyncpg://user@host/db`` (``postgres://`` is accepted too).
        valkey_url: ``redis://host:port/db`` (``valkey://`` is accepted too).
        config: dispatch timings and limits.
        key_prefix: Valkey key space; the default is the plan's ``mosaic:queue``.
        pool_size: Postgres connections kept open; ``max_overflow`` more are opened under load.
        max_overflow: extra Postgres connections allowed beyond ``pool_size``.
        max_waiters: Valkey connections for blocked claimers and subscribers.
        node_id: this replica's name in the orchestrator leader lock.
    """

    name = "postgres+valkey"

    def __init__(
        self,
        database_url: str,
        valkey_url: str,
        config: DispatchConfig | None = None,
        *,
        key_prefix: str = DEFAULT_PREFIX,
        pool_size: int = 10,
        max_overflow: int = 40,
        max_waiters: int = 1024,
        node_id: str | None = None,
        stream_url: str | None = None,
    ) -> None:
        self.config = config or DispatchConfig()
        self.database_url = normalise_database_url(database_url)
        try:
            make_url(self.database_url)
        except Exception as exc:
            raise exceptions.ConfigurationError(f"invalid database URL: {exc}") from exc
        self.engine: AsyncEngine = create_async_engine(
            self.database_url,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=30,
            # A connection a Postgres restart killed is replaced after one failed checkout; pre-ping
            # would cost a round trip on every claim.
            pool_recycle=1800,
        )
        event.listen(self.engine.sync_engine, "handle_error", _discard_broken_connections)
        self.broker = ValkeyBroker(valkey_url, prefix=key_prefix, max_waiters=max_waiters)
        self.dispatch: PostgresValkeyDispatcher = PostgresValkeyDispatcher(
            self.engine, self.broker, self.config, node_id=node_id
        )
        self.records: PostgresRecordStore = PostgresRecordStore(
            self.engine, self.config, on_commit=self.dispatch.apply_effects
        )
        self.records.raw = self.dispatch.raw_pool
        self.events: ValkeyEventStream = ValkeyEventStream(self.broker, self.dispatch)
        self.agents: PostgresAgentRegistry = PostgresAgentRegistry(
            self.dispatch._raw, lambda: self.config.agent_ready_seconds
        )
        # issue 14: chunk streams, on their own Valkey when QUEUE_STREAM_URL is set
        self.streams: ValkeyStreamStore = ValkeyStreamStore(stream_url or valkey_url, key_prefix, self.dispatch)
        self._open = False

    async def open(self) -> None:
        """Create the Valkey pools (connections are made on first use). Idempotent."""
        if self._open:
            return
        await self.broker.open()
        await self.streams.open()
        self._open = True

    async def close(self) -> None:
        """Close the Valkey pools and dispose of the Postgres pool. Idempotent."""
        self._open = False
        await self.broker.close()
        await self.streams.close()
        await self.dispatch.close()
        async with wrap_errors():
            await self.engine.dispose()

    async def ping(self) -> None:
        """Raise BackendUnavailable naming the service (Postgres or Valkey) that does not answer."""
        try:
            async with wrap_errors(), asyncio.timeout(PING_TIMEOUT), self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except TimeoutError as exc:
            raise exceptions.BackendUnavailable(
                f"Postgres did not answer within {PING_TIMEOUT:g}s", service="postgres"
            ) from exc
        except exceptions.BackendError as exc:
            raise exceptions.BackendUnavailable(f"Postgres: {exc.message}", service="postgres") from exc
        if not self._open:
            raise exceptions.BackendUnavailable("Valkey: the backend is not open", service="valkey")
        try:
            async with asyncio.timeout(PING_TIMEOUT):
                await self.broker.ping()
        except TimeoutError as exc:
            raise exceptions.BackendUnavailable(
                f"Valkey did not answer within {PING_TIMEOUT:g}s", service="valkey"
            ) from exc
        except exceptions.BackendError as exc:
            raise exceptions.BackendUnavailable(f"Valkey: {exc.message}", service="valkey") from exc
