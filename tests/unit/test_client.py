"""The typed client (sync and async) and its worker helper, against the real app in-process."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from queue_service import exceptions
from queue_service.app import create_app
from queue_service.client import AsyncClient, Client, PermanentError, RetryPolicy, ServiceUnreachable
from queue_service.models import Task, TaskStatus, TaskUpdate
from queue_service.testing import InMemoryBackend
from tests.unit.api_support import BASE, FAST, ThreadedASGITransport, add_token, app, mem, settings

__all__ = ["app", "mem"]

FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.01)


@pytest.fixture
async def qs(app: FastAPI) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(BASE, transport=httpx.ASGITransport(app=app), retry=FAST_RETRY) as client:
        await client.create_project({"slug": "web", "name": "Web"})
        yield client


@pytest.fixture
def served() -> Iterator[tuple[ThreadedASGITransport, InMemoryBackend]]:
    """The app on its own loop thread, for the sync client (which then may block or burn CPU)."""
    backend = InMemoryBackend(config=FAST)
    transport = ThreadedASGITransport(create_app(settings(), backend=backend))
    try:
        yield transport, backend
    finally:
        transport.close()


@pytest.fixture
def sync_qs(served: tuple[ThreadedASGITransport, InMemoryBackend]) -> Iterator[Client]:
    transport, _ = served
    with Client(BASE, transport=transport, retry=FAST_RETRY) as client:
        client.create_project({"slug": "web"})
        yield client


# -- the async client ---------------------------------------------------------------------------


async def test_async_round_trip(qs: AsyncClient) -> None:
    assert (await qs.health()).status == "ok"
    assert (await qs.ready()).backend == "memory"
    assert [p.slug for p in await qs.list_projects()] == ["web"]
    assert (await qs.update_project("web", {"name": "Website"})).name == "Website"
    await qs.create_mission("web", {"id": "m1", "name": "First"})
    assert [m.id for m in await qs.list_missions("web")] == ["default", "m1"]
    assert (await qs.get_mission("web", "m1")).name == "First"

    a = await qs.create_task("web", {"title": "a", "role": "dev"})
    b, c = await qs.create_tasks("web", [{"title": "b", "depends_on": [a.key]}, {"title": "c", "depends_on": ["#0"]}])
    assert isinstance(a, Task) and c.depends_on == (b.key,)
    assert (await qs.get_task("web", a.key)).title == "a"
    page = await qs.list_tasks("web", limit=2)
    assert [t.key for t in page.items] == ["WEB-1", "WEB-2"] and page.next_cursor
    assert [t.key async for t in qs.iter_tasks("web", page_size=1)] == ["WEB-1", "WEB-2", "WEB-3"]
    assert [t.key for t in (await qs.list_tasks("web", ready=True)).items] == ["WEB-1"]
    assert [t.key for t in await qs.blockers("web", b.key)] == ["WEB-1"]
    assert [t.key for t in await qs.dependents("web", a.key)] == ["WEB-2"]

    claim = await qs.claim("web", roles=["dev"], lease_seconds=5)
    assert claim is not None and claim.task.key == "WEB-1"
    assert claim.lease.holder == qs.agent_id
    beat = await qs.heartbeat("web", a.key, claim.lease.token, lease_seconds=10)
    assert beat.expires_at > claim.lease.expires_at
    await qs.add_note("web", a.key, "working on it", token=claim.lease.token)
    assert [n.text for n in await qs.list_notes("web", a.key)] == ["working on it"]
    done = await qs.complete("web", a.key, claim.lease.token, result={"ok": True})
    assert done.status is TaskStatus.DONE
    results = await qs.results("web", [a.key, "WEB-99"])
    assert results.items[0].result == {"ok": True} and results.missing == ("WEB-99",)

    assert await qs.claim("web", roles=["nobody"]) is None
    second = await qs.claim("web")
    assert second is not None
    assert (
        await qs.fail("web", second.task.key, second.lease.token, "boom", retryable=False)
    ).status is TaskStatus.FAILED
    assert [t.key for t in await qs.dead_letter("web")] == [second.task.key]
    assert (await qs.retry_task("web", second.task.key)).status is TaskStatus.NOT_STARTED
    third = await qs.claim("web")
    assert third is not None
    assert (await qs.release("web", third.task.key, third.lease.token)).status is TaskStatus.NOT_STARTED
    assert (await qs.cancel_task("web", c.key, reason="dropped")).status is TaskStatus.CANCELLED

    stats = await qs.stats("web")
    assert stats.by_status["done"] == 1
    assert "queue_claims_total" in await qs.metrics()
    assert (await qs.coord_status())["project"] == "web"
    assert [t["id"] for t in (await qs.coord_tasks(project="web", mission="default"))["tasks"]][:1] == ["WEB-1"]
    assert (await qs.coord_task("WEB-1"))["result"] == {"ok": True}


async def test_update_with_expected_version(qs: AsyncClient) -> None:
    task = await qs.create_task("web", {"title": "a"})
    updated = await qs.update_task("web", task.key, TaskUpdate(title="b"), expected_version=task.version)
    assert updated.version == task.version + 1
    with pytest.raises(exceptions.VersionConflict) as info:
        await qs.update_task("web", task.key, {"title": "c"}, expected_version=task.version)
    assert info.value.code == "version_conflict"
    # TaskUpdate sends only the fields that were set: the title survives a priority patch
    assert (await qs.update_task("web", task.key, TaskUpdate(priority="P0"))).title == "b"


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda qs: qs.get_project("nope"), exceptions.ProjectNotFound),
        (lambda qs: qs.get_task("web", "WEB-404"), exceptions.TaskNotFound),
        (lambda qs: qs.get_mission("web", "nope"), exceptions.MissionNotFound),
        (lambda qs: qs.create_project({"slug": "web"}), exceptions.AlreadyExists),
        (lambda qs: qs.create_project({"slug": "BAD"}), exceptions.ValidationError),
        (lambda qs: qs.list_tasks("web", status="bogus"), exceptions.InvalidStatus),
        (lambda qs: qs.create_task("web", {"title": "x", "depends_on": ["WEB-77"]}), exceptions.UnknownDependency),
        (lambda qs: qs.heartbeat("web", "WEB-1", "stale-token"), exceptions.LeaseError),
        (lambda qs: qs.retry_task("web", "WEB-1"), exceptions.InvalidTransition),
    ],
)
async def test_errors_are_the_domain_tree(qs: AsyncClient, call: Any, error: type[Exception]) -> None:
    await qs.create_task("web", {"title": "a"})
    with pytest.raises(error) as info:
        await call(qs)
    assert type(info.value) is error
    assert info.value.message  # type: ignore[attr-defined]


async def test_auth_errors(mem: InMemoryBackend) -> None:
    viewer = await add_token(mem, "viewer")
    application = create_app(settings(), backend=mem)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with AsyncClient(BASE, transport=transport) as anonymous:
            with pytest.raises(exceptions.AuthError) as info:
                await anonymous.list_projects()
            assert type(info.value) is exceptions.AuthError
        async with AsyncClient(BASE, transport=transport, token=viewer) as reader:
            assert await reader.list_projects() == []
            with pytest.raises(exceptions.Forbidden):
                await reader.create_project({"slug": "web"})


# -- error decoding and retries (scripted transports) --------------------------------------------


def _scripted(responses: list[Any], seen: list[httpx.Request]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        item = responses.pop(0)
        if isinstance(item, Exception):
            raise item
        return item if isinstance(item, httpx.Response) else httpx.Response(200, json=item)

    return httpx.MockTransport(handler)


def _down(code: str = "backend_unavailable") -> httpx.Response:
    return httpx.Response(503, json={"error": {"code": code, "message": "down", "details": {}}})


HEALTH = {"status": "ok"}


def test_get_retries_503_then_succeeds() -> None:
    seen: list[httpx.Request] = []
    with Client(BASE, transport=_scripted([_down(), _down(), HEALTH], seen), retry=FAST_RETRY) as client:
        assert client.health().status == "ok"
    assert len(seen) == 3


def test_get_gives_up_after_the_policy() -> None:
    seen: list[httpx.Request] = []
    with Client(BASE, transport=_scripted([_down()] * 3, seen), retry=FAST_RETRY) as client:
        with pytest.raises(exceptions.BackendUnavailable):
            client.health()
    assert len(seen) == 3


def test_non_idempotent_calls_are_not_retried_on_503_or_read_errors() -> None:
    seen: list[httpx.Request] = []
    with Client(BASE, transport=_scripted([_down(), httpx.ReadTimeout("slow")], seen), retry=FAST_RETRY) as client:
        with pytest.raises(exceptions.BackendUnavailable):
            client.release("web", "WEB-1", "tok")
        with pytest.raises(ServiceUnreachable):
            client.release("web", "WEB-1", "tok")
    assert len(seen) == 2


def test_connect_errors_are_retried_for_any_call() -> None:
    seen: list[httpx.Request] = []
    script: list[Any] = [
        httpx.ConnectError("refused"),
        {"token": "t", "holder": "a", "expires_at": "2030-01-01T00:00:00Z"},
    ]
    with Client(BASE, transport=_scripted(script, seen), retry=FAST_RETRY) as client:
        assert client.heartbeat("web", "WEB-1", "t").holder == "a"
    assert len(seen) == 2


async def test_async_transport_errors_become_service_unreachable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with AsyncClient(BASE, transport=httpx.MockTransport(handler), retry=FAST_RETRY) as client:
        with pytest.raises(ServiceUnreachable, match="cannot reach the queue service") as info:
            await client.get_task("web", "WEB-1")
    assert isinstance(info.value, exceptions.BackendUnavailable)
    assert isinstance(info.value.__cause__, httpx.ConnectError)


def test_unknown_codes_and_non_json_bodies_fall_back_to_the_status() -> None:
    seen: list[httpx.Request] = []
    script: list[Any] = [
        httpx.Response(409, json={"error": {"code": "brand_new_code", "message": "m", "details": {"x": 1}}}),
        httpx.Response(502, text="<html>bad gateway</html>"),
        httpx.Response(418, text="teapot"),
    ]
    with Client(BASE, transport=_scripted(script, seen), retry=RetryPolicy(attempts=1)) as client:
        with pytest.raises(exceptions.Conflict) as conflict:
            client.get_task("web", "WEB-1")
        assert conflict.value.details == {"x": 1}
        with pytest.raises(exceptions.BackendUnavailable, match="HTTP 502"):
            client.get_task("web", "WEB-1")
        with pytest.raises(exceptions.QueueServiceError, match="HTTP 418"):
            client.get_task("web", "WEB-1")


def test_path_parts_are_quoted() -> None:
    seen: list[httpx.Request] = []
    with Client(BASE, transport=_scripted([httpx.Response(404, json={})], seen), retry=RetryPolicy(attempts=1)) as c:
        with pytest.raises(exceptions.NotFound):
            c.get_task("web", "../../admin")
    assert seen[0].url.raw_path == b"/v1/projects/web/tasks/..%2F..%2Fadmin"


def test_idempotency_keys_make_creates_retryable() -> None:
    seen: list[httpx.Request] = []
    task = {
        "project": "web",
        "key": "WEB-1",
        "seq": 1,
        "title": "a",
        "created_at": "2030-01-01T00:00:00Z",
        "updated_at": "2030-01-01T00:00:00Z",
        "a_field_from_the_future": True,
    }
    with Client(BASE, transport=_scripted([_down(), httpx.Response(201, json=task)], seen), retry=FAST_RETRY) as c:
        assert c.create_task("web", {"title": "a", "idempotency_key": "k1"}).key == "WEB-1"
    assert len(seen) == 2


# -- events -------------------------------------------------------------------------------------


async def test_async_events_replay(qs: AsyncClient) -> None:
    task = await qs.create_task("web", {"title": "a"})
    claim = await qs.claim("web")
    assert claim is not None
    await qs.complete("web", task.key, claim.lease.token)
    events = [e async for e in qs.events("web", follow=False)]
    assert [e.kind for e in events if e.task == task.key][-2:] == ["claimed", "completed"]
    after = [e async for e in qs.events("web", follow=False, last_event_id=events[-2].id)]
    assert [e.id for e in after] == [events[-1].id]


def test_sync_events_replay(sync_qs: Client) -> None:
    sync_qs.create_task("web", {"title": "a"})
    events = list(sync_qs.events("web", follow=False))
    assert [e.kind for e in events] == ["project_created", "created"]


# -- the sync client ----------------------------------------------------------------------------


def test_sync_round_trip(sync_qs: Client) -> None:
    task = sync_qs.create_task("web", {"title": "a"})
    assert [t.key for t in sync_qs.iter_tasks("web")] == [task.key]
    claim = sync_qs.claim("web", "me", wait_seconds=0.1)
    assert claim is not None and claim.lease.holder == "me"
    with pytest.raises(exceptions.LeaseError):
        sync_qs.complete("web", task.key, "wrong")
    assert sync_qs.complete("web", task.key, claim.lease.token, result=3).result == 3
    assert sync_qs.claim("web") is None
    assert sync_qs.ready().status == "ready"


# -- the worker ---------------------------------------------------------------------------------


def _sweeper(served: tuple[ThreadedASGITransport, InMemoryBackend], stop: threading.Event) -> threading.Thread:
    """Expire leases every 50 ms (the orchestrator's job), so a missed heartbeat shows."""
    transport, backend = served

    def loop() -> None:
        while not stop.wait(0.05):
            transport.run(backend.dispatch.sweep())

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def _burn(seconds: float) -> int:
    """CPU-bound work that never yields on purpose."""
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += sum(i * i for i in range(200))
    return n


def test_worker_keeps_the_lease_of_a_cpu_bound_task(
    served: tuple[ThreadedASGITransport, InMemoryBackend], sync_qs: Client
) -> None:
    sync_qs.create_task("web", {"title": "crunch"})
    stop = threading.Event()
    sweeper = _sweeper(served, stop)
    try:
        worker = sync_qs.worker("web", lease_seconds=1.0, heartbeat_seconds=0.1, wait_seconds=0, stop_when_idle=True)
        jobs = []
        for job in worker:
            with job:
                job.result = _burn(2.5) > 0  # more than two leases long
            jobs.append(job)
    finally:
        stop.set()
        sweeper.join()
    (job,) = jobs
    assert job.outcome == "completed"
    assert job.heartbeats >= 3
    final = sync_qs.get_task("web", job.key)
    assert final.status is TaskStatus.DONE
    assert final.result is True
    assert final.attempts == 0  # never expired and reclaimed


def test_worker_without_heartbeats_would_lose_the_lease(
    served: tuple[ThreadedASGITransport, InMemoryBackend], sync_qs: Client
) -> None:
    """The control for the test above: the same work with a lease but no heartbeat is lost."""
    task = sync_qs.create_task("web", {"title": "crunch"})
    stop = threading.Event()
    sweeper = _sweeper(served, stop)
    try:
        claim = sync_qs.claim("web", lease_seconds=0.3)
        assert claim is not None
        _burn(1.0)
        with pytest.raises(exceptions.LeaseError):
            sync_qs.complete("web", task.key, claim.lease.token)
    finally:
        stop.set()
        sweeper.join()


def test_worker_run_fail_paths(sync_qs: Client) -> None:
    sync_qs.create_tasks("web", [{"title": "ok"}, {"title": "flaky"}, {"title": "broken"}])

    def handle(task: Task) -> Any:
        if task.title == "flaky":
            raise ValueError("try again")
        if task.title == "broken":
            raise PermanentError("never works")
        return {"handled": task.key}

    worker = sync_qs.worker("web", wait_seconds=0, stop_when_idle=True)
    assert worker.run(handle, max_tasks=3) == 3
    ok, flaky, broken = (sync_qs.get_task("web", k) for k in ("WEB-1", "WEB-2", "WEB-3"))
    assert ok.status is TaskStatus.DONE and ok.result == {"handled": "WEB-1"}
    assert flaky.status is TaskStatus.NOT_STARTED and flaky.attempts == 1
    assert flaky.last_error and "ValueError: try again" in flaky.last_error
    assert broken.status is TaskStatus.FAILED and "PermanentError" in (broken.last_error or "")


def test_worker_releases_on_keyboard_interrupt(sync_qs: Client) -> None:
    task = sync_qs.create_task("web", {"title": "interrupted"})

    def handle(task: Task) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sync_qs.worker("web", wait_seconds=0).run(handle)
    after = sync_qs.get_task("web", task.key)
    assert after.status is TaskStatus.NOT_STARTED
    assert after.attempts == 0
    assert after.lease_holder is None


def test_job_finished_explicitly_and_notes(sync_qs: Client) -> None:
    sync_qs.create_task("web", {"title": "a"})
    for job in sync_qs.worker("web", wait_seconds=0, stop_when_idle=True):
        with job:
            job.note("halfway")
            job.fail("not today", retryable=False)
    assert job.outcome == "failed"
    assert sync_qs.get_task("web", "WEB-1").status is TaskStatus.FAILED
    assert [n.text for n in sync_qs.list_notes("web", "WEB-1")] == ["halfway"]


async def test_async_worker_paths(qs: AsyncClient) -> None:
    await qs.create_tasks("web", [{"title": "ok"}, {"title": "flaky"}, {"title": "sync", "role": "cpu"}])

    async def handle(task: Task) -> Any:
        if task.title == "flaky":
            raise RuntimeError("nope")
        return task.title

    worker = qs.worker("web", roles=["default"], wait_seconds=0, stop_when_idle=True)
    assert await worker.run(handle, max_tasks=2) == 2
    # a plain function runs in a thread, so it can burn CPU while heartbeats go through the loop
    sync_worker = qs.worker(
        "web", ["cpu"], lease_seconds=0.6, heartbeat_seconds=0.1, wait_seconds=0, stop_when_idle=True
    )
    assert await sync_worker.run(lambda task: _burn(1.0) and task.title) == 1
    tasks = {t.title: t async for t in qs.iter_tasks("web")}
    assert tasks["ok"].status is TaskStatus.DONE and tasks["ok"].result == "ok"
    assert tasks["flaky"].status is TaskStatus.NOT_STARTED and tasks["flaky"].attempts == 1
    assert tasks["sync"].status is TaskStatus.DONE and tasks["sync"].result == "sync"


async def test_async_worker_releases_on_cancellation(qs: AsyncClient) -> None:
    task = await qs.create_task("web", {"title": "slow"})
    started = asyncio.Event()

    async def handle(task: Task) -> None:
        started.set()
        await asyncio.sleep(60)

    runner = asyncio.create_task(qs.worker("web", wait_seconds=0).run(handle))
    await asyncio.wait_for(started.wait(), 10)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    after = await qs.get_task("web", task.key)
    assert after.status is TaskStatus.NOT_STARTED
    assert after.attempts == 0


async def test_async_worker_survives_a_lost_lease(app: FastAPI, qs: AsyncClient, mem: InMemoryBackend) -> None:
    task = await qs.create_task("web", {"title": "a"})
    jobs = []
    async for job in qs.worker("web", wait_seconds=0, stop_when_idle=True):
        async with job:
            # someone else takes over meanwhile (an operator moves the task back)
            await qs.update_task("web", task.key, {"status": "not-started"})
        jobs.append(job)
        break
    assert jobs[0].outcome == "lost"


# -- issue 11: new-user fixes and the agent surface ---------------------------------------------
def test_worker_stop_when_idle_does_not_long_poll() -> None:
    seen: list[httpx.Request] = []
    with Client(BASE, transport=_scripted([httpx.Response(204)], seen), retry=FAST_RETRY) as client:
        jobs = list(client.worker("web", stop_when_idle=True))  # default wait_seconds is a long-poll
    assert jobs == []
    assert json.loads(seen[0].content)["wait_seconds"] == 0


async def test_create_task_takes_a_title_and_mission_milestones_are_plain_json(qs: AsyncClient) -> None:
    from queue_service.models import Milestone

    await qs.create_project({"slug": "py"})
    task = await qs.create_task("py", "just a title")
    assert task.title == "just a title"
    mission = await qs.create_mission("py", {"id": "m", "name": "M", "milestones": [Milestone(id="m1", name="Design")]})
    assert [m.id for m in mission.milestones] == ["m1"]


async def test_agent_claim_and_ready_over_rest(qs: AsyncClient) -> None:
    await qs.create_project({"slug": "ag"})
    await qs.create_tasks("ag", [{"title": "leaf"}, {"title": "hub"}, {"title": "after", "depends_on": ["#1"]}])
    ready = await qs.ready_tasks("ag")
    assert [t.title for t in ready.tasks] == ["hub", "leaf"] and ready.total == 2
    claim = await qs.claim("ag", "agent", lease_profile="agent")
    assert claim is not None and claim.task.title == "hub"
    assert claim.lease.seconds is not None and claim.lease.seconds >= 900
    worker = await qs.claim("ag", "worker")
    assert worker is not None and worker.lease.seconds is not None and worker.lease.seconds < 900
