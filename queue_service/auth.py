"""API bearer tokens: creation, hashing, and what each role may do.

Tokens look like ``qs_<43 url-safe characters>``. Only their SHA-256 hash is stored (via
``RecordStore.add_api_token``), so a leaked database does not leak usable tokens; the plain token is
shown once, when it is created. No token stored means auth is off (allowed only on loopback, see
``queue_service.app``).

Roles (``models.TokenRole``): ``viewer`` reads; ``agent`` reads and works tasks (claim, heartbeat,
complete, fail, release, notes) in its project; ``admin`` does everything. A token with no project
is global: it applies to every project (and only a global token may read ``/metrics``).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from enum import IntEnum

from queue_service import exceptions
from queue_service.backend import RecordStore
from queue_service.models import ApiToken, TokenRole, utcnow, validate_slug

__all__ = [
    "TOKEN_PREFIX",
    "Action",
    "Principal",
    "create_token",
    "generate_token",
    "hash_token",
    "new_token_record",
]

TOKEN_PREFIX = "qs_"


def generate_token() -> str:
    """A new random bearer token (``qs_`` + 256 random bits, url-safe)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The stored form of a token: hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_token_record(project: str | None, role: TokenRole | str, name: str | None = None) -> tuple[str, ApiToken]:
    """Make a new token and the record to store for it.

    Returns:
        ``(plain_token, record)``: show the plain token once; store only the record.

    Raises:
        ValidationError: for an invalid project slug or role.
    """
    if project is not None:
        validate_slug(project)
    try:
        role = TokenRole(role)
    except ValueError:
        raise exceptions.ValidationError(
            f"unknown token role {role!r}; use one of {', '.join(r.value for r in TokenRole)}", value=str(role)
        ) from None
    plain = generate_token()
    record = ApiToken(
        id=uuid.uuid4().hex[:12],
        project=project,
        role=role,
        token_hash=hash_token(plain),
        name=name,
        created_at=utcnow(),
    )
    return plain, record


async def create_token(
    records: RecordStore, project: str | None, role: TokenRole | str, name: str | None = None
) -> tuple[str, ApiToken]:
    """Create and store a token (what ``queue-service token create`` does).

    A project-scoped token must name an existing project (ProjectNotFound otherwise).

    Returns:
        ``(plain_token, record)``; the plain token cannot be recovered later.
    """
    plain, record = new_token_record(project, role, name)
    if project is not None:
        await records.get_project(project)
    await records.add_api_token(record)
    return plain, record


class Action(IntEnum):
    """What a request does, ordered by the role needed."""

    #: read anything in the project
    READ = 1
    #: claim / heartbeat / complete / fail / release / note
    WORK = 2
    #: create, edit, cancel, retry; manage projects and missions
    ADMIN = 3


_ROLE_LEVEL: dict[TokenRole, Action] = {
    TokenRole.VIEWER: Action.READ,
    TokenRole.AGENT: Action.WORK,
    TokenRole.ADMIN: Action.ADMIN,
}


@dataclass(frozen=True)
class Principal:
    """Who is calling: a stored token, or anyone at all when auth is off."""

    role: TokenRole
    #: the token's project; None for a global token (and for the open principal)
    project: str | None = None
    token_id: str | None = None
    name: str | None = None
    #: False when auth is off (no tokens stored): every request is allowed
    authenticated: bool = True
    #: set for a caller whose only credential is the live lease of this one task (``X-Queue-Lease-Token``,
    #: issue 11): it may work on that task and create tasks discovered from it, nothing else
    lease_key: str | None = None
    lease_token: str | None = None

    @classmethod
    def open(cls) -> Principal:
        """The caller when auth is off: may do everything."""
        return cls(role=TokenRole.ADMIN, authenticated=False)

    @classmethod
    def from_token(cls, token: ApiToken) -> Principal:
        """The caller holding *token*."""
        return cls(role=token.role, project=token.project, token_id=token.id, name=token.name)

    @classmethod
    def for_lease(cls, project: str, key: str, token: str, holder: str) -> Principal:
        """The holder of *key*'s live lease, with the rights of an agent on that task only."""
        return cls(role=TokenRole.AGENT, project=project, name=holder, lease_key=key, lease_token=token)

    @property
    def actor(self) -> str:
        """How this caller is named in events and notes."""
        if not self.authenticated:
            return "api"
        return self.name or f"token:{self.token_id}"

    def allows(self, action: Action, project: str | None) -> bool:
        """True if this caller may do *action* on *project* (None: a service-wide action)."""
        if not self.authenticated:
            return True
        if _ROLE_LEVEL[self.role] < action:
            return False
        if self.project is None:
            return True
        return project == self.project

    def check(self, action: Action, project: str | None, key: str | None = None) -> None:
        """Raise Forbidden unless :meth:`allows` (and, for a lease holder, unless *key* is its task)."""
        if self.lease_key is not None and key is not None and key != self.lease_key:
            raise exceptions.Forbidden(
                f"this lease token is for task {self.lease_key}, not {key}", action=action.name.lower(), project=project
            )
        if not self.allows(action, project):
            scope = f"project {project!r}" if project is not None else "the whole service"
            raise exceptions.Forbidden(
                f"this {self.role.value} token may not {action.name.lower()} in {scope}",
                role=self.role.value,
                action=action.name.lower(),
                project=project,
            )
