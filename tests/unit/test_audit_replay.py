"""Replay filters select whole actions by who asked, who answered, what and how it ended."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from keyturn.audit.replay import ActionIndex, ReplayFilter, parse_instant, timeline
from keyturn.core.audit.verify import verify
from keyturn.core.canonical import to_millis
from tests.unit.audit_history import SIGNER, at, story

HISTORY = story()
RECORDS = HISTORY.records
INDEX = ActionIndex.of(RECORDS)


def replay(**criteria) -> list:
    wanted = ReplayFilter(**{k: frozenset(v) if isinstance(v, (set, list, tuple)) else v for k, v in criteria.items()})
    return [r for r in RECORDS if wanted.selects(r, INDEX.get(r.action_id))]


def actions(records) -> list[str]:
    return sorted({r.action_id for r in records})


def test_the_story_is_a_valid_chain():
    from keyturn.core.audit.checkpoint import CheckpointVerifier

    assert verify(RECORDS, CheckpointVerifier.from_keys([SIGNER.public_key])).ok


def test_no_filter_replays_everything_in_chain_order():
    assert replay() == RECORDS


def test_filtering_by_requester_keeps_every_record_of_their_actions_including_votes():
    records = replay(requesters={"agent:builder"})
    assert actions(records) == ["a-slow"]
    assert [r.event_type for r in records] == ["ActionRequested", "ActionDecided", "VoteRecorded", "ApprovalResolved"]


def test_the_human_an_agent_acts_for_counts_as_a_requester():
    assert actions(replay(requesters={"human:alice"})) == ["a-grant", "a-lapsed", "a-read"]


def test_filtering_by_approver_finds_actions_they_voted_on_even_when_refused():
    assert actions(replay(approvers={"human:carol"})) == ["a-grant"]
    assert actions(replay(approvers={"human:alice"})) == ["a-grant"]  # her refused self-approval
    assert actions(replay(approvers={"human:dave", "human:carol"})) == ["a-grant", "a-slow"]


def test_action_types_take_wildcards():
    assert actions(replay(action_types={"iam.*"})) == ["a-grant", "a-lapsed", "a-slow"]
    assert actions(replay(action_types={"read.table", "secrets.*"})) == ["a-delete", "a-read"]


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        ("denied", ["a-delete", "a-slow"]),  # by policy and by an approver
        ("expired", ["a-lapsed"]),
        ("succeeded", ["a-grant", "a-read"]),
        ("needs_approval", ["a-grant", "a-lapsed", "a-slow"]),
    ],
)
def test_outcome_matches_any_outcome_the_action_reached(outcome, expected):
    assert actions(replay(outcomes={outcome})) == expected


def test_criteria_combine():
    assert actions(replay(action_types={"iam.*"}, outcomes={"denied"}, requesters={"agent:builder"})) == ["a-slow"]
    assert replay(action_types={"iam.*"}, requesters={"agent:cleaner"}) == []


def test_time_range_is_by_occurred_at_since_inclusive_until_exclusive():
    records = replay(since=to_millis(at(20)), until=to_millis(at(30)))
    assert [r.occurred_at for r in records] == sorted(r.occurred_at for r in records)
    assert {r.action_id for r in records} == {"a-grant"}
    assert records[0].event_type == "ActionRequested"  # at exactly 20 s: included
    assert all(r.event_type != "DeadLetter" for r in records)  # at exactly 30 s: excluded


def test_dead_letters_and_checkpoints_stay_in_unfiltered_replays_but_not_in_action_replays():
    assert {"DeadLetter", "Checkpoint"} <= {r.event_type for r in replay(since=to_millis(at(0)))}
    assert {r.event_type for r in replay(action_ids={"a-read"})} == {
        "ActionRequested",
        "ActionDecided",
        "ActionExecuted",
    }


def test_an_unknown_outcome_or_an_empty_range_is_refused():
    with pytest.raises(ValueError, match="unknown outcome finished"):
        ReplayFilter(outcomes=frozenset({"finished"}))
    with pytest.raises(ValueError, match="before --until"):
        ReplayFilter(since=2, until=1)


def test_times_are_iso_dates_or_durations_ago():
    now = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    assert parse_instant("2026-03-02T09:00:00Z") == to_millis(at(0))
    assert parse_instant("2026-03-02T09:00:00") == to_millis(at(0))  # no zone means UTC
    assert parse_instant("2026-03-02T10:00:00+01:00") == to_millis(at(0))
    assert parse_instant("3h", now=now) == to_millis(at(0))
    assert parse_instant("15m", now=now) == to_millis(now) - 15 * 60_000
    with pytest.raises(ValueError, match="not a time"):
        parse_instant("last tuesday")


def test_a_timeline_says_who_when_what_why_and_which_policy_revision():
    steps = timeline(RECORDS, "a-grant")
    assert [s.event_type for s in steps] == [
        "ActionRequested",
        "ActionDecided",
        "VoteRecorded",
        "VoteRecorded",
        "ApprovalResolved",
        "ActionExecuted",
    ]
    requested, decided, refused, approved, resolved, executed = steps
    assert requested.who == "agent:reporter for human:alice"
    assert requested.what == "requested iam.role.grant on test://iam.role.grant"
    assert requested.why == "quarterly report"
    assert decided.what == "policy decided: needs_approval by security x1"
    assert decided.policy_revision == "sha256:rev1"
    assert "decision-a-grant" in decided.why
    assert refused.who == "human:alice" and "refused" in refused.what and "requester chain" in refused.why
    assert "vote_refused" in refused.flags
    assert approved.who == "human:carol" and approved.why == "ticket 42"
    assert resolved.what == "approval resolved: approved" and resolved.policy_revision == "sha256:rev1"
    assert executed.what == "executed by noop: succeeded"
    assert [s.at for s in steps] == sorted(s.at for s in steps)
