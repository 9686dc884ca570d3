"""A running app with a real data directory and workspace root, and an attacker's HTTP client.

The layout every files/workspace security test starts from (all under one ``tmp_path``)::

    home/.ssh/authorized_keys     # a victim file outside the root (the service user's home)
    data/                         # the flatfile data directory (QUEUE_DATA_DIR)
    root/                         # QUEUE_WORKSPACE, the operator's root
    root/victim/TASKS.md          # project ``victim``'s workspace, synced

The operator creates the projects; the attacker holds an admin token for project ``evil`` only and
talks HTTP. After an attack, :meth:`Stage.settle` runs a sync rescan to completion (no sleeps), then
the test checks the refusal, that :meth:`Stage.outside_files` and :meth:`Stage.stored` did not change.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from flatfile.backend import FlatfileBackend
from queue_service.app import create_app
from queue_service.auth import new_token_record
from queue_service.backend import Backend
from queue_service.models import Project, ProjectCreate, TokenRole
from queue_service.settings import Settings
from queue_service.snapshot import comparable, dumps
from tests.fixtures.timing import fast
from workspace_sync.manager import WorkspaceSyncManager

BASE = "http://127.0.0.1:8000"
# the default backoff: these tests never wait for a retry
FAST = fast(
    lease_seconds=5.0, heartbeat_seconds=1.0, backoff_base_seconds=1.0, backoff_max_seconds=300.0, backoff_jitter=0.1
)
AUTHORIZED_KEYS = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOperatorKey operator@host\n"


def tree_digest(*roots: Path) -> dict[str, str]:
    """Every entry under *roots* (not following symlinks): path -> kind and content hash."""
    out: dict[str, str] = {}
    for root in roots:
        if not os.path.lexists(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                if os.path.islink(path):
                    out[path] = "link:" + os.readlink(path)
                elif os.path.isfile(path):
                    with open(path, "rb") as fh:
                        out[path] = "file:" + hashlib.sha256(fh.read()).hexdigest()
                else:
                    out[path] = f"mode:{st.st_mode:o}"
    return out


@dataclass
class Stage:
    """The app, its paths and the two parties."""

    tmp: Path
    data: Path
    app: FastAPI
    backend: Backend
    attacker: httpx.AsyncClient
    operator: httpx.AsyncClient
    extra_outside: list[Path] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.tmp / "root"

    @property
    def home(self) -> Path:
        return self.tmp / "home"

    @property
    def manager(self) -> WorkspaceSyncManager:
        manager = self.app.state.workspace_sync
        assert isinstance(manager, WorkspaceSyncManager)
        return manager

    async def settle(self) -> None:
        """Rediscover projects and run every file's cycle to completion."""
        await self.manager.rescan()
        await self.manager.wait_idle()

    def outside_files(self) -> dict[str, str]:
        """What lies outside the root: the victim's home and whatever the test added."""
        return tree_digest(self.home, *self.extra_outside)

    async def stored(self) -> dict[str, str]:
        """Every project's export (volatile fields and sync records dropped) and workspace: the stored data."""
        out: dict[str, str] = {}
        service = self.app.state.qs.service
        for project in await service.list_projects():
            snapshot = await service.export_project(project.slug)
            # the sync records (issue 17) are the sync's own bookkeeping: a refusal records its problem
            # there and a project's first cycle its base; the project's data is everything else
            out[project.slug] = comparable(dumps(snapshot.model_copy(update={"sync": ()})))
            out[project.slug + ":workspace"] = str(project.workspace)
        return out

    async def sync_status(self, project: str) -> dict[str, Any]:
        response = await self.operator.get(f"/v1/projects/{project}/sync")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


def make_layout(tmp: Path) -> None:
    (tmp / "home" / ".ssh").mkdir(parents=True, exist_ok=True)
    (tmp / "home" / ".ssh" / "authorized_keys").write_bytes(AUTHORIZED_KEYS)
    (tmp / "data").mkdir(exist_ok=True)
    (tmp / "root" / "victim").mkdir(parents=True, exist_ok=True)


async def seed(data: Path, *projects: ProjectCreate) -> list[Project]:
    """Store projects straight into the data directory, the way an older version may have (no checks)."""
    backend = FlatfileBackend.from_url(f"file://{data}", config=FAST)
    async with backend:
        return [await backend.records.create_project(p) for p in projects]


def stage_settings(tmp: Path, data: Path, *, workspace: bool = True, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "backend_url": f"file://{data}",
        "orchestrator": False,
        "sync": True,
        "sync_rescan_seconds": 3600.0,  # tests rescan explicitly (Stage.settle)
        "sync_debounce_seconds": 0.05,
    }
    if workspace:
        values["workspace"] = tmp / "root"
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def stage(
    tmp: Path, *, workspace: bool = True, data: Path | None = None, **overrides: Any
) -> AsyncIterator[Stage]:
    """Start the app (flatfile in *data*, default ``tmp/data``) with the victim and evil projects and two tokens.

    Projects already seeded into the data directory (see :func:`seed`) are kept.
    """
    if not (tmp / "home").exists():
        make_layout(tmp)
    data = data or tmp / "data"
    backend = FlatfileBackend.from_url(f"file://{data}", config=FAST)
    async with backend:
        existing = {p.slug for p in await backend.records.list_projects()}
        for slug in ("victim", "evil"):
            if slug not in existing:
                where = str(tmp / "root" / slug) if workspace or slug == "victim" else None
                await backend.records.create_project(ProjectCreate(slug=slug, workspace=where))
        plain_op, op_record = new_token_record(None, TokenRole.ADMIN, "operator")
        plain_evil, evil_record = new_token_record("evil", TokenRole.ADMIN, "evil-admin")
        await backend.records.add_api_token(op_record)
        await backend.records.add_api_token(evil_record)
        service_settings = stage_settings(tmp, data, workspace=workspace, **overrides)
        app = create_app(service_settings, backend)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with (
                httpx.AsyncClient(
                    transport=transport, base_url=BASE, headers={"Authorization": f"Bearer {plain_evil}"}
                ) as attacker,
                httpx.AsyncClient(
                    transport=transport, base_url=BASE, headers={"Authorization": f"Bearer {plain_op}"}
                ) as operator,
            ):
                yield Stage(tmp, data, app, backend, attacker, operator)


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The ``error`` object of an error response."""
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    return error
