"""The approval rules, one behaviour per test, as an approver or requester would notice them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from keyturn.core.approval import (
    AlreadyResolved,
    ApprovalExpired,
    ApprovalPolicy,
    ApproverNotAuthorised,
    DelegatedVoteRefused,
    DigestMismatch,
    DuplicateVote,
    GroupRequirement,
    InvalidApprovalPolicy,
    PendingApproval,
    SelfApprovalRefused,
    UnknownAction,
    Vote,
    approval_deadline,
    approval_progress,
    cast_vote,
    escalate_if_due,
    escalation_due,
    execution_deadline,
    expire_if_due,
    mark_reminded,
    open_approval,
    reminders_due,
    resolution_of,
    review_refusal,
    vote_choice,
)
from keyturn.core.events import Digest
from keyturn.core.principal import Principal, PrincipalKind

OPENED = datetime(2025, 3, 4, 9, 0, tzinfo=UTC)
TTL = timedelta(hours=1)
DIGEST = Digest("a" * 64)
OTHER_DIGEST = Digest("b" * 64)

ALICE = Principal("human:alice", PrincipalKind.HUMAN)
REPORTER = Principal("agent:reporter", PrincipalKind.AGENT, ("human:alice",))
ALICES_OTHER_AGENT = Principal("agent:helper", PrincipalKind.AGENT, ("human:alice",))
BOB = Principal("human:bob", PrincipalKind.HUMAN)
CAROL = Principal("human:carol", PrincipalKind.HUMAN)
DAVE = Principal("human:dave", PrincipalKind.HUMAN)
ERIN = Principal("human:erin", PrincipalKind.HUMAN)


def policy(*groups: tuple[str, int], require_all: bool = True, **overrides) -> ApprovalPolicy:
    return ApprovalPolicy(
        groups=tuple(GroupRequirement(name, need) for name, need in groups),
        require_all=require_all,
        pending_ttl=overrides.pop("pending_ttl", TTL),
        execution_window=overrides.pop("execution_window", timedelta(minutes=10)),
        **overrides,
    )


def pending(requirements: ApprovalPolicy | None = None, requester: Principal = REPORTER) -> PendingApproval:
    return open_approval(
        "act-1", requester, DIGEST, requirements or policy(("db-owners", 1)), OPENED, action="db.export"
    )


def vote(
    approver: Principal,
    *groups: str,
    choice: str = "approve",
    digest: Digest = DIGEST,
    reason: str | None = None,
    minutes: float = 5,
) -> Vote:
    return Vote(
        approver=approver,
        choice=vote_choice(choice),
        payload_digest=digest,
        cast_at=OPENED + timedelta(minutes=minutes),
        counts_for=tuple(sorted(set(groups))),
        channel="slack",
        reason=reason,
    )


def at(minutes: float) -> datetime:
    return OPENED + timedelta(minutes=minutes)


def answer(state: PendingApproval, *votes: Vote, minutes: float = 5) -> PendingApproval:
    for each in votes:
        outcome = cast_vote(state, each, at(minutes))
        assert outcome.accepted, outcome.refusal
        state = outcome.state
    return state


# --- who may answer ---------------------------------------------------------------------------


def test_requester_cannot_approve_own_action():
    state = pending(requester=ALICE)

    outcome = cast_vote(state, vote(ALICE, "db-owners"), at(5))

    assert not outcome.accepted
    assert isinstance(outcome.refusal, SelfApprovalRefused)
    assert outcome.state is state
    assert "human:alice" in str(outcome.refusal)
    assert "ask an approver outside" in str(outcome.refusal)


def test_agent_acting_for_alice_cannot_be_approved_by_alice():
    outcome = cast_vote(pending(requester=REPORTER), vote(ALICE, "db-owners"), at(5))

    assert isinstance(outcome.refusal, SelfApprovalRefused)
    assert "agent:reporter acting for human:alice" in str(outcome.refusal)


def test_another_agent_acting_for_alice_cannot_approve_her_agents_action():
    outcome = cast_vote(pending(requester=REPORTER), vote(ALICES_OTHER_AGENT, "db-owners"), at(5))

    assert isinstance(outcome.refusal, SelfApprovalRefused)


def test_the_agent_cannot_approve_what_it_asked_for():
    outcome = cast_vote(pending(requester=REPORTER), vote(REPORTER, "db-owners"), at(5))

    assert isinstance(outcome.refusal, SelfApprovalRefused)


def test_admin_in_every_group_still_cannot_self_approve():
    admin = Principal("human:root", PrincipalKind.HUMAN)
    state = pending(policy(("db-owners", 1), ("security", 1), escalation_group="admins"), requester=admin)

    outcome = cast_vote(state, vote(admin, "db-owners", "security", "admins"), at(5))

    assert isinstance(outcome.refusal, SelfApprovalRefused)
    assert outcome.state.status == "pending"


@pytest.mark.parametrize("written", ["human:Alice", "human:ALICE ", "human:\uff41lice", "HUMAN:ａｌｉｃｅ"])
def test_the_requester_written_another_way_is_still_refused_as_a_self_approval(written):
    """A chain naming alice re-cased or in fullwidth letters is alice: her vote is refused as her own
    (not as "not in the group", though she is in it), and so is a vote from the look-alike id."""
    written_for = Principal("agent:reporter", PrincipalKind.AGENT, (written,))

    hers = cast_vote(pending(requester=written_for), vote(ALICE, "db-owners"), at(5))
    look_alike = cast_vote(pending(), vote(Principal(written, PrincipalKind.HUMAN), "db-owners"), at(5))

    for outcome in (hers, look_alike):
        assert isinstance(outcome.refusal, SelfApprovalRefused), outcome.refusal
        assert outcome.state.status == "pending"
    assert "human:alice is in the requesting chain" in str(hers.refusal)


def test_a_look_alike_id_is_never_someone_else_s_membership():
    assert not Principal("human:\uff41lice", PrincipalKind.HUMAN).owns_one_of({"human:alice"})


def test_requester_cannot_deny_own_action_either():
    outcome = cast_vote(pending(requester=ALICE), vote(ALICE, "db-owners", choice="deny"), at(5))

    assert isinstance(outcome.refusal, SelfApprovalRefused)
    assert outcome.state.status == "pending"


DAVE_FOR_CAROL = Principal("human:dave", PrincipalKind.HUMAN, ("human:carol",))  # sub dave, act carol


def test_a_vote_through_a_delegated_token_is_refused_so_one_person_cannot_fill_two_seats():
    state = pending(policy(("security", 2)))

    delegated = cast_vote(state, vote(DAVE_FOR_CAROL, "security"), at(5))
    state = answer(state, vote(CAROL, "security"))

    assert not delegated.accepted and isinstance(delegated.refusal, DelegatedVoteRefused)
    assert delegated.state.votes == () and delegated.progress.have == 0
    assert "human:dave answered action act-1 acting for human:carol" in str(delegated.refusal)
    assert "a vote is a person's own" in str(delegated.refusal)
    assert state.status == "pending" and approval_progress(state).approved_by == ("human:carol",)
    assert answer(state, vote(DAVE, "security"), minutes=6).status == "approved", "dave's own vote counts"


def test_a_delegated_deny_is_refused_too_and_ends_nothing():
    outcome = cast_vote(pending(), vote(DAVE_FOR_CAROL, "db-owners", choice="deny", reason="no"), at(5))

    assert isinstance(outcome.refusal, DelegatedVoteRefused) and outcome.state.status == "pending"


def test_an_approver_acting_for_the_requester_is_still_a_self_approval():
    alice_s_delegate = Principal("human:dave", PrincipalKind.HUMAN, ("human:alice",))

    outcome = cast_vote(pending(requester=REPORTER), vote(alice_s_delegate, "db-owners"), at(5))

    assert isinstance(outcome.refusal, SelfApprovalRefused)


def test_a_delegated_vote_is_refused_before_membership_is_judged():
    outcome = cast_vote(pending(), vote(DAVE_FOR_CAROL), at(5))  # counts for no group either

    assert isinstance(outcome.refusal, DelegatedVoteRefused)


def test_a_break_glass_review_through_a_delegated_token_is_refused():
    refusal = review_refusal(
        action_id="act-1",
        action="db.export",
        requester=REPORTER,
        payload_digest=DIGEST,
        reviewer_groups=("security",),
        earlier_reviews=(),
        vote=vote(DAVE_FOR_CAROL, "security"),
    )

    assert isinstance(refusal, DelegatedVoteRefused)


def test_approver_outside_required_groups_is_refused_naming_group_and_action():
    outcome = cast_vote(pending(), vote(BOB, "finance"), at(5))

    assert isinstance(outcome.refusal, ApproverNotAuthorised)
    assert str(outcome.refusal).startswith("human:bob is not in group db-owners required for db.export")
    assert "ask a member of db-owners" in str(outcome.refusal)
    assert outcome.state.votes == ()


def test_unauthorised_deny_does_not_end_the_approval():
    outcome = cast_vote(pending(), vote(BOB, choice="deny"), at(5))

    assert isinstance(outcome.refusal, ApproverNotAuthorised)
    assert outcome.state.status == "pending"


def test_vote_on_other_digest_is_refused():
    state = pending()

    outcome = cast_vote(state, vote(CAROL, "db-owners", digest=OTHER_DIGEST), at(5))

    assert isinstance(outcome.refusal, DigestMismatch)
    assert outcome.state is state
    assert "Show the approver the current request" in str(outcome.refusal)


def test_same_approver_twice_counts_once():
    state = answer(pending(policy(("security", 2))), vote(CAROL, "security"))

    outcome = cast_vote(state, vote(CAROL, "security", minutes=6), at(6))

    assert isinstance(outcome.refusal, DuplicateVote)
    assert outcome.state is state
    assert outcome.progress.have == 1


def test_approver_cannot_turn_an_approval_into_a_deny():
    state = answer(pending(policy(("security", 2))), vote(CAROL, "security"))

    outcome = cast_vote(state, vote(CAROL, "security", choice="deny"), at(6))

    assert isinstance(outcome.refusal, DuplicateVote)
    assert "ask another approver to deny" in str(outcome.refusal)


# --- quorum -----------------------------------------------------------------------------------


def test_single_approval_from_required_group_approves():
    outcome = cast_vote(pending(), vote(CAROL, "db-owners"), at(5))

    assert outcome.state.status == "approved"
    assert outcome.resolution is not None
    assert outcome.resolution.status == "approved"
    assert outcome.resolution.at == at(5)
    assert outcome.resolution.payload_digest == DIGEST
    assert [v.approver.id for v in outcome.resolution.votes] == ["human:carol"]


def test_two_of_security_needed():
    state = pending(policy(("security", 2)))

    first = cast_vote(state, vote(CAROL, "security"), at(5))
    second = cast_vote(first.state, vote(DAVE, "security"), at(7))

    assert first.accepted and first.state.status == "pending" and first.resolution is None
    assert second.state.status == "approved"
    assert second.state.resolved_at == at(7)


def test_every_group_must_approve_when_all_required():
    state = pending(policy(("db-owners", 1), ("security", 1)))

    after_db = cast_vote(state, vote(CAROL, "db-owners"), at(5))
    after_security = cast_vote(after_db.state, vote(DAVE, "security"), at(6))

    assert after_db.state.status == "pending"
    assert after_security.state.status == "approved"


def test_one_person_in_two_groups_cannot_satisfy_both_when_all_required():
    state = pending(policy(("db-owners", 1), ("security", 1)))

    outcome = cast_vote(state, vote(CAROL, "db-owners", "security"), at(5))

    assert outcome.state.status == "pending"
    assert outcome.progress.have == 1 and outcome.progress.need == 2


def test_person_in_two_groups_fills_whichever_seat_is_still_empty():
    state = pending(policy(("db-owners", 1), ("security", 1)))

    state = answer(state, vote(CAROL, "db-owners", "security"))
    outcome = cast_vote(state, vote(DAVE, "db-owners"), at(6))

    assert outcome.state.status == "approved"


def test_any_group_suffices_when_not_require_all():
    state = pending(policy(("db-owners", 2), ("security", 1), require_all=False))

    outcome = cast_vote(state, vote(ERIN, "security"), at(5))

    assert outcome.state.status == "approved"


def test_person_in_two_groups_counts_for_each_when_not_require_all():
    state = pending(policy(("db-owners", 2), ("security", 2), require_all=False))

    state = answer(state, vote(CAROL, "db-owners", "security"))
    outcome = cast_vote(state, vote(DAVE, "security"), at(6))

    assert outcome.state.status == "approved"


# --- deny, expiry, late answers ---------------------------------------------------------------


def test_deny_ends_pending_approval():
    outcome = cast_vote(pending(), vote(CAROL, "db-owners", choice="deny", reason="export too broad"), at(5))

    assert outcome.state.status == "denied"
    assert outcome.resolution is not None
    assert outcome.resolution.status == "denied"
    assert outcome.resolution.reason == "export too broad"
    assert [v.approver.id for v in outcome.resolution.votes] == ["human:carol"]


def test_deny_after_partial_approval_still_denies():
    state = answer(pending(policy(("db-owners", 1), ("security", 1))), vote(CAROL, "db-owners"))

    outcome = cast_vote(state, vote(DAVE, "security", choice="deny"), at(6))

    assert outcome.state.status == "denied"


def test_pending_ttl_ends_as_expired_not_denied():
    state = answer(pending(policy(("security", 2))), vote(CAROL, "security"))

    expired = expire_if_due(state, approval_deadline(state))

    assert expired is not None
    assert expired.status == "expired"
    assert expired.resolved_at == OPENED + TTL
    resolution = resolution_of(expired)
    assert resolution is not None and resolution.status == "expired" and resolution.votes == ()


def test_expiry_is_not_due_before_the_deadline():
    state = pending()

    assert expire_if_due(state, approval_deadline(state) - timedelta(microseconds=1)) is None


def test_expiring_a_resolved_approval_does_nothing():
    approved = answer(pending(), vote(CAROL, "db-owners"))

    assert expire_if_due(approved, at(600)) is None


def test_vote_at_the_deadline_is_refused_as_expired():
    state = pending()

    outcome = cast_vote(state, vote(CAROL, "db-owners"), approval_deadline(state))

    assert isinstance(outcome.refusal, ApprovalExpired)
    assert outcome.state is state
    assert "expire_if_due" in str(outcome.refusal)


def test_vote_after_resolution_is_refused_and_state_unchanged():
    denied = cast_vote(pending(), vote(CAROL, "db-owners", choice="deny"), at(5)).state

    outcome = cast_vote(denied, vote(DAVE, "db-owners"), at(6))

    assert not outcome.accepted
    assert isinstance(outcome.refusal, AlreadyResolved)
    assert outcome.state is denied
    assert outcome.resolution is None
    assert "already denied" in str(outcome.refusal)


def test_vote_after_expiry_is_refused_as_already_resolved():
    expired = expire_if_due(pending(), at(60))

    outcome = cast_vote(expired, vote(CAROL, "db-owners"), at(61))

    assert isinstance(outcome.refusal, AlreadyResolved)
    assert outcome.state.status == "expired"


# --- progress ---------------------------------------------------------------------------------


def test_progress_text_names_who_approved_and_what_is_missing():
    state = pending(policy(("security", 1), ("db-owners", 1)))

    outcome = cast_vote(state, vote(CAROL, "security"), at(5))

    assert outcome.progress.summary == "Approved by human:carol (1 of 2), waiting for db-owners"
    by_group = {group.name: (group.have, group.need) for group in outcome.progress.groups}
    assert by_group == {"security": (1, 1), "db-owners": (0, 1)}


def test_progress_text_before_any_approval_lists_every_group():
    progress = approval_progress(pending(policy(("security", 2), ("db-owners", 1))))

    assert progress.summary == "No approvals yet (0 of 3), waiting for 2 from security and db-owners"


def test_progress_text_offers_either_group_when_not_require_all():
    progress = approval_progress(pending(policy(("security", 2), ("db-owners", 1), require_all=False)))

    assert progress.summary == "No approvals yet (0 of 1), waiting for 2 from security or db-owners"


def test_progress_text_after_approval_and_deny():
    approved = cast_vote(pending(), vote(CAROL, "db-owners"), at(5))
    denied = cast_vote(pending(), vote(DAVE, "db-owners", choice="deny", reason="wrong table"), at(5))

    assert approved.progress.summary == "Approved by human:carol"
    assert denied.progress.summary == "Denied by human:dave: wrong table"


def test_progress_text_after_expiry_says_who_never_answered():
    state = answer(pending(policy(("security", 1), ("db-owners", 1))), vote(CAROL, "security"))

    expired = expire_if_due(state, at(60))

    assert approval_progress(expired).summary == "Expired with 1 of 2 approvals; no answer in time from db-owners"


# --- reminders --------------------------------------------------------------------------------


def test_reminders_fall_due_as_fractions_of_the_ttl_pass():
    state = pending(policy(("db-owners", 1), reminder_fractions=(0.75, 0.25, 0.5)))

    assert reminders_due(state, at(14)) == ()
    assert reminders_due(state, at(15)) == (0.25,)
    assert reminders_due(state, at(44)) == (0.25, 0.5)
    assert reminders_due(state, at(45)) == (0.25, 0.5, 0.75)


def test_reminder_already_sent_is_not_due_again():
    state = pending(policy(("db-owners", 1), reminder_fractions=(0.25, 0.5)))

    reminded = mark_reminded(state, reminders_due(state, at(20)))

    assert reminders_due(reminded, at(20)) == ()
    assert reminders_due(reminded, at(31)) == (0.5,)


def test_no_reminders_once_resolved_or_past_the_deadline():
    state = pending(policy(("db-owners", 1), reminder_fractions=(0.5,)))
    approved = answer(state, vote(CAROL, "db-owners"))

    assert reminders_due(approved, at(40)) == ()
    assert reminders_due(state, at(60)) == ()


def test_marking_a_reminder_the_policy_never_asked_for_is_an_error():
    with pytest.raises(ValueError, match="reminders_due"):
        mark_reminded(pending(policy(("db-owners", 1), reminder_fractions=(0.5,))), (0.9,))


# --- escalation -------------------------------------------------------------------------------


def test_escalation_adds_escalation_group_as_alternative_after_half_the_ttl():
    state = pending(policy(("db-owners", 1), ("security", 1), escalation_group="oncall"))

    assert escalation_due(state, at(29)) is None
    widened = escalation_due(state, at(30))

    assert widened is not None
    assert widened.groups == state.policy.groups
    assert widened.require_all
    assert widened.alternatives == (GroupRequirement("oncall", 1),)


def test_escalation_fraction_is_configurable():
    state = pending(policy(("db-owners", 1), escalation_group="oncall", escalation_fraction=0.8))

    assert escalation_due(state, at(47)) is None
    assert escalation_due(state, at(48)) is not None


def test_escalation_is_not_due_without_group_after_resolution_or_twice():
    plain = pending(policy(("db-owners", 1)))
    with_group = pending(policy(("db-owners", 1), escalation_group="oncall"))
    approved = answer(with_group, vote(CAROL, "db-owners"))
    escalated = escalate_if_due(with_group, at(30))

    assert escalation_due(plain, at(40)) is None
    assert escalation_due(approved, at(40)) is None
    assert escalated is not None and escalated.escalated
    assert escalation_due(escalated, at(40)) is None
    assert escalation_due(with_group, at(60)) is None


def test_escalated_approval_needs_one_member_of_escalation_group():
    state = pending(policy(("db-owners", 1), ("security", 1), escalation_group="oncall"))
    escalated = escalate_if_due(state, at(30))

    assert escalated.status == "pending" and escalated.expires_at == state.expires_at
    assert "or oncall (escalation)" in approval_progress(escalated).summary
    outcome = cast_vote(escalated, vote(ERIN, "oncall"), at(31))

    assert outcome.state.status == "approved"


def test_escalation_group_cannot_answer_before_escalation():
    state = pending(policy(("db-owners", 1), escalation_group="oncall"))

    outcome = cast_vote(state, vote(ERIN, "oncall"), at(10))

    assert isinstance(outcome.refusal, ApproverNotAuthorised)


def test_escalation_approves_at_once_when_an_earlier_approver_is_in_escalation_group():
    state = pending(policy(("db-owners", 1), ("security", 1), escalation_group="oncall"))
    state = answer(state, vote(CAROL, "db-owners", "oncall"))

    escalated = escalate_if_due(state, at(30))

    assert escalated.status == "approved" and escalated.resolved_at == at(30)
    assert resolution_of(escalated).status == "approved"


def test_escalation_does_not_open_a_door_for_the_requester():
    state = pending(policy(("db-owners", 1), escalation_group="oncall"), requester=REPORTER)
    escalated = escalate_if_due(state, at(30))

    outcome = cast_vote(escalated, vote(ALICE, "oncall"), at(31))

    assert isinstance(outcome.refusal, SelfApprovalRefused)


# --- execution window and misuse --------------------------------------------------------------


def test_execution_deadline_is_window_after_approval():
    outcome = cast_vote(
        pending(policy(("db-owners", 1), execution_window=timedelta(minutes=10))), vote(CAROL, "db-owners"), at(5)
    )

    assert execution_deadline(outcome.resolution, outcome.state.policy) == at(15)


def test_denied_action_has_no_execution_deadline():
    outcome = cast_vote(pending(), vote(CAROL, "db-owners", choice="deny"), at(5))

    with pytest.raises(ValueError, match="only approved actions"):
        execution_deadline(outcome.resolution, outcome.state.policy)


def test_time_without_timezone_is_rejected():
    with pytest.raises(ValueError, match="no timezone"):
        cast_vote(pending(), vote(CAROL, "db-owners"), datetime(2025, 3, 4, 9, 5))


def test_policy_without_groups_is_rejected():
    with pytest.raises(InvalidApprovalPolicy, match="at least one approver group"):
        policy()


def test_group_needing_zero_approvals_is_rejected():
    with pytest.raises(InvalidApprovalPolicy, match="at least 1"):
        policy(("db-owners", 0))


def test_unknown_vote_choice_is_rejected():
    with pytest.raises(ValueError, match="neither 'approve' nor 'deny'"):
        vote(CAROL, "db-owners", choice="approved")


def test_unknown_action_says_what_to_check():
    refusal = UnknownAction(action_id="act-404")

    assert refusal.action_id == "act-404"
    assert "check the action id" in str(refusal)


@pytest.mark.parametrize(
    ("groups", "says"),
    [
        ((), "erin is not in a group the policy names required for iam.role.grant (action a1); ask the policy's"),
        (("security",), "erin is not in group security required for iam.role.grant (action a1); ask a member of"),
        (("security", "dba"), "erin is not in any of the groups security, dba required for iam.role.grant"),
    ],
)
def test_a_refused_approver_is_told_who_may_answer_even_when_the_policy_names_nobody(groups, says) -> None:
    refusal = ApproverNotAuthorised(action_id="a1", action="iam.role.grant", approver_id="erin", required_groups=groups)
    assert str(refusal).startswith(says)
    assert " of  " not in str(refusal) and "groups  " not in str(refusal)


@pytest.mark.parametrize(
    ("reason", "says"),
    [
        (5, "is not text"),  # a Teams card's data can carry any JSON
        (["a", "b"], "is not text"),
        ("x" * 2001, "longer than 2000 characters"),
        ("approve \u202eevil", "steers what a reader sees"),
    ],
)
def test_a_vote_reason_is_refused_by_one_rule_for_every_channel(reason: object, says: str) -> None:
    from keyturn.core.approval import reason_problem

    why = reason_problem(reason)
    assert why is not None and says in why
    assert reason_problem("checked the ticket") is None and reason_problem("x" * 2000) is None
