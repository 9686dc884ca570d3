"""Test helpers shipped with the package (procrastinate's ``testing`` module plays the same part).

``InMemoryBackend`` lives in :mod:`queue_service.memory` (it also serves the production ``memory://``
URL); it stays importable from here, where tests have always found it.
"""

from __future__ import annotations

from queue_service.memory import InMemoryBackend

__all__ = ["InMemoryBackend"]
