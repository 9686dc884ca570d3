"""The REST API over the in-memory backend: paths, status codes, error shapes, ETags, SSE, coord."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from queue_service import exceptions
from queue_service.api.errors import install_error_handlers
from queue_service.app import create_app
from queue_service.backend import DispatchConfig
from queue_service.testing import InMemoryBackend
from tests.unit.api_support import (
    FAST,
    add_token,
    app,
    error_of,
    http,
    http_client,
    mem,
    project,
    read_sse,
    running,
    settings,
)

__all__ = ["app", "http", "mem", "project"]  # fixtures used below

P = "/v1/projects/web"


async def _task(http: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    response = await http.post(f"{P}/tasks", json={"title": "t", **fields})
    assert response.status_code == 201, response.text
    return dict(response.json())


async def _claim(http: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    response = await http.post(f"{P}/claims", json={"agent": "agent-1", **fields})
    assert response.status_code == 200, response.text
    return dict(response.json())


# -- health ------------------------------------------------------------------------------------


async def test_healthz_and_readyz(http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).json()["status"] == "ok"
    ready = await http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["backend"] == "memory"


class _DownBackend(InMemoryBackend):
    async def ping(self) -> None:
        raise exceptions.BackendUnavailable("database is down: connection refused")


async def test_readyz_503_with_reason() -> None:
    async with running(create_app(settings(), backend=_DownBackend(config=FAST))) as application:
        async with http_client(application) as client:
            response = await client.get("/readyz")
    assert response.status_code == 503
    err = error_of(response)
    assert err["code"] == "backend_unavailable"
    assert "connection refused" in err["message"]
    assert response.headers["Retry-After"]


async def test_requests_before_startup_are_503_not_500() -> None:
    async with http_client(create_app(settings())) as client:
        response = await client.get("/v1/projects")
    assert response.status_code == 503
    assert error_of(response)["code"] == "backend_unavailable"


# -- projects and missions ----------------------------------------------------------------------


async def test_projects_crud(http: httpx.AsyncClient) -> None:
    created = await http.post("/v1/projects", json={"slug": "web", "name": "Web"})
    assert created.status_code == 201
    assert created.json()["key_prefix"] == "WEB"
    dup = await http.post("/v1/projects", json={"slug": "web"})
    assert dup.status_code == 409
    assert error_of(dup)["code"] == "already_exists"
    assert [p["slug"] for p in (await http.get("/v1/projects")).json()["items"]] == ["web"]
    patched = await http.patch(P, json={"name": "Website"})
    assert patched.status_code == 200
    assert patched.json()["name"] == "Website"
    missing = await http.get("/v1/projects/nope")
    assert missing.status_code == 404
    assert error_of(missing)["code"] == "project_not_found"


@pytest.mark.parametrize("slug", ["Web", "-web", "a" * 64, "we_b", "web!"])
async def test_bad_slugs_are_422(http: httpx.AsyncClient, slug: str) -> None:
    response = await http.post("/v1/projects", json={"slug": slug})
    assert response.status_code == 422
    assert error_of(response)["code"] == "validation_error"


async def test_bad_path_params_are_422_or_404(http: httpx.AsyncClient, project: str) -> None:
    bad_project = await http.get("/v1/projects/BAD!/tasks")
    assert bad_project.status_code == 422
    assert error_of(bad_project)["details"]["problems"][0]["field"] == "path.project"
    bad_key = await http.get(f"{P}/tasks/" + "x" * 65)
    assert bad_key.status_code == 422
    nested = await http.get(f"{P}/tasks/a/b/c")
    assert nested.status_code == 404
    assert error_of(nested)["code"] == "not_found"


async def test_missions(http: httpx.AsyncClient, project: str) -> None:
    body = {"id": "checkout", "name": "Checkout", "milestones": [{"id": "m1", "name": "Cart"}]}
    created = await http.post(f"{P}/missions", json=body)
    assert created.status_code == 201
    assert created.json()["milestones"][0]["id"] == "m1"
    ids = [m["id"] for m in (await http.get(f"{P}/missions")).json()["items"]]
    assert ids == ["default", "checkout"]
    assert (await http.get(f"{P}/missions/checkout")).json()["name"] == "Checkout"
    missing = await http.get(f"{P}/missions/nope")
    assert missing.status_code == 404
    assert error_of(missing)["code"] == "mission_not_found"


async def test_project_mission_and_event_lists_are_bounded(http: httpx.AsyncClient, project: str) -> None:
    """Issue 11: a default page, a bounded ``limit`` (422 beyond), and a cursor when more follow."""
    for i in range(3):
        assert (await http.post(f"{P}/missions", json={"id": f"m{i}"})).status_code == 201
    first = (await http.get(f"{P}/missions", params={"limit": 2})).json()
    assert [m["id"] for m in first["items"]] == ["default", "m0"] and first["total"] == 4
    rest = (await http.get(f"{P}/missions", params={"limit": 2, "cursor": first["next_cursor"]})).json()
    assert [m["id"] for m in rest["items"]] == ["m1", "m2"] and rest["next_cursor"] is None
    everything = (await http.get(f"{P}/missions")).json()
    assert len(everything["items"]) == 4 and everything["next_cursor"] is None
    projects = (await http.get("/v1/projects", params={"limit": 1})).json()
    assert len(projects["items"]) == 1 and projects["total"] >= 1
    for url in ("/v1/projects", f"{P}/missions"):
        for bad in ({"limit": 1001}, {"limit": 0}, {"cursor": "x"}):
            response = await http.get(url, params=bad)
            assert response.status_code == 422, (url, bad, response.text)
    for i in range(5):
        await http.post(f"{P}/tasks", json={"title": f"t{i}"})
    replay = await http.get(f"{P}/events", params={"follow": "false", "after": "0", "limit": 2})
    assert replay.text.count("\ndata: ") + replay.text.startswith("data: ") == 2
    assert ": truncated; 2 events shown; resume with after=" in replay.text
    whole = await http.get(f"{P}/events", params={"follow": "false", "after": "0"})
    assert whole.text.count("data: ") >= 5 and "truncated" not in whole.text  # no limit: the whole log
    assert (await http.get(f"{P}/events", params={"follow": "false", "limit": 10_001})).status_code == 422


# -- tasks --------------------------------------------------------------------------------------


async def test_create_get_and_etag(http: httpx.AsyncClient, project: str) -> None:
    created = await http.post(f"{P}/tasks", json={"title": "Design", "priority": 1, "labels": ["ui"]})
    assert created.status_code == 201
    assert created.headers["ETag"] == '"1"'
    task = created.json()
    assert (task["key"], task["priority"], task["status"]) == ("WEB-1", "P1", "not-started")
    got = await http.get(f"{P}/tasks/WEB-1")
    assert got.headers["ETag"] == '"1"'
    missing = await http.get(f"{P}/tasks/WEB-99")
    assert missing.status_code == 404
    assert error_of(missing)["code"] == "task_not_found"


async def test_batch_with_index_refs_is_all_or_nothing(http: httpx.AsyncClient, project: str) -> None:
    batch = {"tasks": [{"title": "schema"}, {"title": "api", "depends_on": ["#0"]}]}
    created = await http.post(f"{P}/tasks/batch", json=batch)
    assert created.status_code == 201
    first, second = created.json()["items"]
    assert second["depends_on"] == [first["key"]]

    unknown = await http.post(
        f"{P}/tasks/batch", json={"tasks": [{"title": "x"}, {"title": "y", "depends_on": ["#7"]}]}
    )
    assert unknown.status_code == 422
    assert error_of(unknown)["code"] == "unknown_dependency"
    cycle = await http.post(
        f"{P}/tasks/batch",
        json={"tasks": [{"title": "x", "depends_on": ["#1"]}, {"title": "y", "depends_on": ["#0"]}]},
    )
    assert cycle.status_code == 422
    assert error_of(cycle)["code"] == "dependency_cycle"
    page = (await http.get(f"{P}/tasks")).json()
    assert len(page["items"]) == 2  # the failed batches created nothing
    empty = await http.post(f"{P}/tasks/batch", json={"tasks": []})
    assert empty.status_code == 422


async def test_list_filters_and_cursor(http: httpx.AsyncClient, project: str) -> None:
    for i in range(5):
        await _task(http, title=f"t{i}", role="dev" if i % 2 else "qa", labels=["x"] if i < 2 else [])
    await _claim(http, roles=["qa"])  # WEB-1 in progress
    pages: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        body = (await http.get(f"{P}/tasks", params=params)).json()
        pages.append(",".join(t["key"] for t in body["items"]))
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert ",".join(pages) == "WEB-1,WEB-2,WEB-3,WEB-4,WEB-5"

    async def keys(**params: Any) -> list[str]:
        response = await http.get(f"{P}/tasks", params=params)
        assert response.status_code == 200, response.text
        return [t["key"] for t in response.json()["items"]]

    assert await keys(role="dev") == ["WEB-2", "WEB-4"]
    assert await keys(status="wip") == ["WEB-1"]
    assert await keys(status=["in-progress", "todo"], label="x") == ["WEB-1", "WEB-2"]
    assert await keys(status="done,in-progress") == ["WEB-1"]
    assert await keys(ready="true") == ["WEB-2", "WEB-3", "WEB-4", "WEB-5"]
    assert await keys(assignee="agent-1") == ["WEB-1"]

    bad_status = await http.get(f"{P}/tasks", params={"status": "bogus"})
    assert bad_status.status_code == 422
    assert error_of(bad_status)["code"] == "invalid_status"
    bad_cursor = await http.get(f"{P}/tasks", params={"cursor": "garbage!!"})
    assert bad_cursor.status_code == 422
    assert (await http.get(f"{P}/tasks", params={"limit": 0})).status_code == 422
    assert (await http.get(f"{P}/tasks", params={"limit": 5000})).status_code == 422


async def test_patch_if_match_and_412(http: httpx.AsyncClient, project: str) -> None:
    await _task(http)
    ok = await http.patch(f"{P}/tasks/WEB-1", json={"title": "renamed"}, headers={"If-Match": '"1"'})
    assert ok.status_code == 200
    assert ok.headers["ETag"] == '"2"'
    stale = await http.patch(f"{P}/tasks/WEB-1", json={"title": "again"}, headers={"If-Match": '"1"'})
    assert stale.status_code == 412
    assert error_of(stale)["code"] == "version_conflict"
    weak = await http.patch(f"{P}/tasks/WEB-1", json={"priority": "P0"}, headers={"If-Match": 'W/"2"'})
    assert weak.status_code == 200
    anyv = await http.patch(f"{P}/tasks/WEB-1", json={"priority": "P1"}, headers={"If-Match": "*"})
    assert anyv.status_code == 200
    bad = await http.patch(f"{P}/tasks/WEB-1", json={"priority": "P1"}, headers={"If-Match": "yesterday"})
    assert bad.status_code == 422
    unconditional = await http.patch(f"{P}/tasks/WEB-1", json={"status": "done"})
    assert unconditional.status_code == 200
    illegal = await http.patch(f"{P}/tasks/WEB-1", json={"status": "failed"})
    assert illegal.status_code == 409
    assert error_of(illegal)["code"] == "invalid_transition"
    unknown_field = await http.patch(f"{P}/tasks/WEB-1", json={"colour": "red"})
    assert unknown_field.status_code == 422


async def test_notes_cancel_retry_blockers_dependents(http: httpx.AsyncClient, project: str) -> None:
    await _task(http, title="a")
    await _task(http, title="b", depends_on=["WEB-1"])
    note = await http.post(f"{P}/tasks/WEB-1/notes", json={"text": "looks good", "author": "lead"})
    assert note.status_code == 201
    assert [n["text"] for n in (await http.get(f"{P}/tasks/WEB-1/notes")).json()["items"]] == ["looks good"]
    assert (await http.post(f"{P}/tasks/WEB-1/notes", json={"text": ""})).status_code == 422
    assert [t["key"] for t in (await http.get(f"{P}/tasks/WEB-2/blockers")).json()["items"]] == ["WEB-1"]
    assert [t["key"] for t in (await http.get(f"{P}/tasks/WEB-1/dependents")).json()["items"]] == ["WEB-2"]

    cancelled = await http.post(f"{P}/tasks/WEB-1/cancel", json={"reason": "not needed"})
    assert cancelled.json()["status"] == "cancelled"
    assert (await http.get(f"{P}/tasks/WEB-2")).json()["status"] == "blocked"
    json_only = {"Content-Type": "application/json"}  # no body, but state changes must be JSON (api.edge)
    assert (await http.post(f"{P}/tasks/WEB-1/cancel", headers=json_only)).status_code == 200  # idempotent
    retried = await http.post(f"{P}/tasks/WEB-1/retry", headers=json_only)
    assert retried.json()["status"] == "not-started"
    assert (await http.get(f"{P}/tasks/WEB-2")).json()["status"] == "not-started"
    again = await http.post(f"{P}/tasks/WEB-1/retry", headers=json_only)
    assert again.status_code == 409
    assert error_of(again)["code"] == "invalid_transition"


# -- dispatch -----------------------------------------------------------------------------------


async def test_claim_204_when_nothing_ready(http: httpx.AsyncClient, project: str) -> None:
    response = await http.post(f"{P}/claims", json={"agent": "a"})
    assert response.status_code == 204
    assert response.content == b""


async def test_claim_long_poll_wakes_when_a_task_arrives(http: httpx.AsyncClient, project: str) -> None:
    claim = asyncio.create_task(http.post(f"{P}/claims", json={"agent": "a", "wait_seconds": 10}))
    await asyncio.sleep(0.1)
    await _task(http)
    response = await asyncio.wait_for(claim, 10)
    assert response.status_code == 200
    assert response.json()["task"]["key"] == "WEB-1"


async def test_claim_heartbeat_complete(http: httpx.AsyncClient, project: str) -> None:
    await _task(http, title="a", role="dev")
    await _task(http, title="b", depends_on=["WEB-1"], role="dev")
    assert (await http.post(f"{P}/claims", json={"agent": "x", "roles": ["qa"]})).status_code == 204
    claim = await _claim(http, roles=["dev"], lease_seconds=5)
    assert set(claim) == {"task", "lease"}
    assert set(claim["lease"]) == {"token", "holder", "expires_at", "seconds"}
    assert claim["lease"]["holder"] == "agent-1"
    token = claim["lease"]["token"]

    beat = await http.post(f"{P}/tasks/WEB-1/heartbeat", json={"token": token, "lease_seconds": 10})
    assert beat.status_code == 200
    assert beat.json()["expires_at"] > claim["lease"]["expires_at"]
    wrong = await http.post(f"{P}/tasks/WEB-1/complete", json={"token": "nope"})
    assert wrong.status_code == 409
    assert error_of(wrong)["code"] == "lease_invalid"
    done = await http.post(f"{P}/tasks/WEB-1/complete", json={"token": token, "result": {"pr": 7}})
    assert done.status_code == 200
    assert done.json()["status"] == "done"
    assert done.json()["result"] == {"pr": 7}
    again = await http.post(f"{P}/tasks/WEB-1/complete", json={"token": token})
    assert again.status_code == 409
    assert error_of(again)["code"] == "lease_invalid"
    assert (await _claim(http))["task"]["key"] == "WEB-2"  # the dependent became ready


async def test_fail_retryable_permanent_dead_letter_and_release(http: httpx.AsyncClient, project: str) -> None:
    await _task(http, title="a")
    await _task(http, title="b")
    one = await _claim(http)
    failed = await http.post(
        f"{P}/tasks/WEB-1/fail", json={"token": one["lease"]["token"], "error": "flaky", "retryable": True}
    )
    assert failed.json()["status"] == "not-started"
    assert failed.json()["attempts"] == 1
    two = await _claim(http)
    assert two["task"]["key"] == "WEB-2"
    released = await http.post(f"{P}/tasks/WEB-2/release", json={"token": two["lease"]["token"]})
    assert released.json()["status"] == "not-started"
    assert released.json()["attempts"] == 0
    three = await _claim(http)
    perm = await http.post(
        f"{P}/tasks/{three['task']['key']}/fail",
        json={"token": three["lease"]["token"], "error": "bad input", "retryable": False},
    )
    assert perm.json()["status"] == "failed"
    dead = (await http.get(f"{P}/dead-letter")).json()["items"]
    assert [t["key"] for t in dead] == [three["task"]["key"]]
    stale = await http.post(f"{P}/tasks/WEB-2/release", json={"token": two["lease"]["token"]})
    assert stale.status_code == 409


async def test_results_and_stats(http: httpx.AsyncClient, project: str) -> None:
    await _task(http, title="a")
    await _task(http, title="b")
    claim = await _claim(http)
    await http.post(f"{P}/tasks/WEB-1/complete", json={"token": claim["lease"]["token"], "result": [1, 2]})
    body = (await http.post(f"{P}/results", json={"keys": ["WEB-2", "WEB-1", "WEB-9"]})).json()
    assert [(r["key"], r["status"], r["result"]) for r in body["items"]] == [
        ("WEB-2", "not-started", None),
        ("WEB-1", "done", [1, 2]),
    ]
    assert body["missing"] == ["WEB-9"]
    assert (await http.post(f"{P}/results", json={"keys": []})).status_code == 422
    stats = (await http.get(f"{P}/stats")).json()
    assert stats["by_status"]["done"] == 1
    assert stats["ready_by_role"] == {"default": 1}


async def test_metrics(http: httpx.AsyncClient, project: str) -> None:
    await _task(http)
    claim = await _claim(http)
    await http.post(f"{P}/claims", json={"agent": "b"})
    await http.post(f"{P}/tasks/WEB-1/complete", json={"token": claim["lease"]["token"]})
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'queue_tasks{project="web",status="done"} 1.0' in text
    assert 'queue_claims_total{project="web"} 1.0' in text
    assert 'queue_claims_empty_total{project="web"} 1.0' in text
    assert 'queue_completions_total{project="web"} 1.0' in text
    assert 'queue_claim_latency_seconds_count{outcome="claimed",project="web"} 1.0' in text


async def test_queue_full_is_429() -> None:
    backend = InMemoryBackend(config=DispatchConfig(max_queue_depth=2))
    async with running(create_app(settings(), backend=backend)) as application, http_client(application) as client:
        await client.post("/v1/projects", json={"slug": "web"})
        codes = [(await client.post(f"{P}/tasks", json={"title": f"t{i}"})).status_code for i in range(4)]
        response = await client.post(f"{P}/tasks", json={"title": "more"})
    assert 429 in codes
    assert response.status_code == 429
    assert error_of(response)["code"] == "queue_full"
    assert response.headers["retry-after"] == "1"


# -- error mapping ------------------------------------------------------------------------------


def _all_errors(cls: type[exceptions.QueueServiceError]) -> list[type[exceptions.QueueServiceError]]:
    return [cls, *(sub for child in cls.__subclasses__() for sub in _all_errors(child))]


@pytest.mark.parametrize("cls", _all_errors(exceptions.QueueServiceError), ids=lambda c: c.__name__)
async def test_every_domain_error_maps_to_its_status_and_code(cls: type[exceptions.QueueServiceError]) -> None:
    probe = FastAPI()
    install_error_handlers(probe)

    @probe.get("/boom")
    async def boom() -> None:
        raise cls("it went wrong", task="WEB-1")

    async with http_client(probe) as client:
        response = await client.get("/boom")
    assert response.status_code == cls.http_status
    err = error_of(response)
    assert err["code"] == cls.code
    if cls.http_status < 500 or cls.http_status == 503:
        assert err["message"] == "it went wrong"
    else:
        assert "it went wrong" not in err["message"]  # may quote the driver: logged, never sent
    if cls.http_status < 500 or cls.http_status == 503:
        assert err["details"] == {"task": "WEB-1"}
    else:
        assert err["details"] == {}  # 5xx details may carry driver text: logged, never sent
    if cls is exceptions.AuthError:
        assert response.headers["WWW-Authenticate"] == "Bearer"


class _BrokenBackend(InMemoryBackend):
    def __init__(self) -> None:
        super().__init__(config=FAST)

        async def stats(project: str) -> Any:
            raise RuntimeError("secret internals: password=hunter2")

        self.records.stats = stats  # type: ignore[method-assign]


async def test_unexpected_errors_are_500_json_without_internals(caplog: pytest.LogCaptureFixture) -> None:
    async with running(create_app(settings(), backend=_BrokenBackend())) as application:
        async with http_client(application) as client:
            await client.post("/v1/projects", json={"slug": "web"})
            response = await client.get(f"{P}/stats")
    assert response.status_code == 500
    assert error_of(response) == {"code": "internal", "message": "internal server error", "details": {}}
    assert "hunter2" not in response.text
    assert "secret internals" in caplog.text  # but it is logged


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b'{"slug": NaN}', 400, "invalid_json"),
        (b'{"slug": Infinity}', 400, "invalid_json"),
        (b'{"slug": "\\ud800"}', 400, "invalid_json"),
        (b'{"slug": "a\\u0000b"}', 400, "invalid_json"),
        (b"[1, 2]", 422, "validation_error"),
        (b'"web"', 422, "validation_error"),
        (b'{"slug": "web", "extra": 1}', 422, "validation_error"),
        (b'{"slug": 12}', 422, "validation_error"),
    ],
)
async def test_bad_bodies(http: httpx.AsyncClient, body: bytes, status: int, code: str) -> None:
    response = await http.post("/v1/projects", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert error_of(response)["code"] == code


async def test_nan_result_and_huge_wait_are_refused(http: httpx.AsyncClient, project: str) -> None:
    await _task(http)
    claim = await _claim(http)
    token = claim["lease"]["token"]
    nan = await http.post(
        f"{P}/tasks/WEB-1/complete",
        content=b'{"token": "%s", "result": [NaN]}' % token.encode(),
        headers={"Content-Type": "application/json"},
    )
    assert nan.status_code == 400
    assert (await http.post(f"{P}/claims", json={"agent": "a", "wait_seconds": 301})).status_code == 422
    assert (await http.post(f"{P}/claims", json={"agent": " "})).status_code == 422
    assert (await http.post(f"{P}/claims", json={"agent": "a", "lease_seconds": 0})).status_code == 422


async def test_http_errors_use_the_same_shape(http: httpx.AsyncClient) -> None:
    unknown = await http.get("/v2/nothing")
    assert unknown.status_code == 404
    assert error_of(unknown)["code"] == "not_found"
    wrong_method = await http.delete("/v1/projects")
    assert wrong_method.status_code == 405
    assert error_of(wrong_method)["code"] == "method_not_allowed"


# -- server-sent events -------------------------------------------------------------------------


async def test_sse_replay_after_last_event_id(app: FastAPI, http: httpx.AsyncClient, project: str) -> None:
    await _task(http)
    claim = await _claim(http)
    await http.post(f"{P}/tasks/WEB-1/complete", json={"token": claim["lease"]["token"]})
    all_events = (await http.get(f"{P}/events", params={"follow": "false"})).text
    ids = [int(line[4:]) for line in all_events.splitlines() if line.startswith("id: ")]
    assert len(ids) >= 4 and ids == sorted(ids)

    status, events = await read_sse(app, f"{P}/events", count=2, headers=[("Last-Event-ID", str(ids[1]))])
    assert status == 200
    assert [e[0] for e in events] == ids[2:4]
    assert all(data["id"] == eid for eid, data in events)
    _, by_query = await read_sse(app, f"{P}/events", count=1, params={"last_event_id": str(ids[-2])})
    assert [e[0] for e in by_query] == [ids[-1]]
    # ?after= is the same resume point (issue 11: it used to be ignored)
    replay = (await http.get(f"{P}/events", params={"follow": "false", "after": str(ids[-2])})).text
    assert [int(line[4:]) for line in replay.splitlines() if line.startswith("id: ")] == [ids[-1]]
    assert (await http.get(f"{P}/events", params={"follow": "false", "after": "x"})).status_code == 422


async def test_sse_live_transitions_in_order_and_resume(app: FastAPI, http: httpx.AsyncClient, project: str) -> None:
    await _task(http)
    start = (await http.get(f"{P}/events", params={"follow": "false"})).text
    last = max(int(line[4:]) for line in start.splitlines() if line.startswith("id: "))

    async def work() -> None:
        claim = await _claim(http)
        await http.post(f"{P}/tasks/WEB-1/complete", json={"token": claim["lease"]["token"]})

    status, first = await read_sse(
        app, f"{P}/events", count=1, headers=[("Last-Event-ID", str(last))], after_start=work
    )
    assert status == 200
    assert first[0][1]["task"] == "WEB-1"
    assert first[0][1]["status"] == "in-progress"
    # reconnect as if only the first event had arrived: the rest comes, nothing twice, nothing lost
    _, rest = await read_sse(app, f"{P}/events", count=1, headers=[("Last-Event-ID", str(first[0][0]))])
    assert rest[0][0] > first[0][0]
    assert rest[0][1]["status"] == "done"
    replay = (await http.get(f"{P}/events", params={"follow": "false", "last_event_id": str(last)})).text
    replay_ids = [int(line[4:]) for line in replay.splitlines() if line.startswith("id: ")]
    assert replay_ids[:2] == [first[0][0], rest[0][0]]


async def test_sse_live_without_last_id_starts_now(app: FastAPI, http: httpx.AsyncClient, project: str) -> None:
    await _task(http, title="old")

    async def make() -> None:
        await asyncio.sleep(0.05)
        await _task(http, title="new")

    _, events = await read_sse(app, f"{P}/events", count=1, after_start=make)
    assert events[0][1]["task"] == "WEB-2"


async def test_sse_errors(app: FastAPI, http: httpx.AsyncClient, project: str) -> None:
    status, _ = await read_sse(app, "/v1/projects/nope/events", count=1)
    assert status == 404
    bad = await http.get(f"{P}/events", headers={"Last-Event-ID": "abc"})
    assert bad.status_code == 422
    assert error_of(bad)["code"] == "validation_error"


# -- coord parity -------------------------------------------------------------------------------


async def test_coord_views(http: httpx.AsyncClient, project: str) -> None:
    await http.post(
        f"{P}/missions",
        json={"id": "checkout", "name": "Checkout", "milestones": [{"id": "1", "name": "Cart"}]},
    )
    await _task(http, title="Write PRD", mission="checkout", milestone="1", extra={"issue": "#41", "estimate": "4K"})
    await _task(http, title="Schema", mission="checkout", milestone="1", depends_on=["WEB-1"])
    claim = await _claim(http)
    await http.post(f"{P}/tasks/WEB-1/notes", json={"text": "started", "token": claim["lease"]["token"]})

    status = (await http.get("/api/coord/status")).json()  # the only project, the only active mission
    assert status["project"] == "web"
    assert status["mission"]["id"] == "checkout"
    assert status["counts"]["total"] == 2
    assert status["counts"]["in-progress"] == 1
    assert status["milestones"][0]["total"] == 2
    assert status["active_tasks"][0]["id"] == "WEB-1"

    tasks = (await http.get("/api/coord/tasks", params={"project": "web", "mission": "checkout"})).json()["tasks"]
    first = tasks[0]
    assert (first["id"], first["status"], first["description"], first["agent"]) == (
        "WEB-1",
        "in-progress",
        "Write PRD",
        "agent-1",
    )
    assert (first["issue"], first["estimate"]) == ("#41", "4K")
    assert tasks[1]["depends_on"] == ["WEB-1"]
    only_todo = (await http.get("/api/coord/tasks", params={"status": "todo"})).json()["tasks"]
    assert [t["id"] for t in only_todo] == ["WEB-2"]

    detail = (await http.get("/api/coord/tasks/WEB-2")).json()
    assert detail["blocked_by"] == ["WEB-1"]
    assert (await http.get("/api/coord/tasks/WEB-1")).json()["notes_log"][0]["text"] == "started"
    assert (await http.get("/api/coord/tasks/WEB-9")).status_code == 404

    await http.post("/v1/projects", json={"slug": "other"})
    ambiguous = await http.get("/api/coord/status")
    assert ambiguous.status_code == 422
    assert "pass ?project=" in error_of(ambiguous)["message"]


async def test_coord_without_projects_is_404(http: httpx.AsyncClient) -> None:
    response = await http.get("/api/coord/tasks")
    assert response.status_code == 404
    assert error_of(response)["code"] == "project_not_found"


# -- lifespan -----------------------------------------------------------------------------------


async def test_refuses_to_start_exposed_without_tokens() -> None:
    app = create_app(settings(host="0.0.0.0"), backend=InMemoryBackend(config=FAST))
    with pytest.raises(exceptions.ConfigurationError, match=r"refusing to start: bound to 0\.0\.0\.0"):
        async with running(app):
            pass


async def test_starts_exposed_with_a_token(mem: InMemoryBackend) -> None:
    await add_token(mem, "admin")
    async with running(create_app(settings(host="0.0.0.0"), backend=mem)) as application:
        async with http_client(application) as client:
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/v1/projects")).status_code == 401


async def test_orchestrator_started_and_stopped(monkeypatch: pytest.MonkeyPatch, mem: InMemoryBackend) -> None:
    import queue_service.app as app_module

    calls: list[str] = []

    class FakeOrchestrator:
        def __init__(self, backend: Any, interval: float) -> None:
            calls.append(f"init {interval}")

        def start(self) -> None:
            calls.append("start")

        async def stop(self) -> None:
            calls.append("stop")

    monkeypatch.setattr(app_module, "_make_orchestrator", lambda backend, interval: FakeOrchestrator(backend, interval))
    async with running(create_app(settings(orchestrator=True, sweep_seconds=0.5), backend=mem)):
        assert calls == ["init 0.5", "start"]
    assert calls == ["init 0.5", "start", "stop"]


async def test_app_built_from_settings_owns_its_backend() -> None:
    application = create_app(settings())
    async with running(application), http_client(application) as client:
        assert (await client.post("/v1/projects", json={"slug": "web"})).status_code == 201
    assert application.state.qs is None


async def test_openapi_lists_the_contract_paths(http: httpx.AsyncClient) -> None:
    paths = set((await http.get("/openapi.json")).json()["paths"])
    expected = {
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/projects",
        "/v1/projects/{project}",
        "/v1/projects/{project}/missions",
        "/v1/projects/{project}/missions/{mission}",
        "/v1/projects/{project}/tasks",
        "/v1/projects/{project}/tasks/batch",
        "/v1/projects/{project}/tasks/{key}",
        "/v1/projects/{project}/tasks/{key}/notes",
        "/v1/projects/{project}/tasks/{key}/cancel",
        "/v1/projects/{project}/tasks/{key}/retry",
        "/v1/projects/{project}/tasks/{key}/blockers",
        "/v1/projects/{project}/tasks/{key}/dependents",
        "/v1/projects/{project}/claims",
        "/v1/projects/{project}/tasks/{key}/heartbeat",
        "/v1/projects/{project}/tasks/{key}/complete",
        "/v1/projects/{project}/tasks/{key}/fail",
        "/v1/projects/{project}/tasks/{key}/release",
        "/v1/projects/{project}/results",
        "/v1/projects/{project}/stats",
        "/v1/projects/{project}/dead-letter",
        "/v1/projects/{project}/events",
        "/api/coord/status",
        "/api/coord/tasks",
        "/api/coord/tasks/{id}",
    }
    assert expected <= paths


async def test_real_orchestrator_expires_leases(mem: InMemoryBackend) -> None:
    async with running(create_app(settings(orchestrator=True, sweep_seconds=0.05), backend=mem)) as application:
        async with http_client(application) as client:
            await client.post("/v1/projects", json={"slug": "web"})
            await client.post(f"{P}/tasks", json={"title": "t"})
            claim = (await client.post(f"{P}/claims", json={"agent": "a", "lease_seconds": 0.2})).json()
            # nobody heartbeats: the monitor expires the lease and the task can be claimed again
            again = await client.post(f"{P}/claims", json={"agent": "b", "wait_seconds": 10})
            assert again.status_code == 200
            assert again.json()["task"]["attempts"] == 1
            stale = await client.post(f"{P}/tasks/WEB-1/complete", json={"token": claim["lease"]["token"]})
            assert stale.status_code == 409
