"""The tests start services and run ``keyturn`` commands as forks of a server that has imported
them (``tests.processes``), not as fresh interpreters: a fork must answer exactly as
``python -m keyturn.cli`` does, in what it prints, where, and with which exit code."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from keyturn.config import REPO_ROOT
from tests.processes import run_keyturn


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--help"], id="help"),
        pytest.param(["serve", "nonsense"], id="unknown-service"),
        pytest.param(["token", "issue"], id="missing-option"),
    ],
)
def test_a_forked_command_answers_as_a_fresh_interpreter_does(args: list[str], tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYTURN_")}
    env |= {"PYTHONPATH": str(REPO_ROOT / "services"), "COLUMNS": "400", "KEYTURN_RUN_DIR": str(tmp_path)}
    forked = run_keyturn(args, env=env, cwd=tmp_path)
    executed = subprocess.run(
        [sys.executable, "-m", "keyturn.cli", *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert forked.returncode == executed.returncode
    assert forked.stdout == executed.stdout
    assert forked.stderr == executed.stderr
    assert (forked.stdout + forked.stderr).strip(), "the command said nothing"
