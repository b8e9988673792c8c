"""The approval desk on its ports, with in-memory fakes: what approvers and requesters notice,
in milliseconds and without a server (the same desk runs on PostgreSQL in tests/integration)."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from keyturn.approval.channels import ChatTargets
from keyturn.approval.desk import ApprovalDesk, ApprovalNotOpenYet, DeskUnavailable
from keyturn.approval.ports import DeskStore, PolicyEngine
from keyturn.approval.replay import pending_state
from keyturn.approval.store import ApprovalStore
from keyturn.bus.codec import registry
from keyturn.bus.topics import Topics
from keyturn.core import events
from keyturn.core.principal import Principal, PrincipalKind
from tests.fakes.approval_store import Broker, FakePolicyEngine, InMemoryApprovalStore

OPENED = datetime(2026, 3, 4, 9, 0, tzinfo=UTC)
TTL = timedelta(minutes=10)
TOPICS = Topics("unit", 1)
REQUESTER = Principal("agent:reporter", PrincipalKind.AGENT, ("human:alice",))
ALICE = Principal("human:alice", PrincipalKind.HUMAN)
CAROL = Principal("human:carol", PrincipalKind.HUMAN)
DAVE = Principal("human:dave", PrincipalKind.HUMAN)
BOB = Principal("human:bob", PrincipalKind.HUMAN)
PARAMETERS = {"role": "analyst"}
DIGEST = events.payload_digest("iam.role.grant", "iam://staging/roles/analyst", PARAMETERS)
MEMBERS = {
    "human:carol": ("security",),
    "human:dave": ("security",),
    "human:alice": ("security",),
    "human:erin": ("oncall",),
}
ERIN = Principal("human:erin", PrincipalKind.HUMAN)


class Clock:
    def __init__(self) -> None:
        self.now = OPENED + timedelta(seconds=1)

    def __call__(self) -> datetime:
        return self.now


class Desk:
    """A desk on fakes, and what left it."""

    def __init__(self, members: dict[str, tuple[str, ...]] = MEMBERS) -> None:
        self.store = InMemoryApprovalStore()
        self.opa = FakePolicyEngine(members)
        self.broker = Broker()
        self.clock = Clock()
        routes = {"slack": ChatTargets.from_json('{"*": ["C0APPROVALS"]}', "KEYTURN_SLACK_CHANNELS")}
        self.desk = ApprovalDesk(self.store, self.opa, TOPICS, self.broker, routes, clock=self.clock)

    def published(self, kind: type) -> list:
        return [e for e in (registry().decode_event(value) for _, _, value in self.broker.sent) if isinstance(e, kind)]


def decision(
    *,
    min_approvals: int = 1,
    callback_url: str | None = None,
    break_glass: bool = False,
    escalation_group: str | None = None,
    reminder_fractions: tuple[float, ...] = (),
    requester: Principal = REQUESTER,
) -> events.ActionDecided:
    action_id = str(uuid.uuid4())
    request = events.ActionRequested(
        event_id=f"requested:{action_id}",
        action_id=action_id,
        action="iam.role.grant",
        resource="iam://staging/roles/analyst",
        parameters_json=events.canonical_json(PARAMETERS),
        reason="onboarding",
        requester=requester,
        payload_digest=DIGEST,
        requested_at=OPENED,
        callback_url=callback_url,
    )
    outcome = events.DecisionOutcome.ALLOWED if break_glass else events.DecisionOutcome.NEEDS_APPROVAL
    approvals = (
        None
        if break_glass
        else events.ApprovalRequirement(
            groups=(events.GroupRequirement("security", min_approvals),),
            pending_ttl_s=int(TTL.total_seconds()),
            execution_window_s=60,
            escalation_group=escalation_group,
            reminder_fractions=reminder_fractions,
        )
    )
    return events.ActionDecided(
        event_id=f"decided:{action_id}",
        action_id=action_id,
        outcome=outcome,
        provenance=events.Provenance("r", "d", DIGEST, OPENED),
        decided_at=OPENED,
        request=request,
        approvals=approvals,
        break_glass=break_glass,
    )


async def opened(d: Desk, **kwargs) -> events.ActionDecided:
    decided = decision(**kwargs)
    assert await d.desk.take_decision(decided, registry().encode_event(decided)) in ("opened", "break_glass")
    return decided


async def vote(
    d: Desk, decided: events.ActionDecided, who: Principal, choice: str = "approve", digest: str = str(DIGEST)
):
    return await d.desk.vote(decided.action_id, who, choice, digest, "ticket 42" if choice == "deny" else None, "cli")


# --- the real store and the fakes answer to the same ports -------------------------------------


def test_the_postgres_store_and_the_fake_both_are_desk_stores() -> None:
    assert isinstance(ApprovalStore(pool=None), DeskStore)  # type: ignore[arg-type]
    assert isinstance(InMemoryApprovalStore(), DeskStore)
    assert isinstance(FakePolicyEngine({}), PolicyEngine)


# --- votes ----------------------------------------------------------------------------------------


async def test_an_authorised_vote_is_accepted_recorded_and_published_without_a_flush() -> None:
    d = Desk()
    decided = await opened(d, min_approvals=2)

    result = await vote(d, decided, CAROL)

    assert result.accepted and result.status == "pending"
    assert "human:carol" in result.summary
    recorded = d.published(events.VoteRecorded)
    assert [(r.vote.approver.id, r.accepted, r.vote.counts_for) for r in recorded] == [
        ("human:carol", True, ("security",))
    ]
    assert d.store.tables.outbox == []  # published once the vote committed: nobody called flush
    assert ("slack", "C0APPROVALS", "progress", "1") in d.store.queued(decided.action_id)


async def test_a_requester_chain_naming_the_approver_re_cased_or_fullwidth_refuses_her_as_self_approval() -> None:
    for written in ("human:Alice", "human:\uff41lice"):
        d = Desk()
        decided = await opened(d, requester=Principal("agent:reporter", PrincipalKind.AGENT, (written,)))

        assert [a.action_id for a, _ in await d.desk.inbox(ALICE)] == []
        state = pending_state(decided, await d.store.read(decided.action_id))
        assert await d.desk.may_decide(ALICE, decided, state) == (
            False,
            "You are in the chain that asked for this action, so you cannot answer it.",
        )
        result = await vote(d, decided, ALICE)

        assert not result.accepted and result.refusal == "SelfApprovalRefused", result
        assert "human:alice is in the requesting chain" in result.message
        assert (await d.desk.view(decided.action_id))["status"] == "pending"


async def test_a_vote_from_outside_the_groups_is_refused_and_recorded() -> None:
    d = Desk()
    decided = await opened(d)

    result = await vote(d, decided, BOB)

    assert not result.accepted and result.refusal == "ApproverNotAuthorised"
    assert [(r.accepted, r.refusal) for r in d.published(events.VoteRecorded)] == [(False, "ApproverNotAuthorised")]
    assert (await d.desk.view(decided.action_id))["status"] == "pending"


async def test_the_requesting_chain_cannot_approve_even_from_the_right_group() -> None:
    d = Desk()
    decided = await opened(d)

    result = await vote(d, decided, ALICE)

    assert not result.accepted and result.refusal == "SelfApprovalRefused"
    assert d.published(events.ApprovalResolved) == []


async def test_a_second_answer_from_the_same_approver_is_refused() -> None:
    d = Desk()
    decided = await opened(d, min_approvals=2)
    await vote(d, decided, CAROL)

    again = await vote(d, decided, CAROL)

    assert not again.accepted and again.refusal == "DuplicateVote"
    assert [r.accepted for r in d.published(events.VoteRecorded)] == [True, False]
    assert (await d.desk.view(decided.action_id))["status"] == "pending"


async def test_the_quorum_resolves_the_approval_once_and_later_answers_are_refused() -> None:
    d = Desk()
    decided = await opened(d, min_approvals=2)

    first, second = await asyncio.gather(vote(d, decided, CAROL), vote(d, decided, DAVE))
    late = await vote(d, decided, ALICE)

    assert first.accepted and second.accepted
    assert {first.status, second.status} == {"pending", "approved"}
    assert not late.accepted and late.refusal == "AlreadyResolved"
    resolved = d.published(events.ApprovalResolved)
    assert [(r.outcome, sorted(v.approver.id for v in r.votes)) for r in resolved] == [
        (events.ResolutionOutcome.APPROVED, ["human:carol", "human:dave"])
    ]
    assert resolved[0].execute_before == resolved[0].resolved_at + timedelta(seconds=60)


async def test_a_redelivered_decision_opens_nothing_twice() -> None:
    d = Desk()
    decided = await opened(d)

    assert await d.desk.take_decision(decided, registry().encode_event(decided)) is None
    assert d.store.queued(decided.action_id) == [("slack", "C0APPROVALS", "opened", "")]


# --- expiry ---------------------------------------------------------------------------------------


async def test_an_approval_nobody_answers_expires_once_never_denied() -> None:
    d = Desk()
    decided = await opened(d, callback_url="https://requester.example/hook")
    d.clock.now = OPENED + TTL

    assert await d.desk.expire_due() == 1
    assert await d.desk.expire_due() == 0
    late = await vote(d, decided, CAROL)

    assert not late.accepted and late.refusal == "AlreadyResolved"
    assert [r.outcome for r in d.published(events.ApprovalResolved)] == [events.ResolutionOutcome.EXPIRED]
    assert (decided.action_id, "expired") in d.store.tables.callbacks


async def test_a_vote_after_the_ttl_expires_the_approval_instead_of_counting() -> None:
    d = Desk()
    decided = await opened(d)
    d.clock.now = OPENED + TTL + timedelta(seconds=1)

    result = await vote(d, decided, CAROL)

    assert not result.accepted and result.status == "expired"
    assert [r.outcome for r in d.published(events.ApprovalResolved)] == [events.ResolutionOutcome.EXPIRED]


async def test_half_way_approvers_are_reminded_once_and_the_escalation_group_may_approve_alone() -> None:
    d = Desk()
    decided = await opened(d, min_approvals=2, escalation_group="oncall", reminder_fractions=(0.5,))
    before = await vote(d, decided, ERIN)
    d.clock.now = OPENED + TTL / 2

    assert await d.desk.remind_and_escalate() == 2  # the reminder, the escalation
    assert await d.desk.remind_and_escalate() == 0  # each once
    after = await vote(d, decided, ERIN)

    assert not before.accepted and before.refusal == "ApproverNotAuthorised"
    assert after.accepted and after.status == "approved"
    assert [n for n in d.store.queued(decided.action_id) if n[2] in ("reminder", "escalated")] == [
        ("slack", "C0APPROVALS", "reminder", "0.5"),
        ("slack", "C0APPROVALS", "escalated", ""),
    ]
    assert len(d.published(events.ApprovalResolved)) == 1


# --- an answer before the approval opened ---------------------------------------------------------


async def test_a_vote_before_the_approval_opened_is_told_to_retry_and_nothing_is_recorded() -> None:
    d = Desk()
    decided = decision()

    with pytest.raises(ApprovalNotOpenYet) as early:
        await vote(d, decided, CAROL)
    with pytest.raises(ApprovalNotOpenYet):
        await d.desk.approval(CAROL, decided.action_id)

    assert early.value.status == 425 and early.value.retry_after_s >= 1
    assert "not open yet" in str(early.value) and "Retry after" in str(early.value)
    assert d.broker.sent == [] and d.store.tables.votes == []  # early is not refused: nothing on record

    await d.desk.take_decision(decided, registry().encode_event(decided))
    assert (await vote(d, decided, CAROL)).accepted  # the same answer, once it opened


async def test_a_vote_racing_the_opening_is_either_early_or_counted() -> None:
    d = Desk()
    decided = decision()

    async def answer():
        try:
            return await vote(d, decided, CAROL)
        except ApprovalNotOpenYet:
            return None

    _, result = await asyncio.gather(d.desk.take_decision(decided, registry().encode_event(decided)), answer())

    assert result is None or result.accepted
    assert len(d.published(events.VoteRecorded)) == (0 if result is None else 1)


async def test_a_vote_on_a_break_glass_action_is_recorded_as_its_review() -> None:
    d = Desk()
    decided = await opened(d, break_glass=True)

    approved = await vote(d, decided, CAROL)
    objected = await vote(d, decided, DAVE, "deny")

    assert approved.accepted and approved.status == "break_glass"
    assert "review of break-glass action" in approved.summary and "human:carol approved it" in approved.summary
    assert objected.accepted and "human:dave objected to it" in objected.summary
    recorded = d.published(events.VoteRecorded)
    assert [(r.accepted, r.vote.approver.id, r.vote.choice, r.vote.counts_for) for r in recorded] == [
        (True, "human:carol", events.VoteChoice.APPROVE, ("security",)),
        (True, "human:dave", events.VoteChoice.DENY, ("security",)),
    ]
    assert d.published(events.ApprovalResolved) == []  # the action already ran: nothing resolves
    assert await d.desk.approval(CAROL, decided.action_id) is None


async def test_a_break_glass_review_is_taken_once_per_reviewer() -> None:
    d = Desk()
    decided = await opened(d, break_glass=True)

    first = await vote(d, decided, CAROL)
    again = await vote(d, decided, CAROL, "deny")

    assert first.accepted and not again.accepted and again.refusal == "DuplicateVote"
    assert [r.accepted for r in d.published(events.VoteRecorded)] == [True, False]


async def test_each_accepted_review_edits_the_break_glass_notices_and_shows_in_the_view() -> None:
    d = Desk()
    decided = await opened(d, break_glass=True)

    def queued(kind: str) -> list[tuple[str, str, str]]:
        return sorted(
            (ch, target, occ)
            for a, ch, target, k, occ in d.store.tables.notifications
            if k == kind and a == decided.action_id
        )

    notices = [(channel, target) for channel, target, _ in queued("break_glass")]
    assert notices and queued("reviewed") == []
    assert (await d.desk.view(decided.action_id))["reviews"] == []

    assert (await vote(d, decided, CAROL)).accepted
    assert not (await vote(d, decided, CAROL, "deny")).accepted  # a second review by carol: refused, no edit
    assert queued("reviewed") == [(channel, target, "1") for channel, target in notices]
    assert (await vote(d, decided, DAVE, "deny")).accepted
    assert queued("reviewed") == sorted([(c, t, n) for c, t in notices for n in ("1", "2")])
    assert (await d.desk.view(decided.action_id))["reviews"] == [
        "human:carol: no objection",
        "human:dave objected: ticket 42",
    ]


async def test_a_break_glass_use_waits_for_its_reviewers_until_one_reviews_it() -> None:
    d = Desk()
    decided = await opened(d, break_glass=True)  # requested by agent:reporter for human:alice (a security member)
    other = await opened(d, break_glass=True)

    assert [v["action_id"] for v in await d.desk.reviews_due(CAROL)] == [decided.action_id, other.action_id]
    assert await d.desk.reviews_due(ALICE) == []  # her own chain asked: never hers to review
    assert await d.desk.reviews_due(BOB) == []  # not a reviewer
    assert await d.desk.may_review(ALICE, decided.action_id) == (
        False,
        "You are in the chain that asked for this action, so you cannot review it.",
    )
    may, why = await d.desk.may_review(BOB, decided.action_id)
    assert not may and why.startswith("Only members of security")
    may, why = await d.desk.may_review(CAROL, decided.action_id)
    assert may and why.startswith("You review for security")

    assert (await vote(d, decided, CAROL)).accepted
    assert [v["action_id"] for v in await d.desk.reviews_due(DAVE)] == [other.action_id]  # one review suffices
    assert await d.desk.may_review(CAROL, decided.action_id) == (False, "You have already reviewed this action.")
    assert (await d.desk.may_review(CAROL, "no-such-action"))[0] is False


async def test_a_break_glass_review_by_the_requester_chain_or_a_non_member_is_refused_and_recorded() -> None:
    d = Desk()
    decided = await opened(d, break_glass=True)  # requested by agent:reporter for human:alice (a security member)

    own = await vote(d, decided, ALICE)
    stranger = await vote(d, decided, BOB)
    wrong_digest = await vote(d, decided, CAROL, digest="0" * 64)

    assert not own.accepted and own.refusal == "SelfApprovalRefused"
    assert not stranger.accepted and stranger.refusal == "ApproverNotAuthorised"
    assert "security" in stranger.message
    assert not wrong_digest.accepted and wrong_digest.refusal == "DigestMismatch"
    recorded = d.published(events.VoteRecorded)
    assert [(r.accepted, r.refusal) for r in recorded] == [
        (False, "SelfApprovalRefused"),
        (False, "ApproverNotAuthorised"),
        (False, "DigestMismatch"),
    ]


# --- the unit of work -----------------------------------------------------------------------------


async def test_a_vote_the_policy_engine_cannot_judge_leaves_nothing_behind() -> None:
    d = Desk()
    decided = await opened(d)
    d.opa.down = True

    with pytest.raises(DeskUnavailable) as unavailable:
        await vote(d, decided, CAROL)

    assert unavailable.value.error == "policy_unavailable" and unavailable.value.status == 503
    assert d.broker.sent == [] and d.store.tables.outbox == [] and d.store.tables.votes == []


async def test_a_database_drop_after_the_commit_keeps_the_event_for_the_next_flush() -> None:
    d = Desk()
    decided = await opened(d)
    d.store.fail_next_drain = True

    result = await vote(d, decided, CAROL)  # the approver is told what was committed

    assert result.accepted and result.status == "approved"
    assert d.broker.sent == [] and len(d.store.tables.outbox) == 2  # the vote and the resolution wait
    await d.desk.flush()  # the clock's next tick
    assert [type(registry().decode_event(v)).__name__ for _, _, v in d.broker.sent] == [
        "VoteRecorded",
        "ApprovalResolved",
    ]
    assert d.store.tables.outbox == []


async def test_opening_an_approval_publishes_nothing_and_drains_nothing() -> None:
    d = Desk()
    drains = 0
    real_drain = d.store.drain_outbox

    async def counted(publish, batch=200):
        nonlocal drains
        drains += 1
        return await real_drain(publish, batch)

    d.store.drain_outbox = counted  # type: ignore[method-assign]
    await opened(d)

    assert drains == 0 and d.broker.sent == []  # chat messages and webhooks have couriers of their own


async def test_an_approval_that_could_not_be_opened_ends_denied_not_open_for_ever() -> None:
    d = Desk()
    broken = decision()
    await d.desk.end_failed(broken, None, ValueError("the requirement names no group"))
    (resolved,) = d.published(events.ApprovalResolved)
    assert (resolved.action_id, resolved.outcome) == (broken.action_id, events.ResolutionOutcome.DENIED)
    assert resolved.summary.startswith("approval_error:") and "ValueError" in resolved.summary
    assert resolved.votes == ()
    # the same decision delivered again (its offset was not committed) opens nothing: it ended denied
    assert await d.desk.take_decision(broken, registry().encode_event(broken)) is None
    assert [k for k in d.store.tables.notifications if k[0] == broken.action_id] == []
    late = await vote(d, broken, CAROL)
    assert not late.accepted and late.refusal == "AlreadyResolved"
    assert len(d.published(events.ApprovalResolved)) == 1


async def test_a_decision_no_approval_can_be_built_from_still_ends_denied() -> None:
    d = Desk()
    unusable = dataclasses.replace(decision(), approvals=None)  # needs approval, but names no requirement
    await d.desk.end_failed(unusable, None, ValueError("no approval requirement"))
    (resolved,) = d.published(events.ApprovalResolved)
    assert (resolved.action_id, resolved.outcome) == (unusable.action_id, events.ResolutionOutcome.DENIED)
    assert unusable.action_id not in d.store.tables.approvals


async def test_a_failure_after_the_approval_opened_leaves_it_to_its_approvers() -> None:
    d = Desk()
    decided = await opened(d)
    before = len(d.published(events.ApprovalResolved))
    await d.desk.end_failed(decided, None, RuntimeError("telling the requester failed"))
    executed = events.ActionExecuted(
        event_id="executed:x",
        action_id=decided.action_id,
        outcome=events.ExecutionOutcome.SUCCEEDED,
        plugin="noop",
        payload_digest=DIGEST,
        finished_at=OPENED,
    )
    await d.desk.end_failed(executed, None, RuntimeError("webhook"))
    assert len(d.published(events.ApprovalResolved)) == before


async def test_free_text_sent_as_the_digest_is_refused_and_never_recorded_in_clear() -> None:
    d = Desk()
    decided = await opened(d)
    result = await vote(d, decided, CAROL, digest="AKIAIOSFODNN7EXAMPLE")
    assert not result.accepted and result.refusal == "DigestMismatch"
    (refused,) = [v for v in d.published(events.VoteRecorded) if not v.accepted]
    assert refused.vote.payload_digest.algorithm == "sha256-of-malformed"
    assert all(b"AKIAIOSFODNN7EXAMPLE" not in value for _, _, value in d.broker.sent)


async def test_a_batch_of_decisions_opens_its_approvals_in_one_unit_and_a_redelivery_opens_none() -> None:
    d = Desk()
    first, second = decision(), decision(callback_url="https://agent.example.internal/hook")
    glass = decision(break_glass=True)
    quiet = events.ActionDecided(
        event_id="decided:q",
        action_id="q",
        outcome=events.DecisionOutcome.DENIED,
        provenance=first.provenance,
        decided_at=OPENED,
        request=first.request,
    )
    batch = [(e, registry().encode_event(e)) for e in (first, second, glass, quiet)]
    done = await d.desk.take_decisions(batch)
    assert done == {first.action_id: "opened", second.action_id: "opened", glass.action_id: "break_glass"}
    assert set(d.store.tables.approvals) == {first.action_id, second.action_id}
    assert (second.action_id, "needs_approval") in d.store.tables.callbacks
    opened_messages = [key for key in d.store.tables.notifications if key[3] == "opened"]
    assert sorted(key[0] for key in opened_messages) == sorted([first.action_id, second.action_id])
    assert await d.desk.take_decisions(batch) == {}  # redelivered: nothing opens twice
    assert [key for key in d.store.tables.notifications if key[3] == "opened"] == opened_messages


async def test_the_outbox_goes_out_in_runs_per_topic_in_the_order_it_was_written() -> None:
    d = Desk()
    batches: list[list[tuple[str, bytes, bytes]]] = []

    async def send_all(records):
        batches.append(list(records))
        for record in records:
            await d.broker(*record)

    d.desk.send_all = send_all
    decided = await opened(d, min_approvals=1)
    await vote(d, decided, CAROL)
    kinds = [[type(registry().decode_event(value)).__name__ for _, _, value in batch] for batch in batches]
    # the vote is acknowledged before the resolution it caused is sent (the audit sees them in that order)
    assert kinds == [["VoteRecorded"], ["ApprovalResolved"]]
    assert d.store.tables.outbox == []


def test_outbox_rows_are_cut_into_runs_where_the_topic_changes() -> None:
    from keyturn.approval.store import runs_by_topic

    rows = [(1, "votes", "a", b""), (2, "resolved", "a", b""), (3, "resolved", "b", b""), (4, "votes", "c", b"")]
    assert [[row[0] for row in run] for run in runs_by_topic(rows)] == [[1], [2, 3], [4]]
