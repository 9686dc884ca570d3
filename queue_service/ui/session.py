"""Who is looking at the dashboard, and whether a form post may change anything.

* The session cookie (``qs_session``, HttpOnly, SameSite=Strict, path ``/ui``) holds the API token the
  user typed at ``/ui/login``. Every request re-checks it through the API's own
  :class:`~queue_service.api.auth.Authenticator`, so the UI has exactly the API's scopes and a revoked
  token ends its sessions as soon as the API refuses it. :func:`ui_principal` is the one place that
  glue lives.
* Every state-changing form carries a CSRF token equal to the ``qs_csrf`` cookie (double submit; the
  cookie is SameSite=Strict, so a cross-site post never carries it) and must pass the origin check:
  a browser's ``Origin`` (or ``Sec-Fetch-Site``) naming another site is refused before anything runs.
"""

from __future__ import annotations

import hmac
import secrets

from fastapi import Request, Response

from queue_service import exceptions
from queue_service.api.deps import get_state
from queue_service.api.edge import cross_site_reason
from queue_service.auth import Action, Principal

__all__ = [
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "SESSION_COOKIE",
    "LoginRequired",
    "check_csrf",
    "attach_csrf_cookie",
    "check_origin",
    "csrf_token",
    "may",
    "set_session",
    "ui_principal",
]

SESSION_COOKIE = "qs_session"
CSRF_COOKIE = "qs_csrf"
CSRF_FIELD = "csrf_token"
_MAX_COOKIE = 512


class LoginRequired(Exception):
    """Auth is on and the browser has no valid session: send it to ``/ui/login``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def ui_principal(request: Request) -> Principal:
    """The caller behind this browser, checked on every request (revocation applies at once).

    Raises:
        LoginRequired: auth is on and the session cookie is missing, unknown or revoked.
    """
    authenticator = get_state(request).authenticator
    token = request.cookies.get(SESSION_COOKIE)
    if token is not None and len(token) > _MAX_COOKIE:
        token = None
    try:
        return await authenticator.authenticate(token or None)
    except exceptions.AuthError as exc:
        raise LoginRequired("your session has ended: sign in again" if token else exc.message) from None


def may(principal: Principal, action: Action, project: str | None) -> bool:
    """Whether to show (and accept) the controls for *action*."""
    return principal.allows(action, project)


def set_session(request: Request, response: Response, token: str) -> None:
    """Store the token in the HttpOnly session cookie."""
    response.set_cookie(
        SESSION_COOKIE,
        token,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def csrf_token(request: Request) -> str:
    """This browser's CSRF token (a new one, set by :func:`attach_csrf_cookie`, when it has none)."""
    current = request.cookies.get(CSRF_COOKIE)
    if current and 20 <= len(current) <= 64 and current.isascii():
        return current
    cached = getattr(request.state, "new_csrf", None)
    if isinstance(cached, str):
        return cached
    fresh = secrets.token_urlsafe(24)
    request.state.new_csrf = fresh
    return fresh


def attach_csrf_cookie(request: Request, response: Response) -> None:
    """Set the CSRF cookie chosen while rendering (if a new one was made)."""
    fresh = getattr(request.state, "new_csrf", None)
    if isinstance(fresh, str):
        response.set_cookie(
            CSRF_COOKIE, fresh, path="/ui", httponly=True, samesite="strict", secure=request.url.scheme == "https"
        )


def check_origin(request: Request) -> None:
    """Refuse a state change a browser sent from another site: the API's own rule
    (:func:`queue_service.api.edge.cross_site_reason`).

    Raises:
        Forbidden: ``Origin`` names another host, or ``Sec-Fetch-Site`` says cross-site.
    """
    reason = cross_site_reason(request.headers)
    if reason is not None:
        raise exceptions.Forbidden(f"cross-site request refused: {reason}", reason=reason)


def check_csrf(request: Request, submitted: str | None) -> None:
    """The form's CSRF token must equal the browser's CSRF cookie.

    Raises:
        Forbidden: missing or different.
    """
    cookie = request.cookies.get(CSRF_COOKIE)
    if not cookie or not submitted or not hmac.compare_digest(cookie.encode(), submitted.encode()):
        raise exceptions.Forbidden("missing or wrong CSRF token: reload the page and try again")
