"""The Postgres record side (SQLAlchemy 2 async + asyncpg) and, with Valkey, the team backend.

Import submodules directly (``queue_service.postgres.records``, ``.tables``, ``.transitions``); this
package imports nothing heavy on its own so ``backend_from_url`` stays lazy. The file map is in
``docs/plans/architecture.md``.
"""

from __future__ import annotations

__all__: list[str] = []
