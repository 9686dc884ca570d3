"""Workspace sync cost per cycle (issue 17, finding 5): idle CPU, journal growth, edit latency.

``python -m bench.sync_cost [--rows 20000] [--errors 2000] [--tasks 5000] [--edits 20] [--idle 10]``
prints one JSON document. It runs against whatever code is importable, so the same script measures
the tree before and after a change in one session (``PYTHONPATH=<old tree> python -m bench.sync_cost``).

* ``idle``: a flatfile project of ``rows`` tasks synced by a running manager (5 s rescans, the default), left
  alone for ``idle`` seconds, once clean and once with ``errors`` extra rows carrying a
  ``sync-error``. Figures: CPU seconds per wall second of this process (all threads), and journal
  bytes written per second. Then ``edits`` hand edits of one cell: journal bytes per edit.
* ``latency``: ``tasks`` tasks on flatfile and on Postgres+Valkey; ``edits`` editor saves of one
  description until ``get_task`` shows it (save → DB, including the 0.3 s debounce) and as many
  ``update_task`` calls until TASKS.md shows them (API → file); p50/p95 ms. Target p95 < 500 ms. The
  database is polled every 10 ms and the file re-read only when its stat changes: the probes must not
  take the CPU the sync needs (figures are within 10 ms of the true latency).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

__all__ = ["measure_idle", "measure_latency"]


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _save(path: Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:6]}.swp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000, 1)


async def _until(check: Any, what: str, timeout: float = 120.0, poll: float = 0.002) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise TimeoutError(f"sync_cost: timed out waiting for {what}")
        await asyncio.sleep(poll)


#: the database is asked every 10 ms (asking every 2 ms took a good part of the CPU being measured)
_DB_POLL = 0.01


class _Watched:
    """A file read again only when its stat changes (polling a 400 KB file every 2 ms stole CPU too)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stat: tuple[int, int, int] | None = None
        self._text = ""

    def text(self) -> str:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return ""
        stat = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stat != self._stat:
            self._stat, self._text = stat, _text(self.path)
        return self._text


async def _project(svc: Any, workspace: Path, tasks: int) -> str:
    slug = f"cost-{uuid.uuid4().hex[:6]}"
    await svc.create_project({"slug": slug, "workspace": str(workspace), "key_prefix": "B"})
    for start in range(0, tasks, 500):
        count = min(500, tasks - start)
        await svc.create_tasks(slug, [{"title": f"Task {start + i}"} for i in range(count)])
    return slug


async def _quiet(manager: Any) -> None:
    """Wait for the workers to go idle; a sync that never goes idle (it was the bug) is measured anyway."""
    with contextlib.suppress(TimeoutError):
        await manager.wait_idle(timeout=120.0)


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""


def _edit(text: str, key: str, title: str) -> str:
    line = next(x for x in text.splitlines() if x.startswith(f"| {key} |"))
    cells = line.split("|")
    cells[3] = f" {title} "
    return text.replace(line, "|".join(cells), 1)


async def measure_idle(rows: int, errors: int, idle: float, edits: int) -> dict[str, Any]:
    """Idle CPU and journal growth of a flatfile project of *rows* tasks (plus *errors* error rows)."""
    from flatfile.backend import FlatfileBackend
    from queue_service.backend import DispatchConfig
    from queue_service.service import QueueService
    from queue_service.settings import Settings
    from queue_service.workspaces import WorkspacePolicy
    from workspace_sync.manager import WorkspaceSyncManager

    settings = Settings(backend_url="memory://", sync_rescan_seconds=5.0, sync_debounce_seconds=0.3)
    with tempfile.TemporaryDirectory(prefix="qs-sync-cost-") as tmp:
        data, workspace = Path(tmp) / "data", Path(tmp) / "ws"
        workspace.mkdir()
        path = workspace / "TASKS.md"
        async with FlatfileBackend(data, config=DispatchConfig(max_queue_depth=10 * rows)) as backend:
            svc = QueueService(backend, workspaces=WorkspacePolicy(operator=True))
            slug = await _project(svc, workspace, rows)
            async with WorkspaceSyncManager(svc, _options(settings), projects=[slug]) as manager:

                async def rendered() -> bool:
                    return f"| B-{rows} |" in _text(path)

                await _until(rendered, "the first render")
                await _quiet(manager)
                if errors:
                    bad = "".join(f"| + | bogus-{i} | Broken {i} | — | P2 | — | — |\n" for i in range(errors))
                    _save(path, _text(path) + bad)

                    async def marked() -> bool:
                        return _text(path).count("sync-error") >= errors

                    await _until(marked, "the error markers")
                await asyncio.sleep(2.5)  # let the triggers of the setup drain
                await _quiet(manager)
                bytes0, cpu0, wall0 = _dir_bytes(data), time.process_time(), time.perf_counter()
                cycles0 = sum(fs.cycles for fs in manager.file_syncs())
                await asyncio.sleep(idle)
                wall = time.perf_counter() - wall0
                cpu = time.process_time() - cpu0
                grown = _dir_bytes(data) - bytes0
                cycles = sum(fs.cycles for fs in manager.file_syncs()) - cycles0
                before_edits = _dir_bytes(data)
                for n in range(edits):
                    key, title = f"B-{1 + (n * 7) % rows}", f"edit {n} {uuid.uuid4().hex[:6]}"
                    _save(path, _edit(_text(path), key, title))

                    async def applied(key: str = key, title: str = title) -> bool:
                        return (await svc.get_task(slug, key)).title == title

                    await _until(applied, "an edit", poll=_DB_POLL)
                    await _quiet(manager)
                per_edit = (_dir_bytes(data) - before_edits) / max(edits, 1)
    return {
        "rows": rows,
        "error_rows": errors,
        "idle_s": round(wall, 1),
        "idle_cycles": cycles,
        "idle_cpu_s_per_s": round(cpu / wall, 3),
        "idle_journal_bytes_per_s": round(grown / wall),
        "edits": edits,
        "journal_bytes_per_edit": round(per_edit),
    }


@contextlib.asynccontextmanager
async def _backend(kind: str, tmp: Path) -> AsyncIterator[Any]:
    if kind == "flatfile":
        from flatfile.backend import FlatfileBackend

        async with FlatfileBackend(tmp / "data") as backend:
            yield backend
        return
    from bench.common import VALKEY_URL, fresh_database, sqlalchemy_url, valkey_prefix
    from queue_service.postgres.backend import PostgresValkeyBackend

    async with (
        fresh_database() as url,
        valkey_prefix() as prefix,
        PostgresValkeyBackend(sqlalchemy_url(url), VALKEY_URL, key_prefix=prefix) as backend,
    ):
        yield backend


async def measure_latency(kind: str, tasks: int, edits: int) -> dict[str, Any]:
    """Save → DB and API → file latency (p50/p95 ms) at *tasks* tasks on *kind* (flatfile, postgres)."""
    from queue_service.service import QueueService
    from queue_service.settings import Settings
    from queue_service.workspaces import WorkspacePolicy
    from workspace_sync.manager import WorkspaceSyncManager

    settings = Settings(backend_url="memory://", sync_rescan_seconds=5.0, sync_debounce_seconds=0.3)
    to_db: list[float] = []
    to_file: list[float] = []
    with tempfile.TemporaryDirectory(prefix="qs-sync-lat-") as tmp:
        workspace = Path(tmp) / "ws"
        workspace.mkdir()
        path = workspace / "TASKS.md"
        async with _backend(kind, Path(tmp)) as backend:
            svc = QueueService(backend, workspaces=WorkspacePolicy(operator=True))
            slug = await _project(svc, workspace, tasks)
            async with WorkspaceSyncManager(svc, _options(settings), projects=[slug]) as manager:

                async def rendered() -> bool:
                    return f"| B-{tasks} |" in _text(path)

                await _until(rendered, "the first render")
                await _quiet(manager)
                for n in range(edits):
                    key = f"B-{1 + (n * 7) % tasks}"
                    title = f"hand edit {n} {uuid.uuid4().hex[:6]}"
                    text = _edit(_text(path), key, title)
                    t0 = time.perf_counter()
                    _save(path, text)

                    async def in_db(key: str = key, title: str = title) -> bool:
                        return (await svc.get_task(slug, key)).title == title

                    await _until(in_db, "the hand edit in the database", poll=_DB_POLL)
                    to_db.append(time.perf_counter() - t0)
                    await _quiet(manager)
                    title = f"api edit {n} {uuid.uuid4().hex[:6]}"
                    watched = _Watched(path)
                    watched.text()
                    t0 = time.perf_counter()
                    await svc.update_task(slug, key, {"title": title})

                    async def in_file(title: str = title, watched: _Watched = watched) -> bool:
                        return title in watched.text()

                    await _until(in_file, "the API change in the file")
                    to_file.append(time.perf_counter() - t0)
                    await _quiet(manager)
    return {
        "backend": kind,
        "tasks": tasks,
        "edits": edits,
        "save_to_db_ms": {"p50": _p(to_db, 0.5), "p95": _p(to_db, 0.95)},
        "api_to_file_ms": {"p50": _p(to_file, 0.5), "p95": _p(to_file, 0.95)},
    }


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"idle": [], "latency": []}
    if "idle" in args.parts:
        for errors in (0, args.errors):
            out["idle"].append(await measure_idle(args.rows, errors, args.idle, args.edits))
    if "latency" in args.parts:
        for kind in args.backends:
            out["latency"].append(await measure_latency(kind, args.tasks, args.edits))
    return out


def main() -> None:
    """Parse the options, run, print JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.sync_cost")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--errors", type=int, default=2_000)
    parser.add_argument("--tasks", type=int, default=5_000)
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--parts", nargs="+", default=["idle", "latency"], choices=["idle", "latency"])
    parser.add_argument("--backends", nargs="+", default=["flatfile", "postgres"], choices=["flatfile", "postgres"])
    print(json.dumps(asyncio.run(_main(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()


def _options(settings: Any) -> Any:
    """The sync options the bench's settings name (workspace_sync never reads Settings itself)."""
    from workspace_sync.options import SyncOptions

    return SyncOptions(rescan_seconds=settings.sync_rescan_seconds, debounce_seconds=settings.sync_debounce_seconds)
