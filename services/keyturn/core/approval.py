"""The approval state machine: who may answer a pending action, when it is decided, when it lapses.

Pure rules over plain data. Nothing here reads a clock or does I/O: every function that
needs the time takes it as an aware ``datetime`` called ``now``, and every change returns a
new immutable value.

Lifecycle of one approval::

    open_approval ──> pending ──cast_vote──────> approved | denied
                         │  └──escalate_if_due──> approved (rarely, see escalation_due)
                         └─────expire_if_due────> expired

``approved``, ``denied`` and ``expired`` are final. Every answer that arrives after that is
refused with ``AlreadyResolved`` (the caller records it; it is never applied). A pending TTL
running out always ends as ``expired``, never as ``denied``.

Who may answer (checked in this order, the first failure is the refusal):

1. not anyone in the requesting chain (``SelfApprovalRefused``): the approver, and anyone the
   approver acts for, must be outside ``requester.everyone``, compared by ``principal_key`` (a
   re-cased or fullwidth id is the same person: ``Principal.shares_anyone_with``). No admin
   exemption, whatever groups the approver counts for;
2. in their own name (``DelegatedVoteRefused``): a vote is a person's own, so an approver whose
   token carries a delegation chain (an ``act`` claim: someone acting for someone else) is
   refused, whoever it names. Counted by ``sub`` alone, one person acting twice (once as
   themselves, once through another's token) would fill two seats of a quorum;
3. a member of at least one required group (``ApproverNotAuthorised``); membership is decided
   by the policy engine and arrives as ``Vote.counts_for``;
4. shown the exact parameters (``DigestMismatch`` when the vote's digest differs);
5. once per approver (``DuplicateVote``): an answer cannot be changed or repeated.

Quorum rule (see ``quorum_reached``): a single deny by an authorised approver ends the
approval as denied. Approvals count per distinct person. With ``require_all`` each person
fills at most one group's seat, so two groups needing one approval each always need two
different people (separation of duties); without ``require_all`` any one group reaching its
minimum suffices, and a person counts for every group they are in.

A vote and a group requirement are the event types of ``keyturn.core.events`` (the Avro
contract): the rules read them as they travel, so nothing translates between two models.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal, get_args

from keyturn.core.events import ApprovalRequirement, Digest, GroupRequirement, Vote, VoteChoice
from keyturn.core.principal import Principal
from keyturn.core.text import words_problem

ApprovalStatus = Literal["pending", "approved", "denied", "expired"]
FinalStatus = Literal["approved", "denied", "expired"]

FINAL_STATUSES: frozenset[str] = frozenset({"approved", "denied", "expired"})

# Where a vote was cast: the approval API (``api``, ``cli``: what its caller says it is), the
# console, Slack and Teams. A closed set, because the channel travels unmasked on the votes, the
# resolved and the audit topics and into the console's history: free text there would carry
# whatever a caller typed into it. ``Vote.channel`` stays a string in the Avro schema (its frozen
# history); the API checks what its callers claim against ``API_VOTE_CHANNELS`` below
# (``approval.http.VoteRequest``), and the adapters pass their own name, typed as ``VoteChannel``.
VoteChannel = Literal["api", "cli", "console", "slack", "teams"]
VOTE_CHANNELS: frozenset[str] = frozenset(get_args(VoteChannel))
# What a caller of the approval API may say it is. The console, Slack and Teams are the service's
# own adapters and name themselves; a vote posted to the API claiming one of them would be recorded
# (and audited) as cast where it was not.
ApiVoteChannel = Literal["api", "cli"]
API_VOTE_CHANNELS: frozenset[str] = frozenset(get_args(ApiVoteChannel))
DEFAULT_ESCALATION_FRACTION = 0.5


class InvalidApprovalPolicy(ValueError):
    """The approval requirements handed over by the policy decision cannot work as written."""


# --- the data ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ApprovalPolicy:
    """What it takes to approve one action, as decided by the policy engine.

    ``groups`` with ``require_all=True``: every group must reach its minimum; with
    ``require_all=False``: any one group reaching its minimum suffices.
    ``alternatives``: groups any one of which, reaching its minimum, suffices on its own,
    whatever ``require_all`` says. Normally empty; escalation adds the escalation group here.
    ``reminder_fractions``: fractions of ``pending_ttl`` after which approvers are reminded.
    ``escalation_fraction``: fraction of ``pending_ttl`` after which, with no quorum yet,
    ``escalation_group`` (if any) may approve alone.
    """

    groups: tuple[GroupRequirement, ...]
    require_all: bool
    pending_ttl: timedelta
    execution_window: timedelta
    escalation_group: str | None = None
    reminder_fractions: tuple[float, ...] = ()
    escalation_fraction: float = DEFAULT_ESCALATION_FRACTION
    alternatives: tuple[GroupRequirement, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", tuple(self.groups))
        object.__setattr__(self, "alternatives", tuple(self.alternatives))
        object.__setattr__(self, "reminder_fractions", tuple(sorted(set(self.reminder_fractions))))
        if not self.groups:
            raise InvalidApprovalPolicy(
                "an approval needs at least one approver group and the policy decision named none; "
                "add an approver group for this action to the policy data"
            )
        for requirement in (*self.groups, *self.alternatives):
            _check_requirement(requirement)
        for kind, requirements in (("groups", self.groups), ("alternatives", self.alternatives)):
            names = [requirement.name for requirement in requirements]
            repeated = sorted({name for name in names if names.count(name) > 1})
            if repeated:
                raise InvalidApprovalPolicy(
                    f"approval {kind} name {', '.join(repeated)} more than once; list each group once with its minimum"
                )
        if self.pending_ttl <= timedelta(0):
            raise InvalidApprovalPolicy(
                f"pending_ttl must be positive, got {self.pending_ttl}; set how long approvers have to answer"
            )
        if self.execution_window <= timedelta(0):
            raise InvalidApprovalPolicy(
                f"execution_window must be positive, got {self.execution_window}; "
                "set how long an approved action stays executable"
            )
        for fraction in self.reminder_fractions:
            if not 0 < fraction < 1:
                raise InvalidApprovalPolicy(
                    f"reminder fraction {fraction} is outside (0, 1); "
                    "use e.g. 0.5 to remind approvers half way through the pending TTL"
                )
        if not 0 < self.escalation_fraction < 1:
            raise InvalidApprovalPolicy(
                f"escalation_fraction {self.escalation_fraction} is outside (0, 1); "
                "use e.g. 0.5 to escalate half way through the pending TTL"
            )

    @property
    def required_group_names(self) -> tuple[str, ...]:
        """Every group whose members may answer, in policy order, alternatives last."""
        names: list[str] = []
        for requirement in (*self.groups, *self.alternatives):
            if requirement.name not in names:
                names.append(requirement.name)
        return tuple(names)


@dataclass(frozen=True, kw_only=True)
class PendingApproval:
    """The approval state of one action.

    ``action`` is the action type (e.g. ``db.export``); ``votes`` holds accepted votes only,
    in the order they were accepted; ``reminders_sent`` the reminder fractions already sent;
    ``resolved_at`` is set once the status is final.
    """

    action_id: str
    action: str
    requester: Principal
    payload_digest: Digest
    policy: ApprovalPolicy
    opened_at: datetime
    expires_at: datetime
    votes: tuple[Vote, ...] = ()
    status: ApprovalStatus = "pending"
    resolved_at: datetime | None = None
    escalated: bool = False
    reminders_sent: tuple[float, ...] = ()

    @property
    def is_resolved(self) -> bool:
        """Whether the status is final (approved, denied or expired)."""
        return self.status in FINAL_STATUSES


@dataclass(frozen=True)
class Resolution:
    """How an approval ended: the fact the approval service publishes as ``resolved``.

    ``votes`` are the deciding votes: every accepted approval when approved, the deny when
    denied, none when expired. ``payload_digest`` binds the outcome to the exact parameters.
    """

    action_id: str
    status: FinalStatus
    at: datetime
    payload_digest: Digest
    votes: tuple[Vote, ...]
    reason: str | None


@dataclass(frozen=True)
class GroupProgress:
    """How far one group is: ``have`` of ``need`` approvals, from ``approvers``."""

    name: str
    have: int
    need: int
    approvers: tuple[str, ...]
    alternative: bool = False

    @property
    def satisfied(self) -> bool:
        """Whether this group has reached its minimum."""
        return self.have >= self.need


@dataclass(frozen=True)
class ApprovalProgress:
    """Where an approval stands, per group and as one line for people.

    ``have``/``need``: with ``require_all``, the approvals that fill a group seat out of the sum
    of the groups' minimums; otherwise those of the group closest to its minimum.
    """

    groups: tuple[GroupProgress, ...]
    have: int
    need: int
    approved_by: tuple[str, ...]
    summary: str


@dataclass(frozen=True)
class VoteOutcome:
    """What ``cast_vote`` made of one vote.

    ``state`` is the new state (the same object when refused); ``refusal`` says why a vote was
    refused (an exception instance, not raised); ``resolution`` is set only when this vote
    resolved the approval.
    """

    state: PendingApproval
    accepted: bool
    refusal: ApprovalRefusal | None
    resolution: Resolution | None
    progress: ApprovalProgress


# --- refusals ---------------------------------------------------------------------------------


class ApprovalRefusal(Exception):
    """An answer or request the approval rules refused; the caller records it, never applies it."""

    def __init__(self, message: str, *, action_id: str) -> None:
        super().__init__(message)
        self.action_id = action_id


class SelfApprovalRefused(ApprovalRefusal):
    """Someone in the requesting chain tried to answer the action."""

    def __init__(self, *, action_id: str, approver_id: str, requester: Principal, shared: frozenset[str]) -> None:
        super().__init__(
            f"{approver_id} cannot answer action {action_id} requested by {_describe(requester)}: "
            f"{', '.join(sorted(shared))} is in the requesting chain. Nobody who asked for an action, "
            "or acts for or through whoever asked, may approve or deny it, whatever their groups; "
            "ask an approver outside that chain",
            action_id=action_id,
        )
        self.approver_id = approver_id
        self.requester_id = requester.id
        self.shared = shared


class DelegatedVoteRefused(ApprovalRefusal):
    """The answer came from a principal acting for someone else (a delegation chain)."""

    def __init__(self, *, action_id: str, approver: Principal) -> None:
        super().__init__(
            f"{approver.id} answered action {action_id} acting for {' for '.join(approver.chain)}; a vote is a "
            "person's own, so an answer from a token that carries a delegation (an act claim) is refused, "
            "whoever it names. Answer with a token of your own, not one acting for someone else",
            action_id=action_id,
        )
        self.approver_id = approver.id
        self.chain = approver.chain


class ApproverNotAuthorised(ApprovalRefusal):
    """The approver counts for none of the groups this action needs."""

    def __init__(self, *, action_id: str, action: str, approver_id: str, required_groups: tuple[str, ...]) -> None:
        if not required_groups:  # the policy names nobody: say so, rather than an empty list of groups
            where = "a group the policy names"
            who = "the policy's owners to name who may"
        elif len(required_groups) == 1:
            where = f"group {required_groups[0]}"
            who = f"a member of {required_groups[0]}"
        else:
            where = f"any of the groups {', '.join(required_groups)}"
            who = "a member of one of them"
        super().__init__(
            f"{approver_id} is not in {where} required for {action} (action {action_id}); ask {who} to answer",
            action_id=action_id,
        )
        self.approver_id = approver_id
        self.action = action
        self.required_groups = required_groups


class DigestMismatch(ApprovalRefusal):
    """The approver was shown parameters other than the ones pending."""

    def __init__(self, *, action_id: str, approver_id: str, expected: str, shown: str) -> None:
        super().__init__(
            f"{approver_id} answered action {action_id} having been shown parameters with digest "
            f"{shown[:16]}, but the pending parameters have digest {expected[:16]}; the answer was not "
            "applied. Show the approver the current request and ask again",
            action_id=action_id,
        )
        self.approver_id = approver_id
        self.expected = expected
        self.shown = shown


class DuplicateVote(ApprovalRefusal):
    """The approver has already answered; each approver counts once and cannot change the answer."""

    def __init__(self, *, action_id: str, approver_id: str, earlier: Vote) -> None:
        super().__init__(
            f"{approver_id} already answered action {action_id} ({earlier.choice.value}, "
            f"{earlier.cast_at.isoformat()}); each approver counts once, so this answer was not applied. "
            "To stop the action, ask another approver to deny it",
            action_id=action_id,
        )
        self.approver_id = approver_id
        self.earlier = earlier


class AlreadyResolved(ApprovalRefusal):
    """The approval has already ended; late answers are recorded, never applied."""

    def __init__(self, *, action_id: str, status: str, resolved_at: datetime | None) -> None:
        when = f" at {resolved_at.isoformat()}" if resolved_at is not None else ""
        super().__init__(
            f"action {action_id} was already {status}{when}; this answer was recorded but not applied. "
            "To act again, the requester must submit a new request",
            action_id=action_id,
        )
        self.status = status
        self.resolved_at = resolved_at


class ApprovalExpired(ApprovalRefusal):
    """The pending TTL ran out before this answer; the caller should expire the approval."""

    def __init__(self, *, action_id: str, expires_at: datetime) -> None:
        super().__init__(
            f"action {action_id} stopped taking answers at {expires_at.isoformat()} when its pending TTL "
            "ran out; the answer was not applied. Expire it (expire_if_due) and ask the requester to "
            "submit again if it is still needed",
            action_id=action_id,
        )
        self.expires_at = expires_at


class UnknownAction(ApprovalRefusal):
    """An answer named an action with no approval on record (raised or returned by callers)."""

    def __init__(self, *, action_id: str) -> None:
        super().__init__(
            f"no approval is on record for action {action_id}; check the action id, "
            "or whether the action needed approval at all",
            action_id=action_id,
        )


def acts_for_another(approver: Principal) -> bool:
    """Whether ``approver`` acts for someone else (its token carries an ``act`` chain), so it may not
    answer any action (``DelegatedVoteRefused``): what pages check before they offer the buttons."""
    return bool(approver.chain)


# --- the data, from the decision -------------------------------------------------------------


def approval_policy(requirement: ApprovalRequirement) -> ApprovalPolicy:
    """The policy of one approval from the decision's approval requirement (TTLs in seconds)."""
    return ApprovalPolicy(
        groups=requirement.groups,
        require_all=requirement.require_all,
        pending_ttl=timedelta(seconds=requirement.pending_ttl_s),
        execution_window=timedelta(seconds=requirement.execution_window_s),
        escalation_group=requirement.escalation_group,
        reminder_fractions=requirement.reminder_fractions,
    )


def vote_choice(answer: str) -> VoteChoice:
    """The choice an answer names: ``approve`` or ``deny``, nothing else."""
    try:
        return VoteChoice(answer)
    except ValueError:
        raise ValueError(
            f"vote choice {answer!r} is neither 'approve' nor 'deny'; "
            "the channel adapter must map the answer to one of those two"
        ) from None


# --- transitions ------------------------------------------------------------------------------


def open_approval(
    action_id: str,
    requester: Principal,
    payload_digest: Digest,
    policy: ApprovalPolicy,
    now: datetime,
    *,
    action: str,
) -> PendingApproval:
    """Start waiting for approvers of ``action`` (e.g. ``db.export``) until ``policy.pending_ttl`` passes."""
    _require_aware(now)
    if not payload_digest.hex:
        raise ValueError(f"action {action_id} has no payload digest; an approval must be bound to the exact parameters")
    return PendingApproval(
        action_id=action_id,
        action=action,
        requester=requester,
        payload_digest=payload_digest,
        policy=policy,
        opened_at=now,
        expires_at=now + policy.pending_ttl,
    )


def cast_vote(state: PendingApproval, vote: Vote, now: datetime) -> VoteOutcome:
    """Apply one answer, or refuse it and leave ``state`` unchanged.

    Refusals, in the order checked: ``AlreadyResolved``, ``ApprovalExpired`` (``now`` at or
    after ``expires_at``: the time of processing decides, so a late delivery fails closed),
    ``SelfApprovalRefused``, ``DelegatedVoteRefused``, ``ApproverNotAuthorised``, ``DigestMismatch``,
    ``DuplicateVote``. An accepted deny ends the approval as denied; an accepted approval that completes the
    quorum ends it as approved; ``resolved_at`` is ``now``.
    """
    _require_aware(now)
    refusal = _refusal_for(state, vote, now)
    if refusal is not None:
        return VoteOutcome(
            state=state, accepted=False, refusal=refusal, resolution=None, progress=approval_progress(state)
        )
    votes = (*state.votes, vote)
    if vote.choice is VoteChoice.DENY:
        after = replace(state, votes=votes, status="denied", resolved_at=now)
    elif quorum_reached(state.policy, votes):
        after = replace(state, votes=votes, status="approved", resolved_at=now)
    else:
        after = replace(state, votes=votes)
    return VoteOutcome(
        state=after,
        accepted=True,
        refusal=None,
        resolution=resolution_of(after),
        progress=approval_progress(after),
    )


def review_refusal(
    *,
    action_id: str,
    action: str,
    requester: Principal,
    payload_digest: Digest,
    reviewer_groups: tuple[str, ...],
    earlier_reviews: tuple[Vote, ...],
    vote: Vote,
) -> ApprovalRefusal | None:
    """Why a review after the fact of a break-glass action is refused, or ``None`` to record it.

    A break-glass action ran without approval; an answer on it is its review, never a quorum or
    a resolution. The same rules as an approval choose who may give it, in the same order:
    ``SelfApprovalRefused`` (the requester and anyone in its chain), ``DelegatedVoteRefused`` (a
    reviewer acting for someone else), ``ApproverNotAuthorised``
    (not in a reviewer group, as the policy says through ``Vote.counts_for``), ``DigestMismatch``
    (shown other parameters), ``DuplicateVote`` (each reviewer reviews once). ``deny`` means
    "reviewed and objected" and is recorded like ``approve``.
    """
    return _answer_refusal(action_id, action, requester, payload_digest, reviewer_groups, earlier_reviews, vote)


def expire_if_due(state: PendingApproval, now: datetime) -> PendingApproval | None:
    """The expired state when a pending approval's TTL has run out at ``now``, else ``None``.

    Due exactly at ``expires_at`` and after. ``resolved_at`` is ``expires_at`` (when the TTL ran
    out), not when the sweep noticed. Never ends as denied; does nothing to a resolved approval.
    """
    _require_aware(now)
    if state.status != "pending" or now < state.expires_at:
        return None
    return replace(state, status="expired", resolved_at=state.expires_at)


def reminders_due(state: PendingApproval, now: datetime) -> tuple[float, ...]:
    """Reminder fractions of the pending TTL that have passed at ``now`` and were not yet sent.

    Several may be due at once (e.g. after a restart); send one reminder and mark them all.
    Nothing is due once the approval is resolved or its TTL has run out.
    """
    _require_aware(now)
    if state.status != "pending" or now >= state.expires_at:
        return ()
    return tuple(
        fraction
        for fraction in state.policy.reminder_fractions
        if fraction not in state.reminders_sent and now >= _moment(state, fraction)
    )


def mark_reminded(state: PendingApproval, fractions: tuple[float, ...]) -> PendingApproval:
    """The state with ``fractions`` recorded as sent, so they are never due again."""
    unknown = sorted(set(fractions) - set(state.policy.reminder_fractions))
    if unknown:
        raise ValueError(
            f"reminder fractions {unknown} are not in the policy of action {state.action_id} "
            f"({list(state.policy.reminder_fractions)}); mark only fractions returned by reminders_due"
        )
    return replace(state, reminders_sent=tuple(sorted({*state.reminders_sent, *fractions})))


def escalation_due(state: PendingApproval, now: datetime) -> ApprovalPolicy | None:
    """The widened policy when the approval should escalate at ``now``, else ``None``.

    Due when the policy names an ``escalation_group``, the approval is still pending (so the
    quorum has not been reached), it has not escalated yet, and ``escalation_fraction`` of the
    pending TTL has passed but the TTL has not run out. The widened policy keeps every original
    requirement and adds the escalation group as an *alternative* with a minimum of 1: one of
    its members may approve (or deny) alone, even when ``require_all`` is set; everyone else's
    route stays open. The deadline does not move, and self-approval rules still apply.
    """
    _require_aware(now)
    group = state.policy.escalation_group
    if (
        group is None
        or state.status != "pending"
        or state.escalated
        or now >= state.expires_at
        or now < _moment(state, state.policy.escalation_fraction)
    ):
        return None
    return replace(state.policy, alternatives=(*state.policy.alternatives, GroupRequirement(group, 1)))


def escalate_if_due(state: PendingApproval, now: datetime) -> PendingApproval | None:
    """The escalated state when escalation is due at ``now`` (see ``escalation_due``), else ``None``.

    If an approval already accepted came from a member of the escalation group, the widened
    policy is met at once and the returned state is ``approved`` at ``now``: that person
    approved these exact parameters and may now approve alone. Check ``resolution_of``.
    """
    widened = escalation_due(state, now)
    if widened is None:
        return None
    escalated = replace(state, policy=widened, escalated=True)
    if quorum_reached(widened, escalated.votes):
        return replace(escalated, status="approved", resolved_at=now)
    return escalated


# --- reading the state ------------------------------------------------------------------------


def approval_deadline(state: PendingApproval) -> datetime:
    """The moment the approval stops taking answers and is due to expire."""
    return state.expires_at


def execution_deadline(resolution: Resolution, policy: ApprovalPolicy) -> datetime:
    """The last moment an approved action may start executing: approval time plus the window."""
    if resolution.status != "approved":
        raise ValueError(
            f"action {resolution.action_id} was {resolution.status}, so it has no execution window; "
            "only approved actions may be executed"
        )
    return resolution.at + policy.execution_window


# an approval the service closed itself, with no vote (the approval service could not take it in)
CLOSED_WITHOUT_A_VOTE = "the approval service could not take this approval in, so nobody could answer it"


def _last_denial(state: PendingApproval) -> Vote | None:
    return next((vote for vote in reversed(state.votes) if vote.choice is VoteChoice.DENY), None)


def resolution_of(state: PendingApproval) -> Resolution | None:
    """How the approval ended, or ``None`` while it is pending."""
    if state.status == "pending" or state.resolved_at is None:
        return None
    if state.status == "denied":
        deny = _last_denial(state)
        deciding: tuple[Vote, ...] = (deny,) if deny is not None else ()
        reason = deny.reason if deny is not None else CLOSED_WITHOUT_A_VOTE
    elif state.status == "approved":
        deciding = _distinct_approvals(state.votes)
        reason = None
    else:
        deciding = ()
        reason = f"no quorum within the pending TTL of {state.policy.pending_ttl}"
    return Resolution(
        action_id=state.action_id,
        status=state.status,
        at=state.resolved_at,
        payload_digest=state.payload_digest,
        votes=deciding,
        reason=reason,
    )


def quorum_reached(policy: ApprovalPolicy, votes: tuple[Vote, ...]) -> bool:
    """Whether the approving votes among ``votes`` satisfy ``policy``.

    Only ``approve`` votes count, once per distinct approver (the first vote of each), and a
    vote counts only for groups in its ``counts_for``.

    - ``require_all=True``: every group must reach its minimum, and each approver fills a seat
      in at most one group. A person in both ``security`` and ``db-owners`` counts for
      whichever group needs them, never for both, so ``security:1 + db-owners:1`` always takes
      two people. It holds when some assignment of approvers to groups they count for meets
      every minimum (decided by a maximum matching, so the order of votes never matters).
    - ``require_all=False``: any one group with at least its minimum of distinct approvers
      counting for it suffices; a person counts for every group they are in.
    - Any group in ``alternatives`` reaching its minimum suffices on its own either way.
    """
    approvals = _distinct_approvals(votes)
    if any(
        _members_counting(approvals, alternative.name) >= alternative.min_approvals
        for alternative in policy.alternatives
    ):
        return True
    if policy.require_all:
        seats = _assign_seats(approvals, policy.groups)
        return all(len(seats[group.name]) >= group.min_approvals for group in policy.groups)
    return any(_members_counting(approvals, group.name) >= group.min_approvals for group in policy.groups)


def approval_progress(state: PendingApproval) -> ApprovalProgress:
    """Per-group progress and a one-line summary such as
    ``Approved by human:carol (1 of 2), waiting for db-owners``."""
    policy = state.policy
    approvals = _distinct_approvals(state.votes)
    approved_by = tuple(vote.approver.id for vote in approvals)
    if policy.require_all:
        seats = _assign_seats(approvals, policy.groups)
        primary = tuple(
            GroupProgress(group.name, len(seats[group.name]), group.min_approvals, seats[group.name])
            for group in policy.groups
        )
        have = sum(group.have for group in primary)
        need = sum(group.need for group in primary)
    else:
        primary = tuple(_counted_progress(approvals, group, alternative=False) for group in policy.groups)
        closest = min(primary, key=lambda group: group.need - group.have)
        have, need = closest.have, closest.need
    alternatives = tuple(_counted_progress(approvals, group, alternative=True) for group in policy.alternatives)
    return ApprovalProgress(
        groups=(*primary, *alternatives),
        have=have,
        need=need,
        approved_by=approved_by,
        summary=_summary(state, primary, alternatives, have, need, approved_by),
    )


# --- private rules ----------------------------------------------------------------------------


def _refusal_for(state: PendingApproval, vote: Vote, now: datetime) -> ApprovalRefusal | None:
    if state.status != "pending":
        return AlreadyResolved(action_id=state.action_id, status=state.status, resolved_at=state.resolved_at)
    if now >= state.expires_at:
        return ApprovalExpired(action_id=state.action_id, expires_at=state.expires_at)
    return _answer_refusal(
        state.action_id,
        state.action,
        state.requester,
        state.payload_digest,
        state.policy.required_group_names,
        state.votes,
        vote,
    )


def _answer_refusal(
    action_id: str,
    action: str,
    requester: Principal,
    payload_digest: Digest,
    required: tuple[str, ...],
    earlier_votes: tuple[Vote, ...],
    vote: Vote,
) -> ApprovalRefusal | None:
    """Who may answer an action, in order: outside the requesting chain, in their own name, in a
    required group, shown the exact parameters, once. Shared by approvals and break-glass reviews."""
    shared = vote.approver.shares_anyone_with(requester)
    if shared:
        return SelfApprovalRefused(
            action_id=action_id, approver_id=vote.approver.id, requester=requester, shared=shared
        )
    if acts_for_another(vote.approver):
        return DelegatedVoteRefused(action_id=action_id, approver=vote.approver)
    if not set(vote.counts_for) & set(required):
        return ApproverNotAuthorised(
            action_id=action_id, action=action, approver_id=vote.approver.id, required_groups=required
        )
    if vote.payload_digest != payload_digest:
        return DigestMismatch(
            action_id=action_id,
            approver_id=vote.approver.id,
            expected=str(payload_digest),
            shown=str(vote.payload_digest),
        )
    earlier = next((accepted for accepted in earlier_votes if accepted.approver.id == vote.approver.id), None)
    if earlier is not None:
        return DuplicateVote(action_id=action_id, approver_id=vote.approver.id, earlier=earlier)
    return None


def _check_requirement(requirement: GroupRequirement) -> None:
    if not requirement.name:
        raise InvalidApprovalPolicy(
            "a group requirement has an empty group name; name the approver group in the policy"
        )
    if requirement.min_approvals < 1:
        raise InvalidApprovalPolicy(
            f"group {requirement.name} needs min_approvals of at least 1, got {requirement.min_approvals}; "
            "leave a group that needs no approval out of the policy"
        )


def _distinct_approvals(votes: tuple[Vote, ...]) -> tuple[Vote, ...]:
    seen: set[str] = set()
    approvals: list[Vote] = []
    for vote in votes:
        if vote.choice is VoteChoice.APPROVE and vote.approver.id not in seen:
            seen.add(vote.approver.id)
            approvals.append(vote)
    return tuple(approvals)


def _members_counting(approvals: tuple[Vote, ...], group: str) -> int:
    return sum(1 for vote in approvals if group in vote.counts_for)


def _assign_seats(approvals: tuple[Vote, ...], groups: tuple[GroupRequirement, ...]) -> dict[str, tuple[str, ...]]:
    """A largest assignment of approvers to group seats, each approver in at most one seat.

    Group ``g`` has ``g.min_approvals`` seats; augmenting paths (bipartite matching) let a later
    approver move an earlier one to another group they also count for.
    """
    seats = [group.name for group in groups for _ in range(group.min_approvals)]
    holder: list[int | None] = [None] * len(seats)

    def seat(approver: int, tried: set[int]) -> bool:
        for index, group in enumerate(seats):
            if index in tried or group not in approvals[approver].counts_for:
                continue
            tried.add(index)
            current = holder[index]
            if current is None or seat(current, tried):
                holder[index] = approver
                return True
        return False

    for approver in range(len(approvals)):
        seat(approver, set())
    return {
        group.name: tuple(
            approvals[held].approver.id
            for index, held in enumerate(holder)
            if held is not None and seats[index] == group.name
        )
        for group in groups
    }


def _counted_progress(approvals: tuple[Vote, ...], group: GroupRequirement, *, alternative: bool) -> GroupProgress:
    members = tuple(vote.approver.id for vote in approvals if group.name in vote.counts_for)
    have = min(len(members), group.min_approvals)
    return GroupProgress(group.name, have, group.min_approvals, members, alternative)


def _summary(
    state: PendingApproval,
    primary: tuple[GroupProgress, ...],
    alternatives: tuple[GroupProgress, ...],
    have: int,
    need: int,
    approved_by: tuple[str, ...],
) -> str:
    if state.status == "approved":
        return f"Approved by {', '.join(approved_by)}"
    if state.status == "denied":
        deny = _last_denial(state)
        if deny is None:
            return f"Denied: {CLOSED_WITHOUT_A_VOTE}"
        return f"Denied by {deny.approver.id}" + (f": {deny.reason}" if deny.reason else "")
    waiting = _waiting_for(state.policy.require_all, primary, alternatives)
    if state.status == "expired":
        return f"Expired with {have} of {need} approvals; no answer in time from {waiting}"
    if approved_by:
        return f"Approved by {', '.join(approved_by)} ({have} of {need}), waiting for {waiting}"
    return f"No approvals yet (0 of {need}), waiting for {waiting}"


def _waiting_for(require_all: bool, primary: tuple[GroupProgress, ...], alternatives: tuple[GroupProgress, ...]) -> str:
    missing = [_still_needed(group) for group in primary if not group.satisfied]
    routes = " and ".join(missing) if require_all else " or ".join(missing)
    escalations = [f"{_still_needed(group)} (escalation)" for group in alternatives if not group.satisfied]
    if not escalations or not routes:
        return routes or " or ".join(escalations)
    if require_all and len(missing) > 1:
        return f"{routes}, or {' or '.join(escalations)}"
    return " or ".join([routes, *escalations])


def _still_needed(group: GroupProgress) -> str:
    missing = group.need - group.have
    return group.name if missing == 1 else f"{missing} from {group.name}"


def _moment(state: PendingApproval, fraction: float) -> datetime:
    return state.opened_at + state.policy.pending_ttl * fraction


def _describe(requester: Principal) -> str:
    if not requester.chain:
        return requester.id
    return f"{requester.id} acting for {' for '.join(requester.chain)}"


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(
            f"time {now.isoformat()} has no timezone; pass an aware datetime such as datetime.now(timezone.utc)"
        )


def shown_channel(channel: object) -> str:
    """A recorded vote's channel as it may be shown: itself when it is one of ``VOTE_CHANNELS``,
    else ``other`` (a record written before the set was closed may hold anything)."""
    return channel if isinstance(channel, str) and channel in VOTE_CHANNELS else "other"


#: The longest vote reason kept, on every channel: a longer one is refused, never cut (a cut
#: could fall inside a secret, leaving part of it where masking no longer recognises it).
REASON_MAX_CHARS = 2000


def reason_problem(reason: object) -> str | None:
    """Why a vote's reason is refused, whatever the channel it came through: not text (a chat
    payload can carry anything), words no record can hold or that steer a reader
    (``core.text.words_problem``), or more than ``REASON_MAX_CHARS`` (refused, never cut). None
    when it may be kept."""
    if not isinstance(reason, str):
        return "is not text"
    if (why := words_problem(reason)) is not None:
        return why
    if len(reason.strip()) > REASON_MAX_CHARS:
        return f"is longer than {REASON_MAX_CHARS} characters; say it in fewer"
    return None
