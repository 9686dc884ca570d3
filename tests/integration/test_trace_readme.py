"""The README's trace-context examples, run as written (the shell lines on a flatfile data directory,
the Python snippet against a real ``serve``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.browser.support import ROOT, serve

_README = ROOT / "README.md"


def _section() -> str:
    text = _README.read_text(encoding="utf-8")
    start = text.index("### Trace context across the queue")
    return text[start : text.index("\n## ", start)]


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", _section(), flags=re.S)


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUEUE_", "MOSAIC_", "TRACE"))}
    env.update({"QUEUE_DATA_DIR": str(tmp_path / "data"), "QUEUE_SYNC": "0"})
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_shell_example(tmp_path: Path) -> None:
    (block,) = _blocks("bash")
    env = _env(tmp_path)
    subprocess.run(["qs", "project", "create", "web"], env=env, cwd=tmp_path, check=True, capture_output=True)
    out = subprocess.run(["bash", "-ec", block], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    task = json.loads(out.stdout[: out.stdout.rindex("}") + 1])
    assert task["traceparent"] == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    # the child printed the task's context (its result is its stdout)
    shown = subprocess.run(
        ["qs", "task", "show", "web", task["key"], "--json"], env=env, cwd=tmp_path, capture_output=True
    )
    result = json.loads(shown.stdout)["task"]["result"]
    assert "child continues trace 00-4bf92f3577b34da6a3ce929d0e0e4736-" in result["stdout"]


def test_python_example(tmp_path: Path) -> None:
    (block,) = _blocks("python")
    with serve(tmp_path / "data") as server:
        with server.client() as c:
            c.create_project({"slug": "web"})
        code = block.replace("http://127.0.0.1:8000", server.url)
        out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    key, traceparent = out.stdout.strip().splitlines()[-1].split()
    exported = out.stdout[: out.stdout.rindex("}") + 1]
    span = json.loads(exported[exported.index("{") :])  # the ConsoleSpanExporter's "plan" span
    assert span["name"] == "plan"
    assert traceparent.split("-")[1] == span["context"]["trace_id"].removeprefix("0x")
    assert key.startswith("WEB-")
