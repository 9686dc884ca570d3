"""``parse(text)``: TASKS.md text → :class:`TasksDocument`, keeping every byte; never raises on bad input.

One pass over the lines builds the nodes (text, title, marker, sections, tables, Details); a second pass
reads the rows, once the Details texts are known. Both are linear in the size of the file.
"""

from __future__ import annotations

import gc
import re

from workspace_sync.format import cells as _cells
from workspace_sync.format.document import (
    Row,
    Table,
    TasksDocument,
    _Details,
    _DetailsEntry,
    _Heading,
    _Line,
    _Node,
    _Text,
)
from workspace_sync.format.model import ErrorCode, Marker, MarkerKind, ParseError

__all__ = ["parse"]

_H1_RE = re.compile(r"^#(?:[ \t]+(.*?))?[ \t]*$")
_H2_RE = re.compile(r"^##(?:[ \t]+(.*?))?[ \t]*$")
_H3_RE = re.compile(r"^###(?:[ \t]+(.*?))?[ \t]*$")
_PROJECT_RE = re.compile(r"^[ \t]*<!--[ \t]*queue-service:(.*?)-->[ \t]*$")
_PROJECT_FIELD_RE = re.compile(r"\b(project|mission)=([^\s·]+)")
_SYNC_MARKER_RE = re.compile(r"^[ \t]*<!--[ \t]*sync-(error|conflict)[ \t]*:(.*?)-->[ \t]*$")


def _sync_marker(content: str, raw: str, line: int) -> Marker | None:
    m = _SYNC_MARKER_RE.match(content)
    if m is None:
        return None
    return Marker(MarkerKind(m.group(1)), m.group(2).strip(), line, raw)


def _split_lines(text: str) -> list[tuple[str, str]]:
    """(raw line with its ending, content without it); only ``\\n`` ends a line."""
    if not text:
        return []
    parts = text.split("\n")
    if parts[-1] == "":
        parts.pop()
    out: list[tuple[str, str]] = []
    for part in parts:
        out.append((part + "\n", part[:-1] if part.endswith("\r") else part))
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.lines = _split_lines(text)
        self.nodes: list[_Node] = []
        self.errors: list[ParseError] = []
        self.text_buffer: list[str] = []
        self.section: _Heading | None = None
        self.details: _Details | None = None
        self.entry: _DetailsEntry | None = None
        self.seen_title = False
        self.seen_project = False

    def flush(self) -> None:
        if self.text_buffer:
            self.nodes.append(_Text("".join(self.text_buffer)))
            self.text_buffer = []

    def close_details(self) -> None:
        if self.details is not None:
            if self.entry is not None:
                self.entry.refresh()
            self.details = None
            self.entry = None

    def run(self) -> list[_Node]:
        lines = self.lines
        n = len(lines)
        i = 0
        while i < n:
            raw, content = lines[i]
            first = content[:1]
            if first == "#":
                m = _H2_RE.match(content)
                if m is not None:
                    self.flush()
                    self.close_details()
                    text = m.group(1) or ""
                    if text.lower() == "details":
                        self.details = _Details(raw, [], [])
                        self.nodes.append(self.details)
                        self.section = None
                    else:
                        self.section = _Heading(raw, text, i + 1)
                        self.nodes.append(self.section)
                    i += 1
                    continue
            if self.details is not None:
                self.details_line(raw, content, i)
                i += 1
                continue
            if first == "#" and not self.seen_title:
                m = _H1_RE.match(content)
                if m is not None:
                    self.flush()
                    self.seen_title = True
                    self.nodes.append(_Line(raw, "title", text=m.group(1) or ""))
                    i += 1
                    continue
            stripped = content.lstrip(" \t")
            if stripped.startswith("<!--"):
                i = self.comment_line(raw, content, i)
                continue
            if stripped.startswith("|"):
                i = self.table(i)
                continue
            self.text_buffer.append(raw)
            i += 1
        self.flush()
        self.close_details()
        return self.nodes

    def details_line(self, raw: str, content: str, i: int) -> None:
        assert self.details is not None
        m = _H3_RE.match(content) if content.startswith("###") else None
        if m is not None:
            if self.entry is not None:
                self.entry.refresh()
            words = (m.group(1) or "").split()
            self.entry = _DetailsEntry(raw, words[0] if words else "", i + 1, [])
            self.details.entries.append(self.entry)
        elif self.entry is not None:
            self.entry.body.append(raw)
        else:
            self.details.preamble.append(raw)

    def comment_line(self, raw: str, content: str, i: int) -> int:
        if not self.seen_project:
            m = _PROJECT_RE.match(content)
            if m is not None:
                self.flush()
                self.seen_project = True
                fields = dict(_PROJECT_FIELD_RE.findall(m.group(1)))
                self.nodes.append(_Line(raw, "project", project=fields.get("project"), mission=fields.get("mission")))
                return i + 1
        marker = _sync_marker(content, raw, i + 1)
        if marker is not None:
            # a service marker no longer above a row: still ours, never the human's prose
            self.flush()
            self.nodes.append(_Line(raw, "marker", marker=marker))
            return i + 1
        self.text_buffer.append(raw)
        return i + 1

    def table(self, i: int) -> int:
        """Consume a table (or a block of stray pipe lines) starting at line index *i*; return the next index."""
        lines = self.lines
        n = len(lines)
        header_raw, header_content = lines[i]
        if i + 1 >= n or not _cells.is_separator(lines[i + 1][1]):
            j = i
            while j < n and _cells.is_table_line(lines[j][1]):
                self.text_buffer.append(lines[j][0])
                j += 1
            split = _cells.split_row(header_content)
            column = split.start(0)
            message = (
                "table rows outside a table: a table needs a header row, then a separator row "
                "like | --- | --- |, and no blank lines between rows"
            )
            self.errors.append(ParseError(i + 1, column, message, ErrorCode.STRAY_TABLE_ROWS))
            return j
        header = _cells.split_row(header_content)
        columns, problems = _cells.columns_from_headers(header.cells)
        fields = {c.field for c in columns}
        sep_raw, sep_content = lines[i + 1]
        j = i + 2
        if "key" not in fields and "status" not in fields:
            # not a task table (no id or status column): prose the human owns
            self.text_buffer.append(header_raw)
            self.text_buffer.append(sep_raw)
            while j < n and _cells.is_table_line(lines[j][1]):
                self.text_buffer.append(lines[j][0])
                j += 1
            return j
        self.flush()
        for index, message in problems:
            col = header.start(index) + 1
            self.errors.append(ParseError(i + 1, col, message, ErrorCode.DUPLICATE_COLUMN))
        if "key" not in fields:
            self.errors.append(
                ParseError(i + 1, header.start(0), "the task table has no id column", ErrorCode.MISSING_ID_COLUMN)
            )
        separator_cells = len(_cells.split_row(sep_content).cells) if _cells.is_table_line(sep_content) else None
        if separator_cells is not None and separator_cells != len(columns):
            message = f"the separator row has {separator_cells} cells but the header has {len(columns)}"
            self.errors.append(ParseError(i + 2, 1, message, ErrorCode.SEPARATOR_MISMATCH))
        table = Table(header_raw, sep_raw, columns, i + 1)
        table.section = self.section
        pending: list[Marker] = []
        while j < n:
            raw, content = lines[j]
            if _cells.is_table_line(content):
                row = Row(table, _cells.split_row(content), raw[len(content) :], j + 1, raw)
                if pending:
                    row.markers = pending
                    pending = []
                table.rows.append(row)
            else:
                marker = _sync_marker(content, raw, j + 1) if content.lstrip(" \t").startswith("<!--") else None
                if marker is None:
                    break
                pending.append(marker)
            j += 1
        table.orphans = pending
        self.nodes.append(table)
        return j


def parse(text: str) -> TasksDocument:
    """Parse TASKS.md *text* into a :class:`TasksDocument` (a concrete syntax tree keeping every byte).

    Never raises for bad input: problems are in ``doc.errors`` (document level) and ``row.errors``
    (per row), each with a 1-based line and column. ``render(parse(text)) == text`` for any text.
    """
    # A big file allocates tens of thousands of small objects that all stay alive; the cyclic garbage
    # collector would rescan them again and again (a third of the parse time), so pause it meanwhile.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _parse(text)
    finally:
        if gc_was_enabled:
            gc.enable()


def _parse(text: str) -> TasksDocument:
    first_newline = text.find("\n")
    eol = "\r\n" if first_newline > 0 and text[first_newline - 1] == "\r" else "\n"
    final_newline = text == "" or text.endswith("\n")
    # Inside, every line ends with a line ending; render() takes the added one off again.
    parser = _Parser(text if final_newline else text + eol)
    nodes = parser.run()
    doc = TasksDocument(nodes, eol, final_newline, parser.errors)
    for node in nodes:
        if isinstance(node, _Details):
            for entry in node.entries:
                if not entry.key:
                    continue
                if entry.key in doc._details:
                    first = doc._details[entry.key][1]
                    message = f"duplicate Details section for {entry.key} (first at line {first.line}); ignored"
                    doc._errors.append(ParseError(entry.line, 5, message, ErrorCode.DUPLICATE_DETAILS))
                else:
                    doc._details[entry.key] = (node, entry)
    for node in nodes:
        if isinstance(node, Table):
            for row in node.rows:
                doc._read(row)
    return doc
