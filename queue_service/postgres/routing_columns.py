"""How the routing fields of tasks and projects (issue 13) sit in Postgres columns.

A task's ``prefers``, ``concurrency_key`` and ``group`` travel in one JSONB column, ``tasks.routing``
(NULL when none is set, which is most tasks); ``requires`` has its own column, ``tasks.requires``
(migration ``0008_task_requires``, shared with issue 18's TASKS.md agent column): one column keeps every row mapper a
one-line change, and the claim statements read the parts they need with ``->>``. A project's
``routing`` and ``concurrency_limits`` are two JSONB columns of ``projects``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from queue_service.models import Preference

__all__ = ["ROUTING_FIELDS", "routing_column", "routing_fields"]

#: the Task fields stored in ``tasks.routing``
ROUTING_FIELDS = ("prefers", "concurrency_key", "group")


def routing_column(
    prefers: Sequence[Preference] | None,
    concurrency_key: str | None,
    group: str | None,
) -> dict[str, Any] | None:
    """The ``tasks.routing`` value for these fields (None when all are empty)."""
    value: dict[str, Any] = {}
    if prefers:
        value["prefers"] = [{"labels": dict(p.labels), "weight": p.weight} for p in prefers]
    if concurrency_key is not None:
        value["concurrency_key"] = concurrency_key
    if group is not None:
        value["group"] = group
    return value or None


def routing_fields(value: Mapping[str, Any] | None) -> dict[str, Any]:
    """The Task fields stored in a ``tasks.routing`` value (defaults for NULL)."""
    if not value:
        return {"prefers": (), "concurrency_key": None, "group": None}
    return {
        "prefers": tuple(
            Preference.model_construct(labels=dict(p["labels"]), weight=int(p["weight"]))
            for p in value.get("prefers") or ()
        ),
        "concurrency_key": value.get("concurrency_key"),
        "group": value.get("group"),
    }
