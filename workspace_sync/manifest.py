"""coord's ``docs/MISSION-MANIFEST.md``: the milestone table, read and edited without losing a byte.

Issue 18. The table is the one whose header cells are exactly
``| # | ID | Name | Status | Branch | Issue | Started | Completed |`` (names compared without case),
followed by a ``|---|`` separator line; its rows are the ``|`` lines after it. Everything else in
the file (title, goal, prose, other tables) is kept byte for byte, and so is every row whose
milestone did not change: :meth:`ManifestDocument.render` of a parsed text is that text.

Validation (a hostile file is bounded like TASKS.md): at most :data:`MAX_MANIFEST_BYTES` (checked by
the reader), at most :data:`MAX_ROWS` rows, eight cells per row, an ID of 1-64 characters, a name of
1-200, one line each, no control characters, a status word of :data:`STATUS_WORDS`, no ID twice. A
row that breaks a rule is kept as typed and reported (its line and why); it changes nothing.
"""

from __future__ import annotations

import dataclasses
import re

from queue_service.models import Milestone, MissionStatus

__all__ = [
    "EMPTY",
    "HEADER",
    "MAX_MANIFEST_BYTES",
    "MAX_ROWS",
    "STATUS_WORDS",
    "ManifestDocument",
    "ManifestRow",
    "cell",
    "parse_manifest",
    "render_manifest",
    "row_cells",
    "status_word",
    "table_text",
]

#: coord's milestone table header
HEADER = ("#", "ID", "Name", "Status", "Branch", "Issue", "Started", "Completed")
#: largest manifest read
MAX_MANIFEST_BYTES = 1024 * 1024
#: most milestone rows read (more are reported and ignored)
MAX_ROWS = 500
_SEPARATOR = "|---|----|------|--------|--------|-------|---------|-----------|"
_DASH = "—"
EMPTY = frozenset({"", "-", "—", "–"})
_SEP_CELL = re.compile(r":?-{1,}:?")
_SPLIT = re.compile(r"(?<!\\)\|")
#: milestone status words read (any case, ``_``/space ≡ ``-``) → ours; written as coord's task words
STATUS_WORDS: dict[str, MissionStatus] = {
    "not-started": MissionStatus.PENDING,
    "pending": MissionStatus.PENDING,
    "todo": MissionStatus.PENDING,
    "planned": MissionStatus.PENDING,
    "in-progress": MissionStatus.ACTIVE,
    "active": MissionStatus.ACTIVE,
    "running": MissionStatus.ACTIVE,
    "started": MissionStatus.ACTIVE,
    "done": MissionStatus.COMPLETED,
    "completed": MissionStatus.COMPLETED,
    "complete": MissionStatus.COMPLETED,
}
_WORD_OF = {MissionStatus.PENDING: "not-started", MissionStatus.ACTIVE: "in-progress", MissionStatus.COMPLETED: "done"}


def status_word(status: MissionStatus) -> str:
    """The word the manifest shows for *status* (coord's: ``not-started``, ``in-progress``, ``done``)."""
    return _WORD_OF[status]


def _split(line: str) -> list[str] | None:
    body = line.strip()
    if len(body) < 2 or not body.startswith("|") or not body.endswith("|") or body.endswith("\\|"):
        return None
    return [c.strip() for c in _SPLIT.split(body[1:-1])]


def cell(value: str | None) -> str:
    return _DASH if not value else value.replace("|", "\\|")


def _unescape(value: str) -> str:
    return value.replace("\\|", "|")


def _bad_text(value: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in value)


@dataclasses.dataclass
class ManifestRow:
    """One row of the milestone table.

    Attributes:
        index: its line in the document.
        cells: the cells as typed (stripped).
        id, name, status: what it says, when it is valid.
        error: why it cannot be applied (None when valid).
    """

    index: int
    cells: list[str]
    id: str | None = None
    name: str | None = None
    status: MissionStatus | None = None
    error: str | None = None

    @property
    def line(self) -> int:
        """1-based line number."""
        return self.index + 1


def _read_row(index: int, cells: list[str]) -> ManifestRow:
    row = ManifestRow(index, cells)
    if len(cells) != len(HEADER):
        row.error = f"a milestone row has {len(HEADER)} cells, this one has {len(cells)}"
        return row
    ms_id, name, word = _unescape(cells[1]), _unescape(cells[2]), cells[3]
    if ms_id in EMPTY or len(ms_id) > 64 or _bad_text(ms_id):
        row.error = f"milestone ID {ms_id[:80]!r}: 1-64 characters, no control characters"
    elif name in EMPTY or len(name) > 200 or _bad_text(name):
        row.error = f"milestone {ms_id}: the name must have 1-200 characters, no control characters"
    else:
        status = STATUS_WORDS.get(re.sub(r"[\s_]+", "-", word.strip().lower()))
        if status is None:
            row.error = f"milestone {ms_id}: unknown status {word[:40]!r}; use not-started, in-progress or done"
        else:
            row.id, row.name, row.status = ms_id, name, status
    return row


@dataclasses.dataclass
class ManifestDocument:
    """A parsed manifest: its lines (with their endings) and the milestone table, if it has one."""

    lines: list[str]
    header: int | None = None
    end: int = 0
    rows: list[ManifestRow] = dataclasses.field(default_factory=list)
    errors: list[tuple[int, str]] = dataclasses.field(default_factory=list)

    def render(self) -> str:
        """The text (the parsed text itself until a row is changed or added)."""
        return "".join(self.lines)

    def _newline(self, index: int) -> str:
        line = self.lines[index]
        return line[len(line.rstrip("\r\n")) :] or "\n"

    def set_cells(self, row: ManifestRow, cells: list[str]) -> None:
        """Rewrite one row with *cells* (already escaped); a no-op when they are the row's cells."""
        if cells == row.cells:
            return
        row.cells = cells
        self.lines[row.index] = "| " + " | ".join(cells) + " |" + self._newline(row.index)

    def append(self, cells: list[str]) -> None:
        """A new row at the end of the table."""
        if self.header is None:
            raise ValueError("the manifest has no milestone table")
        if self.end > 0 and not self.lines[self.end - 1].endswith("\n"):
            self.lines[self.end - 1] += "\n"
        self.lines.insert(self.end, "| " + " | ".join(cells) + " |\n")
        self.rows.append(ManifestRow(self.end, cells))
        self.end += 1


def parse_manifest(text: str) -> ManifestDocument:
    """Find the milestone table of *text* (see the module docstring); never fails."""
    doc = ManifestDocument(text.splitlines(keepends=True))
    lines = doc.lines
    for i in range(len(lines) - 1):
        cells = _split(lines[i])
        if cells is None or [c.lower() for c in cells] != [h.lower() for h in HEADER]:
            continue
        sep = _split(lines[i + 1])
        if sep is None or len(sep) != len(HEADER) or not all(_SEP_CELL.fullmatch(c) for c in sep):
            continue
        doc.header = i
        j = i + 2
        while j < len(lines) and lines[j].lstrip().startswith("|"):
            row_cells = _split(lines[j])
            if len(doc.rows) >= MAX_ROWS:
                doc.errors.append((j + 1, f"more than {MAX_ROWS} milestone rows: the rest are ignored"))
                j += 1
                continue
            row = _read_row(j, row_cells if row_cells is not None else [])
            if row_cells is None:
                row.error = "not a table row (it must start and end with |)"
            doc.rows.append(row)
            j += 1
        doc.end = j
        break
    seen: set[str] = set()
    for row in doc.rows:
        if row.id is None:
            continue
        if row.id in seen:
            row.error = f"milestone {row.id} appears twice in the table"
            row.id = None
        else:
            seen.add(row.id)
    return doc


def row_cells(position: int, milestone: Milestone) -> list[str]:
    """The cells of a new row for *milestone*."""
    return [str(position), cell(milestone.id), cell(milestone.name), status_word(milestone.status)] + [_DASH] * 4


def table_text(milestones: list[Milestone] | tuple[Milestone, ...]) -> str:
    """The milestone table on its own (header, separator, rows)."""
    out = ["| " + " | ".join(HEADER) + " |", _SEPARATOR]
    out.extend("| " + " | ".join(row_cells(i, ms)) + " |" for i, ms in enumerate(milestones, 1))
    return "\n".join(out) + "\n"


def render_manifest(name: str, milestones: list[Milestone] | tuple[Milestone, ...]) -> str:
    """A new manifest, laid out like coord's."""
    return f"# Mission manifest — {name}\n\n## Milestones\n\n" + table_text(milestones)
