"""BaseDispatcher: the Dispatcher whose public methods decide the argument rules and the wait, once.

saq's template methods (``Queue.finish`` → ``_finish``): the public methods of :class:`BaseDispatcher`
normalise and validate their arguments (lease length, batch limit, roles, wait) and run the claim
wait loop; a backend implements the primitives only:

* :meth:`BaseDispatcher._try_claim` — claim up to *limit* ready tasks now (no waiting), and say when
  something may become claimable;
* :meth:`BaseDispatcher._ready_event` — an event set by the next commit that may make a task
  ready (taken *before* an attempt, so a commit during the attempt still wakes the waiter);
* :meth:`BaseDispatcher._heartbeat` — persist a lease extension.

Optional hooks: ``_start_waiting``/``_stop_waiting`` (a flatfile waiter polls for other processes'
commits only while someone waits). The rules, in one place, are those the ``Dispatcher`` docstrings
promise and ``tests/contract/test_backend_seam.py`` pins on every backend.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import Sequence

from queue_service import domain, exceptions
from queue_service.backend import Dispatcher
from queue_service.dispatch_config import DispatchConfig
from queue_service.models import Claim, Lease

__all__ = ["BaseDispatcher", "check_claim_limit", "normalise_roles"]


def check_claim_limit(limit: int) -> int:
    """A batch claim's *limit*: at least 1 (ValidationError otherwise)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise exceptions.ValidationError(f"limit must be at least 1, got {limit!r}", value=limit)
    return limit


def normalise_roles(roles: Sequence[str] | None) -> list[str] | None:
    """*roles* without repeats; None (every role) for None or an empty sequence."""
    return list(dict.fromkeys(roles)) if roles else None


def _wait_seconds(wait: float) -> float:
    # a negative (or NaN) wait means "do not wait", as on every backend before this base existed
    wait = float(wait)
    return wait if wait > 0 else 0.0


class BaseDispatcher(Dispatcher):
    """A Dispatcher whose public claim/heartbeat methods are template methods over a few primitives."""

    config: DispatchConfig

    # -- the public methods: argument rules and the wait loop, once ---------------------------------
    async def claim(
        self,
        project: str,
        agent: str,
        roles: Sequence[str] | None = None,
        wait: float = 0.0,
        lease_seconds: float | None = None,
    ) -> Claim | None:
        """See :meth:`Dispatcher.claim`."""
        claims = await self._claim_waiting(project, agent, roles, 1, wait, lease_seconds)
        return claims[0] if claims else None

    async def claim_many(
        self,
        project: str,
        agent: str,
        roles: Sequence[str] | None = None,
        limit: int = 10,
        wait: float = 0.0,
        lease_seconds: float | None = None,
    ) -> list[Claim]:
        """See :meth:`Dispatcher.claim_many`; *limit* below 1 raises ValidationError."""
        check_claim_limit(limit)
        return await self._claim_waiting(project, agent, roles, limit, wait, lease_seconds)

    async def claim_next(
        self, project: str, agent: str, roles: Sequence[str] | None, lease_seconds: float
    ) -> Claim | None:
        """See :meth:`Dispatcher.claim_next`: the backends here claim in dispatch order already."""
        return await self.claim(project, agent, roles, 0.0, lease_seconds)

    async def heartbeat(self, project: str, key: str, token: str, lease_seconds: float | None = None) -> Lease:
        """See :meth:`Dispatcher.heartbeat`."""
        return await self._heartbeat(project, key, token, domain.lease_length(lease_seconds, self.config.lease_seconds))

    async def _claim_waiting(
        self,
        project: str,
        agent: str,
        roles: Sequence[str] | None,
        limit: int,
        wait: float,
        lease_seconds: float | None,
    ) -> list[Claim]:
        """Try to claim; while nothing could be claimed, sleep until woken, the next due time, or the
        deadline (no busy polling), then try again."""
        lease = domain.lease_length(lease_seconds, self.config.lease_seconds)
        names = normalise_roles(roles)
        seconds = _wait_seconds(wait)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        waiting = False
        try:
            while True:
                woken = self._ready_event(project)  # before the attempt: a commit during it still wakes us
                claims, due = await self._try_claim(project, agent, names, limit, lease, seconds > 0)
                if claims:
                    return claims
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return []
                if not waiting:
                    self._start_waiting(project)
                    waiting = True
                timeout = remaining if due is None else min(remaining, due + 0.001)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), timeout)
        finally:
            if waiting:
                self._stop_waiting(project)

    # -- primitives ---------------------------------------------------------------------------------
    @abc.abstractmethod
    async def _try_claim(
        self, project: str, agent: str, roles: list[str] | None, limit: int, lease: float, want_due: bool
    ) -> tuple[list[Claim], float | None]:
        """Claim up to *limit* ready tasks of *roles* (None: all) now, best first, each with a fresh token
        and a lease of *lease* seconds; never waits. Raises ProjectNotFound for an unknown project.

        Returns the claims and, when none was made and *want_due* is set, the seconds until a task may
        become claimable without a commit waking us (a backoff coming due), or None.
        """

    @abc.abstractmethod
    def _ready_event(self, project: str) -> asyncio.Event:
        """An event the next commit that may make a task of *project* claimable sets."""

    @abc.abstractmethod
    async def _heartbeat(self, project: str, key: str, token: str, lease: float) -> Lease:
        """Extend the lease to now + *lease* (already validated). LeaseError for a wrong or expired token."""

    def _start_waiting(self, project: str) -> None:
        """A claimer is about to sleep on *project* (e.g. start watching for other processes' commits)."""

    def _stop_waiting(self, project: str) -> None:
        """The claimer that called :meth:`_start_waiting` stopped waiting."""
