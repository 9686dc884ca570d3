"""ProjectState: one project's records and dispatch rules as a pure, in-memory state machine.

Every operation is planned first and applied second: ``plan_*`` methods read the state, validate,
and return a :class:`Changes` without mutating anything (so a raise leaves the state untouched, the
in-memory equivalent of a rolled-back transaction); :meth:`StateCore.apply` then mutates and
maintains the derived indexes. The in-memory backend applies at once; the flatfile backend writes
the changes to its journal first and applies after the write is durable (both through
``queue_service.state_backend``). The Postgres backend implements the same rules in SQL; the
contract suites hold them to the same behaviour.
"""

from __future__ import annotations

from datetime import datetime

from queue_service.models import Mission, Project, ProjectCreate
from queue_service.state.changes import Changes
from queue_service.state.dispatch import DispatchRules
from queue_service.state.projections import Projections
from queue_service.state.records import RecordRules

__all__ = ["ProjectState"]


class ProjectState(RecordRules, DispatchRules, Projections):
    """All records of one project plus derived dispatch indexes: records, dispatch and read rules."""

    @classmethod
    def new(cls, data: ProjectCreate, now: datetime) -> tuple[ProjectState, Changes]:
        """A new project with its default mission."""
        project = Project(
            slug=data.slug,
            name=data.name or data.slug,
            key_prefix=data.resolved_prefix(),
            workspace=data.workspace,
            created_at=now,
            updated_at=now,
        )
        state = cls(project)
        changes = Changes(project=project, next_seq=1)
        mission = Mission(project=project.slug, id="default", name=project.name, created_at=now, updated_at=now)
        changes.missions["default"] = mission
        state._event(changes, "project_created", now)
        return state, changes
