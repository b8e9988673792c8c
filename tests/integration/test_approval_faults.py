"""Approvers during an outage of the policy engine or the database, on servers of this module's own.

Stopping OPA or PostgreSQL is real here (``PrivateServers``: a Kafka, OPA and PostgreSQL started
with deploy/*.sh on free ports and their own run directory), so the shared development servers
and other test runs never see the fault. What an approver must notice: an answer given while a
dependency is down is neither accepted nor refused but "try again" (503, or a chat message
saying so), nothing is recorded for it, the same answer works once the dependency is back, and
the approval service keeps running (and keeps expiring what is due) through a database restart.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import httpx
import psycopg
import pytest

from keyturn.bus.codec import registry
from keyturn.bus.topics import Topics
from keyturn.config import REPO_ROOT, Settings
from keyturn.core.events import ApprovalResolved, ResolutionOutcome, VoteRecorded
from keyturn.db import schema_name
from tests.fakes.slack import FakeSlack, running_slack
from tests.integration.conftest import Agent, approval_shown, eventually, mint, read_topic
from tests.processes import ARTIFACTS, SERVICES, PrivateServers, ServiceProcesses

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def slack() -> Iterator[FakeSlack]:
    with running_slack(channels=("C0SECURITY",), users={"U0DAVE": "dave@example.com"}) as fake:
        yield fake


@pytest.fixture(scope="module")
def private(slack):
    """Private servers and the five services on them; all stopped (and removed) afterwards."""
    servers = PrivateServers(REPO_ROOT / ".run" / f"approval-faults-{secrets.token_hex(3)}")
    try:
        servers.up()
        settings = servers.settings(
            "faults",
            policy_unavailable_after_s=120.0,
            slack_api_url=slack.api_url,
            slack_bot_token=slack.bot_token,
            slack_signing_secret=slack.signing_secret,
            slack_channels=json.dumps({"*": ["C0SECURITY"]}),
            slack_email_domains="example.com",
        )
        procs = ServiceProcesses(settings, log_dir=ARTIFACTS / "logs" / settings.namespace)
        try:
            procs.start_all(SERVICES)
            yield settings, servers, procs
        finally:
            procs.stop_all()
    finally:
        servers.down(remove=True)


def pending(settings: Settings, role: str) -> tuple[str, str]:
    """A role grant waiting for security: (action id, the digest an answer must name)."""
    agent = Agent(settings, "agent:reporter", ("human:alice",))
    action_id = agent.submit_ok("iam.role.grant", f"iam://staging/roles/{role}", {"principal": "bob", "role": role})
    assert agent.wait_for_state(action_id, "needs_approval")["state"] == "needs_approval"
    return action_id, approval_shown(settings, action_id, "human:carol")["payload_digest"]


def bearer(settings: Settings, who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(settings, who)}"}


def vote(settings: Settings, action_id: str, digest: str, who: str = "human:carol") -> httpx.Response:
    return httpx.post(
        f"{settings.approval_url}/v1/approvals/{action_id}/votes",
        headers=bearer(settings, who),
        json={"choice": "approve", "payload_digest": digest},
        timeout=60,
    )


def votes_for(settings: Settings, action_id: str) -> list[VoteRecorded]:
    return [
        e
        for e, _ in read_topic(settings, Topics(settings.namespace, settings.partitions).votes)
        if isinstance(e, VoteRecorded) and e.action_id == action_id
    ]


def resolution_of(settings: Settings, action_id: str) -> ApprovalResolved | None:
    return next(
        (
            e
            for e, _ in read_topic(settings, Topics(settings.namespace, settings.partitions).resolved)
            if isinstance(e, ApprovalResolved) and e.action_id == action_id
        ),
        None,
    )


def test_an_answer_while_the_policy_engine_is_down_is_try_again_and_counts_once_it_is_back(private, slack) -> None:
    settings, servers, procs = private
    action_id, digest = pending(settings, "opa-outage")
    assert eventually(lambda: slack.top_level(action_id), timeout=40), "no Slack message for the approval"
    message = slack.top_level(action_id)[0]

    servers.stop("opa")
    try:
        answer = vote(settings, action_id, digest)
        assert answer.status_code == 503, answer.text
        assert answer.json()["detail"]["error"] == "policy_unavailable"
        assert (
            "Try again" in answer.json()["detail"]["message"] and "not recorded" in answer.json()["detail"]["message"]
        )
        assert int(answer.headers["Retry-After"]) > 0

        # the same in Slack: the person is told, only them, to answer again
        told = len(slack.ephemeral)
        body, headers = slack.signed(slack.click(message, "keyturn_approve", "U0DAVE"))
        clicked = httpx.post(f"{settings.approval_url}/slack/interactions", content=body, headers=headers, timeout=60)
        assert clicked.status_code == 200, clicked.text
        assert eventually(lambda: slack.ephemeral[told:], timeout=20), "the approver was not told anything"
        assert "Try again" in slack.ephemeral[-1]["text"] and slack.ephemeral[-1]["user"] == "U0DAVE"
    finally:
        servers.start("opa")

    accepted = vote(settings, action_id, digest)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["status"] == "approved"
    recorded = eventually(lambda: votes_for(settings, action_id), timeout=30)
    # neither answer given during the outage left a refusal behind: one vote, the accepted one
    assert [(v.vote.approver.id, v.accepted, v.refusal) for v in recorded] == [("human:carol", True, None)]
    assert not procs.exited(), f"services died: {procs.exited()}"


def test_the_approval_service_rides_out_a_database_restart(private) -> None:
    settings, servers, procs = private
    voted_on, digest = pending(settings, "db-outage-vote")
    left_to_expire, _ = pending(settings, "db-outage-expiry")

    servers.stop("postgres")
    try:
        time.sleep(3)  # a few ticks of the expiry clock and the couriers meet the outage
        started = time.monotonic()
        answer = vote(settings, voted_on, digest)
        assert answer.status_code == 503, answer.text
        assert answer.json()["detail"]["error"] == "database_unavailable"
        assert "Try again" in answer.json()["detail"]["message"]
        assert time.monotonic() - started < 20, "the approver waited too long to be told"
        inbox = httpx.get(f"{settings.approval_url}/v1/approvals", headers=bearer(settings, "human:carol"), timeout=60)
        assert inbox.status_code == 503, inbox.text
        assert not procs.exited(), f"the approval service stopped during the outage: {procs.exited()}"
    finally:
        servers.start("postgres")

    # the same answer counts once the database is back (the pool hands out fresh connections)
    def answered() -> httpx.Response | None:
        response = vote(settings, voted_on, digest)
        return response if response.status_code != 503 else None

    accepted = eventually(answered, timeout=60, every=1)
    assert accepted is not None, "votes still answer 503 a minute after the database came back"
    assert accepted.status_code == 200 and accepted.json()["status"] == "approved", accepted.text
    assert [
        (v.vote.approver.id, v.accepted) for v in eventually(lambda: votes_for(settings, voted_on), timeout=30)
    ] == [("human:carol", True)]

    # the expiry clock still runs: an approval whose time is up ends expired (its time is made up
    # by moving its decision back by the pending TTL, where the desk reads it from)
    with psycopg.connect(
        settings.database_url, autocommit=True, options=f"-c search_path={schema_name(settings.namespace)}"
    ) as conn:
        stored = registry().decode_event(
            bytes(
                conn.execute("SELECT decided_event FROM approvals WHERE action_id = %s", (left_to_expire,)).fetchone()[
                    0
                ]
            )
        )
        earlier = replace(stored, decided_at=stored.decided_at - timedelta(seconds=stored.approvals.pending_ttl_s + 1))
        conn.execute(
            "UPDATE approvals SET decided_event = %s, expires_at = now() WHERE action_id = %s",
            (registry().encode_event(earlier), left_to_expire),
        )
    resolved = eventually(lambda: resolution_of(settings, left_to_expire), timeout=30)
    assert resolved is not None and resolved.outcome is ResolutionOutcome.EXPIRED
    assert not procs.exited(), f"services died: {procs.exited()}"
