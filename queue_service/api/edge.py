"""The HTTP edge: checks that run before routing and before a single body byte is read.

Pure ASGI (no Starlette ``BaseHTTPMiddleware``), so each check costs a few header look-ups. In order:

1. ``Host`` must be an allowed name (421 ``host_not_allowed``): a DNS-rebinding page reaches a loopback
   server under its own host name, which is never on the list.
2. On ``/v1`` and ``/mcp``, a state-changing request must not come from another site (403
   ``cross_site_refused``, judged by ``Origin`` and ``Sec-Fetch-Site``) and must be
   ``application/json`` (415 ``unsupported_media_type``): a web page can send a "simple" cross-site
   request without asking the browser first, but never one of those.
3. On ``/v1`` and ``/mcp``, the bearer token is checked (401) before the body is read, so an
   unauthenticated caller cannot make the service hold or parse anything.
4. The body is read here, at most ``max_body_bytes`` whatever ``Content-Length`` says or when it is
   absent (chunked), and replayed to the app; past the cap the answer is 413 ``payload_too_large``.

The origin rule is :func:`cross_site_reason`, reusable by the UI (cookie session + CSRF token).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from queue_service import exceptions
from queue_service.api import errors, lease_auth
from queue_service.settings import Settings, is_loopback

__all__ = [
    "GUARDED_PREFIXES",
    "PRINCIPAL_SCOPE_KEY",
    "STATE_CHANGING_METHODS",
    "EdgeMiddleware",
    "HostPolicy",
    "cross_site_reason",
    "split_host",
]

logger = logging.getLogger("queue_service.api")

#: paths whose state-changing requests need JSON, same-origin, and a token checked before the body
GUARDED_PREFIXES = ("/v1", "/mcp")
STATE_CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: where the edge leaves the authenticated caller for ``api.deps.get_principal``
PRINCIPAL_SCOPE_KEY = "queue_service.principal"

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "127.0.0.1", "::1"})


def split_host(value: str) -> tuple[str, int | None] | None:
    """``(name, port)`` of a ``Host`` header or origin netloc, lower-cased; None if malformed."""
    value = value.strip().lower()
    if not value or any(c.isspace() or c in "/@\\?#" for c in value):
        return None
    port_text: str | None = None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                return None
            port_text = rest[1:]
    elif value.count(":") == 1:
        name, port_text = value.split(":")
    elif ":" in value:
        return None  # a bare IPv6 address must be bracketed in a Host header
    else:
        name = value
    name = name.rstrip(".")
    if not name:
        return None
    if port_text is None:
        return name, None
    if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5 or int(port_text) > 65535:
        return None
    return name, int(port_text)


@dataclass(frozen=True)
class HostPolicy:
    """Which ``Host`` names the service answers (``None``: any)."""

    names: frozenset[str] | None
    suffixes: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> HostPolicy:
        """``QUEUE_ALLOWED_HOSTS`` (comma-separated names, ``*.example.com``, or ``*``); empty means the
        loopback names when bound to loopback, and any name otherwise (where a token is mandatory)."""
        entries = [e.strip().lower().rstrip(".") for e in settings.allowed_hosts.split(",") if e.strip()]
        if not entries:
            if is_loopback(settings.host):
                return cls(frozenset(_LOOPBACK_NAMES | {settings.host.lower()}))
            return cls(None)
        return cls.from_entries(entries)

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> HostPolicy:
        names: set[str] = set()
        suffixes: list[str] = []
        for entry in entries:
            if entry == "*":
                return cls(None)
            if entry.startswith("*."):
                suffixes.append(entry[1:])
            else:
                names.add(entry.strip("[]"))
        return cls(frozenset(names), tuple(suffixes))

    def allows(self, host_header: str | None) -> bool:
        """True if a request with this ``Host`` header may be answered."""
        if self.names is None:
            return True
        if host_header is None:
            return False
        parsed = split_host(host_header)
        if parsed is None:
            return False
        name = parsed[0]
        if name in self.names or any(name.endswith(s) for s in self.suffixes):
            return True
        if "localhost" in self.names:
            # any loopback IP literal: rebinding needs a DNS name, so literals cannot be turned
            try:
                return ipaddress.ip_address(name).is_loopback
            except ValueError:
                return False
        return False


def _default_port(scheme: str) -> int | None:
    return {"http": 80, "https": 443}.get(scheme)


def cross_site_reason(headers: Headers) -> str | None:
    """Why a request was sent by a page of another origin, or None if it was not.

    A request with neither ``Origin`` nor ``Sec-Fetch-Site`` is not from a browser page (curl, the
    typed client, an agent) and passes. ``Sec-Fetch-Site`` other than ``same-origin``/``none`` is
    refused; an ``Origin`` (including ``null``) whose host and port differ from ``Host`` is refused.
    """
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site.strip().lower() not in ("same-origin", "none"):
        return f"Sec-Fetch-Site is {fetch_site[:40]!r}"
    origin = headers.get("origin")
    if origin is None:
        return None
    parts = urlsplit(origin.strip()) if origin.strip().lower() != "null" else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        return f"Origin {origin[:100]!r} is not this service"
    theirs = split_host(parts.netloc)
    host = headers.get("host")
    ours = split_host(host) if host is not None else None
    if theirs is None or ours is None:
        return f"Origin {origin[:100]!r} is not this service"
    default = _default_port(parts.scheme)
    if theirs[0] != ours[0] or (theirs[1] or default) != (ours[1] or default):
        return f"Origin {origin[:100]!r} is not this service ({(host or '')[:100]!r})"
    return None


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _guarded(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in GUARDED_PREFIXES)


class _BodyTooLarge(Exception):
    pass


class EdgeMiddleware:
    """Host, origin, media type, auth and body-size checks in front of the app (see the module doc)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.hosts = HostPolicy.from_settings(settings)
        self.max_body = settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if not self.hosts.allows(headers.get("host")):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            host = headers.get("host")
            await errors.error_response(
                421,
                "host_not_allowed",
                f"this service does not answer for host {(host or '')[:100]!r}; the operator lists the "
                "names it answers in QUEUE_ALLOWED_HOSTS",
                {"host": host},
            )(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = await self._refusal(scope, headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        if not self._may_have_body(headers):
            await self.app(scope, receive, send)
            return
        try:
            body = await self._read_body(receive)
        except _BodyTooLarge:
            await self._too_large()(scope, receive, send)
            return
        if body is None:
            return  # the client went away mid-body: nobody to answer
        await self.app(scope, _replay(body, receive), send)

    async def _refusal(self, scope: Scope, headers: Headers) -> Response | None:
        path: str = scope.get("path", "")
        if _guarded(path):
            if scope.get("method") in STATE_CHANGING_METHODS:
                reason = cross_site_reason(headers)
                if reason is not None:
                    return errors.error_response(
                        403,
                        "cross_site_refused",
                        f"refused a state-changing request from another site: {reason}",
                        {"reason": reason},
                    )
                body_expected = scope.get("method") != "DELETE" or self._may_have_body(headers)
                if body_expected and not _is_json(headers.get("content-type")):
                    return errors.error_response(
                        415,
                        "unsupported_media_type",
                        f"{scope.get('method')} {path[:200]} needs 'Content-Type: application/json' "
                        f"(got {(headers.get('content-type') or 'none')[:100]!r})",
                    )
            failure = await self._authenticate(scope, headers)
            if failure is not None:
                return failure
        length = headers.get("content-length")
        if length is not None:
            text = length.strip()
            if not text.isascii() or not text.isdigit():
                return errors.error_response(400, "bad_request", f"invalid Content-Length {length[:40]!r}")
            if int(text) > self.max_body:
                return self._too_large()
        return None

    async def _authenticate(self, scope: Scope, headers: Headers) -> Response | None:
        """Check the bearer token now, before the body; leave the principal for the route."""
        app = scope.get("app")
        state = getattr(getattr(app, "state", None), "qs", None)
        authenticator = getattr(state, "authenticator", None)
        if authenticator is None:
            return None  # not started: the route answers 503
        credential: str | None = None
        authorization = headers.get("authorization")
        if authorization is not None:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                credential = value.strip()
        try:
            if credential is None and await authenticator.enabled():
                # no bearer: the live lease of one task may stand in for it (issue 11, api.lease_auth)
                holder = await lease_auth.lease_principal(scope, headers, getattr(state, "service", None))
                if holder is not None:
                    scope[PRINCIPAL_SCOPE_KEY] = holder
                    return None
            scope[PRINCIPAL_SCOPE_KEY] = await authenticator.authenticate(credential)
        except exceptions.QueueServiceError as exc:
            return errors.domain_error_response(exc)
        return None

    @staticmethod
    def _may_have_body(headers: Headers) -> bool:
        length = headers.get("content-length")
        if length is not None and length.strip() not in ("", "0"):
            return True
        return "transfer-encoding" in headers

    async def _read_body(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise _BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self) -> Response:
        return errors.error_response(
            413,
            "payload_too_large",
            f"request body is larger than {self.max_body} bytes (QUEUE_MAX_BODY_BYTES)",
            {"max_body_bytes": self.max_body},
            headers={"Connection": "close"},
        )


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
