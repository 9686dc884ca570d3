"""The Backend seam itself: argument rules pinned by calling ``backend.records``/``backend.dispatch``
directly, not through QueueService (which validates first and so hid drift between backends:
``lease_seconds=0`` once meant "the default" on memory/flatfile and a ValidationError on Postgres).

Every case runs on every backend (``tests/fixtures/backends.py``); a refused call changes nothing.
"""

from __future__ import annotations

import math

import pytest

from queue_service import exceptions
from queue_service.backend import Backend
from queue_service.domain import MAX_LEASE_SECONDS
from queue_service.models import ProjectCreate, TaskCreate, TaskFilter, TaskStatus

S = TaskStatus
#: lease lengths every backend refuses (zero never silently means "the default")
BAD_LEASES = [0, 0.0, -1.0, math.nan, math.inf, -math.inf, MAX_LEASE_SECONDS + 1, 1e12]


@pytest.fixture
async def web(backend: Backend) -> str:
    await backend.records.create_project(ProjectCreate(slug="web", key_prefix="WEB"))
    await backend.records.create_tasks(
        "web", [TaskCreate(title="build", role="dev"), TaskCreate(title="review", role="qa")]
    )
    return "web"


async def _untouched(backend: Backend, project: str) -> None:
    tasks = (await backend.records.list_tasks(project)).items
    assert [(t.key, t.status, t.version, t.lease_holder) for t in tasks] == [
        ("WEB-1", S.NOT_STARTED, 1, None),
        ("WEB-2", S.NOT_STARTED, 1, None),
    ]


# -- lease lengths ---------------------------------------------------------------------------------
# One test per method walks every bad length (one project per backend, not one per length: the
# Postgres fixture clones a database per test).
async def test_claim_refuses_a_bad_lease_and_changes_nothing(backend: Backend, web: str) -> None:
    for lease in BAD_LEASES:
        with pytest.raises(exceptions.ValidationError):
            await backend.dispatch.claim(web, "a1", lease_seconds=lease)
    await _untouched(backend, web)


async def test_claim_many_refuses_a_bad_lease_and_changes_nothing(backend: Backend, web: str) -> None:
    for lease in BAD_LEASES:
        with pytest.raises(exceptions.ValidationError):
            await backend.dispatch.claim_many(web, "a1", limit=2, lease_seconds=lease)
    await _untouched(backend, web)


async def test_claim_next_refuses_a_bad_lease_and_changes_nothing(backend: Backend, web: str) -> None:
    for lease in BAD_LEASES:
        with pytest.raises(exceptions.ValidationError):
            await backend.dispatch.claim_next(web, "a1", None, lease)
    await _untouched(backend, web)


async def test_heartbeat_refuses_a_bad_lease_and_keeps_the_lease(backend: Backend, web: str) -> None:
    claim = await backend.dispatch.claim(web, "a1", ["dev"])
    assert claim is not None
    for lease in BAD_LEASES:
        with pytest.raises(exceptions.ValidationError):
            await backend.dispatch.heartbeat(web, claim.task.key, claim.lease.token, lease)
    task = await backend.records.get_task(web, claim.task.key)
    assert task.lease_expires_at == claim.lease.expires_at
    assert task.status is S.IN_PROGRESS


async def test_no_lease_means_the_configured_default(backend: Backend, web: str) -> None:
    claim = await backend.dispatch.claim(web, "a1", ["dev"])
    assert claim is not None
    assert claim.lease.seconds == backend.config.lease_seconds
    lease = await backend.dispatch.heartbeat(web, claim.task.key, claim.lease.token)
    assert lease.seconds == backend.config.lease_seconds


async def test_the_longest_lease_is_granted(backend: Backend, web: str) -> None:
    claim = await backend.dispatch.claim(web, "a1", ["dev"], lease_seconds=MAX_LEASE_SECONDS)
    assert claim is not None
    assert claim.lease.seconds == MAX_LEASE_SECONDS
    lease = await backend.dispatch.heartbeat(web, claim.task.key, claim.lease.token, MAX_LEASE_SECONDS)
    assert lease.seconds == MAX_LEASE_SECONDS


# -- batch limits ----------------------------------------------------------------------------------
async def test_claim_many_refuses_a_limit_below_one(backend: Backend, web: str) -> None:
    for limit in (0, -1):
        with pytest.raises(exceptions.ValidationError):
            await backend.dispatch.claim_many(web, "a1", limit=limit)
    await _untouched(backend, web)


async def test_claim_many_returns_at_most_limit_best_first(backend: Backend, web: str) -> None:
    claims = await backend.dispatch.claim_many(web, "a1", limit=1)
    assert [c.task.key for c in claims] == ["WEB-1"]
    claims = await backend.dispatch.claim_many(web, "a1", limit=5)
    assert [c.task.key for c in claims] == ["WEB-2"]
    assert await backend.dispatch.claim_many(web, "a1", limit=5) == []


async def test_list_tasks_with_a_zero_limit_is_an_empty_last_page(backend: Backend, web: str) -> None:
    page = await backend.records.list_tasks(web, TaskFilter(), limit=0)
    assert page.items == ()
    assert page.next_cursor is None


# -- roles -----------------------------------------------------------------------------------------
async def test_empty_roles_mean_every_role(backend: Backend, web: str) -> None:
    first = await backend.dispatch.claim(web, "a1", [])
    second = await backend.dispatch.claim_many(web, "a2", [], limit=5)
    assert first is not None
    assert [first.task.key, *(c.task.key for c in second)] == ["WEB-1", "WEB-2"]


async def test_empty_roles_list_every_ready_task(backend: Backend, web: str) -> None:
    ready = await backend.records.ready_tasks(web, [])
    everyone = await backend.records.ready_tasks(web, None)
    assert [t.key for t in ready.tasks] == [t.key for t in everyone.tasks] == ["WEB-1", "WEB-2"]
    assert ready.total == everyone.total == 2


async def test_roles_restrict_and_repeats_do_not_matter(backend: Backend, web: str) -> None:
    assert await backend.dispatch.claim(web, "a1", ["ops"]) is None
    claim = await backend.dispatch.claim(web, "a1", ["qa", "qa"])
    assert claim is not None
    assert claim.task.key == "WEB-2"
    assert await backend.dispatch.claim_many(web, "a1", ["qa"], limit=3) == []


# -- waiting ---------------------------------------------------------------------------------------
async def test_no_wait_returns_at_once_when_nothing_is_ready(backend: Backend, web: str) -> None:
    for wait in (0.0, -1.0):
        assert await backend.dispatch.claim(web, "a1", ["ops"], wait=wait) is None
        assert await backend.dispatch.claim_many(web, "a1", ["ops"], limit=2, wait=wait) == []


# -- unknown names ---------------------------------------------------------------------------------
async def test_unknown_project_is_project_not_found(backend: Backend, web: str) -> None:
    with pytest.raises(exceptions.ProjectNotFound):
        await backend.dispatch.claim("nope", "a1")
    with pytest.raises(exceptions.ProjectNotFound):
        await backend.dispatch.claim_many("nope", "a1", limit=2)
    with pytest.raises(exceptions.ProjectNotFound):
        await backend.records.list_tasks("nope")


async def test_unknown_task_is_task_not_found_or_lease_error(backend: Backend, web: str) -> None:
    with pytest.raises(exceptions.TaskNotFound):
        await backend.records.get_task(web, "WEB-99")
    # a lease call on a task that does not exist is a refused token, never a server error
    with pytest.raises((exceptions.LeaseError, exceptions.TaskNotFound)):
        await backend.dispatch.heartbeat(web, "WEB-99", "not-a-token")
