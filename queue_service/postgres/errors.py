"""Translate driver errors (SQLAlchemy, asyncpg, OSError) into the queue-service error tree.

Rule 12 of STYLE.md: no driver exception leaves ``queue_service/postgres/``. Every entry point of the
record store and the dispatcher runs inside :func:`wrap_errors`, which maps the most specific cause
it can recognise and always chains the original (``raise … from exc``).
"""

from __future__ import annotations

import contextlib
from types import TracebackType

import asyncpg
from sqlalchemy import exc as sa_exc

from queue_service import exceptions

__all__ = ["is_connection_failure", "translate", "wrap_errors"]

#: SQLSTATE codes that mean "the server is not there / went away / refuses us for now".
_UNAVAILABLE_SQLSTATES = {
    "08000",  # connection_exception
    "08001",  # sqlclient_unable_to_establish_sqlconnection
    "08003",  # connection_does_not_exist
    "08004",  # sqlserver_rejected_establishment_of_sqlconnection
    "08006",  # connection_failure
    "57P01",  # admin_shutdown
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now
    "53300",  # too_many_connections
    "3D000",  # invalid_catalog_name (database does not exist)
    "28P01",  # invalid_password
    "28000",  # invalid_authorization_specification
}
_UNDEFINED_TABLE = "42P01"
_UNIQUE_VIOLATION = "23505"


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a driver error, looking through SQLAlchemy's wrapper."""
    for candidate in (getattr(exc, "orig", None), exc, exc.__cause__):
        if candidate is None:
            continue
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
        # SQLAlchemy's asyncpg adapter keeps the asyncpg exception as ``__cause__`` of ``orig``.
        inner = getattr(candidate, "__cause__", None)
        code = getattr(inner, "sqlstate", None)
        if isinstance(code, str):
            return code
    return None


#: asyncpg errors raised by the client side of a connection that is broken or being torn down: the
#: server went away (``pg_terminate_backend``, restart), the socket died, the pool is closing, or the
#: protocol is left in an impossible state ("cannot switch to state 12" after a shutdown message).
_DRIVER_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.InterfaceError,  # includes ConnectionDoesNotExistError-like client states, "pool is closing"
    asyncpg.InternalClientError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.PostgresConnectionError,
    ConnectionError,
    OSError,
    TimeoutError,
)


def _chain(exc: BaseException) -> list[BaseException]:
    """*exc*, SQLAlchemy's ``orig`` and the ``__cause__`` chain (bounded)."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo and len(seen) < 8:
        cur = todo.pop(0)
        if cur is None or any(cur is s for s in seen):
            continue
        seen.append(cur)
        todo.extend([getattr(cur, "orig", None), cur.__cause__])
    return seen


def is_connection_failure(exc: BaseException) -> bool:
    """True when *exc* (or what it wraps) says the connection itself failed, not the statement.

    Such a connection must be discarded, and the caller told the backend is unavailable (503).
    """
    for cur in _chain(exc):
        if isinstance(cur, exceptions.QueueServiceError):
            return False
        if isinstance(cur, _DRIVER_CONNECTION_ERRORS):
            return True
        state = getattr(cur, "sqlstate", None)
        if isinstance(state, str) and (state in _UNAVAILABLE_SQLSTATES or state.startswith("08")):
            return True
        if isinstance(cur, sa_exc.DBAPIError) and cur.connection_invalidated:
            return True
        if isinstance(cur, (sa_exc.InterfaceError, sa_exc.DisconnectionError)):
            return True
    return False


def _constraint(exc: BaseException) -> str | None:
    for candidate in (getattr(exc, "orig", None), exc):
        if candidate is None:
            continue
        for obj in (candidate, getattr(candidate, "__cause__", None)):
            name = getattr(obj, "constraint_name", None)
            if isinstance(name, str):
                return name
    return None


def translate(exc: BaseException) -> exceptions.QueueServiceError | None:
    """The queue-service error for a driver error, or None if *exc* is not one we translate.

    Our own errors pass through untouched (None); unknown non-driver exceptions too.
    """
    if isinstance(exc, exceptions.QueueServiceError):
        return None
    if isinstance(exc, (OSError, TimeoutError)):
        return exceptions.BackendUnavailable(f"Postgres is unavailable: {exc}")
    if isinstance(exc, sa_exc.SQLAlchemyError):
        state = _sqlstate(exc)
        orig = getattr(exc, "orig", None)
        detail = str(orig if orig is not None else exc).strip().splitlines()[0] if str(exc) else type(exc).__name__
        if state == _UNIQUE_VIOLATION:
            name = _constraint(exc)
            return exceptions.AlreadyExists(f"already exists ({name or 'unique constraint'}): {detail}")
        if state in _UNAVAILABLE_SQLSTATES or (state is not None and state.startswith("08")):
            return exceptions.BackendUnavailable(f"Postgres is unavailable: {detail}")
        if isinstance(exc, (sa_exc.InterfaceError, sa_exc.DisconnectionError)) or (
            isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated
        ):
            return exceptions.BackendUnavailable(f"Postgres is unavailable: {detail}")
        if isinstance(exc, sa_exc.TimeoutError):  # pool exhausted
            return exceptions.BackendUnavailable(f"Postgres connection pool timed out: {detail}")
        if isinstance(exc, sa_exc.DBAPIError) and isinstance(orig, OSError):
            return exceptions.BackendUnavailable(f"Postgres is unavailable: {detail}")
        if is_connection_failure(exc):
            # asyncpg's client-side errors ("cannot switch to state", "connection was closed in the
            # middle of operation", "pool is closing") reach us wrapped as generic DBAPIErrors
            return exceptions.BackendUnavailable(f"Postgres is unavailable: {detail}")
        if state == _UNDEFINED_TABLE:  # the usual cause: a fresh database nobody migrated yet
            return exceptions.BackendError(f"Postgres error: {detail} (run `queue-service migrate` first?)")
        return exceptions.BackendError(f"Postgres error: {detail}")
    module = type(exc).__module__ or ""
    if module.startswith("asyncpg"):
        state = getattr(exc, "sqlstate", None)
        if state == _UNIQUE_VIOLATION:
            return exceptions.AlreadyExists(f"already exists: {exc}")
        if is_connection_failure(exc):
            return exceptions.BackendUnavailable(f"Postgres is unavailable: {type(exc).__name__}: {exc}")
        return exceptions.BackendError(f"Postgres error: {exc}")
    return None


class wrap_errors(contextlib.AbstractContextManager[None], contextlib.AbstractAsyncContextManager[None]):
    """Context manager (``with`` or ``async with``) that re-raises driver errors as ours.

    ```python
    async with wrap_errors():
        async with engine.begin() as conn:
            ...
    ```
    """

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        if exc is None:
            return None
        mapped = translate(exc)
        if mapped is None:
            return None
        raise mapped from exc

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        return self.__exit__(exc_type, exc, tb)
