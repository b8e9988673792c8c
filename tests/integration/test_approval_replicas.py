"""Two approval instances share one namespace: the desk's consumer group splits the decisions
between them, a second instance joining (a rebalance) and the first one dying (its partitions
move after the session timeout) lose nothing and open nothing twice, and either instance answers
for every approval (they share the database)."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServiceProcesses, free_port
from tests.integration.approval_stack import running_stack, stack_settings
from tests.integration.conftest import Agent, eventually, mint, vote_over_api

pytestmark = pytest.mark.integration


def grants(agent: Agent, count: int, label: str) -> list[str]:
    """``count`` actions that need an approval (a role the session's SQL target has)."""
    parameters = {"principal": "bob", "role": "analyst"}
    return [
        agent.submit_ok("iam.role.grant", "iam://staging/roles/analyst", parameters, reason=f"replicas {label} {n}")
        for n in range(count)
    ]


def open_on(url: str, settings, action_id: str) -> bool:
    headers = {"Authorization": f"Bearer {mint(settings, 'human:carol')}"}
    return httpx.get(f"{url}/v1/approvals/{action_id}", headers=headers, timeout=10).status_code == 200


def holds_partitions(log: Path, namespace: str) -> bool:
    """Whether the instance logging to ``log`` was assigned some of the desk's partitions."""
    assigned = f"for group {namespace}-approval-actions"
    return log.exists() and any(
        "Setting newly assigned partitions {TopicPartition" in line and assigned in line
        for line in log.read_text().splitlines()
    )


def opened_in(log: Path) -> list[str]:
    return re.findall(r"opened: ([0-9a-f-]{36})", log.read_text()) if log.exists() else []


def test_two_approval_instances_open_every_approval_once_through_a_join_and_a_death(settings, tmp_path) -> None:
    stacked = stack_settings(settings)
    second_port = free_port()
    second_url = f"http://127.0.0.1:{second_port}"
    with running_stack(stacked) as procs:
        agent = Agent(stacked, "agent:reporter", ("human:alice",))
        before = grants(agent, 3, "alone")
        for action_id in before:
            assert eventually(lambda a=action_id: open_on(stacked.approval_url, stacked, a), timeout=60), action_id

        # a second instance joins the desk's group: the partitions are split between the two
        other = ServiceProcesses(replace(stacked, approval_port=second_port), log_dir=tmp_path)
        other.start("approval-2", "approval")
        try:
            other.wait_http(f"{second_url}/healthz")
            joined = eventually(lambda: holds_partitions(tmp_path / "approval-2.log", stacked.namespace), timeout=60)
            assert joined, "the second instance never got a share of the desk's partitions"
            during = grants(agent, 8, "joined")
            for action_id in during:  # each opens, whichever instance took its partition; both answer for it
                assert eventually(lambda a=action_id: open_on(second_url, stacked, a), timeout=60), action_id
                assert open_on(stacked.approval_url, stacked, action_id)

            # the first instance dies: its partitions move to the second after the session timeout
            procs.stop("approval", kill=True)
            after = grants(agent, 3, "alone again")
            for action_id in after:
                assert eventually(lambda a=action_id: open_on(second_url, stacked, a), timeout=90), action_id

            # an approval answered through the survivor runs
            with_second = replace(stacked, approval_url=second_url)
            vote_over_api(with_second, after[0], "human:carol", why="replicas")
            assert agent.wait(after[0], timeout=60)["state"] == "succeeded"

            first_log = procs.log_dir / "approval.log"
            second_log = tmp_path / "approval-2.log"
            opened = opened_in(first_log) + opened_in(second_log)
            everyone = before + during + after
            assert sorted(opened) == sorted(everyone), "an approval opened twice, or not at all"
            for log in (first_log, second_log):
                written = log.read_text()
                assert "following decisions failed" not in written, f"the desk's consumer restarted in {log.name}"
                assert "Traceback" not in written, f"{log.name} logged an error"
        finally:
            other.stop_all()
