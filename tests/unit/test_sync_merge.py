"""The three-way merge of workspace sync (pure functions; no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from queue_service.models import Task, TaskStatus
from workspace_sync import merge as m
from workspace_sync.format import RowData, parse

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def task(**fields: Any) -> Task:
    values: dict[str, Any] = {"project": "web", "key": "WEB-1", "seq": 1, "title": "T", "created_at": NOW}
    values["updated_at"] = NOW
    values.update(fields)
    return Task(**values)


BASE: dict[str, Any] = {"status": "not-started", "title": "T", "assignee": None, "depends_on": ["A"], "notes": "n"}


def test_untouched_fields_need_nothing() -> None:
    result = m.merge_row(BASE, BASE, BASE, agent_status=False)
    assert result.patch == {}
    assert result.conflicts == []
    assert not result.file_changed


def test_a_file_only_change_is_applied() -> None:
    result = m.merge_row(BASE, BASE, {**BASE, "status": "done"}, agent_status=False)
    assert result.patch == {"status": "done"}
    assert result.file_changed


def test_a_db_only_change_needs_no_patch() -> None:
    result = m.merge_row(BASE, {**BASE, "assignee": "bob"}, BASE, agent_status=False)
    assert result.patch == {}
    assert not result.file_changed


def test_different_fields_both_survive() -> None:
    result = m.merge_row(BASE, {**BASE, "assignee": "bob"}, {**BASE, "status": "done"}, agent_status=False)
    assert result.patch == {"status": "done"}
    assert result.conflicts == []


def test_the_same_change_on_both_sides_is_no_conflict() -> None:
    both = {**BASE, "title": "New"}
    result = m.merge_row(BASE, both, both, agent_status=False)
    assert result.patch == {}
    assert result.conflicts == []


@pytest.mark.parametrize(("agent", "kept"), [(True, "in-progress"), (False, "blocked")])
def test_status_conflict_agent_wins_else_file(agent: bool, kept: str) -> None:
    result = m.merge_row(BASE, {**BASE, "status": "in-progress"}, {**BASE, "status": "blocked"}, agent_status=agent)
    (conflict,) = result.conflicts
    assert conflict.kept == kept
    assert conflict.rule == ("agent-status" if agent else "file-wins")
    assert result.patch == ({} if agent else {"status": "blocked"})
    assert "file said blocked, service said in-progress" in conflict.describe()


def test_scalar_conflict_takes_the_file_value() -> None:
    result = m.merge_row(BASE, {**BASE, "title": "db"}, {**BASE, "title": "file"}, agent_status=True)
    (conflict,) = result.conflicts
    assert (conflict.db, conflict.file, conflict.kept) == ("db", "file", "file")
    assert result.patch == {"title": "file"}


def test_sets_merge_additions_and_removals() -> None:
    base = {**BASE, "depends_on": ["A", "B"]}
    result = m.merge_row(
        base, {**base, "depends_on": ["A", "B", "C"]}, {**base, "depends_on": ["B", "D"]}, agent_status=False
    )
    assert result.patch == {"depends_on": ["B", "C", "D"]}
    assert result.conflicts[0].rule == "set-merge"


def test_set_order_alone_is_no_change() -> None:
    result = m.merge_row(
        {**BASE, "depends_on": ["A", "B"]}, BASE, {**BASE, "depends_on": ["B", "A"]}, agent_status=False
    )
    assert not result.file_changed


@pytest.mark.parametrize(
    ("db", "file", "kept"),
    [("db note", "file note", "file note; db note"), ("abc", "abc more", "abc more"), (None, "file", "file")],
)
def test_notes_keep_both(db: str | None, file: str, kept: str) -> None:
    base = {**BASE, "notes": "old"}
    result = m.merge_row(base, {**base, "notes": db}, {**base, "notes": file}, agent_status=False)
    assert result.conflicts[0].kept == kept


def test_merge_sets_function() -> None:
    assert m.merge_sets(["a", "b"], ["a", "b", "c"], ["a"]) == ["a", "c"]
    assert m.merge_sets([], ["x"], ["y"]) == ["x", "y"]


def test_task_values_and_update_round_trip() -> None:
    t = task(extra={"notes": "hi", "issue": "#4"}, description="\nDetails\n", assignee="amy")
    values = m.task_values(t)
    assert values["notes"] == "hi"
    assert values["x:issue"] == "#4"
    assert values["details"] == "Details"
    update = m.update_from_values(t, {"notes": None, "x:branch": "feat/x", "details": None, "status": "done"})
    assert update == {"extra": {"issue": "#4", "branch": "feat/x"}, "description": "", "status": "done"}


def test_row_values_only_show_the_tables_columns() -> None:
    doc = parse("| id | status | description | issue |\n| --- | --- | --- | --- |\n| WEB-1 |  | Title | #9 |\n")
    row = next(doc.rows())
    assert row.data is not None
    table = row.table
    extra = [c.name for c in table.columns if c.field == "extra"]
    values = m.row_values(row.data, table.fields, extra)
    # an empty status cell says nothing; priority/assignee have no column
    assert values == {"title": "Title", "milestone": None, "details": None, "x:issue": "#9"}


def test_rowdata_from_task_hides_the_default_role() -> None:
    data = m.rowdata_from_task(task(role="default", status=TaskStatus.DONE, extra={"notes": "n", "x": ""}))
    assert data == RowData(
        key="WEB-1", status=TaskStatus.DONE, title="T", priority=data.priority, notes="n", extra={}, details=None
    )
