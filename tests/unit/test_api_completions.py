"""REST: ``POST /completions`` finishes a batch of claimed tasks, one outcome per item."""

from __future__ import annotations

import httpx

from tests.unit.api_support import app, http, mem, project

__all__ = ["app", "http", "mem", "project"]  # fixtures used below

P = "/v1/projects/web"


async def _claim(http: httpx.AsyncClient, n: int) -> list[dict[str, str]]:
    for i in range(n):
        assert (await http.post(f"{P}/tasks", json={"title": f"t{i}"})).status_code == 201
    claims = (await http.post(f"{P}/claims", json={"agent": "a", "limit": n})).json()["claims"]
    assert len(claims) == n
    return [{"key": c["task"]["key"], "token": c["lease"]["token"]} for c in claims]


async def test_completions_finish_each_item_and_refuse_a_bad_token_alone(http: httpx.AsyncClient, project: str) -> None:
    items = await _claim(http, 3)
    body = [
        {**items[0], "result": {"n": 1}},
        {"key": items[1]["key"], "token": "not-the-token"},
        items[2],
    ]
    response = await http.post(f"{P}/completions", json={"items": body})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["key"] for r in results] == [i["key"] for i in items]
    assert results[0]["task"]["status"] == "done" and results[0]["task"]["result"] == {"n": 1}
    assert results[0]["error"] is None
    assert results[1]["task"] is None and results[1]["error"]["code"] == "lease_invalid"
    assert results[2]["task"]["status"] == "done"
    # the refused item is untouched: still in progress under its real token, which still completes it
    again = await http.post(f"{P}/tasks/{items[1]['key']}/complete", json={"token": items[1]["token"]})
    assert again.status_code == 200 and again.json()["status"] == "done"
    # a token completes at most once: repeating the batch refuses every item
    repeat = (await http.post(f"{P}/completions", json={"items": items})).json()["results"]
    assert [r["error"]["code"] for r in repeat] == ["lease_invalid"] * 3


async def test_completions_are_validated_whole(http: httpx.AsyncClient, project: str) -> None:
    items = await _claim(http, 1)
    for bad in (
        {"items": []},
        {"items": [{"key": items[0]["key"]}]},  # no token
        {"items": [{**items[0], "extra": 1}]},
        {"items": [{"key": "bad key!", "token": "x"}]},
        {"items": [items[0]] * 1001},
    ):
        assert (await http.post(f"{P}/completions", json=bad)).status_code in (400, 422), bad
    # nothing was completed by the refused batches
    task = (await http.get(f"{P}/tasks/{items[0]['key']}")).json()
    assert task["status"] == "in-progress"
