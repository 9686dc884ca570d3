"""Value types and their validators: the words a task's status and priority accept, the shapes of
slugs, keys, roles, labels and routing settings, and the annotated field types the models use.

:mod:`queue_service.models` re-exports every public name here (``from queue_service.models import
TaskStatus`` keeps working); a bad value raises :class:`queue_service.exceptions.ValidationError` via
:func:`validated`, naming what is wrong.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, TypeVar

import pydantic
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from queue_service import exceptions, tracing

__all__ = [
    "CANONICAL_STATUS_WORDS",
    "KEY_RE",
    "LABEL_NAME_RE",
    "LABEL_RE",
    "MAX_KEY_LEN",
    "MAX_REQUIRES",
    "PREFIX_RE",
    "PRIORITY_ALIASES",
    "ROLE_RE",
    "ROUTING_STRATEGIES",
    "SLUG_RE",
    "STATUS_ALIASES",
    "AwareDatetime",
    "ConcurrencyKey",
    "DepRef",
    "KeyPrefix",
    "Label",
    "LabelMap",
    "LimitMap",
    "MissionStatus",
    "OneLine",
    "Preference",
    "Priority",
    "PriorityField",
    "Requires",
    "Role",
    "RoutingMap",
    "Slug",
    "StatusField",
    "TaskKey",
    "TaskStatus",
    "Title",
    "TokenRole",
    "TraceParent",
    "TraceState",
    "find_nul",
    "one_line",
    "parse_priority",
    "parse_status",
    "validate_key",
    "validate_slug",
    "validated",
    "validation_error_from",
]

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
PREFIX_RE = re.compile(r"^[A-Z][A-Z0-9]{0,15}$")
#: Task keys: letters/digits groups joined by dashes (``WEB-12``, ``CR-01-02``, ``GW-001``).
KEY_RE = re.compile(r"^[A-Za-z0-9]+(?:[-_.][A-Za-z0-9]+)*$")
ROLE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$")
LABEL_RE = re.compile(r"^[^\s,|]{1,64}$")
MAX_KEY_LEN = 64

M = TypeVar("M", bound="BaseModel")


class TaskStatus(StrEnum):
    """Task status; the values are the canonical TASKS.md words."""

    #: waiting; ready when every dependency is done and ``not_before`` passed
    NOT_STARTED = "not-started"
    #: claimed (live lease) or marked as being worked on by a human
    IN_PROGRESS = "in-progress"
    #: the agent finished; a reviewer accepts (done) or rejects (not-started)
    NEEDS_QA = "needs-qa"
    #: finished; unblocks dependents
    DONE = "done"
    #: held by a human, or a dependency failed / was cancelled
    BLOCKED = "blocked"
    #: retries exhausted or a permanent error: the dead-letter set
    FAILED = "failed"
    #: withdrawn
    CANCELLED = "cancelled"


CANONICAL_STATUS_WORDS = tuple(s.value for s in TaskStatus)

#: Input spellings accepted for each status (compared case-insensitively, ``_``/space ≡ ``-``).
STATUS_ALIASES: dict[str, TaskStatus] = {
    "not-started": TaskStatus.NOT_STARTED,
    "todo": TaskStatus.NOT_STARTED,
    "to-do": TaskStatus.NOT_STARTED,
    "open": TaskStatus.NOT_STARTED,
    "pending": TaskStatus.NOT_STARTED,
    "new": TaskStatus.NOT_STARTED,
    "queued": TaskStatus.NOT_STARTED,
    "ready": TaskStatus.NOT_STARTED,
    "[ ]": TaskStatus.NOT_STARTED,
    "in-progress": TaskStatus.IN_PROGRESS,
    "wip": TaskStatus.IN_PROGRESS,
    "running": TaskStatus.IN_PROGRESS,
    "active": TaskStatus.IN_PROGRESS,
    "doing": TaskStatus.IN_PROGRESS,
    "started": TaskStatus.IN_PROGRESS,
    "claimed": TaskStatus.IN_PROGRESS,
    "needs-qa": TaskStatus.NEEDS_QA,
    "qa": TaskStatus.NEEDS_QA,
    "review": TaskStatus.NEEDS_QA,
    "in-review": TaskStatus.NEEDS_QA,
    "needs-review": TaskStatus.NEEDS_QA,
    # issue 18: the Mosaic orchestrator task schema (pending|running|gated|completed|failed|escalated);
    # a gated task waits for its quality gate, i.e. review; an escalated one waits for a human.
    "gated": TaskStatus.NEEDS_QA,
    "done": TaskStatus.DONE,
    "x": TaskStatus.DONE,
    "[x]": TaskStatus.DONE,
    "complete": TaskStatus.DONE,
    "completed": TaskStatus.DONE,
    "finished": TaskStatus.DONE,
    "closed": TaskStatus.DONE,
    "blocked": TaskStatus.BLOCKED,
    "on-hold": TaskStatus.BLOCKED,
    "hold": TaskStatus.BLOCKED,
    "waiting": TaskStatus.BLOCKED,
    "escalated": TaskStatus.BLOCKED,  # issue 18 (orchestrator schema)
    "failed": TaskStatus.FAILED,
    "fail": TaskStatus.FAILED,
    "error": TaskStatus.FAILED,
    "dead": TaskStatus.FAILED,
    "dead-letter": TaskStatus.FAILED,
    "cancelled": TaskStatus.CANCELLED,
    "canceled": TaskStatus.CANCELLED,
    "wontfix": TaskStatus.CANCELLED,
    "won't-do": TaskStatus.CANCELLED,
    "dropped": TaskStatus.CANCELLED,
}


def parse_status(value: object) -> TaskStatus:
    """Normalise a status word or alias (``todo``, ``wip``, ``x``, ``NOT_STARTED``…) to a status.

    Raises:
        InvalidStatus: naming the word and listing the canonical ones.
    """
    if isinstance(value, TaskStatus):
        return value
    if not isinstance(value, str):
        raise exceptions.InvalidStatus(f"status must be a string, got {value!r}", value=repr(value))
    word = re.sub(r"[\s_]+", "-", value.strip().lower())
    try:
        return STATUS_ALIASES[word]
    except KeyError:
        raise exceptions.InvalidStatus(
            f"unknown status {value!r}; use one of {', '.join(CANONICAL_STATUS_WORDS)}",
            value=value,
        ) from None


class Priority(StrEnum):
    """Dispatch priority; P0 is served first."""

    P0 = "P0"
    P1 = "P1"
    P2 = "P2"
    P3 = "P3"


#: Input spellings accepted for each priority (compared case-insensitively). Issue 18: the Mosaic
#: DB-side Tasks API words CRITICAL/HIGH/MEDIUM/LOW map onto P0..P3 in that order.
PRIORITY_ALIASES: dict[str, Priority] = {
    **{p.value: p for p in Priority},
    **{p.value[1:]: p for p in Priority},
    "CRITICAL": Priority.P0,
    "HIGH": Priority.P1,
    "MEDIUM": Priority.P2,
    "LOW": Priority.P3,
}


def parse_priority(value: object) -> Priority:
    """Normalise ``P0``..``P3``, a bare ``0``..``3`` or ``CRITICAL/HIGH/MEDIUM/LOW`` to a priority.

    Raises:
        ValidationError: naming the word and listing the accepted ones.
    """
    if isinstance(value, Priority):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 3:
        return Priority(f"P{value}")
    word = value.strip().upper() if isinstance(value, str) else None
    priority = PRIORITY_ALIASES.get(word) if word is not None else None
    if priority is None:
        raise exceptions.ValidationError(
            f"unknown priority {value!r}; use P0, P1, P2, P3 (or CRITICAL, HIGH, MEDIUM, LOW)",
            value=repr(value),
        )
    return priority


def _parse_priority(value: object) -> object:
    # pydantic BeforeValidator: unknown words fall through to the enum's own error
    try:
        return parse_priority(value)
    except exceptions.ValidationError:
        return value


class MissionStatus(StrEnum):
    """Mission and milestone status (coord parity)."""

    PENDING = "pending"
    ACTIVE = "active"
    COMPLETED = "completed"


class TokenRole(StrEnum):
    """What an API bearer token may do."""

    #: read anything in its project
    VIEWER = "viewer"
    #: read, plus claim/heartbeat/complete/fail/release/note in its project
    AGENT = "agent"
    #: everything
    ADMIN = "admin"


def validate_slug(value: str) -> str:
    """Check a project or mission slug (``^[a-z0-9][a-z0-9-]{0,62}$``)."""
    if not isinstance(value, str) or not SLUG_RE.fullmatch(value):
        raise exceptions.ValidationError(
            f"invalid slug {value!r}: use 1-63 lowercase letters, digits and dashes, starting with a letter or digit",
            value=value,
        )
    return value


def validate_key(value: str) -> str:
    """Check a task key (``WEB-12``, ``CR-01-02``): letters/digits groups joined by dashes."""
    if not isinstance(value, str) or len(value) > MAX_KEY_LEN or not KEY_RE.fullmatch(value):
        raise exceptions.ValidationError(
            f"invalid task key {value!r}: use letters and digits joined by dashes, "
            f"at most {MAX_KEY_LEN} characters (e.g. WEB-12)",
            value=value,
        )
    return value


def _check_prefix(value: str) -> str:
    if not PREFIX_RE.fullmatch(value):
        raise ValueError(f"invalid key prefix {value!r}: use 1-16 uppercase letters/digits, starting with a letter")
    return value


def _check_slug(value: str) -> str:
    if not SLUG_RE.fullmatch(value):
        raise ValueError(
            f"invalid slug {value!r}: use 1-63 lowercase letters, digits and dashes, starting with a letter or digit"
        )
    return value


def _check_key(value: str) -> str:
    if len(value) > MAX_KEY_LEN or not KEY_RE.fullmatch(value):
        raise ValueError(f"invalid task key {value!r}: use letters and digits joined by dashes (e.g. WEB-12)")
    return value


def _check_role(value: str) -> str:
    if not ROLE_RE.fullmatch(value):
        raise ValueError(f"invalid role {value!r}: use letters, digits and . _ : / -, at most 128 characters")
    return value


def _check_label(value: str) -> str:
    if not LABEL_RE.fullmatch(value):
        raise ValueError(f"invalid label {value!r}: no spaces, commas or pipes, at most 64 characters")
    return value


def _check_dep_ref(value: str) -> str:
    if re.fullmatch(r"#\d{1,6}", value):
        return value
    return _check_key(value)


#: every character ``str.splitlines`` breaks on: none may appear in a one-line field (issue 9, finding 11)
_LINE_BREAK_RE = re.compile(r"[\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029]")
#: a value made only of dashes reads as "empty" in a TASKS.md cell, so it could never round-trip
_DASHES_ONLY_RE = re.compile(r"[-\u2010-\u2015\u2212]+")


def one_line(value: str) -> str:
    """Refuse text that TASKS.md cannot carry exactly: line breaks, or only dashes (``-``, ``—``)."""
    if _LINE_BREAK_RE.search(value):
        raise ValueError(f"{value[:60]!r} must be a single line (no line breaks)")
    if _DASHES_ONLY_RE.fullmatch(value.strip()):
        raise ValueError(f"{value!r} means 'none' in TASKS.md; use a word")
    return value


def _strip_nonempty(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    if value is not None:
        try:
            # 0001-01-01T00:00+14:00 is before year 1 in UTC: no backend can store it
            value.astimezone(UTC)
        except OverflowError:
            raise ValueError(f"{value.isoformat()} is out of range once converted to UTC") from None
    return value


#: label names and values of agents and task affinity (``{"model": "opus"}``): one token each
LABEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$")
#: routing strategies a project can set per role (issue 13); ``pull`` is today's behaviour
ROUTING_STRATEGIES = ("pull", "round-robin", "least-busy", "random")


def _check_label_map(value: dict[str, str]) -> dict[str, str]:
    if len(value) > 32:
        raise ValueError(f"at most 32 labels, got {len(value)}")
    for name, val in value.items():
        if not LABEL_NAME_RE.fullmatch(name):
            raise ValueError(f"invalid label name {name!r}: letters, digits and . _ : / -, at most 64 characters")
        if not isinstance(val, str) or not val or len(val) > 200 or _LINE_BREAK_RE.search(val):
            raise ValueError(f"label {name!r}: the value must be one line of 1-200 characters")
    return value


def _check_concurrency_key(value: str) -> str:
    if not value or len(value) > 200 or _LINE_BREAK_RE.search(value) or value.strip() != value:
        raise ValueError(f"invalid concurrency key {value[:60]!r}: one line of 1-200 characters, no outer spaces")
    return value


def _check_routing(value: dict[str, str]) -> dict[str, str]:
    if len(value) > 100:
        raise ValueError(f"routing names at most 100 roles, got {len(value)}")
    for role, strategy in value.items():
        _check_role(role)
        if strategy not in ROUTING_STRATEGIES:
            raise ValueError(f"role {role!r}: unknown strategy {strategy!r} (use {'|'.join(ROUTING_STRATEGIES)})")
    return value


def _check_limits(value: dict[str, int]) -> dict[str, int]:
    if len(value) > 1000:
        raise ValueError(f"concurrency_limits holds at most 1000 keys, got {len(value)}")
    for key, limit in value.items():
        if key != "*":
            _check_concurrency_key(key)
        if not 0 <= limit <= 100_000:
            raise ValueError(f"concurrency limit of {key!r} must be between 0 and 100000, got {limit}")
    return value


Slug = Annotated[str, AfterValidator(_check_slug)]
KeyPrefix = Annotated[
    str, BeforeValidator(lambda v: v.strip().upper() if isinstance(v, str) else v), AfterValidator(_check_prefix)
]
TaskKey = Annotated[str, AfterValidator(_check_key)]
DepRef = Annotated[
    str, BeforeValidator(lambda v: v.strip() if isinstance(v, str) else v), AfterValidator(_check_dep_ref)
]
Role = Annotated[str, AfterValidator(_check_role)]
Label = Annotated[str, AfterValidator(_check_label), AfterValidator(one_line)]
Title = Annotated[str, AfterValidator(_strip_nonempty), AfterValidator(one_line), Field(max_length=500)]
#: free text that lands in one TASKS.md cell or heading (names, assignee, milestone)
OneLine = Annotated[str, AfterValidator(one_line)]
#: routing requirements of a task (issue 13's ``requires``; issue 18 reads/writes ``requires["model"]``):
#: the same rule as agent labels, names one token, values one line
MAX_REQUIRES = 32


def _check_requires(value: dict[str, str]) -> dict[str, str]:
    if len(value) > MAX_REQUIRES:
        raise ValueError(f"at most {MAX_REQUIRES} labels, got {len(value)}")
    for name, wanted in value.items():
        if not LABEL_NAME_RE.fullmatch(name):
            raise ValueError(f"invalid label name {name[:80]!r}: letters, digits and . _ : / -, at most 64 characters")
        if not wanted or len(wanted) > 200 or _LINE_BREAK_RE.search(wanted):
            raise ValueError(f"label {name[:80]!r}: the value must be one line of 1-200 characters")
    return value


Requires = Annotated[dict[str, str], AfterValidator(_check_requires)]
StatusField = Annotated[TaskStatus, BeforeValidator(parse_status)]
PriorityField = Annotated[Priority, BeforeValidator(_parse_priority)]
AwareDatetime = Annotated[datetime, AfterValidator(_aware)]
#: W3C trace context (issue 14; validated in queue_service.tracing)
TraceParent = Annotated[str, Field(max_length=tracing.MAX_TRACEPARENT), AfterValidator(tracing.check_traceparent)]
TraceState = Annotated[str, Field(max_length=tracing.MAX_TRACESTATE), AfterValidator(tracing.check_tracestate)]
LabelMap = Annotated[dict[str, str], AfterValidator(_check_label_map)]
ConcurrencyKey = Annotated[str, AfterValidator(_check_concurrency_key)]
RoutingMap = Annotated[dict[str, str], AfterValidator(_check_routing)]
LimitMap = Annotated[dict[str, int], AfterValidator(_check_limits)]


class Preference(BaseModel):
    """A weighted label preference of a task (issue 13): agents whose labels match rank higher."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    labels: LabelMap
    weight: int = Field(default=1, ge=-1000, le=1000)


def find_nul(value: object, path: str) -> str | None:
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for k, v in value.items():
            found = find_nul(k, path) or find_nul(v, f"{path}.{k}")
            if found:
                return found
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = find_nul(v, f"{path}[{i}]")
            if found:
                return found
    return None


def validated(model: type[M], data: Any) -> M:
    """Validate *data* into *model*, raising our ValidationError (not pydantic's) on bad input."""
    if isinstance(data, model):
        return data
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise validation_error_from(exc) from None


def validation_error_from(exc: pydantic.ValidationError) -> exceptions.ValidationError:
    """Turn a pydantic error into ours, with one line per problem naming the field and value."""
    problems = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "input"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if isinstance(err.get("ctx", {}).get("error"), exceptions.QueueServiceError):
            inner: exceptions.QueueServiceError = err["ctx"]["error"]
            cls: type[exceptions.ValidationError] = (
                type(inner) if isinstance(inner, exceptions.ValidationError) else exceptions.ValidationError
            )
            return cls(f"{loc}: {inner.message}", **inner.details)
        problems.append({"field": loc, "message": msg, "input": _safe_repr(err.get("input"))})
    text = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    return exceptions.ValidationError(text, problems=problems)


def _safe_repr(value: object) -> object:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    text = repr(value)
    return text if len(text) < 200 else text[:197] + "..."
