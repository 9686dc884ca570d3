"""RecordStore contract: the sentences of backend.py's docstrings, checked on every backend."""

from __future__ import annotations

import asyncio

import pytest

from queue_service import exceptions
from queue_service.models import TaskStatus
from queue_service.service import QueueService

S = TaskStatus


async def _dump(svc: QueueService, project: str) -> str:
    """Everything stored for a project, to prove a failed call wrote nothing."""
    snap = await svc.export_project(project)
    notes = [(n.task, n.text) for n in snap.notes]
    return repr(
        (snap.project, snap.missions, snap.tasks, notes, [(e.kind, e.task) for e in snap.events], snap.next_seq)
    )


@pytest.fixture
async def web(svc: QueueService) -> str:
    await svc.create_project({"slug": "web", "name": "Web", "key_prefix": "WEB"})
    return "web"


async def test_project_lifecycle(svc: QueueService) -> None:
    p = await svc.create_project({"slug": "web-app", "name": "Web app"})
    assert p.key_prefix == "WEBAPP"
    assert p.version == 1
    assert (await svc.get_project("web-app")).name == "Web app"
    assert [x.slug for x in await svc.list_projects()] == ["web-app"]
    missions = await svc.list_missions("web-app")
    assert [m.id for m in missions] == ["default"]
    p2 = await svc.update_project("web-app", {"name": "Renamed"})
    assert p2.name == "Renamed"
    assert p2.version == 2
    with pytest.raises(exceptions.AlreadyExists):
        await svc.create_project({"slug": "web-app"})
    with pytest.raises(exceptions.ProjectNotFound):
        await svc.get_project("nope")


@pytest.mark.parametrize("slug", ["Web", "-web", "web_app", "", "a" * 64, "web app", "../etc"])
async def test_invalid_slug_is_rejected(svc: QueueService, slug: str) -> None:
    with pytest.raises(exceptions.ValidationError) as err:
        await svc.create_project({"slug": slug})
    assert repr(slug)[1:-1][:20] in err.value.message or "slug" in err.value.message
    assert await svc.list_projects() == []


async def test_missions_and_milestones(svc: QueueService, web: str) -> None:
    m = await svc.create_mission(
        web,
        {
            "id": "checkout",
            "name": "Checkout",
            "milestones": [{"id": "m1", "name": "Cart"}, {"id": "m2", "name": "Pay"}],
        },
    )
    assert [ms.id for ms in m.milestones] == ["m1", "m2"]
    assert (await svc.get_mission(web, "checkout")).name == "Checkout"
    assert [x.id for x in await svc.list_missions(web)] == ["default", "checkout"]
    with pytest.raises(exceptions.AlreadyExists):
        await svc.create_mission(web, {"id": "checkout"})
    with pytest.raises(exceptions.MissionNotFound):
        await svc.get_mission(web, "nope")
    with pytest.raises(exceptions.ValidationError):
        await svc.create_mission(web, {"id": "x", "milestones": [{"id": "a", "name": "A"}, {"id": "a", "name": "B"}]})
    t = await svc.create_task(web, {"title": "in mission", "mission": "checkout", "milestone": "m1"})
    assert (t.mission, t.milestone) == ("checkout", "m1")
    with pytest.raises(exceptions.MissionNotFound):
        await svc.create_task(web, {"title": "x", "mission": "ghost"})


async def test_keys_allocated_in_sequence_and_imported_keys_kept(svc: QueueService, web: str) -> None:
    a = await svc.create_task(web, {"title": "first"})
    assert a.key == "WEB-1"
    imported = await svc.create_tasks(web, [{"title": "coord", "key": "CR-01-02"}, {"title": "gw", "key": "GW-001"}])
    assert [t.key for t in imported] == ["CR-01-02", "GW-001"]
    # an imported key of our own shape pushes the sequence past it: no collision later
    await svc.create_task(web, {"title": "imported five", "key": "WEB-5"})
    b = await svc.create_task(web, {"title": "next"})
    assert b.key == "WEB-6"
    with pytest.raises(exceptions.AlreadyExists):
        await svc.create_task(web, {"title": "dup", "key": "CR-01-02"})
    with pytest.raises(exceptions.ValidationError):
        await svc.create_task(web, {"title": "bad", "key": "WEB 7"})


async def test_concurrent_creation_has_no_gaps_or_duplicates(svc: QueueService, web: str) -> None:
    async def batch(i: int) -> list[str]:
        tasks = await svc.create_tasks(web, [{"title": f"t{i}-{j}"} for j in range(20)])
        return [t.key for t in tasks]

    keys = [k for ks in await asyncio.gather(*(batch(i) for i in range(50))) for k in ks]
    assert sorted(keys, key=lambda k: int(k.split("-")[1])) == [f"WEB-{n}" for n in range(1, 1001)]


async def test_task_defaults_and_fields(svc: QueueService, web: str) -> None:
    t = await svc.create_task(
        web,
        {
            "title": "  Design the schema  ",
            "priority": 1,
            "role": "backend.dev",
            "labels": ["db", "db", "schema"],
            "extra": {"issue": "#7"},
        },
    )
    assert t.title == "Design the schema"
    assert t.status is S.NOT_STARTED
    assert t.priority.value == "P1"
    assert t.labels == ("db", "schema")
    assert t.extra == {"issue": "#7"}
    assert t.version == 1
    assert t.attempts == 0
    assert (await svc.get_task(web, t.key)) == t


async def test_batch_refs_and_all_or_nothing(svc: QueueService, web: str) -> None:
    tasks = await svc.create_tasks(
        web, [{"title": "a"}, {"title": "b", "depends_on": ["#0"]}, {"title": "c", "depends_on": ["#0", "#1"]}]
    )
    assert tasks[1].depends_on == ("WEB-1",)
    assert tasks[2].depends_on == ("WEB-1", "WEB-2")
    before = await _dump(svc, web)
    with pytest.raises(exceptions.UnknownDependency) as err:
        await svc.create_tasks(web, [{"title": "ok"}, {"title": "bad", "depends_on": ["WEB-99"]}])
    assert "WEB-99" in err.value.message
    assert await _dump(svc, web) == before
    nxt = await svc.create_task(web, {"title": "after rollback"})
    assert nxt.key == "WEB-4"  # the failed batch did not consume numbers


async def test_bad_input_writes_nothing(svc: QueueService, web: str) -> None:
    await svc.create_project({"slug": "other"})
    other = await svc.create_task("other", {"title": "foreign"})
    a = await svc.create_task(web, {"title": "a"})
    b = await svc.create_task(web, {"title": "b", "depends_on": [a.key]})
    before = await _dump(svc, web)
    cases: list[tuple[type[Exception], object]] = [
        (exceptions.ValidationError, svc.create_task(web, {"title": "   "})),
        (exceptions.ValidationError, svc.create_task(web, {"title": ""})),
        (exceptions.UnknownDependency, svc.create_task(web, {"title": "x", "depends_on": ["WEB-404"]})),
        (exceptions.UnknownDependency, svc.create_task(web, {"title": "x", "depends_on": [other.key]})),
        (exceptions.DependencyCycle, svc.update_task(web, a.key, {"depends_on": [b.key]})),
        (exceptions.DependencyCycle, svc.update_task(web, a.key, {"depends_on": [a.key]})),
        (
            exceptions.DependencyCycle,
            svc.create_tasks(web, [{"title": "p", "depends_on": ["#1"]}, {"title": "q", "depends_on": ["#0"]}]),
        ),
        (exceptions.InvalidStatus, svc.create_task(web, {"title": "x", "status": "flying"})),
        (exceptions.InvalidStatus, svc.update_task(web, a.key, {"status": "sort-of-done"})),
        (exceptions.VersionConflict, svc.update_task(web, a.key, {"title": "new"}, expected_version=7)),
        (exceptions.ValidationError, svc.create_task(web, {"title": "x", "priority": "P9"})),
        (exceptions.ValidationError, svc.create_task(web, {"title": "x", "bogus": 1})),
        (exceptions.TaskNotFound, svc.update_task(web, "WEB-404", {"title": "x"})),
    ]
    for expected, coro in cases:
        with pytest.raises(expected) as err:
            await coro  # type: ignore[misc]
        assert err.value.args[0]  # a message, naming the value
    await svc.update_task(web, a.key, {"status": "done"})
    before = await _dump(svc, web)
    with pytest.raises(exceptions.InvalidTransition) as err2:
        await svc.cancel_task(web, a.key)
    assert a.key in err2.value.message
    with pytest.raises(exceptions.InvalidTransition):
        await svc.update_task(web, a.key, {"status": "failed"})
    assert await _dump(svc, web) == before


async def test_error_messages_name_the_value(svc: QueueService, web: str) -> None:
    with pytest.raises(exceptions.InvalidStatus) as e1:
        await svc.create_task(web, {"title": "x", "status": "flying"})
    assert "flying" in e1.value.message
    with pytest.raises(exceptions.UnknownDependency) as e2:
        await svc.create_task(web, {"title": "x", "depends_on": ["WEB-77"]})
    assert "WEB-77" in e2.value.message
    a = await svc.create_task(web, {"title": "a"})
    with pytest.raises(exceptions.VersionConflict) as e3:
        await svc.update_task(web, a.key, {"title": "b"}, expected_version=3)
    assert "3" in e3.value.message
    assert "1" in e3.value.message


async def test_status_aliases_on_input(svc: QueueService, web: str) -> None:
    words = {
        "todo": S.NOT_STARTED,
        "NOT_STARTED": S.NOT_STARTED,
        "wip": S.IN_PROGRESS,
        "x": S.DONE,
        "complete": S.DONE,
        "IN_PROGRESS": S.IN_PROGRESS,
        "needs-qa": S.NEEDS_QA,
    }
    for word, status in words.items():
        t = await svc.create_task(web, {"title": word, "status": word})
        assert t.status is status


async def test_patch_versions_and_noop(svc: QueueService, web: str) -> None:
    t = await svc.create_task(web, {"title": "a"})
    t2 = await svc.update_task(web, t.key, {"title": "b", "labels": ["x"]}, expected_version=1)
    assert (t2.title, t2.labels, t2.version) == ("b", ("x",), 2)
    t3 = await svc.update_task(web, t.key, {"title": "b"})
    assert t3.version == 2  # nothing changed: no bump
    t4 = await svc.update_task(web, t.key, {"assignee": "sonnet"})
    assert t4.version == 3
    t5 = await svc.update_task(web, t.key, {"assignee": None})
    assert t5.assignee is None
    assert t5.version == 4
    kinds = [e.kind for e in await svc.list_events(web) if e.task == t.key]
    assert kinds == ["created", "updated", "updated", "updated"]


async def test_list_filters_and_pagination(svc: QueueService, web: str) -> None:
    await svc.create_mission(web, {"id": "m2"})
    await svc.create_tasks(
        web,
        [
            {"title": "a", "role": "dev", "labels": ["ui"]},
            {"title": "b", "role": "qa", "assignee": "opus"},
            {"title": "c", "role": "dev", "mission": "m2", "milestone": "ms1"},
            {"title": "d", "role": "dev", "depends_on": ["#0"]},
            {"title": "e", "status": "done"},
        ],
    )

    async def keys(**f: object) -> list[str]:
        return [t.key for t in (await svc.list_tasks(web, f)).items]

    assert await keys(role="dev") == ["WEB-1", "WEB-3", "WEB-4"]
    assert await keys(assignee="opus") == ["WEB-2"]
    assert await keys(mission="m2") == ["WEB-3"]
    assert await keys(milestone="ms1") == ["WEB-3"]
    assert await keys(label="ui") == ["WEB-1"]
    assert await keys(status=["done"]) == ["WEB-5"]
    assert await keys(status=["todo", "x"]) == ["WEB-1", "WEB-2", "WEB-3", "WEB-4", "WEB-5"]
    assert await keys(ready=True) == ["WEB-1", "WEB-2", "WEB-3"]
    seen = []
    cursor = None
    while True:
        page = await svc.list_tasks(web, None, limit=2, cursor=cursor)
        seen += [t.key for t in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [f"WEB-{i}" for i in range(1, 6)]
    with pytest.raises(exceptions.ValidationError):
        await svc.list_tasks(web, None, cursor="not-a-cursor!!")
    with pytest.raises(exceptions.ValidationError):
        await svc.list_tasks(web, None, limit=0)


async def test_list_text_search(svc: QueueService, web: str) -> None:
    """``text``: a case-insensitive substring of key, title or description; LIKE wildcards are plain text."""
    await svc.create_tasks(
        web,
        [
            {"title": "Fix the Login form"},
            {"title": "b", "description": "the LOGIN page is slow"},
            {"title": "100% done_ish"},
            {"title": "1000 done-ish"},
            {"title": "unrelated", "status": "done"},
        ],
    )

    async def keys(**f: object) -> list[str]:
        return [t.key for t in (await svc.list_tasks(web, f)).items]

    assert await keys(text="login") == ["WEB-1", "WEB-2"]
    assert await keys(text="web-5") == ["WEB-5"]
    assert await keys(text="0% done_") == ["WEB-3"]  # % and _ match themselves, not "anything"
    assert await keys(text="login", status=["done"]) == []
    page = await svc.list_tasks(web, {"text": "e"}, limit=2)
    assert len(page.items) == 2 and page.next_cursor is not None
    for bad in ("two\nlines", "x" * 201, ""):
        with pytest.raises(exceptions.ValidationError):
            await svc.list_tasks(web, {"text": bad})


async def test_get_tasks_returns_only_asked(svc: QueueService, web: str) -> None:
    await svc.create_tasks(web, [{"title": str(i)} for i in range(5)])
    got = await svc.get_tasks(web, ["WEB-4", "WEB-2", "WEB-99"])
    assert [t.key for t in got] == ["WEB-4", "WEB-2"]


async def test_notes_and_dependency_queries(svc: QueueService, web: str) -> None:
    a, b, c = await svc.create_tasks(web, [{"title": "a"}, {"title": "b"}, {"title": "c", "depends_on": ["#0", "#1"]}])
    n = await svc.add_note(web, c.key, "lead", "acceptance: all green")
    assert n.text == "acceptance: all green"
    assert [x.text for x in await svc.list_notes(web, c.key)] == ["acceptance: all green"]
    with pytest.raises(exceptions.ValidationError):
        await svc.add_note(web, c.key, "lead", "   ")
    assert [t.key for t in await svc.blockers(web, c.key)] == [a.key, b.key]
    assert [t.key for t in await svc.dependents(web, a.key)] == [c.key]
    await svc.update_task(web, a.key, {"status": "done"})
    assert [t.key for t in await svc.blockers(web, c.key)] == [b.key]


async def test_cancel_blocks_dependents(svc: QueueService, web: str) -> None:
    a, b = await svc.create_tasks(web, [{"title": "a"}, {"title": "b", "depends_on": ["#0"]}])
    cancelled = await svc.cancel_task(web, a.key, reason="not needed")
    assert cancelled.status is S.CANCELLED
    dep = await svc.get_task(web, b.key)
    assert dep.status is S.BLOCKED
    assert a.key in (dep.blocked_reason or "")
    again = await svc.cancel_task(web, a.key)
    assert again.version == cancelled.version
    await svc.retry(web, a.key)
    assert (await svc.get_task(web, b.key)).status is S.NOT_STARTED


async def test_events_since_id(svc: QueueService, web: str) -> None:
    t = await svc.create_task(web, {"title": "a"})
    await svc.update_task(web, t.key, {"title": "b"})
    events = await svc.list_events(web)
    task_events = [e for e in events if e.task == t.key]
    assert [e.kind for e in task_events] == ["created", "updated"]
    assert [e.version for e in task_events] == [1, 2]
    ids = [e.id for e in events]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    later = await svc.list_events(web, after_id=task_events[0].id)
    assert [e.kind for e in later] == ["updated"]


async def test_sync_rows_are_stored_as_deltas_beside_the_state(backend, svc: QueueService, web: str) -> None:
    """Issue 17: a cycle stores only the base rows that changed; the others keep theirs."""
    records = backend.records
    assert await records.get_sync_rows(web, "/ws/TASKS.md") == {}
    one = {"v": 1, "f": {"title": "a"}}
    two = {"v": 3, "f": {"title": "b"}, "h": [{"title": "old b"}], "a": 1}
    await records.put_sync_state(web, "/ws/TASKS.md", {"gen": 1}, {"WEB-1": one, "WEB-2": two})
    await records.put_sync_state(web, "/ws/other.md", {"gen": 1}, {"WEB-9": one})
    assert await records.get_sync_rows(web, "/ws/TASKS.md") == {"WEB-1": one, "WEB-2": two}
    changed = {"v": 2, "f": {"title": "a2"}, "h": [{"title": "a"}]}
    await records.put_sync_state(web, "/ws/TASKS.md", {"gen": 2}, {"WEB-1": changed, "WEB-2": None})
    assert await records.get_sync_rows(web, "/ws/TASKS.md") == {"WEB-1": changed}
    assert await records.get_sync_state(web, "/ws/TASKS.md") == {"gen": 2}
    await records.put_sync_state(web, "/ws/TASKS.md", {"gen": 3})  # no rows: the rows stay
    assert await records.get_sync_rows(web, "/ws/TASKS.md") == {"WEB-1": changed}
    assert await records.get_sync_rows(web, "/ws/other.md") == {"WEB-9": one}


async def test_sync_state_and_rows_travel_with_export_and_import(backend, svc: QueueService, web: str) -> None:
    from queue_service import snapshot as snapshot_format

    rows = {"WEB-1": {"v": 2, "f": {"title": "a"}, "h": [{"title": "old"}], "a": 1}}
    await svc.put_sync_state(web, "/ws/TASKS.md", {"gen": 4, "base": {"file_hash": "h", "count": 1}}, rows)
    snap = snapshot_format.loads(snapshot_format.dumps(await svc.export_project(web)))
    assert [(s.path, s.state["gen"], s.rows) for s in snap.sync] == [("/ws/TASKS.md", 4, rows)]
    await svc.create_project({"slug": "web3"})
    moved = snap.model_copy(
        update={
            "project": snap.project.model_copy(update={"slug": "web4"}),
            "missions": tuple(m.model_copy(update={"project": "web4"}) for m in snap.missions),
            "sync": tuple(s.model_copy(update={"project": "web4"}) for s in snap.sync),
        }
    )
    await svc.import_project(moved)
    assert await svc.get_sync_rows("web4", "/ws/TASKS.md") == rows
    assert (await svc.get_sync_state("web4", "/ws/TASKS.md") or {})["gen"] == 4


async def test_sync_state_and_tokens(backend, svc: QueueService, web: str) -> None:
    from queue_service.models import ApiToken, TokenRole, utcnow

    assert await backend.records.get_sync_state(web, "TASKS.md") is None
    await backend.records.put_sync_state(web, "TASKS.md", {"rows": {"WEB-1": {"title": "x"}}})
    assert await backend.records.get_sync_state(web, "TASKS.md") == {"rows": {"WEB-1": {"title": "x"}}}
    assert await backend.records.count_api_tokens() == 0
    tok = ApiToken(id="t1", project=web, role=TokenRole.AGENT, token_hash="abc", created_at=utcnow())
    await backend.records.add_api_token(tok)
    assert await backend.records.count_api_tokens() == 1
    found = await backend.records.find_api_token("abc")
    assert found is not None
    assert found.role is TokenRole.AGENT
    assert await backend.records.find_api_token("nope") is None


async def test_export_import_round_trip(backend, svc: QueueService, web: str) -> None:
    await svc.create_mission(web, {"id": "m2", "milestones": [{"id": "a", "name": "A"}]})
    a, _ = await svc.create_tasks(web, [{"title": "a", "labels": ["x"]}, {"title": "b", "depends_on": ["#0"]}])
    await svc.add_note(web, a.key, "me", "hello")
    await svc.update_task(web, a.key, {"status": "done"})
    snap = await svc.export_project(web)
    moved = snap.model_copy(update={"project": snap.project.model_copy(update={"slug": "web2"})})
    moved = moved.model_copy(
        update={
            "missions": tuple(m.model_copy(update={"project": "web2"}) for m in snap.missions),
            "tasks": tuple(t.model_copy(update={"project": "web2"}) for t in snap.tasks),
            "notes": tuple(n.model_copy(update={"project": "web2"}) for n in snap.notes),
            "events": tuple(e.model_copy(update={"project": "web2"}) for e in snap.events),
        }
    )
    await svc.import_project(moved)
    again = await svc.export_project("web2")
    assert [t.model_dump(exclude={"project"}) for t in again.tasks] == [
        t.model_dump(exclude={"project"}) for t in snap.tasks
    ]
    assert [n.text for n in again.notes] == ["hello"]
    assert [m.id for m in again.missions] == [m.id for m in snap.missions]
    assert again.next_seq == snap.next_seq
    assert len(again.events) == len(snap.events)
    nxt = await svc.create_task("web2", {"title": "c"})
    assert nxt.key == "WEB-3"
    with pytest.raises(exceptions.AlreadyExists):
        await svc.import_project(snap)


async def test_token_list_revoke_purge(backend, svc: QueueService, web: str) -> None:
    from queue_service import exceptions
    from queue_service.models import ApiToken, TokenRole, utcnow

    first = ApiToken(id="t1", project=web, role=TokenRole.AGENT, token_hash="h1", created_at=utcnow())
    second = ApiToken(id="t2", project=None, role=TokenRole.ADMIN, token_hash="h2", created_at=utcnow())
    await backend.records.add_api_token(first)
    await backend.records.add_api_token(second)
    assert [t.id for t in await backend.records.list_api_tokens()] == ["t1", "t2"]
    revoked = await backend.records.revoke_api_token("t1")
    assert revoked.revoked_at is not None
    again = await backend.records.revoke_api_token("t1")  # idempotent: the first time is kept
    assert again.revoked_at == revoked.revoked_at
    found = await backend.records.find_api_token("h1")
    assert found is not None and found.revoked_at == revoked.revoked_at
    assert await backend.records.count_api_tokens() == 2  # a revoked record keeps auth on
    with pytest.raises(exceptions.NotFound):
        await backend.records.revoke_api_token("nope")
    assert await backend.records.purge_api_tokens() == 2
    assert await backend.records.count_api_tokens() == 0
    assert await backend.records.list_api_tokens() == []


async def test_mission_quality_gates(svc: QueueService, web: str) -> None:
    """Issue 18: coord's quality_gates are a mission field: stored, kept by updates that omit them,
    replaced by updates that give them, bounded, and carried by export/import."""
    m = await svc.create_mission(web, {"id": "launch", "quality_gates": ["make lint", "make test"]})
    assert m.quality_gates == ("make lint", "make test")
    assert (await svc.get_mission(web, "launch")).quality_gates == ("make lint", "make test")
    assert (await svc.get_mission(web, "default")).quality_gates == ()
    kept = await svc.update_mission(web, "launch", {"id": "launch", "name": "Launch"})
    assert (kept.name, kept.quality_gates) == ("Launch", ("make lint", "make test"))
    replaced = await svc.update_mission(web, "launch", {"id": "launch", "name": "Launch", "quality_gates": ["pytest"]})
    assert (replaced.quality_gates, replaced.version) == (("pytest",), kept.version + 1)
    before = await _dump(svc, web)
    for bad in (["ok", ""], ["two\nlines"], ["x"] * 51, ["y" * 501]):
        with pytest.raises(exceptions.ValidationError):
            await svc.update_mission(web, "launch", {"id": "launch", "quality_gates": bad})
    assert await _dump(svc, web) == before
    snap = await svc.export_project(web)
    moved = snap.model_copy(
        update={
            "project": snap.project.model_copy(update={"slug": "web3"}),
            "missions": tuple(x.model_copy(update={"project": "web3"}) for x in snap.missions),
            "events": (),
        }
    )
    await svc.import_project(moved)
    assert (await svc.get_mission("web3", "launch")).quality_gates == ("pytest",)


async def test_task_requires(svc: QueueService, web: str) -> None:
    """Issue 18 (the field of issue 13): a task's ``requires`` labels are stored, patched, bounded and
    carried by export/import; TASKS.md's agent column of a not-started row is ``requires["model"]``."""
    task = await svc.create_task(web, {"title": "routed", "requires": {"model": "opus"}})
    assert task.requires == {"model": "opus"}
    assert (await svc.get_task(web, task.key)).requires == {"model": "opus"}
    plain = await svc.create_task(web, {"title": "anyone"})
    assert plain.requires == {}
    kept = await svc.update_task(web, task.key, {"title": "routed!"})
    assert kept.requires == {"model": "opus"}
    changed = await svc.update_task(web, task.key, {"requires": {"model": "haiku", "gpu": "true"}})
    assert changed.requires == {"model": "haiku", "gpu": "true"}
    before = await _dump(svc, web)
    for bad in (
        {"bad name": "x"},
        {"model": ""},
        {"model": "two\nlines"},
        {"model": "y" * 201},
        {f"k{i}": "v" for i in range(33)},
    ):
        with pytest.raises(exceptions.ValidationError):
            await svc.update_task(web, task.key, {"requires": bad})
        with pytest.raises(exceptions.ValidationError):
            await svc.create_task(web, {"title": "bad", "requires": bad})
    assert await _dump(svc, web) == before
    snap = await svc.export_project(web)
    moved = snap.model_copy(
        update={
            "project": snap.project.model_copy(update={"slug": "web4"}),
            "missions": tuple(x.model_copy(update={"project": "web4"}) for x in snap.missions),
            "tasks": tuple(x.model_copy(update={"project": "web4"}) for x in snap.tasks),
            "events": (),
        }
    )
    await svc.import_project(moved)
    assert (await svc.get_task("web4", task.key)).requires == {"model": "haiku", "gpu": "true"}
