"""Reliability on real Postgres + Redis: killed agents, zombies, long work, a Valkey flush mid-run.

Agents that must die or freeze run as real subprocesses (``tests/integration/agents/worker.py``).
Bounds are correctness bounds with tolerant margins ("reclaimable within lease + sweep period of the
last renewal"), never speed targets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio as aioredis

from queue_service.models import Event, TaskStatus
from queue_service.postgres.backend import PostgresValkeyBackend
from queue_service.service import QueueService
from queue_service.sweeper import Sweeper
from tests.integration.pgvk import fast, open_backend

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

S = TaskStatus
ROOT = Path(__file__).resolve().parents[2]
HEARTBEAT = 0.5
LEASE = 0.75  # 1.5 × heartbeat: reclaimable within lease + sweep of the last renewal


async def all_events(backend: PostgresValkeyBackend, project: str = "web") -> list[Event]:
    out: list[Event] = []
    after = 0
    while page := await backend.records.list_events(project, after_id=after, limit=1000):
        out.extend(page)
        after = page[-1].id
    return out


class Agent:
    """A worker subprocess and its JSON-lines output."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []

    @classmethod
    async def start(
        cls,
        pg_url: str,
        valkey_url: str,
        prefix: str,
        mode: str,
        *,
        seconds: float = 1.0,
        lease: float = LEASE,
        heartbeat: float = HEARTBEAT,
    ) -> Agent:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.integration.agents.worker",
            "--db", pg_url, "--valkey", valkey_url, "--prefix", prefix, "--project", "web",
            "--mode", mode, "--seconds", str(seconds), "--lease", str(lease), "--heartbeat", str(heartbeat),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        return cls(proc)

    async def next_line(self, timeout: float = 30.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            raise EOFError(f"agent exited ({await self.proc.wait()}) after {self.lines}")
        line: dict[str, Any] = json.loads(raw)
        self.lines.append(line)
        return line

    async def wait_for(self, key: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            line = await self.next_line(max(0.1, deadline - time.monotonic()))
            if key in line:
                return line

    async def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await self.proc.wait()


@pytest.fixture
async def backend(pg_url: str, valkey_url: str, valkey_prefix: str) -> AsyncIterator[PostgresValkeyBackend]:
    async with open_backend(
        pg_url, valkey_url, valkey_prefix, fast(lease_seconds=LEASE, heartbeat_seconds=HEARTBEAT)
    ) as b:
        await QueueService(b).create_project({"slug": "web", "key_prefix": "WEB"})
        yield b


async def test_sigkilled_agent_task_is_reclaimed_within_lease_plus_sweep(
    backend: PostgresValkeyBackend, pg_url: str, valkey_url: str, valkey_prefix: str
) -> None:
    t = await QueueService(backend).create_task("web", {"title": "crashy"})
    agent = await Agent.start(pg_url, valkey_url, valkey_prefix, "hold")
    try:
        claimed = await agent.wait_for("claimed")
        assert claimed["claimed"] == t.key
        await agent.wait_for("heartbeat")  # it is alive and heartbeating...
        await asyncio.sleep(HEARTBEAT * 0.6)
        agent.proc.send_signal(signal.SIGKILL)  # ...then dies mid-task without a word
        killed_at = time.monotonic()
        await agent.proc.wait()
    finally:
        await agent.kill()
    sweep = 0.1
    async with Sweeper(backend, interval=sweep):
        c = await backend.dispatch.claim("web", "rescuer", wait=10.0, lease_seconds=30.0)
        reclaimed_after = time.monotonic() - killed_at
        assert c is not None
        assert c.task.key == t.key
        assert c.task.attempts == 1  # the dead attempt was counted
        done = await backend.dispatch.complete("web", t.key, c.lease.token, result="rescued")
    # the agent renewed at most HEARTBEAT before it was killed; tolerant margin: the machine is shared
    print(f"reclaimed {reclaimed_after:.3f}s after the kill (bound: lease {LEASE}s + sweep {sweep}s)")
    assert reclaimed_after <= LEASE + sweep + 0.5, reclaimed_after
    assert done.status is S.DONE
    kinds = Counter(e.kind for e in await all_events(backend) if e.task == t.key)
    assert kinds["claimed"] == 2
    assert kinds["lease_expired"] == 1
    assert kinds["completed"] == 1


async def test_zombie_completion_is_refused_after_reclaim(
    backend: PostgresValkeyBackend, pg_url: str, valkey_url: str, valkey_prefix: str
) -> None:
    t = await QueueService(backend).create_task("web", {"title": "zombie"})
    agent = await Agent.start(pg_url, valkey_url, valkey_prefix, "sleep", seconds=1.0)
    try:
        claimed = await agent.wait_for("claimed")
        agent.proc.send_signal(signal.SIGSTOP)  # frozen mid-task (GC pause, laptop lid, debugger...)
        assert claimed["claimed"] == t.key
        async with Sweeper(backend, interval=0.1):
            c = await backend.dispatch.claim("web", "rescuer", wait=10.0, lease_seconds=30.0)
            assert c is not None
            assert c.task.key == t.key
            done = await backend.dispatch.complete("web", t.key, c.lease.token, result="rescuer's")
        assert done.status is S.DONE
        before = await backend.records.get_task("web", t.key)
        agent.proc.send_signal(signal.SIGCONT)
        outcome = await agent.wait_for("completed", timeout=30.0)
        assert outcome["completed"] is None
        assert outcome["refused"] == "lease_invalid"
        assert await asyncio.wait_for(agent.proc.wait(), 30.0) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            agent.proc.send_signal(signal.SIGCONT)
        await agent.kill()
    after = await backend.records.get_task("web", t.key)
    assert after == before  # the zombie changed nothing
    assert after.result == "rescuer's"
    kinds = Counter(e.kind for e in await all_events(backend) if e.task == t.key)
    assert kinds["completed"] == 1


async def test_long_cpu_bound_task_with_heartbeats_is_never_handed_out_twice(
    backend: PostgresValkeyBackend, pg_url: str, valkey_url: str, valkey_prefix: str
) -> None:
    t = await QueueService(backend).create_task("web", {"title": "long"})
    lease, heartbeat = 1.5, 0.3  # heartbeat 5× per lease: tolerant of a loaded machine
    agent = await Agent.start(
        pg_url, valkey_url, valkey_prefix, "burn", seconds=3 * lease, lease=lease, heartbeat=heartbeat
    )
    rival_claims: list[str] = []
    stop = asyncio.Event()

    async def rival() -> None:
        while not stop.is_set():
            c = await backend.dispatch.claim("web", "rival", wait=0.2)
            if c is not None:
                rival_claims.append(c.task.key)

    try:
        await agent.wait_for("claimed")
        async with Sweeper(backend, interval=0.1):
            rival_task = asyncio.create_task(rival())
            outcome = await agent.wait_for("completed", timeout=60.0)
            stop.set()
            await rival_task
        assert await asyncio.wait_for(agent.proc.wait(), 30.0) == 0
    finally:
        await agent.kill()
    burned = next(line for line in agent.lines if "burned" in line)
    assert burned["burned"] > 0
    assert outcome["completed"] == t.key
    assert rival_claims == []
    heartbeats = [line for line in agent.lines if "heartbeat" in line]
    assert len(heartbeats) >= 3
    assert not any("refused" in h for h in heartbeats)
    final = await backend.records.get_task("web", t.key)
    assert final.status is S.DONE
    assert final.attempts == 0
    kinds = Counter(e.kind for e in await all_events(backend) if e.task == t.key)
    assert kinds["claimed"] == 1
    assert kinds["lease_expired"] == 0


# -- Valkey flush mid-run -------------------------------------------------------------------------

_FLUSH_DB_CANDIDATES = (13, 14, 15, 12, 11, 10)
_FLUSH_OWNER_KEY = "queue-service-tests:flush-owner"


@pytest.fixture
async def flushable_valkey_url(valkey_url: str) -> AsyncIterator[str]:
    """A Redis URL on a logical database of its own (empty when we took it), so FLUSHDB is safe.

    Never database 0, which other test runs share. Ownership is a marker key set with NX in an empty
    database; another run of this test picks the next candidate.
    """
    parts = urlsplit(valkey_url)
    owner = uuid.uuid4().hex
    for db in _FLUSH_DB_CANDIDATES:
        url = urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))
        client = aioredis.Redis.from_url(url, decode_responses=True)
        try:
            if await client.dbsize() == 0 and await client.set(_FLUSH_OWNER_KEY, owner, nx=True, ex=600):
                try:
                    yield url
                finally:
                    await client.flushdb()
                return
        finally:
            await client.aclose()
    pytest.fail(f"no empty Redis database among {_FLUSH_DB_CANDIDATES} for the flush test")


async def test_valkey_flush_mid_run_loses_nothing(pg_url: str, flushable_valkey_url: str) -> None:
    prefix = f"mosaic:queue:t{uuid.uuid4().hex[:12]}"
    config = fast(lease_seconds=10.0, heartbeat_seconds=3.0, sweep_seconds=0.1)
    async with open_backend(pg_url, flushable_valkey_url, prefix, config) as backend:
        svc = QueueService(backend)
        await svc.create_project({"slug": "web", "key_prefix": "WEB"})
        rng = random.Random(3)
        items: list[dict[str, Any]] = []
        for layer in range(5):
            for _ in range(100):
                deps = [] if layer == 0 else [f"#{d}" for d in rng.sample(range((layer - 1) * 100, layer * 100), 2)]
                items.append({"title": f"L{layer}", "depends_on": deps})
        tasks = await svc.create_tasks("web", items)
        assert len(tasks) == 500
        completed: list[str] = []
        flushed = asyncio.Event()
        deadline = time.monotonic() + 120

        async def worker(i: int) -> None:
            while len(completed) < 500 and time.monotonic() < deadline:
                c = await backend.dispatch.claim("web", f"w{i}", wait=0.3)
                if c is None:
                    continue
                await backend.dispatch.complete("web", c.task.key, c.lease.token, result=i)
                completed.append(c.task.key)
                if len(completed) >= 150 and not flushed.is_set():
                    flushed.set()
                    await backend.broker.client.flushdb()  # the whole (dedicated) database

        async with Sweeper(backend, interval=0.1) as orch:
            await asyncio.gather(*(worker(i) for i in range(8)))
        assert flushed.is_set()
        assert orch.failures == 0
        assert len(completed) == 500
        assert len(set(completed)) == 500
        page = await backend.records.list_tasks("web", limit=1000)
        assert {t.status for t in page.items} == {S.DONE}
        events = await all_events(backend)
        per_task = Counter(e.task for e in events if e.kind == "completed")
        assert set(per_task.values()) == {1}
        assert len(per_task) == 500
        claimed = Counter(e.task for e in events if e.kind == "claimed")
        assert set(claimed.values()) == {1}
        ids = {e.task: e.id for e in events if e.kind == "claimed"}
        done_ids = {e.task: e.id for e in events if e.kind == "completed"}
        for t in page.items:
            for dep in t.depends_on:
                assert ids[t.key] > done_ids[dep]
