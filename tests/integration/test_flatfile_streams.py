"""Flatfile stream files: reads from any cursor (binary search over the file) and appends (tail
reads) agree with a plain parse of the whole file, a torn last line never swallows the next chunk,
and retention rewrites keep the newest lines."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from flatfile.backend import FlatfileBackend
from queue_service.backend import DispatchConfig
from queue_service.models import Claim
from queue_service.service import QueueService


@pytest.fixture
async def held(tmp_path: Path) -> AsyncIterator[tuple[FlatfileBackend, Claim]]:
    async with FlatfileBackend(tmp_path / "data", config=DispatchConfig()) as backend:
        svc = QueueService(backend)
        await svc.create_project({"slug": "web", "key_prefix": "WEB"})
        await svc.create_task("web", {"title": "a"})
        claim = await svc.claim_next("web", "agent")
        assert claim is not None
        yield backend, claim


def _file(backend: FlatfileBackend) -> Path:
    (path,) = (backend.data_dir / "streams" / "web" / "WEB-1").glob("*.jsonl")
    return path


async def test_reads_from_any_cursor_match_the_whole_file(held: tuple[FlatfileBackend, Claim]) -> None:
    backend, claim = held
    rng = random.Random(14)
    texts = [("x" * rng.randrange(0, 3000)) + f" line {i} ünï" for i in range(3000)]
    for start in range(0, len(texts), 250):
        await backend.streams.publish("web", "WEB-1", texts[start : start + 250], claim.lease.token)
    lines = _file(backend).read_bytes().splitlines()
    assert [json.loads(line)["c"] for line in lines] == texts
    for after in [0, 1, 2, 999, 1500, 2998, 2999, 3000, 5000, *rng.sample(range(3000), 20)]:
        page = await backend.streams.read("web", "WEB-1", after=str(after), limit=50)
        assert [c.chunk for c in page.chunks] == texts[after : after + 50], after
        assert [c.id for c in page.chunks] == [str(i) for i in range(after + 1, min(after + 51, 3001))]


async def test_a_torn_last_line_does_not_swallow_the_next_chunk(held: tuple[FlatfileBackend, Claim]) -> None:
    backend, claim = held
    await backend.streams.publish("web", "WEB-1", ["one", "two"], claim.lease.token)
    with _file(backend).open("ab") as fh:
        fh.write(b'{"i": 3, "c": "half wri')  # a writer died mid-line
    await backend.streams.publish("web", "WEB-1", ["three"], claim.lease.token)
    page = await backend.streams.read("web", "WEB-1")
    assert [(c.id, c.chunk) for c in page.chunks] == [("1", "one"), ("2", "two"), ("3", "three")]


async def test_retention_rewrite_keeps_the_newest_and_reads_stay_right(held: tuple[FlatfileBackend, Claim]) -> None:
    backend, claim = held
    backend.streams.config = dataclasses.replace(backend.streams.config, retention_chunks=100)
    for i in range(40):
        await backend.streams.publish("web", "WEB-1", [f"{i}.{j}" for j in range(10)], claim.lease.token)
    held_lines = _file(backend).read_bytes().splitlines()
    assert 100 <= len(held_lines) <= 150
    page = await backend.streams.read("web", "WEB-1", limit=1000)
    assert page.chunks[-1].chunk == "39.9" and page.chunks[-1].id == "400"
    assert [int(c.id) for c in page.chunks] == list(range(401 - len(page.chunks), 401))
    resumed = await backend.streams.read("web", "WEB-1", after="390")
    assert [c.chunk for c in resumed.chunks] == [f"39.{j}" for j in range(10)]
