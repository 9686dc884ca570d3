"""Reading one task row (cells → :class:`RowData` or errors) and writing one row (data → cells)."""

from __future__ import annotations

from collections.abc import Sequence

from queue_service import exceptions, models
from workspace_sync.format import cells as _cells
from workspace_sync.format.model import ErrorCode, ParseError, RowData

__all__ = ["Layout", "cell_text", "read_row", "same_value"]

_new = object.__new__


def _column_at(split: _cells.SplitRow, index: int) -> int:
    """1-based column of the first non-space character of cell *index*."""
    cell = split.cells[index]
    if not cell.strip():
        return split.start(index) + 1
    return split.start(index) + (len(cell) - len(cell.lstrip())) + 1


def _read_key(text: str) -> tuple[str | None, str | None]:
    """(key, error message) for an id cell value."""
    if text in _cells.NONE_WORDS or text == "+":
        return None, None
    if len(text) > models.MAX_KEY_LEN or not models.KEY_RE.fullmatch(text):
        return None, (
            f"invalid task id {text!r}: use letters and digits joined by dashes (e.g. WEB-12), or + for a new task"
        )
    return text, None


class Layout:
    """What a table's header means for reading rows: columns, the id column, and a per-cell plan."""

    __slots__ = ("columns", "has_title", "key_index", "plan")

    def __init__(self, columns: Sequence[_cells.Column]) -> None:
        self.columns = tuple(columns)
        self.key_index = next((i for i, c in enumerate(columns) if c.field == "key"), None)
        self.has_title = any(c.field == "title" for c in columns)
        #: (cell index, field, header name) for every cell that feeds RowData apart from the id
        self.plan = tuple((i, c.field, c.name) for i, c in enumerate(columns) if c.field not in ("key", "ignored"))


def read_row(
    split: _cells.SplitRow,
    layout: Layout,
    line: int,
    milestone: str | None,
) -> tuple[str | None, RowData | None, list[ParseError]]:
    """Read a split row against its table's layout.

    Returns:
        ``(key, data, errors)``: *key* is the row's valid id even when other cells are broken (so a caller
        can tell which task a broken row belongs to); *data* is None whenever there are errors.
    """
    errors: list[ParseError] = []
    cells = split.cells
    key: str | None = None
    key_index = layout.key_index
    n_columns = len(layout.columns)
    if key_index is None:
        errors.append(ParseError(line, 1, "the table has no id column", ErrorCode.NO_ID_COLUMN))
    elif key_index < len(cells):
        key, problem = _read_key(_cells.unescape_cell(cells[key_index]))
        if problem:
            errors.append(ParseError(line, _column_at(split, key_index), problem, ErrorCode.INVALID_KEY))
    if len(cells) != n_columns:
        if len(cells) > n_columns:
            position = split.start(n_columns)
            hint = "; escape a literal pipe inside a cell as \\|"
        else:
            position = split.start(len(cells) - 1) + len(cells[-1]) + 1
            hint = ""
        message = f"row has {len(cells)} cells but the table has {n_columns} columns{hint}"
        errors.append(ParseError(line, position, message, ErrorCode.BAD_CELL_COUNT))
        return key, None, errors

    status: models.TaskStatus | None = None
    title: str | None = None
    assignee: str | None = None
    priority: models.Priority | None = None
    role: str | None = None
    depends_on: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    notes: str | None = None
    row_milestone: str | None = None
    extra: dict[str, str] = {}
    none_words = _cells.NONE_WORDS

    for index, field, name in layout.plan:
        # inlined unescape_cell: this loop runs once per cell of the file
        text = cells[index].strip()
        if "\\|" in text:
            text = text.replace("\\|", "|")
        if text in none_words:
            if field == "title":
                errors.append(
                    ParseError(line, _column_at(split, index), "the description is empty", ErrorCode.EMPTY_DESCRIPTION)
                )
            continue
        if field == "title":
            title = text
        elif field == "status":
            try:
                status = _cells.parse_status_word(text)
            except exceptions.InvalidStatus as exc:
                errors.append(ParseError(line, _column_at(split, index), exc.message, ErrorCode.INVALID_STATUS))
        elif field == "extra":
            extra[name] = text
        elif field == "assignee":
            assignee = None if text.lower() in _cells.AUTO_AGENT_WORDS else text
        elif field == "notes":
            notes = text
        elif field == "depends_on":
            depends_on = _cells.parse_list(text)
            for dep in depends_on:
                if len(dep) > models.MAX_KEY_LEN or not models.KEY_RE.fullmatch(dep):
                    message = f"invalid dependency {dep!r}: list task ids separated by commas or spaces"
                    errors.append(ParseError(line, _column_at(split, index), message, ErrorCode.INVALID_DEPENDENCY))
                elif dep == key:
                    message = f"task {key} cannot depend on itself"
                    errors.append(ParseError(line, _column_at(split, index), message, ErrorCode.SELF_DEPENDENCY))
        elif field == "priority":
            try:
                priority = _cells.parse_priority(text)
            except exceptions.ValidationError as exc:
                errors.append(ParseError(line, _column_at(split, index), exc.message, ErrorCode.INVALID_PRIORITY))
        elif field == "role":
            if models.ROLE_RE.fullmatch(text):
                role = text
            else:
                message = f"invalid role {text!r}: use letters, digits and . _ : / -, at most 128 characters"
                errors.append(ParseError(line, _column_at(split, index), message, ErrorCode.INVALID_ROLE))
        elif field == "labels":
            labels = _cells.parse_list(text)
            for label in labels:
                if not models.LABEL_RE.fullmatch(label):
                    message = f"invalid label {label!r}: no pipes, at most 64 characters"
                    errors.append(ParseError(line, _column_at(split, index), message, ErrorCode.INVALID_LABEL))
        elif field == "milestone":
            row_milestone = text
    if not layout.has_title and key is None and key_index is not None:
        message = "a new row needs a description, but the table has no description column"
        errors.append(ParseError(line, 1, message, ErrorCode.EMPTY_DESCRIPTION))
    if errors:
        return key, None, errors
    # the same as RowData(key=..., ...), several times faster: a frozen dataclass __init__ sets each field
    # through object.__setattr__, which dominates parsing a large file
    data = _new(RowData)
    data.__dict__.update(
        key=key,
        status=status,
        title=title,
        assignee=assignee,
        priority=priority,
        role=role,
        depends_on=depends_on,
        labels=labels,
        notes=notes,
        milestone=row_milestone if row_milestone is not None else milestone,
        extra=extra,
        details=None,
    )
    return key, data, errors


def cell_text(column: _cells.Column, data: RowData) -> str:
    """The escaped cell text for *column* from *data* (``—`` for no value)."""
    field = column.field
    value: str | None
    if field == "key":
        return "+" if data.key is None else _cells.escape_cell(data.key)
    if field == "status":
        value = None if data.status is None else data.status.value
    elif field == "priority":
        value = None if data.priority is None else data.priority.value
    elif field == "depends_on":
        value = ", ".join(data.depends_on)
    elif field == "labels":
        value = ", ".join(data.labels)
    elif field == "extra":
        value = data.extra.get(column.name)
    elif field == "ignored":
        value = None
    else:
        value = getattr(data, field)
    return _cells.escape_cell(value or "")


def same_value(column: _cells.Column, old: RowData, new: RowData) -> bool:
    """Whether *column* shows the same value for *old* and *new* (so its cell can keep its bytes)."""
    field = column.field
    if field == "ignored":
        return True
    if field == "extra":
        return old.extra.get(column.name) == new.extra.get(column.name)
    return bool(getattr(old, field) == getattr(new, field))
