"""The approval service stores facts (decision, accepted votes, when it escalated, reminders sent)
and rebuilds state from them; the rebuilt state must be the one the state machine produced live.

This is what makes the state machine's claims hold once wired: whatever order votes, escalation
and restarts come in, the desk decides on exactly the state the pure rules computed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from keyturn.approval.replay import next_sweep_at, pending_state
from keyturn.approval.store import ApprovalRow
from keyturn.bus.codec import registry
from keyturn.core import approval as rules
from keyturn.core import events
from keyturn.core.canonical import canonical_json
from keyturn.core.principal import Principal, PrincipalKind

OPENED = datetime(2026, 3, 4, 9, 0, tzinfo=UTC)
TTL_S = 600
PEOPLE = ("human:carol", "human:dave", "human:erin", "human:frank", "human:alice")
GROUPS = ("security", "db-owners", "security-oncall")
REQUESTER = Principal("agent:reporter", PrincipalKind.AGENT, ("human:alice",))
PARAMETERS = {"role": "analyst"}
DIGEST = events.Digest.of_json(PARAMETERS)


def decision(require_all: bool, mins: tuple[int, int], reminders: tuple[float, ...]) -> events.ActionDecided:
    request = events.ActionRequested(
        event_id="requested:a",
        action_id="a",
        action="iam.role.grant",
        resource="iam://staging/roles/analyst",
        parameters_json=canonical_json(PARAMETERS),
        reason="r",
        requester=REQUESTER,
        payload_digest=DIGEST,
        requested_at=OPENED,
    )
    return events.ActionDecided(
        event_id="decided:a",
        action_id="a",
        outcome=events.DecisionOutcome.NEEDS_APPROVAL,
        provenance=events.Provenance("r", "d", DIGEST, OPENED),
        decided_at=OPENED,
        request=request,
        approvals=events.ApprovalRequirement(
            groups=(events.GroupRequirement("security", mins[0]), events.GroupRequirement("db-owners", mins[1])),
            pending_ttl_s=TTL_S,
            execution_window_s=60,
            require_all=require_all,
            escalation_group="security-oncall",
            reminder_fractions=reminders,
        ),
    )


votes = st.lists(
    st.tuples(
        st.sampled_from(PEOPLE),
        st.sampled_from(("approve", "approve", "deny")),
        st.frozensets(st.sampled_from(GROUPS), max_size=3),
        st.integers(min_value=1, max_value=TTL_S - 1),
        st.booleans(),  # shown the right digest?
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(
    votes=votes,
    require_all=st.booleans(),
    mins=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    escalation_at=st.none() | st.integers(min_value=TTL_S // 2, max_value=TTL_S - 1),
    reminders=st.sampled_from(((), (0.5,), (0.2, 0.8))),
)
def test_replaying_stored_facts_rebuilds_the_state_the_rules_produced(
    votes, require_all, mins, escalation_at, reminders
) -> None:
    decided = decision(require_all, mins, reminders)
    live = rules.open_approval(
        "a", REQUESTER, DIGEST, rules.approval_policy(decided.approvals), OPENED, action="iam.role.grant"
    )
    accepted: list[bytes] = []
    escalated_at = None
    for approver, choice, counts_for, second, right_digest in sorted(votes, key=lambda v: v[3]):
        at = OPENED + timedelta(seconds=second)
        if escalation_at is not None and escalated_at is None and at > OPENED + timedelta(seconds=escalation_at + 0.5):
            moment = OPENED + timedelta(seconds=escalation_at + 0.5)
            if (escalated := rules.escalate_if_due(live, moment)) is not None:
                live, escalated_at = escalated, moment
        vote = events.Vote(
            approver=Principal(approver, PrincipalKind.HUMAN),
            choice=events.VoteChoice(choice),
            counts_for=tuple(sorted(counts_for)),
            cast_at=at,
            payload_digest=DIGEST if right_digest else events.Digest("0" * 64),
            channel="slack",
        )
        outcome = rules.cast_vote(live, vote, at)
        if outcome.accepted:
            live = outcome.state
            accepted.append(
                registry().encode_event(
                    events.VoteRecorded(
                        event_id=f"v{len(accepted)}", action_id="a", accepted=True, recorded_at=at, vote=vote
                    )
                )
            )
    if escalation_at is not None and escalated_at is None and live.status == "pending":
        moment = OPENED + timedelta(seconds=escalation_at + 0.5)
        if (escalated := rules.escalate_if_due(live, moment)) is not None:
            live, escalated_at = escalated, moment
    sent = tuple(f for f in reminders if f <= 0.5)
    if sent and live.status == "pending":
        live = rules.mark_reminded(live, sent)

    row = ApprovalRow(
        "a",
        registry().encode_event(decided),
        live.status,
        live.resolved_at,
        tuple(accepted),
        escalated_at,
        sent if live.status == "pending" else (),
    )
    rebuilt = pending_state(decided, row)
    assert rebuilt.status == live.status
    assert rebuilt.resolved_at == live.resolved_at
    assert [v.approver.id for v in rebuilt.votes] == [v.approver.id for v in live.votes]
    assert rebuilt.escalated == live.escalated
    assert rebuilt.policy == live.policy
    assert rebuilt.reminders_sent == live.reminders_sent
    assert rules.approval_progress(rebuilt).summary == rules.approval_progress(live).summary


def test_an_expired_row_replays_as_expired_never_denied() -> None:
    decided = decision(True, (1, 1), ())
    row = ApprovalRow("a", registry().encode_event(decided), "expired", OPENED + timedelta(seconds=TTL_S), ())
    state = pending_state(decided, row)
    assert state.status == "expired" and state.resolved_at == OPENED + timedelta(seconds=TTL_S)


def test_the_next_sweep_is_the_earliest_reminder_or_escalation_still_to_come() -> None:
    decided = decision(True, (1, 1), (0.2, 0.8))
    state = rules.open_approval(
        "a", REQUESTER, DIGEST, rules.approval_policy(decided.approvals), OPENED, action="iam.role.grant"
    )
    assert next_sweep_at(state) == OPENED + timedelta(seconds=TTL_S * 0.2)
    state = rules.mark_reminded(state, (0.2,))
    assert next_sweep_at(state) == OPENED + timedelta(seconds=TTL_S * 0.5)  # the escalation
    state = rules.escalate_if_due(state, OPENED + timedelta(seconds=TTL_S * 0.5))
    assert next_sweep_at(state) == OPENED + timedelta(seconds=TTL_S * 0.8)
    assert next_sweep_at(rules.mark_reminded(state, (0.8,))) is None
    assert next_sweep_at(rules.expire_if_due(state, state.expires_at)) is None
