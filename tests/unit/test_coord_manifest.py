"""coord's MISSION-MANIFEST.md milestone table: lossless parse, validation, edits; layout discovery (issue 18)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from queue_service.models import Milestone, Mission, MissionStatus
from queue_service.workspaces import Confined
from workspace_sync import manifest as mf
from workspace_sync.layout import coord_workspace_of, discover_default_file

TEXT = """\
# Mission manifest — Launch the web app

Goal: ship the first public version of the web app.

## Milestones

| # | ID | Name | Status | Branch | Issue | Started | Completed |
|---|----|------|--------|--------|-------|---------|-----------|
| 1 | M1 | Schema | done | feat/schema | #12 | 2026-03-02 | 2026-03-04 |
| 2 | M2 | Accounts | in-progress | feat/accounts | #15 | 2026-03-05 | — |
| 3 | M3 | Billing | not-started | — | — | — | — |
"""


def test_the_coord_sample_parses_and_renders_byte_for_byte() -> None:
    doc = mf.parse_manifest(TEXT)
    assert doc.render() == TEXT
    assert [(r.id, r.name, r.status, r.error) for r in doc.rows] == [
        ("M1", "Schema", MissionStatus.COMPLETED, None),
        ("M2", "Accounts", MissionStatus.ACTIVE, None),
        ("M3", "Billing", MissionStatus.PENDING, None),
    ]
    assert doc.rows[0].line == 9


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("|-# ID\n\r\\Mx—:")), max_size=300))
def test_any_text_renders_back_unchanged(text: str) -> None:
    assert mf.parse_manifest(text).render() == text


def test_only_coords_exact_header_is_the_milestone_table() -> None:
    other = TEXT.replace("| Started | Completed |", "| Started | Done |")
    assert mf.parse_manifest(other).header is None
    assert mf.parse_manifest(TEXT.replace("|---|----|", "| x |----|")).header is None
    assert mf.parse_manifest(TEXT.lower().replace("m1", "M1")).header is not None  # header case does not matter


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("| 4 | M4 | Ops | done |", "a milestone row has 8 cells, this one has 4"),
        ("| 4 | M4 | Ops | sideways | — | — | — | — |", "milestone M4: unknown status 'sideways'"),
        ("| 4 | — | Ops | done | — | — | — | — |", "milestone ID '—': 1-64 characters"),
        ("| 4 | " + "X" * 65 + " | Ops | done | — | — | — | — |", "1-64 characters"),
        ("| 4 | M4 | — | done | — | — | — | — |", "milestone M4: the name must have 1-200 characters"),
        ("| 4 | M4 | O\x07ps | done | — | — | — | — |", "no control characters"),
        ("| 4 | M1 | Again | done | — | — | — | — |", "milestone M1 appears twice in the table"),
        ("| 4 | M4 | Ops | done | — | — | — | — \\|", "not a table row"),
    ],
)
def test_bad_rows_are_reported_and_kept(row: str, message: str) -> None:
    text = TEXT + row + "\n"
    doc = mf.parse_manifest(text)
    bad = doc.rows[-1]
    assert bad.error is not None and message in bad.error
    assert bad.id is None and bad.line == 12
    assert doc.render() == text


def test_rows_beyond_the_cap_are_reported() -> None:
    rows = "".join(f"| {i} | M{i} | N{i} | done | — | — | — | — |\n" for i in range(mf.MAX_ROWS + 3))
    doc = mf.parse_manifest(TEXT.split("| 1 | M1")[0] + rows)
    assert len(doc.rows) == mf.MAX_ROWS
    assert len(doc.errors) == 3 and "more than 500" in doc.errors[0][1]


def test_edits_touch_only_their_rows() -> None:
    doc = mf.parse_manifest(TEXT + "\nAfter the table.\n")
    cells = list(doc.rows[2].cells)
    cells[3] = "in-progress"
    doc.set_cells(doc.rows[2], cells)
    doc.append(mf.row_cells(4, Milestone(id="M4", name="Pipes | and more", status=MissionStatus.PENDING)))
    out = doc.render()
    assert out.splitlines()[:10] == TEXT.splitlines()[:10]
    assert "| 3 | M3 | Billing | in-progress | — | — | — | — |\n" in out
    assert "| 4 | M4 | Pipes \\| and more | not-started | — | — | — | — |\n" in out
    assert out.endswith("|\n\nAfter the table.\n")
    again = mf.parse_manifest(out)
    assert [r.id for r in again.rows] == ["M1", "M2", "M3", "M4"] and again.rows[3].name == "Pipes | and more"


def test_a_fresh_manifest_has_coords_layout() -> None:
    now = datetime.now(UTC)
    mission = Mission(
        project="p",
        id="default",
        name="Launch",
        milestones=(Milestone(id="M1", name="Schema", status=MissionStatus.COMPLETED),),
        created_at=now,
        updated_at=now,
    )
    text = mf.render_manifest(mission.name, mission.milestones)
    assert text.startswith("# Mission manifest — Launch\n\n## Milestones\n\n")
    doc = mf.parse_manifest(text)
    assert [(r.id, r.status) for r in doc.rows] == [("M1", MissionStatus.COMPLETED)]


def _ws(tmp_path: Path) -> Confined:
    ws = tmp_path / "ws"
    ws.mkdir()
    return Confined.of(ws)


def test_discovery_prefers_the_root_file_and_finds_coords(tmp_path: Path) -> None:
    ws = _ws(tmp_path)
    root = ws.path
    assert discover_default_file(ws, []) == "TASKS.md"  # nothing there: ours
    (root / ".mosaic" / "orchestrator").mkdir(parents=True)
    assert discover_default_file(ws, []) == "docs/TASKS.md"  # coord's marker, no file yet
    (root / ".mosaic" / "orchestrator").rmdir()
    (root / "docs").mkdir()
    (root / "docs" / "MISSION-MANIFEST.md").write_text("x")
    assert discover_default_file(ws, []) == "docs/TASKS.md"
    (root / "docs" / "MISSION-MANIFEST.md").unlink()
    (root / "docs" / "TASKS.md").write_text("x")
    assert discover_default_file(ws, []) == "docs/TASKS.md"
    (root / "TASKS.md").write_text("y")
    assert discover_default_file(ws, []) == "TASKS.md"  # both: the root one, never two files
    (root / "TASKS.md").unlink()
    os.symlink("/etc/passwd", root / "TASKS.md")
    assert discover_default_file(ws, []) == "TASKS.md"  # a link counts as there (and the sync refuses it)


def test_discovery_leaves_docs_tasks_to_a_mission_that_names_it(tmp_path: Path) -> None:
    ws = _ws(tmp_path)
    (ws.path / "docs").mkdir()
    (ws.path / "docs" / "TASKS.md").write_text("x")
    now = datetime.now(UTC)
    other = Mission(project="p", id="launch", name="L", tasks_file="docs/TASKS.md", created_at=now, updated_at=now)
    assert discover_default_file(ws, [other]) == "TASKS.md"


def test_a_symlinked_docs_directory_is_not_followed(tmp_path: Path) -> None:
    ws = _ws(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "TASKS.md").write_text("x")
    os.symlink(elsewhere, ws.path / "docs")
    assert discover_default_file(ws, []) == "TASKS.md"


def test_coord_workspace_of() -> None:
    assert coord_workspace_of(Confined(Path("/r"), ("a", "docs", "TASKS.md"))) == Confined(Path("/r"), ("a",))
    assert coord_workspace_of(Confined(Path("/r"), ("a", "TASKS.md"))) is None
    assert coord_workspace_of(Confined(Path("/r/a"), ("docs", "TASKS.md"))) == Confined(Path("/r/a"), ())
