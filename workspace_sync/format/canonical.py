"""``render_document``: a fresh, canonical TASKS.md built from data (used when no file exists yet)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from workspace_sync.format import cells as _cells
from workspace_sync.format import rows as _rows
from workspace_sync.format.document import (
    escape_details_line,
    milestone_heading,
    normalise_details,
    project_marker_line,
)
from workspace_sync.format.model import RowData

__all__ = ["render_document"]


class MilestoneLike(Protocol):
    """Anything with a milestone ``id`` and ``name`` (``models.Milestone``, ``MilestoneRef``)."""

    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...


def _usable_extra_name(name: str) -> bool:
    """An extra column name that reads back as itself and as an unknown column."""
    return (
        bool(name)
        and name == name.strip()
        and not any(c in name for c in "|\n\r")
        and _cells.normalise_header(name) not in _cells.FIELD_ALIASES
    )


def _columns(rows: Sequence[RowData], strict_coord: bool) -> list[_cells.Column]:
    if strict_coord:
        return [_cells.Column(h, _cells.FIELD_ALIASES.get(h, "extra")) for h in _cells.COORD_COLUMNS]
    headers = ["id", "status", "description", "agent", "priority"]
    if any(r.role for r in rows):
        headers.append("role")
    headers.append("depends_on")
    if any(r.labels for r in rows):
        headers.append("labels")
    columns = [_cells.Column(h, _cells.FIELD_ALIASES[h]) for h in headers]
    extras: dict[str, None] = {}
    for row in rows:
        for name in row.extra:
            if name not in extras and _usable_extra_name(name):
                extras[name] = None
    columns.extend(_cells.Column(name, "extra") for name in extras)
    columns.append(_cells.Column("notes", "notes"))
    return columns


def _coord_view(row: RowData) -> RowData:
    """Coord's issue/branch/estimate columns read ``extra`` case-insensitively."""
    lowered = {name.lower(): value for name, value in row.extra.items()}
    extra = {name: row.extra.get(name, lowered.get(name, "")) for name in ("issue", "branch", "estimate")}
    return RowData(
        key=row.key,
        status=row.status,
        title=row.title,
        assignee=row.assignee,
        depends_on=row.depends_on,
        notes=row.notes,
        extra={k: v for k, v in extra.items() if v},
    )


def _table(columns: Sequence[_cells.Column], rows: Sequence[RowData], strict_coord: bool) -> list[str]:
    lines = [
        "| " + " | ".join(_cells.escape_cell(c.name) for c in columns) + " |",
        "| " + " | ".join("---" for _ in columns) + " |",
    ]
    for row in rows:
        data = _coord_view(row) if strict_coord else row
        lines.append("| " + " | ".join(_rows.cell_text(c, data) for c in columns) + " |")
    return lines


def render_document(
    project_slug: str,
    mission_id: str,
    mission_name: str,
    milestones: Sequence[MilestoneLike],
    rows: Sequence[RowData],
    details: Mapping[str, str] | None = None,
    strict_coord: bool = False,
) -> str:
    """Render a canonical TASKS.md from data.

    Layout: ``# Tasks — <mission name>``, the marker line, rows without a milestone in a table before any
    section, then one ``## Milestone <id> — <name>`` section per milestone (given ones first, in order, even
    when empty; then milestones only rows name), then ``## Details`` with a ``### KEY`` per details text
    (``row.details`` first, then *details*). Columns: ``id | status | description | agent | priority |
    depends_on | notes``, plus ``role``/``labels`` when any row has one and every extra column (before
    ``notes``). ``strict_coord=True`` writes exactly coord's nine columns instead (``issue``, ``branch``,
    ``estimate`` come from ``extra``; priority, role, labels and other extras are left out).

    ``parse(render_document(...))`` gives back the rows (grouped by milestone) as long as their values are
    single-line, stripped, not ``-``/``—``, and their milestone ids have no spaces.
    """
    columns = _columns(rows, strict_coord)
    order: dict[str | None, str | None] = {}
    for milestone in milestones:
        order.setdefault(milestone.id, milestone.name)
    groups: dict[str | None, list[RowData]] = {None: []}
    groups.update({mid: [] for mid in order})
    for row in rows:
        if row.milestone not in groups:
            order[row.milestone] = row.milestone
            groups[row.milestone] = []
        groups[row.milestone].append(row)

    title = " ".join(mission_name.split()) or mission_id
    lines = [f"# Tasks — {title}", project_marker_line(project_slug, mission_id), ""]
    if groups[None]:
        lines.extend(_table(columns, groups[None], strict_coord))
        lines.append("")
    for mid, name in order.items():
        if mid is None:
            continue
        lines.extend([f"## {milestone_heading(mid, name)}", ""])
        lines.extend(_table(columns, groups[mid], strict_coord))
        lines.append("")

    texts: dict[str, str] = {}
    for group in groups.values():
        for row in group:
            text = normalise_details(row.details)
            if row.key is not None and text is not None:
                texts.setdefault(row.key, text)
    for key, value in (details or {}).items():
        text = normalise_details(value)
        if text is not None:
            texts.setdefault(key, text)
    usable = {key: text for key, text in texts.items() if key.split() == [key]}
    if usable:
        lines.extend(["## Details", ""])
        for key, text in usable.items():
            lines.append(f"### {key}")
            lines.extend(escape_details_line(line) for line in text.split("\n"))
            lines.append("")
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"
