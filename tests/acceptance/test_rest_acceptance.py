"""The real service (uvicorn in a subprocess) on Postgres + Valkey, driven over HTTP by the typed client.

Each test gets a fresh database (``pg_url``) and its own Valkey key space (``valkey_prefix``); the
servers are stopped and everything they made is removed afterwards.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from queue_service import exceptions
from queue_service.auth import create_token
from queue_service.client import AsyncClient, Client
from queue_service.models import Task, TaskStatus
from queue_service.postgres.backend import PostgresValkeyBackend

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spawn(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.acceptance.serve_app"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _wait_ready(server: Server, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"server exited with {server.process.returncode}:\n{server.log.read_text()}")
        try:
            if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"server not ready after {timeout}s:\n{server.log.read_text()}")


def _stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=10)


StartServer = Callable[..., Server]


@pytest.fixture
def start_server(pg_url: str, valkey_url: str, valkey_prefix: str, tmp_path: Path) -> Iterator[StartServer]:
    """Start replicas of the service sharing this test's database and key space."""
    servers: list[Server] = []

    def start(*, wait: bool = True, **settings: Any) -> Server:
        port = _free_port()
        env = {
            "QUEUE_DATABASE_URL": pg_url,
            "QUEUE_VALKEY_URL": valkey_url,
            "QUEUE_TEST_KEY_PREFIX": valkey_prefix,
            "QUEUE_HOST": "127.0.0.1",
            "QUEUE_PORT": str(port),
            "QUEUE_LEASE_SECONDS": "5",
            "QUEUE_HEARTBEAT_SECONDS": "1",
            "QUEUE_SWEEP_SECONDS": "0.2",
            "QUEUE_BACKOFF_BASE_SECONDS": "0.05",
            "QUEUE_BACKOFF_MAX_SECONDS": "0.2",
            "QUEUE_SYNC": "false",
        }
        env.update({f"QUEUE_{k.upper()}": str(v) for k, v in settings.items()})
        log = tmp_path / f"server-{len(servers)}.log"
        server = Server(f"http://127.0.0.1:{port}", _spawn(env, log), log)
        servers.append(server)
        if wait:
            _wait_ready(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            _stop(server)


def test_round_trip_through_the_typed_client(start_server: StartServer) -> None:
    server = start_server()
    with Client(server.url) as qs:
        assert qs.ready().backend == "postgres+valkey"
        qs.create_project({"slug": "web", "key_prefix": "WEB"})
        schema, api = qs.create_tasks(
            "web", [{"title": "schema", "role": "dev"}, {"title": "api", "depends_on": ["#0"]}]
        )
        assert api.depends_on == (schema.key,)
        assert [t.key for t in qs.list_tasks("web", ready=True).items] == [schema.key]

        claim = qs.claim("web", roles=["dev"], wait_seconds=1)
        assert claim is not None and claim.task.key == schema.key
        qs.heartbeat("web", schema.key, claim.lease.token)
        with pytest.raises(exceptions.LeaseError):
            qs.complete("web", schema.key, "not-the-token")
        done = qs.complete("web", schema.key, claim.lease.token, result={"tables": 3})
        assert done.status is TaskStatus.DONE
        with pytest.raises(exceptions.LeaseError):
            qs.complete("web", schema.key, claim.lease.token)

        second = qs.claim("web", wait_seconds=2)  # the dependent became ready
        assert second is not None and second.task.key == api.key
        qs.release("web", api.key, second.lease.token)

        current = qs.get_task("web", api.key)
        qs.update_task("web", api.key, {"priority": "P0"}, expected_version=current.version)
        with pytest.raises(exceptions.VersionConflict):
            qs.update_task("web", api.key, {"priority": "P1"}, expected_version=current.version)
        with pytest.raises(exceptions.TaskNotFound):
            qs.get_task("web", "WEB-999")

        results = qs.results("web", [schema.key, api.key, "WEB-999"])
        assert results.items[0].result == {"tables": 3}
        assert results.missing == ("WEB-999",)
        kinds = [e.kind for e in qs.events("web", follow=False) if e.task == schema.key]
        assert kinds[0] == "created" and kinds[-1] == "completed"
        assert qs.stats("web").by_status["done"] == 1
        assert 'queue_completions_total{project="web"} 1.0' in qs.metrics()
        assert qs.coord_status()["counts"]["done"] == 1


async def test_live_events_and_resume(start_server: StartServer) -> None:
    server = start_server()
    async with AsyncClient(server.url) as qs:
        await qs.create_project({"slug": "web"})
        task = await qs.create_task("web", {"title": "watch me"})
        start = [e async for e in qs.events("web", follow=False)][-1].id
        seen: list[Any] = []

        async def watch() -> None:
            async for event in qs.events("web", last_event_id=start):
                seen.append(event)
                if event.status is TaskStatus.DONE:
                    return

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0.3)
        claim = await qs.claim("web")
        assert claim is not None
        await qs.heartbeat("web", task.key, claim.lease.token)
        await qs.complete("web", task.key, claim.lease.token)
        await asyncio.wait_for(watcher, 30)
        assert next(e.status for e in seen if e.task == task.key) is TaskStatus.IN_PROGRESS
        assert seen[-1].status is TaskStatus.DONE
        ids = [e.id for e in seen]
        assert ids == sorted(set(ids))
        # reconnecting after the first event replays exactly what followed it
        resumed = [e.id async for e in qs.events("web", last_event_id=ids[0], follow=False)]
        assert resumed == ids[1:]


def test_worker_keeps_a_cpu_bound_lease_over_http(start_server: StartServer) -> None:
    server = start_server(lease_seconds=1, sweep_seconds=0.1)
    with Client(server.url) as qs:
        qs.create_project({"slug": "web"})
        qs.create_task("web", {"title": "crunch"})

        def crunch(task: Task) -> int:
            deadline = time.monotonic() + 3.0  # three leases long, never yielding on purpose
            n = 0
            while time.monotonic() < deadline:
                n += sum(i * i for i in range(200))
            return n

        worker = qs.worker("web", heartbeat_seconds=0.2, wait_seconds=1, stop_when_idle=True)
        assert worker.run(crunch) == 1
        final = qs.get_task("web", "WEB-1")
        assert final.status is TaskStatus.DONE
        assert final.attempts == 0


# 1,000 tasks through two real replicas: ~25 s on a quiet 2-core machine, several times that when the
# machine is shared, so it gets more than the suite-wide 120 s (no assertion is about time)
@pytest.mark.timeout(420)
async def test_two_replicas_eight_agents_each_task_completed_once(start_server: StartServer) -> None:
    total = 1000
    replicas = [await asyncio.to_thread(start_server), await asyncio.to_thread(start_server)]
    async with AsyncClient(replicas[0].url, timeout=60) as admin:
        await admin.create_project({"slug": "load"})
        for start in range(0, total, 500):
            await admin.create_tasks("load", [{"title": f"t{i}"} for i in range(start, start + 500)])

    clients = [AsyncClient(replicas[i % 2].url, timeout=60) for i in range(8)]
    handled: dict[str, int] = {}

    async def agent(client: AsyncClient, n: int) -> None:
        worker = client.worker("load", agent=f"agent-{n}", wait_seconds=1, stop_when_idle=True)

        async def work(task: Task) -> dict[str, Any]:
            return {"agent": f"agent-{n}"}

        handled[f"agent-{n}"] = await worker.run(work)

    try:
        await asyncio.gather(*(agent(c, n) for n, c in enumerate(clients)))
    finally:
        for c in clients:
            await c.aclose()

    assert sum(handled.values()) == total
    assert sum(1 for n in handled.values() if n > 0) >= 2  # the work really was shared
    async with AsyncClient(replicas[1].url, timeout=60) as qs:
        tasks = [t async for t in qs.iter_tasks("load")]
        assert len(tasks) == total
        assert Counter(t.status for t in tasks) == {TaskStatus.DONE: total}
        assert all(t.attempts == 0 for t in tasks)
        assert {t.result["agent"] for t in tasks} <= set(handled)
        completions = Counter([e.task async for e in qs.events("load", follow=False) if e.kind == "completed"])
        assert len(completions) == total
        assert set(completions.values()) == {1}


def test_refuses_to_start_exposed_without_tokens(start_server: StartServer) -> None:
    server = start_server(wait=False, host="0.0.0.0")
    assert server.process.wait(timeout=60) != 0
    assert "refusing to start: bound to 0.0.0.0" in server.log.read_text()


async def test_exposed_with_a_token_requires_it(
    start_server: StartServer, pg_url: str, valkey_url: str, valkey_prefix: str
) -> None:
    backend = PostgresValkeyBackend(pg_url, valkey_url, key_prefix=valkey_prefix)
    async with backend:
        token, _ = await create_token(backend.records, None, "admin", name="ops")
    server = await asyncio.to_thread(start_server, host="0.0.0.0")
    async with AsyncClient(server.url) as anonymous:
        with pytest.raises(exceptions.AuthError):
            await anonymous.list_projects()
    async with AsyncClient(server.url, token=token) as admin:
        assert (await admin.create_project({"slug": "web"})).slug == "web"


AGENT_SCRIPT = """
import sys, time
from queue_service.client import Client
with Client(sys.argv[1]) as qs:
    claim = qs.claim("web", lease_seconds=1, wait_seconds=5)
    print(claim.task.key if claim else "-", flush=True)
    time.sleep(600)
"""


def test_killed_agent_task_is_reclaimed_after_its_lease(start_server: StartServer) -> None:
    server = start_server(sweep_seconds=0.1)
    with Client(server.url) as qs:
        qs.create_project({"slug": "web"})
        task = qs.create_task("web", {"title": "doomed agent"})
        agent = subprocess.Popen(
            [sys.executable, "-c", AGENT_SCRIPT, server.url], cwd=ROOT, stdout=subprocess.PIPE, env=dict(os.environ)
        )
        try:
            assert agent.stdout is not None
            assert agent.stdout.readline().decode().strip() == task.key
            agent.kill()  # SIGKILL: no release, no goodbye
            agent.wait(timeout=10)
            claim = qs.claim("web", "survivor", wait_seconds=30)
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait(timeout=10)
            if agent.stdout is not None:
                agent.stdout.close()
        assert claim is not None
        assert claim.task.key == task.key
        assert claim.task.attempts == 1
        qs.complete("web", task.key, claim.lease.token)
