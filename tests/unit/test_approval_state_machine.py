"""Properties of the approval state machine over generated principals, groups and answer sequences.

Each example opens an approval and plays a random sequence of steps against it: votes from a
small pool of people and agents (so requesters, their agents and approvers often overlap),
expiry sweeps, escalation checks and reminder runs, with time moving forward between steps
and often landing exactly on the deadline and the reminder and escalation moments. Every
property is checked over every step of every sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import combinations

from hypothesis import given, settings
from hypothesis import strategies as st

from keyturn.core.approval import (
    AlreadyResolved,
    ApprovalExpired,
    ApprovalPolicy,
    DelegatedVoteRefused,
    DigestMismatch,
    DuplicateVote,
    GroupRequirement,
    PendingApproval,
    SelfApprovalRefused,
    Vote,
    VoteOutcome,
    approval_progress,
    cast_vote,
    escalate_if_due,
    expire_if_due,
    mark_reminded,
    open_approval,
    reminders_due,
)
from keyturn.core.events import Digest, VoteChoice
from keyturn.core.principal import Principal, PrincipalKind

PROPERTY = settings(max_examples=200, deadline=None)

OPENED = datetime(2025, 3, 4, 9, 0, tzinfo=UTC)
TTL = timedelta(minutes=60)
DIGEST = Digest("a" * 64)
OTHER_DIGEST = Digest("b" * 64)

HUMAN_IDS = tuple(f"human:p{number}" for number in range(6))
AGENT_IDS = ("agent:a0", "agent:a1", "agent:a2")
REQUIRED_GROUPS = ("security", "db-owners", "sre")
EVERY_GROUP = (*REQUIRED_GROUPS, "oncall", "finance")


# --- generators -------------------------------------------------------------------------------
# Built from few primitive draws (a sample from a fixed pool, a bit mask) so that generating
# an example costs about as little as playing it.

HUMANS = tuple(Principal(principal_id, PrincipalKind.HUMAN) for principal_id in HUMAN_IDS)
AGENTS = tuple(
    Principal(agent_id, PrincipalKind.AGENT, chain)
    for agent_id in AGENT_IDS
    for chain in (
        *((human,) for human in HUMAN_IDS),
        *((first, second) for first in HUMAN_IDS for second in HUMAN_IDS if first != second),
    )
)
# Requesters: half humans, half agents acting for one or two humans of the same pool.
principals = st.sampled_from(HUMANS * (len(AGENTS) // len(HUMANS)) + AGENTS)
# Approvers: mostly humans, so that most answers get past the self-approval rule.
approvers = st.sampled_from(HUMANS * (3 * len(AGENTS) // len(HUMANS)) + AGENTS)


@st.composite
def policies(draw) -> ApprovalPolicy:
    names = draw(st.lists(st.sampled_from(REQUIRED_GROUPS), min_size=1, max_size=3, unique=True))
    return ApprovalPolicy(
        groups=tuple(GroupRequirement(name, draw(st.sampled_from((1, 1, 2, 3)))) for name in names),
        require_all=draw(st.booleans()),
        pending_ttl=TTL,
        execution_window=timedelta(minutes=10),
        escalation_group=draw(st.sampled_from((None, "oncall", *REQUIRED_GROUPS))),
        reminder_fractions=draw(st.sampled_from(((), (0.5,), (0.25, 0.75), (0.25, 0.5, 0.75)))),
        escalation_fraction=draw(st.sampled_from((0.25, 0.5, 0.75))),
    )


def groups_from_mask(mask: int) -> frozenset[str]:
    return frozenset(group for bit, group in enumerate(EVERY_GROUP) if mask >> bit & 1)


def memberships():
    """The groups each principal id counts for, as the policy engine would decide it.

    Two random masks or-ed together: each principal is in each group with probability 3/4.
    """
    ids = (*HUMAN_IDS, *AGENT_IDS)
    width = len(EVERY_GROUP)
    masks = st.integers(0, 2 ** (width * len(ids)) - 1)
    return st.tuples(masks, masks).map(
        lambda pair: {
            principal_id: groups_from_mask((pair[0] | pair[1]) >> (width * index))
            for index, principal_id in enumerate(ids)
        }
    )


@dataclass(frozen=True)
class Step:
    kind: str
    wait: timedelta
    approver: Principal
    choice: str
    digest: Digest


# Mostly quarter-hours of the one-hour TTL, so steps land exactly on the deadline and on the
# reminder and escalation moments; a microsecond either side now and then.
MICROSECOND = timedelta(microseconds=1)
waits = st.sampled_from(
    (
        *(timedelta(minutes=minutes) for minutes in (0, 5, 5, 15, 15, 15, 30)),
        MICROSECOND,
        timedelta(minutes=15) - MICROSECOND,
    )
)

steps = st.lists(
    st.builds(
        Step,
        kind=st.sampled_from(("vote", "vote", "vote", "vote", "expire", "escalate", "remind")),
        wait=waits,
        approver=approvers,
        choice=st.sampled_from(("approve",) * 7 + ("deny",)),
        digest=st.sampled_from((DIGEST, DIGEST, DIGEST, OTHER_DIGEST)),
    ),
    min_size=4,
    max_size=20,
)


@dataclass(frozen=True)
class Scenario:
    requester: Principal
    policy: ApprovalPolicy
    groups_of: dict[str, frozenset[str]]
    steps: list[Step]


scenarios = st.builds(Scenario, requester=principals, policy=policies(), groups_of=memberships(), steps=steps)


# --- playing a scenario -----------------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    """One step as played: the state before and after, and what the step returned."""

    kind: str
    now: datetime
    before: PendingApproval
    after: PendingApproval
    vote: Vote | None = None
    outcome: VoteOutcome | None = None
    returned: object = None


Played = list[Transition]


def play(scenario: Scenario) -> Played:
    opened = open_approval("act-1", scenario.requester, DIGEST, scenario.policy, OPENED, action="db.export")
    state, now, played = opened, OPENED, []
    for step in scenario.steps:
        now += step.wait
        before = state
        if step.kind == "vote":
            vote = Vote(
                approver=step.approver,
                choice=VoteChoice(step.choice),
                payload_digest=step.digest,
                cast_at=now,
                counts_for=tuple(sorted(scenario.groups_of[step.approver.id])),
                channel="cli",
            )
            outcome = cast_vote(state, vote, now)
            state = outcome.state
            played.append(Transition("vote", now, before, state, vote=vote, outcome=outcome))
        elif step.kind == "expire":
            expired = expire_if_due(state, now)
            state = expired or state
            played.append(Transition("expire", now, before, state, returned=expired))
        elif step.kind == "escalate":
            escalated = escalate_if_due(state, now)
            state = escalated or state
            played.append(Transition("escalate", now, before, state, returned=escalated))
        else:
            due = reminders_due(state, now)
            state = mark_reminded(state, due)
            played.append(Transition("remind", now, before, state, returned=due))
    return played


def quorum_by_hall(policy: ApprovalPolicy, votes: tuple[Vote, ...]) -> bool:
    """The quorum rule computed independently of the implementation (Hall's condition).

    With require_all, seats can be filled by distinct people iff every set of groups has at
    least as many approvers counting for one of them as the seats those groups need together.
    """
    first_vote: dict[str, frozenset[str]] = {}
    for vote in votes:
        if vote.choice == "approve":
            first_vote.setdefault(vote.approver.id, frozenset(vote.counts_for))

    def counting(names: set[str]) -> int:
        return sum(1 for groups in first_vote.values() if groups & names)

    if any(counting({alternative.name}) >= alternative.min_approvals for alternative in policy.alternatives):
        return True
    if not policy.require_all:
        return any(counting({group.name}) >= group.min_approvals for group in policy.groups)
    return all(
        counting({group.name for group in subset}) >= sum(group.min_approvals for group in subset)
        for size in range(1, len(policy.groups) + 1)
        for subset in combinations(policy.groups, size)
    )


def vote_transitions(played: Played) -> Played:
    return [transition for transition in played if transition.kind == "vote"]


# --- properties -------------------------------------------------------------------------------


def no_vote_from_the_requesting_chain_is_ever_accepted(scenario: Scenario, played: Played) -> None:
    for transition in vote_transitions(played):
        if transition.vote.approver.everyone & scenario.requester.everyone:
            assert not transition.outcome.accepted
            refusal = transition.outcome.refusal
            assert isinstance(refusal, (SelfApprovalRefused, AlreadyResolved, ApprovalExpired))
            assert transition.after is transition.before
        accepted_from_chain = [
            vote for vote in transition.after.votes if vote.approver.everyone & scenario.requester.everyone
        ]
        assert accepted_from_chain == []


def no_vote_acting_for_another_is_ever_accepted(scenario: Scenario, played: Played) -> None:
    for transition in vote_transitions(played):
        if transition.vote.approver.chain:
            assert not transition.outcome.accepted
            assert transition.after is transition.before
            open_ = transition.before.status == "pending" and transition.now < transition.before.expires_at
            outside_chain = not transition.vote.approver.everyone & scenario.requester.everyone
            if open_ and outside_chain:
                assert isinstance(transition.outcome.refusal, DelegatedVoteRefused)
        assert all(not vote.approver.chain for vote in transition.after.votes)


def status_leaves_pending_once_and_never_changes_again(scenario: Scenario, played: Played) -> None:
    assert played[0].before.status == "pending"
    for transition in played:
        if transition.before.status != "pending":
            assert transition.after == transition.before
        else:
            assert transition.after.status in {"pending", "approved", "denied", "expired"}
        assert (transition.after.resolved_at is None) == (transition.after.status == "pending")


def resolved_approval_never_accepts_a_vote(scenario: Scenario, played: Played) -> None:
    for transition in vote_transitions(played):
        if transition.before.is_resolved:
            assert not transition.outcome.accepted
            assert isinstance(transition.outcome.refusal, AlreadyResolved)
            assert transition.outcome.resolution is None
            assert transition.after is transition.before


def approved_exactly_when_quorum_holds_over_accepted_votes(scenario: Scenario, played: Played) -> None:
    for transition in played:
        state = transition.after
        if state.status == "approved":
            assert quorum_by_hall(state.policy, state.votes)
            assert all(vote.choice == "approve" for vote in state.votes)
        if state.status == "pending":
            assert not quorum_by_hall(state.policy, state.votes)


def expired_only_through_expiry_at_or_after_deadline_and_never_denied(scenario: Scenario, played: Played) -> None:
    for transition in played:
        became_expired = transition.before.status != "expired" and transition.after.status == "expired"
        if became_expired:
            assert transition.kind == "expire"
            assert transition.now >= transition.before.expires_at
            assert transition.after.votes == transition.before.votes
        if transition.before.status == "expired":
            assert transition.after.status == "expired"
        if transition.kind == "expire" and transition.before.status == "pending":
            assert (transition.returned is not None) == (transition.now >= transition.before.expires_at)


def vote_on_other_digest_never_changes_state(scenario: Scenario, played: Played) -> None:
    for transition in vote_transitions(played):
        if transition.vote.payload_digest != DIGEST:
            assert not transition.outcome.accepted
            assert transition.after is transition.before
            open_ = transition.before.status == "pending" and transition.now < transition.before.expires_at
            outside_chain = not transition.vote.approver.everyone & scenario.requester.everyone
            own_name = not transition.vote.approver.chain
            authorised = set(transition.vote.counts_for) & set(transition.before.policy.required_group_names)
            if open_ and outside_chain and own_name and authorised:
                assert isinstance(transition.outcome.refusal, DigestMismatch)


def duplicate_votes_never_change_counts(scenario: Scenario, played: Played) -> None:
    for transition in vote_transitions(played):
        answered = {vote.approver.id for vote in transition.before.votes}
        if transition.vote.approver.id in answered:
            assert not transition.outcome.accepted
            assert transition.after is transition.before
            assert approval_progress(transition.after) == approval_progress(transition.before)
            open_ = transition.before.status == "pending" and transition.now < transition.before.expires_at
            outside_chain = not transition.vote.approver.everyone & scenario.requester.everyone
            own_name = not transition.vote.approver.chain
            if open_ and outside_chain and own_name and transition.vote.payload_digest == DIGEST:
                assert isinstance(transition.outcome.refusal, DuplicateVote)
        ids = [vote.approver.id for vote in transition.after.votes]
        assert len(ids) == len(set(ids))


def accepted_votes_are_authorised_bound_to_the_digest_and_in_time(scenario: Scenario, played: Played) -> None:
    for transition in vote_transitions(played):
        if transition.outcome.accepted:
            vote = transition.vote
            assert transition.before.status == "pending"
            assert transition.now < transition.before.expires_at
            assert vote.payload_digest == transition.before.payload_digest
            assert set(vote.counts_for) & set(transition.before.policy.required_group_names)
            assert transition.after.votes == (*transition.before.votes, vote)
            resolved = transition.after.status != "pending"
            assert (transition.outcome.resolution is not None) == resolved
            if vote.choice == "deny":
                assert transition.after.status == "denied"
        else:
            assert transition.outcome.refusal is not None
            assert transition.outcome.resolution is None


def each_reminder_is_due_once_exactly_from_its_moment(scenario: Scenario, played: Played) -> None:
    returned: list[float] = []
    for transition in played:
        if transition.kind != "remind":
            continue
        before = transition.before
        if before.status == "pending" and transition.now < before.expires_at:
            expected = tuple(
                fraction
                for fraction in before.policy.reminder_fractions
                if fraction not in before.reminders_sent and transition.now >= OPENED + TTL * fraction
            )
        else:
            expected = ()
        assert transition.returned == expected
        returned.extend(transition.returned)
    assert len(returned) == len(set(returned))


def escalation_widens_once_from_its_moment_and_never_denies_or_moves_the_deadline(
    scenario: Scenario, played: Played
) -> None:
    for transition in played:
        if transition.kind != "escalate":
            continue
        before, policy = transition.before, transition.before.policy
        due = (
            policy.escalation_group is not None
            and before.status == "pending"
            and not before.escalated
            and OPENED + TTL * policy.escalation_fraction <= transition.now < before.expires_at
        )
        assert (transition.returned is not None) == due
        if not due:
            assert transition.after is before
            continue
        assert transition.after.escalated
        assert transition.after.status in {"pending", "approved"}
        assert transition.after.expires_at == before.expires_at
        assert transition.after.policy.groups == policy.groups
        assert transition.after.policy.alternatives == (GroupRequirement(policy.escalation_group, 1),)


# --- the property tests: each plays generated scenarios and checks a family of properties -------


@PROPERTY
@given(scenarios)
def test_only_authorised_answers_from_outside_the_chain_on_the_shown_parameters_count(scenario):
    played = play(scenario)

    no_vote_from_the_requesting_chain_is_ever_accepted(scenario, played)
    no_vote_acting_for_another_is_ever_accepted(scenario, played)
    vote_on_other_digest_never_changes_state(scenario, played)
    duplicate_votes_never_change_counts(scenario, played)
    accepted_votes_are_authorised_bound_to_the_digest_and_in_time(scenario, played)


@PROPERTY
@given(scenarios)
def test_status_leaves_pending_once_and_expires_only_at_the_deadline(scenario):
    played = play(scenario)

    status_leaves_pending_once_and_never_changes_again(scenario, played)
    resolved_approval_never_accepts_a_vote(scenario, played)
    expired_only_through_expiry_at_or_after_deadline_and_never_denied(scenario, played)


@PROPERTY
@given(scenarios)
def test_approved_exactly_when_quorum_holds_over_accepted_votes(scenario):
    approved_exactly_when_quorum_holds_over_accepted_votes(scenario, played=play(scenario))


@PROPERTY
@given(scenarios)
def test_reminders_and_escalation_fall_due_once_from_their_moment(scenario):
    played = play(scenario)

    each_reminder_is_due_once_exactly_from_its_moment(scenario, played)
    escalation_widens_once_from_its_moment_and_never_denies_or_moves_the_deadline(scenario, played)


# --- order of approvals -----------------------------------------------------------------------

OUTSIDER = Principal("agent:asker", PrincipalKind.AGENT, ("human:owner",))


@st.composite
def approving_rounds(draw):
    """A policy, distinct approvers outside the requesting chain with their groups, and a reordering."""
    policy = draw(policies())
    people = draw(st.lists(st.sampled_from(HUMAN_IDS), min_size=1, max_size=5, unique=True))
    masks = st.integers(0, 2 ** len(EVERY_GROUP) - 1)
    groups_of = {person: groups_from_mask(draw(masks)) for person in people}
    order = draw(st.permutations(range(len(people))))
    return policy, [(person, groups_of[person]) for person in people], order


def approve_in_turn(policy: ApprovalPolicy, answers: list[tuple[str, frozenset[str]]]) -> PendingApproval:
    """Each person approves in turn, a minute apart, well before the deadline."""
    state = open_approval("act-2", OUTSIDER, DIGEST, policy, OPENED, action="db.export")
    for minute, (person, groups) in enumerate(answers, start=1):
        now = OPENED + timedelta(minutes=minute)
        vote = Vote(
            approver=Principal(person, PrincipalKind.HUMAN),
            choice=VoteChoice.APPROVE,
            payload_digest=DIGEST,
            cast_at=now,
            counts_for=tuple(sorted(groups)),
            channel="slack",
        )
        state = cast_vote(state, vote, now).state
    return state


@PROPERTY
@given(approving_rounds())
def test_order_of_the_same_approvals_does_not_change_the_outcome(round_):
    policy, answers, order = round_

    as_given = approve_in_turn(policy, answers)
    reordered = approve_in_turn(policy, [answers[index] for index in order])

    assert as_given.status == reordered.status
    authorised = tuple(
        Vote(
            approver=Principal(person, PrincipalKind.HUMAN),
            choice=VoteChoice.APPROVE,
            payload_digest=DIGEST,
            cast_at=OPENED,
            counts_for=tuple(sorted(groups)),
            channel="slack",
        )
        for person, groups in answers
        if groups & set(policy.required_group_names)
    )
    assert (as_given.status == "approved") == quorum_by_hall(policy, authorised)
