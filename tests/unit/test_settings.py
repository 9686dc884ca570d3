"""Settings from the environment: error messages name the variables a user can actually set."""

from __future__ import annotations

import pytest

from queue_service import exceptions
from queue_service.settings import Settings


def test_bad_mosaic_alias_names_real_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression: the message said "QUEUE_QUEUE_STORAGE_TIER", a name nobody can set.
    monkeypatch.setenv("MOSAIC_STORAGE_TIER", "bogus")
    with pytest.raises(exceptions.ConfigurationError) as info:
        Settings.load()
    message = str(info.value)
    assert "QUEUE_QUEUE_" not in message
    assert "MOSAIC_STORAGE_TIER" in message


def test_bad_plain_setting_names_its_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUEUE_LEASE_SECONDS", "abc")
    with pytest.raises(exceptions.ConfigurationError, match=r"^QUEUE_LEASE_SECONDS: "):
        Settings.load()
