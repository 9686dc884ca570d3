"""Alembic environment (async): runs migrations over an asyncpg connection.

The URL comes from ``config.attributes["url"]`` (set by :mod:`queue_service.postgres.migrate`), then
the ``sqlalchemy.url`` option, then ``QUEUE_DATABASE_URL``/``MOSAIC_DATABASE_URL``. A connection
passed in ``config.attributes["connection"]`` (a sync facade from ``run_sync``) is used as is.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import async_engine_from_config

from queue_service.postgres.tables import OPTIONAL_INDEXES, Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    url = url or os.environ.get("QUEUE_DATABASE_URL") or os.environ.get("MOSAIC_DATABASE_URL")
    if not url:
        raise RuntimeError("no database URL: pass one to queue_service.postgres.migrate or set QUEUE_DATABASE_URL")
    return str(url)


def _include(_obj: Any, name: str | None, type_: str, _reflected: bool, _compare_to: Any) -> bool:
    # created by a migration only where the server allows it (pg_trgm): autogenerate must not drop it
    return not (type_ == "index" and name in OPTIONAL_INDEXES)


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        compare_server_default=True,
        include_object=_include,
        transaction_per_migration=True,
        **kwargs,
    )


def run_migrations_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade head --sql``)."""
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    """Run the migrations on a (sync facade of an async) connection."""
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    """Open an engine without pooling, migrate, dispose."""
    section = config.get_section(config.config_ini_section, {})
    section["sqlalchemy.url"] = _url()
    engine = async_engine_from_config(section, prefix="sqlalchemy.", poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    """Migrate through a given connection, or an engine of our own."""
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
    else:
        asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
