"""The live dashboard at ``/ui`` (issue 12) and the offline API docs at ``/docs`` and ``/redoc``.

:func:`install_ui` mounts everything on an app: the pages (:mod:`.pages`), the form actions
(:mod:`.actions`), the UI's own event streams (:mod:`.live`), the vendored static assets (htmx, its
SSE extension, Swagger UI, ReDoc — pinned versions in ``static/vendor/VERSIONS.txt``), ``/`` → ``/ui/``,
and the redirect to ``/ui/login`` for a browser without a valid session. Pages read through the
:class:`~queue_service.service.QueueService` facade only.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse, RedirectResponse, Response

from queue_service.ui import actions, live, output, pages
from queue_service.ui.session import LoginRequired

__all__ = ["STATIC_URL", "install_ui"]

STATIC_URL = "/ui/static"
_STATIC_DIR = Path(__file__).parent / "static"


async def _login_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    if request.url.path.endswith(("/events", "/stream")):
        # an EventSource cannot follow a login redirect: a plain 401 stops it
        return Response(exc.reason, status_code=401, media_type="text/plain")
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/login?next={quote(target, safe='')}&reason={quote(exc.reason)}", status_code=303)


def install_ui(app: FastAPI) -> None:
    """Mount the dashboard, its assets and the offline docs on *app* (built with docs_url=None)."""
    app.include_router(pages.router)
    app.include_router(actions.router)
    app.include_router(live.router)
    app.include_router(output.router)
    app.mount(STATIC_URL, StaticFiles(directory=_STATIC_DIR), name="ui-static")
    app.add_exception_handler(LoginRequired, _login_required)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{STATIC_URL}/vendor/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC_URL}/vendor/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{STATIC_URL}/vendor/swagger-ui/favicon-32x32.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{STATIC_URL}/vendor/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{STATIC_URL}/vendor/swagger-ui/favicon-32x32.png",
            with_google_fonts=False,
        )
