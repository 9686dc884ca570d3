"""queue-service: task orchestration for teams of AI agents.

The names below are imported on first use (PEP 562), so ``import queue_service.client`` loads
the typed client and nothing of the server (STYLE rule 28: the client stands alone).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from queue_service.version import __version__ as __version__

if TYPE_CHECKING:
    from queue_service.backend import Backend
    from queue_service.backend_factory import backend_from_url
    from queue_service.dispatch_config import DispatchConfig
    from queue_service.exceptions import QueueServiceError
    from queue_service.ids import new_agent_id
    from queue_service.models import Claim, Lease, Priority, Task, TaskCreate, TaskStatus, TaskUpdate
    from queue_service.service import QueueService
    from queue_service.settings import Settings

__all__ = [
    "Backend",
    "Claim",
    "DispatchConfig",
    "Lease",
    "Priority",
    "QueueService",
    "QueueServiceError",
    "Settings",
    "Task",
    "TaskCreate",
    "TaskStatus",
    "TaskUpdate",
    "backend_from_url",
    "new_agent_id",
]


#: where each public name lives
_HOMES = {
    "Backend": "queue_service.backend",
    "DispatchConfig": "queue_service.dispatch_config",
    "backend_from_url": "queue_service.backend_factory",
    "QueueServiceError": "queue_service.exceptions",
    "new_agent_id": "queue_service.ids",
    "Claim": "queue_service.models",
    "Lease": "queue_service.models",
    "Priority": "queue_service.models",
    "Task": "queue_service.models",
    "TaskCreate": "queue_service.models",
    "TaskStatus": "queue_service.models",
    "TaskUpdate": "queue_service.models",
    "QueueService": "queue_service.service",
    "Settings": "queue_service.settings",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'queue_service' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
