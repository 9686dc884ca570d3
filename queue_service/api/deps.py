"""FastAPI dependencies as ``Annotated`` aliases: the service, the caller, and validated path parts.

The lifespan in ``queue_service.app`` puts one :class:`AppState` on ``app.state.qs``; everything a
handler needs is read from there, so nothing is global and several apps can live in one process.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Path, Request, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from queue_service import exceptions
from queue_service.api.auth import Authenticator
from queue_service.api.edge import PRINCIPAL_SCOPE_KEY
from queue_service.api.limits import StreamSlots
from queue_service.api.metrics import Metrics
from queue_service.auth import Action, Principal
from queue_service.backend import Backend
from queue_service.models import KEY_RE, MAX_KEY_LEN, SLUG_RE
from queue_service.service import QueueService
from queue_service.settings import Settings

__all__ = [
    "AdminDep",
    "AppState",
    "KeyPath",
    "MissionPath",
    "PrincipalDep",
    "ProjectPath",
    "ReadDep",
    "ServiceDep",
    "StateDep",
    "StrictJSONRoute",
    "WorkDep",
    "get_state",
    "require",
]


@dataclass
class AppState:
    """What the lifespan opened, shared by every request of one app."""

    settings: Settings
    backend: Backend
    service: QueueService
    authenticator: Authenticator
    metrics: Metrics
    #: open event streams on this replica (QUEUE_MAX_EVENT_STREAMS)
    streams: StreamSlots = field(default_factory=lambda: StreamSlots(256))


def get_state(request: Request) -> AppState:
    """The app's state; a clear error if the lifespan did not run."""
    state = getattr(request.app.state, "qs", None)
    if not isinstance(state, AppState):
        raise exceptions.BackendUnavailable("the service is not started (lifespan has not run)")
    return state


def get_service(request: Request) -> QueueService:
    """The QueueService facade: the only thing route handlers call."""
    return get_state(request).service


StateDep = Annotated[AppState, Depends(get_state)]
ServiceDep = Annotated[QueueService, Depends(get_service)]

_bearer = HTTPBearer(auto_error=False, description="an API token: `Authorization: Bearer qs_…`")


async def get_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """The caller (401 if auth is on and the token is missing or unknown).

    On ``/v1`` and ``/mcp`` the HTTP edge has already authenticated the request, before its body was
    read (``api.edge``); its answer is reused.
    """
    checked = request.scope.get(PRINCIPAL_SCOPE_KEY)
    if isinstance(checked, Principal):
        return checked
    return await get_state(request).authenticator.authenticate(credentials.credentials if credentials else None)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require(action: Action) -> Callable[[Request, Principal], Awaitable[Principal]]:
    """A dependency that lets the request through only if the caller may do *action*.

    The project is the raw ``{project}`` path part (or None for service-wide routes), checked
    before the path is validated so that a refusal never reveals whether a project exists.
    """

    async def check(request: Request, principal: PrincipalDep) -> Principal:
        project = request.path_params.get("project")
        key = request.path_params.get("key")
        principal.check(action, project if isinstance(project, str) else None, key if isinstance(key, str) else None)
        return principal

    return check


ReadDep = Annotated[Principal, Depends(require(Action.READ))]
WorkDep = Annotated[Principal, Depends(require(Action.WORK))]
AdminDep = Annotated[Principal, Depends(require(Action.ADMIN))]

ProjectPath = Annotated[str, Path(pattern=SLUG_RE.pattern, max_length=63, description="project slug", examples=["web"])]
MissionPath = Annotated[str, Path(pattern=SLUG_RE.pattern, max_length=63, description="mission id")]
KeyPath = Annotated[
    str, Path(pattern=KEY_RE.pattern, max_length=MAX_KEY_LEN, description="task key", examples=["WEB-12"])
]


# -- strict JSON bodies -----------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _check_text(value: Any, doc: str) -> None:
    """Refuse strings that can be parsed but never stored or sent back (lone surrogates, NUL)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise json.JSONDecodeError("strings must not contain NUL characters", doc, 0)
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise json.JSONDecodeError("strings must be valid Unicode (lone surrogate)", doc, 0) from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


class _StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                parsed = json.loads(body, parse_constant=_reject_constant)
            except ValueError as exc:
                if isinstance(exc, json.JSONDecodeError):
                    raise
                raise json.JSONDecodeError(f"{exc} is not JSON", body.decode("utf-8", "replace"), 0) from None
            _check_text(parsed, body.decode("utf-8", "replace"))
            self._json = parsed
        return self._json


class StrictJSONRoute(APIRoute):
    """A route whose JSON bodies refuse NaN/Infinity, lone surrogates and NUL characters (400).

    Python's ``json`` accepts all three, but none can be stored in Postgres or rendered back as
    JSON, so accepting them would turn one bad request into failures on every later read.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(_StrictJSONRequest(request.scope, request.receive))

        return strict_handler
