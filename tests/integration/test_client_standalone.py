"""The typed client stands alone (issue 16, STYLE rule 28): importing it loads no server dependency.

A subprocess per import (this test process has loaded the server already), hence integration.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: top-level packages a client install must not need, and the server's own modules
FORBIDDEN = (
    "fastapi",
    "starlette",
    "sqlalchemy",
    "asyncpg",
    "redis",
    "watchdog",
    "queue_service.api",
    "queue_service.app",
    "queue_service.service",
    "queue_service.backend",
    "queue_service.state",
    "queue_service.testing",
    "queue_service.flatfile",
    "queue_service.postgres",
    "queue_service.settings",
    "queue_service.streams",
)

_PROBE = """
import json, sys
import {module}
print(json.dumps(sorted(sys.modules)))
"""


@pytest.mark.parametrize("module", ["queue_service.client", "queue_service.worker", "queue_service.client_streams"])
def test_importing_the_client_loads_no_server_module(module: str) -> None:
    # a fresh interpreter: this test process has imported the whole server already
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(module=module)], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = json.loads(out.stdout)
    offenders = [m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert offenders == []
    assert module in loaded  # the probe did import what it names


def test_the_probe_sees_a_server_import() -> None:
    """The check above can fail: the same probe run on a server module does see the backend loaded."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(module="queue_service.service")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    loaded = json.loads(out.stdout)
    assert "queue_service.backend" in loaded
