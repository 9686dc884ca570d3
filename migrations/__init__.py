"""Alembic migrations for the Postgres schema (``queue_service/postgres/tables.py``)."""
