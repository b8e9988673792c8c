"""A break-glass action reviewed after the fact with `keyturn deny`, and one nobody reviewed, as
`keyturn report` shows them over the real audit topic."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime

import pytest

from keyturn.audit.stream import read_audit_log
from keyturn.bus.topics import Topics
from tests.integration.conftest import Agent, eventually, keyturn_cli, mint

pytestmark = pytest.mark.integration


def break_glass(agent: Agent, incident: str) -> str:
    action_id = agent.submit_ok(
        "iam.role.grant",
        "iam://prod/roles/incident-responder",
        {"principal": "bob", "role": "incident-responder", "break_glass": True, "incident_id": incident},
        reason="checkout is down; on call needs the role",
    )
    assert agent.wait(action_id)["state"] == "succeeded"
    return action_id


def test_a_break_glass_action_reviewed_with_the_cli_shows_reviewed_in_the_report_the_other_missing(
    services, settings, tmp_path
) -> None:
    agent = Agent(settings, "agent:incident-bot", ("human:erin",))
    since = datetime.now(UTC).isoformat()
    reviewed = break_glass(agent, "INC-5150")
    unreviewed = break_glass(agent, "INC-5151")

    own = keyturn_cli(settings, "approve", reviewed, token=mint(settings, "human:erin"))
    assert own.returncode != 0 and "SelfApprovalRefused" in own.stdout + own.stderr
    stranger = keyturn_cli(settings, "approve", reviewed, token=mint(settings, "human:frank"))
    assert stranger.returncode != 0 and "ApproverNotAuthorised" in stranger.stdout + stranger.stderr
    review = keyturn_cli(
        settings, "deny", reviewed, "--reason", "the role outlived the incident", token=mint(settings, "human:carol")
    )
    assert review.returncode == 0, review.stdout + review.stderr
    assert "review of break-glass action" in " ".join(review.stdout.split())

    def audited() -> bool:
        """The review's votes and both outcomes are in the audit the report reads."""
        records = asyncio.run(
            read_audit_log(settings.kafka_bootstrap, Topics(settings.namespace, settings.partitions).audit)
        )
        outcomes = {r.action_id for r in records if r.event_type == "ActionExecuted"}
        votes = sum(1 for r in records if r.action_id == reviewed and r.event_type == "VoteRecorded")
        return votes >= 3 and {reviewed, unreviewed} <= outcomes

    assert eventually(audited, timeout=60), "the review or an outcome did not reach the audit"
    out = tmp_path / "report.html"
    made = keyturn_cli(settings, "report", "--since", since, "--out", str(out))
    assert made.returncode == 0, made.stdout + made.stderr
    page = out.read_text()
    rows = dict(re.findall(r'<tr data-action-id="([^"]+)">(.*?)</tr>', page, flags=re.S))
    assert set(rows) >= {reviewed, unreviewed}
    assert "reviewed, objected</span> by human:carol" in rows[reviewed] and "MISSING" not in rows[reviewed]
    assert "MISSING" in rows[unreviewed] and "human:carol" not in rows[unreviewed]
    # the refused attempts are evidence the controls worked, not reviews
    assert "human:erin" not in rows[reviewed] and "human:frank" not in rows[reviewed]
