"""queue-service: task orchestration for teams of AI agents."""

from queue_service.backend import Backend
from queue_service.backend_factory import backend_from_url
from queue_service.dispatch_config import DispatchConfig
from queue_service.exceptions import QueueServiceError
from queue_service.models import Claim, Lease, Priority, Task, TaskCreate, TaskStatus, TaskUpdate
from queue_service.service import QueueService, new_agent_id
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

__version__ = "0.1.0"
