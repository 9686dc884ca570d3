"""Server-rendered pictures: the throughput chart (overview) and the mission DAG layout.

Both are plain geometry computed here and drawn as SVG by the templates, so the browser runs no
charting code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from queue_service.models import Task, TaskStatus

__all__ = ["STATUS_COLOURS", "Chart", "Dag", "layout_dag", "throughput_chart"]

#: fill colour per status (DAG nodes, board column headers, badges)
STATUS_COLOURS: dict[str, str] = {
    TaskStatus.NOT_STARTED.value: "#cbd5e1",
    TaskStatus.IN_PROGRESS.value: "#60a5fa",
    TaskStatus.NEEDS_QA.value: "#c084fc",
    TaskStatus.BLOCKED.value: "#fbbf24",
    TaskStatus.DONE.value: "#4ade80",
    TaskStatus.FAILED.value: "#f87171",
    TaskStatus.CANCELLED.value: "#9ca3af",
}


@dataclass
class Chart:
    """A two-series bar chart: completed and failed per minute."""

    width: int
    height: int
    peak: int
    bars: list[tuple[float, float, float, str, str]]  # x, y, h, colour, tooltip
    total_completed: int
    total_failed: int


def throughput_chart(buckets: Sequence[tuple[int, int]], width: int = 360, height: int = 60) -> Chart:
    """Bars for ``(completed, failed)`` per minute, oldest first (the last bucket is this minute)."""
    peak = max((c + f for c, f in buckets), default=0)
    scale = (height - 2) / peak if peak else 0.0
    step = width / max(len(buckets), 1)
    bars: list[tuple[float, float, float, str, str]] = []
    for i, (done, failed) in enumerate(buckets):
        x = round(i * step, 1)
        ago = len(buckets) - 1 - i
        tip = f"{ago} min ago: {done} completed, {failed} failed"
        h_done = done * scale
        h_fail = failed * scale
        if done:
            bars.append((x, round(height - h_done, 1), round(h_done, 1), "#22c55e", tip))
        if failed:
            bars.append((x, round(height - h_done - h_fail, 1), round(h_fail, 1), "#ef4444", tip))
    return Chart(
        width=width,
        height=height,
        peak=peak,
        bars=bars,
        total_completed=sum(c for c, _ in buckets),
        total_failed=sum(f for _, f in buckets),
    )


@dataclass
class Node:
    key: str
    title: str
    status: str
    x: int
    y: int


@dataclass
class Dag:
    """Node boxes and edge paths, laid out left (no deps) to right (most deps)."""

    width: int
    height: int
    nodes: list[Node] = field(default_factory=list)
    edges: list[str] = field(default_factory=list)
    node_w: int = 170
    node_h: int = 34


_COL = 220
_ROW = 46
_PAD = 10


def layout_dag(tasks: Sequence[Task]) -> Dag:
    """Layered layout: a task's column is one more than its deepest dependency inside *tasks*.

    Within a column tasks are ordered by the mean row of their dependencies (one barycentre pass), so
    most edges run straight. Dependencies outside *tasks* are not drawn. Linear in tasks + edges.
    """
    by_key = {t.key: t for t in tasks}
    deps = {t.key: [d for d in t.depends_on if d in by_key] for t in tasks}
    children: dict[str, list[str]] = {k: [] for k in by_key}
    indegree = {k: len(v) for k, v in deps.items()}
    for k, ds in deps.items():
        for d in ds:
            children[d].append(k)
    layer = dict.fromkeys(by_key, 0)
    queue = [k for k, n in indegree.items() if n == 0]
    while queue:
        nxt: list[str] = []
        for k in queue:
            for c in children[k]:
                layer[c] = max(layer[c], layer[k] + 1)
                indegree[c] -= 1
                if indegree[c] == 0:
                    nxt.append(c)
        queue = nxt
    columns: dict[int, list[str]] = {}
    for k in sorted(by_key, key=lambda key: by_key[key].seq):
        columns.setdefault(layer[k], []).append(k)
    row: dict[str, float] = {}
    for col in sorted(columns):
        keys = columns[col]
        if col > 0:
            keys.sort(key=lambda k: sum(row[d] for d in deps[k]) / len(deps[k]) if deps[k] else 0.0)
        for i, k in enumerate(keys):
            row[k] = i
    dag = Dag(width=0, height=0)
    pos: dict[str, tuple[int, int]] = {}
    for col, keys in columns.items():
        for i, k in enumerate(keys):
            x, y = _PAD + col * _COL, _PAD + i * _ROW
            pos[k] = (x, y)
            t = by_key[k]
            title = t.title if len(t.title) <= 22 else t.title[:21] + "…"
            dag.nodes.append(Node(key=k, title=title, status=t.status.value, x=x, y=y))
    for k, ds in deps.items():
        x2, y2 = pos[k]
        for d in ds:
            x1, y1 = pos[d]
            sx, sy, ex, ey = x1 + dag.node_w, y1 + dag.node_h // 2, x2, y2 + dag.node_h // 2
            mid = (sx + ex) // 2
            dag.edges.append(f"M{sx},{sy} C{mid},{sy} {mid},{ey} {ex},{ey}")
    dag.width = _PAD * 2 + (max(columns, default=0) + 1) * _COL
    dag.height = _PAD * 2 + max((len(v) for v in columns.values()), default=1) * _ROW
    return dag
