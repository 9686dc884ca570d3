"""Typed HTTP client for the queue service: :class:`Client` (sync) and :class:`AsyncClient`.

One method per endpoint, pydantic models in and out (``queue_service.models``), and errors raised
as the service's own error tree (``queue_service.exceptions``) rebuilt from the JSON error body::

    from queue_service.client import Client
    from queue_service.exceptions import LeaseError

    with Client("http://127.0.0.1:8000", token="qs_…") as qs:
        task = qs.create_task("web", {"title": "Write the login page", "role": "dev"})
        claim = qs.claim("web", roles=["dev"])
        if claim:
            qs.complete("web", claim.task.key, claim.lease.token, result={"pr": 12})

        def handle(task): ...              # a worker: heartbeats run in a thread meanwhile
        qs.worker("web", roles=["dev"]).run(handle, max_tasks=10)

Retries: idempotent calls (every GET, results, cancel, creates carrying an idempotency key, and
complete/fail, which a lease token can do at most once) are retried with exponential backoff on 503
and on transport errors. Other calls are retried only when
the connection could not be made at all (the request never reached the service). Tests inject a
transport: ``AsyncClient(transport=httpx.ASGITransport(app=create_app(...)))``.

The client stands alone (STYLE rule 28): this package imports httpx, pydantic and the
server-free modules ``models``, ``wire``, ``ids``, ``exceptions``, ``worker`` and
``client_streams`` — never FastAPI, SQLAlchemy, asyncpg, redis, watchdog or a server module
(an import-linter contract in ``pyproject.toml`` and ``tests/integration/test_client_standalone.py`` hold it).

Layout: ``_endpoints`` describes every endpoint once as a :class:`~queue_service.client._base.Request`
(path, body, retry safety, how to read the answer); ``Client`` (``_sync``) and ``AsyncClient``
(``_async``) send them, one line per public method.
"""

from queue_service.client._async import AsyncClient
from queue_service.client._base import DEFAULT_URL, Request, RetryPolicy, ServiceUnreachable, error_from_response
from queue_service.client._endpoints import TaskQuery
from queue_service.client._sync import Client
from queue_service.worker import AsyncJob, AsyncWorker, Job, PermanentError, Worker

__all__ = [
    "DEFAULT_URL",
    "AsyncClient",
    "AsyncJob",
    "AsyncWorker",
    "Client",
    "Job",
    "PermanentError",
    "Request",
    "RetryPolicy",
    "ServiceUnreachable",
    "TaskQuery",
    "Worker",
    "error_from_response",
]
