"""Unit tests for the TASKS.md format layer (workspace_sync.format): parse, edits, render."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from queue_service import exceptions
from queue_service.models import Milestone, Priority, TaskStatus
from workspace_sync.format import (
    ErrorCode,
    MarkerKind,
    MilestoneRef,
    RowData,
    TasksDocument,
    parse,
    render,
    render_document,
)

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"

HEADER = (
    "| id | status | description | agent | priority | depends_on | notes |\n"
    "| --- | --- | --- | --- | --- | --- | --- |\n"
)


def sample(name: str) -> str:
    path = SAMPLES / name
    if not path.exists():
        pytest.skip(f"sample {path} not available")
    return path.read_text(encoding="utf-8")


def doc_of(*rows: str, before: str = "", after: str = "") -> TasksDocument:
    return parse(before + HEADER + "".join(r + "\n" for r in rows) + after)


def only_row(doc: TasksDocument):
    rows = list(doc.rows())
    assert len(rows) == 1
    return rows[0]


# ---------------------------------------------------------------------------------------------------------------
# The coord samples


def test_coord_sample_round_trips_byte_for_byte():
    text = sample("coord-TASKS.md")
    doc = parse(text)
    assert render(doc) == text
    assert doc.errors == ()
    assert doc.all_errors() == []


def test_coord_sample_rows():
    doc = parse(sample("coord-TASKS.md"))
    assert doc.title == "Tasks — Checkout Revamp"
    assert doc.mission_name == "Checkout Revamp"
    assert doc.project is None
    assert [m.id for m in doc.milestones()] == ["1", "2"]
    assert doc.milestones()[0] == MilestoneRef("1", "Cart service foundation")
    data = {d.key: d for d in doc.rows_data()}
    assert list(data) == [f"CR-01-0{i}" for i in range(1, 5)] + [f"CR-02-0{i}" for i in range(1, 5)]
    assert data["CR-01-04"].title == "Price rounding rules | currency edge cases"
    assert data["CR-01-04"].status is TaskStatus.NEEDS_QA
    assert data["CR-02-04"].depends_on == ("CR-02-01", "CR-02-03")
    assert data["CR-02-02"].depends_on == ("CR-02-01", "CR-01-04")
    assert data["CR-01-01"] == RowData(
        key="CR-01-01",
        status=TaskStatus.DONE,
        title="Write `docs/checkout/PRD.md` with goals and non-goals",
        assignee="sonnet",
        notes="merged",
        milestone="1",
        extra={"issue": "#41", "branch": "docs/checkout-prd", "estimate": "4K"},
    )
    # `—` cells are no value: no assignee, no issue in extra
    assert data["CR-02-01"].assignee is None
    assert "issue" not in data["CR-02-01"].extra
    assert data["CR-02-01"].notes is None
    assert data["CR-02-01"].milestone == "2"
    assert {d.status for d in data.values()} >= {TaskStatus.NOT_STARTED, TaskStatus.FAILED, TaskStatus.BLOCKED}


def test_wide_sample_round_trips_and_keeps_extra_columns():
    text = sample("coord-TASKS-wide.md")
    doc = parse(text)
    assert render(doc) == text
    assert doc.all_errors() == []
    rows = doc.rows_data()
    assert [r.key for r in rows] == ["GW-001", "GW-002", "GW-003"]
    assert all(r.milestone is None for r in rows)
    assert rows[0].extra == {
        "issue": "#7",
        "repo": "gateway",
        "branch": "fix/session",
        "blocks": "GW-002",
        "started_at": "2026-03-02",
        "completed_at": "2026-03-02",
        "estimate": "2K",
        "used": "1.8K",
    }
    assert rows[0].notes is None
    assert rows[2].notes == "needs a flaky-network harness"
    assert rows[1].depends_on == ("GW-001",)
    table = doc.tables()[0]
    assert [c.name for c in table.columns][:3] == ["id", "status", "description"]
    assert table.fields == {"key", "status", "title", "depends_on", "assignee", "notes"}


def test_samples_edit_one_row_keeps_every_other_byte():
    for name in ("coord-TASKS.md", "coord-TASKS-wide.md"):
        text = sample(name)
        doc = parse(text)
        row = next(iter(doc.rows()))
        assert row.data is not None
        doc.update_row(row, dataclasses.replace(row.data, status=TaskStatus.CANCELLED))
        out = render(doc)
        old_lines, new_lines = text.split("\n"), out.split("\n")
        changed = [i for i, (a, b) in enumerate(zip(old_lines, new_lines, strict=True)) if a != b]
        assert changed == [row.line - 1]
        assert "| cancelled |" in new_lines[row.line - 1]


# ---------------------------------------------------------------------------------------------------------------
# Columns, cells, values


def test_columns_in_any_order_with_aliases_and_case_insensitive_headers():
    doc = parse(
        "| Title | Depends On | ID | Assignee | STATUS | Deps-Extra |\n"
        "|---|---|---|---|---|---|\n"
        "| Write it | A-1 | A-2 | opus | WIP | yes |\n"
    )
    row = only_row(doc)
    assert row.errors == ()
    assert row.data == RowData(
        key="A-2",
        status=TaskStatus.IN_PROGRESS,
        title="Write it",
        assignee="opus",
        depends_on=("A-1",),
        extra={"Deps-Extra": "yes"},
    )


def test_deps_alias_and_labels_role_priority_milestone_columns():
    doc = parse(
        "| id | status | title | deps | labels | role | priority | milestone |\n"
        "| - | - | - | - | - | - | - | - |\n"
        "| A-1 | todo | x | B-1,B-2  B-3 | ui, backend frontend | web.dev | 1 | M9 |\n"
        "| A-2 | todo | y | — | — | — | p3 | — |\n"
    )
    first, second = doc.rows_data()
    assert first.depends_on == ("B-1", "B-2", "B-3")
    assert first.labels == ("ui", "backend", "frontend")
    assert first.role == "web.dev"
    assert first.priority is Priority.P1
    assert first.milestone == "M9"
    assert second.priority is Priority.P3
    assert (second.depends_on, second.labels, second.role, second.milestone) == ((), (), None, None)


@pytest.mark.parametrize(
    ("word", "status"),
    [
        ("todo", TaskStatus.NOT_STARTED),
        ("NOT_STARTED", TaskStatus.NOT_STARTED),
        ("not started", TaskStatus.NOT_STARTED),
        ("wip", TaskStatus.IN_PROGRESS),
        ("In_Progress", TaskStatus.IN_PROGRESS),
        ("x", TaskStatus.DONE),
        ("complete", TaskStatus.DONE),
        ("DONE", TaskStatus.DONE),
        ("review", TaskStatus.NEEDS_QA),
        ("on hold", TaskStatus.BLOCKED),
        ("canceled", TaskStatus.CANCELLED),
        ("failed", TaskStatus.FAILED),
    ],
)
def test_status_aliases(word, status):
    row = only_row(doc_of(f"| A-1 | {word} | t | — | — | — | — |"))
    assert row.data is not None
    assert row.data.status is status


def test_renderer_writes_canonical_status_word_only_when_status_changes():
    doc = doc_of("| A-1 | wip | t | — | — | — | — |", "| A-2 | x | u | — | — | — | — |")
    first, second = doc.rows()
    assert first.data is not None and second.data is not None
    doc.update_row(first, dataclasses.replace(first.data, status=TaskStatus.DONE))
    doc.update_row(second, dataclasses.replace(second.data, title="u2"))
    assert first.text == "| A-1 | done | t | — | — | — | — |"
    assert second.text == "| A-2 | x | u2 | — | — | — | — |"


@pytest.mark.parametrize("cell", ["—", "-", "", "   ", "–"])
def test_none_cells(cell):
    row = only_row(doc_of(f"| A-1 | todo | t |{cell}|{cell}|{cell}|{cell}|"))
    assert row.data == RowData(key="A-1", status=TaskStatus.NOT_STARTED, title="t")


def test_escaped_pipe_and_backslashes_in_cells():
    doc = doc_of(r"| A-1 | todo | a \| b \\| c\ | — | — | — | C:\dir\ |")
    data = only_row(doc).data
    assert data is not None
    assert data.title == "a | b \\| c\\"
    assert data.notes == "C:\\dir\\"
    assert render(doc) == doc_of(r"| A-1 | todo | a \| b \\| c\ | — | — | — | C:\dir\ |").render()


def test_escape_round_trips_through_update():
    doc = doc_of("| A-1 | todo | t | — | — | — | — |")
    row = only_row(doc)
    assert row.data is not None
    title = "a|b \\|c\\"
    doc.update_row(row, dataclasses.replace(row.data, title=title, notes="ends with \\"))
    assert parse(render(doc)).rows_data()[0].title == title
    assert parse(render(doc)).rows_data()[0].notes == "ends with \\"
    assert row.data.title == title


def test_rows_without_leading_indent_or_trailing_pipe():
    doc = parse("| id | status | description |\n|---|---|---|\n  | A-1 | done | no closing pipe\n|A-2|todo|tight|  \n")
    first, second = doc.rows_data()
    assert first.title == "no closing pipe"
    assert second.title == "tight"
    assert render(doc).endswith("|A-2|todo|tight|  \n")


# ---------------------------------------------------------------------------------------------------------------
# New rows


@pytest.mark.parametrize("id_cell", ["+", "", "—", "-"])
def test_new_rows(id_cell):
    doc = doc_of(f"| {id_cell} | | Write the login page | — | P2 | A-1 | `+` = new row |")
    row = only_row(doc)
    assert row.is_new
    assert doc.new_rows() == [row]
    assert row.data == RowData(
        title="Write the login page", priority=Priority.P2, depends_on=("A-1",), notes="`+` = new row"
    )


def test_set_key_fills_in_a_new_row_and_keeps_the_rest():
    doc = doc_of("|  +  | todo | Write it | — | P2 | — | — |")
    row = only_row(doc)
    doc.set_key(row, "WEB-7")
    assert row.text == "|  WEB-7 | todo | Write it | — | P2 | — | — |"
    assert row.key == "WEB-7"
    assert row.data is not None and row.data.key == "WEB-7"
    assert doc.row("WEB-7") is row
    assert not row.is_new
    doc.set_key(row, "WEB-8")
    assert doc.row("WEB-7") is None
    assert doc.row("WEB-8") is row


def test_set_key_refuses_a_key_already_used():
    doc = doc_of("| A-1 | todo | t | — | — | — | — |", "| + | todo | u | — | — | — | — |")
    with pytest.raises(exceptions.AlreadyExists):
        doc.set_key(doc.new_rows()[0], "A-1")


def test_new_row_in_a_table_without_description_column_is_an_error():
    doc = parse("| id | status |\n|---|---|\n| + | todo |\n| A-1 | done |\n")
    first, second = doc.rows()
    assert first.data is None
    assert first.errors[0].code is ErrorCode.EMPTY_DESCRIPTION
    assert second.data == RowData(key="A-1", status=TaskStatus.DONE)


# ---------------------------------------------------------------------------------------------------------------
# Errors


def test_unknown_status_error_has_line_and_column_and_row_is_kept():
    text = "# T\n\n" + HEADER + "| A-1 | finished! | t | — | — | — | — |\n| A-2 | todo | ok | — | — | — | — |\n"
    doc = parse(text)
    broken = doc.row("A-1")
    assert broken is not None
    assert broken.data is None
    assert broken.key == "A-1"  # still identifiable
    (error,) = broken.errors
    assert (error.line, error.column, error.code) == (5, 9, ErrorCode.INVALID_STATUS)
    assert "unknown status 'finished!'" in error.message
    assert str(error).startswith("5:9: unknown status")
    assert render(doc) == text
    assert [r.key for r in doc.rows_data()] == ["A-2"]
    assert doc.all_errors() == [error]


def test_too_many_cells_points_at_the_first_extra_pipe():
    doc = doc_of("| A-1 | todo | a | b | — | — | — | — |")
    (error,) = only_row(doc).errors
    assert error.code is ErrorCode.BAD_CELL_COUNT
    assert error.message == "row has 8 cells but the table has 7 columns; escape a literal pipe inside a cell as \\|"
    assert (error.line, error.column) == (3, 34)
    assert only_row(doc).key == "A-1"


def test_too_few_cells():
    doc = doc_of("| A-1 | todo | a |")
    (error,) = only_row(doc).errors
    assert error.code is ErrorCode.BAD_CELL_COUNT
    assert (error.line, error.column) == (3, 18)
    assert "3 cells but the table has 7 columns" in error.message


@pytest.mark.parametrize(
    ("row", "code", "column", "text"),
    [
        ("| A 1 | todo | t | — | — | — | — |", ErrorCode.INVALID_KEY, 3, "invalid task id 'A 1'"),
        ("| A-1 | todo | t | — | P7 | — | — |", ErrorCode.INVALID_PRIORITY, 24, "unknown priority 'P7'"),
        ("| A-1 | todo | t | — | — | B 1; | — |", ErrorCode.INVALID_DEPENDENCY, 28, "invalid dependency '1;'"),
        ("| A-1 | todo | t | — | — | A-1 | — |", ErrorCode.SELF_DEPENDENCY, 28, "cannot depend on itself"),
        ("| A-1 | todo |  | — | — | — | — |", ErrorCode.EMPTY_DESCRIPTION, 15, "the description is empty"),
    ],
)
def test_row_errors(row, code, column, text):
    doc = doc_of(row)
    errors = only_row(doc).errors
    assert errors[0].code is code
    assert errors[0].column == column
    assert errors[0].line == 3
    assert text in errors[0].message
    assert render(doc) == HEADER + row + "\n"


def test_invalid_role_and_label():
    doc = parse("| id | title | role | labels |\n|--|--|--|--|\n| A-1 | t | no way! | ok, b\\|ad |\n")
    codes = [e.code for e in only_row(doc).errors]
    assert codes == [ErrorCode.INVALID_ROLE, ErrorCode.INVALID_LABEL]


def test_duplicate_key_is_an_error_on_the_second_row():
    doc = doc_of("| A-1 | todo | t | — | — | — | — |", "| A-1 | done | u | — | — | — | — |")
    first, second = doc.rows()
    assert first.data is not None
    assert second.data is None
    assert second.errors[0].code is ErrorCode.DUPLICATE_KEY
    assert "first at line 3" in second.errors[0].message
    assert doc.row("A-1") is first


def test_header_without_separator_is_a_document_error():
    text = "# T\n\n| id | status | description |\n| A-1 | todo | t |\n"
    doc = parse(text)
    assert list(doc.rows()) == []
    (error,) = doc.errors
    assert (error.line, error.column, error.code) == (3, 1, ErrorCode.STRAY_TABLE_ROWS)
    assert render(doc) == text


def test_blank_line_inside_a_table_reports_the_stray_rows():
    doc = doc_of("| A-1 | todo | t | — | — | — | — |", after="\n| A-2 | todo | u | — | — | — | — |\n")
    assert [r.key for r in doc.rows()] == ["A-1"]
    assert [(e.line, e.code) for e in doc.errors] == [(5, ErrorCode.STRAY_TABLE_ROWS)]


def test_table_level_errors():
    doc = parse(
        "| id | title | description | status |\n|---|---|---|\n| A-1 | t | d | todo |\n"
        "\n| status | title |\n|---|---|\n| todo | x |\n"
    )
    codes = [(e.line, e.code) for e in doc.errors]
    assert codes == [
        (1, ErrorCode.DUPLICATE_COLUMN),
        (2, ErrorCode.SEPARATOR_MISMATCH),
        (5, ErrorCode.MISSING_ID_COLUMN),
    ]
    first, second = doc.rows()
    assert first.data is not None and first.data.title == "t"  # the duplicate column is ignored
    assert second.errors[0].code is ErrorCode.NO_ID_COLUMN


def test_foreign_tables_are_prose():
    text = "# T\n\n| name | value |\n|---|---|\n| a | b |\n\n" + HEADER + "| A-1 | todo | t | — | — | — | — |\n"
    doc = parse(text)
    assert len(doc.tables()) == 1
    assert doc.errors == ()
    assert render(doc) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n",
        "|",
        "||\n|-|",
        "| id |\n| --- |\n|",
        "| id |\n|---|\n| \\",
        "## \n### \n#",
        "## Details\n### \n###",
        "<!-- sync-error: x -->",
        "<!-- queue-service: -->\n<!-- queue-service: project=a -->",
        "\r\n\r",
        "| id | status |\r\n|---|---|\r\n| A-1 | todo |\r",
        "| id | id |\n|-|-|\n| a | b |",
        "| status |\n|:-:|\n| x |",
    ],
)
def test_odd_inputs_parse_and_round_trip(text):
    assert render(parse(text)) == text


# ---------------------------------------------------------------------------------------------------------------
# Sections and milestones


def test_milestone_headings():
    doc = parse(
        "| id | description |\n|-|-|\n| A-0 | top |\n"
        "## Milestone 1 — Cart\n| id | description |\n|-|-|\n| A-1 | t |\n"
        "## Milestone M-2: Pay\n| id | description |\n|-|-|\n| A-2 | t |\n"
        "## Backend work\n| id | description |\n|-|-|\n| A-3 | t |\n"
    )
    assert doc.milestones() == [
        MilestoneRef("1", "Cart"),
        MilestoneRef("M-2", "Pay"),
        MilestoneRef("Backend work", "Backend work"),
    ]
    assert [r.milestone for r in doc.rows_data()] == [None, "1", "M-2", "Backend work"]


def test_details_section():
    text = (
        HEADER
        + "| A-1 | todo | t | — | — | — | — |\n| A-2 | todo | u | — | — | — | — |\n"
        + "\n## Details\n\nintro text\n\n### A-1\n\nLong notes.\n\n- criterion\n\n### A-2 — extra words\nShort.\n"
        + "## After\n\nprose\n"
    )
    doc = parse(text)
    assert doc.details() == {"A-1": "Long notes.\n\n- criterion", "A-2": "Short."}
    assert doc.get_details("A-1") == "Long notes.\n\n- criterion"
    assert doc.row("A-1").data.details == "Long notes.\n\n- criterion"
    assert doc.milestones() == [MilestoneRef("After", "After")]
    assert render(doc) == text


def test_set_details_replaces_creates_and_removes():
    text = HEADER + "| A-1 | todo | t | — | — | — | — |\n| A-2 | todo | u | — | — | — | — |\n"
    doc = parse(text)
    doc.set_details("A-1", "First\n## looks like a heading")
    assert render(doc) == text + "\n## Details\n\n### A-1\nFirst\n\\## looks like a heading\n"
    doc.set_details("A-2", "Second")
    doc.set_details("A-1", "Changed")
    assert render(doc) == text + "\n## Details\n\n### A-1\nChanged\n\n### A-2\nSecond\n"
    reparsed = parse(render(doc))
    assert reparsed.details() == {"A-1": "Changed", "A-2": "Second"}
    assert doc.row("A-2").data.details == "Second"
    doc.set_details("A-1", None)
    assert render(doc) == text + "\n## Details\n\n### A-2\nSecond\n"
    assert doc.row("A-1").data.details is None


def test_set_details_keeps_other_subsections_bytes():
    text = "## Details\n\n### A-1\n  indented  \n\n\n### A-2\nx\n"
    doc = parse(text)
    doc.set_details("A-2", "y")
    assert render(doc) == "## Details\n\n### A-1\n  indented  \n\n\n### A-2\ny\n"
    doc.set_details("A-2", "y")
    assert render(doc) == "## Details\n\n### A-1\n  indented  \n\n\n### A-2\ny\n"


def test_duplicate_details_is_a_document_error():
    doc = parse("## Details\n### A-1\none\n### A-1\ntwo\n")
    assert doc.details() == {"A-1": "one"}
    assert [(e.line, e.code) for e in doc.errors] == [(4, ErrorCode.DUPLICATE_DETAILS)]


def test_update_row_sets_details():
    doc = doc_of("| A-1 | todo | t | — | — | — | — |")
    row = only_row(doc)
    doc.update_row(row, dataclasses.replace(row.data, details="Acceptance: it works"))
    assert parse(render(doc)).rows_data()[0].details == "Acceptance: it works"
    assert row.data.details == "Acceptance: it works"


# ---------------------------------------------------------------------------------------------------------------
# Markers


def test_project_marker_line():
    doc = parse(
        "# Tasks — Web\n<!-- queue-service: project=web mission=default · edit rows freely; keep this line -->\n"
    )
    assert (doc.project, doc.mission, doc.mission_name) == ("web", "default", "Web")


def test_set_project_marker_goes_below_the_title_and_replaces():
    text = sample("coord-TASKS.md")
    doc = parse(text)
    doc.set_project_marker("checkout", "default")
    out = render(doc)
    assert out.split("\n")[:3] == [
        "# Tasks — Checkout Revamp",
        "<!-- queue-service: project=checkout mission=default · edit rows freely; keep this line -->",
        "",
    ]
    doc2 = parse(out)
    assert (doc2.project, doc2.mission) == ("checkout", "default")
    doc2.set_project_marker("checkout", "default")
    assert render(doc2) == out
    doc2.set_project_marker("checkout", "m2")
    assert parse(render(doc2)).mission == "m2"
    empty = parse("")
    empty.set_project_marker("p", "m")
    assert render(empty).startswith("<!-- queue-service: project=p mission=m")


def test_markers_above_rows_are_recognised_and_round_trip():
    text = (
        HEADER
        + "<!-- sync-error: unknown dependency X-9 -->\n| A-1 | todo | t | — | — | X-9 | — |\n"
        + "| A-2 | todo | u | — | — | — | — |\n<!-- sync-conflict: left over -->\n\nprose\n<!-- sync-error: stray -->\n"
    )
    doc = parse(text)
    first, second = doc.rows()
    assert [(m.kind, m.message, m.line) for m in first.markers] == [(MarkerKind.ERROR, "unknown dependency X-9", 3)]
    assert second.markers == []
    assert doc.tables()[0].orphans[0].message == "left over"
    assert render(doc) == text
    doc.clear_all_markers()
    assert render(doc) == HEADER + "| A-1 | todo | t | — | — | X-9 | — |\n| A-2 | todo | u | — | — | — | — |\n\nprose\n"


def test_set_and_clear_markers():
    doc = doc_of("| A-1 | todo | t | — | — | — | — |")
    row = only_row(doc)
    doc.set_marker(row, MarkerKind.CONFLICT, "status: kept done\n(agent) --> file said todo")
    doc.set_marker(row, "error", "unknown dependency")
    expected = (
        HEADER + "<!-- sync-conflict: status: kept done (agent) -> file said todo -->\n"
        "<!-- sync-error: unknown dependency -->\n| A-1 | todo | t | — | — | — | — |\n"
    )
    assert render(doc) == expected
    again = parse(expected)
    assert [m.kind for m in only_row(again).markers] == [MarkerKind.CONFLICT, MarkerKind.ERROR]
    doc.clear_markers(row, MarkerKind.CONFLICT)
    assert [m.kind for m in row.markers] == [MarkerKind.ERROR]
    doc.clear_markers(row)
    assert render(doc) == HEADER + "| A-1 | todo | t | — | — | — | — |\n"


def test_annotate_errors():
    text = HEADER + "<!-- sync-error: old -->\n| A-1 | todo | t | — | — | — | — |\n| A-2 | nope | u | — | — | — | — |\n"
    doc = parse(text)
    doc.annotate_errors()
    out = render(doc)
    assert "<!-- sync-error: old -->" not in out
    assert "<!-- sync-error: unknown status 'nope'" in out
    reparsed = parse(out)
    assert reparsed.row("A-2").markers[0].kind is MarkerKind.ERROR
    assert reparsed.row("A-2").errors  # the marker is not what makes the row parse


# ---------------------------------------------------------------------------------------------------------------
# Row edits


def test_update_row_rewrites_only_changed_cells_and_keeps_padding():
    text = (
        "| id    | status      | description   | agent | priority | depends_on | notes |\n"
        "|-------|-------------|---------------|-------|----------|------------|-------|\n"
        "| A-1   | todo        | First         | —     | P2       | —          |       |\n"
        "| A-2   | todo        | Second        | —     | P2       | A-1        |       |\n"
    )
    doc = parse(text)
    row = doc.row("A-2")
    new = dataclasses.replace(row.data, status=TaskStatus.IN_PROGRESS, assignee="codex", notes="n")
    doc.update_row(row, new)
    assert row.text == "| A-2   | in-progress | Second        | codex | P2       | A-1        | n     |"
    assert row.data == new
    assert render(doc).split("\n")[2] == text.split("\n")[2]
    doc.update_row(row, new)  # no change: same bytes
    assert row.text == "| A-2   | in-progress | Second        | codex | P2       | A-1        | n     |"
    doc.update_row(row, dataclasses.replace(new, title="A much longer description than before"))
    assert row.text == (
        "| A-2   | in-progress | A much longer description than before | codex | P2       | A-1        | n     |"
    )


def test_update_row_unchanged_data_keeps_alias_spellings():
    text = HEADER + "| A-1 | WIP | t | — | p1 | A-0 A-2 | — |\n"
    doc = parse(text)
    row = only_row(doc)
    doc.update_row(row, row.data)
    assert render(doc) == text


def test_update_row_fields_without_a_column_are_not_written():
    doc = parse("| id | status | description |\n|-|-|-|\n| A-1 | todo | t |\n")
    row = only_row(doc)
    doc.update_row(row, dataclasses.replace(row.data, priority=Priority.P0, extra={"issue": "#4"}))
    assert row.text == "| A-1 | todo | t |"
    assert row.data == RowData(key="A-1", status=TaskStatus.NOT_STARTED, title="t")


def test_update_row_moves_a_row_to_its_new_milestone():
    text = (
        "# T\n\n## Milestone 1 — A\n\n"
        + HEADER
        + "| A-1 | todo | t | — | — | — | — |\n| A-2 | todo | u | — | — | — | — |\n"
        + "\n## Milestone 2 — B\n\n"
        + HEADER
        + "| B-1 | todo | v | — | — | — | — |\n"
    )
    doc = parse(text)
    row = doc.row("A-1")
    doc.set_marker(row, MarkerKind.CONFLICT, "moved")
    doc.update_row(row, dataclasses.replace(row.data, milestone="2"))
    reparsed = parse(render(doc))
    assert [(r.key, r.milestone) for r in reparsed.rows_data()] == [("A-2", "1"), ("B-1", "2"), ("A-1", "2")]
    assert reparsed.row("A-1").markers[0].message == "moved"
    assert row.data.milestone == "2"


def test_update_a_broken_row_rewrites_it_from_data():
    doc = doc_of("| A-1 | todo | oops | extra | — | — | — | — |")
    row = only_row(doc)
    assert row.data is None
    doc.update_row(row, RowData(key="A-1", status=TaskStatus.DONE, title="fixed"))
    assert row.errors == ()
    assert row.text == "| A-1 | done | fixed | — | — | — | — |"


def test_append_row_to_existing_new_and_top_sections():
    text = sample("coord-TASKS.md")
    doc = parse(text)
    doc.append_row(RowData(title="Another cart task", status=TaskStatus.NOT_STARTED, milestone="1"))
    added = doc.append_row(
        RowData(key="CR-03-01", title="Launch", milestone="3", extra={"issue": "#60"}, details="Go live"),
        milestone_name="Launch",
    )
    doc.append_row(RowData(key="CR-00-01", title="Top level"))
    assert added.line == 0
    out = render(doc)
    old_lines = iter(out.split("\n"))
    assert all(line in old_lines for line in text.split("\n"))  # every old line is still there, in order
    reparsed = parse(out)
    assert reparsed.all_errors() == []
    assert reparsed.milestones()[-1] == MilestoneRef("3", "Launch")
    launch = reparsed.row("CR-03-01").data
    assert launch.extra == {"issue": "#60"}
    assert launch.details == "Go live"
    assert reparsed.row("CR-00-01").data.milestone is None
    assert [r.title for r in reparsed.rows_data() if r.milestone == "1"][-1] == "Another cart task"
    # the new section uses the document's columns
    assert reparsed.tables()[-1].header == reparsed.tables()[1].header
    assert "\n\n## Milestone 3 — Launch\n\n| id | status | description | issue |" in out
    assert out.endswith("\n## Details\n\n### CR-03-01\nGo live\n")


def test_append_row_to_an_empty_document_uses_default_columns():
    doc = parse("")
    doc.append_row(RowData(key="W-1", title="t", status=TaskStatus.DONE, priority=Priority.P1, milestone="1"))
    assert render(doc) == (
        "## Milestone 1 — 1\n\n".replace("Milestone 1 — 1", "1") + HEADER + "| W-1 | done | t | — | P1 | — | — |\n"
    )


def test_append_row_before_details_and_refuses_duplicates():
    doc = parse("# T\n\n## Details\n\n### A-1\nx\n")
    doc.append_row(RowData(key="A-1", title="t"))
    assert render(doc) == "# T\n\n" + HEADER + "| A-1 | — | t | — | — | — | — |\n\n## Details\n\n### A-1\nx\n"
    assert doc.row("A-1").data.details == "x"
    with pytest.raises(exceptions.AlreadyExists):
        doc.append_row(RowData(key="A-1", title="again"))


def test_remove_row():
    doc = doc_of("| A-1 | todo | t | — | — | — | — |", "<!-- sync-error: x -->", "| A-2 | todo | u | — | — | — | — |")
    row = doc.row("A-2")
    doc.remove_row(row)
    assert render(doc) == HEADER + "| A-1 | todo | t | — | — | — | — |\n"
    assert doc.row("A-2") is None
    with pytest.raises(exceptions.ValidationError):
        doc.update_row(row, RowData(key="A-2", title="u"))


def test_crlf_and_missing_final_newline_are_kept_through_edits():
    text = "# T\r\n\r\n" + HEADER.replace("\n", "\r\n") + "| A-1 | todo | t | — | — | — | — |"
    doc = parse(text)
    assert render(doc) == text
    row = only_row(doc)
    doc.update_row(row, dataclasses.replace(row.data, status=TaskStatus.DONE))
    assert render(doc) == text.replace("todo", "done")
    doc.append_row(RowData(key="A-2", title="u"))
    assert render(doc) == text.replace("todo", "done") + "\r\n| A-2 | — | u | — | — | — | — |"


# ---------------------------------------------------------------------------------------------------------------
# Fresh files


def test_render_document_canonical_layout():
    text = render_document(
        "web",
        "default",
        "Web app",
        [Milestone(id="1", name="Schema"), MilestoneRef("2", "Login")],
        [
            RowData(key="WEB-1", status=TaskStatus.DONE, title="Design the schema", assignee="sonnet",
                    priority=Priority.P1, milestone="1", details="Tables:\n- users"),
            RowData(status=TaskStatus.NOT_STARTED, title="Write the login page", priority=Priority.P2,
                    depends_on=("WEB-1",), notes="new | row", milestone="2"),
        ],
        {"WEB-9": "orphan details"},
    )  # fmt: skip
    assert text == (
        "# Tasks — Web app\n"
        "<!-- queue-service: project=web mission=default · edit rows freely; keep this line -->\n"
        "\n"
        "## Milestone 1 — Schema\n"
        "\n" + HEADER + "| WEB-1 | done | Design the schema | sonnet | P1 | — | — |\n"
        "\n"
        "## Milestone 2 — Login\n"
        "\n" + HEADER + "| + | not-started | Write the login page | — | P2 | WEB-1 | new \\| row |\n"
        "\n"
        "## Details\n"
        "\n"
        "### WEB-1\n"
        "Tables:\n"
        "- users\n"
        "\n"
        "### WEB-9\n"
        "orphan details\n"
    )
    doc = parse(text)
    assert doc.all_errors() == []
    assert (doc.project, doc.mission, doc.mission_name) == ("web", "default", "Web app")
    assert doc.details() == {"WEB-1": "Tables:\n- users", "WEB-9": "orphan details"}


def test_render_document_optional_columns():
    text = render_document(
        "p",
        "m",
        "M",
        [],
        [RowData(key="A-1", title="t", role="ops", labels=("a", "b"), extra={"issue": "#1", "Used By": "x"})],
    )
    assert (
        "| id | status | description | agent | priority | role | depends_on | labels | issue | Used By | notes |"
        in text
    )
    (data,) = parse(text).rows_data()
    assert (data.role, data.labels, data.extra) == ("ops", ("a", "b"), {"issue": "#1", "Used By": "x"})


def test_render_document_strict_coord():
    rows = [
        RowData(key="CR-1", status=TaskStatus.DONE, title="t", assignee="codex", priority=Priority.P0,
                depends_on=("CR-0",), notes="n", extra={"Issue": "#1", "branch": "b", "estimate": "4K", "x": "y"},
                milestone="1"),
    ]  # fmt: skip
    text = render_document("p", "m", "Checkout", [MilestoneRef("1", "Cart")], rows, strict_coord=True)
    assert "| id | status | description | issue | agent | branch | depends_on | estimate | notes |\n" in text
    assert "| CR-1 | done | t | #1 | codex | b | CR-0 | 4K | n |\n" in text
    (data,) = parse(text).rows_data()
    assert data.extra == {"issue": "#1", "branch": "b", "estimate": "4K"}
    assert data.priority is None


def test_render_document_round_trips_through_parse():
    rows = [
        RowData(key=None, title="top"),
        RowData(key="A-1", status=TaskStatus.BLOCKED, title="x", milestone="M-1", depends_on=("A-0", "A-2")),
        RowData(key="A-2", title="y", milestone="Backend", labels=("l1",), details="d"),
    ]
    text = render_document("p", "m", "M", [MilestoneRef("M-1", "First")], rows)
    doc = parse(text)
    assert doc.rows_data() == rows
    assert render(doc) == text
