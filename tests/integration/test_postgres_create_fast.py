"""``create_task``'s fast path on Postgres (one plain task, two statements on asyncpg) answers exactly
what the general path answers; whatever it cannot answer falls back to the general path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from queue_service import exceptions
from queue_service.models import TaskStatus
from queue_service.postgres.backend import PostgresValkeyBackend
from queue_service.postgres.records import task_create
from queue_service.service import QueueService
from tests.integration.pgvk import fast, open_backend

pytestmark = pytest.mark.postgres


@pytest.fixture
async def pg(pg_url: str, valkey_url: str, valkey_prefix: str) -> AsyncIterator[PostgresValkeyBackend]:
    async with open_backend(pg_url, valkey_url, valkey_prefix, fast(max_queue_depth=4)) as backend:
        yield backend


async def test_a_plain_task_takes_the_fast_path_and_is_dispatched(
    pg: PostgresValkeyBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    answered: list[bool] = []
    real = task_create.create_one_fast

    async def counted(*args: Any) -> Any:
        result = await real(*args)
        answered.append(result is not None)
        return result

    monkeypatch.setattr(task_create, "create_one_fast", counted)
    svc = QueueService(pg)
    await svc.create_project({"slug": "web", "key_prefix": "WEB"})
    task = await svc.create_task("web", {"title": "one", "labels": ["a"], "extra": {"k": "v"}, "priority": "P1"})
    assert answered == [True]
    assert (task.key, task.seq, task.status, task.version) == ("WEB-1", 1, TaskStatus.NOT_STARTED, 1)
    assert task == await svc.get_task("web", "WEB-1")  # what it returned is what was stored
    # a dependent, a given key or a batch take the general path
    await svc.create_task("web", {"title": "two", "depends_on": ["WEB-1"]})
    await svc.create_task("web", {"title": "three", "key": "WEB-9"})
    # so do fields the fast path does not write (added after it, e.g. requires): nothing is dropped
    four = await svc.create_task("web", {"title": "four", "requires": {"model": "opus"}})
    assert answered == [True]
    assert (await svc.get_task("web", four.key)).requires == {"model": "opus"}
    claim = await svc.claim("web", "agent")
    assert claim is not None and claim.task.key == "WEB-1"
    # the fast path wrote the created event like the general path
    kinds = [(e.task, e.kind) for e in await pg.records.list_events("web", 0, 100)]
    assert kinds[1] == ("WEB-1", "created") and ("WEB-1", "claimed") in kinds


async def test_a_key_number_already_taken_falls_back_and_is_skipped(pg: PostgresValkeyBackend) -> None:
    svc = QueueService(pg)
    await svc.create_project({"slug": "web", "key_prefix": "WEB"})
    await svc.create_tasks("web", [{"title": "a"}, {"title": "b"}])
    # a counter behind the keys in use (as after importing tasks keyed WEB-1, WEB-2 by hand)
    async with pg.dispatch.raw_pool.connection() as conn:
        await conn.execute("UPDATE projects SET next_seq = 1 WHERE slug = 'web'")
    task = await svc.create_task("web", {"title": "c"})
    assert task.key == "WEB-3"  # the fast path's WEB-1 collided, rolled back; the general path skipped
    assert [t.key for t in (await svc.list_tasks("web", {}, 10)).items] == ["WEB-1", "WEB-2", "WEB-3"]
    assert (await svc.create_task("web", {"title": "d"})).key == "WEB-4"


async def test_unknown_project_mission_and_full_queue_give_the_general_errors(pg: PostgresValkeyBackend) -> None:
    svc = QueueService(pg)
    with pytest.raises(exceptions.ProjectNotFound):
        await svc.create_task("nope", {"title": "x"})
    await svc.create_project({"slug": "web", "key_prefix": "WEB"})
    with pytest.raises(exceptions.MissionNotFound):
        await svc.create_task("web", {"title": "x", "mission": "ghost"})
    for i in range(4):
        await svc.create_task("web", {"title": f"t{i}"})
    with pytest.raises(exceptions.QueueFull) as full:
        await svc.create_task("web", {"title": "one too many"})
    assert full.value.details["depth"] == 4
    # nothing half-written: the refused creations took no key number
    await svc.create_task("web", {"title": "other role", "role": "qa"})
    assert [t.key for t in (await svc.list_tasks("web", {}, 10)).items] == ["WEB-1", "WEB-2", "WEB-3", "WEB-4", "WEB-5"]
