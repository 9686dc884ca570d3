"""Prometheus metrics, one registry per app (so tests and several apps in one process don't clash).

Counters and the claim-latency histogram count what *this* process served; the gauges (tasks by
status, queue depth per role, dead-letter size) are read from the backend at scrape time and so
describe the whole deployment.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from queue_service import exceptions
from queue_service.service import QueueService

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The app's metrics and the registry they are exposed from."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.tasks = Gauge("queue_tasks", "Tasks by status.", ["project", "status"], registry=r)
        self.queue_depth = Gauge("queue_depth", "Ready tasks waiting per role.", ["project", "role"], registry=r)
        self.dead_letter = Gauge("queue_dead_letter", "Failed tasks (dead-letter set).", ["project"], registry=r)
        self.in_flight = Gauge("queue_in_flight", "Tasks with a live lease.", ["project"], registry=r)
        self.claims = Counter("queue_claims", "Tasks claimed through this process.", ["project"], registry=r)
        self.empty_claims = Counter(
            "queue_claims_empty", "Claims that found nothing ready within their wait.", ["project"], registry=r
        )
        self.completions = Counter("queue_completions", "Tasks completed.", ["project"], registry=r)
        self.failures = Counter("queue_failures", "Failed attempts reported.", ["project", "retryable"], registry=r)
        self.releases = Counter("queue_releases", "Tasks released by their holder.", ["project"], registry=r)
        self.claim_latency = Histogram(
            "queue_claim_latency_seconds",
            "Time to answer a claim, including any long-poll wait.",
            ["project", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    async def refresh(self, service: QueueService) -> None:
        """Re-read the gauges from the backend (called on every scrape)."""
        for gauge in (self.tasks, self.queue_depth, self.dead_letter, self.in_flight):
            gauge.clear()
        for project in await service.list_projects():
            try:
                stats = await service.stats(project.slug)
            except exceptions.NotFound:
                continue  # deleted between the two calls
            for status, count in stats.by_status.items():
                self.tasks.labels(project.slug, status).set(count)
            depths = stats.queue_depth_by_role or stats.ready_by_role
            for role, depth in depths.items():
                self.queue_depth.labels(project.slug, role).set(depth)
            self.dead_letter.labels(project.slug).set(stats.dead_letter)
            self.in_flight.labels(project.slug).set(stats.in_flight)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
