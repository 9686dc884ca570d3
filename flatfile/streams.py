"""Flatfile stream store: one append-only JSON-lines file per task stream.

``<data>/streams/<project>/<key>/<stream>.jsonl``; each line is ``{"i": N, "c": "text"}`` or
``{"i": N, "done": true}``. Writers hold ``flock`` on the file (several processes may share the data
directory); files are opened with ``O_NOFOLLOW`` and every path part is validated, so a name can
never leave the directory. Past ``retention_chunks`` lines plus half again, the file is rewritten
(atomically, by rename) keeping the newest ``retention_chunks``. Followers poll the file size.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from queue_service import exceptions
from queue_service.streams import StreamChunk, StreamPage, StreamStore, cursor_key

__all__ = ["FlatfileStreamStore"]

_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


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
    def _parse(raw: bytes) -> list[StreamChunk]:
        out: list[StreamChunk] = []
        for line in raw.splitlines():
            if not line.endswith(b"}"):
                continue  # a torn last line of a writer that died mid-write
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            out.append(StreamChunk(id=str(rec["i"]), chunk=rec.get("c", ""), done=bool(rec.get("done"))))
        return out

    def _read_file(self, path: Path) -> bytes:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return b""
        except OSError as exc:
            raise exceptions.BackendError(f"cannot open stream file {path.name}: {exc.strerror}") from exc
        with os.fdopen(fd, "rb") as fh:
            return fh.read()

    def _append_sync(self, path: Path, chunks: list[str], done: bool) -> list[str]:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with open(fd, "rb", closefd=False) as fh:
                fh.seek(0)
                items = self._parse(fh.read())
            if items and items[-1].done:
                if done and not chunks:
                    return [items[-1].id]
                raise exceptions.InvalidTransition(f"stream {path.stem!r} is done", stream=path.stem)
            nxt = int(items[-1].id) + 1 if items else 1
            ids: list[str] = []
            lines: list[bytes] = []
            for text in chunks:
                ids.append(str(nxt))
                lines.append(json.dumps({"i": nxt, "c": text}, ensure_ascii=False).encode("utf-8", "surrogatepass"))
                nxt += 1
            if done:
                ids.append(str(nxt))
                lines.append(json.dumps({"i": nxt, "done": True}).encode())
            os.write(fd, b"".join(line + b"\n" for line in lines))
            keep = self.config.retention_chunks
            total = len(items) + len(lines)
            if total > keep + keep // 2:
                with open(fd, "rb", closefd=False) as fh:
                    fh.seek(0)
                    raw = fh.read().splitlines(keepends=True)
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
        items = self._parse(await asyncio.to_thread(self._read_file, path))
        after = cursor_key(cursor)
        out = [c for c in items if cursor_key(c.id) > after][:limit]
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
                items = self._parse(await asyncio.to_thread(self._read_file, path))
                if items and cursor_key(items[-1].id) > after:
                    return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(self.poll_interval)
