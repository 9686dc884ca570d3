"""A task's own history (``list_task_events``) and the error of every failed attempt, on every backend."""

from __future__ import annotations

import pytest

from queue_service import exceptions
from queue_service.service import QueueService


@pytest.fixture
async def web(svc: QueueService) -> str:
    await svc.create_project({"slug": "web", "name": "Web", "key_prefix": "WEB"})
    return "web"


async def _claim(svc: QueueService, project: str, role: str) -> tuple[str, str]:
    for _ in range(100):
        # the retry backoff (FAST: 0.05 s) must pass, and the sweep queue the task again
        await svc.backend.dispatch.sweep()
        claim = await svc.claim(project, "agent-1", roles=[role], wait=0.1)
        if claim is not None:
            return claim.task.key, claim.lease.token
    raise AssertionError("nothing to claim")


async def test_every_failed_attempt_keeps_its_error(svc: QueueService, web: str) -> None:
    task = await svc.create_task(web, {"title": "flaky", "role": "imp", "max_attempts": 3})
    errors = ["timeout after 30 s", "HTTP 502", "disk full"]
    for error in errors:
        key, token = await _claim(svc, web, "imp")
        assert key == task.key
        await svc.fail(web, key, token, error)
    history = await svc.task_events(web, task.key)
    failed = [e for e in history if e.kind == "failed"]
    assert [e.data["error"] for e in failed] == errors
    assert [e.data["attempt"] for e in failed] == [1, 2, 3]
    assert failed[-1].data.get("dead_letter") is True
    assert (await svc.get_task(web, task.key)).last_error == "disk full"


async def test_task_events_are_the_tasks_own_oldest_first(svc: QueueService, web: str) -> None:
    a = await svc.create_task(web, {"title": "a"})
    b = await svc.create_task(web, {"title": "b"})
    await svc.add_note(web, a.key, "ann", "hello")
    await svc.update_task(web, b.key, {"priority": "P0"})
    await svc.cancel_task(web, a.key, "obsolete")
    history = await svc.task_events(web, a.key)
    assert [e.kind for e in history] == ["created", "note_added", "cancelled"]
    assert all(e.task == a.key for e in history)
    assert [e.id for e in history] == sorted(e.id for e in history)
    latest = await svc.task_events(web, a.key, limit=2)
    assert [e.kind for e in latest] == ["note_added", "cancelled"]


async def test_task_events_of_unknown_task_or_project(svc: QueueService, web: str) -> None:
    with pytest.raises(exceptions.TaskNotFound):
        await svc.task_events(web, "WEB-99")
    with pytest.raises(exceptions.ProjectNotFound):
        await svc.task_events("nope", "WEB-1")
    with pytest.raises(exceptions.ValidationError):
        await svc.task_events(web, "WEB-1", limit=0)
