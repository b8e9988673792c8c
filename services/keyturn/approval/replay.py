"""The approval state rebuilt from what the store keeps: the decision, the accepted votes, the
moment it escalated and the reminders sent, replayed through the pure rules in
``keyturn.core.approval``. The stored status is final; nothing else is state of its own."""

from __future__ import annotations

import dataclasses
from datetime import datetime

from keyturn.approval.store import ApprovalRow
from keyturn.bus.codec import registry
from keyturn.core import approval as rules
from keyturn.core.events import ActionDecided, VoteRecorded


def opened_state(decided: ActionDecided) -> rules.PendingApproval:
    """The approval as it opens on a needs-approval decision, before anyone answered."""
    if decided.approvals is None:
        raise ValueError(f"decision for {decided.action_id} needs approval but names no approvers")
    return rules.open_approval(
        decided.action_id,
        decided.request.requester,
        decided.request.payload_digest,
        rules.approval_policy(decided.approvals),
        decided.decided_at,
        action=decided.request.action,
    )


def pending_state(decided: ActionDecided, row: ApprovalRow) -> rules.PendingApproval:
    """Replay the accepted votes (and the escalation, at the moment it happened) over a freshly
    opened approval; the stored status is final."""
    state = opened_state(decided)
    escalated_at = row.escalated_at
    for encoded in row.accepted_votes:
        recorded: VoteRecorded = registry().decode_event(encoded)
        if escalated_at is not None and recorded.vote.cast_at >= escalated_at:
            state = _escalated(state, escalated_at)
        state = rules.cast_vote(state, recorded.vote, recorded.vote.cast_at).state
    if escalated_at is not None:
        state = _escalated(state, escalated_at)
    if row.reminders_sent:
        known = tuple(f for f in row.reminders_sent if f in state.policy.reminder_fractions)
        state = rules.mark_reminded(state, known)
    if row.status == "expired" and state.status == "pending":
        state = rules.expire_if_due(state, state.expires_at) or state
    if row.status == "denied" and state.status == "pending":
        # closed by the service itself, with no vote to replay: an approval that could not be
        # taken in ends denied (ApprovalDesk.end_failed), and stays so
        state = dataclasses.replace(state, status="denied", resolved_at=row.resolved_at or state.opened_at)
    return state


def _escalated(state: rules.PendingApproval, at: datetime) -> rules.PendingApproval:
    if state.escalated or state.status != "pending":
        return state
    return rules.escalate_if_due(state, at) or state


def next_sweep_at(state: rules.PendingApproval) -> datetime | None:
    """The next moment a reminder or the escalation falls due, or None when nothing is left to do."""
    if state.status != "pending":
        return None
    moments = [
        state.opened_at + state.policy.pending_ttl * f
        for f in state.policy.reminder_fractions
        if f not in state.reminders_sent
    ]
    if state.policy.escalation_group and not state.escalated:
        moments.append(state.opened_at + state.policy.pending_ttl * state.policy.escalation_fraction)
    moments = [m for m in moments if m < state.expires_at]
    return min(moments) if moments else None
