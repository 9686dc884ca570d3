"""Domain models (pydantic v2): projects, missions, tasks, notes, events, and their input schemas.

The value types and validators they are built from (statuses, priorities, slugs, keys, labels,
routing settings) live in :mod:`queue_service.values` and are re-exported here.

Domain objects are immutable (``frozen=True``) and changed with ``model_copy(update=...)``. Input
models (``*Create``, ``*Update``) validate everything that comes from outside; a bad value raises
:class:`queue_service.exceptions.ValidationError` (via :func:`validated`) naming the offending value.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

import pydantic
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from queue_service.values import (
    CANONICAL_STATUS_WORDS,
    KEY_RE,
    LABEL_RE,
    MAX_KEY_LEN,
    PRIORITY_ALIASES,
    ROLE_RE,
    ROUTING_STRATEGIES,
    SLUG_RE,
    STATUS_ALIASES,
    AwareDatetime,
    ConcurrencyKey,
    DepRef,
    KeyPrefix,
    Label,
    LabelMap,
    LimitMap,
    MissionStatus,
    OneLine,
    Preference,
    Priority,
    PriorityField,
    Requires,
    Role,
    RoutingMap,
    Slug,
    StatusField,
    TaskKey,
    TaskStatus,
    Title,
    TokenRole,
    TraceParent,
    TraceState,
    find_nul,
    one_line,
    parse_priority,
    parse_status,
    validate_key,
    validate_slug,
    validated,
    validation_error_from,
)

__all__ = [
    "ApiToken",
    "CANONICAL_STATUS_WORDS",
    "Claim",
    "DEFAULT_MISSION",
    "DEFAULT_ROLE",
    "Event",
    "KEY_RE",
    "LABEL_RE",
    "LabelMap",
    "Lease",
    "MAX_KEY_LEN",
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
    "ROLE_RE",
    "ROUTING_STRATEGIES",
    "ReadyList",
    "Role",
    "SLUG_RE",
    "STATUS_ALIASES",
    "SweepReport",
    "Task",
    "TaskCreate",
    "TaskFilter",
    "TaskPage",
    "TaskStatus",
    "TaskUpdate",
    "TokenRole",
    "find_nul",
    "one_line",
    "parse_priority",
    "parse_status",
    "tasks_file_problem",
    "utcnow",
    "validate_key",
    "validate_slug",
    "validated",
    "validation_error_from",
]

DEFAULT_MISSION = "default"
DEFAULT_ROLE = "default"


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (every timestamp in the service is)."""
    return datetime.now(UTC)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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
