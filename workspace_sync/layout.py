"""Which TASKS.md a mission syncs: our layout (``TASKS.md`` at the root) or coord's (``docs/TASKS.md``).

Issue 18. A workspace coord left behind keeps its layout: ``docs/TASKS.md``,
``docs/MISSION-MANIFEST.md``, ``.mosaic/orchestrator/``. A mission other than ``default`` always
syncs its stored ``tasks_file``. The default mission's file is, in this order (first match wins):

1. its stored ``tasks_file`` when it is not ``TASKS.md`` (*pinned*: set by hand, or by rule 4);
2. ``TASKS.md`` at the root when something is there, or when that file was synced before (a
   deleted root file is written again, never swapped for ``docs/TASKS.md``);
3. ``TASKS.md`` at the root when another mission of the project already syncs ``docs/TASKS.md``;
4. ``docs/TASKS.md`` when it exists, or when the workspace has coord's layout
   (``docs/MISSION-MANIFEST.md`` or ``.mosaic/orchestrator/`` exists); the choice is then pinned in
   the mission's ``tasks_file``, so it never moves afterwards;
5. otherwise a new ``TASKS.md`` at the root.

So a project never has two files: with both a root ``TASKS.md`` and a ``docs/TASKS.md``, the root one
is synced and ``docs/TASKS.md`` is left alone. Existence is checked without following links (a link
counts as "something is there", and the sync then refuses it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from queue_service import exceptions
from queue_service.models import DEFAULT_MISSION, Mission, MissionCreate
from queue_service.service import QueueService
from queue_service.workspaces import (
    COORD_TASKS_FILE,
    DEFAULT_TASKS_FILE,
    Confined,
    WorkspacePolicy,
    locate_tasks_file,
    tasks_file_of,
)
from workspace_sync import safe_files

__all__ = ["COORD_MARKERS", "coord_workspace_of", "discover_default_file", "locate_mission_files"]

logger = logging.getLogger("workspace_sync")

#: entries whose presence says "coord laid this workspace out"
COORD_MARKERS = ("docs/MISSION-MANIFEST.md", ".mosaic/orchestrator")


def coord_workspace_of(target: Confined) -> Confined | None:
    """The workspace of a TASKS.md at coord's place (``<workspace>/docs/TASKS.md``), else None."""
    if len(target.parts) < 2 or target.parts[-2:] != ("docs", "TASKS.md"):
        return None
    return Confined(target.base, target.parts[:-2])


def discover_default_file(workspace: Confined, others: Sequence[Mission]) -> str:
    """Rules 2-5 of the module docstring from the file system alone (blocks: run it in a thread)."""
    if safe_files.entry_exists(workspace.child(DEFAULT_TASKS_FILE)):
        return DEFAULT_TASKS_FILE
    if any(m.id != DEFAULT_MISSION and m.tasks_file == COORD_TASKS_FILE for m in others):
        return DEFAULT_TASKS_FILE
    if safe_files.entry_exists(workspace.child(COORD_TASKS_FILE)) or any(
        safe_files.entry_exists(workspace.child(marker)) for marker in COORD_MARKERS
    ):
        return COORD_TASKS_FILE
    return DEFAULT_TASKS_FILE


async def _default_file(
    service: QueueService, project: str, workspace: Confined, mission: Mission, missions: Sequence[Mission], pin: bool
) -> tuple[Mission, str]:
    stored = tasks_file_of(mission)
    if stored != DEFAULT_TASKS_FILE:
        return mission, stored  # rule 1: pinned
    relative = await asyncio.to_thread(discover_default_file, workspace, missions)
    if relative == DEFAULT_TASKS_FILE:
        return mission, relative
    # rule 2: a root file synced before stays the file, even while it is deleted
    root = workspace.child(DEFAULT_TASKS_FILE)
    if await service.get_sync_state(project, str(root.path)):
        return mission, DEFAULT_TASKS_FILE
    if pin:
        # coord's markers without docs/ yet: the directory the file goes in (never through a link)
        with contextlib.suppress(OSError, safe_files.UnsafeFile):
            await asyncio.to_thread(safe_files.ensure_directory, workspace.child("docs"))
        data = MissionCreate(
            id=mission.id,
            name=mission.name,
            status=mission.status,
            milestones=list(mission.milestones),
            tasks_file=relative,
        )
        try:
            mission = await service.update_mission(project, mission.id, data)
        except exceptions.QueueServiceError as exc:
            # unpinned it still works: the next discovery finds the same file
            logger.warning("could not pin %s/%s to %s: %s", project, mission.id, relative, exc)
    return mission, relative


async def locate_mission_files(
    service: QueueService,
    policy: WorkspacePolicy,
    project: str,
    workspace: Confined,
    missions: Sequence[Mission],
    *,
    pin: bool = True,
) -> list[tuple[Mission, Confined | str]]:
    """Every mission's file below the located *workspace* (or why it is not synced), in *missions* order.

    Args:
        pin: store the default mission's discovered ``docs/TASKS.md`` (``sync_status`` only looks).
    """
    out: list[tuple[Mission, Confined | str]] = []
    for mission in missions:
        relative = None
        if mission.id == DEFAULT_MISSION:
            mission, relative = await _default_file(service, project, workspace, mission, missions, pin)
        out.append((mission, locate_tasks_file(policy, workspace, mission, relative)))
    return out
