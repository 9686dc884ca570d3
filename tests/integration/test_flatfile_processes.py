"""Flatfile backend under several real processes: racing claimers, SIGKILL at random points, dead lease holders.

Helper processes live in ``flatfile_agents/agent.py``; they print one JSON line per acknowledged
operation, so after a SIGKILL the parent knows exactly what must have survived.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from flatfile.backend import FlatfileBackend
from queue_service import exceptions
from queue_service.models import ProjectCreate, TaskCreate, TaskStatus
from tests.fixtures.timing import fast

AGENT = Path(__file__).parent / "flatfile_agents" / "agent.py"
# a lease long enough for a loaded machine, quick backoffs, room for bulk tests
CONFIG = fast(lease_seconds=5.0, backoff_base_seconds=0.01, backoff_max_seconds=0.05, max_queue_depth=100_000)
S = TaskStatus


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, str(AGENT), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


async def _first_line(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    assert proc.stdout is not None
    raw = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert raw, f"agent exited early: {(await proc.communicate())[1].decode()}"
    line: dict[str, Any] = json.loads(raw)
    return line


def _acked(out: bytes) -> list[dict[str, Any]]:
    """The complete lines of a killed agent's output (a line cut by the kill was never acknowledged)."""
    lines = out.split(b"\n")
    return [json.loads(raw) for raw in lines[:-1] if raw]


async def test_eight_processes_claim_a_thousand_tasks_exactly_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with FlatfileBackend(data, config=CONFIG) as b:
        await b.records.create_project(ProjectCreate(slug="race", key_prefix="R"))
        await b.records.create_tasks("race", [TaskCreate(title=f"t{i}") for i in range(1000)])
        procs = [await _spawn("race", str(data), "race", f"agent-{i}") for i in range(8)]
        outputs = await asyncio.gather(*(p.communicate() for p in procs))
        claimed: list[str] = []
        by_agent: dict[str, str] = {}
        for i, (proc, (out, err)) in enumerate(zip(procs, outputs, strict=True)):
            assert proc.returncode == 0, err.decode()
            for line in _acked(out):
                if line["op"] == "claimed":
                    claimed.append(line["key"])
                    by_agent[line["key"]] = f"agent-{i}"
        dupes = [k for k, n in Counter(claimed).items() if n > 1]
        assert dupes == []
        assert len(claimed) == 1000
        assert sum(1 for n in Counter(by_agent.values()).values() if n) > 1  # really concurrent
    async with FlatfileBackend(data, config=CONFIG) as cold:
        stats = await cold.records.stats("race")
        assert stats.by_status["done"] == 1000
        snap = await cold.records.export_project("race")
        assert all(t.result == {"by": by_agent[t.key]} for t in snap.tasks)
        assert [e.id for e in snap.events] == list(range(1, len(snap.events) + 1))
        assert Counter(e.kind for e in snap.events)["claimed"] == 1000


async def test_lease_of_a_killed_holder_is_reclaimed_by_another_process(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with FlatfileBackend(data, config=CONFIG) as b:
        await b.records.create_project(ProjectCreate(slug="lease"))
        await b.records.create_tasks("lease", [TaskCreate(title="only")])
        proc = await _spawn("hold", str(data), "lease", "1.0")
        held = await _first_line(proc)
        assert held["op"] == "held"
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        task = await b.records.get_task("lease", held["key"])
        assert task.status is S.IN_PROGRESS
        assert task.lease_holder == "holder"
        # No sweeper runs anywhere: the waiting claim itself wakes at the expiry and sweeps.
        claim = await b.dispatch.claim("lease", "rescuer", wait=20)
        assert claim is not None
        assert claim.task.key == held["key"]
        assert claim.task.attempts == 1
        assert claim.lease.token != held["token"]
        with pytest.raises(exceptions.LeaseError):
            await b.dispatch.complete("lease", held["key"], held["token"])
        done = await b.dispatch.complete("lease", held["key"], claim.lease.token)
        assert done.status is S.DONE
        kinds = [e.kind for e in await b.records.list_events("lease") if e.task == held["key"]]
        assert kinds == ["created", "claimed", "lease_expired", "claimed", "completed"]


@dataclass
class _Facts:
    """Everything the killed writers acknowledged; each fact is permanent once acked."""

    titles: dict[str, str] = field(default_factory=dict)
    completed: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    notes: dict[int, tuple[str, str]] = field(default_factory=dict)
    sync: dict[str, str] = field(default_factory=dict)
    missions: set[str] = field(default_factory=set)
    tokens: set[str] = field(default_factory=set)
    count: int = 0

    def add(self, line: dict[str, Any]) -> None:
        op = line["op"]
        self.count += op != "ready"
        if op == "create":
            self.titles.update(zip(line["keys"], line["titles"], strict=True))
        elif op == "complete":
            self.completed[line["key"]] = line["tag"]
        elif op == "fail":
            self.failed[line["key"]] = line["error"]
        elif op == "note":
            self.notes[line["id"]] = (line["key"], line["text"])
        elif op == "sync":
            self.sync[line["path"]] = line["tag"]
        elif op == "mission":
            self.missions.add(line["id"])
        elif op == "token":
            self.tokens.add(line["hash"])
        elif op == "error":
            raise AssertionError(f"writer failed: {line}")

    async def check(self, b: FlatfileBackend, project: str) -> None:
        snap = await b.records.export_project(project)
        tasks = {t.key: t for t in snap.tasks}
        for key, title in self.titles.items():
            assert tasks[key].title == title
        for key, tag in self.completed.items():
            assert tasks[key].status is S.DONE
            assert tasks[key].result == {"tag": tag}
        for key, error in self.failed.items():
            assert tasks[key].status is S.FAILED
            assert tasks[key].last_error == error
        notes = {n.id: (n.task, n.text) for n in snap.notes}
        for note_id, expected in self.notes.items():
            assert notes[note_id] == expected
        assert self.missions <= {m.id for m in snap.missions}
        for path, tag in self.sync.items():
            assert await b.records.get_sync_state(project, path) == {"tag": tag}
        for token_hash in self.tokens:
            assert await b.records.find_api_token(token_hash) is not None
        assert [e.id for e in snap.events] == list(range(1, len(snap.events) + 1))
        assert [n.id for n in sorted(snap.notes, key=lambda n: n.id)] == list(range(1, len(snap.notes) + 1))
        assert len(tasks) == len(snap.tasks)
        await b.records.stats(project)


async def test_sigkill_at_random_points_loses_no_acknowledged_operation(tmp_path: Path) -> None:
    """15 rounds of two concurrent writers, each SIGKILLed at a random moment (30 kills).

    Kills land in appends, between an append and its mission.json, and inside compactions (the
    writers compact every 25 entries); a survivor keeps writing over its peer's leftovers.
    """
    data = tmp_path / "data"
    rng = random.Random(20240611)
    facts = _Facts()
    async with FlatfileBackend(data, config=CONFIG) as warm:
        await warm.records.create_project(ProjectCreate(slug="crash", key_prefix="CR"))
        for round_no in range(15):
            procs = [await _spawn("writer", str(data), "crash", str(2 * round_no + i + 1)) for i in range(2)]
            for proc in procs:
                assert (await _first_line(proc))["op"] == "ready"
            for proc in procs:
                await asyncio.sleep(rng.uniform(0.0, 0.3))
                proc.send_signal(signal.SIGKILL)
            for proc in procs:
                out, err = await proc.communicate()
                assert proc.returncode == -signal.SIGKILL, err.decode()
                for line in _acked(out):
                    facts.add(line)
            # a fresh instance loads from disk alone; the warm one catches up incrementally
            async with FlatfileBackend(data, config=CONFIG) as cold:
                await facts.check(cold, "crash")
            await facts.check(warm, "crash")
        assert facts.count > 100  # the writers really did work between the kills
        assert warm.files("crash").generation > 2  # and compactions happened (kills landed around them)
    # half-written snapshots of killed compactions are swept by the next compaction (at most the last remains)
    assert len(list((data / "projects" / "crash").glob(".snapshot-*.tmp"))) <= 1
