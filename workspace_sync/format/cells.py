"""Table cells of TASKS.md: splitting rows, escaping pipes, column headers and per-field values.

Everything here is pure and line-local, so the parser stays linear: one row is split and read without
looking at any other line.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from queue_service import models

__all__ = [
    "CANONICAL_HEADERS",
    "COORD_COLUMNS",
    "DEFAULT_COLUMNS",
    "FIELD_ALIASES",
    "NONE_CELL",
    "AUTO_AGENT_WORDS",
    "NONE_WORDS",
    "Column",
    "SplitRow",
    "columns_from_headers",
    "escape_cell",
    "is_separator",
    "is_table_line",
    "normalise_header",
    "pad_like",
    "parse_list",
    "parse_priority",
    "parse_status_word",
    "split_row",
    "unescape_cell",
]

#: What the renderer writes for an empty value (coord style).
NONE_CELL = "—"
#: Cell texts that mean "no value" (after stripping the padding).
NONE_WORDS = frozenset({"", "-", "—", "–"})
#: agent cells that mean "any agent" (coord writes ``— (auto)``; issue 18), compared in lower case
AUTO_AGENT_WORDS = frozenset({"auto", "(auto)", "— (auto)", "- (auto)", "– (auto)", "—(auto)", "-(auto)"})

#: Header (normalised: lower case, spaces and dashes as ``_``) → RowData field. Anything else is an extra column.
FIELD_ALIASES: dict[str, str] = {
    "id": "key",
    "status": "status",
    "description": "title",
    "title": "title",
    "agent": "assignee",
    "assignee": "assignee",
    "priority": "priority",
    "role": "role",
    "depends_on": "depends_on",
    "deps": "depends_on",
    "labels": "labels",
    "notes": "notes",
    "milestone": "milestone",
}
#: The header word the renderer writes for each field.
CANONICAL_HEADERS: dict[str, str] = {
    "key": "id",
    "status": "status",
    "title": "description",
    "assignee": "agent",
    "priority": "priority",
    "role": "role",
    "depends_on": "depends_on",
    "labels": "labels",
    "notes": "notes",
    "milestone": "milestone",
}
#: Columns of a freshly rendered table (DESIGN §4).
DEFAULT_COLUMNS = ("id", "status", "description", "agent", "priority", "depends_on", "notes")
#: Exactly coord's nine columns (``strict_coord`` rendering).
COORD_COLUMNS = ("id", "status", "description", "issue", "agent", "branch", "depends_on", "estimate", "notes")

_SEPARATOR_RE = re.compile(r"^[ \t]*\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$")
_HEADER_NORMALISE_RE = re.compile(r"[\s\-]+")
_LIST_SPLIT_RE = re.compile(r"[,\s]+")
_HAS_SPACE_RE = re.compile(r"\s")
_NEWLINE_RE = re.compile(r"\r\n|\r|\n")
_STATUS_CACHE: dict[str, models.TaskStatus] = {}


@dataclasses.dataclass(frozen=True, slots=True)
class Column:
    """One column of a task table.

    Attributes:
        name: the header text as written (padding stripped, ``\\|`` unescaped).
        field: the RowData field it feeds (``key``, ``status``, ``title``, …), ``extra`` for an unknown
            column (kept under ``name`` in ``RowData.extra``), or ``ignored`` for an empty or duplicate header.
    """

    name: str
    field: str


class SplitRow:
    """A table line cut into cells; joining the parts back gives the line again."""

    __slots__ = ("cells", "indent", "suffix", "trailing_pipe")

    def __init__(self, indent: str, cells: list[str], trailing_pipe: bool, suffix: str) -> None:
        self.indent = indent
        self.cells = cells
        self.trailing_pipe = trailing_pipe
        self.suffix = suffix

    def start(self, index: int) -> int:
        """0-based offset in the line of cell *index*'s first character (just after its opening pipe)."""
        return len(self.indent) + 1 + sum(len(cell) + 1 for cell in self.cells[:index])

    def join(self) -> str:
        """The line content again (without its line ending)."""
        return self.indent + "|" + "|".join(self.cells) + ("|" if self.trailing_pipe else "") + self.suffix


def is_table_line(content: str) -> bool:
    """A line that starts (after spaces/tabs) with a pipe."""
    return content.lstrip(" \t").startswith("|")


def is_separator(content: str) -> bool:
    """A table separator row: ``| --- | :---: |`` (at least one pipe, only dashes and colons in cells)."""
    return "|" in content and "-" in content and _SEPARATOR_RE.match(content) is not None


def split_row(content: str) -> SplitRow:
    """Split a table line on unescaped pipes; the line must start (after indentation) with ``|``."""
    stripped = content.lstrip(" \t")
    indent = content[: len(content) - len(stripped)]
    pieces = stripped[1:].split("|")
    if "\\" in stripped:
        # a pipe right after a backslash is part of the cell: glue those pieces back together
        merged = [pieces[0]]
        for piece in pieces[1:]:
            if merged[-1].endswith("\\"):
                merged[-1] += "|" + piece
            else:
                merged.append(piece)
        pieces = merged
    if len(pieces) > 1 and not pieces[-1].strip(" \t"):
        return SplitRow(indent, pieces, True, pieces.pop())
    return SplitRow(indent, pieces, False, "")


def unescape_cell(raw: str) -> str:
    """The value of a cell: padding stripped and ``\\|`` turned into ``|`` (no other escapes)."""
    return raw.strip().replace("\\|", "|")


def escape_cell(value: str) -> str:
    """A value ready to sit in a cell: single line, stripped, ``|`` escaped; empty becomes ``—``."""
    if "\n" in value or "\r" in value:
        value = _NEWLINE_RE.sub(" ", value)
    value = value.strip()
    if not value:
        return NONE_CELL
    return value.replace("|", "\\|")


def pad_like(original: str | None, text: str) -> str:
    """Wrap *text* in the padding style of the *original* cell (single spaces when there is none).

    An aligned column (a cell wider than ``" text "``) keeps its width when the new text fits.
    """
    if original is None:
        cell = f" {text} "
    elif not original.strip():
        cell = text if not original else " " + text + " " * max(1, len(original) - 1 - len(text))
    else:
        stripped_left = original.lstrip()
        lead = original[: len(original) - len(stripped_left)]
        trail = stripped_left[len(stripped_left.rstrip()) :]
        if len(trail) > 1:
            # keep the column aligned: give back or take away trailing spaces, never below one
            trail = " " * max(1, len(original) - len(lead) - len(text))
        cell = lead + text + trail
    if text.endswith("\\") and not cell.endswith((" ", "\t")):
        # a trailing backslash would escape the closing pipe
        cell += " "
    return cell


def normalise_header(name: str) -> str:
    """Lower case, emphasis/backticks dropped, spaces and dashes as ``_`` (``Depends On`` → ``depends_on``)."""
    return _HEADER_NORMALISE_RE.sub("_", name.strip().strip("*`").strip().lower())


def columns_from_headers(headers: Sequence[str]) -> tuple[list[Column], list[tuple[int, str]]]:
    """Columns for the header cells, and (index, message) problems for duplicated columns."""
    columns: list[Column] = []
    problems: list[tuple[int, str]] = []
    seen_fields: dict[str, str] = {}
    seen_extra: set[str] = set()
    for index, raw in enumerate(headers):
        name = unescape_cell(raw)
        field = FIELD_ALIASES.get(normalise_header(name))
        if field is not None:
            if field in seen_fields:
                problems.append((index, f"duplicate column {name!r} (same field as {seen_fields[field]!r}); ignored"))
                field = "ignored"
            else:
                seen_fields[field] = name
        elif not name:
            field = "ignored"
        elif name in seen_extra:
            problems.append((index, f"duplicate column {name!r}; ignored"))
            field = "ignored"
        else:
            seen_extra.add(name)
            field = "extra"
        columns.append(Column(name=name, field=field))
    return columns, problems


def parse_status_word(text: str) -> models.TaskStatus:
    """``models.parse_status`` with a cache (a file repeats the same few words thousands of times).

    Raises:
        InvalidStatus: for an unknown word.
    """
    status = _STATUS_CACHE.get(text)
    if status is None:
        status = models.parse_status(text)
        if len(_STATUS_CACHE) < 1024:
            _STATUS_CACHE[text] = status
    return status


def parse_priority(text: str) -> models.Priority:
    """``models.parse_priority``: ``P0``..``P3`` (any case), a bare digit, or ``CRITICAL/HIGH/MEDIUM/LOW``.

    Raises:
        ValidationError: for anything else.
    """
    return models.parse_priority(text)


def parse_list(text: str) -> tuple[str, ...]:
    """Items separated by commas and/or whitespace, in order, without duplicates."""
    if "," not in text and " " not in text and not _HAS_SPACE_RE.search(text):
        return (text,) if text else ()
    return tuple(dict.fromkeys(item for item in _LIST_SPLIT_RE.split(text) if item))
