"""The TASKS.md format: a lossless parser (concrete syntax tree), edits, and renderers.

Typical use by the sync engine::

    doc = parse(text)
    for row in doc.rows():          # row.data (RowData) or row.errors (ParseError with line:column)
        ...
    doc.update_row(row, new_data)   # rewrites only that row's changed cells
    doc.set_key(new_row, "WEB-7")   # fill in the id of a ``+`` row
    doc.set_marker(row, MarkerKind.CONFLICT, "status: kept done (agent), file said todo")
    text = render(doc)              # untouched bytes come back exactly

See ``docs/TASKS-format.md`` for the format itself.
"""

from __future__ import annotations

from workspace_sync.format.canonical import MilestoneLike, render_document
from workspace_sync.format.cells import COORD_COLUMNS, DEFAULT_COLUMNS, NONE_CELL, Column
from workspace_sync.format.document import (
    Row,
    Table,
    TasksDocument,
    marker_line,
    milestone_heading,
    normalise_details,
    project_marker_line,
)
from workspace_sync.format.model import ErrorCode, Marker, MarkerKind, MilestoneRef, ParseError, RowData
from workspace_sync.format.parser import parse

__all__ = [
    "COORD_COLUMNS",
    "DEFAULT_COLUMNS",
    "NONE_CELL",
    "Column",
    "ErrorCode",
    "Marker",
    "MarkerKind",
    "MilestoneLike",
    "MilestoneRef",
    "ParseError",
    "Row",
    "RowData",
    "Table",
    "TasksDocument",
    "marker_line",
    "milestone_heading",
    "normalise_details",
    "parse",
    "project_marker_line",
    "render",
    "render_document",
]


def render(doc: TasksDocument) -> str:
    """The text of *doc*: the parsed bytes, except the rows, Details texts and markers that were edited.

    ``render(parse(text)) == text`` for any text.
    """
    return doc.render()
