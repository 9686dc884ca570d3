"""Findings 3 and 6: hostile files inside a workspace (a FIFO, a link to /dev/zero, a huge file, a
TASKS.md or lock file symlinked elsewhere) must be refused, never read through, and never stall the
service.

Anything a ``qs run`` child can do in its working directory (the workspace) is fair game here. Each
test asserts the refusal (a sync ``problem`` in ``GET …/sync``), that nothing outside the root and no
stored data changed, and that the service keeps answering.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from pathlib import Path

import filelock
import pytest

from tests.security.workspace_support import Stage, make_layout, stage

# today's code blocks the event loop forever on a FIFO: only pytest-timeout's signal ends the test
pytestmark = pytest.mark.timeout(60)

#: room above the current address space a test may use; reading /dev/zero through a followed link
#: would otherwise take every byte of the machine's memory before anything notices
_HEADROOM = 3 << 30
_SPARSE = 64 << 20


@pytest.fixture(autouse=True)
def _memory_ceiling() -> Iterator[None]:
    with open("/proc/self/status") as fh:
        size_kb = next(int(line.split()[1]) for line in fh if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    ceiling = size_kb * 1024 + _HEADROOM
    if hard != resource.RLIM_INFINITY:
        ceiling = min(ceiling, hard)
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


async def _problem(st: Stage, project: str = "evil", mission: str = "default") -> str:
    files = {f["mission"]: f for f in (await st.sync_status(project))["files"]}
    return str(files[mission]["problem"] or "")


async def test_fifo_named_tasks_md_does_not_hang_the_service(tmp_path: Path) -> None:
    make_layout(tmp_path)
    (tmp_path / "root" / "evil").mkdir()
    fifo = tmp_path / "root" / "evil" / "TASKS.md"
    os.mkfifo(fifo)
    # the FIFO is there at start-up: the reported server never even bound its port
    async with stage(tmp_path) as st:
        stored = await st.stored()
        await st.settle()
        assert "not a regular file" in await _problem(st)
        health = await st.operator.get("/v1/projects")
        assert health.status_code == 200
        assert await st.stored() == stored
    assert fifo.is_fifo()


async def test_symlink_to_dev_zero_named_tasks_md_is_refused(tmp_path: Path) -> None:
    async with stage(tmp_path) as st:
        await st.settle()
        target = st.root / "evil" / "TASKS.md"
        target.unlink()
        os.symlink("/dev/zero", target)
        stored = await st.stored()
        await st.settle()
        assert "symlink" in await _problem(st)
        assert await st.stored() == stored
        assert os.readlink(target) == "/dev/zero"


async def test_oversized_tasks_md_is_refused_without_reading_it(tmp_path: Path) -> None:
    async with stage(tmp_path) as st:
        await st.settle()
        target = st.root / "evil" / "TASKS.md"
        with open(target, "r+b") as fh:
            fh.truncate(_SPARSE)  # sparse: no disk used, far over the size cap
        stored = await st.stored()
        await st.settle()
        assert "larger than" in await _problem(st)
        assert await st.stored() == stored
        assert target.stat().st_size == _SPARSE


async def test_tasks_md_symlinked_to_another_projects_file_is_refused(tmp_path: Path) -> None:
    # the reported attack imported victim's tasks and cancelled evil's as "row removed"
    async with stage(tmp_path) as st:
        for title in ("Victim plan A", "Victim plan B"):
            await st.operator.post("/v1/projects/victim/tasks", json={"title": title})
        for title in ("Evil own 1", "Evil own 2"):
            await st.attacker.post("/v1/projects/evil/tasks", json={"title": title})
        await st.settle()
        victim_file = st.root / "victim" / "TASKS.md"
        victim_bytes = victim_file.read_bytes()
        evil_file = st.root / "evil" / "TASKS.md"
        evil_file.unlink()
        os.symlink("../victim/TASKS.md", evil_file)
        stored = await st.stored()
        await st.settle()
        assert "symlink" in await _problem(st)
        assert await st.stored() == stored  # no task imported, none cancelled
        assert victim_file.read_bytes() == victim_bytes
        assert os.path.islink(evil_file)


async def test_symlinked_lock_file_is_refused_and_its_target_kept(tmp_path: Path) -> None:
    async with stage(tmp_path) as st:
        await st.settle()
        keys = st.home / ".ssh" / "authorized_keys"
        before = keys.read_bytes()
        lock = st.root / "evil" / ".TASKS.md.lock"
        lock.unlink(missing_ok=True)
        os.symlink(keys, lock)
        await st.attacker.post("/v1/projects/evil/tasks", json={"title": "wake the sync"})
        stored = await st.stored()
        outside = st.outside_files()
        await st.settle()
        assert "symlink" in await _problem(st)
        assert keys.read_bytes() == before
        assert st.outside_files() == outside
        assert await st.stored() == stored


def test_pinned_filelock_refuses_a_symlinked_lock_file(tmp_path: Path) -> None:
    # the runner still takes its guard lock through filelock: the pinned version must not follow
    # a planted link (filelock < 3.20.1 opened it with O_TRUNC and emptied the target, CVE-2025-68146)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    link = tmp_path / "guard.lock"
    os.symlink(victim, link)
    lock = filelock.FileLock(str(link), timeout=0)
    with pytest.raises(OSError):  # noqa: PT012 - acquire either raises, or we release and fail below
        lock.acquire()
        lock.release()
    assert victim.read_bytes() == b"precious\n"
