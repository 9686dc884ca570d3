"""Issue 14: ``qs run`` hands the task's W3C trace context to the child (TRACEPARENT/TRACESTATE),
and never the runner's own."""

from __future__ import annotations

from pathlib import Path

import pytest

from queue_service.service import QueueService
from tests.integration.test_runner import py, runner, svc  # noqa: F401 - the shared runner fixture

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
RUNNERS_OWN = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_child_gets_the_tasks_trace_context(
    svc: QueueService,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRACEPARENT", RUNNERS_OWN)
    monkeypatch.setenv("TRACESTATE", "runner=1")
    traced = await svc.create_task("web", {"title": "traced", "traceparent": PARENT, "tracestate": "vendor=v1"})
    untraced = await svc.create_task("web", {"title": "untraced"})
    child = py(
        """
        import os
        print(os.environ.get("TRACEPARENT", "-"), os.environ.get("TRACESTATE", "-"))
        """
    )
    summary = await runner(svc, tmp_path, child).run(handle_signals=False)
    assert summary.exit_code == 0
    seen = (await svc.get_task("web", traced.key)).result["stdout"].split()
    # the trace continues in the child: same trace id (the parent span is the runner's queue.process
    # span when a tracer provider records it, else the producer's own)
    assert seen[0].split("-")[1] == PARENT.split("-")[1]
    assert seen[1] == "vendor=v1"
    assert (await svc.get_task("web", untraced.key)).result["stdout"].split() == ["-", "-"]
