"""BaseDispatcher: the Dispatcher whose public methods decide the argument rules and the wait, once.

saq's template methods (``Queue.finish`` → ``_finish``): the public methods of :class:`BaseDispatcher`
normalise and validate their arguments (lease length, batch limit, roles, wait) and run the claim
wait loop; a backend implements the primitives only:

* :meth:`BaseDispatcher._try_claim` — claim up to *limit* ready tasks now (no waiting), and say when
  something may become claimable without a commit announcing it (a backoff coming due);
* :meth:`BaseDispatcher._wait_for_ready` — sleep until a commit may have made a task claimable, or
  the timeout. :meth:`BaseDispatcher._arm` is taken *before* each attempt and handed to it, so a
  commit during the attempt still ends the wait (an event-based backend returns its event there).
  A backend whose wake-up *takes* something for this claimer (Postgres: BLPOP pops a ready key)
  returns it, and the loop hands it to the next ``_try_claim`` as *woken* (the type parameter), so
  nothing taken by a wait is dropped or lost to another claimer;
* :meth:`BaseDispatcher._heartbeat` — persist a lease extension;
* :meth:`BaseDispatcher._claim_best` — optional: the single best task by ``domain.dispatch_order``
  (the default is ``_try_claim`` with limit 1, right where claims already follow that order).

Optional hooks: ``_start_waiting``/``_stop_waiting`` around the sleeps of one call (a flatfile waiter
polls for other processes' commits only while someone waits). The rules, in one place, are those the
``Dispatcher`` docstrings promise and ``tests/contract/test_backend_seam.py`` pins on every backend.
It imports no backend: the memory/flatfile dispatcher (``state_backend``) and the Postgres one
(``postgres/dispatch.py``: its ``_try_claim`` pops Valkey and wins with the conditional UPDATE; its
``_wait_for_ready`` blocks in BLPOP and hands the popped key on) both subclass it.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence
from typing import Generic, TypeVar

from queue_service import domain, exceptions
from queue_service.backend import Dispatcher
from queue_service.dispatch_config import DispatchConfig
from queue_service.models import Claim, Lease

__all__ = ["BaseDispatcher", "check_claim_limit", "normalise_roles"]

#: what a backend's wait took for the claimer and hands to its next attempt (None: nothing)
WokenT = TypeVar("WokenT")


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


class BaseDispatcher(Dispatcher, Generic[WokenT]):
    """A Dispatcher whose public claim/heartbeat methods are template methods over a few primitives.

    *WokenT* is what :meth:`_wait_for_ready` may take for the claimer and hand to the next
    :meth:`_try_claim` (``None`` for a backend whose waits take nothing).
    """

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
        """See :meth:`Dispatcher.claim_next`."""
        lease = domain.lease_length(lease_seconds, self.config.lease_seconds)
        return await self._claim_best(project, agent, normalise_roles(roles), lease)

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
        woken: WokenT | None = None
        try:
            while True:
                armed = self._arm(project)  # before the attempt: a commit during it still ends the wait
                # whatever the last wait took is always handed to an attempt, even past the deadline
                claims, due = await self._try_claim(project, agent, names, limit, lease, seconds > 0, woken)
                woken = None
                if claims:
                    return claims
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return []
                if not waiting:
                    self._start_waiting(project)
                    waiting = True
                woken = await self._wait_for_ready(
                    project, names, armed, remaining if due is None else min(remaining, due + 0.001)
                )
        finally:
            if waiting:
                self._stop_waiting(project)

    # -- primitives ---------------------------------------------------------------------------------
    @abc.abstractmethod
    async def _try_claim(
        self,
        project: str,
        agent: str,
        roles: list[str] | None,
        limit: int,
        lease: float,
        want_due: bool,
        woken: WokenT | None = None,
    ) -> tuple[list[Claim], float | None]:
        """Claim up to *limit* ready tasks of *roles* (None: all) now, best first, each with a fresh token
        and a lease of *lease* seconds; never waits. Raises ProjectNotFound for an unknown project.
        *woken* is what the previous :meth:`_wait_for_ready` took for this claimer (try it first).

        Returns the claims and, when none was made and *want_due* is set, the seconds until a task may
        become claimable without a commit waking us (a backoff coming due), or None.
        """

    def _arm(self, project: str) -> asyncio.Event | None:
        """Taken before each claim attempt and handed to :meth:`_wait_for_ready`: an event the next
        commit that may make a task of *project* claimable sets (None for a backend that waits otherwise)."""
        return None

    @abc.abstractmethod
    async def _wait_for_ready(
        self, project: str, roles: list[str] | None, armed: asyncio.Event | None, timeout: float
    ) -> WokenT | None:
        """Return once a task of *roles* may have become claimable (after *armed* was taken), or after
        *timeout* seconds; no busy polling. Returning early is harmless: the loop just tries again.
        Returns what the wait took for this claimer (handed to the next :meth:`_try_claim`), or None."""

    async def _claim_best(self, project: str, agent: str, roles: list[str] | None, lease: float) -> Claim | None:
        """Claim the single best ready task by ``domain.dispatch_order`` now, or None."""
        claims, _ = await self._try_claim(project, agent, roles, 1, lease, False, None)
        return claims[0] if claims else None

    @abc.abstractmethod
    async def _heartbeat(self, project: str, key: str, token: str, lease: float) -> Lease:
        """Extend the lease to now + *lease* (already validated). LeaseError for a wrong or expired token."""

    def _start_waiting(self, project: str) -> None:
        """A claimer is about to sleep on *project* (e.g. start watching for other processes' commits)."""

    def _stop_waiting(self, project: str) -> None:
        """The claimer that called :meth:`_start_waiting` stopped waiting."""
