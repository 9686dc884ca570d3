"""The queue-service error tree.

Every error the service raises on purpose derives from :class:`QueueServiceError`. Backends translate
driver errors (SQLAlchemy, asyncpg, redis, OSError) into this tree at their boundary, so callers never
see a driver exception. The API maps each class to an HTTP status in one place (``api/errors.py``)
using the ``code`` and ``http_status`` attributes below.

```
QueueServiceError                     500 internal
  ConfigurationError                  500 configuration_error
  BackendError                        500 backend_error      (storage/transport failure)
    BackendUnavailable                503 backend_unavailable
    CorruptData                       500 corrupt_data       (a stored file does not load)
  ValidationError                     422 validation_error   (bad input, names the value)
    InvalidStatus                     422 invalid_status
    UnknownDependency                 422 unknown_dependency
    DependencyCycle                   422 dependency_cycle
  NotFound                            404 not_found
    ProjectNotFound                   404 project_not_found
    MissionNotFound                   404 mission_not_found
    TaskNotFound                      404 task_not_found
  Conflict                            409 conflict
    AlreadyExists                     409 already_exists
    InvalidTransition                 409 invalid_transition
    VersionConflict                   412 version_conflict   (expected_version is stale)
    LeaseError                        409 lease_invalid      (wrong, expired or superseded token)
  QueueFull                           429 queue_full         (backpressure)
  AuthError                           401 unauthorized
    Forbidden                         403 forbidden
```
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AlreadyExists",
    "AuthError",
    "BackendError",
    "BackendUnavailable",
    "ConfigurationError",
    "Conflict",
    "CorruptData",
    "DependencyCycle",
    "Forbidden",
    "InvalidStatus",
    "InvalidTransition",
    "LeaseError",
    "MissionNotFound",
    "NotFound",
    "ProjectNotFound",
    "QueueFull",
    "QueueServiceError",
    "TaskNotFound",
    "UnknownDependency",
    "ValidationError",
    "VersionConflict",
    "error_class_for_code",
]


class QueueServiceError(Exception):
    """Unexpected queue-service error."""

    code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message = message or (self.__doc__ or self.code).strip()
        self.details: dict[str, Any] = details
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        """The JSON error body used by the API: ``{"code", "message", "details"}``."""
        return {"code": self.code, "message": self.message, "details": self.details}


class ConfigurationError(QueueServiceError):
    """The service is configured wrongly."""

    code = "configuration_error"


class BackendError(QueueServiceError):
    """The storage backend failed; ``__cause__`` holds the driver error."""

    code = "backend_error"


class BackendUnavailable(BackendError):
    """The storage backend cannot be reached."""

    code = "backend_unavailable"
    http_status = 503


class CorruptData(BackendError):
    """Stored data does not load; it was left untouched."""

    code = "corrupt_data"


class ValidationError(QueueServiceError):
    """The input is not valid."""

    code = "validation_error"
    http_status = 422


class InvalidStatus(ValidationError):
    """Unknown task status word."""

    code = "invalid_status"


class UnknownDependency(ValidationError):
    """A dependency names a task that does not exist in this project."""

    code = "unknown_dependency"


class DependencyCycle(ValidationError):
    """The dependencies would form a cycle."""

    code = "dependency_cycle"


class NotFound(QueueServiceError):
    """The requested object does not exist."""

    code = "not_found"
    http_status = 404


class ProjectNotFound(NotFound):
    """No project with this slug exists."""

    code = "project_not_found"


class MissionNotFound(NotFound):
    """No mission with this id exists in the project."""

    code = "mission_not_found"


class TaskNotFound(NotFound):
    """No task with this key exists in the project."""

    code = "task_not_found"


class Conflict(QueueServiceError):
    """The request conflicts with the current state."""

    code = "conflict"
    http_status = 409


class AlreadyExists(Conflict):
    """An object with this identifier already exists."""

    code = "already_exists"


class InvalidTransition(Conflict):
    """The task cannot move from its current status to the requested one."""

    code = "invalid_transition"


class VersionConflict(Conflict):
    """The object changed since the version the caller read."""

    code = "version_conflict"
    http_status = 412


class LeaseError(Conflict):
    """The lease token is wrong, expired or was superseded by a newer claim."""

    code = "lease_invalid"


class QueueFull(QueueServiceError):
    """The ready queue is over its maximum depth; try again later."""

    code = "queue_full"
    http_status = 429


class AuthError(QueueServiceError):
    """Missing or invalid bearer token."""

    code = "unauthorized"
    http_status = 401


class Forbidden(AuthError):
    """The token does not allow this operation."""

    code = "forbidden"
    http_status = 403


def _all_subclasses(cls: type[QueueServiceError]) -> list[type[QueueServiceError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


def error_class_for_code(code: str) -> type[QueueServiceError]:
    """The most specific error class for an API error code (used by the client)."""
    for cls in _all_subclasses(QueueServiceError):
        if cls.code == code:
            return cls
    return QueueServiceError
