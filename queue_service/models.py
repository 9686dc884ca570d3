"""Domain models (pydantic v2): projects, missions, tasks, notes, events, and their input schemas.

Domain objects are immutable (``frozen=True``) and changed with ``model_copy(update=...)``. Input
models (``*Create``, ``*Update``) validate everything that comes from outside; a bad value raises
:class:`queue_service.exceptions.ValidationError` (via :func:`validated`) naming the offending value.
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
    "DEFAULT_MISSION",
    "DEFAULT_ROLE",
    "STATUS_ALIASES",
    "ApiToken",
    "Claim",
    "Event",
    "Lease",
    "Milestone",
    "Mission",
    "MissionCreate",
    "MissionStatus",
    "Note",
    "PRIORITY_ALIASES",
    "Preference",
    "Priority",
    "Project",
    "ProjectCreate",
    "ProjectSnapshot",
    "ProjectUpdate",
    "QueueStats",
    "ROUTING_STRATEGIES",
    "ReadyList",
    "SweepReport",
    "Task",
    "TaskCreate",
    "TaskFilter",
    "TaskPage",
    "TaskStatus",
    "TaskUpdate",
    "TokenRole",
    "one_line",
    "parse_priority",
    "parse_status",
    "tasks_file_problem",
    "utcnow",
    "validate_key",
    "validate_slug",
    "validated",
]

DEFAULT_MISSION = "default"
DEFAULT_ROLE = "default"

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
PREFIX_RE = re.compile(r"^[A-Z][A-Z0-9]{0,15}$")
#: Task keys: letters/digits groups joined by dashes (``WEB-12``, ``CR-01-02``, ``GW-001``).
KEY_RE = re.compile(r"^[A-Za-z0-9]+(?:[-_.][A-Za-z0-9]+)*$")
ROLE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$")
LABEL_RE = re.compile(r"^[^\s,|]{1,64}$")
MAX_KEY_LEN = 64

M = TypeVar("M", bound="BaseModel")


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (every timestamp in the service is)."""
    return datetime.now(UTC)


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
#: routing requirements of a task (issue 13's ``requires``; issue 18 reads/writes ``requires["model"]``); the
#: same rule as the routing branch's agent labels: names one token, values one line
LABEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$")
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


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    @pydantic.model_validator(mode="after")
    def _no_nul_characters(self) -> Any:
        # Postgres text cannot hold NUL; refuse it here so every backend answers the same way.
        for name in type(self).model_fields:
            found = find_nul(getattr(self, name), name)
            if found:
                raise ValueError(f"{found}: NUL characters are not allowed")
        return self


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


# ---------------------------------------------------------------------------------------------
# Projects and missions


class Project(_Frozen):
    """A project: the unit of isolation for keys, queues, workspace and auth."""

    slug: Slug
    name: str
    key_prefix: str
    workspace: str | None = None
    created_at: datetime
    updated_at: datetime
    version: int = 1
    #: routing strategy per role (issue 13); a role not named is ``pull``
    routing: dict[str, str] = Field(default_factory=dict)
    #: in-progress cap per concurrency key; ``"*"`` is the default for keys not named
    concurrency_limits: dict[str, int] = Field(default_factory=dict)


class ProjectCreate(_Input):
    """Input for creating a project."""

    slug: Slug
    name: OneLine | None = Field(default=None, max_length=200)
    key_prefix: KeyPrefix | None = None
    workspace: str | None = Field(default=None, max_length=4096)

    def resolved_prefix(self) -> str:
        """The key prefix, defaulting to the slug's letters upper-cased (``web-app`` → ``WEBAPP``)."""
        if self.key_prefix:
            return self.key_prefix
        letters = re.sub(r"[^A-Za-z0-9]", "", self.slug).upper()
        if not letters or not letters[0].isalpha():
            letters = "T" + letters
        return letters[:16]


class ProjectUpdate(_Input):
    """Patch for a project; only the fields given change."""

    name: OneLine | None = Field(default=None, max_length=200)
    workspace: str | None = Field(default=None, max_length=4096)
    #: replaces the routing map (issue 13): ``{"<role>": "pull|round-robin|least-busy|random"}``
    routing: RoutingMap | None = None
    #: replaces the concurrency limits: ``{"<key>": n, "*": default}``
    concurrency_limits: LimitMap | None = None


class Milestone(_Frozen):
    """An ordered step of a mission (a section of TASKS.md)."""

    id: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    status: MissionStatus = MissionStatus.PENDING


#: one directory or file name of a mission's tasks_file (issue 9: no spaces, no ``~``, no control characters)
TASKS_FILE_SEGMENT_RE = re.compile(r"[A-Za-z0-9._-]{1,100}")
#: most path segments a tasks_file may have (``docs/plans/web/TASKS.md``)
TASKS_FILE_MAX_SEGMENTS = 4


def tasks_file_problem(value: str) -> str | None:
    """Why *value* is not an acceptable mission ``tasks_file`` (None when it is).

    The rule: relative to the workspace, at most 4 segments of ``[A-Za-z0-9._-]``, none of them
    ``.`` or ``..``, ending in ``.md``. Also applied to stored missions before their file is synced.
    """
    if value.startswith("/"):
        return f"tasks_file {value!r} must be relative to the workspace"
    segments = value.split("/")
    if any(s == "" for s in segments):
        return f"tasks_file {value!r} has an empty segment"
    if any(s in (".", "..") for s in segments):
        return f"tasks_file {value!r}: '.' and '..' segments are refused"
    bad = next((s for s in segments if not TASKS_FILE_SEGMENT_RE.fullmatch(s)), None)
    if bad is not None:
        return f"tasks_file {value!r}: each segment must match [A-Za-z0-9._-] (1-100 characters), not {bad!r}"
    if len(segments) > TASKS_FILE_MAX_SEGMENTS:
        return f"tasks_file {value!r} has {len(segments)} segments; at most {TASKS_FILE_MAX_SEGMENTS} are allowed"
    if not value.endswith(".md") or segments[-1] == ".md":
        return f"tasks_file {value!r} must name a .md file (such as docs/TASKS.md)"
    return None


class Mission(_Frozen):
    """A mission: a plan inside a project with ordered milestones and its own TASKS.md."""

    project: str
    id: Slug
    name: str
    status: MissionStatus = MissionStatus.ACTIVE
    milestones: tuple[Milestone, ...] = ()
    tasks_file: str = "TASKS.md"
    created_at: datetime
    updated_at: datetime
    version: int = 1
    #: commands that must pass before a task counts as done (coord's ``quality_gates``; issue 18)
    quality_gates: tuple[str, ...] = ()


class MissionCreate(_Input):
    """Input for creating a mission."""

    id: Slug
    name: OneLine | None = Field(default=None, max_length=200)
    status: MissionStatus = MissionStatus.ACTIVE
    milestones: list[Milestone] = Field(default_factory=list)
    tasks_file: str | None = Field(default=None, max_length=1024)
    #: issue 18: coord's quality gates (commands); None on update keeps the mission's current list
    quality_gates: list[Annotated[OneLine, Field(min_length=1, max_length=500)]] | None = Field(
        default=None, max_length=50
    )

    @pydantic.field_validator("tasks_file")
    @classmethod
    def _relative_path(cls, value: str | None) -> str | None:
        if value is None:
            return None
        problem = tasks_file_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @pydantic.field_validator("milestones")
    @classmethod
    def _unique_milestones(cls, value: list[Milestone]) -> list[Milestone]:
        for m in value:
            one_line(m.id)
            one_line(m.name)
        ids = [m.id for m in value]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate milestone ids: {', '.join(dupes)}")
        return value


# ---------------------------------------------------------------------------------------------
# Tasks


class Task(_Frozen):
    """A unit of work. ``key`` is unique in its project; ``version`` grows by one on every change."""

    project: str
    key: str
    seq: int = Field(description="creation order within the project; stable sort key for pagination")
    title: str
    description: str = ""
    status: TaskStatus = TaskStatus.NOT_STARTED
    role: str = DEFAULT_ROLE
    priority: Priority = Priority.P2
    assignee: str | None = None
    mission: str = DEFAULT_MISSION
    milestone: str | None = None
    depends_on: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    extra: dict[str, str] = Field(default_factory=dict)
    #: labels an agent must have to get this task (``{"model": "opus"}``; TASKS.md's agent column)
    requires: dict[str, str] = Field(default_factory=dict)
    attempts: int = 0
    max_attempts: int = 3
    not_before: datetime | None = None
    idempotency_key: str | None = None
    result: Any = None
    last_error: str | None = None
    blocked_reason: str | None = None
    lease_holder: str | None = None
    lease_expires_at: datetime | None = None
    version: int = 1
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    #: the producer's W3C trace context, handed to whoever claims the task (issue 14)
    traceparent: str | None = None
    tracestate: str | None = None
    #: weighted label preferences: matching agents are offered it first
    prefers: tuple[Preference, ...] = ()
    #: tasks sharing a key are capped by the project's ``concurrency_limits`` while in progress
    concurrency_key: str | None = None
    #: fair-share group; None means the task's mission
    group: str | None = None


class TaskCreate(_Input):
    """Input for creating a task.

    ``depends_on`` holds task keys of the same project, or ``#i`` to name the *i*-th task of the same
    batch. ``key`` is optional: without it the project's next ``PREFIX-N`` is allocated.
    """

    title: Title
    key: TaskKey | None = None
    description: str = Field(default="", max_length=100_000)
    status: StatusField = TaskStatus.NOT_STARTED
    role: Role = DEFAULT_ROLE
    priority: PriorityField = Priority.P2
    assignee: OneLine | None = Field(default=None, max_length=200)
    mission: Slug = DEFAULT_MISSION
    milestone: OneLine | None = Field(default=None, max_length=64)
    depends_on: list[DepRef] = Field(default_factory=list, max_length=1000)
    labels: list[Label] = Field(default_factory=list, max_length=100)
    extra: dict[str, str] = Field(default_factory=dict)
    requires: Requires = Field(default_factory=dict)
    max_attempts: int = Field(default=3, ge=1, le=1000)
    not_before: AwareDatetime | None = None
    idempotency_key: str | None = Field(default=None, max_length=200)
    #: W3C trace context of the producer (REST headers of the same names, CLI ``TRACEPARENT``)
    traceparent: TraceParent | None = None
    tracestate: TraceState | None = None
    prefers: list[Preference] = Field(default_factory=list, max_length=32)
    concurrency_key: ConcurrencyKey | None = None
    #: fair-share group (team, user, ...); default: the task's mission
    group: OneLine | None = Field(default=None, min_length=1, max_length=200)

    @pydantic.field_validator("depends_on", "labels")
    @classmethod
    def _dedupe(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    @pydantic.model_validator(mode="after")
    def _state_needs_parent(self) -> TaskCreate:
        if self.tracestate is not None and self.traceparent is None:
            raise ValueError("tracestate: needs a traceparent (the W3C trace context it belongs to)")
        return self

    @pydantic.field_validator("status")
    @classmethod
    def _creatable(cls, value: TaskStatus) -> TaskStatus:
        return value


class TaskUpdate(_Input):
    """Patch for a task: only the fields present in the input change (``None`` clears a field)."""

    title: Title | None = None
    description: str | None = Field(default=None, max_length=100_000)
    status: StatusField | None = None
    role: Role | None = None
    priority: PriorityField | None = None
    assignee: OneLine | None = Field(default=None, max_length=200)
    mission: Slug | None = None
    milestone: OneLine | None = Field(default=None, max_length=64)
    depends_on: list[TaskKey] | None = Field(default=None, max_length=1000)
    labels: list[Label] | None = None
    extra: dict[str, str] | None = None
    requires: Requires | None = None
    max_attempts: int | None = Field(default=None, ge=1, le=1000)
    not_before: AwareDatetime | None = None
    blocked_reason: str | None = Field(default=None, max_length=2000)
    prefers: list[Preference] | None = Field(default=None, max_length=32)
    concurrency_key: ConcurrencyKey | None = None
    group: OneLine | None = Field(default=None, min_length=1, max_length=200)

    @pydantic.field_validator("depends_on", "labels")
    @classmethod
    def _dedupe(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else list(dict.fromkeys(value))

    def changes(self) -> dict[str, Any]:
        """The fields the caller set, with their values (unset fields are absent)."""
        return {name: getattr(self, name) for name in self.model_fields_set}


def _check_search_text(value: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("search text must be one line without control characters")
    return value


#: a search needle: one line, 1-200 characters
SearchText = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_check_search_text)]


class TaskFilter(_Input):
    """Filters for listing tasks; every given filter must match."""

    status: list[StatusField] | None = None
    role: str | None = None
    assignee: str | None = None
    mission: str | None = None
    milestone: str | None = None
    label: str | None = None
    ready: bool | None = None
    #: case-insensitive substring of the key, title or description (the board's search, issue 12)
    text: SearchText | None = None


class TaskPage(_Frozen):
    """One page of tasks; pass ``next_cursor`` back to get the next page (None at the end)."""

    items: tuple[Task, ...]
    next_cursor: str | None = None


class Note(_Frozen):
    """An append-only note on a task."""

    id: int
    project: str
    task: str
    author: str
    text: str
    created_at: datetime


class Event(_Frozen):
    """A recorded change; ``id`` grows monotonically per backend (SSE ``Last-Event-ID``)."""

    id: int
    project: str
    task: str | None = None
    kind: str
    status: TaskStatus | None = None
    version: int | None = None
    at: datetime
    data: dict[str, Any] = Field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Dispatch


class Lease(_Frozen):
    """Proof of a claim: present ``token`` to heartbeat, complete, fail or release."""

    token: str
    holder: str
    expires_at: datetime
    #: the lease length granted (or renewed) by this call, seconds (issue 11)
    seconds: float | None = None


class Claim(_Frozen):
    """A claimed task and its lease."""

    task: Task
    lease: Lease


class ReadyList(_Frozen):
    """Ready tasks in dispatch order (priority, then tasks unblocked, then age), with the total."""

    tasks: list[Task]
    #: how many tasks are ready in all (``tasks`` holds the first ``limit`` of them)
    total: int
    #: per listed key: how many not-done tasks depend on it
    unblocks: dict[str, int] = Field(default_factory=dict)


class QueueStats(_Frozen):
    """Counts per status, ready depth per role, and dead-letter size for one project."""

    project: str
    by_status: dict[str, int]
    ready_by_role: dict[str, int]
    queue_depth_by_role: dict[str, int] = Field(default_factory=dict)
    in_flight: int = 0
    dead_letter: int = 0
    completed_last_minute: int = 0


class SweepReport(_Frozen):
    """What one orchestrator sweep did."""

    expired_leases: tuple[str, ...] = ()
    released_backoffs: int = 0
    requeued: int = 0
    dead_lettered: tuple[str, ...] = ()


class ApiToken(_Frozen):
    """A stored API token (only its hash is kept)."""

    id: str
    project: str | None
    role: TokenRole
    token_hash: str
    name: str | None = None
    created_at: datetime
    #: set by ``qs token revoke``: the token no longer authenticates, but its record keeps auth on
    revoked_at: datetime | None = None


class SyncFileState(_Frozen):
    """The workspace-sync state of one TASKS.md and its base rows with their history (issue 17)."""

    project: str
    #: the file's absolute path (the key its state is stored under)
    path: str
    state: dict[str, Any]
    #: task key -> base row (synced values, version, earlier versions)
    rows: dict[str, dict[str, Any]] = Field(default_factory=dict)


class ProjectSnapshot(_Frozen):
    """Everything a project holds, for export/import between backends."""

    project: Project
    missions: tuple[Mission, ...]
    tasks: tuple[Task, ...]
    notes: tuple[Note, ...]
    events: tuple[Event, ...]
    next_seq: int
    #: workspace sync states (issue 17); empty in exports from before it
    sync: tuple[SyncFileState, ...] = ()
