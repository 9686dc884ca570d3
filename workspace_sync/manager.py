"""Running the sync continuously: every project with a workspace, every mission's TASKS.md.

:class:`WorkspaceSyncManager` is what ``serve`` starts (and ``queue-service sync PROJECT --watch``):

* a *supervisor* that, every ``options.rescan_seconds``, lists the projects with a workspace
  and their missions, starts a worker per TASKS.md (stopping those whose project/mission/path went
  away), watches their directories, and asks every worker for a rescan cycle;
* a watchdog observer on the parent directories (:mod:`workspace_sync.watcher`); a file event asks
  the file's worker for a cycle after ``options.debounce_seconds`` of quiet, or only
  :data:`_SAVED_SETTLE` when the last event says the write finished (renamed into place, closed after
  writing), unless the file's content hash is the one we wrote last (our own write);
* a subscription per project to the service's live events; a task change asks for a cycle at once
  (events caused by our own writes are recognised by task version and skipped).

Each worker runs its cycles one after the other, so a burst of triggers costs one cycle. A failing
cycle (workspace missing, backend down) is logged once per distinct message, kept in the sync
status, and retried at the next trigger or rescan: never a crash loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from queue_service import exceptions
from queue_service.models import Mission, Project
from queue_service.service import QueueService
from queue_service.workspaces import Confined, locate_workspace
from workspace_sync import safe_files
from workspace_sync.companions import companion_status
from workspace_sync.engine import FileSync, SyncReport, load_status_state, mission_path, public_status
from workspace_sync.layout import locate_mission_files
from workspace_sync.options import SyncOptions
from workspace_sync.watcher import SAVED, DirectoryWatcher

__all__ = ["WorkspaceSyncManager", "sync_once", "sync_status"]

logger = logging.getLogger("workspace_sync")

#: longest a stream of file events can postpone a cycle, as a multiple of the debounce
_MAX_DEBOUNCE_FACTOR = 6
#: coalescing window for database events (several events of one transaction arrive together)
_DB_COALESCE = 0.02
#: quiet wanted after a finished save (rename into place, close after write): the file is complete, so
#: only the events of the same save are gathered; the full debounce was most of the save -> DB latency
_SAVED_SETTLE = 0.05


async def sync_status(service: QueueService, project: str) -> dict[str, Any]:
    """The sync status of a project from the stored sync states (no running manager needed).

    Returns:
        ``{"project", "workspace", "files": [...]}``; each file has its path, whether it exists, when
        it was last synced, the current ``errors`` (line, column, key, message), recent ``conflicts``
        and any ``problem`` (for example a missing workspace). A workspace that breaks a rule of
        :mod:`queue_service.workspaces` adds ``disabled`` (the reason), also each file's ``problem``.
    """
    proj = await service.get_project(project)
    files: list[dict[str, Any]] = []
    out: dict[str, Any] = {"project": proj.slug, "workspace": proj.workspace, "files": files}
    if proj.workspace:
        located = locate_workspace(service.workspaces, proj, await service.list_projects())
        if isinstance(located, str):
            out["disabled"] = located
        missions = await service.list_missions(project)
        if isinstance(located, str):
            found: list[tuple[Mission, Confined | str]] = [(m, located) for m in missions]
        else:
            found = await locate_mission_files(service, service.workspaces, proj.slug, located, missions, pin=False)
        for mission, target in found:
            path = mission_path(proj.workspace, mission) if isinstance(target, str) else target.path
            state = await load_status_state(service, project, str(path))
            if isinstance(target, str):
                files.append(public_status(mission.id, path, state, problem=target))
            else:
                # it reads the file (is an edit pending?): off the event loop
                files.append(await asyncio.to_thread(public_status, mission.id, path, state, target))
                files.extend(await companion_status(service, proj.slug, mission, target))
    return out


async def sync_once(service: QueueService, *, lock_timeout: float = 2.0) -> list[SyncReport]:
    """One cycle for every mission file of every project with a workspace (the serverless CLI, issue 17).

    A file whose lock is held (a server or a watcher syncs it) or whose cycle fails is left to them.
    """
    reports: list[SyncReport] = []
    everyone = await service.list_projects()
    for project in everyone:
        if not project.workspace:
            continue
        # the same rules as the server's manager (issue 9): a disabled workspace or file is never touched
        located = locate_workspace(service.workspaces, project, everyone)
        if isinstance(located, str):
            logger.warning("workspace sync of project %s is disabled: %s", project.slug, located)
            continue
        missions = await service.list_missions(project.slug)
        for mission, target in await locate_mission_files(service, service.workspaces, project.slug, located, missions):
            if isinstance(target, str):
                logger.warning("workspace sync of %s/%s is disabled: %s", project.slug, mission.id, target)
                continue
            path = target.path
            file_sync = FileSync(service, project.slug, mission.id, path, lock_timeout=lock_timeout, target=target)
            try:
                reports.append(await file_sync.sync())
            except (exceptions.QueueServiceError, OSError) as exc:
                logger.warning("workspace sync of %s failed: %s", path, exc)
    return reports


class _Worker:
    """Runs the cycles of one file, one at a time, when triggered."""

    def __init__(self, sync: FileSync, debounce: float) -> None:
        self.sync = sync
        self.debounce = debounce
        self.reasons: set[str] = set()
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.task: asyncio.Task[None] | None = None
        self.last_problem: str | None = None
        self.cycles = 0
        #: the last file event said the write finished (see :data:`_SAVED_SETTLE`)
        self.saved = False

    def trigger(self, reason: str, *, saved: bool = False) -> None:
        if reason == "file":
            self.saved = saved
        self.reasons.add(reason)
        self.idle.clear()
        self.wake.set()

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"workspace-sync {self.sync.path}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None

    async def _quiet(self) -> None:
        """Wait until the triggers stop for the debounce time (file edits) or a short moment (DB events)."""
        loop = asyncio.get_running_loop()
        limit = loop.time() + max(self.debounce * _MAX_DEBOUNCE_FACTOR, 1.0)
        while True:
            self.wake.clear()
            if "rescan" in self.reasons and "file" not in self.reasons:
                return
            if "file" not in self.reasons:
                delay = _DB_COALESCE
            else:
                delay = min(self.debounce, _SAVED_SETTLE) if self.saved else self.debounce
            delay = min(delay, max(0.0, limit - loop.time()))
            if delay <= 0:
                return
            try:
                await asyncio.wait_for(self.wake.wait(), delay)
            except TimeoutError:
                return

    async def _run(self) -> None:
        while True:
            if not self.wake.is_set() and not self.reasons:
                self.idle.set()
            await self.wake.wait()
            await self._quiet()
            reasons, self.reasons = self.reasons, set()
            if not reasons:
                continue
            if reasons == {"file"} and await asyncio.to_thread(self.sync.disk_unchanged):
                continue  # our own write (or a touch that changed nothing)
            await self._cycle()

    async def _cycle(self) -> None:
        self.cycles += 1
        try:
            report: SyncReport = await self.sync.sync()
            problem = report.problem
        except asyncio.CancelledError:
            raise
        except exceptions.QueueServiceError as exc:
            problem = f"{type(exc).__name__}: {exc.message}"
        except Exception as exc:  # a bug must not kill the worker: log it, retry at the next trigger
            logger.exception("workspace sync of %s failed", self.sync.path)
            problem = f"unexpected {type(exc).__name__}: {exc}"
        if problem != self.last_problem:
            if problem:
                logger.warning("workspace sync of %s: %s", self.sync.path, problem)
            elif self.last_problem:
                logger.info("workspace sync of %s recovered", self.sync.path)
            self.last_problem = problem


class WorkspaceSyncManager:
    """Syncs every project that has a workspace (or only *projects*), until stopped.

    Args:
        service: the QueueService facade.
        options: pacing and rendering (:class:`~workspace_sync.options.SyncOptions`, built by the caller
            from its own settings; the workspace rules come from ``service.workspaces``).
        projects: sync only these project slugs (``queue-service sync PROJECT --watch``).
        polling: force watchdog's polling observer (default: inotify, polling only as a fallback).
    """

    def __init__(
        self,
        service: QueueService,
        options: SyncOptions | None = None,
        *,
        projects: list[str] | None = None,
        polling: bool = False,
    ) -> None:
        self.service = service
        self.options = options or SyncOptions()
        self.projects = projects
        self.polling = polling
        self.strict_coord = self.options.strict_coord
        self._workers: dict[tuple[str, str], _Worker] = {}
        self._by_path: dict[str, _Worker] = {}
        self._subscriptions: dict[str, asyncio.Task[None]] = {}
        self._watcher: DirectoryWatcher | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._rediscover = asyncio.Event()
        self._discovered = asyncio.Event()
        self._problems: dict[str, str] = {}

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start watching and syncing; returns once the first discovery ran (cycles continue in the background)."""
        if self._supervisor is not None:
            return
        loop = asyncio.get_running_loop()
        self._watcher = DirectoryWatcher(loop, self._on_file_event, polling=self.polling)
        self.service.project_listeners.append(self._on_project_changed)
        self._supervisor = asyncio.create_task(self._supervise(), name="workspace-sync supervisor")
        waiter = asyncio.create_task(self._discovered.wait())
        await asyncio.wait({waiter, self._supervisor}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()

    async def stop(self) -> None:
        """Stop every worker, subscription and the watcher (a running cycle is cancelled between writes)."""
        with contextlib.suppress(ValueError):
            self.service.project_listeners.remove(self._on_project_changed)
        tasks = [t for t in (self._supervisor, *self._subscriptions.values()) if t is not None]
        self._supervisor = None
        self._subscriptions.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for worker in list(self._workers.values()):
            await worker.stop()
        self._workers.clear()
        self._by_path.clear()
        if self._watcher is not None:
            await asyncio.to_thread(self._watcher.stop)
            self._watcher = None

    async def __aenter__(self) -> WorkspaceSyncManager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- introspection (tests, status) ------------------------------------------------------------
    def file_syncs(self) -> list[FileSync]:
        """The FileSync of every file currently synced."""
        return [w.sync for w in self._workers.values()]

    def file_sync(self, project: str, mission: str = "default") -> FileSync | None:
        """The FileSync of one mission's file, if it is synced."""
        worker = self._workers.get((project, mission))
        return None if worker is None else worker.sync

    @property
    def polling_fallback(self) -> str | None:
        """Why the watcher fell back to polling (None when it did not)."""
        return None if self._watcher is None else self._watcher.fallback_reason

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until no worker has a pending or running cycle (tests and benchmarks)."""
        async with asyncio.timeout(timeout):
            while True:
                workers = list(self._workers.values())
                await asyncio.gather(*(w.idle.wait() for w in workers))
                if all(w.idle.is_set() for w in self._workers.values()):
                    return

    async def rescan(self) -> None:
        """Rediscover projects now and ask every worker for a cycle."""
        await self._discover()
        for worker in self._workers.values():
            worker.trigger("rescan")

    async def status(self, project: str) -> dict[str, Any]:
        """:func:`sync_status` plus what only the running manager knows (watch mode, worker problems)."""
        out = await sync_status(self.service, project)
        out["watch"] = "polling" if self.polling or self.polling_fallback else "inotify"
        if self.polling_fallback:
            out["watch_fallback"] = self.polling_fallback
        for entry in out["files"]:
            worker = self._workers.get((project, entry["mission"]))
            if worker is not None and worker.last_problem and not entry.get("problem"):
                entry["problem"] = worker.last_problem
        return out

    # -- internals ---------------------------------------------------------------------------------
    async def _supervise(self) -> None:
        interval = self.options.rescan_seconds
        while True:
            try:
                await self._discover()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._log_problem("*", f"cannot list projects: {exc}")
            finally:
                self._discovered.set()
            for worker in self._workers.values():
                worker.trigger("rescan")
            self._rediscover.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._rediscover.wait(), interval)

    def _log_problem(self, key: str, message: str | None) -> None:
        if message is None:
            self._problems.pop(key, None)
            return
        if self._problems.get(key) != message:
            self._problems[key] = message
            logger.warning("workspace sync: %s", message)

    async def _projects(self) -> list[Project]:
        if self.projects is None:
            return [p for p in await self.service.list_projects() if p.workspace]
        found = []
        for slug in self.projects:
            project = await self.service.get_project(slug)
            if not project.workspace:
                self._log_problem(slug, f"project {slug} has no workspace (set one with PATCH or --workspace)")
                continue
            found.append(project)
        return found

    async def _discover(self) -> None:
        wanted: dict[tuple[str, str], Confined] = {}
        everyone = await self.service.list_projects()
        for project in await self._projects():
            try:
                await self._locate(project, everyone, wanted)
                self._log_problem(f"project:{project.slug}", None)
            except (OSError, exceptions.QueueServiceError) as exc:
                # one project's trouble (ENAMETOOLONG, a vanished project) never stops the others
                self._log_problem(f"project:{project.slug}", f"project {project.slug}: {exc}")
        for key, worker in list(self._workers.items()):
            if wanted.get(key) != worker.sync.target:
                await worker.stop()
                del self._workers[key]
                for watched in worker.sync.watched_paths():
                    self._by_path.pop(watched, None)
        for key, target in wanted.items():
            path = target.path
            if key not in self._workers:
                sync = FileSync(self.service, key[0], key[1], path, strict_coord=self.strict_coord, target=target)
                worker = _Worker(sync, self.options.debounce_seconds)
                self._workers[key] = worker
                for watched in sync.watched_paths():
                    self._by_path[watched] = worker
                worker.start()
                worker.trigger("rescan")
            self._watch(path.parent)
        for slug in {k[0] for k in wanted}:
            task = self._subscriptions.get(slug)
            if task is None or task.done():
                self._subscriptions[slug] = asyncio.create_task(
                    self._follow(slug), name=f"workspace-sync events {slug}"
                )
        for slug in set(self._subscriptions) - {k[0] for k in wanted}:
            self._subscriptions.pop(slug).cancel()

    async def _locate(self, project: Project, everyone: list[Project], wanted: dict[tuple[str, str], Confined]) -> None:
        """Add the project's files to *wanted*, unless a rule of queue_service.workspaces disables them."""
        policy = self.service.workspaces
        located = locate_workspace(policy, project, everyone)
        if isinstance(located, str):
            self._log_problem(f"disabled:{project.slug}", f"project {project.slug}: {located}")
            return
        self._log_problem(f"disabled:{project.slug}", None)
        await asyncio.to_thread(self._ensure_workspace, project, located)
        try:
            missions = await self.service.list_missions(project.slug)
        except exceptions.NotFound:
            return
        for mission, target in await locate_mission_files(self.service, policy, project.slug, located, missions):
            key = f"disabled:{project.slug}:{mission.id}"
            if isinstance(target, str):
                self._log_problem(key, f"project {project.slug} mission {mission.id}: {target}")
                continue
            self._log_problem(key, None)
            wanted[(project.slug, mission.id)] = target

    def _ensure_workspace(self, project: Project, workspace: Confined) -> None:
        """Create a missing workspace below ``$QUEUE_WORKSPACE``; any other is the user's to create (blocks)."""
        if not workspace.parts:
            return  # operator mode without a root: the user's own directory
        try:
            safe_files.ensure_directory(workspace)
        except (OSError, safe_files.UnsafeFile) as exc:
            self._log_problem(project.slug, f"cannot create workspace {workspace.path}: {exc}")

    def _watch(self, directory: Path) -> None:
        if self._watcher is None:
            return
        try:
            self._watcher.watch(directory)
            self._log_problem(str(directory), None)
        except (OSError, RuntimeError) as exc:
            # missing or unreadable: the cycle reports it in the status; watch again at the next rescan
            self._log_problem(str(directory), f"cannot watch {directory}: {exc}")

    def _on_project_changed(self, _slug: str) -> None:
        self._rediscover.set()  # a new project's file appears at once, not at the next rescan

    def _on_file_event(self, path: str, kind: str) -> None:
        worker = self._by_path.get(path)
        if worker is not None:
            worker.trigger("file", saved=kind == SAVED)

    async def _follow(self, slug: str) -> None:
        """Trigger the project's workers on every task change not caused by the sync itself."""
        delay = 0.5
        while True:
            try:
                async for event in self.service.subscribe(slug):
                    delay = 0.5
                    if event.kind in ("project_updated", "mission_created", "mission_updated"):
                        self._rediscover.set()
                    for (project, _mission), worker in list(self._workers.items()):
                        if project != slug:
                            continue
                        if event.task is not None and (event.task, event.version or 0) in worker.sync.own_versions:
                            continue
                        worker.trigger("db")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # the rescan keeps files in sync meanwhile; events only make it faster
                self._log_problem(f"events:{slug}", f"event subscription for {slug} failed: {exc}; retrying")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
