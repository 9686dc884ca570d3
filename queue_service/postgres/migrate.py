"""Run the alembic migrations programmatically (``queue-service migrate``, tests, start-up checks).

The database URL always comes from the caller (Settings), never from ``alembic.ini``. Migrations run
on one async connection holding a Postgres advisory lock, so several replicas starting at once
migrate one after the other instead of racing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from queue_service import exceptions
from queue_service.postgres.errors import wrap_errors

__all__ = ["MIGRATIONS_DIR", "alembic_config", "current", "downgrade", "head", "upgrade"]

#: ``migrations/`` at the top of the source tree (installed as the ``migrations`` package).
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent.parent / "migrations"
#: Arbitrary constant: the advisory lock id serialising concurrent migrations.
_LOCK_ID = 0x5155455545  # "QUEUE"


def _migrations_dir() -> Path:
    if (MIGRATIONS_DIR / "env.py").exists():
        return MIGRATIONS_DIR
    # Installed package layout: located, not imported. The scripts are alembic's to run, and
    # ``migrations/env.py`` imports ``postgres.tables``: importing it here would close a package circle.
    spec = importlib.util.find_spec("migrations")
    if spec is None or not spec.submodule_search_locations:
        raise exceptions.ConfigurationError(
            f"the alembic migrations are missing: no {MIGRATIONS_DIR} and no installed 'migrations' package"
        )
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def alembic_config(url: str | None = None) -> Config:
    """An alembic Config for our migrations directory; *url* is passed to ``env.py`` in memory."""
    directory = _migrations_dir()
    cfg = Config(str(directory / "alembic.ini"))
    cfg.set_main_option("script_location", str(directory))
    if url:
        cfg.attributes["url"] = url
    return cfg


def head() -> str:
    """The newest revision id of the migration scripts."""
    script = ScriptDirectory.from_config(alembic_config())
    rev = script.get_current_head()
    assert rev is not None, "no migrations found"
    return rev


async def _run(url: str, fn: Any, *args: Any) -> Any:
    """Run ``fn(cfg, sync_connection, *args)`` on one connection under the migration lock."""
    async with wrap_errors():
        engine = create_async_engine(url, poolclass=pool.NullPool)
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _LOCK_ID})
                await conn.commit()
                try:

                    def call(sync_conn: Connection) -> Any:
                        cfg = alembic_config(url)
                        cfg.attributes["connection"] = sync_conn
                        return fn(cfg, sync_conn, *args)

                    out = await conn.run_sync(call)
                    await conn.commit()
                    return out
                finally:
                    await conn.rollback()
                    await conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _LOCK_ID})
                    await conn.commit()
        finally:
            await engine.dispose()


async def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at *url* up to *revision* (default: the newest)."""
    await _run(url, lambda cfg, _conn, rev: command.upgrade(cfg, rev), revision)


async def downgrade(url: str, revision: str) -> None:
    """Migrate the database at *url* down to *revision* (``base`` empties it)."""
    await _run(url, lambda cfg, _conn, rev: command.downgrade(cfg, rev), revision)


async def current(url: str) -> str | None:
    """The revision the database at *url* is at, or None if it was never migrated."""

    def read(_cfg: Config, conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    return await _run(url, read)  # type: ignore[no-any-return]
