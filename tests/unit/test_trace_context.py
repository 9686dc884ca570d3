"""Issue 14: W3C trace context over REST (body fields and headers), picked up by the typed client,
and OpenTelemetry spans (the ``[otel]`` extra) that continue the producer's trace in the worker.

The SDK's in-memory exporter records the spans; the tracer provider is process-global in
OpenTelemetry, so it is installed once (``_exporter``) and cleared per test.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from queue_service import tracing
from queue_service.app import create_app
from queue_service.client import AsyncClient, Client
from queue_service.models import Task
from queue_service.testing import InMemoryBackend
from tests.unit.api_support import BASE, ThreadedASGITransport, app, error_of, http, mem, project, settings

__all__ = ["app", "http", "mem", "project"]

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
OTHER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def _named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def _trace_id(traceparent: str | None) -> str:
    assert traceparent is not None
    return traceparent.split("-")[1]


# -- REST: body fields and headers ------------------------------------------------------------


async def test_rest_takes_the_headers_and_the_body_wins(http: httpx.AsyncClient, project: str) -> None:
    r = await http.post(
        f"/v1/projects/{project}/tasks", json={"title": "h"}, headers={"traceparent": PARENT, "tracestate": "a=1"}
    )
    assert r.status_code == 201, r.text
    assert (r.json()["traceparent"], r.json()["tracestate"]) == (PARENT, "a=1")
    r = await http.post(
        f"/v1/projects/{project}/tasks", json={"title": "b", "traceparent": OTHER}, headers={"traceparent": PARENT}
    )
    assert (r.json()["traceparent"], r.json()["tracestate"]) == (OTHER, None)
    r = await http.post(
        f"/v1/projects/{project}/tasks/batch",
        json={"tasks": [{"title": "x"}, {"title": "y", "traceparent": OTHER}]},
        headers={"traceparent": PARENT},
    )
    assert [t["traceparent"] for t in r.json()["items"]] == [PARENT, OTHER]
    r = await http.get(f"/v1/projects/{project}/tasks/WEB-1")
    assert r.json()["traceparent"] == PARENT


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ({"traceparent": "00-xyz-01"}, "traceparent header: traceparent '00-xyz-01' is not W3C trace context"),
        ({"traceparent": PARENT, "tracestate": "=broken"}, "tracestate header"),
        ({"tracestate": "a=1"}, "tracestate header needs a traceparent header"),
    ],
)
async def test_rest_refuses_malformed_headers(
    http: httpx.AsyncClient, project: str, headers: dict[str, str], says: str
) -> None:
    r = await http.post(f"/v1/projects/{project}/tasks", json={"title": "t"}, headers=headers)
    assert r.status_code == 422, r.text
    error = error_of(r)
    assert error["code"] == "validation_error" and says in error["message"]
    assert (await http.get(f"/v1/projects/{project}/tasks")).json()["items"] == []


async def test_rest_refuses_a_malformed_body_field_naming_it(http: httpx.AsyncClient, project: str) -> None:
    r = await http.post(f"/v1/projects/{project}/tasks", json={"title": "t", "traceparent": "nope"})
    assert r.status_code == 422
    assert "traceparent" in error_of(r)["message"]


# -- the typed client and the worker, with OpenTelemetry's SDK --------------------------------


@pytest.fixture
async def qs(app: FastAPI) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(BASE, transport=httpx.ASGITransport(app=app)) as client:
        await client.create_project({"slug": "web", "key_prefix": "WEB"})
        yield client


async def test_producer_trace_continues_in_the_worker(qs: AsyncClient, spans: InMemorySpanExporter) -> None:
    tracer = trace.get_tracer("producer")
    with tracer.start_as_current_span("produce") as producer:
        created = await qs.create_task("web", {"title": "traced"})
    ctx = producer.get_span_context()
    trace_id = f"{ctx.trace_id:032x}"
    # the client passed the current context on its own
    assert created.traceparent is not None
    assert created.traceparent.split("-")[1:3] == [trace_id, f"{ctx.span_id:016x}"]
    untraced = await qs.create_task("web", {"title": "outside any span"})
    assert untraced.traceparent is None

    seen: list[Task] = []

    async def handle(task: Task) -> dict[str, Any]:
        seen.append(task)
        with tracer.start_as_current_span("handler"):
            if task.key == created.key:
                # work found while doing the task continues the same trace
                seen.append(await qs.create_task("web", {"title": "discovered"}))
        return {"ok": True}

    worker = qs.worker("web", agent="w1", lease_seconds=5, stop_when_idle=True)
    assert await worker.run(handle) == 3

    (enqueue,) = [s for s in _named(spans, "queue.enqueue") if s.parent and s.parent.span_id == ctx.span_id]
    assert enqueue.kind is trace.SpanKind.PRODUCER
    process = {s.attributes["queue.task.key"]: s for s in _named(spans, "queue.process")}
    assert set(process) == {created.key, "WEB-3"}  # the untraced task gets no span
    first = process[created.key]
    assert f"{first.context.trace_id:032x}" == trace_id
    assert first.parent is not None and first.parent.span_id == ctx.span_id
    assert first.kind is trace.SpanKind.CONSUMER
    (handler,) = [s for s in _named(spans, "handler") if s.parent and s.parent.span_id == first.context.span_id]
    discovered = seen[1]
    assert _trace_id(discovered.traceparent) == trace_id
    assert discovered.traceparent is not None
    assert discovered.traceparent.split("-")[2] == f"{handler.context.span_id:016x}"
    for name in ("queue.claim", "queue.complete"):
        assert {s.attributes["queue.task.key"] for s in _named(spans, name)} == {created.key, "WEB-3"}
        assert all(f"{s.context.trace_id:032x}" == trace_id for s in _named(spans, name))


def test_sync_worker_process_span_marks_a_failure(spans: InMemorySpanExporter) -> None:
    backend = InMemoryBackend()
    transport = ThreadedASGITransport(create_app(settings(), backend=backend))
    try:
        with Client(BASE, transport=transport) as client:
            client.create_project({"slug": "web", "key_prefix": "WEB"})
            client.create_task("web", {"title": "boom", "traceparent": PARENT})

            def handle(task: Task) -> None:
                raise RuntimeError("it broke")

            client.worker("web", agent="w", stop_when_idle=True, lease_seconds=5).run(handle, max_tasks=1)
    finally:
        transport.close()
    (process,) = _named(spans, "queue.process")
    assert f"{process.context.trace_id:032x}" == PARENT.split("-")[1]
    assert process.status.status_code is trace.StatusCode.ERROR and "it broke" in (process.status.description or "")
    (failed,) = _named(spans, "queue.fail")
    assert failed.attributes["queue.task.status"] in ("not-started", "failed")


def test_producer_fields_from_the_environment() -> None:
    assert tracing.producer_fields({"TRACEPARENT": PARENT, "TRACESTATE": "a=1"}) == {
        "traceparent": PARENT,
        "tracestate": "a=1",
    }
    assert tracing.producer_fields({}) == {}
    with pytest.raises(Exception, match="TRACEPARENT: traceparent 'bad'"):
        tracing.producer_fields({"TRACEPARENT": "bad"})
    with pytest.raises(Exception, match="TRACESTATE"):
        tracing.producer_fields({"TRACEPARENT": PARENT, "TRACESTATE": "no"})


def test_child_env_replaces_the_runners_own_context() -> None:
    task = Task.model_validate(
        {
            "project": "web",
            "key": "WEB-1",
            "seq": 1,
            "title": "t",
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z",
            "traceparent": PARENT,
        }
    )
    untraced = task.model_copy(update={"traceparent": None})
    inherited = {"PATH": "/bin", "TRACEPARENT": OTHER, "TRACESTATE": "x=1"}
    env = tracing.child_env(dict(inherited), tracing.ProcessSpan(untraced))
    assert env == {"PATH": "/bin"}
    span = tracing.ProcessSpan(task)
    env = tracing.child_env(dict(inherited), span)
    span.end()
    assert _trace_id(env["TRACEPARENT"]) == PARENT.split("-")[1] and "TRACESTATE" not in env


# -- the CLI ----------------------------------------------------------------------------------


def test_cli_task_add_reads_traceparent_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.test_cli import Cli

    cli = Cli(InMemoryBackend())
    cli("project", "create", "web", "--prefix", "WEB")
    monkeypatch.setenv("TRACEPARENT", PARENT)
    monkeypatch.setenv("TRACESTATE", "vendor=abc")
    task = cli.json("task", "add", "traced", "-p", "web")
    assert (task["traceparent"], task["tracestate"]) == (PARENT, "vendor=abc")
    # a task's own field wins over the environment
    batch = json.dumps([{"title": "own", "traceparent": OTHER}, {"title": "inherits"}])
    assert [t["traceparent"] for t in cli.json("task", "add", "--from", "-", "-p", "web", input=batch)] == [
        OTHER,
        PARENT,
    ]
    monkeypatch.setenv("TRACEPARENT", "00-not-hex")
    message = cli.error("task", "add", "refused", "-p", "web")
    assert message.startswith("TRACEPARENT: traceparent '00-not-hex' is not W3C trace context")
    assert [t["title"] for t in cli.json("task", "list", "-p", "web")["items"]] == ["traced", "own", "inherits"]
