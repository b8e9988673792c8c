"""Approval analytics: time to decision per group, rubber stamps, approver rates."""

from __future__ import annotations

import pytest

from keyturn.audit.analytics import approval_stats, percentile
from tests.unit.audit_history import History, story

STATS = approval_stats(story().records).to_dict()


def by(rows, key):
    return {row[key]: row for row in rows}


def test_nearest_rank_percentiles():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 90) == 90
    assert percentile(values, 99) == 99
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_time_to_decision_runs_from_the_needs_approval_decision_to_the_resolution_per_group():
    groups = by(STATS["time_to_decision"], "group")
    assert groups["security"]["decided"] == 2  # the approved grant (4 s) and the denied one (120 s)
    assert groups["security"]["approved"] == 1 and groups["security"]["denied"] == 1
    assert groups["security"]["p50_s"] == 4.0
    assert groups["security"]["p99_s"] == 120.0
    assert groups["platform"]["decided"] == 1 and groups["platform"]["p50_s"] == 120.0


def test_expired_approvals_are_counted_but_are_not_decisions():
    assert by(STATS["time_to_decision"], "group")["security"]["expired"] == 1


def test_an_approval_within_the_threshold_is_flagged_as_a_rubber_stamp():
    assert [(s["approver"], s["action_id"], s["seconds"]) for s in STATS["rubber_stamps"]] == [
        ("human:carol", "a-grant", 4.0)
    ]
    assert STATS["rubber_stamp_threshold_s"] == 10.0
    assert "decision" in STATS["notification_time"]


def test_the_threshold_is_configurable():
    assert approval_stats(story().records, rubber_stamp_s=3).to_dict()["rubber_stamps"] == []


def test_a_deny_is_never_a_rubber_stamp():
    history = History()
    request = history.request("a-1", "iam.role.grant", 0)
    decision = history.decide(request, "needs_approval", 0.1, groups=(("security", 1),))
    vote = history.vote(decision, "human:dave", "deny", 0.5)
    history.resolve(decision, "denied", 0.5, (vote,))
    assert approval_stats(history.records).to_dict()["rubber_stamps"] == []


def test_per_approver_rates_count_accepted_votes_and_refusals_apart():
    approvers = by(STATS["approvers"], "approver")
    assert approvers["human:carol"] == {
        "approver": "human:carol",
        "approve": 1,
        "deny": 0,
        "refused": 0,
        "approve_rate": 1.0,
        "deny_rate": 0.0,
        "rubber_stamps": 1,
    }
    assert approvers["human:dave"]["deny_rate"] == 1.0
    assert approvers["human:alice"] == {
        "approver": "human:alice",
        "approve": 0,
        "deny": 0,
        "refused": 1,
        "approve_rate": None,
        "deny_rate": None,
        "rubber_stamps": 0,
    }
