"""``python -m bench.ab [--side LABEL=REV …] [--runs N] -- SUITE ARGS``: before/after of changes, in one run.

Runs ``python -m bench peers … --runs 1`` on each side in turn (a side is a git revision exported with
``git archive``, or ``tree`` for this working tree; default ``before=main after=tree``), *N* rounds with
the order rotating (the machine's drift hits every side alike), then prints every figure of every side
with its ratio to the first side. The baseline imports its own
``queue_service``/``flatfile``/``workspace_sync``/``migrations`` (an overlay directory first on
``sys.path``, also for the replicas it starts) with this tree's ``bench`` package, so the workloads are
identical and only the code under test differs.

Example: ``python -m bench.ab --side base=f7fcb2a --side deps=29e32b8 --side tree=tree+hide:hiredis
-- peers --systems ours,rest --tasks 2000 --samples 60``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import fmt_ms, fmt_num, fmt_ratio, median, percentile, ratio

__all__ = ["main"]

_ROOT = Path(__file__).resolve().parent.parent
_PACKAGES = ("queue_service", "flatfile", "workspace_sync", "migrations")


def _export(rev: str, into: Path, hide: list[str], replica_hide: list[str]) -> Path:
    """An overlay dir first on ``sys.path``: the packages of *rev* (``tree`` = this working tree), this
    tree's ``bench``, and a stub raising ImportError for each module in *hide* (e.g. ``hiredis``, to
    measure a library's worth); *replica_hide* only in the ``queue-service serve`` replicas (e.g.
    ``uvloop,httptools``, without taking uvloop from the bench's own client side)."""
    into.mkdir()
    replica_only = into / "replica-only"
    replica_only.mkdir()
    for module in replica_hide:
        (replica_only / f"{module}.py").write_text(f"raise ImportError('{module} hidden by bench.ab')\n")
    overlay = into / "overlay"
    overlay.mkdir()
    if rev != "tree":
        base = into / "base"
        base.mkdir()
        archive = subprocess.run(["git", "-C", str(_ROOT), "archive", rev], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
    else:
        base = _ROOT
    for name in _PACKAGES:
        if (base / name).exists():
            (overlay / name).symlink_to(base / name)
    (overlay / "bench").symlink_to(_ROOT / "bench")
    for module in hide:
        (overlay / f"{module}.py").write_text(f"raise ImportError('{module} hidden by bench.ab')\n")
    return overlay


#: ``python -m bench`` without the editable install's import hook: the hook would find a module the
#: baseline lacks in this working tree, and the bench's feature checks would see the wrong tree.
_PRELUDE = (
    "import runpy, sys; "
    "sys.meta_path[:] = [f for f in sys.meta_path if 'Editable' not in getattr(f, '__name__', type(f).__name__)]; "
    "runpy.run_module('bench', run_name='__main__', alter_sys=True)"
)


def _run_once(where: Path, args: list[str], out: Path) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(where), BENCH_REPLICA_PYTHONPATH=str(where.parent / "replica-only"))
    cmd = [sys.executable, "-c", _PRELUDE, *args, "--runs", "1", "--json", str(out)]
    print(f"# {where}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=str(where), env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())["results"]  # type: ignore[no-any-return]


def _figures(results: list[dict[str, Any]]) -> dict[str, tuple[float, str]]:
    """Figure label -> (value, kind) from the ``peers`` results of several one-round runs."""
    out: dict[str, tuple[float, str]] = {}
    peers = [r["peers"] for r in results if "peers" in r]
    if not peers:
        return out
    systems = peers[0]["w1_per_s"].keys()
    for s in systems:
        for key, label in (("w1_per_s", "W1 tasks/s"), ("w2_per_s", "W2 tasks/s")):
            values = [v for p in peers for v in p[key][s]]
            if values:
                out[f"{s}: {label}"] = (median(values), "rate")
        for key, label in (("wake_samples_ms", "W3 wake"), ("chain_samples_ms", "W3 chain")):
            samples = [v / 1e3 for p in peers for v in p[key][s]]
            if samples:
                out[f"{s}: {label} p50 (ms)"] = (percentile(samples, 50), "ms")
                out[f"{s}: {label} p99 (ms)"] = (percentile(samples, 99), "ms")
    for key in peers[0].get("w2_cpu_ms_per_task", {}):
        values = [v for p in peers for v in p["w2_cpu_ms_per_task"][key]]
        if values:
            out[f"W2 CPU ms/task, {key}"] = (median(values) / 1e3, "ms")
    batched = [v for p in peers for v in p.get("ours_batched_per_s", [])]
    if batched:
        out["ours: W2 claim_many(10) tasks/s"] = (median(batched), "rate")
    floor = [v for p in peers for v in p.get("floor_update_commits_4conn", [])]
    if floor:
        out["floor: UPDATE commits/s, 4 conns"] = (median(floor), "rate")
    return out


def _parse_side(spec: str) -> tuple[str, str, list[str], list[str]]:
    """``LABEL=REV[+hide:MOD,…][+replica-hide:MOD,…]`` (REV ``tree`` = this working tree)."""
    label, sep, rest = spec.partition("=")
    if not sep or not label or not rest:
        raise argparse.ArgumentTypeError(f"--side wants LABEL=REV[+hide:MOD,...], got {spec!r}")
    rev, *options = rest.split("+")
    hide: dict[str, list[str]] = {"hide": [], "replica-hide": []}
    for option in options:
        kind, _, modules = option.partition(":")
        if kind not in hide or not modules:
            raise argparse.ArgumentTypeError(f"--side: unknown option {option!r} (hide:MOD,… or replica-hide:MOD,…)")
        hide[kind].extend(m for m in modules.split(",") if m)
    return label, rev, hide["hide"], hide["replica-hide"]


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.ab", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument(
        "--side",
        action="append",
        type=_parse_side,
        default=None,
        help="LABEL=REV[+hide:MOD,...], repeatable; the first is the baseline (default: before=main after=tree)",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs of each side (default 3)")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="-- then the arguments of python -m bench")
    args = parser.parse_args(argv)
    bench_args = [a for a in args.bench_args if a != "--"]
    if not bench_args or not 1 <= args.runs <= 20:
        parser.error("give a suite after --, and --runs between 1 and 20")
    sides: list[tuple[str, str, list[str], list[str]]] = args.side or [
        ("before", "main", [], []),
        ("after", "tree", [], []),
    ]
    described = []
    for label, rev, hide, replica_hide in sides:
        sha = "working tree"
        if rev != "tree":
            sha = subprocess.run(
                ["git", "-C", str(_ROOT), "rev-parse", "--short", rev], check=True, capture_output=True, text=True
            ).stdout.strip()
        without = [*hide, *(f"{m} (replicas)" for m in replica_hide)]
        described.append(f"{label} = {rev} ({sha}){' without ' + ', '.join(without) if without else ''}")
    results: dict[str, list[dict[str, Any]]] = {side[0]: [] for side in sides}
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp:
        where = {label: _export(rev, Path(tmp) / label, hide, rh) for label, rev, hide, rh in sides}
        for r in range(args.runs):
            order = sides[r % len(sides) :] + sides[: r % len(sides)]
            for label, *_ in order:
                results[label].append(_run_once(where[label], bench_args, Path(tmp) / f"{label}{r}.json"))
    figures = {side[0]: _figures(results[side[0]]) for side in sides}
    first = sides[0][0]
    print(f"== ab: {' '.join(bench_args)}; {'; '.join(described)}; {args.runs} run(s) each, rotating")
    width = max((len(k) for k in figures[first]), default=10)
    others = [side[0] for side in sides[1:]]
    head = [f"{side[0]:>10}" for side in sides] + [f"{label + '÷' + first:>14}" for label in others]
    print(f"{'figure'.ljust(width)}  {'  '.join(head)}")
    for name, (value, kind) in figures[first].items():
        fmt = fmt_num if kind == "rate" else fmt_ms
        vals = [figures[side[0]].get(name, (float("nan"), kind))[0] for side in sides]
        cells = [f"{fmt(v):>10}" for v in vals] + [
            f"{fmt_ratio(ratio(v, value)):>{len(label) + len(first) + 1 if len(label) + len(first) + 1 > 14 else 14}}"
            for label, v in zip(others, vals[1:], strict=True)
        ]
        print(f"{name.ljust(width)}  {'  '.join(cells)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
