"""REST: ``POST /claims`` with ``limit`` claims a batch; without it the answer is unchanged."""

from __future__ import annotations

import httpx

from tests.unit.api_support import app, http, mem, project

__all__ = ["app", "http", "mem", "project"]  # fixtures used below

P = "/v1/projects/web"


async def test_claim_with_limit_returns_a_batch(http: httpx.AsyncClient, project: str) -> None:
    for title, priority in (("low", "P3"), ("top", "P0"), ("mid", "P2")):
        assert (await http.post(f"{P}/tasks", json={"title": title, "priority": priority})).status_code == 201
    response = await http.post(f"{P}/claims", json={"agent": "a", "limit": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"claims"}
    assert [c["task"]["title"] for c in body["claims"]] == ["top", "mid"]
    assert len({c["lease"]["token"] for c in body["claims"]}) == 2
    # without limit: the single-claim answer, exactly as before
    single = await http.post(f"{P}/claims", json={"agent": "a"})
    assert single.status_code == 200
    assert set(single.json()) == {"task", "lease"}
    assert single.json()["task"]["title"] == "low"
    assert (await http.post(f"{P}/claims", json={"agent": "a"})).status_code == 204
    empty = await http.post(f"{P}/claims", json={"agent": "a", "limit": 5})
    assert empty.status_code == 200
    assert empty.json() == {"claims": []}


async def test_claim_limit_is_validated(http: httpx.AsyncClient, project: str) -> None:
    for bad in (0, 1001, "x"):
        assert (await http.post(f"{P}/claims", json={"agent": "a", "limit": bad})).status_code == 422
