"""The one place errors become HTTP responses: ``{"error": {"code", "message", "details"}}``.

* ``QueueServiceError`` (the domain tree) → its ``http_status`` and ``code``.
* request validation (FastAPI/pydantic) → 422 ``validation_error``; a body that is not JSON → 400
  ``invalid_json``.
* Starlette's own HTTP errors (unknown path, wrong method) → their status, same shape.
* anything else → 500 ``internal`` with no internals in the body (the traceback goes to the log).

Route handlers and the service never build error responses themselves.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pydantic
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from queue_service import exceptions, models

__all__ = ["CatchAllMiddleware", "domain_error_response", "error_response", "install_error_handlers"]

logger = logging.getLogger("queue_service.api")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    412: "precondition_failed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    503: "unavailable",
}


class _ErrorJSONResponse(JSONResponse):
    """JSON that always renders: ASCII-escaped (lone surrogates survive), no NaN, str() fallback."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, default=str, separators=(",", ":")).encode()


def _jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy of error details (inputs echoed back may hold anything)."""
    if depth > 8:
        return "..."
    if value is None or isinstance(value, bool | int | str):
        if isinstance(value, str) and len(value) > 500:
            return value[:497] + "..."
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, depth + 1) for k, v in list(value.items())[:100]}
    if isinstance(value, Sequence | set | frozenset) and not isinstance(value, bytes | bytearray):
        return [_jsonable(v, depth + 1) for v in list(value)[:100]]
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def error_response(
    status: int,
    code: str,
    message: str,
    details: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Build an error response in the API's one shape."""
    body = {"error": {"code": code, "message": message, "details": _jsonable(dict(details or {}))}}
    return _ErrorJSONResponse(body, status_code=status, headers=dict(headers or {}))


def _domain_error_response(exc: exceptions.QueueServiceError) -> Response:
    status = exc.http_status
    headers: dict[str, str] = {}
    if isinstance(exc, exceptions.AuthError) and not isinstance(exc, exceptions.Forbidden):
        headers["WWW-Authenticate"] = "Bearer"
    if status in (429, 503):
        # backpressure and a backend outage are both "come back shortly"
        headers["Retry-After"] = "1"
    if status >= 500 and status != 503:
        # a backend's 5xx message and details may quote the driver (SQL, paths, hosts): log, don't send
        logger.error("request failed: %s: %s %r", exc.code, exc.message, exc.details, exc_info=exc)
        message = f"internal error ({exc.code}); the server log has the details"
        return error_response(status, exc.code, message, {}, headers)
    return error_response(status, exc.code, exc.message, exc.details, headers)


def domain_error_response(exc: exceptions.QueueServiceError) -> Response:
    """The response for a domain error raised outside a route (the HTTP edge)."""
    return _domain_error_response(exc)


def _problems(errors: Sequence[Any]) -> list[dict[str, Any]]:
    out = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        if loc and loc[0] == "body":
            loc = loc[1:]
        out.append(
            {
                "field": ".".join(loc) or "body",
                "message": str(err.get("msg", "invalid")).removeprefix("Value error, "),
                "type": err.get("type"),
                "input": err.get("input"),
            }
        )
    return out


async def _on_domain_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, exceptions.QueueServiceError)
    return _domain_error_response(exc)


async def _on_request_validation(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    for err in errors:
        if err.get("type") == "json_invalid":
            reason = (err.get("ctx") or {}).get("error", "malformed JSON")
            return error_response(400, "invalid_json", f"request body is not valid JSON: {reason}")
    problems = _problems(errors)
    text = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    return error_response(422, exceptions.ValidationError.code, text or "invalid request", {"problems": problems})


async def _on_pydantic_error(_request: Request, exc: Exception) -> Response:
    # a pydantic model validated inside a handler (not by FastAPI): same as our ValidationError
    assert isinstance(exc, pydantic.ValidationError)
    return _domain_error_response(models.validation_error_from(exc))


async def _on_http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message, headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Register every handler and the catch-all middleware on *app*."""
    app.add_exception_handler(exceptions.QueueServiceError, _on_domain_error)
    app.add_exception_handler(RequestValidationError, _on_request_validation)
    app.add_exception_handler(pydantic.ValidationError, _on_pydantic_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_middleware(CatchAllMiddleware)


class CatchAllMiddleware:
    """Turn an unexpected exception into a JSON 500 without internals, and log it.

    Starlette's ``ServerErrorMiddleware`` re-raises after answering, which test transports then
    surface as a crash; this answers and stops there. An exception after the response has started
    (e.g. inside an event stream) can only end the stream.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            logger.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                return
            response = error_response(500, "internal", "internal server error")
            await response(scope, receive, send)
