"""``qs watch PROJECT KEY``: follow a task's output stream live (issue 14)."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated

import typer

from queue_service import exceptions
from queue_service.cli._core import Connection, JsonOpt, call, is_json
from queue_service.streams import DEFAULT_STREAM, parse_cursor, validate_stream_name


def watch(
    ctx: typer.Context,
    project: Annotated[str, typer.Argument(help="Project slug.")],
    key: Annotated[str, typer.Argument(help="Task key, e.g. WEB-12.")],
    stream: Annotated[str, typer.Option(help="Named stream within the task.")] = DEFAULT_STREAM,
    after: Annotated[str | None, typer.Option(help="Resume after this stream id (default: from the start).")] = None,
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", help="Keep following until the stream is done.")
    ] = True,
    poll: Annotated[float, typer.Option(help="Seconds between checks for new output.")] = 0.2,
    json_out: JsonOpt = False,
) -> None:
    """Print a task's output as it is published (JSON: {"id", "chunk"} per line); ends when it is done.

    Example: qs watch web WEB-12
    """
    validate_stream_name(stream)
    cursor = parse_cursor(after)
    if poll <= 0:
        raise exceptions.ValidationError(f"--poll must be positive, got {poll}")
    as_json = is_json(ctx, json_out)

    async def body(conn: Connection) -> None:
        nonlocal cursor
        while True:
            page = await conn.ops.read_stream(project, key, cursor, stream)
            for item in page.chunks:
                if item.done:
                    continue
                if as_json:
                    sys.stdout.write(json.dumps({"id": item.id, "chunk": item.chunk}) + "\n")
                else:
                    sys.stdout.write(item.chunk if item.chunk.endswith("\n") else item.chunk + "\n")
            sys.stdout.flush()
            cursor = page.cursor
            if page.done or not follow:
                return
            if not page.chunks:
                await asyncio.sleep(poll)

    try:
        call(ctx, body)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def register(app: typer.Typer) -> None:
    """Add ``watch`` to the root app."""
    app.command("watch", rich_help_panel="Observe")(watch)
