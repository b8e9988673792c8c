"""One action through all five services over the real Kafka, OPA and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid

import psycopg
import pytest

from keyturn.audit.stream import read_audit_log
from keyturn.bus.topics import Topics
from tests.integration.conftest import Agent, keyturn_cli, mint

pytestmark = pytest.mark.integration


def states(view: dict) -> list[str]:
    return [entry["state"] for entry in view["history"]]


def test_an_allowed_external_action_ends_approved_external_with_a_receipt_never_succeeded(reporter: Agent) -> None:
    action_id = reporter.submit_ok(
        "read.table", "postgres://staging/analytics/orders", {"table": "orders", "limit": 10}
    )
    view = reporter.wait(action_id)
    assert view["state"] == "approved_external", view  # the catalog marks read.* external: Keyturn ran nothing
    assert states(view) == ["requested", "allowed", "approved_external"]
    claims = view["result"]["receipt"]["claims"]
    assert (claims["action_id"], claims["decision"], claims["approvers"]) == (action_id, "allowed", [])


def test_secrets_read_is_refused_at_the_door_saying_how_secrets_are_used(reporter: Agent) -> None:
    refused = reporter.submit("secrets.read", "vault://staging/payments/api-key")
    assert refused.status_code == 422, refused.text
    detail = refused.json()["detail"]
    assert "secrets.read is not carried out by Keyturn" in detail and "keyturn secrets put" in detail, detail


def test_denied_action_ends_denied_and_never_reaches_the_executor(reporter: Agent, settings) -> None:
    action_id = reporter.submit_ok("secrets.delete", "vault://production/payments/api-key")
    view = reporter.wait(action_id)
    assert view["state"] == "denied"
    assert view["reasons"], "a denial says why"
    assert states(view) == ["requested", "denied"]
    records = [
        r
        for r in asyncio.run(
            read_audit_log(settings.kafka_bootstrap, Topics(settings.namespace, settings.partitions).audit)
        )
        if r.action_id == action_id
    ]
    assert "ActionExecuted" not in [r.event_type for r in records]


def test_unknown_action_is_never_allowed(reporter: Agent) -> None:
    view = reporter.wait(reporter.submit_ok("unknown.thing", "anything://x"))
    assert view["state"] == "denied"
    assert any("unknown" in reason.lower() for reason in view["reasons"])


def test_needs_approval_waits_then_cli_approval_runs_it(reporter: Agent, settings) -> None:
    action_id = reporter.submit_ok(
        "iam.role.grant", "iam://staging/roles/analyst", {"principal": "bob", "role": "analyst"}
    )
    assert reporter.wait_for_state(action_id, "needs_approval")["state"] == "needs_approval"
    assert reporter.wait(action_id, timeout=2)["state"] == "needs_approval"  # it waits for a person

    approved = keyturn_cli(settings, "approve", action_id, "--reason", "ticket 42", token=mint(settings, "human:carol"))
    assert approved.returncode == 0, approved.stderr
    assert "approved" in approved.stdout

    view = reporter.wait(action_id)
    assert view["state"] == "succeeded", view
    assert states(view) == ["requested", "needs_approval", "approved", "succeeded"]
    assert view["result"]["performed"] == "GRANT analyst TO bob"
    # the grant is really there, read from the target database itself
    with psycopg.connect(settings.sql_target_url) as target:
        held = target.execute(
            "SELECT 1 FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles p ON p.oid = m.member "
            "WHERE r.rolname = 'analyst' AND p.rolname = 'bob'"
        ).fetchone()
    assert held is not None


@pytest.mark.parametrize("approver", ["human:alice", "agent:reporter"])
def test_requester_and_its_act_chain_cannot_approve(reporter: Agent, settings, approver: str) -> None:
    action_id = reporter.submit_ok(
        "iam.role.grant", "iam://staging/roles/auditor", {"principal": "erin", "role": "auditor"}
    )
    reporter.wait_for_state(action_id, "needs_approval")

    refused = keyturn_cli(settings, "approve", action_id, token=mint(settings, approver))
    assert refused.returncode != 0
    assert "SelfApprovalRefused" in refused.stderr
    assert approver in refused.stderr
    assert reporter.status(action_id)["state"] == "needs_approval"


def test_deny_through_the_cli_ends_denied_with_the_reason(reporter: Agent, settings) -> None:
    action_id = reporter.submit_ok(
        "iam.role.grant", "iam://staging/roles/writer", {"principal": "frank", "role": "writer"}
    )
    reporter.wait_for_state(action_id, "needs_approval")
    denied = keyturn_cli(settings, "deny", action_id, "--reason", "not this sprint", token=mint(settings, "human:dave"))
    assert denied.returncode == 0, denied.stderr
    view = reporter.wait(action_id)
    assert view["state"] == "denied"
    assert states(view) == ["requested", "needs_approval", "denied"]


def test_every_lifecycle_event_reaches_the_audit_in_order(reporter: Agent, settings) -> None:
    action_id = reporter.submit_ok(
        "iam.role.grant", "iam://staging/roles/viewer", {"principal": "gina", "role": "viewer"}
    )
    reporter.wait_for_state(action_id, "needs_approval")
    assert keyturn_cli(settings, "approve", action_id, token=mint(settings, "human:carol")).returncode == 0
    assert reporter.wait(action_id)["state"] == "succeeded"

    expected = ["ActionRequested", "ActionDecided", "VoteRecorded", "ApprovalResolved", "ActionExecuted"]
    for _ in range(50):
        records = [
            r
            for r in asyncio.run(
                read_audit_log(settings.kafka_bootstrap, Topics(settings.namespace, settings.partitions).audit)
            )
            if r.action_id == action_id
        ]
        if len(records) >= len(expected):
            break
        asyncio.run(asyncio.sleep(0.2))
    assert [r.event_type for r in records] == expected
    sequences = [r.sequence for r in records]
    assert sequences == sorted(sequences)

    tail = keyturn_cli(settings, "audit", "tail")
    assert tail.returncode == 0
    assert action_id in tail.stdout and "Checkpoint" not in tail.stdout  # each step, not each signature
    signed = keyturn_cli(settings, "audit", "tail", "--checkpoints")
    assert action_id in signed.stdout and "Checkpoint" in signed.stdout


def test_approving_an_action_with_no_approval_open_waits_then_says_so(settings) -> None:
    """The approval service answers 'not open yet' (425) while a decision may be on its way; the
    CLI asks again for a few seconds, then gives up saying so, and nothing was recorded."""
    started = time.monotonic()
    answer = keyturn_cli(settings, "approve", str(uuid.uuid4()), token=mint(settings, "human:carol"))
    assert answer.returncode != 0
    assert "not open yet" in answer.stderr and "no approval is open for action" in answer.stderr
    assert time.monotonic() - started >= 5, "it waited before giving up"
