"""Approval handlers: open a pending approval, take a vote, remind, escalate, expire.

Each handler locks the approval row, rebuilds its state through the pure state machine in
``keyturn.core.approval``, and writes what follows from it in one transaction: events for
Kafka, chat notifications and the requester's webhook, each into its own outbox.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from keyturn.approval import channels as kinds
from keyturn.approval.channels import ChatTargets
from keyturn.approval.store import ApprovalRow, ApprovalStore
from keyturn.approval.views import approval_view, break_glass_view
from keyturn.bus.codec import registry
from keyturn.bus.refusals import refusal_letter
from keyturn.masking.protect import mask_text
from keyturn.bus.topics import Topics
from keyturn.core import approval as rules
from keyturn.core import events
from keyturn.core.canonical import canonical_json
from keyturn.core.events import (
    ActionDecided,
    ActionExecuted,
    ApprovalResolved,
    DecisionOutcome,
    Digest,
    ResolutionOutcome,
    VoteRecorded,
)
from keyturn.core.principal import Principal
from keyturn.faults import DATABASE_UNAVAILABLE, until_done
from keyturn.policy.decisions import policy_input
from keyturn.policy.opa import OpaClient, PolicyAnswerInvalid, PolicyUnavailable

log = logging.getLogger(__name__)

TERMINAL_STATES = frozenset({"denied", "expired", "succeeded", "failed", "outcome_unknown"})

# How many decisions the desk remembers whether a callback was asked for (about 120 bytes each):
# enough to cover the actions between decision and execution (two minutes at the measured pace),
# so that an execution whose decision named no callback URL costs no database write. Forgetting
# one costs one harmless row; 100,000 held 12 MiB and showed as growth in the 100k-action bench.
REMEMBERED_DECISIONS = 10_000


class DeskUnavailable(RuntimeError):
    """The desk cannot take this answer now (policy engine or database unreachable). Nothing was
    recorded, and the same answer will be taken once the dependency is back: try again."""

    def __init__(self, error: str, message: str, retry_after_s: int = 10) -> None:
        super().__init__(message)
        self.error = error
        self.retry_after_s = retry_after_s


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
    """Replay the accepted votes (and the escalation, at the moment it happened) over a freshly
    opened approval; the stored status is final."""
    state = rules.open_approval(
        decided.action_id, decided.request.requester, str(decided.request.payload_digest),
        approval_policy(decided), decided.decided_at, action=decided.request.action,
    )
    escalated_at = row.escalated_at
    for encoded in row.accepted_votes:
        recorded: VoteRecorded = registry().decode_event(encoded)
        if escalated_at is not None and recorded.vote.cast_at >= escalated_at:
            state = _escalated(state, escalated_at)
        state = rules.cast_vote(state, to_rule_vote(recorded.vote), recorded.vote.cast_at).state
    if escalated_at is not None:
        state = _escalated(state, escalated_at)
    if row.reminders_sent:
        known = tuple(f for f in row.reminders_sent if f in state.policy.reminder_fractions)
        state = rules.mark_reminded(state, known)
    if row.status == "expired" and state.status == "pending":
        state = rules.expire_if_due(state, state.expires_at) or state
    return state


def _escalated(state: rules.PendingApproval, at: datetime) -> rules.PendingApproval:
    if state.escalated or state.status != "pending":
        return state
    return rules.escalate_if_due(state, at) or state


def next_sweep_at(state: rules.PendingApproval) -> datetime | None:
    """The next moment a reminder or the escalation falls due, or None when nothing is left to do."""
    if state.status != "pending":
        return None
    moments = [state.opened_at + state.policy.pending_ttl * f for f in state.policy.reminder_fractions if f not in state.reminders_sent]
    if state.policy.escalation_group and not state.escalated:
        moments.append(state.opened_at + state.policy.pending_ttl * state.policy.escalation_fraction)
    moments = [m for m in moments if m < state.expires_at]
    return min(moments) if moments else None


def opa_decision_document(decided: ActionDecided, policy: rules.ApprovalPolicy | None = None) -> dict[str, Any]:
    """The decision as the policy produced it, for ``may_approve``; once escalated, the
    escalation group is among the groups whose members may answer."""
    approvals = decided.approvals
    groups = [{"name": g.name, "min": g.min_approvals} for g in approvals.groups] if approvals else []
    if policy is not None:
        groups += [{"name": g.name, "min": g.min_approvals} for g in policy.alternatives if g.name not in {x["name"] for x in groups}]
    return {
        "outcome": decided.outcome.value,
        "reasons": list(decided.reasons),
        "approvals": {
            "groups": groups,
            "require_all": approvals.require_all,
            "pending_ttl_s": approvals.pending_ttl_s,
            "execution_window_s": approvals.execution_window_s,
            "escalation_group": approvals.escalation_group,
        } if approvals else None,
        "credential_ttl_s": decided.credential_ttl_s,
        "mask": list(decided.mask),
        "break_glass": decided.break_glass,
    }


def callback_body(action_id: str, state: str, at: datetime, summary: str, reasons: tuple[str, ...] = ()) -> str:
    """What the requester's webhook receives: the action's new state, as JSON."""
    return canonical_json({
        "action_id": action_id, "state": state, "terminal": state in TERMINAL_STATES,
        "summary": summary, "reasons": list(reasons), "at": at.isoformat(),
    })


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
    """Opens, votes on, reminds, escalates and expires approvals; every change leaves through an outbox."""

    def __init__(self, store: ApprovalStore, opa: OpaClient, topics: Topics, send: Any,
                 routes: Mapping[str, ChatTargets] | None = None) -> None:
        self.store = store
        self.opa = opa
        self.topics = topics
        self.send = send  # (topic, key, value) -> awaits the broker's ack
        self.routes = dict(routes or {})  # chat channel name -> who hears about which group
        # action id -> whether its decision named a callback URL (most recent last, bounded)
        self._callback_wanted: dict[str, bool] = {}

    async def flush(self) -> None:
        """Publish everything the outbox holds, in order."""
        while await self.store.drain_outbox(self.send):
            pass

    async def flush_after_commit(self) -> None:
        """Publish what an answer just committed; if the database drops now, the next tick of the
        clock publishes it (the outbox keeps it), so the approver is not told it failed."""
        try:
            await self.flush()
        except DATABASE_UNAVAILABLE as exc:
            log.warning("outbox not drained after an answer (the next tick will): %s", exc)

    async def recover(self) -> None:
        """After a database error: test the idle pooled connections and replace the dead ones, so
        that the next caller gets a fresh connection rather than one a restart killed."""
        try:
            await self.store.pool.check()
        except Exception as exc:  # checking is best effort; the pool also reconnects on its own
            log.warning("could not check the database connections: %s", exc)

    # --- decisions ----------------------------------------------------------------------------

    async def take_decision(self, decided: ActionDecided, encoded: bytes) -> str | None:
        """Act on a policy decision: open an approval, announce a break-glass action, and queue the
        requester's webhook. Returns what was done ("opened", "break_glass") or None (idempotent,
        or a decision the desk has nothing to do with)."""
        self._remember_callback(decided.action_id, bool(decided.request.callback_url))
        if not self.concerns(decided):
            return None  # most decisions: allowed or denied outright, nobody to tell, no row to write
        return await self._until_database_answers(f"decision for {decided.action_id}", lambda: self._take_decision(decided, encoded))

    def concerns(self, decided: ActionDecided) -> bool:
        """Whether a decision means anything to the desk: an approval to open, a break-glass action
        to announce and remember, or a webhook the requester asked for."""
        if decided.outcome is DecisionOutcome.NEEDS_APPROVAL or decided.request.callback_url:
            return True
        return decided.outcome is DecisionOutcome.ALLOWED and decided.break_glass

    async def _take_decision(self, decided: ActionDecided, encoded: bytes) -> str | None:
        async with self.store.pool.connection() as conn, conn.transaction():
            done = None
            if decided.outcome is DecisionOutcome.NEEDS_APPROVAL:
                done = "opened" if await self._open(conn, decided, encoded) else None
            elif decided.outcome is DecisionOutcome.ALLOWED and decided.break_glass:
                if await self.store.note_break_glass(conn, decided.action_id, encoded):
                    for channel, targets in self.routes.items():
                        for target in targets.every_target():
                            await self.store.enqueue_notification(conn, decided.action_id, channel, target, kinds.BREAK_GLASS)
                    done = "break_glass"
            if decided.request.callback_url:
                await self.store.set_callback_target(conn, decided.action_id, decided.request.callback_url)
                await self.store.enqueue_callback(conn, decided.action_id, decided.outcome.value, callback_body(
                    decided.action_id, decided.outcome.value, decided.decided_at,
                    "break-glass: allowed without approval, reviewed after the fact" if decided.break_glass else decided.outcome.value,
                    decided.reasons,
                ))
            return done

    async def open(self, decided: ActionDecided, encoded: bytes) -> bool:
        """Start waiting for approvers of a needs-approval decision (idempotent)."""
        return await self.take_decision(decided, encoded) == "opened"

    async def _open(self, conn: Any, decided: ActionDecided, encoded: bytes) -> bool:
        state = rules.open_approval(
            decided.action_id, decided.request.requester, str(decided.request.payload_digest),
            approval_policy(decided), decided.decided_at, action=decided.request.action,
        )
        groups = [g.name for g in state.policy.groups]
        created = await self.store.open(
            conn, decided.action_id, encoded, sorted(decided.request.requester.everyone), groups, state.opened_at, state.expires_at,
        )
        if created:
            await self.store.set_next_sweep(conn, decided.action_id, next_sweep_at(state))
            for channel, targets in self.routes.items():
                for target in targets.targets_for(groups):
                    await self.store.enqueue_notification(conn, decided.action_id, channel, target, kinds.OPENED)
        return created

    async def note_executed(self, executed: ActionExecuted) -> None:
        """Queue the requester's webhook for an execution outcome (sent once its URL is known)."""
        if self._callback_wanted.get(executed.action_id) is False:
            return  # its decision, seen here, named no callback URL: nobody to call back
        # Otherwise write the row: the decision may still be on its way (another topic), or was
        # read before a restart; a row whose action never names a URL is dropped within an hour.
        await self._until_database_answers(f"execution of {executed.action_id}", lambda: self._note_executed(executed))

    async def _note_executed(self, executed: ActionExecuted) -> None:
        async with self.store.pool.connection() as conn:
            await self.store.enqueue_callback(conn, executed.action_id, executed.outcome.value, callback_body(
                executed.action_id, executed.outcome.value, executed.finished_at, executed.outcome.value,
                (executed.error,) if executed.error else (),
            ))

    def _remember_callback(self, action_id: str, wanted: bool) -> None:
        self._callback_wanted.pop(action_id, None)
        self._callback_wanted[action_id] = wanted
        if len(self._callback_wanted) > REMEMBERED_DECISIONS:
            del self._callback_wanted[next(iter(self._callback_wanted))]

    async def _until_database_answers(self, what: str, work: Any) -> Any:
        """Run ``work`` (one transaction) until the database takes it. An event must not be dropped
        because the database restarted while it was handled; each attempt is idempotent."""
        async def attempt() -> Any:
            try:
                return await work()
            except DATABASE_UNAVAILABLE:
                await self.recover()  # the next attempt gets a live connection, not another dead one
                raise

        return await until_done(attempt, f"approval desk: handling the {what}")

    # --- votes --------------------------------------------------------------------------------

    async def counts_for(self, approver: Principal, decided: ActionDecided, policy: rules.ApprovalPolicy | None = None) -> tuple[str, ...]:
        """The required groups the policy says this approver counts for (empty when not allowed)."""
        answer = await self.opa.query("keyturn/approval", {
            "approver": {"id": approver.id, "kind": approver.kind.value, "chain": list(approver.chain)},
            "request": policy_input(decided.request),
            "decision": opa_decision_document(decided, policy),
        })
        result = answer.result if isinstance(answer.result, dict) else {}
        if not result.get("may_approve", False):
            return ()
        return tuple(sorted(str(g) for g in result.get("counts_for", ())))

    async def vote(self, action_id: str, approver: Principal, choice: str, payload_digest: str, reason: str | None, channel: str) -> VoteResult:
        """Apply one answer; refusals are recorded (and audited) and change nothing.

        Raises ``DeskUnavailable`` when the policy engine or the database cannot be reached: the
        answer is then neither accepted nor refused (nothing is recorded) and can be given again."""
        reason = mask_text(reason) if reason else reason  # a person's free text is masked like any other
        try:
            return await self._vote(action_id, approver, choice, payload_digest, reason, channel)
        except DATABASE_UNAVAILABLE as exc:
            await self.recover()
            raise DeskUnavailable("database_unavailable", "Keyturn cannot reach its database right now, so your answer was not "
                                  "recorded. Try again in a minute.") from exc

    async def _vote(self, action_id: str, approver: Principal, choice: str, payload_digest: str, reason: str | None, channel: str) -> VoteResult:
        now = datetime.now(timezone.utc)
        row = await self.store.read(action_id)
        decided = registry().decode_event(row.decided_event) if row else None
        counts_for: tuple[str, ...] = ()
        if decided is not None:
            try:
                counts_for = await self.counts_for(approver, decided, pending_state(decided, row).policy)
            except (PolicyUnavailable, PolicyAnswerInvalid) as exc:
                # Still fail closed (nobody is authorised without the policy), but do not turn an
                # outage into a refusal: "not in group" would be false, and a refused vote is
                # recorded for good. The approver is told to answer again.
                log.warning("vote by %s on %s not taken: the policy engine did not answer: %s", approver.id, action_id, exc)
                raise DeskUnavailable("policy_unavailable", f"Keyturn cannot ask its policy engine whether {approver.id} may answer "
                                      "this action right now, so your answer was not recorded. Try again in a minute.") from exc
        vote = events.Vote(
            approver=approver, choice=events.VoteChoice(choice), payload_digest=Digest.parse(payload_digest),
            cast_at=now, reason=reason, channel=channel, counts_for=counts_for,
        )
        async with self.store.pool.connection() as conn, conn.transaction():
            row = await self.store.lock(conn, action_id)
            if row is None:
                refusal = rules.UnknownAction(action_id=action_id)
                await self._record(conn, action_id, vote, None, type(refusal).__name__, str(refusal), now)
                return VoteResult(action_id, False, "unknown", "", type(refusal).__name__, str(refusal))
            state = pending_state(decided, row)
            if state.status == "pending" and (expired := rules.expire_if_due(state, now)) is not None:
                await self._resolve(conn, decided, expired, rules.approval_progress(expired).summary)
                state = expired
            outcome = rules.cast_vote(state, rules.Vote(
                approver=approver, choice=choice, payload_digest=str(vote.payload_digest), cast_at=now,
                counts_for=frozenset(counts_for), channel=channel, reason=reason,
            ), now)
            refusal_name = type(outcome.refusal).__name__ if outcome.refusal else None
            await self._record(conn, action_id, vote, outcome.accepted, refusal_name, str(outcome.refusal or ""), now)
            if outcome.resolution is not None:
                await self._resolve(conn, decided, outcome.state, outcome.progress.summary)
            elif outcome.accepted:
                await self._tell_message_holders(conn, action_id, kinds.PROGRESS, str(len(outcome.state.votes)))
            return VoteResult(action_id, outcome.accepted, outcome.state.status, outcome.progress.summary, refusal_name,
                              str(outcome.refusal or ""))

    async def refuse_answer(self, action_id: str, approver: Principal, choice: str, payload_digest: str, channel: str, refusal: str, message: str) -> VoteResult:
        """Record an answer refused before it reached the rules (e.g. an unknown chat user)."""
        now = datetime.now(timezone.utc)
        vote = events.Vote(approver=approver, choice=events.VoteChoice(choice), payload_digest=Digest.parse(payload_digest or "sha256:"),
                           cast_at=now, channel=channel)
        async with self.store.pool.connection() as conn, conn.transaction():
            known = await self.store.lock(conn, action_id) is not None
            await self._record(conn, action_id, vote, False if known else None, refusal, message, now)
        return VoteResult(action_id, False, "unknown", "", refusal, message)

    async def refuse_interaction(self, source: str, error_type: str, reason: str, payload: bytes, *,
                                 problems: tuple[str, ...] = (), principal: str | None = None) -> None:
        """Record input a channel refused before it could name a trustworthy vote (forged, stale,
        replayed, malformed) as a dead letter, so the audit sees it; the input itself is not kept."""
        letter = refusal_letter(service="approval", source_topic=source, partition=-1, offset=-1, key=None, payload=payload,
                                error_type=error_type, reason=reason, problems=problems, principal=principal)
        await self.store.record_dead_letter(self.topics.dlq, letter.event_id, registry().encode_event(letter))

    # --- the clock ----------------------------------------------------------------------------

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

    async def remind_and_escalate(self, now: datetime | None = None) -> int:
        """Queue due reminders and escalations for pending approvals; returns how many changed."""
        now = now or datetime.now(timezone.utc)
        changed = 0
        for action_id in await self.store.due_for_sweep(now):
            async with self.store.pool.connection() as conn, conn.transaction():
                row = await self.store.lock(conn, action_id)
                if row is None or row.status != "pending":
                    continue
                decided = registry().decode_event(row.decided_event)
                state = pending_state(decided, row)
                if due := rules.reminders_due(state, now):
                    # several may be due at once (after a restart): one reminder, all marked
                    await self._tell_message_holders(conn, action_id, kinds.REMINDER, f"{max(due):g}")
                    await self.store.mark_reminded(conn, action_id, rules.mark_reminded(state, due).reminders_sent)
                    changed += 1
                if (escalated := rules.escalate_if_due(state, now)) is not None:
                    await self.store.mark_escalated(conn, action_id, now)
                    group = state.policy.escalation_group
                    for channel, targets in self.routes.items():
                        for target in targets.targets_for([group]):
                            await self.store.enqueue_notification(conn, action_id, channel, target, kinds.ESCALATED)
                    if escalated.status == "approved":
                        await self._resolve(conn, decided, escalated, rules.approval_progress(escalated).summary)
                    changed += 1
                after = await self.store.lock(conn, action_id)
                await self.store.set_next_sweep(conn, action_id, next_sweep_at(pending_state(decided, after)))
        return changed

    # --- reading ------------------------------------------------------------------------------

    async def view(self, action_id: str) -> dict[str, Any] | None:
        """What approvers see of the action now (approval or break-glass), or None if unknown here."""
        row = await self.store.read(action_id)
        if row is not None:
            decided = registry().decode_event(row.decided_event)
            return approval_view(decided, pending_state(decided, row))
        encoded = await self.store.break_glass_decision(action_id)
        return break_glass_view(registry().decode_event(encoded)) if encoded else None

    # --- private ------------------------------------------------------------------------------

    async def _tell_message_holders(self, conn: Any, action_id: str, kind: str, occasion: str) -> None:
        for channel, target in await self.store.message_targets(conn, action_id):
            await self.store.enqueue_notification(conn, action_id, channel, target, kind, occasion)

    async def _record(self, conn: Any, action_id: str, vote: events.Vote, accepted: bool | None, refusal: str | None, message: str, now: datetime) -> None:
        recorded = VoteRecorded(
            event_id=f"vote:{action_id}:{uuid.uuid4()}", action_id=action_id, vote=vote, accepted=bool(accepted),
            recorded_at=now, refusal=refusal, message=message,
        )
        encoded = registry().encode_event(recorded)
        if accepted is not None:
            await self.store.record_vote(conn, action_id, bool(accepted), encoded)
        await self.store.enqueue(conn, self.topics.votes, action_id, encoded)

    async def _resolve(self, conn: Any, decided: ActionDecided, state: rules.PendingApproval, summary: str) -> None:
        resolution = rules.resolution_of(state)
        execute_before = rules.execution_deadline(resolution, state.policy) if resolution.status == "approved" else None
        summary = summary if resolution.status != "expired" else (resolution.reason or summary)
        resolved = ApprovalResolved(
            event_id=f"resolved:{decided.action_id}",
            action_id=decided.action_id,
            outcome=ResolutionOutcome(resolution.status),
            resolved_at=resolution.at,
            decision=decided,
            votes=tuple(_event_vote(v) for v in resolution.votes),
            summary=summary,
            execute_before=execute_before,
        )
        await self.store.resolve(conn, decided.action_id, resolution.status, resolution.at)
        await self.store.enqueue(conn, self.topics.resolved, decided.action_id, registry().encode_event(resolved))
        await self._tell_message_holders(conn, decided.action_id, kinds.RESOLVED, "")
        if decided.request.callback_url:
            await self.store.enqueue_callback(conn, decided.action_id, resolution.status, callback_body(
                decided.action_id, resolution.status, resolution.at, summary,
            ))


def _event_vote(vote: rules.Vote) -> events.Vote:
    return events.Vote(
        approver=vote.approver, choice=events.VoteChoice(vote.choice), payload_digest=events.Digest.parse(vote.payload_digest),
        cast_at=vote.cast_at, reason=vote.reason, channel=vote.channel, counts_for=tuple(sorted(vote.counts_for)),
    )


def needs_approval(decided: ActionDecided) -> bool:
    return decided.outcome is DecisionOutcome.NEEDS_APPROVAL
