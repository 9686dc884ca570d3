"""DispatchConfig: the timings and limits every backend's dispatcher runs with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["DispatchConfig"]


@dataclass(frozen=True)
class DispatchConfig:
    """Timing and limits for dispatch; tests shrink these to keep the suite fast."""

    #: default lease length for a claim, seconds
    lease_seconds: float = 30.0
    #: how often agents are expected to heartbeat (clients default to a third of their lease); the
    #: server does not use it: a task is reclaimable within lease + ``sweep_seconds`` of its last renewal
    heartbeat_seconds: float = 10.0
    #: first retry delay; doubles each attempt
    backoff_base_seconds: float = 1.0
    #: longest retry delay
    backoff_max_seconds: float = 300.0
    #: ±fraction of random spread on each retry delay
    backoff_jitter: float = 0.1
    #: a project/role whose ready depth exceeds this rejects new tasks (QueueFull)
    max_queue_depth: int = 10_000
    #: sweeper period, seconds
    sweep_seconds: float = 1.0
    #: default max_attempts for tasks created without one
    default_max_attempts: int = 3
    #: an agent is ready while seen (registered, heartbeat, claim) within this many seconds (issue 13)
    agent_ready_seconds: float = 30.0
    #: how long a task routed by a strategy waits for the agent it was offered to, seconds
    offer_seconds: float = 10.0
    extra: dict[str, Any] = field(default_factory=dict)
