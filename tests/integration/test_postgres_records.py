"""PostgresRecordStore against a real Postgres (a fresh clone of the migrated template per test)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from queue_service import domain, exceptions
from queue_service.backend import Backend, DispatchConfig
from queue_service.models import (
    ApiToken,
    MissionCreate,
    ProjectCreate,
    ProjectUpdate,
    TaskCreate,
    TaskFilter,
    TaskStatus,
    TaskUpdate,
    TokenRole,
    utcnow,
)
from queue_service.postgres import tables as t
from queue_service.postgres.errors import wrap_errors
from queue_service.postgres.records import PostgresRecordStore
from queue_service.postgres.transitions import CommitEffects, StatusChange, on_status_changes
from queue_service.service import QueueService
from queue_service.snapshot import comparable, dumps

pytestmark = pytest.mark.postgres

S = TaskStatus


class _RecordsOnly(Backend):
    """Just enough Backend for QueueService's record methods (input validation happens there)."""

    name = "postgres-records"

    def __init__(self, records: PostgresRecordStore) -> None:
        self.records = records
        self.config = records.config

    async def ping(self) -> None:
        return None


@pytest.fixture
def committed() -> list[CommitEffects]:
    return []


@pytest.fixture
def store(pg_engine: AsyncEngine, committed: list[CommitEffects]) -> PostgresRecordStore:
    async def on_commit(effects: CommitEffects) -> None:
        committed.append(effects)

    return PostgresRecordStore(pg_engine, DispatchConfig(max_queue_depth=300), on_commit=on_commit)


@pytest.fixture
def svc(store: PostgresRecordStore) -> QueueService:
    return QueueService(_RecordsOnly(store))


@pytest.fixture
async def web(store: PostgresRecordStore) -> str:
    await store.create_project(ProjectCreate(slug="web", key_prefix="WEB"))
    return "web"


async def dump(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in a stable order: 'the database is unchanged' means equal dumps."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    async with engine.connect() as conn:
        for table in t.metadata.sorted_tables:
            rows = await conn.execute(select(table).order_by(*table.primary_key.columns))
            out[table.name] = [tuple(r) for r in rows]
    return out


def mk(title: str, **kw: Any) -> TaskCreate:
    return TaskCreate(title=title, **kw)


async def set_lease(engine: AsyncEngine, project: str, key: str, token: str, seconds: float) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            update(t.tasks)
            .where(t.tasks.c.project == project, t.tasks.c.key == key)
            .values(
                status="in-progress",
                lease_holder="agent-1",
                lease_token=token,
                lease_expires_at=utcnow() + timedelta(seconds=seconds),
            )
        )


# -- projects and missions -------------------------------------------------------------------


async def test_projects(store: PostgresRecordStore) -> None:
    p = await store.create_project(ProjectCreate(slug="web-app", name="Web"))
    assert (p.slug, p.name, p.key_prefix, p.version) == ("web-app", "Web", "WEBAPP", 1)
    with pytest.raises(exceptions.AlreadyExists, match="web-app"):
        await store.create_project(ProjectCreate(slug="web-app"))
    assert await store.get_project("web-app") == p
    await store.create_project(ProjectCreate(slug="api"))
    assert [x.slug for x in await store.list_projects()] == ["api", "web-app"]
    same = await store.update_project("web-app", ProjectUpdate(name="Web"))
    assert same.version == 1
    changed = await store.update_project("web-app", ProjectUpdate(name="Web 2", workspace="/tmp/w"))
    assert (changed.name, changed.workspace, changed.version) == ("Web 2", "/tmp/w", 2)
    with pytest.raises(exceptions.ProjectNotFound, match="nope"):
        await store.get_project("nope")
    with pytest.raises(exceptions.ProjectNotFound):
        await store.update_project("nope", ProjectUpdate(name="x"))
    kinds = [e.kind for e in await store.list_events("web-app")]
    assert kinds == ["project_created", "project_updated"]


async def test_missions(store: PostgresRecordStore, web: str) -> None:
    default = await store.get_mission(web, "default")
    assert default.tasks_file == "TASKS.md"
    m = await store.create_mission(
        web,
        MissionCreate(id="m1", name="First", milestones=[{"id": "ms1", "name": "One"}, {"id": "ms2", "name": "Two"}]),
    )
    assert [x.id for x in m.milestones] == ["ms1", "ms2"]
    assert m.tasks_file == "m1/TASKS.md"
    with pytest.raises(exceptions.AlreadyExists):
        await store.create_mission(web, MissionCreate(id="m1"))
    await store.create_mission(web, MissionCreate(id="a0"))
    assert [x.id for x in await store.list_missions(web)] == ["default", "m1", "a0"]
    assert await store.get_mission(web, "m1") == m
    unchanged = await store.update_mission(
        web,
        "m1",
        MissionCreate(id="m1", name="First", milestones=[{"id": "ms1", "name": "One"}, {"id": "ms2", "name": "Two"}]),
    )
    assert unchanged.version == 1
    upd = await store.update_mission(
        web, "m1", MissionCreate(id="m1", status="completed", milestones=[{"id": "z", "name": "Z"}])
    )
    assert (upd.version, upd.status.value, [x.id for x in upd.milestones], upd.name) == (2, "completed", ["z"], "First")
    assert await store.get_mission(web, "m1") == upd
    with pytest.raises(exceptions.MissionNotFound):
        await store.get_mission(web, "zz")
    with pytest.raises(exceptions.ProjectNotFound):
        await store.get_mission("nope", "m1")
    with pytest.raises(exceptions.MissionNotFound):
        await store.create_tasks(web, [mk("x", mission="zz")])


# -- create ----------------------------------------------------------------------------------


async def test_create_tasks_keys_deps_and_effects(
    store: PostgresRecordStore, web: str, committed: list[CommitEffects]
) -> None:
    committed.clear()
    tasks = await store.create_tasks(
        web,
        [
            mk("a", labels=["x", "y"], extra={"notes": "n"}, priority="P1", role="dev"),
            mk("b", depends_on=["#0"]),
            mk("c", key="CR-01-02", depends_on=["#0", "#1"], status="done"),
            mk("d", not_before=utcnow() + timedelta(hours=1)),
        ],
    )
    assert [x.key for x in tasks] == ["WEB-1", "WEB-2", "CR-01-02", "WEB-3"]
    assert [x.seq for x in tasks] == [1, 2, 3, 4]
    assert tasks[2].depends_on == ("WEB-1", "WEB-2")
    assert tasks[2].completed_at is not None
    assert tasks[0].labels == ("x", "y")
    assert tasks[0].extra == {"notes": "n"}
    assert await store.get_task(web, "CR-01-02") == tasks[2]
    (fx,) = committed
    assert [r.key for r in fx.ready] == ["WEB-1"]
    assert fx.ready[0].role == "dev"
    assert fx.ready[0].priority == "P1"
    assert [r.key for r in fx.scheduled] == ["WEB-3"]
    assert [(e.kind, e.task) for e in fx.events] == [("created", k) for k in ("WEB-1", "WEB-2", "CR-01-02", "WEB-3")]
    # An imported PREFIX-N above next_seq moves the counter past it.
    (t7,) = await store.create_tasks(web, [mk("imported", key="WEB-7")])
    (t8,) = await store.create_tasks(web, [mk("next")])
    assert (t7.key, t8.key) == ("WEB-7", "WEB-8")
    with pytest.raises(exceptions.AlreadyExists, match="WEB-7"):
        await store.create_tasks(web, [mk("dup", key="WEB-7")])
    with pytest.raises(exceptions.AlreadyExists, match="K-1"):
        await store.create_tasks(web, [mk("a", key="K-1"), mk("b", key="K-1")])
    # Existing deps count: WEB-2 is not done, so the new task waits.
    (w,) = await store.create_tasks(web, [mk("w", depends_on=["WEB-2", "CR-01-02"])])
    assert w.depends_on == ("WEB-2", "CR-01-02")
    assert [x.key for x in await store.blockers(web, w.key)] == ["WEB-2"]
    page = await store.list_tasks(web, TaskFilter(ready=True))
    assert [x.key for x in page.items] == ["WEB-1", "WEB-7", "WEB-8"]


async def test_create_skips_taken_numbers(store: PostgresRecordStore, web: str) -> None:
    await store.create_tasks(web, [mk("a"), mk("b")])
    snap = await store.export_project(web)
    # Simulate a snapshot whose counter lags behind imported keys.
    async with store.engine.begin() as conn:
        await conn.execute(text("DELETE FROM projects WHERE slug = 'web'"))
    await store.import_project(snap.model_copy(update={"next_seq": 1}))
    new = await store.create_tasks(web, [mk("c"), mk("d")])
    assert [x.key for x in new] == ["WEB-3", "WEB-4"]


async def test_idempotency(store: PostgresRecordStore, web: str) -> None:
    a, b, c = await store.create_tasks(
        web, [mk("a", idempotency_key="i1"), mk("b", idempotency_key="i1"), mk("c", idempotency_key="i2")]
    )
    assert a == b
    assert a.key == "WEB-1"
    assert c.key == "WEB-2"
    again = await store.create_tasks(web, [mk("other", idempotency_key="i2"), mk("new")])
    assert again[0] == c
    assert again[1].key == "WEB-3"
    assert len((await store.list_tasks(web)).items) == 3


async def test_create_errors(store: PostgresRecordStore, web: str) -> None:
    await store.create_project(ProjectCreate(slug="api", key_prefix="API"))
    await store.create_tasks("api", [mk("other project")])
    await store.create_tasks(web, [mk("a")])
    with pytest.raises(exceptions.UnknownDependency, match="WEB-99"):
        await store.create_tasks(web, [mk("x", depends_on=["WEB-99"])])
    with pytest.raises(exceptions.UnknownDependency, match="API-1"):
        await store.create_tasks(web, [mk("x", depends_on=["API-1"])])
    with pytest.raises(exceptions.UnknownDependency, match="#5"):
        await store.create_tasks(web, [mk("x", depends_on=["#5"])])
    with pytest.raises(exceptions.DependencyCycle):
        await store.create_tasks(web, [mk("x", depends_on=["#1"]), mk("y", depends_on=["#0"])])
    with pytest.raises(exceptions.DependencyCycle):
        await store.create_tasks(web, [mk("x", depends_on=["#0"])])
    with pytest.raises(exceptions.ProjectNotFound):
        await store.create_tasks("nope", [mk("x")])


async def test_backpressure(pg_engine: AsyncEngine, web: str) -> None:
    store = PostgresRecordStore(pg_engine, DispatchConfig(max_queue_depth=3))
    await store.create_tasks(web, [mk("a"), mk("b"), mk("c", role="other")])
    await store.create_tasks(web, [mk("c")])
    with pytest.raises(exceptions.QueueFull, match="max_queue_depth=3"):
        await store.create_tasks(web, [mk("d")])
    # Not-ready tasks do not count, and other roles have their own depth.
    await store.create_tasks(web, [mk("e", depends_on=["WEB-1"]), mk("f", role="other")])
    with pytest.raises(exceptions.QueueFull):
        await store.create_tasks(web, [mk("g", role="other"), mk("h", role="other")])


# -- read ------------------------------------------------------------------------------------


async def test_list_get_and_cursor(store: PostgresRecordStore, web: str) -> None:
    await store.create_mission(web, MissionCreate(id="m1"))
    items = [
        mk(
            f"t{i}",
            role="dev" if i % 2 else "qa",
            labels=["even"] if i % 2 == 0 else [],
            mission="m1" if i < 3 else "default",
        )
        for i in range(10)
    ]
    await store.create_tasks(web, items)
    keys: list[str] = []
    cursor = None
    while True:
        page = await store.list_tasks(web, limit=3, cursor=cursor)
        keys += [x.key for x in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert keys == [f"WEB-{i}" for i in range(1, 11)]
    assert [x.key for x in (await store.list_tasks(web, TaskFilter(role="dev"))).items] == [
        "WEB-2",
        "WEB-4",
        "WEB-6",
        "WEB-8",
        "WEB-10",
    ]
    assert len((await store.list_tasks(web, TaskFilter(label="even"))).items) == 5
    assert len((await store.list_tasks(web, TaskFilter(mission="m1"))).items) == 3
    await store.update_task(web, "WEB-1", TaskUpdate(status="done", assignee="bob", milestone="ms"))
    assert [x.key for x in (await store.list_tasks(web, TaskFilter(status=["done"]))).items] == ["WEB-1"]
    assert [x.key for x in (await store.list_tasks(web, TaskFilter(assignee="bob", milestone="ms"))).items] == ["WEB-1"]
    assert len((await store.list_tasks(web, TaskFilter(ready=False))).items) == 1
    with pytest.raises(exceptions.ValidationError, match="cursor"):
        await store.list_tasks(web, cursor="!!not-a-cursor")
    with pytest.raises(exceptions.ProjectNotFound):
        await store.list_tasks("nope")
    got = await store.get_tasks(web, ["WEB-3", "WEB-404", "WEB-1"])
    assert [x.key for x in got] == ["WEB-3", "WEB-1"]
    assert await store.get_tasks(web, []) == []
    with pytest.raises(exceptions.TaskNotFound, match="WEB-404"):
        await store.get_task(web, "WEB-404")
    with pytest.raises(exceptions.ProjectNotFound):
        await store.get_task("nope", "WEB-1")


# -- update / cancel / transitions -----------------------------------------------------------


async def test_update_task(store: PostgresRecordStore, web: str, committed: list[CommitEffects]) -> None:
    _a, _b = await store.create_tasks(web, [mk("a"), mk("b", depends_on=["#0"])])
    same = await store.update_task(web, "WEB-1", TaskUpdate(title="a"))
    assert same.version == 1
    with pytest.raises(exceptions.VersionConflict, match="version 1, not 7"):
        await store.update_task(web, "WEB-1", TaskUpdate(title="x"), expected_version=7)
    u = await store.update_task(web, "WEB-1", TaskUpdate(title="A", labels=["l"], priority="P0"), expected_version=1)
    assert (u.title, u.labels, u.priority.value, u.version) == ("A", ("l",), "P0", 2)
    ev = (await store.list_events(web))[-1]
    assert (ev.kind, ev.task, ev.version, ev.data["fields"]) == ("updated", "WEB-1", 2, ["labels", "priority", "title"])
    # Ready task whose priority changed is reported again, so dispatch can requeue it.
    assert committed[-1].ready[0].priority == "P0"
    # done → dependent becomes ready
    committed.clear()
    d = await store.update_task(web, "WEB-1", TaskUpdate(status="done"))
    assert d.completed_at is not None
    assert d.status is S.DONE
    assert [r.key for r in committed[-1].ready] == ["WEB-2"]
    assert (await store.list_tasks(web, TaskFilter(ready=True))).items[0].key == "WEB-2"
    # done → not-started: dependent waits again
    await store.update_task(web, "WEB-1", TaskUpdate(status="not-started"))
    assert [x.key for x in (await store.list_tasks(web, TaskFilter(ready=True))).items] == ["WEB-1"]
    await store.update_task(web, "WEB-1", TaskUpdate(status="failed"))
    with pytest.raises(exceptions.InvalidTransition, match="failed to done"):
        await store.update_task(web, "WEB-1", TaskUpdate(status="done"))
    await store.update_task(web, "WEB-1", TaskUpdate(status="not-started"))
    assert (await store.get_task(web, "WEB-2")).status is S.NOT_STARTED
    # deps change: cycle refused, unknown refused, removing deps makes the task ready
    with pytest.raises(exceptions.DependencyCycle, match="WEB-1 -> WEB-2 -> WEB-1"):
        await store.update_task(web, "WEB-1", TaskUpdate(depends_on=["WEB-2"]))
    with pytest.raises(exceptions.DependencyCycle):
        await store.update_task(web, "WEB-1", TaskUpdate(depends_on=["WEB-1"]))
    with pytest.raises(exceptions.UnknownDependency, match="WEB-9"):
        await store.update_task(web, "WEB-2", TaskUpdate(depends_on=["WEB-9"]))
    committed.clear()
    nodeps = await store.update_task(web, "WEB-2", TaskUpdate(depends_on=[]))
    assert nodeps.depends_on == ()
    assert [r.key for r in committed[-1].ready] == ["WEB-2"]
    # blocked by a human
    blk = await store.update_task(web, "WEB-2", TaskUpdate(status="blocked"), actor="ann")
    assert blk.blocked_reason == "blocked by ann"
    back = await store.update_task(web, "WEB-2", TaskUpdate(status="not-started"))
    assert back.blocked_reason is None
    with pytest.raises(exceptions.TaskNotFound):
        await store.update_task(web, "WEB-77", TaskUpdate(title="x"))


async def test_leaving_in_progress_ends_lease(store: PostgresRecordStore, pg_engine: AsyncEngine, web: str) -> None:
    await store.create_tasks(web, [mk("a")])
    await set_lease(pg_engine, web, "WEB-1", "tok", 60)
    note = await store.add_note(web, "WEB-1", "agent-1", "working", token="tok")
    assert note.text == "working"
    with pytest.raises(exceptions.LeaseError):
        await store.add_note(web, "WEB-1", "agent-1", "x", token="wrong")
    task = await store.update_task(web, "WEB-1", TaskUpdate(status="needs-qa"))
    assert task.lease_holder is None
    assert task.lease_expires_at is None
    with pytest.raises(exceptions.LeaseError):
        await store.add_note(web, "WEB-1", "agent-1", "late", token="tok")
    await store.update_task(web, "WEB-1", TaskUpdate(status="not-started"))
    await set_lease(pg_engine, web, "WEB-1", "tok2", -1)
    with pytest.raises(exceptions.LeaseError, match="expired"):
        await store.add_note(web, "WEB-1", "agent-1", "x", token="tok2")
    notes = await store.list_notes(web, "WEB-1")
    assert [n.text for n in notes] == ["working"]
    await store.add_note(web, "WEB-1", "human", "plain note")
    assert [n.author for n in await store.list_notes(web, "WEB-1")] == ["agent-1", "human"]
    assert (await store.list_events(web))[-1].kind == "note_added"


async def test_fail_blocks_and_retry_unblocks(store: PostgresRecordStore, web: str) -> None:
    await store.create_tasks(
        web,
        [mk("a"), mk("b"), mk("c", depends_on=["#0"]), mk("d", depends_on=["#0", "#1"]), mk("e", depends_on=["#2"])],
    )
    await store.update_task(web, "WEB-1", TaskUpdate(status="failed"))
    c = await store.get_task(web, "WEB-3")
    assert c.status is S.BLOCKED
    assert c.blocked_reason == domain.dependency_block_reason("WEB-1", S.FAILED)
    assert c.version == 2
    # Transitive dependents stay not-started (never ready while WEB-3 is not done).
    assert (await store.get_task(web, "WEB-5")).status is S.NOT_STARTED
    events = await store.list_events(web)
    assert {(e.kind, e.task) for e in events[-3:]} == {("updated", "WEB-1"), ("blocked", "WEB-3"), ("blocked", "WEB-4")}
    # WEB-2 fails too; retrying WEB-1 leaves WEB-4 blocked, now because of WEB-2.
    await store.update_task(web, "WEB-2", TaskUpdate(status="cancelled"))
    await store.update_task(web, "WEB-1", TaskUpdate(status="not-started"))
    assert (await store.get_task(web, "WEB-3")).status is S.NOT_STARTED
    d = await store.get_task(web, "WEB-4")
    assert (d.status, d.blocked_reason) == (S.BLOCKED, domain.dependency_block_reason("WEB-2", S.CANCELLED))
    await store.update_task(web, "WEB-2", TaskUpdate(status="not-started"))
    assert (await store.get_task(web, "WEB-4")).status is S.NOT_STARTED
    # A human block is never lifted by a dependency.
    await store.update_task(web, "WEB-3", TaskUpdate(status="blocked", blocked_reason="waiting for design"))
    await store.update_task(web, "WEB-1", TaskUpdate(status="failed"))
    await store.update_task(web, "WEB-1", TaskUpdate(status="not-started"))
    assert (await store.get_task(web, "WEB-3")).blocked_reason == "waiting for design"


async def test_cancel(store: PostgresRecordStore, pg_engine: AsyncEngine, web: str) -> None:
    await store.create_tasks(web, [mk("a"), mk("b", depends_on=["#0"]), mk("c")])
    await set_lease(pg_engine, web, "WEB-1", "tok", 60)
    c = await store.cancel_task(web, "WEB-1", reason="obsolete", actor="ann")
    assert (c.status, c.lease_holder, c.last_error, c.version) == (S.CANCELLED, None, "obsolete", 2)
    assert (await store.get_task(web, "WEB-2")).status is S.BLOCKED
    again = await store.cancel_task(web, "WEB-1")
    assert again.version == 2
    await store.update_task(web, "WEB-3", TaskUpdate(status="done"))
    with pytest.raises(exceptions.InvalidTransition, match="done"):
        await store.cancel_task(web, "WEB-3")
    ev = [e for e in await store.list_events(web) if e.kind == "cancelled"]
    assert ev[0].data == {"actor": "ann", "reason": "obsolete"}


async def test_graph_queries_dead_letter_stats(store: PostgresRecordStore, web: str) -> None:
    await store.create_tasks(
        web,
        [mk("a"), mk("b"), mk("c", depends_on=["#1", "#0"], role="qa"), mk("d", depends_on=["#0"]), mk("e", role="qa")],
    )
    assert [x.key for x in await store.blockers(web, "WEB-3")] == ["WEB-2", "WEB-1"]
    assert [x.key for x in await store.dependents(web, "WEB-1")] == ["WEB-3", "WEB-4"]
    await store.update_task(web, "WEB-2", TaskUpdate(status="done"))
    assert [x.key for x in await store.blockers(web, "WEB-3")] == ["WEB-1"]
    await store.update_task(web, "WEB-5", TaskUpdate(status="failed"))
    await store.update_task(web, "WEB-1", TaskUpdate(status="failed"))
    assert [x.key for x in await store.dead_letter(web)] == ["WEB-1", "WEB-5"]
    assert [x.key for x in await store.dead_letter(web, limit=1)] == ["WEB-1"]
    stats = await store.stats(web)
    assert stats.by_status["failed"] == 2
    assert stats.by_status["done"] == 1
    assert stats.by_status["blocked"] == 2
    assert stats.dead_letter == 2
    assert stats.completed_last_minute == 1
    assert stats.ready_by_role == {}
    await store.create_tasks(web, [mk("f"), mk("g", role="qa")])
    assert (await store.stats(web)).ready_by_role == {"default": 1, "qa": 1}
    with pytest.raises(exceptions.ProjectNotFound):
        await store.stats("nope")
    with pytest.raises(exceptions.TaskNotFound):
        await store.dependents(web, "WEB-99")


async def test_events_since(store: PostgresRecordStore, web: str) -> None:
    await store.create_tasks(web, [mk(f"t{i}") for i in range(5)])
    all_events = await store.list_events(web)
    assert [e.kind for e in all_events] == ["project_created"] + ["created"] * 5
    assert [e.id for e in all_events] == sorted(e.id for e in all_events)
    later = await store.list_events(web, after_id=all_events[2].id, limit=2)
    assert later == all_events[3:5]
    with pytest.raises(exceptions.ProjectNotFound):
        await store.list_events("nope")


async def test_sync_state_and_tokens(store: PostgresRecordStore, web: str) -> None:
    assert await store.get_sync_state(web, "TASKS.md") is None
    await store.put_sync_state(web, "TASKS.md", {"rows": [1, 2]})
    await store.put_sync_state(web, "TASKS.md", {"rows": [3]})
    assert await store.get_sync_state(web, "TASKS.md") == {"rows": [3]}
    with pytest.raises(exceptions.ProjectNotFound):
        await store.put_sync_state("nope", "TASKS.md", {})
    with pytest.raises(exceptions.ProjectNotFound):
        await store.get_sync_state("nope", "TASKS.md")
    assert await store.count_api_tokens() == 0
    tok = ApiToken(id="t1", project=web, role=TokenRole.AGENT, token_hash="h1", name="ci", created_at=utcnow())
    await store.add_api_token(tok)
    with pytest.raises(exceptions.AlreadyExists):
        await store.add_api_token(tok)
    assert await store.find_api_token("h1") == tok
    assert await store.find_api_token("h2") is None
    assert await store.count_api_tokens() == 1


async def test_export_import_roundtrip(store: PostgresRecordStore, pg_engine: AsyncEngine, web: str) -> None:
    await store.create_mission(web, MissionCreate(id="m1", milestones=[{"id": "ms", "name": "MS"}]))
    await store.create_tasks(
        web,
        [mk("a", key="CR-01-02"), mk("b", depends_on=["#0"], mission="m1", labels=["x"]), mk("c", depends_on=["#1"])],
    )
    await store.update_task(web, "CR-01-02", TaskUpdate(status="done"))
    await store.add_note(web, "WEB-1", "ann", "hello")
    await set_lease(pg_engine, web, "WEB-2", "tok", 60)
    snap = await store.export_project(web)
    assert snap.next_seq == 3
    async with pg_engine.begin() as conn:
        await conn.execute(text("DELETE FROM projects WHERE slug = 'web'"))
    with pytest.raises(exceptions.ProjectNotFound):
        await store.get_project(web)
    await store.import_project(snap)
    again = await store.export_project(web)
    assert comparable(dumps(again)) == comparable(dumps(snap))
    assert (await store.get_task(web, "WEB-2")).lease_holder is None
    with pytest.raises(exceptions.AlreadyExists):
        await store.import_project(snap)
    # Keys and seq continue after the imported ones.
    (new,) = await store.create_tasks(web, [mk("d")])
    assert new.key == "WEB-3"
    assert new.seq == 4


# -- all-or-nothing on bad input -------------------------------------------------------------


async def test_bad_input_leaves_database_unchanged(
    svc: QueueService, store: PostgresRecordStore, pg_engine: AsyncEngine
) -> None:
    await svc.create_project({"slug": "web", "key_prefix": "WEB"})
    await svc.create_project({"slug": "api", "key_prefix": "API"})
    await svc.create_tasks("web", [{"title": "a"}, {"title": "b", "depends_on": ["#0"]}, {"title": "c"}])
    await svc.update_task("web", "WEB-3", {"status": "done"})
    await svc.create_tasks("api", [{"title": "x"}])
    before = await dump(pg_engine)
    cases: list[tuple[type[Exception], str, Any]] = [
        (exceptions.ValidationError, "Bad Slug", lambda: svc.create_project({"slug": "Bad Slug"})),
        (exceptions.ValidationError, "Bad Slug", lambda: svc.create_tasks("Bad Slug", [{"title": "x"}])),
        (exceptions.ValidationError, "title", lambda: svc.create_tasks("web", [{"title": "ok"}, {"title": "  "}])),
        (
            exceptions.UnknownDependency,
            "WEB-42",
            lambda: svc.create_tasks("web", [{"title": "x"}, {"title": "y", "depends_on": ["WEB-42"]}]),
        ),
        (
            exceptions.UnknownDependency,
            "API-1",
            lambda: svc.create_tasks("web", [{"title": "x", "depends_on": ["API-1"]}]),
        ),
        (
            exceptions.DependencyCycle,
            "cycle",
            lambda: svc.create_tasks(
                "web", [{"title": "x", "depends_on": ["#1"]}, {"title": "y", "depends_on": ["#0"]}]
            ),
        ),
        (exceptions.DependencyCycle, "WEB-1", lambda: svc.update_task("web", "WEB-1", {"depends_on": ["WEB-2"]})),
        (exceptions.InvalidStatus, "bogus", lambda: svc.update_task("web", "WEB-1", {"status": "bogus"})),
        (exceptions.InvalidStatus, "bogus", lambda: svc.create_tasks("web", [{"title": "x", "status": "bogus"}])),
        (exceptions.InvalidTransition, "WEB-3", lambda: svc.update_task("web", "WEB-3", {"status": "failed"})),
        (
            exceptions.VersionConflict,
            "version",
            lambda: svc.update_task("web", "WEB-1", {"title": "new"}, expected_version=9),
        ),
        (
            exceptions.QueueFull,
            "max_queue_depth",
            lambda: svc.create_tasks("web", [{"title": f"t{i}"} for i in range(400)]),
        ),
        (
            exceptions.MissionNotFound,
            "nope",
            lambda: svc.create_tasks("web", [{"title": "x"}, {"title": "y", "mission": "nope"}]),
        ),
        (
            exceptions.AlreadyExists,
            "WEB-1",
            lambda: svc.create_tasks("web", [{"title": "x"}, {"title": "y", "key": "WEB-1"}]),
        ),
    ]
    for exc_type, needle, call in cases:
        with pytest.raises(exc_type, match=needle):
            await call()
        assert await dump(pg_engine) == before, f"{exc_type.__name__} changed the database"


# -- concurrency and fan-out -----------------------------------------------------------------


async def test_concurrent_creation_has_no_gaps_or_duplicates(pg_url: str, web: str, store: PostgresRecordStore) -> None:
    engine = create_async_engine(pg_url, pool_size=20, max_overflow=40)
    try:
        stores = [PostgresRecordStore(engine, DispatchConfig(max_queue_depth=5000)) for _ in range(50)]

        async def worker(i: int) -> list[str]:
            made = await stores[i].create_tasks(web, [mk(f"w{i}-{j}") for j in range(20)])
            return [x.key for x in made]

        results = await asyncio.gather(*(worker(i) for i in range(50)))
    finally:
        await engine.dispose()
    keys = [k for r in results for k in r]
    assert len(keys) == 1000
    assert sorted(keys, key=lambda k: int(k.split("-")[1])) == [f"WEB-{i}" for i in range(1, 1001)]
    for r in results:  # each batch got a contiguous run (one transaction)
        nums = [int(k.split("-")[1]) for k in r]
        assert nums == list(range(nums[0], nums[0] + 20))
    page = await store.list_tasks(web, limit=1000)
    assert [x.seq for x in page.items] == list(range(1, 1001))


async def test_fan_out_is_set_based(
    store: PostgresRecordStore, pg_engine: AsyncEngine, web: str, committed: list[CommitEffects]
) -> None:
    await store.create_tasks(web, [mk("root"), *[mk(f"leaf{i}", depends_on=["#0"]) for i in range(250)]])
    committed.clear()
    await store.update_task(web, "WEB-1", TaskUpdate(status="done"))
    assert len(committed[-1].ready) == 250
    assert (await store.stats(web)).ready_by_role == {"default": 250}
    await store.update_task(web, "WEB-1", TaskUpdate(status="not-started"))
    assert (await store.stats(web)).ready_by_role == {"default": 1}
    committed.clear()
    await store.update_task(web, "WEB-1", TaskUpdate(status="cancelled"))
    blocked = [e for e in committed[-1].events if e.kind == "blocked"]
    assert len(blocked) == 250
    assert (await store.stats(web)).by_status["blocked"] == 250
    await store.update_task(web, "WEB-1", TaskUpdate(status="not-started"))
    assert (await store.stats(web)).by_status["blocked"] == 0


async def test_transitions_helper_directly(store: PostgresRecordStore, pg_engine: AsyncEngine, web: str) -> None:
    """The dispatcher calls on_status_changes for several tasks at once (batched completions)."""
    await store.create_tasks(web, [mk("a"), mk("b"), mk("c", depends_on=["#0", "#1"])])
    now = utcnow()
    async with pg_engine.begin() as conn:
        ids = {r.key: r.id for r in await conn.execute(select(t.tasks.c.key, t.tasks.c.id))}
        await conn.execute(update(t.tasks).where(t.tasks.c.key.in_(["WEB-1", "WEB-2"])).values(status="done"))
        fx = await on_status_changes(
            conn,
            changes=[
                StatusChange(ids["WEB-1"], "WEB-1", S.IN_PROGRESS, S.DONE),
                StatusChange(ids["WEB-2"], "WEB-2", S.IN_PROGRESS, S.DONE),
            ],
            now=now,
            project=web,
        )
    assert [r.key for r in fx.ready] == ["WEB-3"]
    assert fx.events == []


# -- driver errors ---------------------------------------------------------------------------


async def test_driver_errors_are_translated() -> None:
    engine = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:1/postgres")
    try:
        store = PostgresRecordStore(engine)
        with pytest.raises(exceptions.BackendUnavailable) as info:
            await store.list_projects()
        assert info.value.__cause__ is not None
    finally:
        await engine.dispose()
    with pytest.raises(exceptions.BackendUnavailable):
        with wrap_errors():
            raise ConnectionRefusedError("nope")


async def test_unique_violation_maps_to_already_exists(
    pg_engine: AsyncEngine, web: str, store: PostgresRecordStore
) -> None:
    await store.create_tasks(web, [mk("a")])
    with pytest.raises(exceptions.AlreadyExists) as info:
        async with wrap_errors(), pg_engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO api_tokens (id, role, token_hash) VALUES ('a','admin','h'), ('b','admin','h')")
            )
    assert "uq_api_tokens_token_hash" in str(info.value)
    with pytest.raises(exceptions.BackendError):
        async with wrap_errors(), pg_engine.connect() as conn:
            await conn.execute(text("SELECT * FROM no_such_table"))
