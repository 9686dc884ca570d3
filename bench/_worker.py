"""A claim+complete worker process for the multi-process benchmarks (``flatfile`` suite).

``python -m bench._worker flatfile DATA_DIR`` or ``python -m bench._worker postgres DB_URL PREFIX``:
opens the backend, prints ``ready``, then reads one JSON command per stdin line:

* ``{"op": "drain", "project": P, "quota": N}`` → claims and completes until it finished *N* tasks or
  nothing is ready, then prints ``{"done": n, "elapsed": s}``;
* ``{"op": "warm", "project": P}`` → reads the project once (loads its state), prints ``{"done": 0, …}``;
* ``{"op": "exit"}`` (or end of input) → closes the backend and exits.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

__all__ = ["main"]


async def _serve(argv: list[str]) -> None:
    from queue_service.backend import Backend, DispatchConfig
    from queue_service.service import QueueService

    config = DispatchConfig(max_queue_depth=1_000_000)
    kind = argv[0]
    backend: Backend
    if kind == "flatfile":
        from flatfile.backend import FlatfileBackend

        backend = FlatfileBackend(argv[1], config=config)
    else:
        from bench.common import VALKEY_URL
        from queue_service.postgres.backend import PostgresValkeyBackend

        backend = PostgresValkeyBackend(argv[1], VALKEY_URL, config, key_prefix=argv[2], pool_size=4)
    await backend.open()
    svc = QueueService(backend)
    agent = f"bench-worker-{os.getpid()}"
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            cmd: dict[str, Any] = json.loads(line)
            if cmd["op"] == "warm":
                # load the project's state (a flatfile process replays its journal once) before timing
                await svc.list_tasks(cmd["project"], {"ready": True}, 1)
                print(json.dumps({"done": 0, "elapsed": 0.0}), flush=True)
                continue
            if cmd["op"] != "drain":
                break
            done = 0
            t0 = time.perf_counter()
            while done < cmd["quota"]:
                claim = await svc.claim(cmd["project"], agent)
                if claim is None:
                    break
                await svc.complete(cmd["project"], claim.task.key, claim.lease.token)
                done += 1
            print(json.dumps({"done": done, "elapsed": time.perf_counter() - t0}), flush=True)
    finally:
        await backend.close()


def main() -> None:
    """Entry point (see the module docstring)."""
    from bench.common import run_sync

    run_sync(lambda: _serve(sys.argv[1:]))


if __name__ == "__main__":
    main()
