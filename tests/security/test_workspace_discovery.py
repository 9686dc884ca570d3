"""Finding 5: one project's bad workspace path (a component over 255 bytes: ENAMETOOLONG) must not
stop sync discovery for every project, and ``GET …/sync`` must answer, not 500.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flatfile.backend import FlatfileBackend
from queue_service.models import MissionCreate, MissionStatus, ProjectCreate
from tests.security.workspace_support import FAST, error_of, make_layout, seed, stage

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


async def test_stored_mission_with_a_bad_tasks_file_is_not_synced(tmp_path: Path) -> None:
    # finding 9 as stored before this change: tasks_file "." (lock file in the workspace's parent)
    # and one reaching victim's file; both missions are reported, nothing is written
    make_layout(tmp_path)
    evil = ProjectCreate(slug="evil", workspace=str(tmp_path / "root" / "evil"))
    (tmp_path / "root" / "evil").mkdir()
    backend = FlatfileBackend.from_url(f"file://{tmp_path / 'data'}", config=FAST)
    async with backend:
        await backend.records.create_project(evil)
        for mid, tasks_file in (("dot", "."), ("over", "../victim/TASKS.md")):
            # model_construct: the input rules of today would refuse these, as they should
            await backend.records.create_mission(
                "evil",
                MissionCreate.model_construct(
                    id=mid, name=mid, status=MissionStatus.ACTIVE, milestones=[], tasks_file=tasks_file
                ),
            )
    async with stage(tmp_path) as st:
        await st.operator.post("/v1/projects/victim/tasks", json={"title": "Victim plan"})
        await st.settle()
        victim_file = st.root / "victim" / "TASKS.md"
        before, outside, stored = victim_file.read_bytes(), st.outside_files(), await st.stored()
        await st.attacker.post("/v1/projects/evil/tasks", json={"title": "Evil row", "mission": "over"})
        stored = await st.stored()
        await st.settle()
        assert victim_file.read_bytes() == before
        assert not (st.root / ".evil.lock").exists() and not (st.root / "evil.lock").exists()
        assert st.outside_files() == outside
        assert await st.stored() == stored
        files = {f["mission"]: f for f in (await st.sync_status("evil"))["files"]}
        assert "'.'" in files["dot"]["problem"] and "sync disabled" in files["dot"]["problem"]
        assert "'..'" in files["over"]["problem"]
