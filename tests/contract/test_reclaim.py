"""Issue 10 finding 9, on every backend: an expired lease makes its task ready again at once (no
backoff) at the head of its priority's line, and ``lease_seconds`` zero or negative is refused."""

from __future__ import annotations

import asyncio
import time

import pytest

from queue_service import exceptions
from queue_service.backend import Backend
from queue_service.models import TaskStatus
from queue_service.service import QueueService
from queue_service.sweeper import Sweeper

S = TaskStatus


@pytest.fixture
async def web(svc: QueueService) -> str:
    await svc.create_project({"slug": "web", "key_prefix": "WEB"})
    return "web"


async def _sleep_past(expires_at_s: float) -> None:
    await asyncio.sleep(max(0.0, expires_at_s - time.time()) + 0.05)


async def test_expired_task_is_ready_at_once_and_first_in_line(svc: QueueService, backend: Backend, web: str) -> None:
    first = await svc.create_task(web, {"title": "crashes"})
    claim = await svc.claim(web, "doomed", lease_seconds=0.3)
    assert claim is not None and claim.task.key == first.key
    # others queue behind it while it runs
    later = await svc.create_tasks(web, [{"title": "b"}, {"title": "c"}])
    await _sleep_past(claim.lease.expires_at.timestamp())
    report = await backend.dispatch.sweep()
    assert any(name.endswith(first.key) for name in report.expired_leases), report
    again = await svc.get_task(web, first.key)
    assert again.status is S.NOT_STARTED
    assert again.attempts == 1
    assert again.not_before is None  # reclaimable now, not after a backoff
    rescued = await svc.claim(web, "rescuer")
    assert rescued is not None
    assert rescued.task.key == first.key, f"the reclaimed task must be first in line, got {rescued.task.key}"
    rest = await svc.claim_many(web, "other", limit=5)
    assert [c.task.key for c in rest] == [t.key for t in later]


async def test_reclaim_within_lease_plus_sweep_of_last_renewal(svc: QueueService, backend: Backend, web: str) -> None:
    """Measured bound (printed): a vanished holder's task is claimable again within lease + sweep
    period of its last renewal. The margin on top is for a loaded shared machine."""
    lease = 0.4
    await svc.create_task(web, {"title": "holder dies"})
    claim = await svc.claim(web, "doomed", lease_seconds=lease)
    assert claim is not None
    await svc.heartbeat(web, claim.task.key, claim.lease.token, lease)
    renewed = time.monotonic()  # the holder goes silent now
    sweep = backend.config.sweep_seconds
    async with Sweeper(backend, interval=sweep):
        rescued = await svc.claim(web, "rescuer", wait=10.0)
    elapsed = time.monotonic() - renewed
    print(f"reclaimed after {elapsed:.3f}s (lease {lease}s + sweep {sweep}s = {lease + sweep:.3f}s)")
    assert rescued is not None and rescued.task.key == claim.task.key
    assert elapsed <= lease + sweep + 1.0, elapsed


@pytest.mark.parametrize("bad", [0, 0.0, -1, -0.5])
async def test_zero_or_negative_lease_is_refused_by_the_backend(
    backend: Backend, svc: QueueService, web: str, bad: float
) -> None:
    t = await svc.create_task(web, {"title": "a"})
    with pytest.raises(exceptions.ValidationError):
        await backend.dispatch.claim(web, "a", lease_seconds=bad)
    with pytest.raises(exceptions.ValidationError):
        await backend.dispatch.claim_many(web, "a", limit=2, lease_seconds=bad)
    claim = await backend.dispatch.claim(web, "a")
    assert claim is not None and claim.task.key == t.key
    with pytest.raises(exceptions.ValidationError):
        await backend.dispatch.heartbeat(web, t.key, claim.lease.token, bad)
    # nothing changed: the lease is the default one, still valid
    assert (await svc.get_task(web, t.key)).lease_expires_at == claim.lease.expires_at
