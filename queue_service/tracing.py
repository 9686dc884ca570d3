"""W3C trace context across the queue (issue 14) and optional OpenTelemetry spans (the ``[otel]`` extra).

A producer hands its trace context to a task when it creates it: the ``traceparent``/``tracestate``
fields (or REST headers of those names), ``TRACEPARENT``/``TRACESTATE`` in the CLI's environment, or,
with OpenTelemetry, the context current in the typed client. The task stores both strings and hands
them to whoever claims it; ``qs run`` puts them in the child's environment. So a trace started by the
producer continues in the agent that runs the task.

With OpenTelemetry's SDK configured (``pip install 'queue-service[otel]'`` and a tracer provider), the
service creates ``queue.enqueue`` (producer), ``queue.claim``, ``queue.complete``/``queue.fail``
spans, and the worker helper and ``qs run`` a ``queue.process`` (consumer) span from claim to finish,
each a child of the producer's context. Without a tracer provider every call here is a no-op; without
the ``opentelemetry`` package at all, too (only the stored strings travel then).

Validation follows the W3C Trace Context recommendation: ``traceparent`` is
``version-traceid-parentid-flags`` in lowercase hex (version ``ff``, an all-zero trace id or parent
id are invalid; version ``00`` has nothing after the flags); ``tracestate`` is at most 32
comma-separated ``key=value`` members, 512 characters in all, keys unique.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import re
import sys
import time
import types
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol

from queue_service import exceptions


class TracedItem(Protocol):
    """What an enqueue span reads of a ``TaskCreate``. Structural, because ``models`` imports this
    module for its trace-context validators: importing ``models`` back would close a circle."""

    @property
    def traceparent(self) -> str | None: ...
    @property
    def tracestate(self) -> str | None: ...
    @property
    def key(self) -> str | None: ...
    @property
    def role(self) -> str | None: ...


class TracedTask(TracedItem, Protocol):
    """What claim, finish and process spans read of a ``Task``."""

    @property
    def project(self) -> str: ...
    @property
    def attempts(self) -> int: ...
    @property
    def status(self) -> enum.Enum: ...


__all__ = [
    "MAX_TRACEPARENT",
    "MAX_TRACESTATE",
    "TRACE_ENV",
    "ProcessSpan",
    "check_traceparent",
    "check_tracestate",
    "child_env",
    "current_fields",
    "enqueue_spans",
    "producer_fields",
    "record_claims",
    "record_finish",
    "traceparent_problem",
    "tracestate_problem",
]

#: longest ``traceparent`` accepted (version 00 is exactly 55; later versions may append fields)
MAX_TRACEPARENT = 128
#: longest ``tracestate`` accepted (the recommendation asks carriers to keep at least 512)
MAX_TRACESTATE = 512
_MAX_MEMBERS = 32
#: environment variables carrying the context into (and out of) processes, as OpenTelemetry names them
TRACE_ENV = ("TRACEPARENT", "TRACESTATE")

_TRACEPARENT_RE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[\x21-\x7e]*)?")
_KEY = r"(?:[a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
_VALUE = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
_MEMBER_RE = re.compile(rf"({_KEY})=({_VALUE})")

SpanKindName = Literal["producer", "consumer", "internal"]


@functools.cache
def _otel() -> Any:
    """OpenTelemetry's API (imported on first need: the CLI starts faster without it), or None."""
    try:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:  # pragma: no cover - fastapi already depends on opentelemetry-api
        return None
    return types.SimpleNamespace(trace=trace, context=context, propagator=TraceContextTextMapPropagator())


def traceparent_problem(value: object) -> str | None:
    """Why *value* is not a valid W3C ``traceparent`` (None when it is)."""
    if not isinstance(value, str):
        return f"traceparent must be a string, got {type(value).__name__}"
    if len(value) > MAX_TRACEPARENT:
        return f"traceparent is {len(value)} characters; at most {MAX_TRACEPARENT} are allowed"
    match = _TRACEPARENT_RE.fullmatch(value)
    if match is None:
        return (
            f"traceparent {value[:60]!r} is not W3C trace context: expected "
            "'00-<32 lowercase hex trace id>-<16 lowercase hex parent id>-<2 hex flags>'"
        )
    version, trace_id, parent_id, _flags, rest = match.groups()
    if version == "ff":
        return "traceparent version ff is invalid"
    if version == "00" and rest:
        return "traceparent version 00 has nothing after the flags"
    if trace_id == "0" * 32:
        return "traceparent trace id must not be all zeros"
    if parent_id == "0" * 16:
        return "traceparent parent id must not be all zeros"
    return None


def tracestate_problem(value: object) -> str | None:
    """Why *value* is not a valid W3C ``tracestate`` (None when it is)."""
    if not isinstance(value, str):
        return f"tracestate must be a string, got {type(value).__name__}"
    if len(value) > MAX_TRACESTATE:
        return f"tracestate is {len(value)} characters; at most {MAX_TRACESTATE} are allowed"
    members = [m.strip(" \t") for m in value.split(",")]
    members = [m for m in members if m]
    if len(members) > _MAX_MEMBERS:
        return f"tracestate has {len(members)} members; at most {_MAX_MEMBERS} are allowed"
    keys: set[str] = set()
    for member in members:
        match = _MEMBER_RE.fullmatch(member)
        if match is None:
            return f"tracestate member {member[:60]!r} is not key=value in W3C trace context form"
        if match.group(1) in keys:
            return f"tracestate names key {match.group(1)!r} twice"
        keys.add(match.group(1))
    return None


def check_traceparent(value: str) -> str:
    """Pydantic validator: *value* if it is a valid ``traceparent``, else ValueError saying why."""
    problem = traceparent_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def check_tracestate(value: str) -> str:
    """Pydantic validator: *value* if it is a valid ``tracestate``, else ValueError saying why."""
    problem = tracestate_problem(value)
    if problem:
        raise ValueError(problem)
    return value


# -- producers --------------------------------------------------------------------------------


def current_fields() -> dict[str, str]:
    """The active OpenTelemetry context as ``{"traceparent", "tracestate"?}`` ({} without one)."""
    if "opentelemetry.trace" not in sys.modules:
        return {}  # nobody in this process uses OpenTelemetry: no span can be current
    otel = _otel()
    if otel is None:
        return {}
    carrier: dict[str, str] = {}
    otel.propagator.inject(carrier)
    return {k: v for k, v in carrier.items() if k in ("traceparent", "tracestate") and v}


def producer_fields(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The trace context a producer passes on: ``TRACEPARENT``/``TRACESTATE`` from *environ* (the CLI,
    a child of ``qs run``), else the active OpenTelemetry context, else {}.

    Raises:
        ValidationError: naming the environment variable whose value is not W3C trace context.
    """
    env = environ or {}
    parent = env.get("TRACEPARENT", "").strip()
    if not parent:
        return current_fields()
    problem = traceparent_problem(parent)
    if problem:
        raise exceptions.ValidationError(f"TRACEPARENT: {problem}", variable="TRACEPARENT")
    out = {"traceparent": parent}
    state = env.get("TRACESTATE", "").strip()
    if state:
        problem = tracestate_problem(state)
        if problem:
            raise exceptions.ValidationError(f"TRACESTATE: {problem}", variable="TRACESTATE")
        out["tracestate"] = state
    return out


def with_producer_context(body: dict[str, Any], fields: Mapping[str, str]) -> dict[str, Any]:
    """*body* (a task-create JSON object) with *fields* added unless it carries its own traceparent."""
    if not fields or not isinstance(body, dict) or body.get("traceparent"):
        return body
    return {**body, **fields}


# -- spans ------------------------------------------------------------------------------------


def _parent(traceparent: str | None, tracestate: str | None) -> Any:
    """The OpenTelemetry context of a stored traceparent (None without one or without OpenTelemetry)."""
    otel = _otel() if traceparent else None
    if otel is None:
        return None
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    ctx = otel.propagator.extract(carrier)
    return ctx if otel.trace.get_current_span(ctx).get_span_context().is_valid else None


def _start(
    name: str, parent: Any, kind: SpanKindName, attributes: dict[str, Any], start_time: int | None = None
) -> Any:
    trace = _otel().trace
    kinds = {"producer": trace.SpanKind.PRODUCER, "consumer": trace.SpanKind.CONSUMER}
    tracer = trace.get_tracer("queue_service")
    return tracer.start_span(
        name,
        context=parent,
        kind=kinds.get(kind, trace.SpanKind.INTERNAL),
        attributes=attributes,
        start_time=start_time,
    )


def _end(span: Any, error: BaseException | str | None = None) -> None:
    if error is not None:
        if isinstance(error, BaseException):
            span.record_exception(error)
        trace = _otel().trace
        span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)[:200]))
    span.end()


def _task_attributes(project: str, key: str | None, role: str | None) -> dict[str, Any]:
    attrs: dict[str, Any] = {"messaging.system": "queue-service", "messaging.destination.name": project}
    if key:
        attrs["messaging.message.id"] = key
        attrs["queue.task.key"] = key
    if role:
        attrs["queue.task.role"] = role
    return attrs


@contextlib.contextmanager
def enqueue_spans(project: str, items: Sequence[TracedItem]) -> Iterator[None]:
    """One ``queue.enqueue`` producer span per item that carries a trace context, around the create."""
    spans = []
    for item in items:
        parent = _parent(item.traceparent, item.tracestate)
        if parent is not None:
            spans.append(_start("queue.enqueue", parent, "producer", _task_attributes(project, item.key, item.role)))
    try:
        yield
    except BaseException as exc:
        for span in spans:
            _end(span, exc)
        raise
    for span in spans:
        _end(span)


def record_claims(project: str, agent: str, tasks: Sequence[TracedTask], started_ns: int) -> None:
    """A ``queue.claim`` span (from *started_ns* to now) for each claimed task with a trace context."""
    for task in tasks:
        parent = _parent(task.traceparent, task.tracestate)
        if parent is not None:
            attrs = _task_attributes(project, task.key, task.role)
            attrs.update({"queue.agent": agent, "queue.task.attempt": task.attempts})
            _end(_start("queue.claim", parent, "consumer", attrs, started_ns))


def record_finish(name: str, task: TracedTask, started_ns: int, error: str | None = None) -> None:
    """A ``queue.complete``/``queue.fail`` span (from *started_ns* to now) if the task has a context."""
    parent = _parent(task.traceparent, task.tracestate)
    if parent is not None:
        attrs = _task_attributes(task.project, task.key, task.role)
        attrs["queue.task.status"] = task.status.value
        _end(_start(name, parent, "internal", attrs, started_ns), error)


def now_ns() -> int:
    """Wall-clock nanoseconds, the time base of span start times."""
    return time.time_ns()


class ProcessSpan:
    """The consumer's ``queue.process`` span from claim to finish, a child of the task's context.

    ``attach()`` makes it (or, without a tracer provider, the producer's context itself) current, so
    tasks the handler creates continue the trace; ``env()`` gives a child process the same context.
    """

    def __init__(self, task: TracedTask) -> None:
        self.task = task
        self._span: Any = None
        self._token: Any = None
        parent = _parent(task.traceparent, task.tracestate)
        if parent is not None:
            attrs = _task_attributes(task.project, task.key, task.role)
            attrs["queue.task.attempt"] = task.attempts
            self._span = _start("queue.process", parent, "consumer", attrs)

    def _context(self) -> Any:
        return None if self._span is None else _otel().trace.set_span_in_context(self._span)

    def attach(self) -> None:
        """Make the span current in this thread/task (undo with :meth:`detach`, in the same one)."""
        ctx = self._context()
        if ctx is not None and self._token is None:
            self._token = _otel().context.attach(ctx)

    def detach(self) -> None:
        if self._token is not None:
            with contextlib.suppress(ValueError):  # detached in another context: nothing to restore
                _otel().context.detach(self._token)
            self._token = None

    def env(self) -> dict[str, str]:
        """``TRACEPARENT``/``TRACESTATE`` for a child: this span's context while it records, else the
        task's own (so the trace continues even without a tracer provider here); {} without one."""
        fields: dict[str, str] = {}
        if self._span is not None and self._span.get_span_context().is_valid:
            _otel().propagator.inject(fields, context=self._context())
        if "traceparent" not in fields and self.task.traceparent:
            fields = {"traceparent": self.task.traceparent}
            if self.task.tracestate:
                fields["tracestate"] = self.task.tracestate
        out = {"TRACEPARENT": fields["traceparent"]} if fields.get("traceparent") else {}
        if out and fields.get("tracestate"):
            out["TRACESTATE"] = fields["tracestate"]
        return out

    def end(self, error: BaseException | str | None = None) -> None:
        """End the span (idempotent), marking it failed with *error*."""
        self.detach()
        if self._span is not None:
            _end(self._span, error)
            self._span = None


def child_env(env: dict[str, str], span: ProcessSpan) -> dict[str, str]:
    """*env* with the task's trace context: ``TRACEPARENT``/``TRACESTATE`` set from *span*, and any
    inherited from the runner dropped (they belong to the runner's trace, not the task's)."""
    for name in TRACE_ENV:
        env.pop(name, None)
    env.update(span.env())
    return env
