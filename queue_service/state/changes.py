"""Changes: what one planned operation changes, applied to a ProjectState as a unit (and journaled by flatfile)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from queue_service.models import (
    Event,
    Mission,
    Note,
    Project,
    Task,
)
from queue_service.routing_state import RoutingDelta

__all__ = ["Changes"]


@dataclass
class Changes:
    """What one operation changes; applied as a unit."""

    tasks: dict[str, Task] = field(default_factory=dict)
    #: lease token per task key in ``tasks`` (None: no lease)
    tokens: dict[str, str | None] = field(default_factory=dict)
    notes: list[Note] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    project: Project | None = None
    missions: dict[str, Mission] = field(default_factory=dict)
    next_seq: int | None = None
    sync_state: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: per synced file, the base rows that changed (None: removed); issue 17 keeps them apart from the
    #: state so a cycle stores what changed, not the whole base
    sync_rows: dict[str, dict[str, dict[str, Any] | None]] = field(default_factory=dict)
    #: tasks that became ready (for waking claimers / queueing)
    ready: list[str] = field(default_factory=list)
    #: agent registry, offers and round-robin cursors (issue 13)
    routing: RoutingDelta | None = None

    def is_empty(self) -> bool:
        """True when nothing would change."""
        return (
            not (
                self.tasks
                or self.notes
                or self.events
                or self.project
                or self.missions
                or self.sync_state
                or self.sync_rows
                or self.routing
            )
            and self.next_seq is None
        )
