"""A lease token as a credential for its own task (issue 11): ``X-Queue-Lease-Token``.

A child of ``qs run`` gets ``QUEUE_LEASE_TOKEN`` but never the runner's API token. With auth on, a
``/v1`` request without a bearer but with ``X-Queue-Lease-Token: T`` is let through the edge with the
holder's rights **for that one task only**, checked before the body is read, like a bearer:

* the path must be one of :data:`LEASE_ROUTES` — read the task (``GET …/tasks/KEY``), add a note,
  publish to its stream, heartbeat (``POST …/tasks/KEY/notes|stream|heartbeat``), or create a task
  found while working on it (``POST …/tasks?discovered_from=KEY``); anything else is 403;
* the lease must be live on the task the request names (path, or ``discovered_from``): the edge renews
  it (``heartbeat``, as any call carrying the token does), so a stale, released or reclaimed token, or
  one naming another task, is refused with 409 ``lease_invalid`` (with the reason when it was this
  task's lease).

Completing, failing and releasing stay with the runner (it settles the task from the child's exit code).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs

from starlette.datastructures import Headers
from starlette.types import Scope

from queue_service import exceptions
from queue_service.auth import Principal
from queue_service.models import validate_key, validate_slug

__all__ = ["LEASE_HEADER", "LEASE_ROUTES", "lease_principal"]

LEASE_HEADER = "x-queue-lease-token"
_MAX_TOKEN = 200

#: ``(method, path pattern)`` a lease token may call; the pattern names ``project`` and, where the
#: task is in the path, ``key``
LEASE_ROUTES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("GET", re.compile(r"/v1/projects/(?P<project>[^/]+)/tasks/(?P<key>[^/]+)")),
    ("POST", re.compile(r"/v1/projects/(?P<project>[^/]+)/tasks/(?P<key>[^/]+)/(?:notes|stream|heartbeat)")),
    ("POST", re.compile(r"/v1/projects/(?P<project>[^/]+)/tasks")),
)


def _task_of(scope: Scope) -> tuple[str, str]:
    """The project and task key a lease-token request acts for. Raises Forbidden for other routes."""
    method, path = scope.get("method", ""), scope.get("path", "")
    for allowed, pattern in LEASE_ROUTES:
        match = pattern.fullmatch(path) if method == allowed else None
        if match is None:
            continue
        project = match.group("project")
        key = match.groupdict().get("key")
        if key is None:  # creating: only a task discovered while holding KEY
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"), max_num_fields=20)
            found = query.get("discovered_from", [])
            if len(found) != 1:
                raise exceptions.Forbidden(
                    "a lease token may create a task only with ?discovered_from=KEY (the task it holds)",
                    action="admin",
                )
            key = found[0]
        return validate_slug(project), validate_key(key)
    raise exceptions.Forbidden(
        "a lease token authorises only its own task: read it, add notes, publish to its stream, heartbeat, "
        "or create tasks with ?discovered_from=KEY",
        action="lease",
    )


async def lease_principal(scope: Scope, headers: Headers, service: Any) -> Principal | None:
    """The holder of the task, if the request carries ``X-Queue-Lease-Token`` (None if it does not).

    Renews the lease as its proof. Raises Forbidden (other routes), ValidationError (malformed
    names or token) or LeaseError (not the live lease).
    """
    token = headers.get(LEASE_HEADER)
    if token is None:
        return None
    token = token.strip()
    if not token or len(token) > _MAX_TOKEN:
        raise exceptions.ValidationError(f"{LEASE_HEADER} must be 1-{_MAX_TOKEN} characters")
    project, key = _task_of(scope)
    try:
        lease = await service.heartbeat(project, key, token)
    except exceptions.NotFound:
        # the same answer as a wrong token: a lease token does not reveal which projects or tasks exist
        raise exceptions.LeaseError(f"lease token is not valid for task {key}", reason="not_held") from None
    return Principal.for_lease(project, key, token, holder=lease.holder)
