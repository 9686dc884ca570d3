"""Issue 14: ``qs run`` publishes each child's stdout/stderr lines to the task's output stream."""

from __future__ import annotations

import asyncio
from pathlib import Path

from queue_service.models import TaskStatus
from queue_service.service import QueueService
from tests.integration.test_runner import py, runner, svc  # noqa: F401 - the shared runner fixture


async def test_a_watcher_sees_all_1000_lines_of_the_child_in_order(svc: QueueService, tmp_path: Path) -> None:  # noqa: F811
    await svc.create_task("web", {"title": "chatty"})

    async def watch() -> list[str]:
        items = await svc.follow_stream("web", "WEB-1", idle_seconds=0.5)
        return [c.chunk async for c in items if c is not None and not c.done]

    watcher = asyncio.create_task(watch())  # follows from before the task even starts
    child = py(
        """
        import sys
        for i in range(1000):
            print(f"line {i}", flush=i % 97 == 0)
        sys.stdout.flush()
        sys.stderr.write("a warning\\n")
        """
    )
    summary = await runner(svc, tmp_path, child).run(handle_signals=False)
    assert summary.exit_code == 0
    assert (await svc.get_task("web", "WEB-1")).status is TaskStatus.DONE
    seen = await asyncio.wait_for(watcher, 60)
    assert [line for line in seen if line.startswith("line ")] == [f"line {i}" for i in range(1000)]
    assert "a warning" in seen
    assert len(seen) == 1001
