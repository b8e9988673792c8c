"""The executor's checks before anything runs, and how results are capped: pure rules, no I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from keyturn.core.canonical import canonical_json
from keyturn.core.events import (
    ActionDecided,
    ActionRequested,
    ApprovalRequirement,
    ApprovalResolved,
    DecisionOutcome,
    Digest,
    GroupRequirement,
    Provenance,
    ResolutionOutcome,
    Vote,
    VoteChoice,
    payload_digest,
)
from keyturn.core.execution import (
    ExecutionOrder,
    capped_result,
    order_from,
    refusal_reason,
    result_mask_fields,
)
from keyturn.core.principal import Principal, PrincipalKind

NOW = datetime(2025, 3, 4, 9, 0, tzinfo=UTC)
PARAMETERS = {"statement": "SELECT * FROM orders", "max_rows": 10}
REPORTER = Principal("agent:reporter", PrincipalKind.AGENT, ("human:alice",))
FRANK = Principal("human:frank", PrincipalKind.HUMAN)


def request(parameters: dict = PARAMETERS) -> ActionRequested:
    return ActionRequested(
        event_id="requested:a1",
        action_id="a1",
        action="sql.query",
        resource="postgres://staging/analytics",
        parameters_json=canonical_json(parameters),
        reason="test",
        requester=REPORTER,
        payload_digest=payload_digest("sql.query", "postgres://staging/analytics", parameters),
        requested_at=NOW,
    )


def decided(outcome: DecisionOutcome = DecisionOutcome.ALLOWED, parameters: dict = PARAMETERS) -> ActionDecided:
    approvals = (
        ApprovalRequirement((GroupRequirement("db-owners"),), 3600, 900)
        if outcome is DecisionOutcome.NEEDS_APPROVAL
        else None
    )
    return ActionDecided(
        event_id="decided:a1",
        action_id="a1",
        outcome=outcome,
        provenance=Provenance("rev", "dec", Digest("0" * 64), NOW),
        decided_at=NOW,
        request=request(parameters),
        approvals=approvals,
        credential_ttl_s=300,
    )


def approved(
    *,
    votes_digest: Digest | None = None,
    resolved_at: datetime = NOW,
    outcome: ResolutionOutcome = ResolutionOutcome.APPROVED,
    votes: tuple[Vote, ...] | None = None,
) -> ApprovalResolved:
    decision = decided(DecisionOutcome.NEEDS_APPROVAL)
    digest = votes_digest or decision.request.payload_digest
    if votes is None:
        votes = (Vote(FRANK, VoteChoice.APPROVE, digest, resolved_at, counts_for=("db-owners",)),)
    return ApprovalResolved("resolved:a1", "a1", outcome, resolved_at, decision, votes)


def test_an_allowed_decision_may_run_with_the_decided_parameters() -> None:
    order = order_from(decided())
    assert order is not None
    assert refusal_reason(order, NOW, PARAMETERS) is None


def test_denied_and_pending_decisions_are_no_orders() -> None:
    assert order_from(decided(DecisionOutcome.DENIED)) is None
    assert order_from(decided(DecisionOutcome.NEEDS_APPROVAL)) is None
    assert order_from(approved(outcome=ResolutionOutcome.EXPIRED)) is None


def test_a_decision_that_was_not_allowed_is_refused_even_if_it_arrives_as_an_order() -> None:
    reason = refusal_reason(ExecutionOrder(decided(DecisionOutcome.DENIED)), NOW, PARAMETERS)
    assert reason == "not allowed: the decision was denied"


def test_an_approved_action_runs_inside_its_window() -> None:
    order = order_from(approved())
    assert refusal_reason(order, NOW + timedelta(seconds=899), PARAMETERS) is None


def test_an_approved_action_is_refused_after_the_execution_window() -> None:
    order = order_from(approved())
    reason = refusal_reason(order, NOW + timedelta(seconds=901), PARAMETERS)
    assert reason is not None and reason.startswith("execution window closed at 2025-03-04T09:15:00")
    assert "submit the action again" in reason


def test_the_window_the_approval_service_computed_wins() -> None:
    order = order_from(replace(approved(), execute_before=NOW + timedelta(seconds=10)))
    assert refusal_reason(order, NOW + timedelta(seconds=11), PARAMETERS).startswith("execution window closed")


def test_a_vote_cast_on_other_parameters_is_drift() -> None:
    order = order_from(approved(votes_digest=Digest("f" * 64)))
    assert (
        refusal_reason(order, NOW, PARAMETERS) == "parameters drifted: human:frank approved a different payload digest"
    )


def test_an_approval_without_an_approving_vote_is_refused() -> None:
    order = order_from(approved(votes=()))
    assert refusal_reason(order, NOW, PARAMETERS) == "not approved: the resolution carries no approving vote"


def test_parameters_that_do_not_hash_to_the_approved_digest_are_refused() -> None:
    order = order_from(approved())
    tampered = {**PARAMETERS, "statement": "DELETE FROM orders"}
    reason = refusal_reason(order, NOW, tampered)
    assert reason.startswith("parameters drifted: the parameters to execute hash to sha256:")
    assert "nothing was run" in reason


def test_a_large_result_becomes_a_row_count_and_the_first_rows() -> None:
    rows = [{"id": n} for n in range(120)]
    assert capped_result({"row_count": 120, "rows": rows}, 50) == {
        "row_count": 120,
        "rows": rows[:50],
        "truncated": True,
    }


def test_a_small_result_is_kept_whole_and_says_so() -> None:
    assert capped_result({"row_count": 2, "rows": [{"id": 1}, {"id": 2}]}, 50) == {
        "row_count": 2,
        "rows": [{"id": 1}, {"id": 2}],
        "truncated": False,
    }


def test_a_row_count_larger_than_the_rows_sent_marks_the_result_truncated() -> None:
    assert capped_result({"row_count": 900, "rows": [{"id": 1}]}, 50)["truncated"] is True


def test_lists_and_http_bodies_are_capped_too() -> None:
    assert capped_result(list(range(5)), 2) == {"row_count": 5, "rows": [0, 1], "truncated": True}
    capped = capped_result({"status": 200, "body": list(range(5))}, 3)
    assert capped == {"status": 200, "body": {"row_count": 5, "rows": [0, 1, 2], "truncated": True}}


def test_results_without_rows_are_left_as_they_are() -> None:
    assert capped_result({"row_count": 3}, 1) == {"row_count": 3}
    assert capped_result("done", 1) == "done"


def test_mask_paths_for_parameters_apply_to_result_fields_and_rows() -> None:
    fields = result_mask_fields(("parameters.password", "parameters.headers.cookie"))
    assert "password" in fields and "rows.password" in fields and "body.headers.cookie" in fields
