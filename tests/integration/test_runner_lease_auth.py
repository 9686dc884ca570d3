"""Issue 11, end to end: with auth on, a child of ``qs run`` has QUEUE_URL and QUEUE_LEASE_TOKEN but
not the runner's QUEUE_TOKEN, and still adds a note, publishes output and creates the task it
discovered — with the holder's rights for its own task only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.browser.support import ROOT, serve

CHILD = textwrap.dedent(
    """
    import json, os, subprocess, sys
    assert "QUEUE_TOKEN" not in os.environ, "the runner's API token leaked to the child"
    key = os.environ["QUEUE_TASK_KEY"]
    qs = [sys.executable, "-m", "queue_service"]
    def run(*args):
        out = subprocess.run([*qs, *args], capture_output=True, text=True)
        print(f"{args[0]} {args[1]}: {out.returncode} {out.stdout.strip()} {out.stderr.strip()}", file=sys.stderr)
        return out.returncode
    codes = [
        run("task", "note", key, "found a bug in the parser"),
        run("task", "add", "Fix the parser", "--discovered-from", key),
        run("task", "note", "WEB-2", "someone else's task"),
    ]
    print(json.dumps(codes))
    """
)


def test_a_child_with_only_its_lease_notes_and_adds_what_it_discovered(tmp_path: Path) -> None:
    with serve(tmp_path / "data") as server:
        made = subprocess.run(
            [sys.executable, "-m", "queue_service", "token", "create", "--role", "admin", "--all-projects", "--json"],
            cwd=ROOT,
            env={**os.environ, **server.env},
            capture_output=True,
            text=True,
            check=True,
        )
        admin = json.loads(made.stdout)["token"]
        with server.client(admin) as c:
            c.create_project({"slug": "web", "key_prefix": "WEB"})
            c.create_task("web", {"title": "Parse the feed"})
            c.create_task("web", {"title": "Someone else's", "status": "blocked"})
        env = {k: v for k, v in os.environ.items() if not k.startswith(("QUEUE_", "MOSAIC_"))}
        env.update({"QUEUE_URL": server.url, "QUEUE_TOKEN": admin})
        workdir = tmp_path / "work"
        workdir.mkdir()
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "queue_service",
                "run",
                "web",
                "--once",
                "--workdir",
                str(workdir),
                "--quiet",
                "--",
                sys.executable,
                "-c",
                CHILD,
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        with server.client(admin) as c:
            done = c.get_task("web", "WEB-1")
            assert done.status.value == "done", done
            # note and discovered task went through; a note on another task was refused
            assert json.loads(done.result["stdout"].strip().splitlines()[-1]) == [0, 0, 1]
            (note,) = c.list_notes("web", "WEB-1")
            assert note.text == "found a bug in the parser"
            tasks = {t.title: t for t in c.list_tasks("web").items}
            assert tasks["Fix the parser"].extra == {"discovered_from": "WEB-1"}
            assert c.list_notes("web", "WEB-2") == []
