"""Flatfile backend: the whole service on one machine with no database (``file://<dir>``).

See ``docs/plans/flatfile.md`` for the file layout, crash safety and multi-process design.
"""

from flatfile.backend import FlatfileBackend
from flatfile.journal import CompactionPolicy

__all__ = ["CompactionPolicy", "FlatfileBackend"]
