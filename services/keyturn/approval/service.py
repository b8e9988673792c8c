"""Approval handlers: open a pending approval, take a vote, expire what lapsed.

Each handler locks the approval row, rebuilds its state through the pure state machine in
``keyturn.core.approval``, and writes the resulting events to the outbox in one transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from keyturn.bus.codec import registry
from keyturn.bus.topics import Topics
from keyturn.core import approval as rules
from keyturn.core import events
from keyturn.core.events import ActionDecided, ApprovalResolved, DecisionOutcome, ResolutionOutcome, VoteRecorded
from keyturn.core.principal import Principal
from keyturn.policy.decisions import policy_input
from keyturn.policy.opa import OpaClient, PolicyAnswerInvalid, PolicyUnavailable
from keyturn.approval.store import ApprovalRow, ApprovalStore


def approval_policy(decided: ActionDecided) -> rules.ApprovalPolicy:
    """The state machine's policy from the decision's approval requirement."""
    spec = decided.approvals
    if spec is None:
        raise ValueError(f"decision for {decided.action_id} needs approval but names no approvers")
    return rules.ApprovalPolicy(
        groups=tuple(rules.GroupRequirement(g.name, g.min_approvals) for g in spec.groups),
        require_all=spec.require_all,
        pending_ttl=timedelta(seconds=spec.pending_ttl_s),
        execution_window=timedelta(seconds=spec.execution_window_s),
        escalation_group=spec.escalation_group,
        reminder_fractions=spec.reminder_fractions,
    )


def to_rule_vote(vote: events.Vote) -> rules.Vote:
    return rules.Vote(
        approver=vote.approver, choice=vote.choice.value, payload_digest=str(vote.payload_digest),
        cast_at=vote.cast_at, counts_for=frozenset(vote.counts_for), channel=vote.channel, reason=vote.reason,
    )


def pending_state(decided: ActionDecided, row: ApprovalRow) -> rules.PendingApproval:
    """Replay the accepted votes over a freshly opened approval; the stored status is final."""
    state = rules.open_approval(
        decided.action_id, decided.request.requester, str(decided.request.payload_digest),
        approval_policy(decided), decided.decided_at, action=decided.request.action,
    )
    for encoded in row.accepted_votes:
        recorded: VoteRecorded = registry().decode_event(encoded)
        state = rules.cast_vote(state, to_rule_vote(recorded.vote), recorded.vote.cast_at).state
    if row.status == "expired" and state.status == "pending":
        state = rules.expire_if_due(state, state.expires_at) or state
    return state


def opa_decision_document(decided: ActionDecided) -> dict[str, Any]:
    """The decision as the policy produced it, for ``may_approve``."""
    approvals = decided.approvals
    return {
        "outcome": decided.outcome.value,
        "reasons": list(decided.reasons),
        "approvals": {
            "groups": [{"name": g.name, "min": g.min_approvals} for g in approvals.groups],
            "require_all": approvals.require_all,
            "pending_ttl_s": approvals.pending_ttl_s,
            "execution_window_s": approvals.execution_window_s,
            "escalation_group": approvals.escalation_group,
        } if approvals else None,
        "credential_ttl_s": decided.credential_ttl_s,
        "mask": list(decided.mask),
        "break_glass": decided.break_glass,
    }


@dataclass(frozen=True)
class VoteResult:
    """What the approver is told: accepted or refused (with the refusal class and message)."""

    action_id: str
    accepted: bool
    status: str
    summary: str
    refusal: str | None = None
    message: str = ""


class ApprovalDesk:
    """Opens, votes on and expires approvals; every change leaves through the outbox."""

    def __init__(self, store: ApprovalStore, opa: OpaClient, topics: Topics, send: Any) -> None:
        self.store = store
        self.opa = opa
        self.topics = topics
        self.send = send  # (topic, key, value) -> awaits the broker's ack

    async def flush(self) -> None:
        """Publish everything the outbox holds, in order."""
        while await self.store.drain_outbox(self.send):
            pass

    async def open(self, decided: ActionDecided, encoded: bytes) -> bool:
        """Start waiting for approvers of a needs-approval decision (idempotent)."""
        state = rules.open_approval(
            decided.action_id, decided.request.requester, str(decided.request.payload_digest),
            approval_policy(decided), decided.decided_at, action=decided.request.action,
        )
        return await self.store.open(
            decided.action_id, encoded, sorted(decided.request.requester.everyone),
            [g.name for g in state.policy.groups], state.opened_at, state.expires_at,
        )

    async def counts_for(self, approver: Principal, decided: ActionDecided) -> tuple[str, ...]:
        """The required groups the policy says this approver counts for (empty when not allowed)."""
        answer = await self.opa.query("keyturn/approval", {
            "approver": {"id": approver.id, "kind": approver.kind.value, "chain": list(approver.chain)},
            "request": policy_input(decided.request),
            "decision": opa_decision_document(decided),
        })
        result = answer.result if isinstance(answer.result, dict) else {}
        if not result.get("may_approve", False):
            return ()
        return tuple(sorted(str(g) for g in result.get("counts_for", ())))

    async def vote(self, action_id: str, approver: Principal, choice: str, payload_digest: str, reason: str | None, channel: str) -> VoteResult:
        """Apply one answer; refusals are recorded (and audited) and change nothing."""
        now = datetime.now(timezone.utc)
        row = await self.store.read(action_id)
        decided = registry().decode_event(row.decided_event) if row else None
        counts_for: tuple[str, ...] = ()
        if decided is not None:
            try:
                counts_for = await self.counts_for(approver, decided)
            except (PolicyUnavailable, PolicyAnswerInvalid):
                counts_for = ()  # fail closed: without the policy nobody is authorised
        vote = events.Vote(
            approver=approver, choice=events.VoteChoice(choice), payload_digest=events.Digest.parse(payload_digest),
            cast_at=now, reason=reason, channel=channel, counts_for=counts_for,
        )
        async with self.store.pool.connection() as conn, conn.transaction():
            row = await self.store.lock(conn, action_id)
            if row is None:
                refusal = rules.UnknownAction(action_id=action_id)
                await self._record(conn, action_id, vote, None, refusal, now)
                return VoteResult(action_id, False, "unknown", "", type(refusal).__name__, str(refusal))
            state = pending_state(decided, row)
            if state.status == "pending" and (expired := rules.expire_if_due(state, now)) is not None:
                await self._resolve(conn, decided, expired, rules.approval_progress(expired).summary)
                state = expired
            outcome = rules.cast_vote(state, rules.Vote(
                approver=approver, choice=choice, payload_digest=str(vote.payload_digest), cast_at=now,
                counts_for=frozenset(counts_for), channel=channel, reason=reason,
            ), now)
            await self._record(conn, action_id, vote, outcome.accepted, outcome.refusal, now)
            if outcome.resolution is not None:
                await self._resolve(conn, decided, outcome.state, outcome.progress.summary)
            return VoteResult(
                action_id, outcome.accepted, outcome.state.status, outcome.progress.summary,
                type(outcome.refusal).__name__ if outcome.refusal else None, str(outcome.refusal) if outcome.refusal else "",
            )

    async def expire_due(self) -> int:
        """Expire every pending approval whose TTL ran out; returns how many."""
        now = datetime.now(timezone.utc)
        expired = 0
        for action_id in await self.store.due_for_expiry(now):
            async with self.store.pool.connection() as conn, conn.transaction():
                row = await self.store.lock(conn, action_id)
                if row is None or row.status != "pending":
                    continue
                decided = registry().decode_event(row.decided_event)
                state = rules.expire_if_due(pending_state(decided, row), now)
                if state is not None:
                    await self._resolve(conn, decided, state, rules.approval_progress(state).summary)
                    expired += 1
        return expired

    async def _record(self, conn: Any, action_id: str, vote: events.Vote, accepted: bool | None, refusal: Exception | None, now: datetime) -> None:
        recorded = VoteRecorded(
            event_id=f"vote:{action_id}:{uuid.uuid4()}", action_id=action_id, vote=vote, accepted=bool(accepted),
            recorded_at=now, refusal=type(refusal).__name__ if refusal else None, message=str(refusal) if refusal else "",
        )
        encoded = registry().encode_event(recorded)
        if accepted is not None:
            await self.store.record_vote(conn, action_id, bool(accepted), encoded)
        await self.store.enqueue(conn, self.topics.votes, action_id, encoded)

    async def _resolve(self, conn: Any, decided: ActionDecided, state: rules.PendingApproval, summary: str) -> None:
        resolution = rules.resolution_of(state)
        execute_before = rules.execution_deadline(resolution, state.policy) if resolution.status == "approved" else None
        resolved = ApprovalResolved(
            event_id=f"resolved:{decided.action_id}",
            action_id=decided.action_id,
            outcome=ResolutionOutcome(resolution.status),
            resolved_at=resolution.at,
            decision=decided,
            votes=tuple(_event_vote(v) for v in resolution.votes),
            summary=summary if resolution.status != "expired" else (resolution.reason or summary),
            execute_before=execute_before,
        )
        await self.store.resolve(conn, decided.action_id, resolution.status, resolution.at)
        await self.store.enqueue(conn, self.topics.resolved, decided.action_id, registry().encode_event(resolved))


def _event_vote(vote: rules.Vote) -> events.Vote:
    return events.Vote(
        approver=vote.approver, choice=events.VoteChoice(vote.choice), payload_digest=events.Digest.parse(vote.payload_digest),
        cast_at=vote.cast_at, reason=vote.reason, channel=vote.channel, counts_for=tuple(sorted(vote.counts_for)),
    )


def needs_approval(decided: ActionDecided) -> bool:
    return decided.outcome is DecisionOutcome.NEEDS_APPROVAL
