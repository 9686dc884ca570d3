"""The sweeper: a background loop running ``backend.dispatch.sweep()`` periodically (the orchestrator monitor).

It is generic over any :class:`~queue_service.backend.Backend` (every backend implements ``sweep``)
and safe to run in several replicas at once, because ``sweep`` is idempotent. ``serve`` starts one per
process. A sweep that fails is logged and retried on the next tick: the loop never dies on a transient
``BackendUnavailable`` (a database restart, a Valkey failover), nor on any other error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from queue_service import exceptions
from queue_service.backend import Backend
from queue_service.models import SweepReport

__all__ = ["Sweeper"]

logger = logging.getLogger(__name__)


class Sweeper:
    """Run ``backend.dispatch.sweep()`` every *interval* seconds in the background.

    Args:
        backend: an open backend.
        interval: seconds between the start of two sweeps; defaults to ``backend.config.sweep_seconds``.

    Attributes:
        sweeps: how many sweeps completed.
        failures: how many sweeps raised.
        last_report: the last successful sweep's report.
        last_error: the last sweep error, cleared by the next success.
    """

    def __init__(self, backend: Backend, interval: float | None = None) -> None:
        self.backend = backend
        self.interval = float(interval if interval is not None else backend.config.sweep_seconds)
        if self.interval <= 0:
            raise exceptions.ConfigurationError(f"sweep interval must be positive, got {self.interval}")
        self.sweeps = 0
        self.failures = 0
        self.last_report: SweepReport | None = None
        self.last_error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def running(self) -> bool:
        """True while the loop runs."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the loop on the running event loop. Idempotent."""
        if self.running:
            return
        self._stopping = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="queue-orchestrator")

    async def stop(self) -> None:
        """Stop the loop and wait for a sweep in progress to finish (or be cancelled). Idempotent."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=max(5.0, 2 * self.interval))
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        except asyncio.CancelledError:
            task.cancel()
            raise

    async def sweep_once(self) -> SweepReport | None:
        """Run one sweep now; returns its report, or None if it failed (the error is logged)."""
        try:
            report = await self.backend.dispatch.sweep()
        except exceptions.BackendUnavailable as exc:
            # an outage fails every tick: warn when it starts, then stay quiet until it recovers
            if not isinstance(self.last_error, exceptions.BackendUnavailable):
                logger.warning("orchestrator sweeps paused, backend unavailable: %s", exc)
            self.failures += 1
            self.last_error = exc
            return None
        except Exception as exc:
            self.failures += 1
            self.last_error = exc
            logger.exception("orchestrator sweep failed")
            return None
        if isinstance(self.last_error, exceptions.BackendUnavailable):
            logger.warning("orchestrator sweeps resumed, backend reachable again")
        self.sweeps += 1
        self.last_report = report
        self.last_error = None
        if report.expired_leases or report.dead_lettered or report.requeued:
            logger.info(
                "sweep: %d lease(s) expired, %d dead-lettered, %d backoff(s) released, %d re-queued",
                len(report.expired_leases),
                len(report.dead_lettered),
                report.released_backoffs,
                report.requeued,
            )
        return report

    async def _run(self) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            await self.sweep_once()
            delay = max(0.0, self.interval - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)

    async def __aenter__(self) -> Sweeper:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
