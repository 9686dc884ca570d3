"""The coord runner (``queue-service run``) with real child processes.

In-process cases drive :class:`queue_service.runner.Runner` over the in-memory backend; the
cross-process cases (SIGKILL / SIGTERM of the runner) run the real CLI in a subprocess on a backend
the processes share: flatfile, and Postgres + Valkey.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from queue_service import exceptions
from queue_service.backend_factory import backend_from_url
from queue_service.dispatch_config import DispatchConfig
from queue_service.models import Task, TaskStatus
from queue_service.runner import (
    CAPSULE_FILE,
    LOCK_FILE,
    SESSIONS_FILE,
    Runner,
    RunnerOptions,
    SessionLocked,
    orchestrator_dir,
    pid_alive,
)
from queue_service.service import QueueService
from queue_service.testing import InMemoryBackend
from queue_service.workspaces import WorkspacePolicy
from tests.fixtures.timing import fast

FAST = fast(lease_seconds=5.0, heartbeat_seconds=1.0, max_queue_depth=DispatchConfig().max_queue_depth)


def write_pid(path: Path) -> str:
    """Child code writing its pid to *path* atomically (a reader never sees an empty file)."""
    tmp = str(path) + ".tmp"
    return (
        f"import os; f = open({tmp!r}, 'w'); f.write(str(os.getpid())); f.close(); os.replace({tmp!r}, {str(path)!r})"
    )


def py(code: str) -> list[str]:
    """A child command: this Python running *code*."""
    return [sys.executable, "-c", textwrap.dedent(code)]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll until *check* is true (tolerant of a busy machine; never a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
async def svc() -> AsyncIterator[QueueService]:
    async with InMemoryBackend(config=FAST) as backend:
        service = QueueService(backend, workspaces=WorkspacePolicy(operator=True))
        await service.create_project({"slug": "web", "key_prefix": "WEB"})
        yield service


def runner(svc: QueueService, tmp_path: Path, command: list[str], **options: Any) -> Runner:
    opts: dict[str, Any] = {"workspace": tmp_path, "idle_exit": 0.0, "poll_seconds": 0.2, "sweep_seconds": 0.05}
    opts.update(options)
    return Runner(svc, RunnerOptions(project="web", command=command, **opts), sweep=svc.backend.dispatch.sweep)


async def test_success_passes_the_task_and_completes_with_stdout(svc: QueueService, tmp_path: Path) -> None:
    await svc.create_task("web", {"title": "Say hello", "role": "dev"})
    child = py(
        """
        import json, os, sys
        task = json.load(sys.stdin)
        orch = os.path.join(".mosaic", "orchestrator")
        print(json.dumps({
            "stdin": task,
            "env": {k: v for k, v in os.environ.items() if k.startswith("QUEUE_")},
            "cwd": os.getcwd(),
            "lock": json.load(open(os.path.join(orch, "session.lock"))),
            "capsule": json.load(open(os.path.join(orch, "next-task.json"))),
        }))
        """
    )
    summary = await runner(svc, tmp_path, child, max_tasks=1).run(handle_signals=False)
    assert [(o.key, o.outcome, o.exit_code) for o in summary.outcomes] == [("WEB-1", "completed", 0)]
    assert summary.exit_code == 0
    task = await svc.get_task("web", "WEB-1")
    assert task.status is TaskStatus.DONE
    assert task.result["exit_code"] == 0
    assert task.result["stdout_truncated"] is False
    seen = json.loads(task.result["stdout"])
    assert seen["stdin"]["key"] == "WEB-1"
    assert seen["stdin"]["title"] == "Say hello"
    assert seen["env"]["QUEUE_TASK_KEY"] == "WEB-1"
    assert seen["env"]["QUEUE_TASK_TITLE"] == "Say hello"
    assert seen["env"]["QUEUE_PROJECT"] == "web"
    assert seen["env"]["QUEUE_TASK_ROLE"] == "dev"
    assert seen["env"]["QUEUE_SESSION_ID"] == "sess-001"
    assert Path(seen["cwd"]).resolve() == tmp_path.resolve()
    lock = seen["lock"]
    assert {"session_id", "runtime", "pid", "started_at", "project_path"} <= set(lock)
    assert lock["session_id"] == "sess-001"
    assert lock["runtime"] == Path(sys.executable).name
    assert lock["pid"] == os.getpid()
    assert Path(lock["project_path"]) == tmp_path.resolve()
    assert seen["capsule"]["task"]["key"] == "WEB-1"
    assert seen["capsule"]["session_id"] == "sess-001"
    # after a clean stop the lock is gone and the session is recorded
    orch = orchestrator_dir(tmp_path)
    assert not (orch / LOCK_FILE).exists()
    assert (orch / CAPSULE_FILE).exists()
    history = [json.loads(line) for line in (orch / SESSIONS_FILE).read_text().splitlines()]
    assert [(h["event"], h["session_id"]) for h in history] == [("started", "sess-001"), ("ended", "sess-001")]


async def test_session_ids_increment_per_run(svc: QueueService, tmp_path: Path) -> None:
    ids = []
    for _ in range(3):
        summary = await runner(svc, tmp_path, py("pass")).run(handle_signals=False)
        ids.append(summary.session_id)
    assert ids == ["sess-001", "sess-002", "sess-003"]


async def test_failure_is_retried_then_succeeds(svc: QueueService, tmp_path: Path) -> None:
    await svc.create_task("web", {"title": "Flaky"})
    child = py(
        """
        import os, sys
        if os.environ["QUEUE_TASK_ATTEMPT"] == "1":
            sys.stderr.write("x" * 10000 + "boom: disk on fire\\n")
            sys.exit(3)
        print("second time lucky")
        """
    )
    summary = await runner(svc, tmp_path, child, max_tasks=2, idle_exit=10.0, tail_chars=100).run(handle_signals=False)
    assert [(o.outcome, o.exit_code) for o in summary.outcomes] == [("retry", 3), ("completed", 0)]
    task = await svc.get_task("web", "WEB-1")
    assert task.status is TaskStatus.DONE
    assert task.attempts == 1
    assert task.last_error is not None
    assert task.last_error.startswith("exit code 3: ")
    assert task.last_error.endswith("boom: disk on fire")
    assert len(task.last_error) < 150  # only the tail of stderr is kept
    assert task.result["stdout"] == "second time lucky\n"


async def test_exhausted_retries_dead_letter(svc: QueueService, tmp_path: Path) -> None:
    await svc.create_task("web", {"title": "Hopeless", "max_attempts": 1})
    summary = await runner(svc, tmp_path, py("import sys; sys.exit(2)")).run(handle_signals=False)
    assert [o.outcome for o in summary.outcomes] == ["failed"]
    task = await svc.get_task("web", "WEB-1")
    assert task.status is TaskStatus.FAILED
    assert task.last_error == "exit code 2"


async def test_heartbeats_keep_a_long_task_alive(svc: QueueService, tmp_path: Path) -> None:
    """The lease is much shorter than the child's run; the sweeper runs all along."""
    await svc.create_task("web", {"title": "Slow"})
    summary = await runner(svc, tmp_path, py("import time; time.sleep(1.5)"), lease_seconds=0.5).run(
        handle_signals=False
    )
    assert [o.outcome for o in summary.outcomes] == ["completed"]
    task = await svc.get_task("web", "WEB-1")
    assert task.status is TaskStatus.DONE
    assert task.attempts == 0


async def test_lost_lease_stops_the_child_and_discards_its_result(svc: QueueService, tmp_path: Path) -> None:
    """Heartbeats slower than the lease: the sweeper reclaims the task; the zombie must not complete it."""
    await svc.create_task("web", {"title": "Zombie"})
    pidfile = tmp_path / "child.pid"
    child = py(f"{write_pid(pidfile)}; import time; time.sleep(60)")
    summary = await runner(
        svc, tmp_path, child, lease_seconds=0.2, heartbeat_seconds=1.0, max_tasks=1, stop_grace_seconds=1.0
    ).run(handle_signals=False)
    assert [o.outcome for o in summary.outcomes] == ["lost"]
    assert not pid_alive(int(pidfile.read_text()))
    task = await svc.get_task("web", "WEB-1")
    assert task.status is TaskStatus.NOT_STARTED  # reclaimed: ready for someone else
    assert task.attempts == 1


async def test_stop_terminates_children_and_releases_their_tasks(svc: QueueService, tmp_path: Path) -> None:
    await svc.create_tasks("web", [{"title": "Long one"}, {"title": "Long two"}])
    pids = tmp_path / "pids"
    pids.mkdir()
    child = py(
        f"""
        import os, time
        key = os.environ["QUEUE_TASK_KEY"]
        tmp = os.path.join({str(tmp_path)!r}, key + ".tmp")
        with open(tmp, "w") as fh:
            fh.write(str(os.getpid()))
        os.replace(tmp, os.path.join({str(pids)!r}, key))
        time.sleep(60)
        """
    )
    r = runner(svc, tmp_path, child, concurrency=2, idle_exit=None, stop_grace_seconds=2.0)
    running = asyncio.create_task(r.run(handle_signals=False))

    async def both_started() -> bool:
        return len(list(pids.iterdir())) == 2

    await eventually(both_started, what="both children to start")
    r.stop("test over")
    summary = await asyncio.wait_for(running, 30)
    assert sorted((o.key, o.outcome) for o in summary.outcomes) == [("WEB-1", "released"), ("WEB-2", "released")]
    assert summary.stop_reason == "test over"
    for f in pids.iterdir():
        assert not pid_alive(int(f.read_text()))
    for key in ("WEB-1", "WEB-2"):
        task = await svc.get_task("web", key)
        assert task.status is TaskStatus.NOT_STARTED
        assert task.attempts == 0  # a release is not an attempt
    assert not (orchestrator_dir(tmp_path) / LOCK_FILE).exists()


async def test_stop_by_signal_reports_the_signal(svc: QueueService, tmp_path: Path) -> None:
    r = runner(svc, tmp_path, py("pass"), idle_exit=None)
    running = asyncio.create_task(r.run(handle_signals=False))
    await eventually(lambda: _true_after(r.stopping is False and (orchestrator_dir(tmp_path) / LOCK_FILE).exists()))
    r.stop("signal SIGTERM", signal.SIGTERM)
    summary = await asyncio.wait_for(running, 30)
    assert summary.exit_code == 128 + signal.SIGTERM


async def _true_after(value: bool) -> bool:
    return value


async def test_concurrency_runs_tasks_side_by_side(svc: QueueService, tmp_path: Path) -> None:
    await svc.create_tasks("web", [{"title": "A"}, {"title": "B"}])
    marks = tmp_path / "marks"
    marks.mkdir()
    # Each child waits until both have started: passes only if they really run at the same time.
    child = py(
        f"""
        import os, sys, time
        marks = {str(marks)!r}
        open(os.path.join(marks, os.environ["QUEUE_TASK_KEY"]), "w").close()
        deadline = time.time() + 30
        while len(os.listdir(marks)) < 2:
            if time.time() > deadline:
                sys.exit(1)
            time.sleep(0.02)
        """
    )
    summary = await runner(svc, tmp_path, child, concurrency=2, max_tasks=2).run(handle_signals=False)
    assert sorted(o.outcome for o in summary.outcomes) == ["completed", "completed"]


async def test_idle_exit_and_max_tasks(svc: QueueService, tmp_path: Path) -> None:
    summary = await runner(svc, tmp_path, py("pass"), idle_exit=0.2).run(handle_signals=False)
    assert summary.outcomes == []
    assert summary.stop_reason.startswith("idle")
    await svc.create_tasks("web", [{"title": str(i)} for i in range(3)])
    summary = await runner(svc, tmp_path, py("pass"), max_tasks=2, idle_exit=None).run(handle_signals=False)
    assert len(summary.outcomes) == 2
    assert summary.stop_reason.startswith("max-tasks")
    assert (await svc.get_task("web", "WEB-3")).status is TaskStatus.NOT_STARTED


async def test_only_the_given_roles_are_claimed(svc: QueueService, tmp_path: Path) -> None:
    await svc.create_tasks("web", [{"title": "dev work", "role": "dev"}, {"title": "qa work", "role": "qa"}])
    summary = await runner(svc, tmp_path, py("pass"), roles=["qa"]).run(handle_signals=False)
    assert [o.key for o in summary.outcomes] == ["WEB-2"]


async def test_workdir_defaults_to_the_current_directory_not_the_projects_workspace(
    svc: QueueService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the project's workspace is a path on the server: the runner never uses it (issue 9, finding 10)
    ws = tmp_path / "project-ws"
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    await svc.create_project({"slug": "api", "workspace": str(ws)})
    await svc.create_task("api", {"title": "where am I"})
    r = Runner(svc, RunnerOptions(project="api", command=py("import os; print(os.getcwd())"), idle_exit=0.0))
    await r.run(handle_signals=False)
    task = await svc.get_task("api", "API-1")
    assert Path(task.result["stdout"].strip()) == here.resolve()
    assert (orchestrator_dir(here) / CAPSULE_FILE).exists()
    assert not ws.exists()


async def test_a_stale_session_lock_is_taken_over(svc: QueueService, tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orch = orchestrator_dir(tmp_path)
    orch.mkdir(parents=True)
    stale = {
        "session_id": "sess-007",
        "runtime": "claude",
        "pid": dead.pid,
        "started_at": "2025-01-01T00:00:00Z",
        "project_path": str(tmp_path),
        "hostname": socket.gethostname(),
    }
    (orch / LOCK_FILE).write_text(json.dumps(stale))
    summary = await runner(svc, tmp_path, py("pass")).run(handle_signals=False)
    assert summary.session_id == "sess-008"
    started = json.loads((orch / SESSIONS_FILE).read_text().splitlines()[0])
    assert started["took_over"] == "sess-007"
    assert not (orch / LOCK_FILE).exists()


async def test_a_live_session_lock_refuses(svc: QueueService, tmp_path: Path) -> None:
    orch = orchestrator_dir(tmp_path)
    orch.mkdir(parents=True)
    live = {"session_id": "sess-003", "runtime": "codex", "pid": os.getpid(), "hostname": socket.gethostname()}
    (orch / LOCK_FILE).write_text(json.dumps(live))
    with pytest.raises(SessionLocked) as info:
        await runner(svc, tmp_path, py("pass")).run(handle_signals=False)
    assert "another runner is active in this workspace: sess-003" in info.value.message
    assert json.loads((orch / LOCK_FILE).read_text()) == live  # untouched


async def test_command_must_exist(svc: QueueService, tmp_path: Path) -> None:
    with pytest.raises(exceptions.ValidationError, match="not found on PATH"):
        await runner(svc, tmp_path, ["no-such-command-xyz"]).run(handle_signals=False)
    assert not orchestrator_dir(tmp_path).exists()


def test_options_are_checked() -> None:
    bad: dict[str, Any]
    for bad in ({"concurrency": 0}, {"max_tasks": 0}, {"idle_exit": -1}, {"lease_seconds": 0}, {"command": []}):
        kwargs: dict[str, Any] = {"project": "web", "command": ["true"], **bad}
        with pytest.raises(exceptions.ValidationError):
            RunnerOptions(**kwargs).check()


def test_pid_alive() -> None:
    assert pid_alive(os.getpid())
    assert not pid_alive(0)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # Not reaped yet: a zombie, which must count as dead (a killed runner's parent may not reap it).
        deadline = time.monotonic() + 30
        while pid_alive(child.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not pid_alive(child.pid)
    finally:
        child.wait()
    assert not pid_alive(child.pid)


# ---------------------------------------------------------------------------------------------
# across processes: the real CLI in a subprocess on Postgres + Valkey


def _other_db(valkey_url: str) -> str:
    """The same server, logical database 9: the CLI cannot take a key prefix, so keep its default
    ``mosaic:queue`` key space (leader lock, epoch marker) away from database 0, which others share."""
    parts = urlsplit(valkey_url)
    return urlunsplit((parts.scheme, parts.netloc, "/9", parts.query, parts.fragment))


@pytest.fixture(params=["flatfile", pytest.param("postgres", marks=pytest.mark.postgres)])
async def shared(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[QueueService, dict[str, str], str]]:
    """A project on a backend several processes share, the env for CLI subprocesses, and its slug."""
    slug = f"run-{uuid.uuid4().hex[:10]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUEUE_", "MOSAIC_"))}
    env.update({"QUEUE_BACKOFF_BASE_SECONDS": "0.1", "QUEUE_BACKOFF_MAX_SECONDS": "0.2", "QUEUE_SWEEP_SECONDS": "0.2"})
    config = DispatchConfig(backoff_base_seconds=0.1, backoff_max_seconds=0.2, backoff_jitter=0.0)
    if request.param == "flatfile":
        data = tmp_path / "queue-data"
        env["QUEUE_DATA_DIR"] = str(data)
        async with backend_from_url(f"file://{data}", config=config) as backend:
            svc = QueueService(backend)
            await svc.create_project({"slug": slug})
            yield svc, env, slug
        return

    import redis.asyncio as redis

    pg_url: str = request.getfixturevalue("pg_url")
    vurl = _other_db(request.getfixturevalue("valkey_url"))
    env.update({"QUEUE_DATABASE_URL": pg_url, "QUEUE_VALKEY_URL": vurl})
    async with backend_from_url(pg_url, valkey_url=vurl, config=config) as backend:
        svc = QueueService(backend)
        await svc.create_project({"slug": slug})
        try:
            yield svc, env, slug
        finally:
            client: Any = redis.Redis.from_url(vurl)
            try:
                keys = [k async for k in client.scan_iter(match=f"mosaic:queue:project:{slug}:*", count=1000)]
                if keys:
                    await client.delete(*keys)
            finally:
                await client.aclose()


def _spawn_run(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "queue_service", "run", *args],
        env={**env, "PYTHONFAULTHANDLER": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def _status(svc: QueueService, slug: str, key: str, *statuses: TaskStatus) -> Task | None:
    task = await svc.get_task(slug, key)
    return task if task.status in statuses else None


def _kill_pidfile(pidfile: Path) -> None:
    if pidfile.exists():
        try:
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


async def test_sigkill_of_the_runner_task_is_reclaimed_after_the_lease(
    shared: tuple[QueueService, dict[str, str], str], tmp_path: Path
) -> None:
    svc, env, slug = shared
    (task,) = await svc.create_tasks(slug, [{"title": "survive a crash"}])
    pidfile = tmp_path / "child.pid"
    sleeper = f"{write_pid(pidfile)}; import time; time.sleep(120)"
    first = _spawn_run(env, slug, "--lease", "2", "--workspace", str(tmp_path), "--", sys.executable, "-c", sleeper)
    try:
        await eventually(
            lambda: _has(_status(svc, slug, task.key, TaskStatus.IN_PROGRESS)), what="the runner to claim the task"
        )
        await eventually(lambda: _true_after(pidfile.exists()), what="the child to start")
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate(timeout=30)
        _kill_pidfile(pidfile)  # the orphaned child would otherwise sleep on
    lock = json.loads((orchestrator_dir(tmp_path) / LOCK_FILE).read_text())
    assert lock["pid"] == first.pid  # left behind by the killed runner

    # A new runner takes over the stale lock; its sweeper reclaims the task once the lease ran out.
    second = _spawn_run(
        env,
        slug,
        "--max-tasks",
        "1",
        "--idle-exit",
        "60",
        "--workspace",
        str(tmp_path),
        "--json",
        "--",
        sys.executable,
        "-c",
        "print('done after the crash')",
    )
    out, err = second.communicate(timeout=90)
    assert second.returncode == 0, err
    summary = json.loads(out)
    assert summary["session_id"] == "sess-002"
    assert [t["outcome"] for t in summary["tasks"]] == ["completed"]
    assert "took over a stale session.lock from sess-001" in err
    done = await svc.get_task(slug, task.key)
    assert done.status is TaskStatus.DONE
    assert done.attempts == 1  # the crashed attempt counted
    assert done.result["stdout"] == "done after the crash\n"


async def _has(value: Awaitable[Any]) -> bool:
    return (await value) is not None


async def test_sigterm_stops_the_child_and_releases_the_task(
    shared: tuple[QueueService, dict[str, str], str], tmp_path: Path
) -> None:
    svc, env, slug = shared
    (task,) = await svc.create_tasks(slug, [{"title": "interrupted"}])
    pidfile = tmp_path / "child.pid"
    sleeper = f"{write_pid(pidfile)}; import time; time.sleep(120)"
    proc = _spawn_run(env, slug, "--workspace", str(tmp_path), "--grace", "5", "--", sys.executable, "-c", sleeper)
    try:
        await eventually(lambda: _true_after(pidfile.exists()), what="the child to start")
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # PYTHONFAULTHANDLER: dump where it is stuck
            _, err = proc.communicate(timeout=30)
            raise AssertionError(f"the runner did not stop after SIGTERM:\n{err}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
        _kill_pidfile(pidfile)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "released" in err
    assert not pid_alive(int(pidfile.read_text()))
    released = await svc.get_task(slug, task.key)
    assert released.status is TaskStatus.NOT_STARTED
    assert released.attempts == 0
    assert released.lease_holder is None
    assert not (orchestrator_dir(tmp_path) / LOCK_FILE).exists()
