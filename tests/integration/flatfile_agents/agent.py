"""Helper processes for tests/integration/test_flatfile*.py (run with ``sys.executable agent.py …``).

Every mode prints one JSON object per line on stdout and flushes after each, so the parent knows
exactly which operations returned (were acknowledged) before it killed the process.

Modes:
  race   DATA PROJECT AGENT          claim + complete until nothing is left
  hold   DATA PROJECT LEASE          claim one task, print its lease, then sleep until killed
  writer DATA PROJECT SEED           random operations forever, acking each (the crash test)
  create DATA PROJECT N DELAY        sleep DELAY seconds, then create N tasks
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from typing import Any

from flatfile.backend import FlatfileBackend
from flatfile.journal import CompactionPolicy
from queue_service import exceptions
from queue_service.backend import DispatchConfig
from queue_service.models import ApiToken, MissionCreate, TaskCreate, TokenRole, utcnow

CONFIG = DispatchConfig(
    lease_seconds=0.3, backoff_base_seconds=0.01, backoff_max_seconds=0.05, backoff_jitter=0.0, max_queue_depth=100_000
)


def emit(**obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def race(data: str, project: str, agent: str) -> None:
    async with FlatfileBackend(data, config=CONFIG, compaction=CompactionPolicy(min_entries=200)) as b:
        emit(op="ready")
        n = 0
        while (c := await b.dispatch.claim(project, agent, wait=0.2, lease_seconds=30)) is not None:
            await b.dispatch.complete(project, c.task.key, c.lease.token, {"by": agent})
            emit(op="claimed", key=c.task.key)
            n += 1
        emit(op="done", count=n)


async def hold(data: str, project: str, lease: float) -> None:
    async with FlatfileBackend(data, config=CONFIG) as b:
        c = await b.dispatch.claim(project, "holder", lease_seconds=lease)
        assert c is not None
        emit(op="held", key=c.task.key, token=c.lease.token)
        await asyncio.sleep(60)


async def create(data: str, project: str, n: int, delay: float) -> None:
    async with FlatfileBackend(data, config=CONFIG) as b:
        emit(op="ready")
        await asyncio.sleep(delay)
        tasks = await b.records.create_tasks(project, [TaskCreate(title=f"late {i}") for i in range(n)])
        emit(op="created", keys=[t.key for t in tasks])


async def writer(data: str, project: str, seed: int) -> None:
    rng = random.Random(seed)
    policy = CompactionPolicy(min_entries=25, ratio=0.0)  # compact very often: kills land mid-compaction
    async with FlatfileBackend(data, config=CONFIG, compaction=policy) as b:
        r, d = b.records, b.dispatch
        emit(op="ready")
        i = 0
        while True:
            i += 1
            choice = rng.random()
            tag = f"{seed}-{i}"
            if choice < 0.35:
                items = [TaskCreate(title=f"w{tag}-{j}") for j in range(rng.randint(1, 3))]
                tasks = await r.create_tasks(project, items)
                emit(op="create", keys=[t.key for t in tasks], titles=[t.title for t in tasks])
            elif choice < 0.6:
                c = await d.claim(project, f"writer-{seed}")
                if c is not None:
                    await d.complete(project, c.task.key, c.lease.token, {"tag": tag})
                    emit(op="complete", key=c.task.key, tag=tag)
            elif choice < 0.68:
                c = await d.claim(project, f"writer-{seed}")
                if c is not None:
                    await d.fail(project, c.task.key, c.lease.token, f"boom {tag}", retryable=False)
                    emit(op="fail", key=c.task.key, error=f"boom {tag}")
            elif choice < 0.82:
                page = await r.list_tasks(project, limit=5)
                if page.items:
                    key = rng.choice(page.items).key
                    note = await r.add_note(project, key, "writer", f"note {tag}")
                    emit(op="note", key=key, id=note.id, text=note.text)
            elif choice < 0.92:
                await r.put_sync_state(project, f"path-{tag}.md", {"tag": tag})
                emit(op="sync", path=f"path-{tag}.md", tag=tag)
            elif choice < 0.97:
                await r.create_mission(project, MissionCreate(id=f"m{tag}"))
                emit(op="mission", id=f"m{tag}")
            else:
                token = ApiToken(
                    id=f"t{tag}", project=project, role=TokenRole.AGENT, token_hash=f"h{tag}", created_at=utcnow()
                )
                await r.add_api_token(token)
                emit(op="token", hash=f"h{tag}")


def main() -> None:
    mode, data, project, *rest = sys.argv[1:]
    try:
        if mode == "race":
            asyncio.run(race(data, project, rest[0]))
        elif mode == "hold":
            asyncio.run(hold(data, project, float(rest[0])))
        elif mode == "create":
            asyncio.run(create(data, project, int(rest[0]), float(rest[1])))
        elif mode == "writer":
            asyncio.run(writer(data, project, int(rest[0])))
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    except exceptions.QueueServiceError as exc:
        emit(op="error", code=exc.code, message=exc.message, at=time.time())
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
