"""Finding 1 (critical) and 9: a project admin must not make the service read or write files outside
the operator's root (QUEUE_WORKSPACE).

Each test is the attack as reported: an admin token of project ``evil`` sends HTTP requests; the sync
then runs a full cycle. Each asserts the refusal (a 4xx naming the rule, or a sync ``problem``), that
nothing outside the root changed and that no stored data changed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from queue_service.models import ProjectCreate
from tests.security.workspace_support import AUTHORIZED_KEYS, error_of, seed, stage

pytestmark = pytest.mark.timeout(60)


async def _refused_patch(tmp_path: Path, workspace: str, *needles: str) -> None:
    async with stage(tmp_path) as st:
        outside, stored = st.outside_files(), await st.stored()
        response = await st.attacker.patch("/v1/projects/evil", json={"workspace": workspace})
        assert response.status_code == 422, response.text
        message = error_of(response)["message"]
        for needle in needles:
            assert needle in message, message
        await st.settle()
        assert st.outside_files() == outside
        assert await st.stored() == stored
    assert (tmp_path / "home" / ".ssh" / "authorized_keys").read_bytes() == AUTHORIZED_KEYS


async def test_absolute_workspace_is_refused(tmp_path: Path) -> None:
    # the reported attack: TASKS.md in ~/.ssh, a task description appended as an authorized key
    await _refused_patch(tmp_path, str(tmp_path / "home" / ".ssh"), "relative to QUEUE_WORKSPACE", "absolute")


async def test_tilde_workspace_is_refused(tmp_path: Path) -> None:
    # finding 9: "~" was expanded to the service user's home
    await _refused_patch(tmp_path, "~", "'~'")


async def test_tilde_prefixed_workspace_is_refused(tmp_path: Path) -> None:
    await _refused_patch(tmp_path, "~/.ssh", "'~'")


async def test_dotdot_workspace_is_refused(tmp_path: Path) -> None:
    await _refused_patch(tmp_path, "../home/.ssh", "'..'")


async def test_workspace_through_a_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    # a runner child (its cwd is a workspace) can plant this link
    async with stage(tmp_path) as st:
        (st.root / "evil").mkdir(exist_ok=True)
        os.symlink(st.home, st.root / "evil" / "escape")
    await _refused_patch(tmp_path, "evil/escape/.ssh", "outside QUEUE_WORKSPACE")


async def test_workspace_inside_the_data_directory_is_refused(tmp_path: Path) -> None:
    # the data directory inside the root: pointing a workspace at it would overwrite the journal
    (tmp_path / "root").mkdir()
    data = tmp_path / "root" / "data"
    async with stage(tmp_path, data=data) as st:
        st.extra_outside.append(data)
        await st.settle()
        outside, stored = st.outside_files(), await st.stored()
        for workspace in ("data", "data/projects"):
            response = await st.attacker.patch("/v1/projects/evil", json={"workspace": workspace})
            assert response.status_code == 422, response.text
            assert "data directory" in error_of(response)["message"]
        await st.settle()
        assert st.outside_files() == outside
        assert await st.stored() == stored


async def test_workspace_of_another_project_is_refused(tmp_path: Path) -> None:
    # the reported attack: A pointed at B's workspace copies B's tasks and writes A's tasks into B's file
    async with stage(tmp_path) as st:
        victim = await st.operator.post("/v1/projects/victim/tasks", json={"title": "Victim's own work"})
        assert victim.status_code == 201, victim.text
        await st.settle()
        victim_file = st.root / "victim" / "TASKS.md"
        assert "Victim's own work" in victim_file.read_text()
        inside = victim_file.read_bytes()
        outside, stored = st.outside_files(), await st.stored()
        for workspace in ("victim", "victim/sub"):
            response = await st.attacker.patch("/v1/projects/evil", json={"workspace": workspace})
            assert response.status_code == 422, response.text
            assert "overlaps the workspace of project victim" in error_of(response)["message"]
        await st.settle()
        assert victim_file.read_bytes() == inside
        assert st.outside_files() == outside
        assert await st.stored() == stored


async def test_workspace_containing_another_project_is_refused(tmp_path: Path) -> None:
    (tmp_path / "root" / "team" / "victim").mkdir(parents=True)
    await seed(tmp_path / "data", ProjectCreate(slug="victim", workspace=str(tmp_path / "root" / "team" / "victim")))
    async with stage(tmp_path) as st:
        stored = await st.stored()
        response = await st.attacker.patch("/v1/projects/evil", json={"workspace": "team"})
        assert response.status_code == 422, response.text
        assert "overlaps the workspace of project victim" in error_of(response)["message"]
        assert await st.stored() == stored


async def test_workspace_is_refused_when_the_operator_set_no_root(tmp_path: Path) -> None:
    async with stage(tmp_path, workspace=False) as st:
        outside, stored = st.outside_files(), await st.stored()
        for workspace in ("evil", str(tmp_path / "home" / ".ssh")):
            response = await st.attacker.patch("/v1/projects/evil", json={"workspace": workspace})
            assert response.status_code == 422, response.text
            assert "QUEUE_WORKSPACE is not set" in error_of(response)["message"]
        created = await st.operator.post("/v1/projects", json={"slug": "other", "workspace": "other"})
        assert created.status_code == 422, created.text
        assert st.outside_files() == outside
        assert await st.stored() == stored


@pytest.mark.parametrize(
    ("tasks_file", "rule"),
    [
        (".", "'.'"),  # finding 9: the lock file landed in the workspace's parent
        ("..", "'..'"),
        ("../victim/TASKS.md", "'..'"),
        ("./TASKS.md", "'.'"),
        ("/etc/TASKS.md", "relative"),
        ("~/TASKS.md", "[A-Za-z0-9._-]"),
        ("notes.txt", ".md"),
        (".ssh/authorized_keys", ".md"),
        ("a/b/c/d/TASKS.md", "at most 4"),
        ("docs//TASKS.md", "empty"),
        ("TASKS.md\n", "[A-Za-z0-9._-]"),
        ("docs/TASKS .md", "[A-Za-z0-9._-]"),
    ],
)
async def test_mission_tasks_file_outside_the_rules_is_refused(tmp_path: Path, tasks_file: str, rule: str) -> None:
    async with stage(tmp_path) as st:
        outside, stored = st.outside_files(), await st.stored()
        response = await st.attacker.post("/v1/projects/evil/missions", json={"id": "m1", "tasks_file": tasks_file})
        assert response.status_code == 422, response.text
        message = error_of(response)["message"]
        assert "tasks_file" in message and rule in message, message
        await st.settle()
        assert st.outside_files() == outside
        assert await st.stored() == stored


async def test_tasks_file_in_a_nested_directory_is_accepted(tmp_path: Path) -> None:
    # the rule still lets a plan live in docs/: the refusals above are not a blanket "no"
    async with stage(tmp_path) as st:
        (st.root / "evil" / "docs").mkdir(parents=True)
        response = await st.attacker.post(
            "/v1/projects/evil/missions", json={"id": "m1", "tasks_file": "docs/plan/TASKS.md"}
        )
        assert response.status_code == 201, response.text
        (st.root / "evil" / "docs" / "plan").mkdir()
        await st.settle()
        assert (st.root / "evil" / "docs" / "plan" / "TASKS.md").is_file()


async def test_tasks_file_through_a_symlinked_directory_is_not_followed(tmp_path: Path) -> None:
    # docs/ replaced by a link to ~/.ssh (a runner child can do it): the sync must not write there
    async with stage(tmp_path) as st:
        (st.root / "evil").mkdir(exist_ok=True)
        os.symlink(st.home / ".ssh", st.root / "evil" / "docs")
        outside = st.outside_files()
        response = await st.attacker.post(
            "/v1/projects/evil/missions", json={"id": "m1", "tasks_file": "docs/TASKS.md"}
        )
        assert response.status_code == 201, response.text
        task = await st.attacker.post(
            "/v1/projects/evil/tasks", json={"title": "ssh-ed25519 AAAA attacker", "mission": "m1"}
        )
        assert task.status_code == 201, task.text
        stored = await st.stored()
        await st.settle()
        assert st.outside_files() == outside
        assert not (st.home / ".ssh" / "TASKS.md").exists()
        assert not (st.home / ".ssh" / ".TASKS.md.lock").exists()
        assert await st.stored() == stored
        files = {f["mission"]: f for f in (await st.sync_status("evil"))["files"]}
        assert "symlink" in (files["m1"]["problem"] or ""), files["m1"]


async def test_existing_file_with_another_projects_marker_is_not_adopted(tmp_path: Path) -> None:
    # a copy of victim's TASKS.md dropped where evil's new mission will look: its rows must not
    # become evil's tasks, nor its "## " lines evil's milestones
    async with stage(tmp_path) as st:
        await st.operator.post("/v1/projects/victim/tasks", json={"title": "Victim secret plan"})
        await st.settle()
        victim_text = (st.root / "victim" / "TASKS.md").read_bytes()
        assert b"project=victim" in victim_text
        (st.root / "evil" / "plan").mkdir(parents=True)
        planted = st.root / "evil" / "plan" / "TASKS.md"
        planted.write_bytes(victim_text)
        response = await st.attacker.post(
            "/v1/projects/evil/missions", json={"id": "m2", "tasks_file": "plan/TASKS.md"}
        )
        assert response.status_code == 201, response.text
        outside, stored = st.outside_files(), await st.stored()
        await st.settle()
        assert planted.read_bytes() == victim_text
        assert (st.root / "victim" / "TASKS.md").read_bytes() == victim_text
        assert st.outside_files() == outside
        assert await st.stored() == stored
        files = {f["mission"]: f for f in (await st.sync_status("evil"))["files"]}
        assert "project=victim" in (files["m2"]["problem"] or ""), files["m2"]


async def test_stored_workspace_outside_the_root_disables_its_sync(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # a project stored before this change, pointing at ~/.ssh: not silently used, reported instead
    (tmp_path / "home" / ".ssh").mkdir(parents=True)
    (tmp_path / "home" / ".ssh" / "authorized_keys").write_bytes(AUTHORIZED_KEYS)
    (tmp_path / "data").mkdir()
    (tmp_path / "root" / "victim").mkdir(parents=True)
    await seed(tmp_path / "data", ProjectCreate(slug="evil", workspace=str(tmp_path / "home" / ".ssh")))
    caplog.set_level(logging.WARNING, logger="workspace_sync")
    async with stage(tmp_path) as st:
        outside = st.outside_files()
        await st.attacker.post("/v1/projects/evil/tasks", json={"title": "ssh-ed25519 AAAA attacker"})
        stored = await st.stored()
        await st.settle()
        assert st.outside_files() == outside
        assert await st.stored() == stored
        status = await st.sync_status("evil")
        assert "outside QUEUE_WORKSPACE" in (status.get("disabled") or ""), status
        assert all("outside QUEUE_WORKSPACE" in (f["problem"] or "") for f in status["files"]), status
        # the healthy project is still synced
        assert (st.root / "victim" / "TASKS.md").is_file()
    assert any("evil" in r.getMessage() and "outside QUEUE_WORKSPACE" in r.getMessage() for r in caplog.records)
