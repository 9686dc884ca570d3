"""One service replica for the ``rest`` suite: ``python -m bench._serve PORT DB_URL VALKEY_PREFIX``.

Builds the real app (``queue_service.app.create_app``) on a PostgresValkeyBackend with the bench's key
prefix and serves it with uvicorn (uvloop + httptools) on 127.0.0.1:PORT. The backend is built here
rather than from ``QUEUE_*`` variables because Settings has no Valkey key-prefix setting (the service
always uses ``mosaic:queue``), and the bench must not touch the shared default key space.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


async def _serve(port: int, db_url: str, prefix: str) -> None:
    import uvicorn

    from bench.common import VALKEY_URL
    from queue_service.app import create_app
    from queue_service.postgres.backend import PostgresValkeyBackend
    from queue_service.settings import Settings

    settings = Settings.load(
        host="127.0.0.1",
        port=port,
        database_url=db_url,
        valkey_url=VALKEY_URL,
        max_queue_depth=1_000_000,
        sync=False,
        log_level="WARNING",
    )
    backend = PostgresValkeyBackend(db_url, VALKEY_URL, settings.dispatch_config(), key_prefix=prefix)
    app = create_app(settings, backend=backend)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, loop="none", http="httptools", log_level="warning", access_log=False
    )
    try:
        await uvicorn.Server(config).serve()
    finally:
        await backend.close()


def main() -> None:
    """Entry point (see the module docstring)."""
    from bench.common import run_sync

    port, db_url, prefix = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    run_sync(lambda: _serve(port, db_url, prefix))


if __name__ == "__main__":
    main()
