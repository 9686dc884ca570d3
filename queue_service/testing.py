"""Test helpers shipped with the package (procrastinate's ``testing`` module plays the same part).

``InMemoryBackend`` lives in :mod:`queue_service.memory` (it also serves the production ``memory://``
URL) and the snapshot helpers in :mod:`queue_service.state`; both stay importable from here, where
callers have always found them.
"""

from __future__ import annotations

from queue_service.memory import InMemoryBackend
from queue_service.state import snapshot_of, state_from_snapshot

__all__ = ["InMemoryBackend", "snapshot_of", "state_from_snapshot"]
