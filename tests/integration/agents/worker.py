"""A stand-alone agent process for the reliability tests.

It claims one task of a project, heartbeats from a separate thread (its own event loop and
connections, so the agent's work can never starve it), reports on stdout as JSON lines, and then:

* ``--mode hold``: works "forever" (the test SIGKILLs it);
* ``--mode sleep``: sleeps ``--seconds`` (the test SIGSTOPs/SIGCONTs it), then completes;
* ``--mode burn``: burns CPU for ``--seconds`` (pure-Python loop holding the GIL), then completes.

Run: ``python -m tests.integration.agents.worker --db URL --valkey URL --prefix P --project web ...``
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import threading
import time
from typing import Any

from queue_service import exceptions
from queue_service.backend import DispatchConfig
from queue_service.postgres.backend import PostgresValkeyBackend
from queue_service.service import new_agent_id


def say(**payload: Any) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def heartbeat_thread(
    args: argparse.Namespace, config: DispatchConfig, key: str, token: str, stop: threading.Event
) -> None:
    async def loop() -> None:
        async with PostgresValkeyBackend(args.db, args.valkey, config, key_prefix=args.prefix, pool_size=1) as b:
            while not stop.is_set():
                try:
                    lease = await b.dispatch.heartbeat(args.project, key, token)
                    say(heartbeat=key, expires_at=lease.expires_at.isoformat())
                except exceptions.LeaseError as exc:
                    say(heartbeat=key, refused=exc.code)
                    return
                except exceptions.BackendError as exc:
                    say(heartbeat=key, error=str(exc))
                await asyncio.to_thread(stop.wait, config.heartbeat_seconds)

    asyncio.run(loop())


def burn(seconds: float) -> int:
    """CPU-bound work that holds the GIL in long stretches."""
    deadline = time.monotonic() + seconds
    n = 0
    digest = b"x"
    while time.monotonic() < deadline:
        for _ in range(2000):
            digest = hashlib.sha256(digest).digest()
        n += 1
    return n


async def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--db", required=True)
    p.add_argument("--valkey", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--project", required=True)
    p.add_argument("--mode", choices=["hold", "sleep", "burn"], required=True)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--lease", type=float, required=True)
    p.add_argument("--heartbeat", type=float, required=True)
    p.add_argument("--wait", type=float, default=10.0)
    args = p.parse_args()
    config = DispatchConfig(lease_seconds=args.lease, heartbeat_seconds=args.heartbeat)
    agent = new_agent_id(f"agent-{args.mode}")
    async with PostgresValkeyBackend(args.db, args.valkey, config, key_prefix=args.prefix, pool_size=2) as b:
        claim = await b.dispatch.claim(args.project, agent, wait=args.wait)
        if claim is None:
            say(claimed=None)
            return 2
        key, token = claim.task.key, claim.lease.token
        stop = threading.Event()
        hb = threading.Thread(target=heartbeat_thread, args=(args, config, key, token, stop), daemon=True)
        hb.start()
        say(claimed=key, agent=agent, token=token, expires_at=claim.lease.expires_at.isoformat())
        if args.mode == "hold":
            await asyncio.sleep(3600)
        elif args.mode == "sleep":
            time.sleep(args.seconds)  # blocking on purpose, like an agent stuck in work
        else:
            rounds = burn(args.seconds)
            say(burned=rounds)
        try:
            await b.dispatch.complete(args.project, key, token, result={"agent": agent})
            say(completed=key)
        except exceptions.LeaseError as exc:
            say(completed=None, refused=exc.code, message=exc.message)
        finally:
            stop.set()
            hb.join(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
