"""Workspace sync: TASKS.md <-> database."""
