"""The SQL and Lua files of queue_service/postgres: every one loads, and every one ships in the wheel."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import pytest

from queue_service.postgres import resources
from queue_service.postgres.rows import TASK_RETURNING_SQL
from queue_service.postgres.valkey import SCRIPTS

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "queue_service"


def test_every_lua_script_is_a_file_and_every_file_is_registered() -> None:
    files = {p.stem for p in (PACKAGE / "postgres" / "lua").glob("*.lua")}
    assert files == set(SCRIPTS)
    for name in SCRIPTS:
        assert "redis.call" in resources.lua_script(name)


@pytest.mark.parametrize("filename", sorted(p.name for p in (PACKAGE / "postgres" / "sql").glob("*.sql")))
def test_every_sql_file_loads_into_named_statements(filename: str) -> None:
    queries = resources.load_queries(filename, task_returning=TASK_RETURNING_SQL)
    assert queries
    for name, sql in queries.items():
        assert sql and "{task_returning}" not in sql, name
        assert not any(line.lstrip().startswith("--") for line in sql.splitlines()), name


def test_a_missing_fragment_is_an_error_at_load() -> None:
    with pytest.raises(KeyError, match="task_returning"):
        resources.load_queries("leases.sql")


def test_package_data_ships_every_sql_and_lua_file() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["queue_service"]
    data = [p for ext in ("sql", "lua") for p in (PACKAGE / "postgres").rglob(f"*.{ext}")]
    assert data
    for path in data:
        rel = path.relative_to(PACKAGE).as_posix()
        assert any(fnmatch.fnmatch(rel, pattern) for pattern in patterns), f"{rel} is not package data"


def test_installed_migrations_are_found_without_a_source_tree(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from queue_service.postgres import migrate

    # no source-tree migrations/ beside the package: the installed package is found by its spec (not
    # imported: import-linter keeps postgres below migrations, whose env.py imports postgres.tables)
    monkeypatch.setattr(migrate, "MIGRATIONS_DIR", tmp_path / "migrations")
    assert (migrate._migrations_dir() / "env.py").is_file()
    assert migrate.alembic_config().get_main_option("script_location") == str(migrate._migrations_dir())
