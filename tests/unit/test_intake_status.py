"""What the intake's status follower takes from a fetched batch: the lifecycle events, and
nothing that would make the whole batch fail on every retry."""

from __future__ import annotations

from datetime import UTC, datetime

from keyturn.bus.codec import registry
from keyturn.core.events import (
    ActionDecided,
    ActionExecuted,
    ActionRequested,
    DeadLetter,
    DecisionOutcome,
    Digest,
    ExecutionOutcome,
    Provenance,
)
from keyturn.core.principal import Principal, PrincipalKind
from keyturn.intake.status import changes

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
REQUESTED = ActionRequested(
    event_id="requested:a1",
    action_id="a1",
    action="read.table",
    resource="postgres://staging/a/b",
    parameters_json='{"limit":10}',
    reason="report",
    requester=Principal("agent:reporter", PrincipalKind.AGENT, ("human:alice",)),
    payload_digest=Digest("00" * 32),
    requested_at=NOW,
)
DECIDED = ActionDecided(
    event_id="decided:a1",
    action_id="a1",
    outcome=DecisionOutcome.ALLOWED,
    provenance=Provenance("sha256:x", "d1", Digest("11" * 32), NOW),
    decided_at=NOW,
    request=REQUESTED,
)
EXECUTED = ActionExecuted(
    event_id="executed:a1",
    action_id="a1",
    outcome=ExecutionOutcome.SUCCEEDED,
    plugin="noop",
    payload_digest=Digest("00" * 32),
    finished_at=NOW,
    started_at=NOW,
    result_json='{"rows": 3}',
)
LETTER = DeadLetter(
    event_id="dlq:x:0:1",
    source_topic="x",
    partition=0,
    offset=1,
    key=None,
    payload_length=1,
    payload_digest=Digest("22" * 32),
    error_type="not_avro",
    reason="noise",
    service="policy",
    failed_at=NOW,
)


def test_a_batch_yields_its_lifecycle_events_and_skips_everything_else() -> None:
    encode = registry().encode_event
    batch = [None, b"", b'{"json": true}', encode(LETTER), encode(DECIDED), encode(EXECUTED)]
    found = changes(batch)
    assert [(c.action_id, c.entry["event"]) for c in found] == [("a1", "ActionDecided"), ("a1", "ActionExecuted")]
    assert found[0].entry["decision_id"] == "d1"
    assert found[1].result == {"rows": 3}


def test_a_decision_that_needs_approval_shows_who_must_approve_and_until_when() -> None:
    from dataclasses import replace

    from keyturn.core.events import ApprovalRequirement, GroupRequirement
    from keyturn.intake.status import history_entry

    needs = replace(
        DECIDED,
        outcome=DecisionOutcome.NEEDS_APPROVAL,
        approvals=ApprovalRequirement((GroupRequirement("security", 2), GroupRequirement("platform")), 1800, 600),
    )
    entry, _reasons, _result = history_entry(needs)
    assert entry["approver_groups"] == ["security", "platform"] and entry["require_all"] is True
    assert entry["expires_at"] == "2026-11-30T12:30:00+00:00"
    assert entry["approvers"] == [{"name": "security", "min": 2}, {"name": "platform", "min": 1}]
    assert "expires_at" not in history_entry(DECIDED)[0]
