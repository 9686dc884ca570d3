"""backend_from_url: the one module that names the Backend implementations (each imported lazily).

Kept out of ``backend.py`` on purpose: an interface that imports its implementations closes an import
circle through every backend (STYLE rule 7).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from queue_service import exceptions
from queue_service.backend import Backend
from queue_service.dispatch_config import DispatchConfig

__all__ = ["backend_from_url"]


def backend_from_url(
    url: str,
    *,
    valkey_url: str | None = None,
    config: DispatchConfig | None = None,
    key_prefix: str | None = None,
    stream_url: str | None = None,
) -> Backend:
    """Build the backend a URL names, importing it lazily.

    ``postgresql+asyncpg://…`` (needs *valkey_url*; *key_prefix* defaults to ``mosaic:queue``) →
    PostgresValkeyBackend; ``file://<dir>`` → FlatfileBackend; ``memory://`` → InMemoryBackend.
    """
    config = config or DispatchConfig()
    scheme = urlsplit(url).scheme
    if scheme.startswith("postgres"):
        if not valkey_url:
            raise exceptions.ConfigurationError(
                "a Postgres backend needs a Valkey URL: set QUEUE_VALKEY_URL (or MOSAIC_VALKEY_URL)"
            )
        from queue_service.postgres.backend import PostgresValkeyBackend

        if key_prefix:
            return PostgresValkeyBackend(url, valkey_url, config=config, key_prefix=key_prefix, stream_url=stream_url)
        return PostgresValkeyBackend(url, valkey_url, config=config, stream_url=stream_url)
    if scheme == "file":
        from flatfile.backend import FlatfileBackend

        return FlatfileBackend.from_url(url, config=config)
    if scheme == "memory":
        from queue_service.memory import InMemoryBackend

        return InMemoryBackend(config=config)
    raise exceptions.ConfigurationError(
        f"unsupported backend URL {url!r}: use postgresql+asyncpg://…, file://<dir> or memory://"
    )
