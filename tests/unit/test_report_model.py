"""The compliance report's figures, each checked against counts made here from the seeded plan."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter

import pytest

from keyturn.audit.report.model import build_report
from keyturn.core.audit.checkpoint import CheckpointVerifier
from keyturn.core.audit.verify import ProblemKind
from keyturn.core.canonical import to_millis
from tests.unit.audit_history import SIGNER
from tests.unit.report_story import REVISION_NEW, REVISION_OLD, SINCE, UNTIL, period, seeded

VERIFIER = CheckpointVerifier.from_keys([SIGNER.public_key])
HISTORY, PLAN = seeded()
REPORT = build_report(HISTORY.records, VERIFIER, *period())
IN_PERIOD = [item for item in PLAN if SINCE <= item.requested_at < UNTIL]
CATEGORY = {
    "allowed_ok": "allowed",
    "allowed_failed": "failed",
    "allowed_unknown": "outcome_unknown",
    "allowed_pending": "in_progress",
    "denied_policy": "denied_by_policy",
    "approved_ok": "approved",
    "approved_failed": "failed",
    "denied_people": "denied_by_people",
    "expired": "expired",
    "approval_pending": "in_progress",
    "break_glass_reviewed": "allowed",
    "break_glass_unreviewed": "allowed",
    "external": "approved_external",
}
ANSWERED = ("approved_ok", "approved_failed", "denied_people")


def nearest_rank(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def test_the_seed_covers_every_figure():
    kinds = Counter(item.kind for item in IN_PERIOD)
    assert len(kinds) == len(CATEGORY) and min(kinds.values()) >= 3
    assert len(PLAN) > len(IN_PERIOD)  # actions before and after the period exist, and must not count


def test_only_actions_requested_in_the_period_count_each_under_its_furthest_outcome():
    expected = Counter(CATEGORY[item.kind] for item in IN_PERIOD)
    assert REPORT.actions == len(IN_PERIOD)
    assert REPORT.totals == dict(expected)
    assert sum(REPORT.totals.values()) == REPORT.actions


def test_a_terminal_state_this_version_does_not_know_is_a_category_of_its_own_not_dropped():
    assert REPORT.totals["approved_external"] == sum(item.kind == "external" for item in IN_PERIOD)
    assert REPORT.categories[:5] == ("allowed", "denied_by_policy", "approved", "denied_by_people", "expired")
    assert REPORT.categories[-2:] == ("approved_external", "in_progress")


def test_actions_per_day_by_outcome_cover_every_day_of_the_period():
    expected: dict[str, Counter[str]] = {}
    for item in IN_PERIOD:
        expected.setdefault(item.requested_at.strftime("%Y-%m-%d"), Counter())[CATEGORY[item.kind]] += 1
    assert [day.day for day in REPORT.days] == [f"2026-03-0{d}" for d in range(2, 9)]
    for day in REPORT.days:
        assert {c: n for c, n in day.counts.items() if n} == dict(expected.get(day.day, {})), day.day


def test_time_to_decision_per_group_with_percentiles():
    for group in ("security", "platform"):
        answered = [item for item in IN_PERIOD if group in item.groups and item.kind in ANSWERED]
        line = next(g for g in REPORT.groups if g.group == group)
        assert sorted(line.seconds) == pytest.approx(sorted(item.vote_after_s for item in answered))
        assert line.approved == sum(item.kind != "denied_people" for item in answered)
        assert line.denied == sum(item.kind == "denied_people" for item in answered)
        assert line.expired == sum(group in item.groups and item.kind == "expired" for item in IN_PERIOD)
        seconds = [item.vote_after_s for item in answered]
        assert line.percentiles["p50"] == pytest.approx(nearest_rank(seconds, 50))
        assert line.percentiles["p90"] == pytest.approx(nearest_rank(seconds, 90))
        assert line.percentiles["max"] == pytest.approx(max(seconds))


def test_rubber_stamps_are_the_approvals_given_within_the_threshold_named_by_approver():
    expected = {
        (item.approver, item.action_id)
        for item in IN_PERIOD
        if item.kind in ("approved_ok", "approved_failed") and item.vote_after_s <= 10
    }
    assert expected, "the seed has quick approvals"
    assert {(s.approver, s.action_id) for s in REPORT.rubber_stamps} == expected
    stricter = build_report(HISTORY.records, VERIFIER, *period(), rubber_stamp_s=5)
    assert {(s.approver, s.action_id) for s in stricter.rubber_stamps} == {
        (item.approver, item.action_id)
        for item in IN_PERIOD
        if item.kind in ("approved_ok", "approved_failed") and item.vote_after_s <= 5
    }


def test_per_approver_load_approvals_denials_median_time_and_refusals():
    lines = {line.approver: line for line in REPORT.approvers}
    for approver in ("human:carol", "human:dave", "human:erin"):
        mine = [item for item in IN_PERIOD if item.approver == approver and item.kind in ANSWERED]
        line = lines[approver]
        assert line.load == len(mine)
        assert line.approvals == sum(item.kind != "denied_people" for item in mine)
        assert line.denials == sum(item.kind == "denied_people" for item in mine)
        assert line.median_s == pytest.approx(nearest_rank([item.vote_after_s for item in mine], 50))
        assert line.refused == 0
    refusers = Counter(item.agent.replace("agent:", "human:") for item in IN_PERIOD if item.refused)
    for person, count in refusers.items():
        assert lines[person].refused == count and lines[person].load == 0


def test_per_agent_actions_and_denial_rate():
    lines = {line.agent: line for line in REPORT.agents}
    for agent in {item.agent for item in IN_PERIOD}:
        mine = [item for item in IN_PERIOD if item.agent == agent]
        denied = sum(item.kind in ("denied_policy", "denied_people") for item in mine)
        assert (lines[agent].actions, lines[agent].denied) == (len(mine), denied)
        assert lines[agent].denial_rate == pytest.approx(denied / len(mine))


def test_top_denial_reasons_are_the_rules_that_fired():
    expected = Counter(rule for item in IN_PERIOD if item.kind == "denied_policy" for rule in item.rules)
    assert {line.rule: line.count for line in REPORT.denial_reasons} == dict(expected)
    assert [line.count for line in REPORT.denial_reasons] == sorted(expected.values(), reverse=True)


def test_break_glass_uses_with_their_reviews_and_the_missing_ones():
    uses = {use.action_id: use for use in REPORT.break_glass}
    expected = {item.action_id: item.reviewer for item in IN_PERIOD if item.kind.startswith("break_glass")}
    assert set(uses) == set(expected)
    for action_id, reviewer in expected.items():
        assert [r[0] for r in uses[action_id].reviews] == ([reviewer] if reviewer else [])
    assert REPORT.break_glass_unreviewed == sum(reviewer is None for reviewer in expected.values())
    # a review is not an approval: the reviewer's approver line does not count it
    erin = next(line for line in REPORT.approvers if line.approver == "human:erin")
    assert erin.load == sum(item.approver == "human:erin" and item.kind in ANSWERED for item in IN_PERIOD)


def test_refused_votes_by_kind():
    expected = Counter(item.refused for item in IN_PERIOD if item.refused)
    assert REPORT.refusals_by_kind == dict(expected)
    assert len(REPORT.refused_votes) == sum(expected.values())


def test_policy_revisions_in_force_and_when_each_took_effect():
    revisions = {line.revision: line for line in REPORT.revisions}
    assert set(revisions) == {REVISION_OLD, REVISION_NEW}
    assert revisions[REVISION_OLD].in_force_at_start and not revisions[REVISION_NEW].in_force_at_start
    for revision in (REVISION_OLD, REVISION_NEW):
        assert revisions[revision].decisions_in_period == sum(item.revision == revision for item in IN_PERIOD)
    first_new = min(item.requested_at for item in PLAN if item.revision == REVISION_NEW)
    assert revisions[REVISION_NEW].took_effect == to_millis(first_new) + 500  # decided 0.5 s after the request
    assert [line.revision for line in REPORT.revisions] == [REVISION_OLD, REVISION_NEW]


def test_the_chain_verification_and_the_period_checkpoints_come_with_the_figures():
    integrity = REPORT.integrity
    assert integrity.intact and integrity.verification.records_checked == len(HISTORY.records)
    since, until = period()
    in_period = [r for r in HISTORY.records if r.is_checkpoint and since <= r.occurred_at < until]
    assert [c.sequence for c in integrity.checkpoints] == [r.sequence for r in in_period]
    assert all(c.valid for c in integrity.checkpoints)
    assert integrity.period_signed
    assert REPORT.dead_letters == 1


def test_an_export_read_as_dicts_gives_the_same_report():
    again = build_report([r.to_dict() for r in HISTORY.records], VERIFIER, *period(), generated_at=REPORT.generated_at)
    assert again == REPORT


def _edited(index: int) -> list:
    records = list(HISTORY.records)
    record = records[index]
    payload = json.loads(record.payload_json)
    payload["outcome"] = "allowed"
    records[index] = dataclasses.replace(record, payload_json=json.dumps(payload))
    return records


def test_an_edited_record_makes_the_report_say_the_chain_is_broken():
    index = next(
        i for i, r in enumerate(HISTORY.records) if r.event_type == "ActionDecided" and "denied" in r.payload_json
    )
    report = build_report(_edited(index), VERIFIER, *period())
    assert not report.integrity.intact
    kinds = {p.kind for p in report.integrity.verification.problems}
    assert ProblemKind.EDITED in kinds


def test_a_dropped_record_and_a_forged_checkpoint_are_reported():
    records = list(HISTORY.records)
    del records[40]
    checkpoint_at = next(i for i, r in enumerate(records) if r.is_checkpoint and i > 60)
    forged = records[checkpoint_at]
    assert forged.checkpoint is not None
    records[checkpoint_at] = dataclasses.replace(
        forged, checkpoint=dataclasses.replace(forged.checkpoint, signature="00" * 64)
    )
    report = build_report(records, VERIFIER, *period())
    kinds = {p.kind for p in report.integrity.verification.problems}
    assert {ProblemKind.DROPPED, ProblemKind.FORGED_CHECKPOINT} <= kinds
    assert [c.sequence for c in report.integrity.checkpoints if not c.valid] == [forged.sequence]


def test_a_period_that_ends_before_it_starts_is_refused():
    since, until = period()
    with pytest.raises(ValueError, match="before"):
        build_report(HISTORY.records, VERIFIER, until, since)
