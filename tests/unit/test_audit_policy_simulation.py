"""Policy simulation: recorded decisions with their exact inputs, and what counts as a change."""

from __future__ import annotations

from keyturn.core.canonical import to_millis
from keyturn.policy.simulate import SimulationReport, compare, recorded_decisions
from tests.unit.audit_history import at, story

DECISIONS = recorded_decisions(story().records)
BY_ACTION = {d.action_id: d for d in DECISIONS.decisions}


def test_every_recorded_decision_comes_with_the_exact_opa_input_and_outcome():
    assert sorted(BY_ACTION) == ["a-delete", "a-grant", "a-lapsed", "a-read", "a-slow"]
    grant = BY_ACTION["a-grant"]
    assert grant.input == {"action": "iam.role.grant", "action_id": "a-grant", "requester": {"id": "agent:reporter"}}
    assert grant.outcome == "needs_approval" and grant.groups == (("security", 1),)
    assert grant.policy_revision == "sha256:rev1" and grant.requester == "agent:reporter"
    assert BY_ACTION["a-slow"].groups == (("platform", 1), ("security", 1))


def test_decisions_are_taken_from_the_time_range():
    window = recorded_decisions(story().records, since=to_millis(at(10)), until=to_millis(at(41)))
    assert [d.action_id for d in window.decisions] == ["a-delete", "a-grant", "a-slow"]


def test_the_same_answer_is_no_change():
    same = {"outcome": "needs_approval", "approvals": {"groups": [{"name": "security", "min": 1}]}, "reasons": []}
    assert compare(BY_ACTION["a-grant"], same) is None
    assert compare(BY_ACTION["a-read"], {"outcome": "allowed", "approvals": {}}) is None


def test_a_different_outcome_or_other_approvers_is_a_change():
    read = compare(
        BY_ACTION["a-read"],
        {
            "outcome": "needs_approval",
            "reasons": ["reads need approval now"],
            "approvals": {"groups": [{"name": "data-owners", "min": 1}]},
            "rules": ["reads.x"],
        },
    )
    assert read is not None and read.outcome == "needs_approval" and read.groups == (("data-owners", 1),)
    assert read.reasons == ("reads need approval now",)
    stricter = compare(
        BY_ACTION["a-grant"], {"outcome": "needs_approval", "approvals": {"groups": [{"name": "security", "min": 2}]}}
    )
    assert stricter is not None and stricter.groups == (("security", 2),)


def test_no_answer_from_the_candidate_is_reported_as_a_change():
    change = compare(BY_ACTION["a-read"], None)
    assert change is not None and change.outcome == "undefined"


def test_the_report_counts_changes_by_action_type_and_transition():
    report = SimulationReport("sha256:candidate")
    for decision in DECISIONS.decisions:
        answer = {"outcome": "denied"} if decision.action == "iam.role.grant" else {"outcome": decision.outcome}
        report.add(decision, compare(decision, answer))
    result = report.to_dict()
    assert result["evaluated"] == 5 and result["changed"] == 3
    assert result["by_action"]["iam.role.grant"] == {
        "evaluated": 3,
        "changed": 3,
        "transitions": {"needs_approval -> denied": 3},
    }
    assert result["by_action"]["read.table"] == {"evaluated": 1, "changed": 0, "transitions": {}}
    assert [c["action_id"] for c in result["changes"]] == ["a-grant", "a-slow", "a-lapsed"]
