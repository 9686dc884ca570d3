"""Benchmarks: ``python -m bench [suite ...] [--quick]`` (or ``make bench``).

Every figure is printed beside its peer or baseline measured in the same command, because this
kind of machine drifts (up to 2× for Postgres) between runs. Nothing here is a test: nothing
asserts a speed. See ``docs/plans/benchmarks.md`` for what each figure means and the latest numbers.

Suites: ``records`` (batch create + queries), ``dispatch`` (claim+complete throughput and latency
against pgqueuer and procrastinate), ``rest`` (the same through HTTP, one and two replicas),
``flatfile`` (ops/s at 100 vs 10,000 tasks, 1 and 4 processes) and ``sync`` (TASKS.md parse/render).
"""

__all__: list[str] = []
