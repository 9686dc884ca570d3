"""API token records on Postgres (hashes only; the secrets never reach the database)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from queue_service import exceptions
from queue_service.models import ApiToken, TokenRole
from queue_service.postgres import tables as t
from queue_service.postgres.records.base import PostgresRecordsBase

__all__ = ["TokenRecords"]


def _token_from_row(row: Any) -> ApiToken:
    return ApiToken(
        id=row.id,
        project=row.project,
        role=TokenRole(row.role),
        token_hash=row.token_hash,
        name=row.name,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


class TokenRecords(PostgresRecordsBase):
    """API token records (one part of the record store)."""

    async def add_api_token(self, token: ApiToken) -> None:
        """Store a token record (hash only). Raises AlreadyExists for a duplicate id."""
        async with self._tx() as (conn, _effects):
            row = (
                await conn.execute(
                    pg_insert(t.api_tokens)
                    .values(
                        id=token.id,
                        project=token.project,
                        role=token.role.value,
                        token_hash=token.token_hash,
                        name=token.name,
                        created_at=token.created_at,
                    )
                    .on_conflict_do_nothing()
                    .returning(t.api_tokens.c.id)
                )
            ).first()
            if row is None:
                raise exceptions.AlreadyExists(f"token {token.id!r} already exists")

    async def find_api_token(self, token_hash: str) -> ApiToken | None:
        """The token whose hash matches, or None."""
        async with self._read() as conn:
            row = (await conn.execute(select(t.api_tokens).where(t.api_tokens.c.token_hash == token_hash))).first()
            return _token_from_row(row) if row is not None else None

    async def count_api_tokens(self) -> int:
        """How many token records exist, revoked ones included (0 means auth is off)."""
        async with self._read() as conn:
            return int(await conn.scalar(select(func.count()).select_from(t.api_tokens)) or 0)

    async def list_api_tokens(self) -> list[ApiToken]:
        """Every token record, oldest first (revoked ones included)."""
        async with self._read() as conn:
            rows = await conn.execute(select(t.api_tokens).order_by(t.api_tokens.c.created_at, t.api_tokens.c.id))
            return [_token_from_row(row) for row in rows]

    async def revoke_api_token(self, token_id: str) -> ApiToken:
        """Mark a token revoked (idempotent). Raises NotFound for an unknown id."""
        async with self._tx() as (conn, _effects):
            await conn.execute(
                update(t.api_tokens)
                .where(t.api_tokens.c.id == token_id, t.api_tokens.c.revoked_at.is_(None))
                .values(revoked_at=func.now())
            )
            row = (await conn.execute(select(t.api_tokens).where(t.api_tokens.c.id == token_id))).first()
            if row is None:
                raise exceptions.NotFound(f"no token with id {token_id!r}", token=token_id)
            return _token_from_row(row)

    async def purge_api_tokens(self) -> int:
        """Delete every token record (auth turns off); returns how many there were."""
        async with self._tx() as (conn, _effects):
            result = await conn.execute(delete(t.api_tokens))
            return int(result.rowcount or 0)
