"""Issue 14 contract: a task carries its producer's W3C trace context on every backend — stored,
handed to the claimer, carried by export/import, and refused with a clear error when malformed."""

from __future__ import annotations

from pathlib import Path

import pytest

from queue_service import exceptions
from queue_service import snapshot as snapshot_format
from queue_service.backend import DispatchConfig
from queue_service.service import QueueService

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
STATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"


@pytest.fixture
async def web(svc: QueueService) -> str:
    await svc.create_project({"slug": "web", "key_prefix": "WEB"})
    return "web"


async def test_stored_listed_and_handed_to_the_claimer(svc: QueueService, web: str) -> None:
    created = await svc.create_task(web, {"title": "traced", "traceparent": PARENT, "tracestate": STATE})
    plain = await svc.create_task(web, {"title": "plain"})
    assert (created.traceparent, created.tracestate) == (PARENT, STATE)
    assert (plain.traceparent, plain.tracestate) == (None, None)
    got = await svc.get_task(web, created.key)
    assert (got.traceparent, got.tracestate) == (PARENT, STATE)
    listed = {t.key: t for t in (await svc.list_tasks(web)).items}
    assert listed[created.key].traceparent == PARENT
    claim = await svc.claim_next(web, "agent")
    assert claim is not None and claim.task.key == created.key
    assert (claim.task.traceparent, claim.task.tracestate) == (PARENT, STATE)
    done = await svc.complete(web, created.key, claim.lease.token, {"ok": True})
    assert done.traceparent == PARENT
    # the worker claim paths (single and batched) hand it over too
    await svc.create_tasks(web, [{"title": "b1", "traceparent": PARENT}])
    batch = await svc.claim_many(web, "worker", limit=5)
    assert {c.task.title: c.task.traceparent for c in batch} == {"plain": None, "b1": PARENT}


async def test_carried_by_export_and_import(svc: QueueService, web: str) -> None:
    await svc.create_task(web, {"title": "traced", "traceparent": PARENT, "tracestate": STATE})
    snap = snapshot_format.loads(snapshot_format.dumps(await svc.export_project(web)))
    assert [(t.traceparent, t.tracestate) for t in snap.tasks] == [(PARENT, STATE)]
    moved = snap.model_copy(
        update={
            "project": snap.project.model_copy(update={"slug": "web2"}),
            "missions": tuple(m.model_copy(update={"project": "web2"}) for m in snap.missions),
            "tasks": tuple(t.model_copy(update={"project": "web2"}) for t in snap.tasks),
            "events": tuple(e.model_copy(update={"project": "web2"}) for e in snap.events),
        }
    )
    await svc.import_project(moved)
    (task,) = (await svc.list_tasks("web2")).items
    assert (task.traceparent, task.tracestate) == (PARENT, STATE)


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"traceparent": "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01"}, "lowercase hex"),
        ({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"}, "W3C trace context"),
        ({"traceparent": "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}, "version ff"),
        ({"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"}, "trace id"),
        ({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"}, "parent id"),
        ({"traceparent": PARENT + "-extra"}, "nothing after the flags"),
        ({"traceparent": "01-" + "a" * 200}, "at most 128"),
        ({"traceparent": PARENT, "tracestate": "no equals sign"}, "key=value"),
        ({"traceparent": PARENT, "tracestate": "a=1,a=2"}, "twice"),
        ({"traceparent": PARENT, "tracestate": ",".join(f"k{i}=v" for i in range(33))}, "at most 32"),
        ({"traceparent": PARENT, "tracestate": "k=" + "v" * 600}, "at most 512"),
        ({"tracestate": STATE}, "needs a traceparent"),
    ],
)
async def test_malformed_trace_context_is_refused_and_nothing_stored(
    svc: QueueService, web: str, fields: dict[str, str], says: str
) -> None:
    with pytest.raises(exceptions.ValidationError) as err:
        await svc.create_task(web, {"title": "bad", **fields})
    assert says in err.value.message
    assert ("traceparent" in err.value.message) or ("tracestate" in err.value.message)
    assert (await svc.list_tasks(web)).items == ()


async def test_later_versions_may_append_fields(svc: QueueService, web: str) -> None:
    future = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-comes-next"
    assert (await svc.create_task(web, {"title": "v", "traceparent": future})).traceparent == future


async def test_flatfile_keeps_it_in_journal_and_snapshot(tmp_path: Path) -> None:
    from flatfile.backend import FlatfileBackend
    from flatfile.journal import CompactionPolicy

    data = tmp_path / "data"
    async with FlatfileBackend(data, config=DispatchConfig()) as backend:
        svc = QueueService(backend)
        await svc.create_project({"slug": "web", "key_prefix": "WEB"})
        await svc.create_task("web", {"title": "journalled", "traceparent": PARENT, "tracestate": STATE})
    # a fresh process replays the journal; then compaction folds it into a snapshot and a third reads that
    compact_now = CompactionPolicy(min_entries=1, ratio=0.0)
    async with FlatfileBackend(data, config=DispatchConfig(), compaction=compact_now) as backend:
        svc = QueueService(backend)
        assert (await svc.get_task("web", "WEB-1")).traceparent == PARENT
        await svc.create_task("web", {"title": "second", "traceparent": PARENT})
    assert list((data / "projects" / "web").glob("snapshot-*"))
    async with FlatfileBackend(data, config=DispatchConfig()) as backend:
        task = await QueueService(backend).get_task("web", "WEB-1")
        assert (task.traceparent, task.tracestate) == (PARENT, STATE)
