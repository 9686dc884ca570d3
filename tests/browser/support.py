"""A real ``queue-service serve`` (uvicorn, flatfile by default) on a free port, Debian's chromium
driven by Playwright, and demo data. Shared by the browser tests and ``scripts/ui-screenshots``."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from queue_service.client import Client

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class Server:
    url: str
    port: int
    env: dict[str, str]
    log: Path
    #: the module run with ``python -m`` (the real CLI by default)
    module: str = "queue_service"
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        """Start (or restart, on the same port and data) and wait until it is ready."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    self.module,
                    *(["serve", "--port", str(self.port)] if self.module == "queue_service" else []),
                ],
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        p = self.process
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        self.process = None

    def client(self, token: str | None = None) -> Client:
        return Client(self.url, token=token)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve(data_dir: Path, module: str = "queue_service", **env: str) -> Iterator[Server]:
    """``queue-service serve`` (or ``python -m module`` reading QUEUE_PORT) on a free loopback port
    with its data in *data_dir* (flatfile unless *env* names a database)."""
    port = free_port()
    base = {
        "QUEUE_DATA_DIR": str(data_dir),
        "QUEUE_HOST": "127.0.0.1",
        "QUEUE_PORT": str(port),
        "QUEUE_SYNC": "false",
        "QUEUE_LEASE_SECONDS": "600",
        "QUEUE_BACKOFF_BASE_SECONDS": "0",
        "QUEUE_BACKOFF_MAX_SECONDS": "0",
        "QUEUE_LOG_LEVEL": "warning",
    }
    server = Server(f"http://127.0.0.1:{port}", port, {**base, **env}, data_dir.parent / f"server-{port}.log", module)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def launch_options() -> dict[str, Any]:
    """Playwright's ``chromium.launch`` arguments for Debian's chromium (no downloaded browser)."""
    return {"executable_path": CHROMIUM, "args": CHROMIUM_ARGS, "headless": True}


def fail_until_dead(client: Client, project: str, key: str, role: str, errors: list[str]) -> None:
    """Claim *key* (the only ready task in *role*) and fail it once per error (each attempt publishes
    a line of output first, for the task page's live output)."""
    for attempt, error in enumerate(errors, start=1):
        claim = None
        for _ in range(100):
            claim = client.claim(project, roles=[role])
            if claim is not None:
                break
            time.sleep(0.05)
        assert claim is not None and claim.task.key == key, claim
        client.publish(project, key, [f"attempt {attempt}: fetching the feed", f"error: {error}"], claim.lease.token)
        client.fail(project, key, claim.lease.token, error)


def seed_demo(client: Client, project: str = "web") -> dict[str, str]:
    """A small but lively project: a mission DAG in every status, an agent holding work, a dead
    letter with two recorded errors, notes, and an hour of throughput."""
    client.create_project({"slug": project, "name": "Web shop"})
    client.create_mission(project, {"id": "launch", "name": "Launch v1"})
    spec = [
        ("Design data model", "backend", "P1", []),
        ("Write migrations", "backend", "P1", [0]),
        ("Product API", "backend", "P0", [1]),
        ("Cart API", "backend", "P1", [1]),
        ("Checkout flow", "frontend", "P0", [2, 3]),
        ("Product pages", "frontend", "P2", [2]),
        ("Payment provider", "backend", "P1", [3]),
        ("Load test", "qa", "P2", [4, 6]),
        ("Launch checklist", "ops", "P1", [5, 7]),
    ]
    keys: list[str] = []
    for title, role, prio, deps in spec:
        task = client.create_task(
            project,
            {
                "title": title,
                "role": role,
                "priority": prio,
                "mission": "launch",
                "depends_on": [keys[d] for d in deps],
                "labels": ["v1"],
                "description": f"{title} for the v1 launch.",
            },
        )
        keys.append(task.key)
    with Client(client.base_url, token=client._token, agent="builder-7") as agent:
        for i in (0, 1):
            claim = agent.claim(project, roles=["backend"])
            assert claim is not None
            agent.complete(project, claim.task.key, claim.lease.token, {"ok": True, "step": i})
        claim = agent.claim(project, roles=["backend"])
        assert claim is not None
        agent.add_note(project, claim.task.key, "Endpoints sketched; pagination next.", author="builder-7")
        busy = claim.task.key
        claim2 = agent.claim(project, roles=["backend"])
        assert claim2 is not None
        agent.complete(project, claim2.task.key, claim2.lease.token, None)
    client.update_task(project, keys[5], {"status": "needs-qa"})
    client.update_task(project, keys[6], {"status": "blocked", "blocked_reason": "waiting for API keys"})
    flaky = client.create_task(project, {"title": "Nightly import", "role": "importer", "max_attempts": 2})
    fail_until_dead(client, project, flaky.key, "importer", ["timeout after 30 s", "HTTP 502 from supplier feed"])
    for i in range(6):
        client.create_task(project, {"title": f"Copy edit page {i + 1}", "role": "writer", "priority": "P3"})
    return {"busy": busy, "dead": flaky.key, "first": keys[0], "mission": "launch"}
