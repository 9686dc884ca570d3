"""The SQL and Lua texts kept in files beside the code that runs them (STYLE rule 27).

``postgres/sql/*.sql`` hold named statements, procrastinate style: each starts at a line
``-- name: <query name>``, followed by comment lines (its documentation) and the statement. A
``{placeholder}`` in a statement is filled from the keyword arguments of :func:`load_queries`, once,
at import (the task columns, which :mod:`.rows` derives from the table definition).
``postgres/lua/<name>.lua`` hold one Valkey script each.

Files are read through :mod:`importlib.resources`, so they must ship as package data (see
``[tool.setuptools.package-data]`` in ``pyproject.toml``); each file is read once per process.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

__all__ = ["load_queries", "lua_script"]

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$")
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


@functools.cache
def _read(folder: str, filename: str) -> str:
    return resources.files("queue_service.postgres").joinpath(folder, filename).read_text(encoding="utf-8")


def _fill(name: str, body: str, fragments: dict[str, str]) -> str:
    def sub(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in fragments:
            raise KeyError(f"query {name!r} needs the fragment {{{key}}}")
        return fragments[key]

    return _PLACEHOLDER.sub(sub, body)


def load_queries(filename: str, **fragments: str) -> dict[str, str]:
    """The named statements of ``sql/<filename>``: name → SQL text (comments stripped).

    Raises ``ValueError`` for a file without names or with a name twice, ``KeyError`` for a
    ``{placeholder}`` not given in *fragments*: both are packaging mistakes, found at import.
    """
    queries: dict[str, str] = {}
    name: str | None = None
    body: list[str] = []

    def flush() -> None:
        if name is None:
            return
        if name in queries:
            raise ValueError(f"sql/{filename}: query {name!r} is defined twice")
        queries[name] = _fill(name, "\n".join(body).strip(), fragments)

    for line in _read("sql", filename).splitlines():
        found = _NAME.match(line)
        if found:
            flush()
            name, body = found.group(1), []
        elif name is not None and not line.lstrip().startswith("--"):
            body.append(line)
    flush()
    if not queries:
        raise ValueError(f"sql/{filename} defines no query")
    return queries


def lua_script(name: str) -> str:
    """The text of ``lua/<name>.lua``."""
    return _read("lua", f"{name}.lua")
