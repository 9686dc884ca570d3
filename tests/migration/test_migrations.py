"""Alembic migrations: upgrade an empty database, compare with the models, downgrade to base."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from queue_service import exceptions
from queue_service.postgres import migrate
from queue_service.postgres.tables import OPTIONAL_INDEXES, Base

pytestmark = pytest.mark.postgres


async def _on(url: str, fn: Any) -> Any:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(fn)
    finally:
        await engine.dispose()


def _not_optional(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    return not (type_ == "index" and name in OPTIONAL_INDEXES)


def _diff(conn: Connection) -> list[Any]:
    opts = {"compare_type": True, "compare_server_default": True, "include_object": _not_optional}
    ctx = MigrationContext.configure(conn, opts=opts)
    return list(compare_metadata(ctx, Base.metadata))


def _tables(conn: Connection) -> set[str]:
    rows = conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
    return {r[0] for r in rows}


async def test_upgrade_matches_models_and_downgrade_works(empty_pg_url: str) -> None:
    assert await migrate.current(empty_pg_url) is None
    await migrate.upgrade(empty_pg_url)
    assert await migrate.current(empty_pg_url) == migrate.head()
    assert await _on(empty_pg_url, _diff) == []
    tables = await _on(empty_pg_url, _tables)
    assert {tbl.name for tbl in Base.metadata.sorted_tables} <= tables
    await migrate.downgrade(empty_pg_url, "base")
    assert await migrate.current(empty_pg_url) is None
    assert await _on(empty_pg_url, _tables) == {"alembic_version"}
    # and back up again: the downgrade left nothing behind that blocks a fresh upgrade
    await migrate.upgrade(empty_pg_url, "head")
    assert await _on(empty_pg_url, _diff) == []


async def test_concurrent_upgrades_serialise(empty_pg_url: str) -> None:
    """Several replicas running ``migrate`` at start-up at once must not trip over each other."""
    await asyncio.gather(*(migrate.upgrade(empty_pg_url) for _ in range(3)))
    assert await migrate.current(empty_pg_url) == migrate.head()


async def test_unreachable_database_is_backend_unavailable() -> None:
    with pytest.raises(exceptions.BackendUnavailable):
        await migrate.upgrade("postgresql+asyncpg://postgres@127.0.0.1:1/postgres")


def _indexes(conn: Connection) -> dict[str, str]:
    rows = conn.execute(text("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"))
    return {r[0]: r[1] for r in rows}


def _trigram_offered(conn: Connection) -> bool:
    return conn.execute(text("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'")).first() is not None


async def test_event_task_index_and_optional_search_index(empty_pg_url: str) -> None:
    """0007: a task's events are indexed by key; the board search gets a trigram index where pg_trgm exists."""
    await migrate.upgrade(empty_pg_url, "0005_trace_context")
    assert "ix_events_project_task_key_id" not in await _on(empty_pg_url, _indexes)
    await migrate.upgrade(empty_pg_url, "0007_event_task_index")
    indexes = await _on(empty_pg_url, _indexes)
    assert "(project, task_key, id)" in indexes["ix_events_project_task_key_id"]
    if await _on(empty_pg_url, _trigram_offered):
        assert "gin_trgm_ops" in indexes["ix_tasks_search_trgm"]
    else:
        assert "ix_tasks_search_trgm" not in indexes
    await migrate.downgrade(empty_pg_url, "0005_trace_context")
    indexes = await _on(empty_pg_url, _indexes)
    assert "ix_events_project_task_key_id" not in indexes and "ix_tasks_search_trgm" not in indexes
