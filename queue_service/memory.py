"""InMemoryBackend: the whole Backend contract in one process, for tests and ``memory://``.

Records and dispatch are :class:`~queue_service.state_backend.StateMachineBackend`'s (shared with the
flatfile backend); this module adds the storage (dicts) and the critical section (the event loop:
every operation plans and commits without awaiting in between). State is inspectable
(``backend.projects[slug].tasks[key]``) so unit tests assert on state rather than on mocks
(procrastinate's ``InMemoryConnector`` does the same); :meth:`InMemoryBackend.reset` empties it.
Every operation plans its changes before mutating anything, so an operation that raises leaves the
state untouched — the in-memory equivalent of a rolled-back transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import TypeVar

from queue_service import exceptions
from queue_service.backend import EventStream
from queue_service.dispatch_config import DispatchConfig
from queue_service.models import ApiToken, Event, utcnow
from queue_service.state import Changes, ProjectState
from queue_service.state_backend import StateMachineBackend, StateTxn, TokenStore
from queue_service.stream_memory import MemoryStreamStore

__all__ = ["InMemoryBackend"]

R = TypeVar("R")


class _Txn:
    """One operation on one project: commits apply at once, publish their events, wake claimers."""

    def __init__(self, backend: InMemoryBackend, state: ProjectState, now: datetime, exclusive: bool) -> None:
        self.backend = backend
        self.state = state
        self.now = now
        self.exclusive = exclusive

    def commit(self, changes: Changes) -> None:
        if changes.is_empty() and not changes.ready:
            return
        if not self.exclusive:
            raise RuntimeError("commit needs the exclusive section")
        self.state.apply(changes)
        slug = self.state.project.slug
        for event in changes.events:
            for queue in self.backend.subscribers.get(slug, []):
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(event)
        if changes.ready:
            self.backend.signal(slug).fire()


class _Tokens:
    """The token records in ``backend.api_tokens`` (read on every call: tests may replace the dict)."""

    def __init__(self, backend: InMemoryBackend) -> None:
        self.b = backend

    def add(self, token: ApiToken) -> None:
        if token.id in self.b.api_tokens:
            raise exceptions.AlreadyExists(f"token {token.id!r} already exists")
        self.b.api_tokens[token.id] = token

    def find(self, token_hash: str) -> ApiToken | None:
        return next((t for t in self.b.api_tokens.values() if t.token_hash == token_hash), None)

    def count(self) -> int:
        return len(self.b.api_tokens)

    def all(self) -> list[ApiToken]:
        return sorted(self.b.api_tokens.values(), key=lambda t: (t.created_at, t.id))

    def revoke(self, token_id: str) -> ApiToken:
        token = self.b.api_tokens.get(token_id)
        if token is None:
            raise exceptions.NotFound(f"no token with id {token_id!r}", token=token_id)
        if token.revoked_at is None:
            token = token.model_copy(update={"revoked_at": utcnow()})
            self.b.api_tokens[token_id] = token
        return token

    def purge(self) -> int:
        count = len(self.b.api_tokens)
        self.b.api_tokens.clear()
        return count


class _Events(EventStream):
    def __init__(self, backend: InMemoryBackend) -> None:
        self.b = backend

    async def subscribe(self, project: str) -> AsyncIterator[Event]:
        self.b.state(project)
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=10_000)
        subs = self.b.subscribers.setdefault(project, [])
        subs.append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            subs.remove(queue)


class InMemoryBackend(StateMachineBackend):
    """Dicts and asyncio primitives; one process only."""

    name = "memory"

    def __init__(self, config: DispatchConfig | None = None, clock: Callable[[], datetime] = utcnow) -> None:
        self.config = config or DispatchConfig()
        self.now = clock
        self.projects: dict[str, ProjectState] = {}
        self.api_tokens: dict[str, ApiToken] = {}
        self.subscribers: dict[str, list[asyncio.Queue[Event]]] = {}
        super().__init__()
        self.events = _Events(self)
        self.streams = MemoryStreamStore(self.dispatch)

    def reset(self) -> None:
        """Forget everything."""
        self.projects.clear()
        self.api_tokens.clear()

    async def ping(self) -> None:
        """Always reachable."""

    def state(self, slug: str) -> ProjectState:
        """The project's state, or ProjectNotFound."""
        try:
            return self.projects[slug]
        except KeyError:
            raise exceptions.ProjectNotFound(f"project {slug!r} not found", project=slug) from None

    # -- StateMachineBackend primitives -----------------------------------------------------------
    async def run(self, slug: str, fn: Callable[[StateTxn], R], exclusive: bool) -> R:
        """Run *fn* at once: nothing awaits between its plan and its commit, so the loop is the lock."""
        return fn(_Txn(self, self.state(slug), self.now(), exclusive))

    async def add_project(self, state: ProjectState, changes: Changes, what: str) -> None:
        slug = state.project.slug
        if slug in self.projects:
            raise exceptions.AlreadyExists(f"project {slug!r} already exists", project=slug)
        self.projects[slug] = state
        self.signal(slug).fire()

    async def slugs(self) -> list[str]:
        return sorted(self.projects)

    async def token_op(self, fn: Callable[[TokenStore], R], what: str) -> R:
        return fn(_Tokens(self))
