"""Root fixtures: a clean environment for every test, and the shared service fixtures."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["tests.fixtures.services", "tests.fixtures.backends"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's QUEUE_*/MOSAIC_* settings (procrastinate does the same)."""
    for name in list(os.environ):
        if name.startswith(("QUEUE_", "MOSAIC_")) and name != "QUEUE_TEST_VALKEY_URL":
            monkeypatch.delenv(name, raising=False)
