"""PostgresRecordStore: the RecordStore contract on Postgres, assembled from its aggregates."""

from __future__ import annotations

from queue_service.backend import RecordStore
from queue_service.postgres.records.notes_events import NoteEventRecords
from queue_service.postgres.records.projects import ProjectRecords
from queue_service.postgres.records.sync_rows import SyncRowRecords
from queue_service.postgres.records.task_create import TaskCreation
from queue_service.postgres.records.task_edits import TaskEdits
from queue_service.postgres.records.task_queries import TaskQueries
from queue_service.postgres.records.tokens import TokenRecords
from queue_service.postgres.records.transfer import TransferRecords

__all__ = ["PostgresRecordStore"]


class PostgresRecordStore(
    ProjectRecords,
    TaskCreation,
    TaskEdits,
    TaskQueries,
    NoteEventRecords,
    SyncRowRecords,
    TokenRecords,
    TransferRecords,
    RecordStore,
):
    """The record side of the Postgres+Valkey backend: one class, each aggregate in its own module
    (:mod:`.projects`, :mod:`.task_create`, :mod:`.task_edits`, :mod:`.task_queries`,
    :mod:`.notes_events`, :mod:`.sync_rows`, :mod:`.tokens`, :mod:`.transfer`) over the shared
    :class:`~queue_service.postgres.records.base.PostgresRecordsBase`.

    Args:
        engine: an AsyncEngine on a database migrated to head (``queue_service.postgres.migrate``).
        config: dispatch limits (``max_queue_depth`` is checked when tasks are created).
        on_commit: awaited after each commit with the transaction's effects (see the package doc).
        clock: the time source (tests may pin it).
    """
