"""The agent loop of issue 11 as a user runs it: the installed ``qs`` in subprocesses (moved from
tests/unit/test_cli_agent_loop.py, whose in-process cases stay unit tests)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

QS = str(Path(sys.executable).with_name("qs"))


def _qs(line: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = shlex.split(line)
    assert argv[0] == "qs"
    return subprocess.run([QS, *argv[1:]], env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def user_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUE_")}
    env["QUEUE_DATA_DIR"] = str(tmp_path / "data")
    return env


def test_prime_lines_complete_a_task_in_three_commands(user_env: dict[str, str]) -> None:
    """Done-when: run exactly the qs lines `qs prime` prints; a task is done after <= 3 commands."""
    for setup in (
        "qs project create shop --prefix SHOP",
        "qs task add shop 'Write the checkout page' --description 'Use the existing cart API.'",
    ):
        assert _qs(setup, user_env).returncode == 0
    commands = 0
    prime = _qs("qs prime shop", user_env)
    commands += 1
    assert prime.returncode == 0, prime.stderr
    assert len(prime.stdout.encode()) <= 2048
    lines = [ln for ln in prime.stdout.splitlines() if ln.startswith("qs ")]
    claim_line = next(ln for ln in lines if "--claim" in ln)
    claimed = _qs(claim_line, user_env)
    commands += 1
    assert claimed.returncode == 0, claimed.stderr
    assert "Use the existing cart API." in claimed.stdout  # the description comes with the claim
    match = re.search(r"^finish:\s+(qs complete .*)$", claimed.stdout, re.M)
    assert match, claimed.stdout
    # prime's complete line, with the KEY and TOKEN the claim printed, is the claim's finish line
    complete_template = next(ln for ln in lines if ln.startswith("qs complete"))
    key = re.search(r"^Claimed (\S+)", claimed.stdout, re.M)
    token = re.search(r"^token: (\S+)$", claimed.stdout, re.M)
    assert key and token
    filled = complete_template.replace("KEY", key.group(1)).replace("TOKEN", token.group(1))
    assert shlex.split(filled) == shlex.split(match.group(1))
    done = _qs(filled, user_env)
    commands += 1
    assert done.returncode == 0, done.stderr
    assert commands <= 3
    shown = json.loads(_qs(f"qs --json task show shop {key.group(1)}", user_env).stdout)
    assert shown["task"]["status"] == "done"
