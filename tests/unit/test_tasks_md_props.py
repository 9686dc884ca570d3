"""Property tests (hypothesis) for the TASKS.md format: lossless round trips, data round trips, robustness."""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from queue_service.models import Priority, TaskStatus
from workspace_sync.format import MilestoneRef, RowData, normalise_details, parse, render, render_document

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NONE_WORDS = {"", "-", "—", "–"}

# -- strategies -------------------------------------------------------------------------------------------------

keys = st.builds(
    lambda prefix, n, sub: f"{prefix}-{n}" + (f"-{sub:02d}" if sub is not None else ""),
    st.sampled_from(["A", "CR", "WEB", "GW"]),
    st.integers(0, 999),
    st.none() | st.integers(0, 99),
)
# any single-line text, pipes, backslashes and unicode included; cells are stripped and `-`/`—` mean "none"
cell_text = (
    st.lists(
        st.one_of(
            st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"),
            st.sampled_from(["|", "\\", "\\|", "—", " ", "`", "<!--", "é", "漢"]),
        ),
        min_size=1,
        max_size=30,
    )
    .map("".join)
    .map(str.strip)
    .filter(lambda t: t not in NONE_WORDS)
)
roles = st.builds(str.__add__, st.sampled_from("aZ09"), st.text("abcXYZ019_.:/-", max_size=12))
labels = st.text(
    st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc"), blacklist_characters=",|"),
    min_size=1,
    max_size=8,
).filter(lambda t: t not in NONE_WORDS and t.split() == [t])
milestone_ids = st.sampled_from(["1", "2", "M-3", "backend"])
extra_names = st.sampled_from(["issue", "branch", "estimate", "repo", "Used By", "started_at"])
details_text = st.lists(
    st.one_of(
        st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), max_size=20),
        st.sampled_from(["## not a heading", "### KEY", "\\## x", "", "| a | b |", "<!-- sync-error: x -->"]),
    ),
    min_size=1,
    max_size=5,
).map("\n".join)


@st.composite
def row_data(draw: st.DrawFn, key: str | None) -> RowData:
    details = normalise_details(draw(st.none() | details_text)) if key is not None else None
    return RowData(
        key=key,
        status=draw(st.none() | st.sampled_from(TaskStatus)),
        title=draw(cell_text),
        assignee=draw(st.none() | cell_text),
        priority=draw(st.none() | st.sampled_from(Priority)),
        role=draw(st.none() | roles),
        depends_on=tuple(dict.fromkeys(d for d in draw(st.lists(keys, max_size=3)) if d != key)),
        labels=tuple(dict.fromkeys(draw(st.lists(labels, max_size=3)))),
        notes=draw(st.none() | cell_text),
        milestone=draw(st.none() | milestone_ids),
        extra=draw(st.dictionaries(extra_names, cell_text, max_size=3)),
        details=details,
    )


@st.composite
def row_lists(draw: st.DrawFn, max_size: int = 8) -> list[RowData]:
    row_keys = draw(st.lists(keys, unique=True, max_size=max_size))
    news = draw(st.integers(0, 2))
    return [draw(row_data(k)) for k in [*row_keys, *([None] * news)]]


milestone_lists = st.lists(
    st.tuples(milestone_ids, st.sampled_from(["Cart", "Payment flow", "Launch — day 1"])),
    unique_by=lambda m: m[0],
    max_size=3,
).map(lambda ms: [MilestoneRef(i, n) for i, n in ms])


def grouped(rows: list[RowData], milestones: list[MilestoneRef]) -> list[RowData]:
    """The order render_document writes rows in: no milestone first, then by milestone."""
    order: dict[str | None, int] = {None: -1}
    for m in milestones:
        order.setdefault(m.id, len(order))
    for r in rows:
        order.setdefault(r.milestone, len(order))
    return sorted(rows, key=lambda r: order[r.milestone])


# Markdown-ish text, built from the fragments the parser cares about, to reach its table/section paths.
fragments = st.sampled_from(
    [
        "| id | status | description | agent | priority | depends_on | notes |",
        "| id | title | deps | labels | role | milestone | x |",
        "| status |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        "|---|",
        "| A-1 | todo | t | — | P1 | A-2 | n |",
        "| + | wip | new \\| row | — | 9 | A 1 | — |",
        "| A-1 | x |",
        "|",
        "||",
        "| \\",
        "## Milestone 1 — Cart",
        "## Details",
        "##",
        "### A-1",
        "###",
        "# Tasks — X",
        "<!-- queue-service: project=p mission=m -->",
        "<!-- sync-error: broken -->",
        "<!-- sync-conflict: both -->",
        "> quote",
        "",
        " ",
        "text",
        "\\## escaped",
    ]
)
markdownish = st.lists(st.one_of(fragments, st.text(max_size=10)), max_size=25).flatmap(
    lambda lines: st.sampled_from(["\n", "\r\n"]).flatmap(
        lambda eol: st.booleans().map(lambda final: eol.join(lines) + (eol if final and lines else ""))
    )
)


# -- properties -------------------------------------------------------------------------------------------------


@SETTINGS
@given(st.text())
def test_any_text_parses_and_renders_back_exactly(text):
    doc = parse(text)
    assert render(doc) == text
    doc.all_errors()
    doc.rows_data()


@SETTINGS
@given(markdownish)
def test_markdownish_text_parses_and_renders_back_exactly(text):
    doc = parse(text)
    assert render(doc) == text
    for error in doc.all_errors():
        assert error.line >= 1
        assert error.column >= 1
        assert error.code != "internal"


@SETTINGS
@given(row_lists(), milestone_lists, st.booleans())
def test_canonical_text_round_trips_byte_for_byte(rows, milestones, strict):
    text = render_document("web", "default", "Web app", milestones, rows, strict_coord=strict)
    assert render(parse(text)) == text


@SETTINGS
@given(row_lists(), milestone_lists, st.dictionaries(keys, details_text.filter(str.strip), max_size=2))
def test_parse_render_document_gives_back_the_rows(rows, milestones, extra_details):
    text = render_document("web", "default", "Web app", milestones, rows, extra_details)
    doc = parse(text)
    assert doc.all_errors() == []
    expected = [
        dataclasses.replace(r, details=normalise_details(extra_details[r.key]))
        if r.key in extra_details and r.details is None
        else r
        for r in rows
    ]
    assert doc.rows_data() == grouped(expected, milestones)
    assert (doc.project, doc.mission, doc.mission_name) == ("web", "default", "Web app")
    for key, value in extra_details.items():
        if not any(r.key == key and r.details for r in rows):
            assert doc.get_details(key) == normalise_details(value)


@SETTINGS
@given(row_lists(max_size=5), st.data())
def test_update_row_rewrites_one_row_and_reparses_to_the_new_data(rows, data):
    text = render_document("web", "default", "Web", [], rows)
    doc = parse(text)
    targets = [r for r in doc.rows() if r.key is not None]
    if not targets:
        return
    row = data.draw(st.sampled_from(targets))
    new = dataclasses.replace(data.draw(row_data(row.key)), milestone=row.data.milestone, role=None, labels=())
    new = dataclasses.replace(new, extra={k: v for k, v in new.extra.items() if k in row.data.extra})
    doc.update_row(row, new)
    assert row.data == new
    out = render(doc)
    reparsed = parse(out)
    assert reparsed.row(row.key).data == new
    # every other row keeps its line
    others = [r.text for r in parse(text).rows() if r.key != row.key]
    assert [r.text for r in reparsed.rows() if r.key != row.key] == others


@SETTINGS
@given(markdownish, st.lists(st.tuples(st.sampled_from(["update", "append", "remove", "key", "mark", "details"]),
                                       st.integers(0, 50)), max_size=6), st.data())  # fmt: skip
def test_edits_never_crash_and_what_the_document_says_is_what_it_renders(text, ops, data):
    doc = parse(text)
    for op, n in ops:
        rows = list(doc.rows())
        row = rows[n % len(rows)] if rows else None
        if op == "append":
            key = f"NEW-{n}"
            if doc.row(key) is None:
                doc.append_row(data.draw(row_data(key)))
        elif row is None:
            continue
        elif op == "update":
            doc.update_row(row, data.draw(row_data(row.key)))
        elif op == "remove":
            doc.remove_row(row)
        elif op == "key" and row.table.key_index is not None and doc.row(f"K-{n}") is None:
            doc.set_key(row, f"K-{n}")
        elif op == "mark":
            doc.set_marker(row, "conflict", f"conflict {n}")
        elif op == "details" and row.key is not None:
            doc.set_details(row.key, f"details {n}")
    out = render(doc)
    reparsed = parse(out)
    assert render(reparsed) == out
    assert reparsed.rows_data() == doc.rows_data()
    assert [r.markers for r in reparsed.rows()] == [r.markers for r in doc.rows()]
