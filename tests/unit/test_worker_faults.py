"""Issue 10 findings 6 and 8: the worker helper and the runner under a skewed clock and an outage.

* The heartbeat period comes from the lease length (lease / 3), never from the server's expiry
  read against the client's clock: a client whose clock is 7 s behind still heartbeats in time.
* ``complete``/``fail`` survive a short outage (503 / dropped connection): retried, bounded, and a
  completion whose answer was lost is recognised instead of being reported as lost work.

The service is the real app over the in-memory backend; faults are injected in the transport.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from queue_service.app import create_app
from queue_service.client import Client, RetryPolicy
from queue_service.models import TaskStatus
from queue_service.service import QueueService
from queue_service.testing import InMemoryBackend
from queue_service.worker import DEFAULT_LEASE_SECONDS, heartbeat_interval
from tests.unit.api_support import BASE, FAST, ThreadedASGITransport, settings

FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.01)
SKEW = timedelta(seconds=7)


def _behind() -> datetime:
    return datetime.now(UTC) - SKEW


class FlakyTransport(ThreadedASGITransport):
    """The app on its own loop thread; requests to ``/complete`` follow *plan* first:
    ``"503"`` answers 503 without reaching the app, ``"lost"`` reaches the app and then drops the answer."""

    def __init__(self, app: Any, plan: list[str]) -> None:
        super().__init__(app)
        self.plan = plan
        self.completes = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/complete"):
            self.completes += 1
            if self.plan:
                action = self.plan.pop(0)
                if action == "503":
                    return httpx.Response(
                        503, json={"error": {"code": "backend_unavailable", "message": "down", "details": {}}}
                    )
                if action == "lost":
                    super().handle_request(request)
                    raise httpx.ReadError("connection reset by peer", request=request)
        return super().handle_request(request)


@pytest.fixture
def backend() -> InMemoryBackend:
    return InMemoryBackend(config=FAST)


def _client(backend: InMemoryBackend, plan: list[str] | None = None) -> tuple[Client, FlakyTransport]:
    transport = FlakyTransport(create_app(settings(), backend=backend), plan or [])
    client = Client(BASE, transport=transport, retry=FAST_RETRY)
    return client, transport


@pytest.fixture
def sweeping(backend: InMemoryBackend) -> Iterator[None]:
    """Expire leases every 50 ms (the orchestrator's job), so a late heartbeat shows."""
    stop = threading.Event()
    transport = ThreadedASGITransport(create_app(settings(), backend=backend))

    def loop() -> None:
        while not stop.wait(0.05):
            transport.run(backend.dispatch.sweep())

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join()
    transport.close()


def test_heartbeat_period_is_a_third_of_the_lease_length() -> None:
    assert heartbeat_interval(30.0) == pytest.approx(10.0)
    assert heartbeat_interval(30.0, 2.0) == pytest.approx(2.0)
    assert DEFAULT_LEASE_SECONDS == 30.0


def test_worker_with_a_clock_7s_behind_keeps_a_short_lease(
    backend: InMemoryBackend, sweeping: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the client machine's clock is 7 s behind the service's (whatever the worker might read it from)
    monkeypatch.setattr("queue_service.worker.utcnow", _behind, raising=False)
    client, transport = _client(backend)
    try:
        client.create_project({"slug": "web"})
        client.create_task("web", {"title": "longer than the lease"})
        jobs = []
        for job in client.worker("web", lease_seconds=0.6, wait_seconds=0, stop_when_idle=True):
            with job:
                time.sleep(1.5)  # two and a half leases
                job.result = "ok"
            jobs.append(job)
        (job,) = jobs
        assert job.outcome == "completed", job.outcome
        assert job.heartbeats >= 3
        assert client.get_task("web", job.key).attempts == 0  # never expired
    finally:
        client.close()
        transport.close()


def test_worker_asks_for_the_default_lease_explicitly(backend: InMemoryBackend) -> None:
    client, transport = _client(backend)
    try:
        client.create_project({"slug": "web"})
        client.create_task("web", {"title": "t"})
        (job,) = list(client.worker("web", wait_seconds=0, stop_when_idle=True))
        with job:
            # the service's default is FAST's 2 s; the worker asked for its own 30 s, so it knows the length
            left = (job.lease.expires_at - datetime.now(UTC)).total_seconds()
            assert DEFAULT_LEASE_SECONDS - 5 < left <= DEFAULT_LEASE_SECONDS
    finally:
        client.close()
        transport.close()


def test_worker_retries_complete_through_an_outage(backend: InMemoryBackend) -> None:
    client, transport = _client(backend, ["503"] * 4)  # longer than the client's own 3 tries
    try:
        client.create_project({"slug": "web"})
        client.create_tasks("web", [{"title": "a"}, {"title": "b"}])
        done = client.worker("web", wait_seconds=0, stop_when_idle=True).run(lambda task: task.title.upper())
        assert done == 2
        tasks = client.list_tasks("web").items
        assert [(t.status, t.result) for t in tasks] == [(TaskStatus.DONE, "A"), (TaskStatus.DONE, "B")]
        assert transport.completes == 6
    finally:
        client.close()
        transport.close()


def test_complete_whose_answer_was_lost_is_recognised(backend: InMemoryBackend) -> None:
    client, transport = _client(backend, ["lost"])
    try:
        client.create_project({"slug": "web"})
        task = client.create_task("web", {"title": "a"})
        claim = client.claim("web", lease_seconds=30)
        assert claim is not None
        final = client.complete("web", task.key, claim.lease.token, result={"n": 1})
        assert final.status is TaskStatus.DONE and final.result == {"n": 1}
        assert transport.completes == 2
        events = [e.kind for e in client.events("web", follow=False) if e.task == task.key]
        assert events.count("completed") == 1  # a repeated complete never completes twice
    finally:
        client.close()
        transport.close()


def test_worker_gives_up_after_bounded_tries_and_lives_on(
    backend: InMemoryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("queue_service.worker._FINISH_DELAY", 0.001)
    client, transport = _client(backend, ["503"] * 100)
    try:
        client.create_project({"slug": "web"})
        client.create_tasks("web", [{"title": "a"}, {"title": "b"}])
        worker = client.worker("web", wait_seconds=0, stop_when_idle=True)
        assert worker.run(lambda task: task.title, max_tasks=2) == 2  # no exception escapes
        assert transport.completes <= 2 * 6 * FAST_RETRY.attempts  # bounded
    finally:
        client.close()
        transport.close()


async def test_runner_with_a_clock_7s_behind_keeps_a_short_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from queue_service.runner import Runner, RunnerOptions

    class SkewedDatetime(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> SkewedDatetime:  # type: ignore[override]
            return cls.fromtimestamp((datetime.now(tz) - SKEW).timestamp(), tz)

    monkeypatch.setattr("queue_service.runner.session.datetime", SkewedDatetime)
    async with InMemoryBackend(config=FAST) as backend:
        svc = QueueService(backend)
        await svc.create_project({"slug": "web", "key_prefix": "WEB"})
        await svc.create_task("web", {"title": "slow"})
        options = RunnerOptions(
            project="web",
            command=[sys.executable, "-c", "import time; time.sleep(1.5)"],
            workspace=tmp_path,
            idle_exit=0.0,
            poll_seconds=0.2,
            sweep_seconds=0.05,
            lease_seconds=0.6,
        )
        summary = await Runner(svc, options, sweep=backend.dispatch.sweep).run(handle_signals=False)
        assert [o.outcome for o in summary.outcomes] == ["completed"]
        task = await svc.get_task("web", "WEB-1")
        assert task.status is TaskStatus.DONE and task.attempts == 0
