"""Flatfile backend: files, compaction, torn writes, corruption, flat per-op cost, cross-process wake-ups.

The multi-process stress tests (racing claimers, SIGKILL crash loop, dead lease holder) are in
``test_flatfile_processes.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

from flatfile.backend import FlatfileBackend
from flatfile.journal import CompactionPolicy, journal_name, snapshot_name
from queue_service import exceptions, snapshot
from queue_service.models import ApiToken, MissionCreate, ProjectCreate, TaskCreate, TaskStatus, TokenRole, utcnow
from queue_service.service import QueueService
from tests.fixtures.timing import fast

AGENT = Path(__file__).parent / "flatfile_agents" / "agent.py"
# a lease long enough for a loaded machine, quick backoffs, room for bulk tests
CONFIG = fast(lease_seconds=5.0, backoff_base_seconds=0.01, backoff_max_seconds=0.05, max_queue_depth=100_000)


def _backend(data: Path, **kwargs: object) -> FlatfileBackend:
    return FlatfileBackend(data, config=CONFIG, **kwargs)  # type: ignore[arg-type]


def _dir_digest(path: Path) -> dict[str, str]:
    """Every file under *path* with its content hash (to prove nothing was written)."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != "lock"
    }


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, str(AGENT), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


async def _line(proc: asyncio.subprocess.Process) -> dict[str, object]:
    assert proc.stdout is not None
    raw = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert raw, f"agent exited early: {(await proc.communicate())[1].decode()}"
    line: dict[str, object] = json.loads(raw)
    return line


# -- URL and layout --------------------------------------------------------------------------


def test_from_url_forms(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert FlatfileBackend.from_url(f"file://{tmp_path}/q").data_dir == tmp_path / "q"
    assert FlatfileBackend.from_url("file://localhost/srv/q").data_dir == Path("/srv/q")
    assert FlatfileBackend.from_url("file://./rel/q").data_dir == Path("rel/q")
    assert FlatfileBackend.from_url("file://").data_dir == Path(".queue-data")
    monkeypatch.setenv("QUEUE_DATA_DIR", str(tmp_path / "env"))
    assert FlatfileBackend.from_url("file://").data_dir == tmp_path / "env"
    b = FlatfileBackend.from_url(f"file://{tmp_path}?compact_min_entries=7&compact_ratio=0.5&poll_interval=0.05")
    assert b.compaction == CompactionPolicy(min_entries=7, ratio=0.5)
    assert b.poll_interval == 0.05
    with pytest.raises(exceptions.ConfigurationError):
        FlatfileBackend.from_url(f"file://{tmp_path}?compact_ratio=lots")
    from queue_service.backend_factory import backend_from_url

    assert isinstance(backend_from_url(f"file://{tmp_path}"), FlatfileBackend)


async def test_layout_and_mission_json(data: Path) -> None:
    async with _backend(data) as b:
        svc = QueueService(b)
        await svc.create_project({"slug": "web", "key_prefix": "WEB"})
        await svc.create_mission("web", {"id": "checkout", "milestones": [{"id": "m1", "name": "Cart"}]})
        await svc.create_tasks("web", [{"title": "a"}, {"title": "b"}])
        await b.records.add_api_token(
            ApiToken(id="t1", project="web", role=TokenRole.ADMIN, token_hash="h1", created_at=utcnow())
        )
        project = data / "projects" / "web"
        names = sorted(p.name for p in project.iterdir())
        assert names == [journal_name(1), "lock", "missions", snapshot_name(1)]
        mission = json.loads((project / "missions" / "checkout" / "mission.json").read_text())
        assert mission["id"] == "checkout"
        assert mission["milestones"] == [{"id": "m1", "name": "Cart", "status": "pending"}]
        assert (project / "missions" / "default" / "mission.json").is_file()
        # one journal line per committed operation
        assert len((project / journal_name(1)).read_bytes().splitlines()) == 2
        assert json.loads((data / "tokens.json").read_text())["tokens"][0]["token_hash"] == "h1"
        await b.records.update_mission("web", "checkout", MissionCreate(id="checkout", name="Pay"))
    mission = json.loads((project / "missions" / "checkout" / "mission.json").read_text())
    assert mission["name"] == "Pay"
    assert mission["version"] == 2


async def test_unknown_project_leaves_no_trace(data: Path) -> None:
    async with _backend(data) as b:
        with pytest.raises(exceptions.ProjectNotFound):
            await b.records.get_project("nope")
        with pytest.raises(exceptions.ProjectNotFound):
            await b.dispatch.claim("nope", "x")
        assert not (data / "projects" / "nope").exists()
        with pytest.raises(exceptions.ValidationError):
            await b.records.get_project("../etc")


async def test_reopen_sees_everything_including_live_leases(data: Path) -> None:
    async with _backend(data) as b:
        await b.records.create_project(ProjectCreate(slug="web"))
        await b.records.create_tasks("web", [TaskCreate(title="a"), TaskCreate(title="b", depends_on=["#0"])])
        claim = await b.dispatch.claim("web", "agent")
        assert claim is not None
        await b.records.put_sync_state("web", "TASKS.md", {"rows": {"WEB-1": 1}})
        before = await b.records.export_project("web")
    async with _backend(data) as b2:
        assert await b2.records.export_project("web") == before
        assert await b2.records.get_sync_state("web", "TASKS.md") == {"rows": {"WEB-1": 1}}
        done = await b2.dispatch.complete("web", claim.task.key, claim.lease.token)
        assert done.status is TaskStatus.DONE
        nxt = await b2.dispatch.claim("web", "agent")
        assert nxt is not None
        assert nxt.task.title == "b"


async def test_unserialisable_result_is_refused_and_writes_nothing(data: Path) -> None:
    async with _backend(data) as b:
        await b.records.create_project(ProjectCreate(slug="web"))
        await b.records.create_tasks("web", [TaskCreate(title="a")])
        claim = await b.dispatch.claim("web", "agent")
        assert claim is not None
        before = _dir_digest(data)
        with pytest.raises(exceptions.ValidationError):
            await b.dispatch.complete("web", claim.task.key, claim.lease.token, result=object())
        assert _dir_digest(data) == before
        assert (await b.records.get_task("web", claim.task.key)).status is TaskStatus.IN_PROGRESS


# -- compaction ------------------------------------------------------------------------------


async def test_compaction_keeps_everything(data: Path) -> None:
    policy = CompactionPolicy(min_entries=10, ratio=0.0)
    async with _backend(data, compaction=policy) as b:
        svc = QueueService(b)
        await svc.create_project({"slug": "web", "key_prefix": "WEB"})
        await svc.create_mission("web", {"id": "m2"})
        for i in range(30):
            t = await svc.create_task("web", {"title": f"t{i}", "labels": [f"l{i % 3}"], "mission": "m2"})
            await svc.add_note("web", t.key, "me", f"note {i}")
            await b.records.put_sync_state("web", f"f{i}.md", {"i": i})
            if i % 4 == 0:
                c = await svc.claim("web", "x")
                assert c is not None
                await svc.complete("web", c.task.key, c.lease.token, {"i": i})
        live = await svc.claim("web", "holder")
        assert live is not None
        for i in range(12):  # more entries after the claim, so a compaction captures the live lease
            await svc.add_note("web", "WEB-1", "me", f"later {i}")
        warm = await svc.export_project("web")
        files = b.files("web")
        assert files.generation > 3
    project = data / "projects" / "web"
    gens = sorted(p.name for p in project.iterdir() if p.name.startswith(("snapshot-", "journal-")))
    assert gens == [journal_name(files.generation), snapshot_name(files.generation)]
    async with _backend(data) as cold:
        assert await cold.records.export_project("web") == warm
        assert await cold.records.get_sync_state("web", "f29.md") == {"i": 29}
        assert [e.id for e in warm.events] == list(range(1, len(warm.events) + 1))
        done = await cold.dispatch.complete("web", live.task.key, live.lease.token)  # the lease survived
        assert done.status is TaskStatus.DONE


async def test_leftovers_of_an_interrupted_compaction_are_ignored(data: Path) -> None:
    async with _backend(data, compaction=CompactionPolicy(min_entries=1_000_000)) as b:
        await b.records.create_project(ProjectCreate(slug="web"))
        await b.records.create_tasks("web", [TaskCreate(title=f"t{i}") for i in range(5)])
        project = data / "projects" / "web"
        # crash after step 1 (new journal created) but before the snapshot rename: gen 1 stays current
        (project / journal_name(2)).write_bytes(b"")
        await b.records.create_tasks("web", [TaskCreate(title="after")])
        expected = await b.records.export_project("web")
    async with _backend(data) as cold:
        assert await cold.records.export_project("web") == expected
    async with _backend(data) as b:
        b.files("web")  # compact by hand, then fake a crash before the old generation was deleted
        await b.records.get_project("web")
        old_snapshot = (project / snapshot_name(1)).read_bytes()
        old_journal = (project / journal_name(1)).read_bytes()
        await asyncio.to_thread(_compact_locked, b, "web")
        (project / snapshot_name(1)).write_bytes(old_snapshot)
        (project / journal_name(1)).write_bytes(old_journal + b'{"v":1,"garbage":')
        await b.records.create_tasks("web", [TaskCreate(title="in gen 2")])
        expected = await b.records.export_project("web")
    async with _backend(data) as cold:
        assert await cold.records.export_project("web") == expected
        assert (await cold.records.get_task("web", "WEB-7")).title == "in gen 2"


def _compact_locked(b: FlatfileBackend, slug: str) -> None:
    files = b.files(slug)
    files.run(lambda txn: files.compact(), exclusive=True, clock=utcnow)


# -- torn writes and corruption --------------------------------------------------------------


async def test_torn_tail_is_ignored_then_cut_and_kept_aside(data: Path) -> None:
    async with _backend(data) as b:
        await b.records.create_project(ProjectCreate(slug="web"))
        await b.records.create_tasks("web", [TaskCreate(title="a")])
    journal = data / "projects" / "web" / journal_name(1)
    good = journal.read_bytes()
    torn = b'{"v":1,"tasks":{"WEB-2":{"proj'
    journal.write_bytes(good + torn)  # a writer killed in the middle of its append
    async with _backend(data) as b:
        assert [t.key for t in (await b.records.list_tasks("web")).items] == ["WEB-1"]
        assert journal.read_bytes() == good + torn  # reads never modify
        t = await b.records.create_tasks("web", [TaskCreate(title="b")])
        assert t[0].key == "WEB-2"
    content = journal.read_bytes()
    assert content.startswith(good)
    assert content.endswith(b"\n")
    assert len(content.splitlines()) == 2
    (aside,) = (data / "projects" / "web").glob("*.torn-*")
    assert aside.read_bytes() == torn
    async with _backend(data) as cold:
        assert [t.title for t in (await cold.records.list_tasks("web")).items] == ["a", "b"]


async def _two_projects(data: Path) -> None:
    async with _backend(data) as b:
        svc = QueueService(b)
        for slug in ("bad", "good"):
            await svc.create_project({"slug": slug})
            for i in range(4):
                await svc.create_task(slug, {"title": f"{slug} {i}"})


async def _assert_refused_without_writes(data: Path, slug: str, needle: str) -> exceptions.CorruptData:
    before = _dir_digest(data / "projects" / slug)
    async with _backend(data) as b:
        svc = QueueService(b)
        with pytest.raises(exceptions.CorruptData) as err:
            await svc.get_project(slug)
        for attempt in (
            svc.create_task(slug, {"title": "new"}),
            svc.claim(slug, "x"),
            svc.update_project(slug, {"name": "x"}),
            b.records.put_sync_state(slug, "x", {}),
            svc.export_project(slug),
        ):
            with pytest.raises(exceptions.CorruptData):
                await attempt
        await b.dispatch.sweep()  # skips the damaged project
        assert [p.slug for p in await svc.list_projects()] == ["good"]
        assert slug in b.problems
        assert needle in b.problems[slug]
        await svc.create_task("good", {"title": "still works"})
    assert _dir_digest(data / "projects" / slug) == before
    return err.value


async def test_corrupt_journal_line_names_file_and_line(data: Path) -> None:
    await _two_projects(data)
    journal = data / "projects" / "bad" / journal_name(1)
    lines = journal.read_bytes().splitlines(keepends=True)
    lines[1] = b'{"v":1,"tasks":{"BAD-2": oops}\n'  # hand damage in the middle
    journal.write_bytes(b"".join(lines))
    err = await _assert_refused_without_writes(data, "bad", "line 2")
    assert str(journal) in err.message
    assert "line 2" in err.message
    assert "not valid JSON" in err.message
    assert err.details["line"] == 2


async def test_schema_error_in_journal_names_the_field(data: Path) -> None:
    await _two_projects(data)
    journal = data / "projects" / "bad" / journal_name(1)
    lines = journal.read_bytes().splitlines(keepends=True)
    entry = json.loads(lines[2])
    entry["tasks"]["BAD-3"]["status"] = "flying"
    lines[2] = json.dumps(entry).encode() + b"\n"
    journal.write_bytes(b"".join(lines))
    err = await _assert_refused_without_writes(data, "bad", "line 3")
    assert "status" in err.message


async def test_damaged_last_line_with_newline_is_corruption_not_a_torn_write(data: Path) -> None:
    await _two_projects(data)
    journal = data / "projects" / "bad" / journal_name(1)
    journal.write_bytes(journal.read_bytes()[:-10] + b"\n")
    await _assert_refused_without_writes(data, "bad", "line 4")


async def test_corrupt_snapshot_names_file_and_line(data: Path) -> None:
    await _two_projects(data)
    snap = data / "projects" / "bad" / snapshot_name(1)
    lines = snap.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"type":"mission"', b'"type":"rocket"')
    snap.write_bytes(b"".join(lines))
    err = await _assert_refused_without_writes(data, "bad", "line 3")
    assert str(snap) in err.message
    assert "rocket" in err.message


async def test_missing_snapshot_is_reported(data: Path) -> None:
    await _two_projects(data)
    (data / "projects" / "bad" / snapshot_name(1)).unlink()
    await _assert_refused_without_writes(data, "bad", "no snapshot")


async def test_corrupt_tokens_file_is_reported_and_kept(data: Path) -> None:
    async with _backend(data) as b:
        await b.records.add_api_token(
            ApiToken(id="t1", project=None, role=TokenRole.ADMIN, token_hash="h", created_at=utcnow())
        )
    path = data / "tokens.json"
    path.write_text(path.read_text().replace('"tokens"', '"tokens" oops', 1))
    damaged = path.read_bytes()
    async with _backend(data) as b:
        with pytest.raises(exceptions.CorruptData) as err:
            await b.records.count_api_tokens()
        assert str(path) in err.value.message
        with pytest.raises(exceptions.CorruptData):
            await b.records.add_api_token(
                ApiToken(id="t2", project=None, role=TokenRole.ADMIN, token_hash="h2", created_at=utcnow())
            )
    assert path.read_bytes() == damaged


async def test_mission_json_is_repaired_on_next_load(data: Path) -> None:
    async with _backend(data) as b:
        await b.records.create_project(ProjectCreate(slug="web"))
        await b.records.create_mission("web", MissionCreate(id="m2", name="Two"))
    path = data / "projects" / "web" / "missions" / "m2" / "mission.json"
    path.unlink()  # as if the process died between the journal append and this derived write
    async with _backend(data) as b:
        await b.records.create_tasks("web", [TaskCreate(title="x")])
    assert json.loads(path.read_text())["name"] == "Two"


# -- flat per-operation cost ------------------------------------------------------------------


async def test_per_operation_cost_does_not_grow_with_the_project(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytes written and read per claim+complete are the same at 30 and at 3,000 tasks (no timings)."""
    policy = CompactionPolicy(min_entries=1_000_000)
    async with _backend(data, compaction=policy) as writer, _backend(data, compaction=policy) as reader:
        for slug, n in (("small", 30), ("large", 3000)):
            await writer.records.create_project(ProjectCreate(slug=slug))
            await writer.records.create_tasks(slug, [TaskCreate(title=f"task {i}") for i in range(n)])
        await reader.records.get_project("small")
        await reader.records.get_project("large")
        read_bytes = 0
        real_pread = os.pread

        def counting_pread(fd: int, n: int, offset: int) -> bytes:
            nonlocal read_bytes
            out = real_pread(fd, n, offset)
            read_bytes += len(out)
            return out

        cost: dict[str, tuple[int, int]] = {}
        for slug in ("small", "large"):
            project = data / "projects" / slug
            snap_before = (project / snapshot_name(1)).stat()
            size_before = (project / journal_name(1)).stat().st_size
            for _ in range(20):
                c = await writer.dispatch.claim(slug, "agent")
                assert c is not None
                await writer.dispatch.complete(slug, c.task.key, c.lease.token)
            written = (project / journal_name(1)).stat().st_size - size_before
            monkeypatch.setattr(os, "pread", counting_pread)
            read_bytes = 0
            await reader.records.get_project(slug)  # catch up on the 40 entries
            monkeypatch.setattr(os, "pread", real_pread)
            cost[slug] = (written, read_bytes)
            snap_after = (project / snapshot_name(1)).stat()
            assert (snap_after.st_ino, snap_after.st_mtime_ns) == (snap_before.st_ino, snap_before.st_mtime_ns)
        (w_small, r_small), (w_large, r_large) = cost["small"], cost["large"]
        assert w_large < 1.2 * w_small
        assert r_large < 1.2 * r_small
        assert r_large == w_large  # the reader read exactly the new lines, nothing else


# -- export / import ---------------------------------------------------------------------------


async def test_export_import_between_data_dirs_is_identical(tmp_path: Path) -> None:
    async with _backend(tmp_path / "a") as a:
        svc = QueueService(a)
        await svc.create_project({"slug": "web", "key_prefix": "WEB"})
        await svc.create_mission("web", {"id": "m2", "milestones": [{"id": "x", "name": "X"}]})
        t1, _t2 = await svc.create_tasks("web", [{"title": "a"}, {"title": "b", "depends_on": ["#0"]}])
        await svc.add_note("web", t1.key, "me", "hi")
        c = await svc.claim("web", "x")
        assert c is not None
        first = snapshot.dumps(await svc.export_project("web"), source="flatfile")
    async with _backend(tmp_path / "b") as b:
        await b.records.import_project(snapshot.loads(first))
        second = snapshot.dumps(await b.records.export_project("web"), source="flatfile")
        with pytest.raises(exceptions.AlreadyExists):
            await b.records.import_project(snapshot.loads(first))
    assert snapshot.comparable(first) == snapshot.comparable(second)


# -- cross-process wake-ups -------------------------------------------------------------------


async def test_waiting_claimer_and_subscriber_see_another_process_commit(data: Path) -> None:
    async with _backend(data) as b:
        await b.records.create_project(ProjectCreate(slug="web"))
        seen: list[str] = []

        async def listen() -> None:
            async for event in b.events.subscribe("web"):
                seen.append(event.kind)
                if len(seen) == 2:
                    return

        listener = asyncio.create_task(listen())
        proc = await _spawn("create", str(data), "web", "2", "0.5")
        assert (await _line(proc))["op"] == "ready"
        claim = await b.dispatch.claim("web", "waiter", wait=30)
        assert claim is not None  # woken by the other process's commit, not by the timeout
        assert claim.task.title in {"late 0", "late 1"}
        created = await _line(proc)
        assert created["op"] == "created"
        await asyncio.wait_for(listener, 30)
        assert seen == ["created", "created"]
        await proc.wait()


@pytest.mark.postgres
async def test_flatfile_to_postgres_and_back_is_identical(data: Path, postgres_backend: object) -> None:
    """Issue 6: flatfile → export → import into Postgres → export → identical dump (modulo VOLATILE_FIELDS)."""
    from queue_service.backend import Backend

    assert isinstance(postgres_backend, Backend)
    async with _backend(data) as ff:
        svc = QueueService(ff)
        await svc.create_project({"slug": "move", "key_prefix": "MV"})
        await svc.create_mission("move", {"id": "m2", "milestones": [{"id": "a", "name": "A"}]})
        t1, _t2, _t3 = await svc.create_tasks(
            "move",
            [
                {"title": "a", "labels": ["x"], "extra": {"k": "v"}},
                {"title": "b", "depends_on": ["#0"], "mission": "m2", "milestone": "a"},
                {"title": "c", "key": "GW-001"},
            ],
        )
        await svc.add_note("move", t1.key, "me", "hello")
        c = await svc.claim("move", "x")
        assert c is not None
        await svc.complete("move", c.task.key, c.lease.token, {"ok": True})
        await svc.claim("move", "y")  # a live lease: volatile, not carried over
        first = snapshot.dumps(await svc.export_project("move"), source="flatfile")
    await postgres_backend.records.import_project(snapshot.loads(first))
    second = snapshot.dumps(await postgres_backend.records.export_project("move"), source="postgres")
    assert snapshot.comparable(first) == snapshot.comparable(second)
