"""The knobs of the workspace sync, apart from the service's settings (issue 16).

``workspace_sync`` never imports ``queue_service.settings``: whoever starts a
:class:`~workspace_sync.manager.WorkspaceSyncManager` (``serve``, ``qs sync --watch``, benches,
tests) builds a :class:`SyncOptions` from its own configuration, e.g. from ``QUEUE_SYNC_*``.
"""

from __future__ import annotations

import dataclasses
import math

__all__ = ["SyncOptions"]


@dataclasses.dataclass(frozen=True)
class SyncOptions:
    """How the sync manager paces itself and renders fresh files.

    Attributes:
        rescan_seconds: every this often, list the projects and ask every file for a cycle
            (``QUEUE_SYNC_RESCAN_SECONDS``).
        debounce_seconds: quiet time after a file event before its cycle runs
            (``QUEUE_SYNC_DEBOUNCE_SECONDS``).
        strict_coord: render fresh TASKS.md files with exactly coord's nine columns.
    """

    rescan_seconds: float = 5.0
    debounce_seconds: float = 0.3
    strict_coord: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rescan_seconds) and self.rescan_seconds > 0):
            raise ValueError(f"rescan_seconds must be a positive number, not {self.rescan_seconds!r}")
        if not (math.isfinite(self.debounce_seconds) and self.debounce_seconds >= 0):
            raise ValueError(f"debounce_seconds must be zero or more, not {self.debounce_seconds!r}")
