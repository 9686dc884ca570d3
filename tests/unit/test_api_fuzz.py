"""Property-based fuzzing of every operation in /openapi.json: no input may produce a 5xx.

The app runs on the in-memory backend (auth off), seeded with a project ``web`` whose tasks exist in
every status, so generated requests reach real objects as well as missing ones. Two knobs keep the
run short: claims never long-poll for more than 10 ms, and event streams replay and close instead of
following forever.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings

from queue_service.app import create_app
from queue_service.service import QueueService
from queue_service.testing import InMemoryBackend
from tests.unit.api_support import FAST
from tests.unit.api_support import settings as app_settings


async def _seed(backend: InMemoryBackend) -> None:
    service = QueueService(backend)
    await service.create_project({"slug": "web", "key_prefix": "WEB"})
    await service.create_mission("web", {"id": "checkout", "milestones": [{"id": "m1", "name": "Cart"}]})
    await service.create_tasks(
        "web",
        [
            {"title": "a"},
            {"title": "b", "depends_on": ["#0"], "labels": ["x"]},
            {"title": "c", "role": "dev", "mission": "checkout", "milestone": "m1"},
            {"title": "d", "role": "dev"},
        ],
    )
    claim = await service.claim("web", "seed-agent", roles=["dev"])
    assert claim is not None
    await service.complete("web", claim.task.key, claim.lease.token, result={"ok": 1})
    claim = await service.claim("web", "seed-agent", roles=["dev"])
    assert claim is not None
    await service.fail("web", claim.task.key, claim.lease.token, "broken", retryable=False)
    await service.claim("web", "seed-agent")  # WEB-1 stays in progress


def _seeded_backend() -> InMemoryBackend:
    backend = InMemoryBackend(config=FAST)
    # a throwaway loop in another thread: the test's own loop must stay untouched
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, _seed(backend)).result()
    return backend


app = create_app(app_settings(), backend=_seeded_backend())
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


def _tame(case: Any) -> None:
    if case.path.endswith("/claims") and isinstance(case.body, dict):
        wait = case.body.get("wait_seconds")
        if isinstance(wait, int | float) and not isinstance(wait, bool) and wait > 0.01:
            case.body["wait_seconds"] = 0.01
    if case.path.endswith("/events") or (case.path.endswith("/stream") and case.method == "GET"):
        case.query = {**(case.query or {}), "follow": "false"}


@schema.parametrize()
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)
def test_no_server_errors(case: Any) -> None:
    _tame(case)
    response = case.call()
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}"
    )
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"}, body
        assert {"code", "message", "details"} <= set(body["error"]), body
