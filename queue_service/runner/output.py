"""What ``qs run`` does with a child's output (issue 11): copy it to the terminal line by line,
prefixed with the task key, and keep stdout for the result up to ``QUEUE_MAX_RESULT_BYTES``, cut at a
line boundary and marked."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from typing import Any, TextIO

__all__ = ["echo_lines", "feed_stdin", "fit_result", "read_head", "read_tail", "stdout_budget"]


def stdout_budget(max_result_bytes: int) -> int:
    # room for the rest of the result object and for JSON escaping of ordinary text
    return max(256, max_result_bytes - 1024)


def echo_lines(echo: TextIO | None, prefix: str, pending: bytearray, chunk: bytes, final: bool = False) -> None:
    """Copy complete lines of a child's output to *echo*, each prefixed (``WEB-1| …``)."""
    if echo is None:
        return
    pending += chunk
    *lines, rest = pending.split(b"\n")
    if final and rest:
        lines.append(rest)
        rest = bytearray()
    del pending[:]
    pending += rest
    if lines:
        text = "".join(f"{prefix}{line.decode('utf-8', errors='replace')}\n" for line in lines)
        with contextlib.suppress(OSError, ValueError):
            echo.write(text)
            echo.flush()


async def read_head(stream: asyncio.StreamReader, limit: int, echo: TextIO | None, prefix: str) -> tuple[str, bool]:
    """A stream's text from the start up to *limit* bytes, cut at a line boundary and marked when
    longer; the whole stream is still read (and echoed) so the child never blocks on a full pipe."""
    buf = bytearray()
    pending = bytearray()
    total = 0
    while chunk := await stream.read(65536):
        total += len(chunk)
        echo_lines(echo, prefix, pending, chunk)
        if len(buf) <= limit:
            buf += chunk[: limit + 1 - len(buf)]
    echo_lines(echo, prefix, pending, b"", final=True)
    if len(buf) <= limit:
        return buf.decode("utf-8", errors="replace"), False
    return _cut_mark(buf.decode("utf-8", errors="ignore"), limit, total), True


_CUT_MARK = "[output cut at a line: the first {kept:,} of {total:,} bytes are kept (QUEUE_MAX_RESULT_BYTES)]\n"


def _cut_mark(text: str, limit: int, total: int) -> str:
    """*text* cut to at most *limit* UTF-8 bytes at the last line boundary, plus the marker line."""
    data = text.encode()[:limit]
    cut = data.rfind(b"\n")
    kept = data[: cut + 1] if cut >= 0 else data
    return kept.decode("utf-8", errors="ignore") + _CUT_MARK.format(kept=len(kept), total=total)


def fit_result(result: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    """The result with its ``stdout`` cut (at a line, marked) until the whole JSON fits *max_bytes*:
    JSON escaping (a newline is two bytes) makes the encoded size larger than the text."""
    text = str(result.get("stdout") or "")
    size = len(json.dumps(result, ensure_ascii=False).encode())
    total = len(text.encode())
    while size > max_bytes and text:
        body = text
        mark = body.rfind("[output cut at a line:")
        if result.get("stdout_truncated") and mark >= 0:
            found = re.search(r"of ([\d,]+) bytes", body[mark:])
            total = int(found.group(1).replace(",", "")) if found else total
            body = body[:mark]
        limit = max(0, int(len(body.encode()) * max_bytes / size) - 512)
        text = _cut_mark(body, limit, total)
        result = {**result, "stdout": text, "stdout_truncated": True}
        size = len(json.dumps(result, ensure_ascii=False).encode())
    return result


async def feed_stdin(stream: asyncio.StreamWriter, payload: bytes) -> None:
    """Write *payload* to a child's stdin and close it (a child that does not read it is fine)."""
    try:
        stream.write(payload)
        await stream.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the child does not read stdin: fine
    finally:
        stream.close()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await stream.wait_closed()


async def read_tail(
    stream: asyncio.StreamReader, limit: int, echo: TextIO | None = None, prefix: str = ""
) -> tuple[str, bool]:
    """The last *limit* bytes of a stream as text, and whether anything was cut off."""
    buf = bytearray()
    pending = bytearray()
    truncated = False
    while chunk := await stream.read(65536):
        echo_lines(echo, prefix, pending, chunk)
        buf += chunk
        if len(buf) > limit:
            del buf[: len(buf) - limit]
            truncated = True
    echo_lines(echo, prefix, pending, b"", final=True)
    if truncated:
        while buf and 0x80 <= buf[0] <= 0xBF:  # do not start in the middle of a UTF-8 character
            del buf[0]
    return buf.decode("utf-8", errors="replace"), truncated
