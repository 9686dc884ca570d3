"""Service configuration (pydantic-settings), built once at start-up and passed in.

Environment names use the ``QUEUE_`` prefix; the Mosaic spellings ``MOSAIC_STORAGE_TIER``,
``MOSAIC_DATABASE_URL`` and ``MOSAIC_VALKEY_URL`` are accepted too (``QUEUE_*`` wins when both are
set). There is deliberately no module-level instance: ``Settings()`` reads the environment at the
moment it is built.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from queue_service import exceptions
from queue_service.backend import Backend
from queue_service.backend_factory import backend_from_url
from queue_service.dispatch_config import DispatchConfig
from queue_service.streams import StreamConfig

__all__ = ["Settings", "is_loopback"]


class Settings(BaseSettings):
    """Everything configurable, with the environment variable that sets it."""

    model_config = SettingsConfigDict(env_prefix="QUEUE_", extra="ignore", populate_by_name=True)

    #: explicit backend URL (``postgresql+asyncpg://…``, ``file://<dir>``, ``memory://``); wins over
    #: the database URL / data dir below
    backend_url: str | None = None
    #: Postgres URL; selects the Postgres+Valkey backend (QUEUE_DATABASE_URL or MOSAIC_DATABASE_URL)
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("QUEUE_DATABASE_URL", "MOSAIC_DATABASE_URL")
    )
    #: Valkey/Redis URL (QUEUE_VALKEY_URL or MOSAIC_VALKEY_URL)
    valkey_url: str | None = Field(default=None, validation_alias=AliasChoices("QUEUE_VALKEY_URL", "MOSAIC_VALKEY_URL"))
    #: Valkey key space (every key and channel lives under it); change it only to share one Valkey
    #: between independent deployments
    valkey_prefix: str = Field(default="mosaic:queue", pattern=r"^[A-Za-z0-9:_.-]{1,100}$")
    #: ``local`` forces flatfile, ``team`` requires a database URL (MOSAIC_STORAGE_TIER)
    storage_tier: Literal["local", "team"] | None = Field(
        default=None, validation_alias=AliasChoices("QUEUE_STORAGE_TIER", "MOSAIC_STORAGE_TIER")
    )
    #: flatfile data directory (used when no database URL is set)
    data_dir: Path = Path(".queue-data")
    #: root under which projects without an explicit workspace get ``<root>/<slug>``
    workspace: Path | None = None

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)

    #: at most a day, like every requested lease (domain.MAX_LEASE_SECONDS)
    lease_seconds: float = Field(default=30.0, gt=0, le=86_400)
    heartbeat_seconds: float = Field(default=10.0, gt=0)
    backoff_base_seconds: float = Field(default=1.0, ge=0)
    backoff_max_seconds: float = Field(default=300.0, ge=0)
    max_queue_depth: int = Field(default=10_000, ge=1)
    max_attempts: int = Field(default=3, ge=1)
    sweep_seconds: float = Field(default=1.0, gt=0)
    #: an agent is ready while seen within this many seconds (QUEUE_AGENT_READY_SECONDS, issue 13)
    agent_ready_seconds: float = Field(default=30.0, gt=0, le=86_400)
    #: how long a routed task is reserved for the agent it was offered to (QUEUE_OFFER_SECONDS)
    offer_seconds: float = Field(default=10.0, gt=0, le=3600)
    #: run the orchestrator monitor inside ``serve``
    orchestrator: bool = True
    #: run workspace sync inside ``serve`` for projects with a workspace
    sync: bool = True
    sync_rescan_seconds: float = Field(default=5.0, gt=0)
    sync_debounce_seconds: float = Field(default=0.3, ge=0)

    log_level: str = "INFO"

    # --- round 2 (declared once here so parallel work does not collide; each is wired by its issue) ---
    #: lease for agent-facing claims (CLI claim/next/queue claim, MCP claim_next): LLM agents think in
    #: minutes, so their default lease is long; the worker helper and ``qs run`` keep ``lease_seconds``
    agent_lease_seconds: float = Field(default=1800.0, gt=0, le=86_400)
    #: largest request body accepted (answered 413 ``payload_too_large`` past it)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    #: largest task result (JSON-encoded) accepted
    max_result_bytes: int = Field(default=1024 * 1024, ge=1024)
    #: longest note text accepted
    max_note_chars: int = Field(default=20_000, ge=100)
    #: most open event streams (SSE) per replica; 429 past it
    max_event_streams: int = Field(default=256, ge=1)
    #: ``Host`` header values accepted (comma-separated); empty = loopback names when bound to loopback
    allowed_hosts: str = ""
    #: MCP tool profile: ``core`` (the nine work-loop tools), ``all``, ``readonly``
    mcp_tools: Literal["core", "all", "readonly"] = "core"
    # -- issue 14: stream channel ------------------------------------------------------------
    #: Valkey for task output streams (Postgres backend); default: QUEUE_VALKEY_URL
    stream_url: str | None = None
    #: largest chunk, bytes
    stream_max_chunk_bytes: int = Field(default=64 * 1024, ge=16, le=1024 * 1024)
    #: chunks kept per stream (approximate on Valkey)
    stream_retention_chunks: int = Field(default=10_000, ge=10, le=1_000_000)
    #: seconds a stream stays readable after its last publish (Valkey)
    stream_retention_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    #: open stream followers per replica (SSE followers also take an event-stream slot)
    stream_max_followers: int = Field(default=256, ge=1)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.storage_tier == "team" and not (self.database_url or self.backend_url):
            raise ValueError("MOSAIC_STORAGE_TIER=team needs QUEUE_DATABASE_URL (or MOSAIC_DATABASE_URL)")
        if self.resolved_backend_url().startswith("postgres") and not self.valkey_url:
            raise ValueError("the Postgres backend needs QUEUE_VALKEY_URL (or MOSAIC_VALKEY_URL)")
        return self

    def resolved_backend_url(self) -> str:
        """The backend URL these settings select (flatfile in ``data_dir`` by default)."""
        if self.backend_url:
            return self.backend_url
        if self.storage_tier != "local" and self.database_url:
            url = self.database_url
            if url.startswith("postgresql://") or url.startswith("postgres://"):
                url = "postgresql+asyncpg://" + url.split("://", 1)[1]
            return url
        return f"file://{self.data_dir.expanduser().resolve()}"

    def dispatch_config(self) -> DispatchConfig:
        """The dispatch timings and limits."""
        return DispatchConfig(
            lease_seconds=self.lease_seconds,
            heartbeat_seconds=self.heartbeat_seconds,
            backoff_base_seconds=self.backoff_base_seconds,
            backoff_max_seconds=self.backoff_max_seconds,
            max_queue_depth=self.max_queue_depth,
            sweep_seconds=self.sweep_seconds,
            default_max_attempts=self.max_attempts,
            agent_ready_seconds=self.agent_ready_seconds,
            offer_seconds=self.offer_seconds,
        )

    def build_backend(self) -> Backend:
        """The backend these settings select (not yet opened)."""
        backend = backend_from_url(
            self.resolved_backend_url(),
            valkey_url=self.valkey_url,
            config=self.dispatch_config(),
            key_prefix=self.valkey_prefix,
            stream_url=self.stream_url,
        )
        backend.streams.config = StreamConfig(
            max_chunk_bytes=self.stream_max_chunk_bytes,
            retention_chunks=self.stream_retention_chunks,
            retention_seconds=self.stream_retention_seconds,
            max_followers=self.stream_max_followers,
        )
        return backend

    @classmethod
    def _env_names(cls, loc: str) -> str:
        """The environment name(s) behind an error location: a field name, or the first alias of a field."""
        for name, field in cls.model_fields.items():
            choices = field.validation_alias
            if isinstance(choices, AliasChoices):
                aliases = [str(a) for a in choices.choices]
                if loc in (name, *aliases):
                    return " / ".join(aliases)
        return f"QUEUE_{loc.upper()}"

    @classmethod
    def load(cls, **overrides: object) -> Settings:
        """Build settings from the environment, turning validation errors into ConfigurationError."""
        import pydantic

        try:
            return cls(**overrides)  # type: ignore[arg-type]
        except pydantic.ValidationError as exc:
            lines = []
            for err in exc.errors(include_url=False):
                loc = ".".join(str(p) for p in err["loc"])
                name = cls._env_names(loc) if loc else "configuration"
                lines.append(f"{name}: {str(err['msg']).removeprefix('Value error, ')}")
            raise exceptions.ConfigurationError("; ".join(lines)) from None


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    if host in {"localhost", "localhost.localdomain"}:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
