"""Operator commands: ``serve``, ``migrate``, ``token``.

These always act on the configured storage (``QUEUE_DATABASE_URL``/``QUEUE_DATA_DIR``…), never
through ``QUEUE_URL``: they are how a server is started, prepared and given credentials.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer

from queue_service import exceptions
from queue_service.backend import RecordStore
from queue_service.cli._core import JsonOpt, emit, state_of, stdout
from queue_service.models import ApiToken, TokenRole
from queue_service.settings import Settings, is_loopback

__all__ = ["register", "token_app"]

T = TypeVar("T")

token_app = typer.Typer(
    help="API bearer tokens (stored hashed in the configured backend; shown once).", no_args_is_help=True
)


def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Bind address (env QUEUE_HOST; default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (env QUEUE_PORT; default 8000).")] = None,
) -> None:
    """Run the REST API (and the orchestrator) on the configured backend."""
    import uvicorn

    from queue_service.app import create_app

    overrides: dict[str, object] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    settings = Settings.load(**overrides) if overrides else state_of(ctx).settings()
    if not is_loopback(settings.host):
        # Refuse here, before uvicorn: a failing lifespan would bury this one line under a traceback.
        asyncio.run(_check_exposure(settings))
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower())


async def _check_exposure(settings: Settings) -> None:
    """ConfigurationError if ``serve`` would listen on a reachable address with no API token."""
    from queue_service.app import check_exposure

    backend = settings.build_backend()
    await backend.open()
    try:
        await check_exposure(settings, backend)
    finally:
        await backend.close()


def migrate(
    ctx: typer.Context,
    revision: Annotated[str, typer.Option(help="Alembic revision to upgrade to.")] = "head",
    json_out: JsonOpt = False,
) -> None:
    """Bring the Postgres schema up to date (alembic upgrade). Flatfile mode needs no migration.

    JSON: ``{"backend", "revision"}`` (``revision`` is null for backends without a schema).
    """
    settings = state_of(ctx).settings()
    url = settings.resolved_backend_url()
    if not url.startswith("postgres"):
        kind = "flatfile" if url.startswith("file:") else url.split(":", 1)[0]
        emit(
            ctx,
            json_out,
            {"backend": kind, "revision": None},
            lambda: stdout.print(
                f"Nothing to migrate: the {kind} backend ({url}) keeps no database schema.", markup=False
            ),
        )
        return
    from queue_service.postgres import migrate as pg_migrate

    async def go() -> str | None:
        await pg_migrate.upgrade(url, revision)
        return await pg_migrate.current(url)

    current = asyncio.run(go())
    emit(
        ctx,
        json_out,
        {"backend": "postgres", "revision": current},
        lambda: stdout.print(f"Database schema is at revision {current}.", markup=False),
    )


@token_app.command("create")
def token_create(
    ctx: typer.Context,
    role: Annotated[TokenRole, typer.Option(help="viewer (read), agent (claim/complete/…), admin (everything).")],
    project: Annotated[str | None, typer.Option("--project", "-p", help="The project it is scoped to.")] = None,
    all_projects: Annotated[
        bool, typer.Option("--all-projects", help="A global token, valid in every project (and for /metrics).")
    ] = False,
    name: Annotated[str | None, typer.Option(help="A label to recognise it by (shown as the actor).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a bearer token. It is printed once and only its hash is stored."""
    from queue_service import auth

    if (project is None) == (not all_projects):
        raise exceptions.ValidationError("give --project SLUG, or --all-projects for a global token (not both)")
    settings = state_of(ctx).settings()

    async def store() -> tuple[str, ApiToken]:
        backend = settings.build_backend()
        async with backend:
            return await auth.create_token(backend.records, project, role, name)

    secret, record = asyncio.run(store())
    shown = {**record.model_dump(mode="json", exclude={"token_hash"}), "token": secret}

    def human() -> None:
        scope = f"project {project}" if project else "all projects"
        stdout.print(
            f"Created {role.value} token {record.id} for {scope}. Store it now; it is not shown again:", markup=False
        )
        stdout.print(secret, markup=False, soft_wrap=True)

    emit(ctx, json_out, shown, human)


def _with_records(ctx: typer.Context, op: Callable[[RecordStore], Awaitable[T]]) -> T:
    settings = state_of(ctx).settings()

    async def run() -> T:
        backend = settings.build_backend()
        async with backend:
            return await op(backend.records)

    return asyncio.run(run())


@token_app.command("list")
def token_list(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Every token record (id, role, scope, name, created, revoked); never the secrets."""

    async def op(records: RecordStore) -> list[ApiToken]:
        return await records.list_api_tokens()

    tokens = _with_records(ctx, op)
    rows = [t.model_dump(mode="json", exclude={"token_hash"}) for t in tokens]

    def human() -> None:
        if not rows:
            stdout.print("No tokens: auth is off (allowed only on loopback).", markup=False)
            return
        for row in rows:
            state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "active"
            scope = row["project"] or "all projects"
            name = row["name"] or "-"
            stdout.print(f"{row['id']}  {row['role']:<6}  {scope}  {name}  {row['created_at']}  {state}", markup=False)

    emit(ctx, json_out, {"items": rows}, human)


@token_app.command("revoke")
def token_revoke(
    ctx: typer.Context,
    token_id: Annotated[str, typer.Argument(metavar="ID", help="The token id (from `qs token list`).")],
    json_out: JsonOpt = False,
) -> None:
    """Revoke a token: refused by every replica within 30 s. Auth stays on (see `qs token purge`)."""

    async def op(records: RecordStore) -> ApiToken:
        return await records.revoke_api_token(token_id)

    record = _with_records(ctx, op)
    row = record.model_dump(mode="json", exclude={"token_hash"})
    emit(ctx, json_out, row, lambda: stdout.print(f"Revoked token {record.id} at {row['revoked_at']}.", markup=False))


@token_app.command("purge")
def token_purge(
    ctx: typer.Context,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: delete every token record and turn auth off.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Delete every token record, revoked ones included: auth turns OFF (loopback servers only)."""
    if not yes:
        raise exceptions.ValidationError(
            "qs token purge deletes every token and turns auth off; run it again with --yes to confirm"
        )

    async def op(records: RecordStore) -> int:
        return await records.purge_api_tokens()

    count = _with_records(ctx, op)
    emit(
        ctx,
        json_out,
        {"deleted": count},
        lambda: stdout.print(
            f"Deleted {count} token record(s); auth is off once servers re-check (30 s).", markup=False
        ),
    )


def register(app: typer.Typer) -> None:
    """Add these commands to the root app."""
    app.command("serve", rich_help_panel="Operate")(serve)
    app.command("migrate", rich_help_panel="Operate")(migrate)
    app.add_typer(token_app, name="token", rich_help_panel="Operate")
