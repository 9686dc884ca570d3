"""Backpressure contract (own module: it needs a small max_queue_depth)."""

from __future__ import annotations

import dataclasses

import pytest

from queue_service import exceptions
from queue_service.backend import Backend, DispatchConfig
from queue_service.service import QueueService
from tests.fixtures.backends import FAST


@pytest.fixture
def dispatch_config() -> DispatchConfig:
    return dataclasses.replace(FAST, max_queue_depth=20)


@pytest.fixture
async def web(svc: QueueService) -> str:
    await svc.create_project({"slug": "web", "key_prefix": "WEB"})
    return "web"


async def test_backpressure_rejects_over_max_depth(backend: Backend, svc: QueueService, web: str) -> None:
    limit = backend.config.max_queue_depth
    await svc.create_tasks(web, [{"title": f"t{i}", "role": "bulk"} for i in range(limit)])
    with pytest.raises(exceptions.QueueFull) as err:
        await svc.create_task(web, {"title": "one too many", "role": "bulk"})
    assert "bulk" in err.value.message
    # other roles are unaffected, and tasks that are not ready do not count
    await svc.create_task(web, {"title": "other role", "role": "dev"})
    await svc.create_task(web, {"title": "blocked", "role": "bulk", "depends_on": ["WEB-1"]})
