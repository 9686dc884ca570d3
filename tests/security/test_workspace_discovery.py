"""Finding 5: one project's bad workspace path (a component over 255 bytes: ENAMETOOLONG) must not
stop sync discovery for every project, and ``GET …/sync`` must answer, not 500.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from queue_service.models import ProjectCreate
from tests.security.workspace_support import error_of, make_layout, seed, stage

pytestmark = pytest.mark.timeout(60)

LONG = "x" * 300


async def test_overlong_workspace_component_is_refused_by_the_api(tmp_path: Path) -> None:
    async with stage(tmp_path) as st:
        outside, stored = st.outside_files(), await st.stored()
        response = await st.attacker.patch("/v1/projects/evil", json={"workspace": f"evil/{LONG}"})
        assert response.status_code == 422, response.text
        assert "255 bytes" in error_of(response)["message"]
        await st.settle()
        assert st.outside_files() == outside
        assert await st.stored() == stored


async def test_stored_overlong_workspace_does_not_stop_the_other_projects(tmp_path: Path) -> None:
    make_layout(tmp_path)
    await seed(tmp_path / "data", ProjectCreate(slug="evil", workspace=str(tmp_path / "root" / LONG)))
    async with stage(tmp_path) as st:
        victim = await st.operator.post("/v1/projects/victim/tasks", json={"title": "Still synced"})
        assert victim.status_code == 201, victim.text
        stored = await st.stored()
        await st.settle()
        assert "Still synced" in (st.root / "victim" / "TASKS.md").read_text()
        response = await st.operator.get("/v1/projects/evil/sync")
        assert response.status_code == 200, response.text
        body = response.json()
        assert "255 bytes" in (body.get("disabled") or ""), body
        after = await st.stored()
        assert (after["evil"], after["evil:workspace"]) == (stored["evil"], stored["evil:workspace"])
