"""What both clients share: the request description, the retry rules, errors from responses."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx

from queue_service import exceptions
from queue_service.ids import new_agent_id
from queue_service.version import __version__

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "LEASE_HEADER",
    "BaseClient",
    "Request",
    "RetryPolicy",
    "ServiceUnreachable",
]

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 30.0

T = TypeVar("T")


class ServiceUnreachable(exceptions.BackendUnavailable):
    """The queue service could not be reached (connection refused, timed out, or dropped)."""

    code = "service_unreachable"


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry: ``base · 2^(n-1)``, capped at ``max_delay``, ±50 % jitter."""

    #: total tries, the first included (1 = never retry)
    attempts: int = 4
    base_delay: float = 0.1
    max_delay: float = 2.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed try number *attempt* (1-based)."""
        if retry_after is not None:
            return min(self.max_delay, max(0.0, retry_after))
        raw = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return float(raw * random.uniform(0.5, 1.0))


#: a lease token standing in for an API token on its own task (issue 11; ``api.lease_auth`` on the server)
LEASE_HEADER = "X-Queue-Lease-Token"


@dataclass
class Request(Generic[T]):
    """One call to the service: what to send, how to read the answer, and whether a retry is safe."""

    method: str
    path: str
    #: turns the (successful) response into the method's return value
    parse: Callable[[httpx.Response], T]
    json: Any = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    idempotent: bool = False
    timeout: float | None = None
    #: how many times it was sent so far (a retried finishing call may have landed the first time)
    tries: int = 0


_STATUS_FALLBACK: dict[int, type[exceptions.QueueServiceError]] = {
    400: exceptions.ValidationError,
    401: exceptions.AuthError,
    403: exceptions.Forbidden,
    404: exceptions.NotFound,
    409: exceptions.Conflict,
    412: exceptions.VersionConflict,
    422: exceptions.ValidationError,
    429: exceptions.QueueFull,
    502: exceptions.BackendUnavailable,
    503: exceptions.BackendUnavailable,
    504: exceptions.BackendUnavailable,
}


def error_from_response(response: httpx.Response) -> exceptions.QueueServiceError:
    """The domain error an error response stands for (by its ``code``, else by HTTP status)."""
    code = message = None
    details: dict[str, Any] = {}
    try:
        body = response.json()
        error = body["error"]
        code, message = str(error["code"]), str(error["message"])
        if isinstance(error.get("details"), dict):
            details = error["details"]
    except (ValueError, KeyError, TypeError):
        pass
    if code is not None:
        cls = exceptions.error_class_for_code(code)
        if cls is exceptions.QueueServiceError and code != cls.code:
            cls = _STATUS_FALLBACK.get(response.status_code, exceptions.QueueServiceError)
    else:
        cls = _STATUS_FALLBACK.get(response.status_code, exceptions.QueueServiceError)
        message = f"HTTP {response.status_code} from {response.request.url.path}: {response.text[:200]}"
    exc = cls(message)
    exc.details = details
    return exc


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class BaseClient:
    """Configuration and the send/retry decisions; ``Client`` and ``AsyncClient`` only do the I/O."""

    _owns_http: bool

    def __init__(
        self,
        base_url: str,
        token: str | None,
        timeout: float,
        retry: RetryPolicy | None,
        agent: str | None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        #: the agent id claims use when none is given (unique per client, see ``new_agent_id``)
        self.agent_id = agent or new_agent_id()
        self._headers = {"User-Agent": f"queue-service-client/{__version__}", "Accept": "application/json"}
        if token is None:
            # the same variable the CLI reads, so an agent's environment is enough to authenticate
            token = os.environ.get("QUEUE_TOKEN") or None
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._token = token

    def _url(self, path: str) -> str:
        # a client passed in may have another base_url (or none): spell the whole URL for it
        return path if self._owns_http else self.base_url + path

    def _request_args(self, request: Request[Any]) -> dict[str, Any]:
        """The ``httpx`` request arguments of one try of *request*."""
        request.tries += 1
        headers = {**self._headers, **request.headers}
        token = request.json.get("token") if isinstance(request.json, dict) else None
        if "Authorization" not in headers and isinstance(token, str):
            # no API token (a child of `qs run`): the lease stands in for one on its own task (issue 11)
            headers.setdefault(LEASE_HEADER, token)
        if request.method != "GET" and request.json is None:
            # the service refuses state changes that are not JSON, body or not (a browser cannot
            # send this header cross-site without asking first)
            headers["Content-Type"] = "application/json"
        return {
            "method": request.method,
            "url": self._url(request.path),
            "json": request.json,
            "params": request.params,
            "headers": headers,
            "timeout": request.timeout if request.timeout is not None else self.timeout,
        }

    def _retry_after_error(self, request: Request[Any], exc: httpx.TransportError) -> float:
        """After a try failed in transport: the pause before the next, or raise ServiceUnreachable."""
        # a connection that was never made carried no request: safe to retry any call
        safe = request.idempotent or isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
        if safe and request.tries < self.retry.attempts:
            return self.retry.delay(request.tries)
        raise self._unreachable(exc) from exc

    def _retry_after_response(self, request: Request[Any], response: httpx.Response) -> float | None:
        """After a try got *response*: the pause before the next, None when it is the answer,
        or raise the error it stands for."""
        if response.status_code == 503 and request.idempotent and request.tries < self.retry.attempts:
            return self.retry.delay(request.tries, _retry_after(response))
        if response.status_code >= 400:
            raise error_from_response(response)
        return None

    def _unreachable(self, exc: httpx.TransportError) -> ServiceUnreachable:
        return ServiceUnreachable(f"cannot reach the queue service at {self.base_url}: {type(exc).__name__}: {exc}")

    def _stream_args(self, path: str, params: dict[str, str], headers: dict[str, str]) -> dict[str, Any]:
        """The ``httpx`` stream arguments of one connection to an SSE feed (no read timeout)."""
        return {
            "method": "GET",
            "url": self._url(path),
            "params": params,
            "headers": headers,
            "timeout": httpx.Timeout(self.timeout, read=None),
        }
