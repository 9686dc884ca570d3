"""workspace_sync gets its own options object; it never reads the service's settings (issue 16)."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest

import workspace_sync
from workspace_sync.options import SyncOptions


def test_no_workspace_sync_module_imports_the_service_settings() -> None:
    root = Path(workspace_sync.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if any(n == "queue_service.settings" or n.startswith("queue_service.settings.") for n in names):
                offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == []


@pytest.mark.parametrize(
    ("rescan", "debounce"), [(0.0, 0.3), (-1.0, 0.3), (math.inf, 0.3), (math.nan, 0.3), (1.0, -0.1), (1.0, math.nan)]
)
def test_bad_options_are_refused(rescan: float, debounce: float) -> None:
    with pytest.raises(ValueError, match="seconds"):
        SyncOptions(rescan_seconds=rescan, debounce_seconds=debounce)
