"""The approval desk: open a pending approval, take a vote, remind, escalate, expire.

Each public operation is one or more units of work (``unit_of_work``): a transaction that locks
the approval row, rebuilds its state through the pure rules in ``keyturn.core.approval``
(``replay.pending_state``), and writes what follows from it: events for Kafka, chat
notifications and the requester's webhook, each into its own outbox. Once a unit committed, the
events it queued are published; if that fails, they stay queued for the clock's next flush. No
caller has to remember to publish.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from keyturn.approval import channels as kinds
from keyturn.approval.callbacks import callback_body
from keyturn.approval.channels import ChatTargets
from keyturn.approval.ports import DeskStore, PolicyEngine, Publish, PublishAll
from keyturn.approval.replay import next_sweep_at, opened_state, pending_state
from keyturn.approval.store import OpeningApproval
from keyturn.approval.views import approval_view, break_glass_view
from keyturn.bus.codec import registry
from keyturn.bus.refusals import masked_line, refusal_letter
from keyturn.bus.topics import Topics
from keyturn.core import approval as rules
from keyturn.core.catalog import ExecutionModes
from keyturn.core.events import (
    ActionDecided,
    ActionExecuted,
    ApprovalResolved,
    DecisionOutcome,
    Digest,
    ResolutionOutcome,
    Vote,
    VoteChoice,
    VoteRecorded,
)
from keyturn.core.principal import Principal
from keyturn.faults import DATABASE_UNAVAILABLE, until_done
from keyturn.masking.protect import mask_text
from keyturn.policy.decisions import policy_input
from keyturn.policy.opa import PolicyAnswerInvalid, PolicyUnavailable

log = logging.getLogger(__name__)

# How many decisions the desk remembers whether a callback was asked for (about 120 bytes each):
# enough to cover the actions between decision and execution (two minutes at the measured pace),
# so that an execution whose decision named no callback URL costs no database write. Forgetting
# one costs one harmless row; 100,000 held 12 MiB and showed as growth in the 100k-action bench.
REMEMBERED_DECISIONS = 10_000

# Where the policy's data names every approver group and its members (OPA: data.keyturn.groups).
GROUPS_PATH = "keyturn/groups"

# How long an approver is asked to wait when the approval has not opened yet. A decision reaches
# the desk well within a second of the intake answering ``needs_approval``.
NOT_OPEN_RETRY_AFTER_S = 1

# What a page says instead of its buttons to someone signed in with a token acting for another
# (``rules.acts_for_another``); an answer would be refused ``DelegatedVoteRefused``.
ACTING_FOR_ANOTHER = (
    "You are signed in acting for someone else, and a vote is a person's own; sign in with a token of your own."
)


class DeskUnavailable(RuntimeError):
    """The desk cannot take this answer now (policy engine or database unreachable). Nothing was
    recorded, and the same answer will be taken once the dependency is back: try again."""

    status = 503

    def __init__(self, error: str, message: str, retry_after_s: int = 10) -> None:
        super().__init__(message)
        self.error = error
        self.retry_after_s = retry_after_s


class ApprovalNotOpenYet(DeskUnavailable):
    """An answer (or a look) on an action whose approval has not opened: its decision is still on
    its way to the desk, or the id is wrong. Nothing was refused and nothing was recorded; the
    same answer is taken once the approval is open (HTTP 425 with ``Retry-After``)."""

    status = 425

    def __init__(self, action_id: str) -> None:
        super().__init__(
            "not_open_yet",
            f"the approval for action {action_id} is not open yet (its decision may still be on its way); "
            f"nothing was recorded. Retry after {NOT_OPEN_RETRY_AFTER_S} s, and check the action id if it stays so",
            NOT_OPEN_RETRY_AFTER_S,
        )
        self.action_id = action_id


@dataclass(frozen=True)
class VoteResult:
    """What the approver is told: accepted or refused (with the refusal class and message)."""

    action_id: str
    accepted: bool
    status: str
    summary: str
    refusal: str | None = None
    message: str = ""


@dataclass
class UnitOfWork:
    """One transaction of the desk (``conn``) and how many Kafka events it queued."""

    conn: Any
    queued: int = field(default=0)


def opa_decision_document(decided: ActionDecided, policy: rules.ApprovalPolicy | None = None) -> dict[str, Any]:
    """The decision as the policy produced it, for ``may_approve``; once escalated, the
    escalation group is among the groups whose members may answer."""
    approvals = decided.approvals
    groups = [{"name": g.name, "min": g.min_approvals} for g in approvals.groups] if approvals else []
    if policy is not None:
        groups += [
            {"name": g.name, "min": g.min_approvals}
            for g in policy.alternatives
            if g.name not in {x["name"] for x in groups}
        ]
    return {
        "outcome": decided.outcome.value,
        "reasons": list(decided.reasons),
        "approvals": {
            "groups": groups,
            "require_all": approvals.require_all,
            "pending_ttl_s": approvals.pending_ttl_s,
            "execution_window_s": approvals.execution_window_s,
            "escalation_group": approvals.escalation_group,
        }
        if approvals
        else None,
        "credential_ttl_s": decided.credential_ttl_s,
        "mask": list(decided.mask),
        "break_glass": decided.break_glass,
    }


class ApprovalDesk:
    """Opens, votes on, reminds, escalates and expires approvals; every change leaves through an outbox."""

    def __init__(
        self,
        store: DeskStore,
        opa: PolicyEngine,
        topics: Topics,
        send: Publish,
        routes: Mapping[str, ChatTargets] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        load_execution_modes: Callable[[], Awaitable[ExecutionModes]] | None = None,
        send_all: PublishAll | None = None,
    ) -> None:
        self.store = store
        # how the catalog carries actions out, so every channel says "performed outside Keyturn" for external ones
        self.load_execution_modes = load_execution_modes
        self._modes: tuple[float, ExecutionModes] | None = None
        self.send_all = send_all  # the outbox's rows sent together, then acknowledged (None: one by one)
        self.opa = opa
        self.topics = topics
        self.send = send  # (topic, key, value) -> awaits the broker's ack
        self.routes = dict(routes or {})  # chat channel name -> who hears about which group
        self.clock = clock
        # action id -> whether its decision named a callback URL (most recent last, bounded)
        self._callback_wanted: dict[str, bool] = {}

    # --- units of work and the outbox ---------------------------------------------------------

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[UnitOfWork]:
        """One transaction. The events queued in it (``_publish``) commit with the state change
        that caused them; once it committed, they are published. Nothing is published when the
        unit fails (nothing was committed)."""
        async with self.store.transaction() as conn:
            unit = UnitOfWork(conn)
            yield unit
        if unit.queued:
            await self._flush_after_commit()

    async def flush(self) -> None:
        """Publish everything the outbox holds, in order (the clock calls this every tick)."""
        if self.send_all is not None:
            while await self.store.drain_outbox(self.send, publish_all=self.send_all):
                pass
            return
        while await self.store.drain_outbox(self.send):
            pass

    async def _flush_after_commit(self) -> None:
        """Publish what a unit just committed; if the database drops now, the next tick of the
        clock publishes it (the outbox keeps it), so the approver is not told it failed."""
        try:
            await self.flush()
        except Exception as exc:  # the database or the broker away: committed is committed, the clock publishes it
            log.warning("outbox not drained after a commit (the next tick will): %s: %s", type(exc).__name__, exc)

    async def _publish(self, unit: UnitOfWork, topic: str, key: str, value: bytes) -> None:
        await self.store.enqueue(unit.conn, topic, key, value)
        unit.queued += 1

    async def recover(self) -> None:
        """After a database error: test the idle pooled connections and replace the dead ones, so
        that the next caller gets a fresh connection rather than one a restart killed."""
        try:
            await self.store.check()
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
        return await self._until_database_answers(
            f"decision for {decided.action_id}", lambda: self._take_decision(decided, encoded)
        )

    async def end_failed(self, event: Any, message: Any, exc: Exception) -> None:
        """The consumption loop's hook when taking an event failed for good (``bus.loop``).

        An approval that could not be opened can never be answered: the action ends ``denied``
        with ``approval_error`` instead of staying open for ever, and its approval is recorded
        closed (denied), so a later delivery of the same decision opens nothing and no answer
        can follow the denial. An approval that did open goes on as usual, and an execution (the
        action is already over) needs no ending."""
        if not isinstance(event, ActionDecided) or event.outcome is not DecisionOutcome.NEEDS_APPROVAL:
            return
        if await self.store.read(event.action_id) is not None:
            return
        resolved = ApprovalResolved(
            event_id=f"resolved:{event.action_id}",
            action_id=event.action_id,
            outcome=ResolutionOutcome.DENIED,
            resolved_at=self.clock(),
            decision=event,
            summary=masked_line(
                f"approval_error: the approval service failed on this action ({type(exc).__name__}: {exc}); "
                "nobody could answer it, so it ends denied; submit it again"
            ),
        )
        log.warning("denied %s: %s", event.action_id, resolved.summary)
        encoded = bytes(message.value) if getattr(message, "value", None) else registry().encode_event(event)
        try:  # the decision may be what broke the handler: then no row can be built from it either
            closed = self._opening(event, encoded)
        except Exception as why:
            log.warning("no approval row for %s (%s); its denial is published all the same", event.action_id, why)
            closed = None
        async with self.unit_of_work() as unit:
            if closed is not None and await self.store.open_many(unit.conn, [closed]):
                await self.store.resolve(
                    unit.conn, event.action_id, ResolutionOutcome.DENIED.value, resolved.resolved_at
                )
            await self._publish(unit, self.topics.resolved, event.action_id, registry().encode_event(resolved))

    def concerns(self, decided: ActionDecided) -> bool:
        """Whether a decision means anything to the desk: an approval to open, a break-glass action
        to announce and remember, or a webhook the requester asked for."""
        if decided.outcome is DecisionOutcome.NEEDS_APPROVAL or decided.request.callback_url:
            return True
        return decided.outcome is DecisionOutcome.ALLOWED and decided.break_glass

    async def take_decisions(self, decisions: list[tuple[ActionDecided, bytes]]) -> dict[str, str]:
        """``take_decision`` for a batch, in one transaction: the approvals it opens are one
        statement. Returns what was done per action id (only those something was done for)."""
        for decided, _ in decisions:
            self._remember_callback(decided.action_id, bool(decided.request.callback_url))
        concerned = list({d.action_id: (d, e) for d, e in decisions if self.concerns(d)}.values())
        if not concerned:
            return {}
        return await self._until_database_answers(
            f"{len(concerned)} decision(s)", lambda: self._take_decisions(concerned)
        )

    async def _take_decision(self, decided: ActionDecided, encoded: bytes) -> str | None:
        return (await self._take_decisions([(decided, encoded)])).get(decided.action_id)

    async def _take_decisions(self, decisions: list[tuple[ActionDecided, bytes]]) -> dict[str, str]:
        async with self.unit_of_work() as unit:
            opening = [(d, e) for d, e in decisions if d.outcome is DecisionOutcome.NEEDS_APPROVAL]
            done = {action_id: "opened" for action_id in await self._open_many(unit, opening)}
            for decided, encoded in decisions:
                if (
                    decided.outcome is DecisionOutcome.ALLOWED
                    and decided.break_glass
                    and await self.store.note_break_glass(unit.conn, decided.action_id, encoded)
                ):
                    for channel, targets in self.routes.items():
                        for target in targets.every_target():
                            await self.store.enqueue_notification(
                                unit.conn, decided.action_id, channel, target, kinds.BREAK_GLASS
                            )
                    done[decided.action_id] = "break_glass"
                if decided.request.callback_url:
                    await self.store.set_callback_target(unit.conn, decided.action_id, decided.request.callback_url)
                    await self.store.enqueue_callback(
                        unit.conn,
                        decided.action_id,
                        decided.outcome.value,
                        callback_body(
                            decided.action_id,
                            decided.outcome.value,
                            decided.decided_at,
                            "break-glass: allowed without approval, reviewed after the fact"
                            if decided.break_glass
                            else decided.outcome.value,
                            decided.reasons,
                        ),
                    )
            return done

    async def _open_many(self, unit: UnitOfWork, decisions: list[tuple[ActionDecided, bytes]]) -> set[str]:
        """Open the approvals of these decisions (one statement) and queue their first messages."""
        if not decisions:
            return set()
        approvals = {decided.action_id: self._opening(decided, encoded) for decided, encoded in decisions}
        created = await self.store.open_many(unit.conn, list(approvals.values()))
        for decided, _ in decisions:
            if decided.action_id not in created:
                continue
            for channel, targets in self.routes.items():
                for target in targets.targets_for(approvals[decided.action_id].groups):
                    await self.store.enqueue_notification(unit.conn, decided.action_id, channel, target, kinds.OPENED)
        return created

    @staticmethod
    def _opening(decided: ActionDecided, encoded: bytes) -> OpeningApproval:
        """The approval row a decision opens."""
        state = opened_state(decided)
        return OpeningApproval(
            decided.action_id,
            encoded,
            sorted(decided.request.requester.everyone),
            [g.name for g in state.policy.groups],
            state.opened_at,
            state.expires_at,
            next_sweep_at(state),
        )

    async def note_executed(self, executed: ActionExecuted) -> None:
        """Queue the requester's webhook for an execution outcome (sent once its URL is known)."""
        if self._callback_wanted.get(executed.action_id) is False:
            return  # its decision, seen here, named no callback URL: nobody to call back
        # Otherwise write the row: the decision may still be on its way (another topic), or was
        # read before a restart; a row whose action never names a URL is dropped within an hour.
        await self._until_database_answers(f"execution of {executed.action_id}", lambda: self._note_executed(executed))

    async def _note_executed(self, executed: ActionExecuted) -> None:
        async with self.unit_of_work() as unit:
            await self.store.enqueue_callback(
                unit.conn,
                executed.action_id,
                executed.outcome.value,
                callback_body(
                    executed.action_id,
                    executed.outcome.value,
                    executed.finished_at,
                    executed.outcome.value,
                    (executed.error,) if executed.error else (),
                ),
            )

    def _remember_callback(self, action_id: str, wanted: bool) -> None:
        self._callback_wanted.pop(action_id, None)
        self._callback_wanted[action_id] = wanted
        if len(self._callback_wanted) > REMEMBERED_DECISIONS:
            del self._callback_wanted[next(iter(self._callback_wanted))]

    async def _until_database_answers(self, what: str, work: Callable[[], Awaitable[Any]]) -> Any:
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

    async def counts_for(
        self, approver: Principal, decided: ActionDecided, policy: rules.ApprovalPolicy | None = None
    ) -> tuple[str, ...]:
        """The required groups the policy says this approver counts for (empty when not allowed)."""
        answer = await self.opa.query("keyturn/approval", self._approval_input(approver, decided, policy))
        result = answer.result if isinstance(answer.result, dict) else {}
        if not result.get("may_approve", False):
            return ()
        return tuple(sorted(str(g) for g in result.get("counts_for", ())))

    async def vote(
        self,
        action_id: str,
        approver: Principal,
        choice: str,
        payload_digest: str,
        reason: str | None,
        channel: rules.VoteChannel,
    ) -> VoteResult:
        """Apply one answer; refusals are recorded (and audited) and change nothing.

        Raises ``DeskUnavailable`` when the policy engine or the database cannot be reached, and
        ``ApprovalNotOpenYet`` when the approval has not opened: the answer is then neither
        accepted nor refused (nothing is recorded) and can be given again."""
        if reason is not None and (why := rules.reason_problem(reason)) is not None:
            # the one gate for every channel (the API's model and the console ask the same first)
            problem = f"a {channel} vote on {action_id}: reason {why}"
            await self.refuse_interaction(
                channel, "invalid_reason", problem, reason.encode("utf-8", "replace"), principal=approver.id
            )
            return VoteResult(action_id, False, "refused", "", "InvalidReason", f"reason {why}")
        reason = mask_text(reason) if reason else reason  # a person's free text is masked like any other
        try:
            return await self._vote(action_id, approver, rules.vote_choice(choice), payload_digest, reason, channel)
        except DATABASE_UNAVAILABLE as exc:
            await self.recover()
            raise DeskUnavailable(
                "database_unavailable",
                "Keyturn cannot reach its database right now, so your answer was not recorded. Try again in a minute.",
            ) from exc

    async def _vote(
        self,
        action_id: str,
        approver: Principal,
        choice: VoteChoice,
        payload_digest: str,
        reason: str | None,
        channel: rules.VoteChannel,
    ) -> VoteResult:
        # One lock from reading the approval to recording the answer: a vote racing the opening,
        # another vote or the expiry sees the row either before or after, never half.
        async with self.unit_of_work() as unit:
            row = await self.store.lock(unit.conn, action_id)
            now = self.clock()
            if row is None:
                broken = await self.store.lock_break_glass(unit.conn, action_id)
                if broken is None:
                    raise ApprovalNotOpenYet(action_id)  # rolls back: nothing is recorded
                # allowed without approval under break-glass: the answer is its review after the fact
                decided_now = registry().decode_event(broken)
                return await self._review(unit, decided_now, approver, choice, payload_digest, reason, channel, now)
            decided = registry().decode_event(row.decided_event)
            state = pending_state(decided, row)
            counts_for = await self._membership(approver, decided, state, action_id)
            vote = self._vote_of(approver, choice, payload_digest, now, reason, channel, counts_for)
            if state.status == "pending" and (expired := rules.expire_if_due(state, now)) is not None:
                await self._resolve(unit, decided, expired, rules.approval_progress(expired).summary)
                state = expired
            outcome = rules.cast_vote(state, vote, now)
            refusal_name = type(outcome.refusal).__name__ if outcome.refusal else None
            await self._record(unit, action_id, vote, outcome.accepted, refusal_name, str(outcome.refusal or ""), now)
            if outcome.resolution is not None:
                await self._resolve(unit, decided, outcome.state, outcome.progress.summary)
            elif outcome.accepted:
                await self._tell_message_holders(unit, action_id, kinds.PROGRESS, str(len(outcome.state.votes)))
            return VoteResult(
                action_id,
                outcome.accepted,
                outcome.state.status,
                outcome.progress.summary,
                refusal_name,
                str(outcome.refusal or ""),
            )

    async def _review(
        self,
        unit: UnitOfWork,
        decided: ActionDecided,
        reviewer: Principal,
        choice: VoteChoice,
        payload_digest: str,
        reason: str | None,
        channel: rules.VoteChannel,
        now: datetime,
    ) -> VoteResult:
        """Record an answer on a break-glass action as its review: an accepted ``VoteRecorded``
        (audited, counted by ``keyturn report``) with no resolution, since the action already ran.
        ``deny`` records that the reviewer objected. Who may review is the policy's to say
        (``data.keyturn.break_glass.reviewers``); the rules refuse as for an approval."""
        action_id = decided.action_id
        reviewer_groups, counts_for = await self._reviewers(reviewer, decided, action_id)
        vote = self._vote_of(reviewer, choice, payload_digest, now, reason, channel, counts_for)
        earlier = await self._reviews(action_id)
        refusal = rules.review_refusal(
            action_id=action_id,
            action=decided.request.action,
            requester=decided.request.requester,
            payload_digest=decided.request.payload_digest,
            reviewer_groups=reviewer_groups,
            earlier_reviews=earlier,
            vote=vote,
        )
        refusal_name = type(refusal).__name__ if refusal else None
        await self._record(unit, action_id, vote, refusal is None, refusal_name, str(refusal or ""), now)
        if refusal is not None:
            return VoteResult(action_id, False, "break_glass", "", refusal_name, str(refusal))
        verdict = "approved it" if choice is VoteChoice.APPROVE else "objected to it"
        reviewers = len({v.approver.id for v in earlier} | {reviewer.id})
        for chat, target in await self.store.message_targets(unit.conn, action_id, (kinds.BREAK_GLASS,)):
            # the notice shows the reviews so far (one edit per review on record)
            await self.store.enqueue_notification(unit.conn, action_id, chat, target, kinds.REVIEWED, str(reviewers))
        summary = (
            f"Recorded as the review of break-glass action {action_id}: {reviewer.id} {verdict}. "
            f"It ran without approval, so nothing else changes ({reviewers} review(s) on record)."
        )
        return VoteResult(action_id, True, "break_glass", summary)

    async def may_review(self, reviewer: Principal, action_id: str) -> tuple[bool, str]:
        """Whether ``reviewer`` could review this break-glass action now, and if not, why: what a page
        shows instead of its buttons (an answer is still judged by ``_review``'s rules when it comes)."""
        encoded = await self.store.break_glass_decision(action_id)
        if encoded is None:
            return False, "No break-glass use is on record for this action."
        try:
            return await self._may_review(reviewer, registry().decode_event(encoded), await self._reviews(action_id))
        except DeskUnavailable:
            return False, "The policy engine is unavailable, so nobody can review right now."

    async def reviews_due(self, reviewer: Principal, limit: int = 50) -> list[dict[str, Any]]:
        """Break-glass uses nobody has reviewed yet that ``reviewer`` may review, oldest first (views);
        what is known so far while the policy engine is away (the next page asks again)."""
        due = []
        for _, encoded in await self.store.break_glass_unreviewed(limit):
            decided = registry().decode_event(encoded)
            try:
                may, _ = await self._may_review(reviewer, decided, ())  # unreviewed: no earlier review
            except DeskUnavailable:
                break
            if may:
                due.append(break_glass_view(decided))
        return due

    async def _may_review(
        self, reviewer: Principal, decided: ActionDecided, earlier: tuple[Vote, ...]
    ) -> tuple[bool, str]:
        """``may_review`` on a decision and its reviews already read; ``DeskUnavailable`` while the
        policy engine is away."""
        if reviewer.shares_anyone_with(decided.request.requester):
            return False, "You are in the chain that asked for this action, so you cannot review it."
        if rules.acts_for_another(reviewer):
            return False, ACTING_FOR_ANOTHER
        if any(vote.approver.id == reviewer.id for vote in earlier):
            return False, "You have already reviewed this action."
        groups, counts_for = await self._reviewers(reviewer, decided, decided.action_id)
        if not counts_for:
            if not groups:
                return False, "The policy names no reviewers for this break-glass use, so nobody can review it here."
            return False, f"Only members of {', '.join(groups)} review break-glass uses."
        return True, (
            f"You review for {', '.join(counts_for)}. It already ran: no objection, or an objection, goes on "
            "the audit record; nothing is undone."
        )

    async def _reviews(self, action_id: str) -> tuple[Vote, ...]:
        """The reviews accepted so far for a break-glass action."""
        return tuple(
            recorded.vote
            for recorded in (registry().decode_event(encoded) for encoded in await self.store.vote_history(action_id))
            if isinstance(recorded, VoteRecorded) and recorded.accepted
        )

    async def _reviewers(
        self, reviewer: Principal, decided: ActionDecided, action_id: str
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The policy's break-glass reviewer groups, and those this reviewer counts for."""
        try:
            answer = await self.opa.query("keyturn/approval", self._approval_input(reviewer, decided, None))
        except (PolicyUnavailable, PolicyAnswerInvalid) as exc:
            log.warning(
                "review by %s of %s not taken: the policy engine did not answer: %s", reviewer.id, action_id, exc
            )
            raise DeskUnavailable(
                "policy_unavailable",
                f"Keyturn cannot ask its policy engine whether {reviewer.id} may review "
                "this action right now, so your answer was not recorded. Try again in a minute.",
            ) from exc
        result = answer.result if isinstance(answer.result, dict) else {}
        groups = tuple(sorted(str(g) for g in result.get("groups", ()))) or ("of break-glass reviewers",)
        counts_for = tuple(sorted(str(g) for g in result.get("counts_for", ()))) if result.get("may_approve") else ()
        return groups, counts_for

    @staticmethod
    def _approval_input(
        approver: Principal, decided: ActionDecided, policy: rules.ApprovalPolicy | None
    ) -> dict[str, Any]:
        return {
            "approver": {"id": approver.id, "kind": approver.kind.value, "chain": list(approver.chain)},
            "request": policy_input(decided.request),
            "decision": opa_decision_document(decided, policy),
        }

    async def _membership(
        self, approver: Principal, decided: ActionDecided, state: rules.PendingApproval, action_id: str
    ) -> tuple[str, ...]:
        try:
            return await self.counts_for(approver, decided, state.policy)
        except (PolicyUnavailable, PolicyAnswerInvalid) as exc:
            # Still fail closed (nobody is authorised without the policy), but do not turn an
            # outage into a refusal: "not in group" would be false, and a refused vote is
            # recorded for good. The approver is told to answer again.
            log.warning("vote by %s on %s not taken: the policy engine did not answer: %s", approver.id, action_id, exc)
            raise DeskUnavailable(
                "policy_unavailable",
                f"Keyturn cannot ask its policy engine whether {approver.id} may answer "
                "this action right now, so your answer was not recorded. Try again in a minute.",
            ) from exc

    @staticmethod
    def _vote_of(
        approver: Principal,
        choice: VoteChoice,
        payload_digest: str,
        now: datetime,
        reason: str | None,
        channel: rules.VoteChannel,
        counts_for: tuple[str, ...],
    ) -> Vote:
        return Vote(
            approver=approver,
            choice=choice,
            payload_digest=_claimed_digest(payload_digest),
            cast_at=now,
            reason=reason,
            channel=channel,
            counts_for=counts_for,
        )

    async def refuse_answer(
        self,
        action_id: str,
        approver: Principal,
        choice: str,
        payload_digest: str,
        channel: rules.VoteChannel,
        refusal: str,
        message: str,
    ) -> VoteResult:
        """Record an answer refused before it reached the rules (e.g. an unknown chat user)."""
        now = self.clock()
        vote = self._vote_of(approver, rules.vote_choice(choice), payload_digest, now, None, channel, ())
        async with self.unit_of_work() as unit:
            known = await self.store.lock(unit.conn, action_id) is not None
            # the message is told to the person alone; what is recorded is masked (it may name their email)
            await self._record(unit, action_id, vote, False if known else None, refusal, message, now)
        return VoteResult(action_id, False, "unknown", "", refusal, message)

    async def refuse_interaction(
        self,
        source: str,
        error_type: str,
        reason: str,
        payload: bytes,
        *,
        problems: tuple[str, ...] = (),
        principal: str | None = None,
    ) -> None:
        """Record input a channel refused before it could name a trustworthy vote (forged, stale,
        replayed, malformed) as a dead letter, so the audit sees it; the input itself is not kept."""
        letter = refusal_letter(
            service="approval",
            source_topic=source,
            partition=-1,
            offset=-1,
            key=None,
            payload=payload,
            error_type=error_type,
            reason=reason,
            problems=problems,
            principal=principal,
        )
        async with self.unit_of_work() as unit:
            await self._publish(unit, self.topics.dlq, letter.event_id, registry().encode_event(letter))

    # --- the clock ----------------------------------------------------------------------------

    async def keep_clock(self) -> bool:
        """Expire, remind and escalate what is due, when this instance keeps the namespace's clock
        (``clock_lease``: one approval instance at a time); False when another one keeps it."""
        async with self.store.clock_lease() as held:
            if not held:
                return False
            await self.expire_due()
            await self.remind_and_escalate()
        return True

    async def expire_due(self) -> int:
        """Expire every pending approval whose TTL ran out; returns how many."""
        now = self.clock()
        expired = 0
        for action_id in await self.store.due_for_expiry(now):
            async with self.unit_of_work() as unit:
                row = await self.store.lock(unit.conn, action_id)
                if row is None or row.status != "pending":
                    continue
                decided = registry().decode_event(row.decided_event)
                state = rules.expire_if_due(pending_state(decided, row), now)
                if state is not None:
                    await self._resolve(unit, decided, state, rules.approval_progress(state).summary)
                    expired += 1
        return expired

    async def remind_and_escalate(self, now: datetime | None = None) -> int:
        """Queue due reminders and escalations for pending approvals; returns how many changed."""
        now = now or self.clock()
        changed = 0
        for action_id in await self.store.due_for_sweep(now):
            async with self.unit_of_work() as unit:
                row = await self.store.lock(unit.conn, action_id)
                if row is None or row.status != "pending":
                    continue
                decided = registry().decode_event(row.decided_event)
                state = pending_state(decided, row)
                if due := rules.reminders_due(state, now):
                    # several may be due at once (after a restart): one reminder, all marked
                    await self._tell_message_holders(unit, action_id, kinds.REMINDER, f"{max(due):g}")
                    await self.store.mark_reminded(unit.conn, action_id, rules.mark_reminded(state, due).reminders_sent)
                    changed += 1
                if (escalated := rules.escalate_if_due(state, now)) is not None:
                    await self.store.mark_escalated(unit.conn, action_id, now)
                    group = state.policy.escalation_group
                    if group is None:  # escalate_if_due escalates only a policy naming its group
                        raise RuntimeError(f"approval {action_id} escalated without an escalation group")
                    for channel, targets in self.routes.items():
                        for target in targets.targets_for([group]):
                            await self.store.enqueue_notification(
                                unit.conn, action_id, channel, target, kinds.ESCALATED
                            )
                    if escalated.status == "approved":
                        await self._resolve(unit, decided, escalated, rules.approval_progress(escalated).summary)
                    changed += 1
                after = await self.store.lock(unit.conn, action_id)
                if after is None:  # locked above in this transaction: it cannot have gone
                    raise RuntimeError(f"approval {action_id} vanished while locked")
                await self.store.set_next_sweep(unit.conn, action_id, next_sweep_at(pending_state(decided, after)))
        return changed

    # --- reading ------------------------------------------------------------------------------

    async def view(self, action_id: str) -> dict[str, Any] | None:
        """What approvers see of the action now (approval or break-glass), or None if unknown here."""
        row = await self.store.read(action_id)
        if row is not None:
            decided = registry().decode_event(row.decided_event)
            view = approval_view(decided, pending_state(decided, row))
            view["execution"] = (await self.execution_modes()).mode_for(decided.request.action).execution.value
            return view
        encoded = await self.store.break_glass_decision(action_id)
        return break_glass_view(registry().decode_event(encoded), await self._reviews(action_id)) if encoded else None

    async def execution_modes(self) -> ExecutionModes:
        """The catalog's execution modes, re-read at most every 30 s; unknown (none) while the policy is away."""
        now = time.monotonic()
        if self.load_execution_modes is not None and (self._modes is None or now - self._modes[0] > 30):
            try:
                self._modes = (now, await self.load_execution_modes())
            except Exception as exc:
                log.warning("approval: the catalog's execution modes were not read (%s: %s)", type(exc).__name__, exc)
                # known modes stay; either way the next read waits its 30 s (no OPA call per page while it is away)
                self._modes = (now, self._modes[1] if self._modes else ExecutionModes())
        return self._modes[1] if self._modes is not None else ExecutionModes()

    async def approval(self, viewer: Principal, action_id: str) -> tuple[ActionDecided, rules.PendingApproval] | None:
        """The decision and the approval state of an action, for the approval routes and pages, when
        ``viewer`` may see it (``may_see``); None when the action was allowed without approval
        (break-glass): there is nothing to answer, only a review to give.

        Raises ``ApprovalNotOpenYet`` when nothing is on record (yet) for it, and exactly so when it is
        not the viewer's to see: an outsider learns nothing, not even that the action exists. Raises
        ``DeskUnavailable`` while the policy engine cannot say whether the viewer is an approver."""
        row = await self.store.read(action_id)
        found: tuple[ActionDecided, rules.PendingApproval] | None = None
        if row is not None:
            decided = registry().decode_event(row.decided_event)
            found = (decided, pending_state(decided, row))
        elif (encoded := await self.store.break_glass_decision(action_id)) is not None:
            decided = registry().decode_event(encoded)
        else:
            decided = None
        if not await self.may_see(viewer, decided):
            raise ApprovalNotOpenYet(action_id)
        return found

    async def may_see(self, viewer: Principal, decided: ActionDecided | None) -> bool:
        """Whether ``viewer`` may see an action (``decided``; None when nothing is on record): its own
        principals may, each in their own name (``Principal.owns_one_of``), and so may approvers
        (``is_approver``), who answer and review actions that are not theirs.

        An action the viewer may not see is answered as an unknown one, so the policy engine is
        asked about both alike: while it is away, an outsider gets ``DeskUnavailable`` either way."""
        if decided is not None and viewer.owns_one_of(decided.request.requester.everyone):
            return True
        return await self.is_approver(viewer) and decided is not None

    async def is_approver(self, person: Principal) -> bool:
        """Whether ``person`` is a member of any approver group in the policy's data (asked of OPA
        each time, so a change of membership counts at once): who may read any action and the
        history, not only what they may decide. Raises ``DeskUnavailable`` while the policy engine
        cannot be asked: nobody is let in without it, and "not an approver" would be false."""
        if person.chain:  # in their own name only, as a vote must be (``DelegatedVoteRefused``)
            return False
        try:
            groups = (await self.opa.query(GROUPS_PATH, {})).result
        except (PolicyUnavailable, PolicyAnswerInvalid) as exc:
            log.warning("who is an approver was not read: the policy engine did not answer: %s", exc)
            raise DeskUnavailable(
                "policy_unavailable",
                "Keyturn cannot ask its policy engine who may see this right now. Try again in a minute.",
            ) from exc
        # exactly as written, as the policy compares a vote's approver: ``human:CAROL`` is not carol
        return isinstance(groups, dict) and any(
            isinstance(members, list) and person.id in members for members in groups.values()
        )

    async def may_decide(
        self, approver: Principal, decided: ActionDecided, state: rules.PendingApproval
    ) -> tuple[bool, str]:
        """Whether this approver could answer now, and if not, why (what a page shows instead of its
        buttons); an answer is still judged by the rules when it comes."""
        try:
            return await self._may_decide(approver, decided, state)
        except (PolicyUnavailable, PolicyAnswerInvalid):
            return False, "The policy engine is unavailable, so nobody can answer right now."

    async def _may_decide(
        self, approver: Principal, decided: ActionDecided, state: rules.PendingApproval
    ) -> tuple[bool, str]:
        """``may_decide``, raising the policy engine's failure."""
        if state.status != "pending":
            return False, f"This action is {state.status}; answers are no longer taken."
        if approver.shares_anyone_with(decided.request.requester):
            return False, "You are in the chain that asked for this action, so you cannot answer it."
        if rules.acts_for_another(approver):
            return False, ACTING_FOR_ANOTHER
        if any(vote.approver.id == approver.id for vote in state.votes):
            return False, "You have already answered this action."
        groups = await self.counts_for(approver, decided, state.policy)
        if not groups:
            return False, f"You are not in any group that may answer {decided.request.action}."
        return True, "You answer for " + ", ".join(groups) + "."

    async def inbox(self, approver: Principal) -> list[tuple[ActionDecided, rules.PendingApproval]]:
        """The pending approvals ``approver`` may decide now (``may_decide``), oldest first: the inbox
        of every channel that has one. Raises ``DeskUnavailable`` while the policy engine cannot be
        asked: an empty inbox would say that nothing waits."""
        pending = []
        for row in await self.store.pending_for(sorted(approver.everyone)):
            full = await self.store.read(row.action_id)  # listed without votes; resolved since, it is gone
            if full is not None and full.status == "pending":
                decided = registry().decode_event(full.decided_event)
                pending.append((decided, pending_state(decided, full)))
        try:
            verdicts = await asyncio.gather(*(self._may_decide(approver, d, s) for d, s in pending))
        except (PolicyUnavailable, PolicyAnswerInvalid) as exc:
            log.warning("the inbox of %s was not read: the policy engine did not answer: %s", approver.id, exc)
            raise DeskUnavailable(
                "policy_unavailable",
                "Keyturn cannot ask its policy engine what you may decide right now. Try again in a minute.",
            ) from exc
        return [found for found, (may, _) in zip(pending, verdicts, strict=True) if may]

    # --- private ------------------------------------------------------------------------------

    async def _tell_message_holders(self, unit: UnitOfWork, action_id: str, kind: str, occasion: str) -> None:
        for channel, target in await self.store.message_targets(unit.conn, action_id):
            await self.store.enqueue_notification(unit.conn, action_id, channel, target, kind, occasion)

    async def _record(
        self,
        unit: UnitOfWork,
        action_id: str,
        vote: Vote,
        accepted: bool | None,
        refusal: str | None,
        message: str,
        now: datetime,
    ) -> None:
        recorded = VoteRecorded(
            event_id=f"vote:{action_id}:{uuid.uuid4()}",
            action_id=action_id,
            vote=vote,
            accepted=bool(accepted),
            recorded_at=now,
            refusal=refusal,
            message=masked_line(message),  # a refusal can quote what the caller sent
        )
        encoded = registry().encode_event(recorded)
        if accepted is not None:
            await self.store.record_vote(unit.conn, action_id, bool(accepted), encoded)
        await self._publish(unit, self.topics.votes, action_id, encoded)

    async def _resolve(
        self, unit: UnitOfWork, decided: ActionDecided, state: rules.PendingApproval, summary: str
    ) -> None:
        resolution = rules.resolution_of(state)
        if resolution is None:  # only resolved states are passed here
            raise ValueError(f"approval {decided.action_id} is still {state.status}: nothing to resolve")
        execute_before = rules.execution_deadline(resolution, state.policy) if resolution.status == "approved" else None
        summary = summary if resolution.status != "expired" else (resolution.reason or summary)
        resolved = ApprovalResolved(
            event_id=f"resolved:{decided.action_id}",
            action_id=decided.action_id,
            outcome=ResolutionOutcome(resolution.status),
            resolved_at=resolution.at,
            decision=decided,
            votes=resolution.votes,
            summary=summary,
            execute_before=execute_before,
        )
        await self.store.resolve(unit.conn, decided.action_id, resolution.status, resolution.at)
        await self._publish(unit, self.topics.resolved, decided.action_id, registry().encode_event(resolved))
        await self._tell_message_holders(unit, decided.action_id, kinds.RESOLVED, "")
        if decided.request.callback_url:
            await self.store.enqueue_callback(
                unit.conn,
                decided.action_id,
                resolution.status,
                callback_body(
                    decided.action_id,
                    resolution.status,
                    resolution.at,
                    summary,
                ),
            )


_DIGEST = re.compile(r"(sha256:)?[0-9a-f]{64}")


def _claimed_digest(text: str) -> Digest:
    """The digest an answer names. Anything that is not one is recorded as the SHA-256 of what was
    sent (algorithm ``sha256-of-malformed``): the answer is refused as a mismatch either way, and
    free text sent in its place never reaches the votes topic."""
    if _DIGEST.fullmatch(text or ""):
        return Digest.parse(text)
    return Digest(hashlib.sha256((text or "").encode()).hexdigest(), "sha256-of-malformed")
