"""The Celery application the ``peers`` suite runs: Celery's own defaults, Redis broker, no result backend.

Both sides load it: the bench process sends tasks through :func:`make_app`, and the worker subprocess
is ``celery -A bench.celery_app worker --concurrency=4`` (the default prefork pool), which finds the
module-level ``app`` built from ``BENCH_CELERY_PREFIX``. The only setting that is not Celery's default
is kombu's ``global_keyprefix``: every broker key lives under the bench's own prefix (deleted after
the run), so nothing touches anyone else's keys on the shared Redis.

Tasks: ``noop`` (the drain), ``wake`` (reports when it started), ``parent`` (records the time, enqueues
``child``, reports) and ``child`` (reports when it started). Reports are ``RPUSH {prefix}:arrived
"<tag> <monotonic seconds>"``; ``time.monotonic`` is CLOCK_MONOTONIC, one clock for every process of
the machine, so the bench process can subtract its own readings from the worker's.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

from celery import Celery

__all__ = ["arrived_key", "make_app", "queue_keys"]

# Celery warns on stderr when its worker runs as root, as everything does on these machines
warnings.filterwarnings("ignore", message="You're running the worker with superuser privileges")

_URL = os.environ.get("BENCH_VALKEY_URL", "redis://127.0.0.1:6379/0")


def arrived_key(prefix: str) -> str:
    """The list where the worker's tasks report their start times."""
    return f"{prefix}:arrived"


def queue_keys(prefix: str) -> tuple[str, str]:
    """The broker's list of waiting messages (Celery's default queue ``celery``) and its hash of
    delivered-but-unacknowledged messages, as they are named under the prefix."""
    return f"{prefix}:celery", f"{prefix}:unacked"


def make_app(prefix: str) -> Any:
    """A Celery app on the Redis broker, every key under *prefix*, with the bench's four tasks."""
    celery = Celery("bench", broker=_URL)
    celery.conf.broker_transport_options = {"global_keyprefix": f"{prefix}:"}
    reporter: list[Any] = []

    def report(tag: str, at: float) -> None:
        if not reporter:
            import redis

            reporter.append(redis.Redis.from_url(_URL))
        reporter[0].rpush(arrived_key(prefix), f"{tag} {at!r}")

    @celery.task(shared=False, name="noop")
    def noop() -> None:
        return None

    @celery.task(shared=False, name="wake")
    def wake(i: int) -> None:
        report(f"w{i}", time.monotonic())

    @celery.task(shared=False, name="child")
    def child(i: int) -> None:
        report(f"c{i}", time.monotonic())

    @celery.task(shared=False, name="parent")
    def parent(i: int) -> None:
        # the peers have no dependencies: a parent enqueues its child (Celery's documented way is a
        # chain/callback; calling delay() here is what a chain does for a no-op parent)
        started = time.monotonic()
        child.delay(i)
        report(f"p{i}", started)

    return celery


def __getattr__(name: str) -> Any:
    # ``app``: the worker subprocess's app (``celery -A bench.celery_app worker``), built on first use
    # so that the bench process, which calls make_app itself, never registers a second one
    if name == "app":
        built = make_app(os.environ["BENCH_CELERY_PREFIX"])
        globals()["app"] = built
        return built
    raise AttributeError(name)
