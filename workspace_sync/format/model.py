"""Plain data types of the TASKS.md format: row data, parse errors, markers, milestones."""

from __future__ import annotations

import dataclasses
from enum import StrEnum

from queue_service import models

__all__ = ["ErrorCode", "Marker", "MarkerKind", "MilestoneRef", "ParseError", "RowData"]


class MarkerKind(StrEnum):
    """Kinds of inline marker comment the service writes above a row (``<!-- sync-<kind>: … -->``)."""

    #: the row does not parse or cannot be applied; the database kept its last good state
    ERROR = "error"
    #: both sides changed the row; the message says what was kept
    CONFLICT = "conflict"


class ErrorCode(StrEnum):
    """Machine-readable kind of a :class:`ParseError`."""

    #: a row has more or fewer cells than its table's header
    BAD_CELL_COUNT = "bad-cell-count"
    #: the id cell is not ``+``, empty, or a valid task key
    INVALID_KEY = "invalid-key"
    #: the status word is unknown
    INVALID_STATUS = "invalid-status"
    #: the priority is not P0..P3
    INVALID_PRIORITY = "invalid-priority"
    #: the role has characters outside ``[A-Za-z0-9_.:/-]``
    INVALID_ROLE = "invalid-role"
    #: a label is too long or has a pipe
    INVALID_LABEL = "invalid-label"
    #: a depends_on item is not a task key
    INVALID_DEPENDENCY = "invalid-dependency"
    #: a row depends on itself
    SELF_DEPENDENCY = "self-dependency"
    #: the description cell is empty (or a new row has none)
    EMPTY_DESCRIPTION = "empty-description"
    #: the same key is on an earlier row
    DUPLICATE_KEY = "duplicate-key"
    #: the row's table has no id column
    NO_ID_COLUMN = "no-id-column"
    #: pipe lines that are not part of a table (missing separator row, or a blank line inside a table)
    STRAY_TABLE_ROWS = "stray-table-rows"
    #: the separator row has a different number of cells than the header
    SEPARATOR_MISMATCH = "separator-mismatch"
    #: two header cells name the same field
    DUPLICATE_COLUMN = "duplicate-column"
    #: a task table has no id column
    MISSING_ID_COLUMN = "missing-id-column"
    #: two ``### KEY`` sections for the same key
    DUPLICATE_DETAILS = "duplicate-details"
    #: a bug in the parser (reported, never raised)
    INTERNAL = "internal"


@dataclasses.dataclass(frozen=True, slots=True)
class ParseError:
    """A problem in the file, with its 1-based line and column (in characters).

    ``str(error)`` is ``"<line>:<column>: <message>"``.
    """

    line: int
    column: int
    message: str
    code: ErrorCode

    def __str__(self) -> str:
        return f"{self.line}:{self.column}: {self.message}"


@dataclasses.dataclass(frozen=True, slots=True)
class Marker:
    """A service-owned comment line above a row: ``<!-- sync-error: … -->`` or ``<!-- sync-conflict: … -->``.

    ``line`` is where the parser found it (0 for a marker added since); equality looks at kind and message.
    """

    kind: MarkerKind
    message: str
    line: int = dataclasses.field(default=0, compare=False)
    raw: str = dataclasses.field(default="", repr=False, compare=False)


@dataclasses.dataclass(frozen=True, slots=True)
class MilestoneRef:
    """A milestone section of the file: ``## Milestone <id> — <name>`` or ``## <name>`` (id = name)."""

    id: str
    name: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class RowData:
    """What one task row says, as data. ``None`` / empty means the file says nothing for that field.

    Attributes:
        key: the task id, or None for a new row (``+`` or empty id).
        status: the canonical status, or None when the cell is empty or the table has no status column.
        title: the description cell.
        assignee: the agent/assignee cell.
        priority: P0..P3.
        role: the dispatch role.
        depends_on: task keys, in file order, without duplicates.
        labels: labels, in file order, without duplicates.
        notes: the notes cell.
        milestone: the row's ``milestone`` cell if it has one, else the id of the section holding its table
            (None before any section).
        extra: unknown columns, header name → cell text (``\\|`` unescaped); empty/``—`` cells are left out.
        details: the ``### KEY`` text of the Details section (None when there is none).
    """

    key: str | None = None
    status: models.TaskStatus | None = None
    title: str | None = None
    assignee: str | None = None
    priority: models.Priority | None = None
    role: str | None = None
    depends_on: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    notes: str | None = None
    milestone: str | None = None
    extra: dict[str, str] = dataclasses.field(default_factory=dict)
    details: str | None = None
