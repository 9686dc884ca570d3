"""Request and response bodies of the REST API that are not domain models.

Domain objects (``Task``, ``Project``, ``Claim``…) and their inputs (``TaskCreate``…) live in
``queue_service.models`` and are used as they are. The response bodies the typed client reads
(``HealthStatus``, ``ResultsResponse``, ``TaskResult``) live in ``queue_service.wire`` and are
re-exported here, so the client never imports the ``api`` package.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from queue_service.models import (
    KEY_RE,
    MAX_KEY_LEN,
    ROLE_RE,
    Claim,
    Mission,
    Note,
    Project,
    Task,
    TaskCreate,
    one_line,
)
from queue_service.wire import HealthStatus, ResultsResponse, TaskResult

__all__ = [
    "MAX_BATCH",
    "MAX_RESULT_KEYS",
    "CancelRequest",
    "ClaimBatch",
    "ClaimRequest",
    "CompleteRequest",
    "ErrorBody",
    "ErrorInfo",
    "FailRequest",
    "HealthStatus",
    "HeartbeatRequest",
    "MissionList",
    "NoteCreate",
    "NoteList",
    "ProjectList",
    "ReleaseRequest",
    "ResultsRequest",
    "ResultsResponse",
    "TaskBatch",
    "TaskList",
    "TaskResult",
]

MAX_BATCH = 10_000
MAX_RESULT_KEYS = 1000
_MAX_JSON_DEPTH = 64

Token = Annotated[str, Field(min_length=1, max_length=200, description="the lease token returned by the claim")]
LeaseSeconds = Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False, description="lease length, seconds")]


def _check_role(value: str) -> str:
    if not ROLE_RE.fullmatch(value):
        raise ValueError(f"invalid role {value!r}: use letters, digits and . _ : / -, at most 128 characters")
    return value


def _check_key(value: str) -> str:
    if len(value) > MAX_KEY_LEN or not KEY_RE.fullmatch(value):
        raise ValueError(f"invalid task key {value!r}: use letters and digits joined by dashes (e.g. WEB-12)")
    return value


def _finite_json(value: Any, depth: int = 0) -> Any:
    """Refuse NaN/Infinity and absurd nesting: they would be stored, then fail every later read."""
    if depth > _MAX_JSON_DEPTH:
        raise ValueError(f"result is nested deeper than {_MAX_JSON_DEPTH} levels")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("result must not contain NaN or Infinity")
    if isinstance(value, dict):
        for item in value.values():
            _finite_json(item, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _finite_json(item, depth + 1)
    return value


RoleName = Annotated[str, AfterValidator(_check_role)]
KeyName = Annotated[str, AfterValidator(_check_key)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


# -- errors -----------------------------------------------------------------------------------


class ErrorInfo(_Out):
    """What went wrong: a stable machine ``code``, a human ``message``, and structured ``details``."""

    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorBody(_Out):
    """Every error response: ``{"error": {"code", "message", "details"}}``."""

    error: ErrorInfo


# -- lists ------------------------------------------------------------------------------------


class ProjectList(_Out):
    """The projects the caller may see, at most ``limit`` of them (``total``: how many in all)."""

    items: tuple[Project, ...]
    total: int | None = None
    #: pass as ``cursor`` for the next page (None: this was the last one)
    next_cursor: str | None = None


class MissionList(_Out):
    """A project's missions, at most ``limit`` of them (``total``: how many in all)."""

    items: tuple[Mission, ...]
    total: int | None = None
    #: pass as ``cursor`` for the next page (None: this was the last one)
    next_cursor: str | None = None


class TaskList(_Out):
    """A list of tasks that is not paginated (batch results, blockers, dependents, dead letters)."""

    items: tuple[Task, ...]


class NoteList(_Out):
    """A task's notes, oldest first."""

    items: tuple[Note, ...]


# -- task bodies ------------------------------------------------------------------------------


class TaskBatch(_Body):
    """Many tasks created all-or-nothing; ``depends_on: ["#0"]`` names the first task of the batch."""

    tasks: list[TaskCreate] = Field(min_length=1, max_length=MAX_BATCH)


class NoteCreate(_Body):
    """A note to append. With ``token``, the caller must hold the task's live lease."""

    text: str = Field(min_length=1, max_length=100_000)
    author: str | None = Field(default=None, min_length=1, max_length=200)
    token: str | None = Field(default=None, min_length=1, max_length=200)


class CancelRequest(_Body):
    """Why a task is cancelled (optional)."""

    reason: str | None = Field(default=None, max_length=2000)


class ResultsRequest(_Body):
    """The tasks whose results are wanted."""

    keys: list[KeyName] = Field(min_length=1, max_length=MAX_RESULT_KEYS)


# -- dispatch bodies --------------------------------------------------------------------------


class ClaimRequest(_Body):
    """Ask for the next ready task. ``wait_seconds`` > 0 long-polls until one is ready."""

    agent: str = Field(min_length=1, max_length=200, description="agent id, unique per process start")
    roles: list[RoleName] | None = Field(default=None, max_length=100, description="roles to serve; all if absent")
    wait_seconds: float = Field(default=0.0, ge=0, le=300, allow_inf_nan=False)
    lease_seconds: LeaseSeconds | None = None
    limit: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="claim up to this many tasks at once (answer: ClaimBatch); absent: one task (answer: Claim)",
    )
    lease_profile: Literal["worker", "agent"] = Field(
        default="worker",
        description="'agent': an agent-facing claim (the best ready task by the dispatch order, with the agent "
        "lease QUEUE_AGENT_LEASE_SECONDS unless lease_seconds is given); 'worker': the short lease kept by heartbeats",
    )

    @field_validator("agent")
    @classmethod
    def _agent_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("agent must not be blank")
        return one_line(value)


class ClaimBatch(BaseModel):
    """The answer to a claim with ``limit``: the claimed tasks, best first (empty when none was ready)."""

    claims: list[Claim]


class HeartbeatRequest(_Body):
    """Extend a lease."""

    token: Token
    lease_seconds: LeaseSeconds | None = None


class CompleteRequest(_Body):
    """Finish a claimed task with an optional JSON result."""

    token: Token
    result: Annotated[Any, AfterValidator(_finite_json)] = None


class FailRequest(_Body):
    """Report a failed attempt. Retryable failures go back to the queue with backoff."""

    token: Token
    error: str = Field(default="", max_length=20_000)
    retryable: bool = True


class ReleaseRequest(_Body):
    """Give a claimed task back without counting an attempt."""

    token: Token
