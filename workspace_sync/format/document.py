"""The concrete syntax tree of a TASKS.md file and the edits the sync engine makes to it.

A :class:`TasksDocument` is a list of nodes that together hold every byte of the file. Rendering joins
the nodes' raw text, so whatever an edit did not touch comes back byte for byte. Edits re-serialise only
the row (or Details subsection, or marker line) they change.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator

from queue_service import exceptions
from workspace_sync.format import cells as _cells
from workspace_sync.format import rows as _rows
from workspace_sync.format.model import ErrorCode, Marker, MarkerKind, MilestoneRef, ParseError, RowData

__all__ = ["Row", "Table", "TasksDocument", "marker_line", "milestone_heading", "project_marker_line"]

_MILESTONE_RE = re.compile(r"^Milestone[ \t]+(\S+)(?:[ \t]+[—–-]+[ \t]*(.*)|[ \t]*:[ \t]*(.*))?$", re.IGNORECASE)
_TITLE_NAME_RE = re.compile(r"^Tasks[ \t]*[—–:-]+[ \t]*(.*)$", re.IGNORECASE)
_DETAILS_ESCAPED_RE = re.compile(r"^\\*##")
_DETAILS_UNESCAPE_RE = re.compile(r"^\\+##")
_MARKER_TEXT_RE = re.compile(r"\s+")


def milestone_of(heading: str) -> tuple[str, str]:
    """(id, name) of a ``##`` heading: ``Milestone 1 — Cart`` → ``("1", "Cart")``, ``Backend`` → both ``Backend``."""
    m = _MILESTONE_RE.match(heading)
    if m:
        name = (m.group(2) or m.group(3) or "").strip()
        return m.group(1), name or heading
    return heading, heading


def milestone_heading(milestone_id: str, name: str | None = None) -> str:
    """The ``##`` heading text for a milestone (parses back to the same id and name where possible)."""
    milestone_id = " ".join(milestone_id.split())
    name = " ".join((name or "").split()) or milestone_id
    if name == milestone_id or not milestone_id or " " in milestone_id:
        return name
    return f"Milestone {milestone_id} — {name}"


def project_marker_line(project: str, mission: str) -> str:
    """The marker comment line (without line ending) naming the project and mission of the file."""
    return f"<!-- queue-service: project={project} mission={mission} · edit rows freely; keep this line -->"


def _clean_marker_message(message: str) -> str:
    return _MARKER_TEXT_RE.sub(" ", message.replace("-->", "->")).strip()


def marker_line(kind: MarkerKind | str, message: str) -> str:
    """A service marker comment line (without line ending): ``<!-- sync-error: message -->``."""
    return f"<!-- sync-{MarkerKind(kind).value}: {_clean_marker_message(message)} -->"


def _content(raw: str) -> str:
    """A raw line without its line ending."""
    if raw.endswith("\n"):
        raw = raw[:-1]
        if raw.endswith("\r"):
            raw = raw[:-1]
    return raw


def _is_blank(raw: str | None) -> bool:
    return raw is not None and not raw.strip()


def escape_details_line(line: str) -> str:
    """Protect a Details text line that would otherwise read as a ``##``/``###`` heading."""
    return "\\" + line if _DETAILS_ESCAPED_RE.match(line) else line


def unescape_details_line(line: str) -> str:
    """Undo :func:`escape_details_line`."""
    return line[1:] if _DETAILS_UNESCAPE_RE.match(line) else line


def normalise_details(text: str | None) -> str | None:
    """Details text as the file gives it back: unified newlines, outer blank lines dropped; None if empty."""
    if text is None:
        return None
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    start, end = 0, len(lines)
    while start < end and not lines[start].strip():
        start += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return "\n".join(lines[start:end]) or None


# ---------------------------------------------------------------------------------------------------------------
# Nodes


class _Node:
    __slots__ = ()

    def emit(self, out: list[str]) -> None:
        raise NotImplementedError

    def first_line(self) -> str | None:
        raise NotImplementedError

    def last_line(self) -> str | None:
        raise NotImplementedError


class _Text(_Node):
    """Text the human owns: prose, blockquotes, blank lines, foreign tables, unrecognised lines."""

    __slots__ = ("raw",)

    def __init__(self, raw: str) -> None:
        self.raw = raw

    def emit(self, out: list[str]) -> None:
        out.append(self.raw)

    def first_line(self) -> str | None:
        return self.raw.split("\n", 1)[0] if self.raw else None

    def last_line(self) -> str | None:
        if not self.raw:
            return None
        return self.raw[:-1].rsplit("\n", 1)[-1] if self.raw.endswith("\n") else self.raw.rsplit("\n", 1)[-1]


class _Line(_Node):
    """A single structural line: the ``#`` title, the project marker, a stray service marker."""

    __slots__ = ("kind", "marker", "mission", "project", "raw", "text")

    def __init__(
        self,
        raw: str,
        kind: str,
        *,
        text: str = "",
        marker: Marker | None = None,
        project: str | None = None,
        mission: str | None = None,
    ) -> None:
        self.raw = raw
        self.kind = kind
        self.text = text
        self.marker = marker
        self.project = project
        self.mission = mission

    def emit(self, out: list[str]) -> None:
        out.append(self.raw)

    def first_line(self) -> str | None:
        return self.raw

    def last_line(self) -> str | None:
        return self.raw


class _Heading(_Node):
    """A ``##`` heading that starts a (milestone) section."""

    __slots__ = ("line", "milestone", "raw", "text")

    def __init__(self, raw: str, text: str, line: int, milestone: MilestoneRef | None = None) -> None:
        self.raw = raw
        self.text = text
        self.line = line
        self.milestone = milestone or MilestoneRef(*milestone_of(text))

    def emit(self, out: list[str]) -> None:
        out.append(self.raw)

    def first_line(self) -> str | None:
        return self.raw

    def last_line(self) -> str | None:
        return self.raw


class _DetailsEntry:
    """A ``### KEY`` subsection: its heading line and body lines (raw, with line endings)."""

    __slots__ = ("body", "heading", "key", "line", "text")

    def __init__(self, heading: str, key: str, line: int, body: list[str]) -> None:
        self.heading = heading
        self.key = key
        self.line = line
        self.body = body
        self.text: str | None = None
        self.refresh()

    def refresh(self) -> None:
        """Recompute ``text`` from the body lines."""
        self.text = normalise_details("\n".join(unescape_details_line(_content(raw)) for raw in self.body))


class _Details(_Node):
    """A ``## Details`` section: heading, text before the first ``###``, and the subsections."""

    __slots__ = ("entries", "heading", "preamble")

    def __init__(self, heading: str, preamble: list[str], entries: list[_DetailsEntry]) -> None:
        self.heading = heading
        self.preamble = preamble
        self.entries = entries

    def emit(self, out: list[str]) -> None:
        out.append(self.heading)
        out.extend(self.preamble)
        for entry in self.entries:
            out.append(entry.heading)
            out.extend(entry.body)

    def first_line(self) -> str | None:
        return self.heading

    def last_line(self) -> str | None:
        if self.entries:
            entry = self.entries[-1]
            return entry.body[-1] if entry.body else entry.heading
        return self.preamble[-1] if self.preamble else self.heading

    def last_lines(self) -> list[str]:
        """The list of raw lines that ends the section (to add a blank line to)."""
        if self.entries:
            return self.entries[-1].body
        return self.preamble


class Row:
    """One table row of the file, with its parsed data or errors and the markers above it.

    Attributes:
        table: the table holding the row.
        line: 1-based line in the parsed text (0 for a row added since).
        key: the row's valid task id, None for a new (``+``) row or an invalid id.
        data: what the row says, or None when it has errors.
        errors: why the row does not parse (empty when it does).
        markers: service markers (``sync-error``/``sync-conflict``) directly above the row.
    """

    __slots__ = ("_eol", "_raw", "_split", "attached", "data", "errors", "key", "line", "markers", "table")

    def __init__(self, table: Table, split: _cells.SplitRow, eol: str, line: int, raw: str | None = None) -> None:
        self.table = table
        self.line = line
        self._split = split
        self._eol = eol
        self._raw = split.join() + eol if raw is None else raw
        self.key: str | None = None
        self.data: RowData | None = None
        self.errors: tuple[ParseError, ...] = ()
        self.markers: list[Marker] = []
        self.attached = True

    @property
    def is_new(self) -> bool:
        """A row without a valid id (``+`` or empty) that has no errors: a task to create."""
        return self.data is not None and self.data.key is None

    @property
    def text(self) -> str:
        """The row's line as it will be rendered, without its line ending."""
        return _content(self._raw)

    def __repr__(self) -> str:
        return f"Row(line={self.line}, key={self.key!r}, errors={len(self.errors)}, text={self.text!r})"


class Table(_Node):
    """A task table: header row, separator row, rows (each with its markers), trailing markers.

    Attributes:
        columns: the header's columns in file order.
        fields: the RowData fields this table can show (``key``, ``status``, ``title``, …; not ``extra``).
        line: 1-based line of the header row.
        rows: the rows, in file order.
    """

    __slots__ = (
        "columns",
        "fields",
        "header",
        "key_index",
        "layout",
        "line",
        "orphans",
        "rows",
        "section",
        "separator",
    )

    def __init__(self, header: str, separator: str, columns: list[_cells.Column], line: int) -> None:
        self.header = header
        self.separator = separator
        self.layout = _rows.Layout(columns)
        self.columns = self.layout.columns
        self.fields = frozenset(c.field for c in columns) - {"extra", "ignored"}
        self.key_index = self.layout.key_index
        self.line = line
        self.rows: list[Row] = []
        self.orphans: list[Marker] = []
        self.section: _Heading | None = None

    @property
    def milestone(self) -> MilestoneRef | None:
        """The milestone section holding the table (None before any ``##`` heading)."""
        return None if self.section is None else self.section.milestone

    def emit(self, out: list[str]) -> None:
        out.append(self.header)
        out.append(self.separator)
        for row in self.rows:
            for marker in row.markers:
                out.append(marker.raw)
            out.append(row._raw)
        for marker in self.orphans:
            out.append(marker.raw)

    def first_line(self) -> str | None:
        return self.header

    def last_line(self) -> str | None:
        if self.orphans:
            return self.orphans[-1].raw
        if self.rows:
            return self.rows[-1]._raw
        return self.separator


# ---------------------------------------------------------------------------------------------------------------
# Document


class TasksDocument:
    """A parsed TASKS.md: read rows as data, edit them, render back (unchanged parts keep their bytes).

    Build one with :func:`workspace_sync.format.parse`. Line numbers (``Row.line``, errors) refer to the
    parsed text; edits do not renumber them.
    """

    def __init__(self, nodes: list[_Node], eol: str, final_newline: bool, errors: list[ParseError]) -> None:
        self._nodes = nodes
        self.eol = eol
        self._final_newline = final_newline
        self._errors = errors
        self._by_key: dict[str, Row] = {}
        self._details: dict[str, tuple[_Details, _DetailsEntry]] = {}

    # -- reading ------------------------------------------------------------------------------------------------

    @property
    def errors(self) -> tuple[ParseError, ...]:
        """Document-level problems (malformed tables, duplicate columns or details), not row errors.

        While there are any, a sync engine should not read a missing row as a deletion: a broken table
        hides its rows.
        """
        return tuple(self._errors)

    def all_errors(self) -> list[ParseError]:
        """Document errors and every row's errors, sorted by position."""
        found = list(self._errors)
        for row in self.rows():
            found.extend(row.errors)
        return sorted(found, key=lambda e: (e.line, e.column))

    @property
    def title(self) -> str | None:
        """The text of the first ``# `` heading."""
        node = self._find_line("title")
        return None if node is None else node.text

    @property
    def mission_name(self) -> str | None:
        """The mission name from a ``# Tasks — <name>`` title (the whole title otherwise)."""
        title = self.title
        if title is None:
            return None
        m = _TITLE_NAME_RE.match(title)
        return m.group(1).strip() if m and m.group(1).strip() else title

    @property
    def project(self) -> str | None:
        """``project=`` of the marker comment line (None without one)."""
        node = self._find_line("project")
        return None if node is None else node.project

    @property
    def mission(self) -> str | None:
        """``mission=`` of the marker comment line (None without one)."""
        node = self._find_line("project")
        return None if node is None else node.mission

    def tables(self) -> list[Table]:
        """Task tables in file order."""
        return [node for node in self._nodes if isinstance(node, Table)]

    def rows(self) -> Iterator[Row]:
        """Every task row in file order (broken ones included)."""
        for node in self._nodes:
            if isinstance(node, Table):
                yield from node.rows

    def rows_data(self) -> list[RowData]:
        """The data of every row that parses, in file order."""
        return [row.data for row in self.rows() if row.data is not None]

    def row(self, key: str) -> Row | None:
        """The (first) row with this key, broken or not."""
        return self._by_key.get(key)

    def new_rows(self) -> list[Row]:
        """Rows marked ``+`` (or with an empty id) that parse: tasks to create."""
        return [row for row in self.rows() if row.is_new]

    def milestones(self) -> list[MilestoneRef]:
        """The ``##`` sections other than Details, in file order."""
        return [node.milestone for node in self._nodes if isinstance(node, _Heading)]

    def details(self) -> dict[str, str]:
        """Every ``### KEY`` text of the Details section(s), by key (rows or not)."""
        return {key: entry.text for key, (_, entry) in self._details.items() if entry.text is not None}

    def get_details(self, key: str) -> str | None:
        """The Details text for *key*, or None."""
        found = self._details.get(key)
        return None if found is None else found[1].text

    def render(self) -> str:
        """The file text (see :func:`workspace_sync.format.render`)."""
        out: list[str] = []
        for node in self._nodes:
            node.emit(out)
        text = "".join(out)
        if not self._final_newline and text.endswith(self.eol):
            text = text[: -len(self.eol)]
        return text

    # -- row edits ----------------------------------------------------------------------------------------------

    def update_row(self, row: Row, data: RowData) -> None:
        """Make *row* say *data*; only cells whose value changed are rewritten (keeping their padding).

        A changed ``milestone`` moves the row to that section's table (unless its table has a milestone
        column). ``data.details`` replaces the key's Details text. Fields the table has no column for are
        not written. Afterwards ``row.data`` is what the file now says.
        """
        self._check(row)
        table = row.table
        section = table.milestone
        if "milestone" not in table.fields and data.milestone != (None if section is None else section.id):
            self._detach(row)
            self._place(row, data, None)
        else:
            old = row.data
            cells = row._split.cells
            aligned = len(cells) == len(table.columns)
            new_cells: list[str] = []
            for index, column in enumerate(table.columns):
                original = cells[index] if aligned else None
                if original is not None and (
                    column.field == "ignored" or (old is not None and _rows.same_value(column, old, data))
                ):
                    new_cells.append(original)
                else:
                    new_cells.append(_cells.pad_like(original, _rows.cell_text(column, data)))
            split = row._split
            self._set_cells(
                row, _cells.SplitRow(split.indent, new_cells, split.trailing_pipe or not aligned, split.suffix)
            )
        if row.key is not None and row.key == data.key:
            self.set_details(row.key, data.details)

    def set_key(self, row: Row, key: str | None) -> None:
        """Write *key* into the row's id cell (``+`` for None); the rest of the row keeps its bytes.

        Raises:
            AlreadyExists: another row has this key.
            ValidationError: the row's table has no id column.
        """
        self._check(row)
        index = row.table.key_index
        if index is None:
            raise exceptions.ValidationError("the row's table has no id column")
        if key is not None and self._by_key.get(key, row) is not row:
            raise exceptions.AlreadyExists(f"task {key} already has a row")
        split = row._split
        new_cells = list(split.cells)
        original = new_cells[index] if index < len(new_cells) else None
        text = "+" if key is None else _cells.escape_cell(key)
        if original is None:
            new_cells.extend([" "] * (index - len(new_cells)))
            new_cells.append(_cells.pad_like(None, text))
        else:
            new_cells[index] = _cells.pad_like(original, text)
        self._set_cells(row, _cells.SplitRow(split.indent, new_cells, split.trailing_pipe, split.suffix))

    def append_row(self, data: RowData, *, milestone_name: str | None = None) -> Row:
        """Add a row for *data* at the end of its milestone's table and return it.

        The table is the last task table under the ``##`` section whose milestone id (or name) is
        ``data.milestone``; a missing table or section is created (before ``## Details``), with the
        columns of the document's first task table or the default ones. *milestone_name* names a new
        section (default: the id). ``data.details``, when not None, sets the key's Details text.

        Raises:
            AlreadyExists: another row already has ``data.key``.
        """
        if data.key is not None and data.key in self._by_key:
            raise exceptions.AlreadyExists(f"task {data.key} already has a row")
        row = Row.__new__(Row)
        row.markers = []
        row.line = 0
        row.key = None
        row._eol = self.eol
        key = self._place(row, data, milestone_name)
        if key is not None and data.details is not None:
            self.set_details(key, data.details)
        return row

    def remove_row(self, row: Row) -> None:
        """Delete the row and its markers (the table and everything else stay)."""
        self._check(row)
        self._detach(row)
        row.attached = False

    # -- markers ------------------------------------------------------------------------------------------------

    def set_marker(self, row: Row, kind: MarkerKind | str, message: str) -> None:
        """Put one ``<!-- sync-<kind>: message -->`` line above the row (replacing that kind's markers).

        A marker that already says the same keeps its bytes.
        """
        self._check(row)
        kind = MarkerKind(kind)
        message = _clean_marker_message(message)
        same = [m for m in row.markers if m.kind is kind]
        if len(same) == 1 and same[0].message == message:
            return
        marker = Marker(kind, message, 0, marker_line(kind, message) + self.eol)
        row.markers = [m for m in row.markers if m.kind is not kind] + [marker]

    def clear_markers(self, row: Row, kind: MarkerKind | str | None = None) -> None:
        """Remove the row's markers (of *kind*, or all)."""
        self._check(row)
        wanted = None if kind is None else MarkerKind(kind)
        row.markers = [m for m in row.markers if wanted is not None and m.kind is not wanted]

    def clear_all_markers(self, kind: MarkerKind | str | None = None) -> None:
        """Remove service markers (of *kind*, or all) everywhere, including ones no longer above a row."""
        wanted = None if kind is None else MarkerKind(kind)

        def keep(marker: Marker) -> bool:
            return wanted is not None and marker.kind is not wanted

        nodes: list[_Node] = []
        for node in self._nodes:
            if isinstance(node, Table):
                node.orphans = [m for m in node.orphans if keep(m)]
                for row in node.rows:
                    if row.markers:
                        row.markers = [m for m in row.markers if keep(m)]
            elif isinstance(node, _Line) and node.kind == "marker" and node.marker and not keep(node.marker):
                continue
            nodes.append(node)
        self._nodes = nodes

    def set_document_errors(self, messages: list[str]) -> None:
        """Show document-level problems as ``sync-error`` lines below the title/project line (issue 17).

        Free-standing ``sync-error`` lines from an earlier call are replaced, so the same messages
        keep the same bytes and fixed problems lose their line.
        """
        old = [
            n
            for n in self._nodes
            if isinstance(n, _Line) and n.marker is not None and n.marker.kind is MarkerKind.ERROR
        ]
        wanted = [marker_line(MarkerKind.ERROR, text) + self.eol for text in messages]
        if [n.raw for n in old] == wanted:
            return
        self._nodes = [n for n in self._nodes if not any(n is o for o in old)]
        anchor = self._find_line("project") or self._find_line("title")
        index = 0 if anchor is None else self._nodes.index(anchor) + 1
        for offset, raw in enumerate(wanted):
            marker = Marker(MarkerKind.ERROR, _clean_marker_message(messages[offset]), 0, raw)
            self._nodes.insert(index + offset, _Line(raw, "marker", marker=marker))

    def annotate_errors(self) -> None:
        """Mark every row that has errors with a ``sync-error`` marker and clear it from rows that have none.

        Call it before adding the engine's own ``sync-error`` markers (unknown dependency, cycle, …).
        """
        for row in self.rows():
            if row.errors:
                self.set_marker(row, MarkerKind.ERROR, "; ".join(e.message for e in row.errors))
            elif any(m.kind is MarkerKind.ERROR for m in row.markers):
                self.clear_markers(row, MarkerKind.ERROR)

    # -- details and header -------------------------------------------------------------------------------------

    def set_details(self, key: str, text: str | None) -> None:
        """Set the ``### KEY`` text (None or blank removes the subsection); creates ``## Details`` if needed."""
        text = normalise_details(text)
        found = self._details.get(key)
        if found is None and text is None:
            return
        if found is not None and found[1].text == text:
            return
        if found is not None and text is None:
            section, entry = found
            section.entries.remove(entry)
            del self._details[key]
        else:
            lines = [escape_details_line(line) + self.eol for line in (text or "").split("\n")]
            if found is not None:
                section, entry = found
                self._replace_body(section, entry, lines)
            else:
                section = self._details_section()
                previous = section.last_lines()
                if not previous or not _is_blank(previous[-1]):
                    previous.append(self.eol)
                if self._nodes[-1] is not section:
                    lines.append(self.eol)
                entry = _DetailsEntry(f"### {key}{self.eol}", key, 0, lines)
                section.entries.append(entry)
                self._details[key] = (section, entry)
        row = self._by_key.get(key)
        if row is not None and row.data is not None:
            row.data = dataclasses.replace(row.data, details=self.get_details(key))

    def set_project_marker(self, project: str, mission: str) -> None:
        """Write (or correct) the ``<!-- queue-service: project=… mission=… -->`` line, below the title."""
        node = self._find_line("project")
        if node is not None and self.project == project and self.mission == mission:
            return
        raw = project_marker_line(project, mission) + self.eol
        if node is not None:
            node.raw, node.project, node.mission = raw, project, mission
            return
        title = self._find_line("title")
        index = 0 if title is None else self._nodes.index(title) + 1
        self._nodes.insert(index, _Line(raw, "project", project=project, mission=mission))

    # -- internals ----------------------------------------------------------------------------------------------

    def _find_line(self, kind: str) -> _Line | None:
        for node in self._nodes:
            if isinstance(node, _Line) and node.kind == kind:
                return node
        return None

    def _check(self, row: Row) -> None:
        if not row.attached:
            raise exceptions.ValidationError("the row was removed from the document")

    def _index(self, row: Row) -> None:
        if row.key is None:
            return
        first = self._by_key.setdefault(row.key, row)
        if first is not row:
            where = f" (first at line {first.line})" if first.line else ""
            error = ParseError(row.line, 1, f"duplicate task id {row.key}{where}", ErrorCode.DUPLICATE_KEY)
            row.errors = (*row.errors, error)
            row.data = None

    def _unindex(self, row: Row) -> None:
        if row.key is not None and self._by_key.get(row.key) is row:
            del self._by_key[row.key]

    def _read(self, row: Row) -> None:
        """(Re)compute the row's key, data and errors from its cells, and index it."""
        table = row.table
        section = table.milestone
        try:
            key, data, errors = _rows.read_row(
                row._split, table.layout, row.line, None if section is None else section.id
            )
        except Exception as exc:  # pragma: no cover - a parser bug must not stop the sync of a whole file
            key, data, errors = None, None, [ParseError(row.line, 1, f"internal error: {exc!r}", ErrorCode.INTERNAL)]
        row.key = key
        row.errors = tuple(errors)
        if data is not None and key is not None:
            found = self._details.get(key)
            if found is not None and found[1].text is not None:
                data = dataclasses.replace(data, details=found[1].text)
        row.data = data
        self._index(row)

    def _set_cells(self, row: Row, split: _cells.SplitRow) -> None:
        self._unindex(row)
        row._split = _cells.split_row(split.join())
        row._raw = split.join() + row._eol
        self._read(row)

    def _detach(self, row: Row) -> None:
        self._unindex(row)
        row.table.rows.remove(row)

    def _place(self, row: Row, data: RowData, milestone_name: str | None) -> str | None:
        """Append *row* (rendered fresh from *data*) to the table of ``data.milestone``; return its key."""
        table = self._table_for(data.milestone, milestone_name)
        cells = [_cells.pad_like(None, _rows.cell_text(column, data)) for column in table.columns]
        content = _cells.SplitRow("", cells, True, "").join()
        row.table = table
        row.attached = True
        row._split = _cells.split_row(content)
        row._raw = content + row._eol
        table.rows.append(row)
        self._read(row)
        return row.key

    def _table_for(self, milestone: str | None, milestone_name: str | None) -> Table:
        heading: _Heading | None = None
        if milestone is not None:
            headings = [n for n in self._nodes if isinstance(n, _Heading)]
            heading = next((h for h in headings if h.milestone.id == milestone), None)
            if heading is None:
                heading = next((h for h in headings if h.milestone.name == milestone), None)
        found: Table | None = None
        for node in self._nodes:
            # a milestone without a section gets one: never the table of rows without a milestone (issue 17)
            if isinstance(node, Table) and node.section is heading and (heading is not None or milestone is None):
                found = node
        if found is not None:
            return found
        table = self._new_table(heading)
        if heading is not None:
            # end of that section: before the next heading or Details section
            start = self._nodes.index(heading) + 1
            index = next(
                (i for i in range(start, len(self._nodes)) if isinstance(self._nodes[i], _Heading | _Details)),
                len(self._nodes),
            )
            self._insert_block(index, [table])
        elif milestone is not None:
            text = milestone_heading(milestone, milestone_name)
            heading = _Heading(f"## {text}{self.eol}", text, 0, MilestoneRef(milestone, milestone_name or milestone))
            table.section = heading
            index = next((i for i, n in enumerate(self._nodes) if isinstance(n, _Details)), len(self._nodes))
            self._insert_block(index, [heading, _Text(self.eol), table])
        else:
            index = next((i for i, n in enumerate(self._nodes) if isinstance(n, _Heading | _Details)), len(self._nodes))
            self._insert_block(index, [table])
        return table

    def _new_table(self, section: _Heading | None) -> Table:
        template = next((n for n in self._nodes if isinstance(n, Table)), None)
        if template is not None:
            header, separator = _content(template.header), _content(template.separator)
        else:
            header = "| " + " | ".join(_cells.DEFAULT_COLUMNS) + " |"
            separator = "| " + " | ".join("---" for _ in _cells.DEFAULT_COLUMNS) + " |"
        columns, _ = _cells.columns_from_headers(_cells.split_row(header).cells)
        table = Table(header + self.eol, separator + self.eol, columns, 0)
        table.section = section
        return table

    def _insert_block(self, index: int, block: list[_Node]) -> None:
        """Insert *block* at *index* with a blank line on each side (unless one is already there)."""
        if index > 0 and not _is_blank(self._nodes[index - 1].last_line()):
            block.insert(0, _Text(self.eol))
        if index < len(self._nodes) and not _is_blank(self._nodes[index].first_line()):
            block.append(_Text(self.eol))
        self._nodes[index:index] = block

    def _details_section(self) -> _Details:
        for node in reversed(self._nodes):
            if isinstance(node, _Details):
                return node
        section = _Details(f"## Details{self.eol}", [], [])
        self._insert_block(len(self._nodes), [section])
        return section

    def _replace_body(self, section: _Details, entry: _DetailsEntry, lines: list[str]) -> None:
        body = entry.body
        content = [i for i, raw in enumerate(body) if raw.strip()]
        if content:
            entry.body = body[: content[0]] + lines + body[content[-1] + 1 :]
        else:
            entry.body = lines + body
            last = section.entries[-1] is entry and self._nodes[-1] is section
            if not body and not last:
                entry.body.append(self.eol)
        entry.refresh()
