"""Issue 10 finding 7: Postgres dropping connections is a 503 (BackendUnavailable), never a 500.

``pg_terminate_backend`` on this test database's own backends (never the machine's server): every
pooled connection, SQLAlchemy's and the hot path's, is dead afterwards. The next calls must fail as
``BackendUnavailable`` (or succeed on a fresh connection), and the dead connections must be discarded,
so the calls after that succeed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from queue_service import exceptions
from queue_service.app import create_app
from queue_service.postgres.asyncpg_pool import asyncpg_dsn
from queue_service.postgres.backend import PostgresValkeyBackend
from queue_service.postgres.errors import is_connection_failure, translate
from queue_service.service import QueueService
from tests.integration.pgvk import open_backend
from tests.unit.api_support import http_client, running, settings

pytestmark = pytest.mark.postgres


async def terminate_own_backends(pg_url: str) -> int:
    """Kill every other session on the test's database; returns how many."""
    from sqlalchemy.engine import make_url

    conn = await asyncpg.connect(asyncpg_dsn(make_url(pg_url.replace("postgresql://", "postgresql+asyncpg://"))))
    try:
        rows = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    return len(rows)


@pytest.fixture
async def backend(pg_url: str, valkey_url: str, valkey_prefix: str) -> AsyncIterator[PostgresValkeyBackend]:
    async with open_backend(pg_url, valkey_url, valkey_prefix) as b:
        await QueueService(b).create_project({"slug": "web", "key_prefix": "WEB"})
        yield b


async def _outcome(call: Callable[[], Awaitable[Any]]) -> str:
    try:
        await call()
    except exceptions.BackendUnavailable:
        return "unavailable"
    except exceptions.QueueServiceError as exc:
        return f"{exc.code}: {exc.message}"
    return "ok"


async def test_terminated_backends_give_unavailable_then_recover(backend: PostgresValkeyBackend, pg_url: str) -> None:
    svc = QueueService(backend)
    # warm both pools: SQLAlchemy (create, list) and the raw hot path (claim, heartbeat, complete)
    await svc.create_tasks("web", [{"title": f"t{i}"} for i in range(6)])
    warm = await svc.claim("web", "warm")
    assert warm is not None
    await svc.complete("web", warm.task.key, warm.lease.token)
    held = await svc.claim("web", "holder", lease_seconds=60)
    assert held is not None

    assert await terminate_own_backends(pg_url) >= 1
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "claim": lambda: svc.claim("web", "a"),
        "heartbeat": lambda: svc.heartbeat("web", held.task.key, held.lease.token, 60),
        "create": lambda: svc.create_task("web", {"title": "after"}),
        "list": lambda: svc.list_tasks("web", {}),
        "complete_other": lambda: svc.complete("web", held.task.key, "not-the-token"),
    }
    first = {name: await _outcome(call) for name, call in calls.items()}
    assert all(v in ("ok", "unavailable") or v.startswith("lease_") for v in first.values()), first
    # the dead connections were discarded: everything works again at once
    second = {name: await _outcome(call) for name, call in list(calls.items())[:4]}
    assert second == {"claim": "ok", "heartbeat": "ok", "create": "ok", "list": "ok"}, second
    done = await svc.complete("web", held.task.key, held.lease.token)
    assert done.status.value == "done"


async def test_terminated_backends_are_503_over_http(backend: PostgresValkeyBackend, pg_url: str) -> None:
    app = create_app(settings(), backend=backend)
    async with running(app), http_client(app) as http:
        r = await http.post("/v1/projects/web/tasks", json={"title": "warm"})
        assert r.status_code == 201, r.text
        r = await http.post("/v1/projects/web/claims", json={"agent": "a"})
        assert r.status_code == 200, r.text
        await terminate_own_backends(pg_url)
        statuses = []
        for _ in range(2):
            statuses.append((await http.post("/v1/projects/web/tasks", json={"title": "x"})).status_code)
            statuses.append((await http.post("/v1/projects/web/claims", json={"agent": "b"})).status_code)
        assert 500 not in statuses, statuses
        assert set(statuses) <= {201, 200, 204, 503}, statuses


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.InterfaceError("pool is closing"),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
    ids=["internal-client-error", "does-not-exist", "pool-closing", "reset"],
)
def test_every_driver_connection_failure_maps_to_unavailable(error: BaseException) -> None:
    from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi
    from sqlalchemy.exc import DBAPIError

    assert is_connection_failure(error)
    assert isinstance(translate(error), exceptions.BackendUnavailable)
    # the same error as SQLAlchemy hands it over: a generic DBAPIError wrapping the adapter's error
    try:
        try:
            raise error
        except BaseException as inner:
            raise AsyncAdapt_asyncpg_dbapi.Error(str(inner)) from inner
    except AsyncAdapt_asyncpg_dbapi.Error as adapted:
        wrapped = DBAPIError.instance("SELECT 1", None, adapted, AsyncAdapt_asyncpg_dbapi.Error)
    assert isinstance(translate(wrapped), exceptions.BackendUnavailable)


def test_statement_errors_stay_backend_errors() -> None:
    err = asyncpg.exceptions.CheckViolationError("new row violates check constraint")
    assert not is_connection_failure(err)
    mapped = translate(err)
    assert isinstance(mapped, exceptions.BackendError)
    assert not isinstance(mapped, exceptions.BackendUnavailable)
