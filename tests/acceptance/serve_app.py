"""Run the real app under uvicorn on Postgres + Valkey, in a Valkey key space of its own.

Used by the REST acceptance tests as a subprocess: ``python -m tests.acceptance.serve_app``. Settings
come from the environment as for ``queue-service serve`` (``QUEUE_DATABASE_URL``, ``QUEUE_VALKEY_URL``,
``QUEUE_HOST``, ``QUEUE_PORT``, ``QUEUE_LEASE_SECONDS``…); ``QUEUE_TEST_KEY_PREFIX`` keeps the keys
of concurrent test runs apart (the service itself always uses ``mosaic:queue``).
"""

from __future__ import annotations

import os

import uvicorn

from queue_service.app import create_app
from queue_service.postgres.backend import PostgresValkeyBackend
from queue_service.settings import Settings


def main() -> None:
    settings = Settings.load()
    assert settings.valkey_url is not None
    backend = PostgresValkeyBackend(
        settings.resolved_backend_url(),
        settings.valkey_url,
        config=settings.dispatch_config(),
        key_prefix=os.environ["QUEUE_TEST_KEY_PREFIX"],
    )
    uvicorn.run(create_app(settings, backend), host=settings.host, port=settings.port, log_level="warning")


if __name__ == "__main__":
    main()
