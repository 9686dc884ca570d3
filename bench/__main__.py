"""``python -m bench [suite ...] [--quick] [--runs N] [--json PATH]``: print the benchmark tables.

With no suite named, every suite runs (``peers records dispatch rest flatfile sync ui streams routing``); ``peers``
is the issue-15 comparison with pgqueuer and Celery (``--tasks`` sets its size). ``--quick`` shrinks
every size for a ~1-minute smoke run. Raw numbers go to ``bench/results/<timestamp>.json`` (gitignored)
unless ``--no-json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench.common import Context, machine_notes, redis_version, run_sync, write_json

__all__ = ["SUITES", "main"]

#: Suite name → module (each has ``async def run(ctx: Context) -> None``), in default run order.
SUITES = {
    "peers": "bench.peers",
    "records": "bench.records",
    "dispatch": "bench.dispatch",
    "rest": "bench.rest",
    "flatfile": "bench.flatfile",
    "sync": "bench.sync",
    "ui": "bench.ui",
    "streams": "bench.streams",
    "routing": "bench.routing",
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("suites", nargs="*", choices=[*SUITES, []], metavar="suite", help=f"any of {', '.join(SUITES)}")
    parser.add_argument("--quick", action="store_true", help="small sizes, one run: a ~1-minute smoke test")
    parser.add_argument("--runs", type=int, default=None, help="interleaved runs per figure (default 3, quick 1)")
    parser.add_argument(
        "--tasks", type=int, default=None, help="tasks per workload where a suite takes it (peers: default 5,000)"
    )
    parser.add_argument(
        "--samples", type=int, default=None, help="latency samples per figure where a suite takes it (peers: 200)"
    )
    parser.add_argument(
        "--systems",
        default=None,
        help="comma-separated systems for suites that compare several (peers: pgqueuer,celery,ours,rest,flatfile)",
    )
    parser.add_argument("--json", type=Path, default=None, help="where to write raw results")
    parser.add_argument("--no-json", action="store_true", help="do not write raw results")
    return parser.parse_args(argv)


async def _main(args: argparse.Namespace) -> int:
    # SIGTERM cancels the run like Ctrl-C does, so every scratch database and key prefix is dropped
    main_task = asyncio.current_task()
    if main_task is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    if args.tasks is not None and not 1 <= args.tasks <= 1_000_000:
        print("--tasks must be between 1 and 1,000,000", file=sys.stderr)
        return 2
    if args.samples is not None and not 1 <= args.samples <= 100_000:
        print("--samples must be between 1 and 100,000", file=sys.stderr)
        return 2
    if args.runs is not None and not 1 <= args.runs <= 100:
        print("--runs must be between 1 and 100", file=sys.stderr)
        return 2
    systems = None
    if args.systems is not None:
        systems = frozenset(s.strip() for s in args.systems.split(",") if s.strip())
        unknown = systems - {"pgqueuer", "celery", "ours", "rest", "flatfile"}
        if not systems or unknown:
            print(
                f"--systems: unknown system(s) {sorted(unknown)}; use pgqueuer,celery,ours,rest,flatfile",
                file=sys.stderr,
            )
            return 2
    ctx = Context(
        quick=args.quick,
        runs=args.runs or (1 if args.quick else 3),
        tasks=args.tasks,
        samples=args.samples,
        systems=systems,
    )
    notes = machine_notes()
    try:
        notes["valkey"] = await redis_version()
    except Exception as exc:
        notes["valkey"] = f"unreachable: {exc}"
    print(
        f"# queue-service bench {notes['date']} — {notes.get('cpus')} CPUs ({notes.get('cpu', '?')}), "
        f"{notes.get('memory_gb', '?')} GB, Postgres {notes.get('postgres', '?')}, {notes['valkey']}, "
        f"Python {notes['python']}, load {tuple(round(x, 2) for x in notes.get('loadavg', ()))}",
        flush=True,
    )
    print(f"# mode: {'quick' if ctx.quick else 'full'}, runs per figure: {ctx.runs}", flush=True)
    print(flush=True)
    failed: list[str] = []
    timings: dict[str, float] = {}
    for name in args.suites or list(SUITES):
        module: Any = importlib.import_module(SUITES[name])
        t0 = time.perf_counter()
        ctx.log(f"suite {name}: start")
        try:
            await module.run(ctx)
        except Exception:
            failed.append(name)
            print(f"== {name}: FAILED", flush=True)
            traceback.print_exc()
            print(flush=True)
        timings[name] = time.perf_counter() - t0
        ctx.log(f"suite {name}: {timings[name]:.0f}s")
    import os

    with_load = os.getloadavg() if hasattr(os, "getloadavg") else ()
    print(
        f"# suites took {', '.join(f'{k} {v:.0f}s' for k, v in timings.items())}; load at end "
        f"{tuple(round(x, 2) for x in with_load)}",
        flush=True,
    )
    if not args.no_json:
        path = args.json or Path("bench/results") / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
        write_json(
            path,
            {
                "machine": notes,
                "quick": ctx.quick,
                "runs": ctx.runs,
                "timings_s": timings,
                "results": ctx.results,
                "tables": [
                    {"title": t.title, "headers": t.headers, "rows": t.rows, "notes": t.notes} for t in ctx.tables
                ],
            },
        )
        print(f"# raw results: {path}", flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (1 if a suite failed)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parse(argv)
    try:
        return int(run_sync(lambda: _main(args)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("# interrupted: scratch databases and key prefixes were cleaned up", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
