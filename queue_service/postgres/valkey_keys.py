"""Every Valkey key and pub/sub channel name the service uses, in one place (DESIGN §3).

All names live under one prefix, ``mosaic:queue`` by default (the plan's key space); tests pass a
unique prefix so runs sharing one Valkey database never see each other's keys. Names are built from
validated slugs, task keys, roles and priorities, which never contain whitespace.

```
{prefix}:project:{project}:ready:{role}:{priority}   list   ready task keys (RPUSH / BLPOP)
{prefix}:project:{project}:queued                    hash   task key -> the ready list holding it (dedupe)
{prefix}:project:{project}:roles                     set    roles that ever had a ready task
{prefix}:project:{project}:lock:{taskKey}            string claim lock: the lease token, TTL = lease
{prefix}:project:{project}:events                    chan   JSON events, published after commit
{prefix}:project:{project}:depth                     hash   role -> ready depth (gauge, written by sweep)
{prefix}:project:{project}:scheduled                 zset   backed-off task keys scored by not_before (epoch s)
{prefix}:project:{project}:idle-check                string rate limit of a claimer-triggered reconcile (TTL)
{prefix}:orchestrator:leader                         string leader lock of the orchestrator (TTL)
{prefix}:epoch                                       string reconcile marker; gone = Valkey was flushed
```
"""

from __future__ import annotations

from dataclasses import dataclass

from queue_service.models import Priority

__all__ = [
    "DEFAULT_PREFIX",
    "PRIORITIES",
    "ValkeyKeys",
]

#: The plan's key space (DESIGN §3); keep this spelling, agents and dashboards rely on it.
DEFAULT_PREFIX = "mosaic:queue"

#: Priorities in dispatch order: P0 is served first.
PRIORITIES: tuple[str, ...] = tuple(p.value for p in Priority)


@dataclass(frozen=True)
class ValkeyKeys:
    """Key and channel names under one prefix.

    Args:
        prefix: the key space, without a trailing colon (default ``mosaic:queue``).
    """

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix or self.prefix.endswith(":") or any(c.isspace() for c in self.prefix):
            raise ValueError(f"invalid Valkey key prefix {self.prefix!r}: non-empty, no spaces, no trailing ':'")

    # -- per project -------------------------------------------------------------------------
    def project(self, project: str) -> str:
        """The namespace of one project: ``{prefix}:project:{project}``."""
        return f"{self.prefix}:project:{project}"

    def ready(self, project: str, role: str, priority: str) -> str:
        """The ready list of one project × role × priority."""
        return f"{self.ready_prefix(project)}{role}:{priority}"

    def ready_prefix(self, project: str) -> str:
        """What every ready list name of the project starts with (``…:ready:``; role and priority follow)."""
        return f"{self.project(project)}:ready:"

    def ready_lists(self, project: str, roles: list[str] | tuple[str, ...]) -> list[str]:
        """Ready lists of *roles* in dispatch order: every role's P0 list, then every P1 list, …"""
        return [self.ready(project, role, prio) for prio in PRIORITIES for role in roles]

    def queued(self, project: str) -> str:
        """The dedupe hash: task key → the ready list it currently sits in."""
        return f"{self.project(project)}:queued"

    def roles(self, project: str) -> str:
        """The set of roles that have (had) ready lists in the project."""
        return f"{self.project(project)}:roles"

    def lock(self, project: str, task_key: str) -> str:
        """The claim lock of a task: ``{prefix}:project:{project}:lock:{taskKey}`` (the plan's name)."""
        return f"{self.project(project)}:lock:{task_key}"

    def events(self, project: str) -> str:
        """The pub/sub channel carrying the project's events."""
        return f"{self.project(project)}:events"

    def depth(self, project: str) -> str:
        """Hash role → ready depth, refreshed by every sweep (for /metrics on any replica)."""
        return f"{self.project(project)}:depth"

    def scheduled(self, project: str) -> str:
        """Sorted set of the project's backed-off task keys, score = ``not_before`` (epoch seconds)."""
        return f"{self.project(project)}:scheduled"

    # -- global ------------------------------------------------------------------------------
    @property
    def leader(self) -> str:
        """The orchestrator leader lock."""
        return f"{self.prefix}:orchestrator:leader"

    @property
    def epoch(self) -> str:
        """The reconcile marker: set after a full rebuild; its absence means Valkey lost our keys."""
        return f"{self.prefix}:epoch"

    @property
    def pattern(self) -> str:
        """A SCAN pattern matching every key under the prefix (test clean-up)."""
        return f"{self.prefix}:*"
