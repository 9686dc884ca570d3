"""Flatfile stream store: one append-only JSON-lines file per task stream.

``<data>/streams/<project>/<key>/<stream>.jsonl``; each line is ``{"i": N, "c": "text"}`` or
``{"i": N, "done": true}``. Writers hold ``flock`` on the file (several processes may share the data
directory); files are opened with ``O_NOFOLLOW`` and every path part is validated, so a name can
never leave the directory. Past ``retention_chunks`` lines plus half again, the file is rewritten
(atomically, by rename) keeping the newest ``retention_chunks``. Followers poll the file size.

Nothing reads a whole file per call: ids grow by one per line, so an append reads only the last and
first lines (the next id, and how many lines the file holds), a read from a cursor finds its start by
binary search over byte offsets, and a waiting follower looks at the last line only.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import time
from pathlib import Path
from typing import Any, BinaryIO

from queue_service import exceptions
from queue_service.streams import StreamChunk, StreamPage, StreamStore, cursor_key

__all__ = ["FlatfileStreamStore"]

_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
#: bytes read at a time when seeking through a stream file
_BLOCK = 8192


class FlatfileStreamStore(StreamStore):
    """The stream contract on files under ``root``."""

    def __init__(self, root: Path, *args: Any, poll_interval: float = 0.025, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.root = root
        self.poll_interval = poll_interval

    def _path(self, project: str, key: str, stream: str) -> Path:
        for label, part in (("project", project), ("task key", key), ("stream", stream)):
            if not _PART.match(part):
                raise exceptions.ValidationError(f"invalid {label} {part[:70]!r} for a stream")
        return self.root / project / key / f"{stream}.jsonl"

    @staticmethod
    def _record(line: bytes) -> StreamChunk | None:
        """One stored line as a chunk; None for a torn or damaged line (skipped, never fatal)."""
        line = line.strip()
        if not line.endswith(b"}"):
            return None  # a torn last line of a writer that died mid-write
        try:
            rec = json.loads(line)
            return StreamChunk(id=str(int(rec["i"])), chunk=rec.get("c", ""), done=bool(rec.get("done")))
        except (ValueError, KeyError, TypeError):
            return None

    @classmethod
    def _last(cls, fh: BinaryIO, size: int) -> StreamChunk | None:
        """The newest record, reading backwards from the end (not the whole file)."""
        pos, buf = size, b""
        while pos > 0:
            step = min(_BLOCK, pos)
            pos -= step
            fh.seek(pos)
            buf = fh.read(step) + buf
            lines = buf.split(b"\n")
            # lines[0] may be cut at the block edge unless the file starts there
            for line in reversed(lines[1:] if pos > 0 else lines):
                rec = cls._record(line)
                if rec is not None:
                    return rec
            buf = lines[0]
        return None

    @classmethod
    def _first(cls, fh: BinaryIO) -> StreamChunk | None:
        fh.seek(0)
        for line in fh:
            rec = cls._record(line)
            if rec is not None:
                return rec
        return None

    @classmethod
    def _start_of(cls, fh: BinaryIO, size: int, after: tuple[int, int]) -> int:
        """A byte offset at or before the first line whose id is after *after* (binary search: ids only
        grow within a file, so a read from a cursor costs O(log n) seeks plus what it returns)."""
        lo, hi = 0, size
        while hi - lo > _BLOCK:
            mid = (lo + hi) // 2
            fh.seek(mid)
            fh.readline()  # to the next line start
            start = fh.tell()
            rec = cls._record(fh.readline()) if start < hi else None
            if rec is not None and cursor_key(rec.id) <= after:
                lo = fh.tell()  # that line and every one before it are not wanted
            else:
                hi = mid
        return lo

    def _read_sync(self, path: Path, after: tuple[int, int], limit: int) -> list[StreamChunk]:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise exceptions.BackendError(f"cannot open stream file {path.name}: {exc.strerror}") from exc
        out: list[StreamChunk] = []
        with os.fdopen(fd, "rb") as fh:
            size = os.fstat(fd).st_size
            fh.seek(self._start_of(fh, size, after))  # always a line start
            for line in fh:
                rec = self._record(line)
                if rec is not None and cursor_key(rec.id) > after:
                    out.append(rec)
                    if len(out) >= limit:
                        break
        return out

    def _last_sync(self, path: Path) -> StreamChunk | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise exceptions.BackendError(f"cannot open stream file {path.name}: {exc.strerror}") from exc
        with os.fdopen(fd, "rb") as fh:
            return self._last(fh, os.fstat(fd).st_size)

    def _append_sync(self, path: Path, chunks: list[str], done: bool) -> list[str]:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with open(fd, "rb", closefd=False) as fh:
                size = os.fstat(fd).st_size
                last = self._last(fh, size)
                first = self._first(fh) if last is not None else None
                torn = False
                if size:
                    fh.seek(size - 1)
                    torn = fh.read(1) != b"\n"
            if last is not None and last.done:
                if done and not chunks:
                    return [last.id]
                raise exceptions.InvalidTransition(f"stream {path.stem!r} is done", stream=path.stem)
            nxt = int(last.id) + 1 if last is not None else 1
            ids: list[str] = []
            lines: list[bytes] = []
            for text in chunks:
                ids.append(str(nxt))
                lines.append(json.dumps({"i": nxt, "c": text}, ensure_ascii=False).encode("utf-8", "surrogatepass"))
                nxt += 1
            if done:
                ids.append(str(nxt))
                lines.append(json.dumps({"i": nxt, "done": True}).encode())
            # a torn last line (a writer died mid-write) is ended first, so it cannot swallow ours
            os.write(fd, (b"\n" if torn else b"") + b"".join(line + b"\n" for line in lines))
            keep = self.config.retention_chunks
            # ids are consecutive within a file: its length without reading it
            held = (int(last.id) - int(first.id) + 1) if last is not None and first is not None else 0
            if held + len(lines) > keep + keep // 2:
                with open(fd, "rb", closefd=False) as fh:
                    fh.seek(0)
                    raw = [line for line in fh.read().splitlines(keepends=True) if self._record(line) is not None]
                tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}")
                tfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(tfd, "wb") as out:
                    out.write(b"".join(raw[-keep:]))
                os.replace(tmp, path)
            return ids
        finally:
            os.close(fd)

    async def _append(self, project: str, key: str, stream: str, chunks: list[str], *, done: bool) -> list[str]:
        path = self._path(project, key, stream)
        try:
            return await asyncio.to_thread(self._append_sync, path, chunks, done)
        except OSError as exc:
            raise exceptions.BackendError(f"cannot write stream file {path.name}: {exc.strerror}") from exc

    async def _read(self, project: str, key: str, stream: str, cursor: str, limit: int) -> StreamPage:
        path = self._path(project, key, stream)
        out = await asyncio.to_thread(self._read_sync, path, cursor_key(cursor), limit)
        last = out[-1] if out else None
        return StreamPage(chunks=out, done=bool(last and last.done), cursor=last.id if last else cursor)

    async def _wait(self, project: str, key: str, stream: str, cursor: str, timeout: float) -> bool:
        path = self._path(project, key, stream)
        after = cursor_key(cursor)
        deadline = time.monotonic() + timeout
        seen: tuple[int, int] | None = None
        while True:
            try:
                st = os.stat(path, follow_symlinks=False)
                sig = (st.st_ino, st.st_size)
            except FileNotFoundError:
                sig = (0, 0)
            if sig != seen:
                seen = sig
                newest = await asyncio.to_thread(self._last_sync, path)
                if newest is not None and cursor_key(newest.id) > after:
                    return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(self.poll_interval)
