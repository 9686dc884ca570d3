"""PostgresRecordStore: the RecordStore contract on Postgres (SQLAlchemy 2 Core, async, asyncpg).

One module per aggregate (see :class:`~.store.PostgresRecordStore`); this package re-exports the store.

Design notes (the *why*):

* Core statements, not ORM sessions: every operation is a handful of set-based statements, and
  SQLAlchemy's compiled-statement cache plus asyncpg's per-connection prepared-statement cache mean
  the hot statements are parsed once per connection.
* One transaction per operation; a raised error rolls it back, so bad input never leaves a trace.
* Key allocation: the batch locks its project row (``FOR NO KEY UPDATE`` — it does not block the
  ``KEY SHARE`` locks that foreign-key checks of concurrent event/task inserts take), reads
  ``next_seq``, hands out numbers skipping keys that exist (imported ``WEB-5``), and writes
  ``next_seq`` back in the same transaction. Concurrent batches serialise on the row; a rollback
  gives the numbers back. No gaps, no duplicates.
* ``pending_deps`` is maintained here and in :mod:`.transitions` so the ready query is an index scan.
* After commit, :attr:`on_commit` receives the :class:`~queue_service.postgres.transitions.Effects`
  of the transaction (tasks that became ready, events written) so the dispatcher can queue tasks
  in Valkey and publish events. Its failures are logged, not raised: the records are committed, and
  the orchestrator's reconcile repairs the derived Valkey state.
* Export/import: notes and events keep their ids when those ids are free in this database (ids are
  global here, per project in the flatfile backend); otherwise they are renumbered in their
  original order, and ``note_added`` events then still carry the old ``note_id``.
"""

from __future__ import annotations

from queue_service.postgres.records.base import OnCommit
from queue_service.postgres.records.store import PostgresRecordStore
from queue_service.postgres.rows import task_columns, task_from_row

__all__ = ["OnCommit", "PostgresRecordStore", "task_columns", "task_from_row"]
