"""The three-way merge of one task: last synced base × database × TASKS.md row, field by field.

Pure functions over flat, JSON-ready *value maps* (``field → str | None | list[str]``), so the bases
stored in the sync state, the database task and the parsed row compare the same way.

Fields: ``status``, ``title``, ``assignee``, ``priority``, ``role``, ``depends_on``, ``labels``,
``notes`` (the notes cell, kept in ``task.extra["notes"]``), ``milestone``, ``details`` (the
``### KEY`` text = ``task.description``) and ``x:<column>`` for every other extra column.

Policy when both sides changed the same field since the base (DESIGN §4, issue 5):

* ``status``: a change made by a claim/agent (dispatch, sweeps, dependency blocking) wins over a
  hand edit; between two human edits the file wins;
* ``depends_on`` and ``labels``: merged as sets (additions from both sides, removals from both sides);
* ``notes``: both texts are kept;
* every other field: the file's value.

Every such case becomes a :class:`Conflict` naming both values, so the caller can record it (a
task note and an inline ``sync-conflict`` marker): no edit is silently lost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Any

from queue_service.models import DEFAULT_ROLE, Task, TaskStatus
from workspace_sync.format import RowData, normalise_details

__all__ = [
    "EXTRA_PREFIX",
    "FIELDS",
    "HUMAN_EVENT_KINDS",
    "SET_FIELDS",
    "Conflict",
    "MergeResult",
    "Values",
    "agent_cell",
    "agent_fields",
    "merge_row",
    "merge_sets",
    "row_values",
    "rowdata_from_task",
    "same",
    "show_value",
    "task_values",
    "update_from_values",
]

#: A flat value map: field → ``str``, ``None`` or ``list[str]`` (JSON-ready, stored in the sync base).
Values = dict[str, Any]

#: Core fields, in the order conflicts are reported.
FIELDS = ("status", "title", "assignee", "priority", "role", "depends_on", "labels", "notes", "milestone", "details")
#: Fields merged as sets.
SET_FIELDS = frozenset({"depends_on", "labels"})
#: Prefix of the value-map key of an extra column (``x:issue``).
EXTRA_PREFIX = "x:"
#: Event kinds a person causes (API patch/cancel, creation); every other status change comes from
#: dispatch (claims, completions, failures, expiries) or dependency rules, and wins a status conflict.
HUMAN_EVENT_KINDS = frozenset({"created", "updated", "cancelled"})
#: Fields that an empty cell leaves unchanged (the database always has a value for them).
_NEVER_EMPTY = frozenset({"status", "priority", "role", "title"})
_NOTES = "notes"


@dataclasses.dataclass(frozen=True)
class Conflict:
    """Both sides changed *field* since the base, differently.

    Attributes:
        field: the value-map field (``status``, ``x:branch``…).
        base: the value at the last sync.
        db: the database's value.
        file: the file's value.
        kept: the value the merge chose.
        rule: which policy decided (``agent-status``, ``file-wins``, ``set-merge``, ``keep-both``).
    """

    field: str
    base: Any
    db: Any
    file: Any
    kept: Any
    rule: str

    @property
    def name(self) -> str:
        """The field as people call it (``branch`` for ``x:branch``, ``description`` for ``title``)."""
        if self.field.startswith(EXTRA_PREFIX):
            return self.field[len(EXTRA_PREFIX) :]
        return {"title": "description", "assignee": "agent", "details": "details text"}.get(self.field, self.field)

    def describe(self) -> str:
        """One line for the inline marker: ``status: file said done, service said needs-qa (agent); kept needs-qa``."""
        who = " (agent)" if self.rule == "agent-status" else ""
        file, db, kept = show_value(self.file), show_value(self.db), show_value(self.kept)
        return f"{self.name}: file said {file}, service said {db}{who}; kept {kept}"


@dataclasses.dataclass
class MergeResult:
    """What the merge decided for one row.

    Attributes:
        patch: fields whose database value must change, with the new value.
        conflicts: fields both sides changed differently.
        file_changed: whether the file changed any field since the base.
    """

    patch: Values = dataclasses.field(default_factory=dict)
    conflicts: list[Conflict] = dataclasses.field(default_factory=list)
    file_changed: bool = False


def show_value(value: Any) -> str:
    """A value as one short line for markers and notes (``—`` for nothing)."""
    if value is None or value == "" or value == []:
        return "—"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    text = str(value).replace("\n", " ")
    return text if len(text) <= 80 else text[:77] + "..."


def same(field: str, a: Any, b: Any) -> bool:
    """Whether two values of *field* are equal (sets compare without order; ``""`` ≡ None)."""
    if field in SET_FIELDS:
        return set(a or ()) == set(b or ())
    return (a if a != "" else None) == (b if b != "" else None)


def agent_cell(task: Task) -> str | None:
    """What TASKS.md's agent column shows (issue 18): for a not-started task the model that should run it
    (``requires["model"]``, None = any); otherwise the holder / the agent who had it (``assignee``), or
    the model when no agent is known (a row marked done by hand keeps showing its model)."""
    model = task.requires.get("model") or None
    if task.status is TaskStatus.NOT_STARTED:
        return model
    return task.assignee or model


def agent_fields(status: TaskStatus | str, current: Mapping[str, str], value: str | None) -> dict[str, Any]:
    """The task fields an agent cell *value* sets on a row of *status*: ``requires.model`` while not started
    (other ``requires`` labels kept), else ``assignee``."""
    if TaskStatus(status) is TaskStatus.NOT_STARTED:
        requires = {k: v for k, v in current.items() if k != "model"}
        if value:
            requires["model"] = value
        return {"requires": requires}
    return {"assignee": value}


def task_values(task: Task) -> Values:
    """The value map of a database task (every field, every extra column)."""
    values: Values = {
        "status": task.status.value,
        "title": task.title,
        "assignee": agent_cell(task),
        "priority": task.priority.value,
        "role": task.role,
        "depends_on": list(task.depends_on),
        "labels": list(task.labels),
        "notes": task.extra.get(_NOTES) or None,
        "milestone": task.milestone,
        "details": normalise_details(task.description),
    }
    for name, value in task.extra.items():
        if name != _NOTES and value:
            values[EXTRA_PREFIX + name] = value
    return values


def row_values(data: RowData, fields: Iterable[str], extra_columns: Iterable[str]) -> Values:
    """The value map of what a row *shows*: only the fields its table has a column for.

    Args:
        data: the parsed row.
        fields: the table's RowData fields (``Table.fields``).
        extra_columns: the table's extra column names.

    An empty status/priority/role cell says nothing (the database keeps its value); the milestone
    (the row's section) and the Details text are always shown.
    """
    values: Values = {}
    shown = set(fields)
    for field in FIELDS:
        if field in ("milestone", "details"):
            continue
        if field not in shown:
            continue
        value = getattr(data, field)
        if field in SET_FIELDS:
            values[field] = list(value)
        elif field in _NEVER_EMPTY and value is None:
            continue
        else:
            values[field] = value.value if isinstance(value, Enum) else value
    values["milestone"] = data.milestone
    values["details"] = normalise_details(data.details)
    for name in extra_columns:
        if name == _NOTES:
            continue
        values[EXTRA_PREFIX + name] = data.extra.get(name) or None
    return values


def merge_sets(base: Iterable[str], db: Iterable[str], file: Iterable[str]) -> list[str]:
    """Three-way set merge: what either side added, minus what either side removed (database order first)."""
    base_set, db_list, file_list = set(base), list(db), list(file)
    removed = (base_set - set(db_list)) | (base_set - set(file_list))
    out = [v for v in db_list if v not in removed]
    out.extend(v for v in file_list if v not in removed and v not in out)
    return out


def _keep_both(db: Any, file: Any) -> Any:
    if not db:
        return file
    if not file:
        return db
    if str(file) in str(db):
        return db
    if str(db) in str(file):
        return file
    return f"{file}; {db}"


def merge_row(
    base: Mapping[str, Any], db: Mapping[str, Any], file: Mapping[str, Any], *, agent_status: bool
) -> MergeResult:
    """Merge one task field by field (only the fields in *file*, i.e. the ones the row shows).

    Args:
        base: values at the last sync (the database's values when there is no base: the file wins).
        db: the database task's values.
        file: the row's values (:func:`row_values`).
        agent_status: whether the database's status change since the base came from dispatch.
    """
    result = MergeResult()
    for field, fv in file.items():
        bv = base.get(field)
        dv = db.get(field)
        if same(field, fv, bv):
            continue
        result.file_changed = True
        if same(field, dv, bv):
            if not same(field, dv, fv):
                result.patch[field] = fv
            continue
        if same(field, dv, fv):
            continue
        if field == "status":
            rule, kept = ("agent-status", dv) if agent_status else ("file-wins", fv)
        elif field in SET_FIELDS:
            rule, kept = "set-merge", merge_sets(bv or (), dv or (), fv or ())
        elif field == _NOTES:
            rule, kept = "keep-both", _keep_both(dv, fv)
        else:
            rule, kept = "file-wins", fv
        result.conflicts.append(Conflict(field, bv, dv, fv, kept, rule))
        if not same(field, dv, kept):
            result.patch[field] = kept
    return result


def update_from_values(task: Task, patch: Mapping[str, Any]) -> dict[str, Any]:
    """A ``TaskUpdate`` mapping that applies a value-map *patch* to *task*."""
    update: dict[str, Any] = {}
    extra = dict(task.extra)
    extra_changed = False
    for field, value in patch.items():
        if field.startswith(EXTRA_PREFIX):
            name = field[len(EXTRA_PREFIX) :]
            if value:
                extra[name] = value
            else:
                extra.pop(name, None)
            extra_changed = True
        elif field == _NOTES:
            if value:
                extra[_NOTES] = value
            else:
                extra.pop(_NOTES, None)
            extra_changed = True
        elif field == "details":
            update["description"] = value or ""
        elif field in SET_FIELDS:
            update[field] = list(value or ())
        elif field == "assignee":
            update.update(agent_fields(patch.get("status", task.status), task.requires, value))
        else:
            update[field] = value
    if extra_changed:
        update["extra"] = extra
    return update


def rowdata_from_task(task: Task) -> RowData:
    """What a row shows for a database task."""
    return RowData(
        key=task.key,
        status=task.status,
        title=task.title,
        assignee=agent_cell(task),
        priority=task.priority,
        # the default role is implied: a fresh file gets no role column unless some task has another one
        role=None if task.role == DEFAULT_ROLE else task.role,
        depends_on=tuple(task.depends_on),
        labels=tuple(task.labels),
        notes=task.extra.get(_NOTES) or None,
        milestone=task.milestone,
        extra={k: v for k, v in task.extra.items() if k != _NOTES and v},
        details=normalise_details(task.description),
    )
