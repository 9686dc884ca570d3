"""The state machine of one project, shared by the in-memory and flatfile backends.

``ProjectState`` (``project.py``) is assembled from ``core.py`` (records, indexes, ``apply``),
``records.py`` (record plans), ``dispatch.py`` (lease plans) and ``projections.py`` (read models);
``snapshots.py`` converts it to and from a ``ProjectSnapshot``.
"""

from queue_service.state.changes import Changes
from queue_service.state.core import EVENT_LEASE_EXPIRED
from queue_service.state.project import ProjectState
from queue_service.state.snapshots import snapshot_of, state_from_snapshot

__all__ = ["EVENT_LEASE_EXPIRED", "Changes", "ProjectState", "snapshot_of", "state_from_snapshot"]
