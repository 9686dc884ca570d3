"""The dashboard's state-changing form posts. Each one, before touching anything: refuses a cross-site
request (origin check), checks the CSRF token, authenticates the session, and checks the same scope
the matching API route needs (create/edit/cancel/retry: admin; notes: agent). Then it redirects
back (303), so a reload never repeats a post."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.datastructures import FormData
from starlette.responses import RedirectResponse, Response

from queue_service import exceptions
from queue_service.api.deps import get_service, get_state
from queue_service.auth import Action, Principal
from queue_service.models import TaskFilter, TaskStatus
from queue_service.ui import session, views
from queue_service.ui.pages import _safe_next
from queue_service.ui.render import error_page, page

__all__ = ["router"]

router = APIRouter(prefix="/ui", include_in_schema=False)

#: most tasks one "retry all matching" post revives
BULK_LIMIT = 10_000
_MAX_FIELD = 100_000


#: largest form body read (a create form with a 100,000-character description fits)
MAX_FORM_BYTES = 1024 * 1024


async def _form(request: Request) -> FormData:
    """The posted form, refused before it is read when it says it is too big or does not say."""
    length = request.headers.get("content-length")
    if length is None or not length.isdigit() or int(length) > MAX_FORM_BYTES:
        raise exceptions.ValidationError(f"a form post needs a Content-Length of at most {MAX_FORM_BYTES} bytes")
    return await request.form(max_files=0, max_fields=BULK_LIMIT + 20, max_part_size=_MAX_FIELD + 1)


def _text(form: FormData, name: str, limit: int = 200) -> str | None:
    value = form.get(name)
    if value is None or not isinstance(value, str):
        return None
    if len(value) > limit:
        raise exceptions.ValidationError(f"{name} is longer than {limit} characters", field=name)
    return value.strip() or None


async def _guarded(
    request: Request,
    project: str,
    action: Action,
    run: Callable[[FormData, Principal], Awaitable[str]],
) -> Response:
    """Origin + CSRF + session + scope, then *run* (which returns where to go next)."""
    principal: Principal | None = None
    try:
        session.check_origin(request)
        form = await _form(request)
        csrf = form.get(session.CSRF_FIELD)
        session.check_csrf(request, csrf if isinstance(csrf, str) else None)
        principal = await session.ui_principal(request)
        principal.check(action, project)
        target = await run(form, principal)
    except exceptions.QueueServiceError as exc:
        return error_page(request, principal, exc)
    return RedirectResponse(target, status_code=303)


def _task_url(project: str, key: str) -> str:
    return f"/ui/p/{project}/tasks/{key}"


@router.post("/p/{project}/tasks")
async def create_task(request: Request, project: str) -> Response:
    """The create form: title, description, role, priority, deps (comma or space separated)."""

    async def run(form: FormData, _: Principal) -> str:
        deps_text = _text(form, "depends_on", 20_000) or ""
        data: dict[str, Any] = {
            "title": _text(form, "title", 500) or "",
            "description": _text(form, "description", _MAX_FIELD) or "",
            "depends_on": [d for d in deps_text.replace(",", " ").split() if d],
        }
        for name in ("role", "priority", "mission", "milestone", "assignee"):
            value = _text(form, name)
            if value is not None:
                data[name] = value
        labels = _text(form, "labels", 2000)
        if labels:
            data["labels"] = [x for x in labels.replace(",", " ").split() if x]
        task = await get_service(request).create_task(project, data)
        return f"/ui/p/{project}?" + urlencode({"created": task.key})

    return await _guarded(request, project, Action.ADMIN, run)


@router.post("/p/{project}/tasks/{key}/retry")
async def retry(request: Request, project: str, key: str) -> Response:
    async def run(_: FormData, principal: Principal) -> str:
        await get_service(request).retry_task(project, key, actor=principal.actor)
        return _task_url(project, key)

    return await _guarded(request, project, Action.ADMIN, run)


@router.post("/p/{project}/tasks/{key}/cancel")
async def cancel(request: Request, project: str, key: str) -> Response:
    async def run(form: FormData, principal: Principal) -> str:
        reason = _text(form, "reason", 2000)
        await get_service(request).cancel_task(project, key, reason, actor=principal.actor)
        return _task_url(project, key)

    return await _guarded(request, project, Action.ADMIN, run)


@router.post("/p/{project}/tasks/{key}/edit")
async def edit(request: Request, project: str, key: str) -> Response:
    """Status, priority and assignee (an empty assignee clears it)."""

    async def run(form: FormData, principal: Principal) -> str:
        patch: dict[str, Any] = {}
        for name in ("status", "priority"):
            value = _text(form, name)
            if value is not None:
                patch[name] = value
        if "assignee" in form:
            patch["assignee"] = _text(form, "assignee")
        version = _text(form, "version", 20)
        expected = int(version) if version and version.isdigit() else None
        if patch:
            await get_service(request).update_task(project, key, patch, expected, actor=principal.actor)
        return _task_url(project, key)

    return await _guarded(request, project, Action.ADMIN, run)


@router.post("/p/{project}/tasks/{key}/notes")
async def add_note(request: Request, project: str, key: str) -> Response:
    async def run(form: FormData, principal: Principal) -> str:
        text = _text(form, "text", 20_000) or ""
        await get_service(request).add_note(project, key, principal.actor, text)
        return _task_url(project, key)

    return await _guarded(request, project, Action.WORK, run)


@router.post("/p/{project}/dead-letter/retry")
async def retry_dead_letter(request: Request, project: str) -> Response:
    """Retry the ticked keys, or (``all=1``) every failed task matching the posted filter."""

    async def run(form: FormData, principal: Principal) -> str:
        service = get_service(request)
        if form.get("all") == "1":
            filters = TaskFilter(
                status=[TaskStatus.FAILED],
                role=_text(form, "role"),
                label=_text(form, "label"),
                mission=_text(form, "mission"),
            )
            keys = [t.key async for t in views.iter_tasks(service, project, filters, BULK_LIMIT)]
        else:
            keys = [k for k in form.getlist("key") if isinstance(k, str) and k][:BULK_LIMIT]
            if not keys:
                raise exceptions.ValidationError("tick at least one task to retry")
        done, errors = await views.retry_many(service, project, keys, principal.actor)
        message = f"retried {done} of {len(keys)}" + (f"; {len(errors)} refused: {errors[0]}" if errors else "")
        return f"/ui/p/{project}/dead-letter?" + urlencode({"message": message[:200]})

    return await _guarded(request, project, Action.ADMIN, run)


@router.post("/login")
async def login(request: Request) -> Response:
    """Check the token with the API's authenticator; on success set the session cookie."""
    try:
        session.check_origin(request)
        form = await _form(request)
        csrf = form.get(session.CSRF_FIELD)
        session.check_csrf(request, csrf if isinstance(csrf, str) else None)
        token = _text(form, "token", 512) or ""
        target = _safe_next(_text(form, "next", 1000))
        principal = await get_state(request).authenticator.authenticate(token or None)
    except exceptions.AuthError as exc:
        return page(
            request,
            "login.html",
            Principal.open(),
            status_code=exc.http_status,
            next="/ui/",
            reason=exc.message,
            login_page=True,
        )
    except exceptions.QueueServiceError as exc:
        return error_page(request, None, exc)
    response = RedirectResponse(target, status_code=303)
    if principal.authenticated:
        session.set_session(request, response, token)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    try:
        session.check_origin(request)
        form = await _form(request)
        csrf = form.get(session.CSRF_FIELD)
        session.check_csrf(request, csrf if isinstance(csrf, str) else None)
    except exceptions.QueueServiceError as exc:
        return error_page(request, None, exc)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(session.SESSION_COOKIE, path="/ui")
    return response
