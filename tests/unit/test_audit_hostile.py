"""A correctly hashed record holding a payload no writer writes (anyone who can produce to the audit
topic can append one) is reported where it stands; it never stops the auditors' tools."""

from __future__ import annotations

import dataclasses

import pytest

from keyturn.audit.analytics import approval_stats
from keyturn.audit.replay import ActionIndex, timeline
from keyturn.audit.report.model import build_report
from keyturn.core.audit.canonical import record_hash, record_id_for
from keyturn.core.audit.checkpoint import CheckpointVerifier
from keyturn.core.audit.record import AuditRecord
from keyturn.core.audit.verify import ProblemKind, verify
from keyturn.core.canonical import to_millis
from keyturn.policy.simulate import recorded_decisions
from tests.unit.audit_history import SIGNER, at, story

VERIFIER = CheckpointVerifier.from_keys([SIGNER.public_key])
HOSTILE = (
    ("not json", "ActionRequested"),
    ('["a", "list"]', "ActionRequested"),
    ('{"requester": "zz", "action": 5}', "ActionRequested"),
    ('{"vote": {"approver": "human:eve"}, "accepted": true}', "VoteRecorded"),
    ('{"outcome": "approved", "votes": ["human:eve"]}', "ApprovalResolved"),
    ('{"outcome": "denied", "rules": "all", "provenance": {"input_json": "{}"}}', "ActionDecided"),
    ('{"request": {"requester": {"id": "agent:x", "chain": [1]}}, "outcome": "allowed"}', "ActionDecided"),
)


def appended(records: list[AuditRecord], payload_json: str, event_type: str) -> list[AuditRecord]:
    """``records`` and one more record on its end, hashed and linked right, holding ``payload_json``."""
    last = records[-1]
    record = AuditRecord(
        record_id=record_id_for(f"forged:{last.sequence + 1}"),
        sequence=last.sequence + 1,
        recorded_at=last.recorded_at + 1,
        event_id=f"forged:{last.sequence + 1}",
        event_type=event_type,
        action_id="a-grant",  # an action the chain knows, so every reader looks at it
        actor="agent:x",
        source_topic="kt.actions.requested",
        occurred_at=last.occurred_at + 1,
        payload_json=payload_json,
        prev_hash=last.hash,
        hash="",
        checkpoint=None,
        flags=(),
    )
    return [*records, dataclasses.replace(record, hash=record_hash(record))]


@pytest.mark.parametrize(("payload_json", "event_type"), HOSTILE)
def test_verify_names_the_record_whose_payload_is_not_a_readable_event(payload_json, event_type):
    records = appended(story().records, payload_json, event_type)
    report = verify(records, VERIFIER)
    assert not report.ok
    [problem] = [p for p in report.problems if p.kind is ProblemKind.MALFORMED]
    assert (problem.sequence, problem.index) == (records[-1].sequence, len(records) - 1)
    assert "payload" in problem.message


@pytest.mark.parametrize(("payload_json", "event_type"), HOSTILE)
def test_replay_timeline_stats_and_simulate_go_on_and_say_what_they_left_out(payload_json, event_type):
    history = story()
    records = appended(history.records, payload_json, event_type)
    forged = records[-1].sequence

    index = ActionIndex.of(records)
    assert index.malformed == [forged]
    assert index.get("a-grant") == ActionIndex.of(history.records).get("a-grant")

    steps = timeline(records, "a-grant")
    assert steps[-1].sequence == forged and "NOT A READABLE EVENT" in steps[-1].what

    stats = approval_stats(records)
    assert stats.to_dict()["approvers"] == approval_stats(history.records).to_dict()["approvers"]
    if event_type != "ActionRequested":  # the analytics read decisions, votes and resolutions only
        assert stats.malformed == [forged]
    if event_type == "ActionDecided":
        assert recorded_decisions(records).malformed == [forged]


@pytest.mark.parametrize(("payload_json", "event_type"), HOSTILE)
def test_the_report_is_still_written_and_says_the_chain_is_not_intact(payload_json, event_type):
    history = story()
    records = appended(history.records, payload_json, event_type)
    since, until = to_millis(at(-60)), to_millis(at(7200))
    clean = build_report(history.records, VERIFIER, since, until, generated_at=0)

    report = build_report(records, VERIFIER, since, until, generated_at=0)

    assert report.integrity is not None and not report.integrity.intact
    assert [(p.kind, p.sequence) for p in report.integrity.verification.problems] == [
        (ProblemKind.MALFORMED, records[-1].sequence)
    ]
    assert report.actions == clean.actions and report.totals == clean.totals


def test_a_decision_naming_its_groups_by_name_only_is_read_not_crashed_on():
    # groups are objects in a decision's approvals and names elsewhere: either shape is an event
    payload = '{"action_id": "a-grant", "outcome": "needs_approval", "approvals": {"groups": ["security"]}}'
    records = appended(story().records, payload, "ActionDecided")
    assert not [p for p in verify(records, VERIFIER).problems if p.kind is ProblemKind.MALFORMED]
    steps = timeline(records, "a-grant")
    assert "security" in steps[-1].what
    assert approval_stats(records).to_dict()["approvers"] == approval_stats(story().records).to_dict()["approvers"]
