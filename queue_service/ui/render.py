"""Template rendering shared by the pages and actions: one Jinja2 environment, one context builder,
and the HTML error page every refusal or bad input gets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.responses import HTMLResponse

from queue_service import exceptions
from queue_service.auth import Action, Principal
from queue_service.models import utcnow
from queue_service.ui import graphs, session, views

__all__ = ["page", "error_page", "templates"]

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
templates.env.globals["STATUS_COLOURS"] = graphs.STATUS_COLOURS
templates.env.globals["lease_left"] = views.lease_left
templates.env.filters["ago"] = lambda dt: "" if dt is None else dt.strftime("%Y-%m-%d %H:%M:%S UTC")


#: pages that do not follow the event stream
_STILL = frozenset({"error.html", "login.html"})
_TABS = {"board.html": "board", "dead_letter.html": "dead", "agents.html": "agents", "list.html": "list"}


def page(
    request: Request,
    name: str,
    principal: Principal,
    project: str | None = None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    """Render *name* with what every page needs (who, may they act, the CSRF token, the time)."""
    live_url: str | None = None
    if name == "overview.html":
        live_url = "/ui/events"
    elif project is not None and name not in _STILL:
        live_url = f"/ui/p/{project}/events"
    ctx: dict[str, Any] = {
        "live_url": live_url,
        "tab": _TABS.get(name),
        "selectable": name == "dead_letter.html" and session.may(principal, Action.ADMIN, project),
        "principal": principal,
        "project": project,
        "can_admin": session.may(principal, Action.ADMIN, project),
        "can_work": session.may(principal, Action.WORK, project),
        "csrf": session.csrf_token(request),
        "now": utcnow(),
        "auth_on": principal.authenticated,
        **context,
    }
    response = templates.TemplateResponse(request, name, ctx, status_code=status_code)
    response.headers["Cache-Control"] = "no-store"
    session.attach_csrf_cookie(request, response)
    return response


def error_page(request: Request, principal: Principal | None, exc: exceptions.QueueServiceError) -> HTMLResponse:
    """The refusal as a page, with the API's status code and error code."""
    who = principal or Principal.open()
    return page(
        request,
        "error.html",
        who,
        status_code=exc.http_status,
        code=exc.code,
        message=exc.message,
    )
