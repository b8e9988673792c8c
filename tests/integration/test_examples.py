"""Each example in examples/ runs as a user would run it, against the real services."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from keyturn.config import REPO_ROOT
from keyturn.sdk import Keyturn
from tests.conftest import settings_env
from tests.integration.conftest import mint, vote_over_api

pytestmark = pytest.mark.integration


def test_the_langgraph_agent_is_allowed_denied_and_waits_while_a_person_approves(settings, services) -> None:
    agent_token = mint(settings, "agent:onboarder", ("human:alice",))
    agent = subprocess.Popen(
        [sys.executable, "examples/langgraph_agent.py"],
        env=settings_env(settings, {"KEYTURN_TOKEN": agent_token}),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(120, agent.kill)
    watchdog.start()
    lines: list[str] = []
    waited_for = None
    try:
        assert agent.stdout is not None
        for line in agent.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("WAITING "):  # the agent blocks on grant_role: a security approver answers
                waited_for = line.split()[1].rstrip(":")
                vote_over_api(settings, waited_for, "human:carol")
        assert agent.wait(30) == 0, agent.stderr.read() if agent.stderr else ""
    finally:
        watchdog.cancel()
        agent.kill()
    output = "\n".join(lines)
    print(output)  # shown with -s or on failure: what a user of the example sees
    assert "read_table → success: read orders" in output, output
    assert "delete_secret → error: Keyturn: secrets.delete was denied by the policy" in output, output
    assert 'grant_role → success: {"performed": "GRANT analyst TO bob"' in output, output
    assert output.index("WAITING ") < output.index("grant_role → success"), output
    assert "needs security" in output and "agent: Here is what happened" in output
    with Keyturn(settings.intake_url, token=agent_token) as kt:
        granted = kt.status(waited_for or "")
    assert granted.action == "iam.role.grant" and granted.terminal
    resolved = next(h for h in granted.history if h["event"] == "ApprovalResolved")
    assert [v["approver"] for v in resolved["votes"]] == ["human:carol"]
