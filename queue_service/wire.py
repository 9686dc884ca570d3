"""Response bodies both sides of the wire share: the server writes them, the typed client reads them.

Only pydantic and ``queue_service.models`` are imported here, so ``queue_service.client`` can use
these without pulling in FastAPI or any server module (STYLE rule 28). Request bodies stay in
``queue_service.api.schemas`` (only the server validates them); domain objects (``Task``,
``Claim``…) live in ``queue_service.models``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from queue_service.models import Task, TaskStatus

__all__ = [
    "DEFAULT_STREAM",
    "HealthStatus",
    "ResultsResponse",
    "StreamChunk",
    "StreamPage",
    "TaskResult",
]

#: the stream a task's output goes to when none is named
DEFAULT_STREAM = "default"


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class TaskResult(_Out):
    """Where one task stands and what it produced."""

    key: str
    status: TaskStatus
    result: Any = None
    last_error: str | None = None
    attempts: int = 0
    version: int
    completed_at: datetime | None = None

    @classmethod
    def of(cls, task: Task) -> TaskResult:
        """The result view of *task*."""
        return cls(
            key=task.key,
            status=task.status,
            result=task.result,
            last_error=task.last_error,
            attempts=task.attempts,
            version=task.version,
            completed_at=task.completed_at,
        )


class ResultsResponse(_Out):
    """Results of the keys asked, in the order asked; keys that do not exist are in ``missing``."""

    items: tuple[TaskResult, ...]
    missing: tuple[str, ...] = ()


class HealthStatus(_Out):
    """``/healthz`` and ``/readyz`` bodies."""

    status: str
    backend: str | None = None
    version: str | None = None


class StreamChunk(BaseModel):
    """One published chunk, or (``done=True``, empty chunk) the end of the stream."""

    id: str
    chunk: str = ""
    done: bool = False


class StreamPage(BaseModel):
    """What a read returns: chunks after the cursor, oldest first, and whether the stream ended."""

    chunks: list[StreamChunk]
    done: bool = False
    #: the cursor to pass as ``after`` next time (the last id read, or the one given)
    cursor: str
