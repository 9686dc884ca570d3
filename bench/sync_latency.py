"""Workspace sync latency (issue 5): hand edit → DB visible, and DB change → file written.

``run_sync_latency(edits=100)`` starts a :class:`~workspace_sync.manager.WorkspaceSyncManager` on a
temporary workspace (in-memory backend by default, or Postgres + Valkey when URLs are given) with a
project of ``tasks`` tasks, then measures, *edits* times each:

* ``hand_edit_to_db``: an editor-style save (temp file renamed over TASKS.md) that changes one row's
  description, until ``get_task`` returns the new title. Includes the watcher's delivery and the
  debounce (``debounce`` seconds of quiet, 0.3 s by default like ``QUEUE_SYNC_DEBOUNCE_SECONDS``);
* ``db_to_file``: ``update_task`` of one title, until TASKS.md on disk shows it (event → cycle →
  atomic write).

Returns p50/p95/max in milliseconds for both, plus the setup. The bench engineer's runner can call
it directly; ``python -m bench.sync_latency`` prints the dict as JSON.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = ["measure_sync_latency", "run_sync_latency"]

#: how often the probes look (every 1 ms took a good part of the CPU being measured); a file is
#: re-read only when its stat changed
_POLL = 0.005


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pick(q: float) -> float:
        index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
        return round(ordered[index] * 1000, 2)

    return {"p50_ms": pick(0.50), "p95_ms": pick(0.95), "max_ms": round(ordered[-1] * 1000, 2), "n": len(ordered)}


def _editor_save(path: Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:6]}.swp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


async def measure_sync_latency(
    edits: int = 100,
    *,
    tasks: int = 200,
    debounce: float = 0.3,
    pg_url: str | None = None,
    valkey_url: str | None = None,
    valkey_prefix: str | None = None,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """The async body of :func:`run_sync_latency` (call this from a running event loop)."""
    from queue_service.backend import Backend
    from queue_service.service import QueueService
    from queue_service.settings import Settings
    from queue_service.workspaces import WorkspacePolicy
    from workspace_sync.manager import WorkspaceSyncManager

    backend: Backend
    if pg_url:
        from queue_service.postgres.backend import PostgresValkeyBackend

        assert valkey_url, "the Postgres backend needs valkey_url"
        prefix = valkey_prefix or f"mosaic:queue:bench{uuid.uuid4().hex[:10]}"
        backend = PostgresValkeyBackend(pg_url, valkey_url, key_prefix=prefix)
        name = "postgres+valkey"
    else:
        from queue_service.testing import InMemoryBackend

        backend = InMemoryBackend()
        name = "memory"
    settings = Settings(backend_url="memory://", sync_debounce_seconds=debounce, sync_rescan_seconds=5.0)
    with tempfile.TemporaryDirectory(prefix="qs-sync-bench-") as tmp:
        workspace = Path(tmp)
        path = workspace / "TASKS.md"
        async with backend:
            svc = QueueService(backend, workspaces=WorkspacePolicy(operator=True))
            slug = f"bench-{uuid.uuid4().hex[:8]}"
            await svc.create_project({"slug": slug, "workspace": str(workspace), "key_prefix": "B"})
            for start in range(0, tasks, 500):
                count = min(500, tasks - start)
                await svc.create_tasks(slug, [{"title": f"Task {start + i}"} for i in range(count)])
            loop = asyncio.get_running_loop()

            async def until(check: Any, what: str) -> None:
                deadline = loop.time() + timeout
                while not await check():
                    if loop.time() > deadline:
                        raise TimeoutError(f"sync bench: timed out waiting for {what}")
                    await asyncio.sleep(_POLL)

            seen: dict[str, Any] = {"stat": None, "text": ""}

            async def file_has(needle: str) -> bool:
                try:
                    st = os.stat(path)
                    stat = (st.st_ino, st.st_size, st.st_mtime_ns)
                    if stat != seen["stat"]:
                        seen["stat"], seen["text"] = stat, path.read_text(encoding="utf-8")
                except FileNotFoundError:
                    return False
                return needle in str(seen["text"])

            async with WorkspaceSyncManager(svc, _options(settings), projects=[slug]) as manager:
                await until(lambda: file_has(f"| B-{tasks} |"), "the first render")
                await manager.wait_idle()
                to_db: list[float] = []
                to_file: list[float] = []
                for n in range(edits):
                    key = f"B-{1 + (n * 7) % tasks}"
                    # hand edit -> DB
                    title = f"hand edit {n} {uuid.uuid4().hex[:6]}"
                    text = path.read_text(encoding="utf-8")
                    line = next(x for x in text.splitlines() if x.startswith(f"| {key} |"))
                    cells = line.split("|")
                    cells[3] = f" {title} "
                    t0 = time.perf_counter()
                    _editor_save(path, text.replace(line, "|".join(cells), 1))

                    async def in_db(key: str = key, title: str = title) -> bool:
                        return (await svc.get_task(slug, key)).title == title

                    await until(in_db, "the hand edit in the database")
                    to_db.append(time.perf_counter() - t0)
                    await manager.wait_idle()
                    # DB -> file
                    title = f"api edit {n} {uuid.uuid4().hex[:6]}"
                    t0 = time.perf_counter()
                    await svc.update_task(slug, key, {"title": title})
                    await until(lambda title=title: file_has(title), "the API change in the file")
                    to_file.append(time.perf_counter() - t0)
                    await manager.wait_idle()
                writes = sum(fs.writes for fs in manager.file_syncs())
    return {
        "backend": name,
        "tasks": tasks,
        "edits": edits,
        "debounce_s": debounce,
        "hand_edit_to_db": _percentiles(to_db),
        "db_to_file": _percentiles(to_file),
        "file_writes": writes,
    }


def run_sync_latency(edits: int = 100, **options: Any) -> dict[str, Any]:
    """Measure hand-edit→DB-visible and DB-change→file-written latency (p50/p95 ms) over *edits* edits.

    Safe to call from synchronous code or from inside a running event loop (it then runs on a
    private loop in a worker thread). *options* go to :func:`measure_sync_latency` (``tasks``,
    ``debounce``, ``pg_url``, ``valkey_url``, ``valkey_prefix``).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(measure_sync_latency(edits, **options))
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, measure_sync_latency(edits, **options)).result()


if __name__ == "__main__":
    print(json.dumps(run_sync_latency(), indent=2))


def _options(settings: Any) -> Any:
    """The sync options the bench's settings name (workspace_sync never reads Settings itself)."""
    from workspace_sync.options import SyncOptions

    return SyncOptions(rescan_seconds=settings.sync_rescan_seconds, debounce_seconds=settings.sync_debounce_seconds)
