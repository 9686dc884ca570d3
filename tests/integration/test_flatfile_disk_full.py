"""Issue 10 finding 10: a flatfile data directory on a full disk.

A real ENOSPC: the data directory lives on a small tmpfs mounted for this test (root only; the
test fails, never skips, when it cannot mount). ``/readyz`` must say "not ready" while writes fail,
and a failing compaction must not be retried by every write.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from flatfile.backend import FlatfileBackend
from flatfile.journal import CompactionPolicy
from queue_service import exceptions
from queue_service.app import create_app
from queue_service.service import QueueService
from tests.unit.api_support import FAST, http_client, running, settings


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted afterwards."""
    where = Path(tempfile.mkdtemp(prefix="qs-enospc-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        with contextlib.suppress(OSError):
            where.rmdir()


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill *disk* until ENOSPC, then give *leave* bytes back. Returns the filler file."""
    filler = disk / "filler"
    chunk = b"\0" * 4096
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            os.write(fd, chunk)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


async def test_readyz_reports_a_full_disk_and_recovers(small_disk: Path) -> None:
    backend = FlatfileBackend(small_disk / "data", config=FAST)
    app = create_app(settings(), backend=backend)
    async with running(app), http_client(app) as http:
        svc = QueueService(backend)
        await svc.create_project({"slug": "web", "key_prefix": "WEB"})
        assert (await http.get("/readyz")).status_code == 200
        filler = fill(small_disk)
        with pytest.raises(exceptions.BackendUnavailable):
            await svc.create_task("web", {"title": "no room"})
        r = await http.get("/readyz")
        assert r.status_code == 503, r.text
        with pytest.raises(exceptions.BackendUnavailable):
            await backend.ping()
        filler.unlink()  # room again: ready after the next successful write
        await svc.create_task("web", {"title": "room again"})
        assert (await http.get("/readyz")).status_code == 200
    await backend.close()


async def test_full_disk_probe_fails_without_a_failed_write(small_disk: Path) -> None:
    async with FlatfileBackend(small_disk / "data", config=FAST) as backend:
        await backend.ping()
        fill(small_disk)
        with pytest.raises(exceptions.BackendUnavailable):
            await backend.ping()  # permission bits still say "writable"; the probe does not


async def test_failed_compaction_backs_off(small_disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with FlatfileBackend(small_disk / "data", config=FAST, compaction=CompactionPolicy(min_entries=10**9)) as b:
        svc = QueueService(b)
        await svc.create_project({"slug": "web", "key_prefix": "WEB"})
        # a snapshot much larger than the room that will be left
        await svc.create_tasks("web", [{"title": f"task {i} " + "x" * 400} for i in range(200)])
        task = await svc.create_task("web", {"title": "heartbeat me"})
        claim = await svc.claim("web", "a", lease_seconds=60)
        assert claim is not None
        fill(small_disk, leave=64 * 1024)  # room for journal lines, not for a snapshot
        files = b.files("web")
        files.policy = CompactionPolicy(min_entries=1, ratio=0.0)  # every write wants a compaction now
        caplog.set_level(logging.WARNING, logger="flatfile")
        for _ in range(20):
            await svc.heartbeat("web", claim.task.key, claim.lease.token, 60)
        failures = [r for r in caplog.records if "compaction of project web failed" in r.getMessage()]
        assert len(failures) == 1, [r.getMessage() for r in failures]
        assert (await svc.get_task("web", task.key)).title == "heartbeat me"  # writes kept working
