"""The compliance report's figures, computed from audit records: pure, no I/O, no rendering.

:class:`ReportBuilder` takes the records of the whole chain in stream order (``add``) while
:func:`keyturn.core.audit.verify.verify` checks the same records (:func:`build_report` runs both
in one pass), and :meth:`ReportBuilder.finish` returns a :class:`Report`: plain data that the
HTML renderer and the console's history page draw, and that tests compare with counts of their own.

The period is ``[since, until)`` in UTC milliseconds. An action belongs to the period when it was
requested inside it (the first record of the action, when its request was recorded later); its
outcome is the furthest one the whole stream knows. Records of other actions still pass the
verification: a chain is intact or not as a whole.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from keyturn.audit.analytics import DEFAULT_RUBBER_STAMP_S, PERCENTILES, ApprovalAnalytics, ApprovalStats, percentile
from keyturn.audit.replay import payload_of
from keyturn.core.audit.checkpoint import CheckpointVerifier
from keyturn.core.audit.payload import MalformedPayload
from keyturn.core.audit.record import FLAG_BREAK_GLASS, AuditRecord
from keyturn.core.audit.verify import Gap, ProblemKind, VerifyReport, verify
from keyturn.core.canonical import now_millis

# The outcome categories of the per-day chart, in the order they are stacked. Any other terminal
# state found in the stream (one a newer Keyturn records, e.g. an action performed outside
# Keyturn) becomes a category of its own, named by its state, after these.
ALLOWED = "allowed"
DENIED_BY_POLICY = "denied_by_policy"
APPROVED = "approved"
DENIED_BY_PEOPLE = "denied_by_people"
EXPIRED = "expired"
FAILED = "failed"
OUTCOME_UNKNOWN = "outcome_unknown"
IN_PROGRESS = "in_progress"
KNOWN_CATEGORIES = (ALLOWED, DENIED_BY_POLICY, APPROVED, DENIED_BY_PEOPLE, EXPIRED, FAILED, OUTCOME_UNKNOWN)
CATEGORY_LABELS = {
    ALLOWED: "allowed by policy",
    DENIED_BY_POLICY: "denied by policy",
    APPROVED: "approved by people",
    DENIED_BY_PEOPLE: "denied by people",
    EXPIRED: "expired unanswered",
    FAILED: "failed",
    OUTCOME_UNKNOWN: "outcome unknown",
    IN_PROGRESS: "not finished yet",
}
_CHECKPOINT_PROBLEMS = frozenset(
    {ProblemKind.FORGED_CHECKPOINT, ProblemKind.UNKNOWN_CHECKPOINT_KEY, ProblemKind.CHECKPOINT_MISMATCH}
)
DAY_MS = 86_400_000


def category_label(category: str) -> str:
    """How a category is named in the report."""
    return CATEGORY_LABELS.get(category, category.replace("_", " "))


def day_of(millis: int) -> str:
    """The UTC date (``YYYY-MM-DD``) of an instant in milliseconds."""
    return datetime.fromtimestamp(millis / 1000, UTC).strftime("%Y-%m-%d")


class _Action:
    """What the report keeps of one action while the stream is read (slots: there may be millions)."""

    __slots__ = (
        "action",
        "agent",
        "approval_outcome",
        "break_glass",
        "decided_at",
        "decision",
        "denials",
        "execution",
        "first_seen",
        "incident",
        "other_outcome",
        "requested_at",
        "requesters",
        "reviews",
    )

    def __init__(self, first_seen: int) -> None:
        self.first_seen = first_seen
        self.requested_at: int | None = None
        self.action: str | None = None
        self.agent: str | None = None
        self.requesters: tuple[str, ...] = ()
        self.decision: str | None = None
        self.decided_at: int | None = None
        self.denials: tuple[tuple[str, str, bool], ...] = ()
        self.break_glass = False
        self.incident: str | None = None
        self.approval_outcome: str | None = None
        self.execution: str | None = None
        self.other_outcome: str | None = None
        self.reviews: list[tuple[str, str, int]] | None = None

    @property
    def at(self) -> int:
        return self.requested_at if self.requested_at is not None else self.first_seen

    def learn_request(self, request: Mapping[str, Any]) -> None:
        if self.action is None:
            self.action = request.get("action")
            requester = request.get("requester") or {}
            self.agent = requester.get("id")
            self.requesters = (requester.get("id") or "", *(requester.get("chain") or ()))

    @property
    def category(self) -> str:
        return outcome_category(self.decision, self.approval_outcome, self.execution, self.other_outcome)


def outcome_category(
    decision: str | None, approval: str | None, execution: str | None, other: str | None = None
) -> str:
    """The report category of an action from the outcome of each stage the audit recorded.

    The furthest stage wins: an execution's failure or unknown outcome (or any state a newer
    Keyturn records) over the path that led to it; a successful execution counts as allowed or
    approved by that path. ``other`` is the outcome of an event type this version does not know.
    """
    if other is not None:
        return other
    if execution is not None and execution != "succeeded":
        return execution
    if decision == "denied":
        return DENIED_BY_POLICY
    if approval == "denied":
        return DENIED_BY_PEOPLE
    if approval == "expired":
        return EXPIRED
    if approval not in (None, "approved"):
        return str(approval)
    if execution == "succeeded":
        return APPROVED if approval == "approved" or decision == "needs_approval" else ALLOWED
    if decision not in (None, "allowed", "needs_approval", "denied"):
        return str(decision)
    return IN_PROGRESS


@dataclass(frozen=True)
class CheckpointSeen:
    """A checkpoint record inside the period, and whether its signature and chain hash verified."""

    sequence: int
    at: int
    key_id: str
    covers_sequence: int
    valid: bool


@dataclass(frozen=True)
class Integrity:
    """The chain's verification, and what it means for the period."""

    verification: VerifyReport
    checkpoints: tuple[CheckpointSeen, ...]
    period_first_sequence: int | None
    period_last_sequence: int | None

    @property
    def intact(self) -> bool:
        return self.verification.ok

    @property
    def problem_count(self) -> int:
        return len(self.verification.problems) + self.verification.problems_omitted

    @property
    def period_signed(self) -> bool:
        """Whether every record of the period is covered by a valid checkpoint (or is one)."""
        last = self.period_last_sequence
        signed = self.verification.last_checkpoint_sequence
        return last is None or (signed is not None and signed >= last)


@dataclass(frozen=True)
class DayOutcomes:
    day: str
    counts: dict[str, int]


@dataclass(frozen=True)
class GroupDecisionTimes:
    """Time to decision of one approver group: every value (for the distribution) and percentiles."""

    group: str
    seconds: tuple[float, ...]
    approved: int
    denied: int
    expired: int

    @property
    def percentiles(self) -> dict[str, float | None]:
        ordered = sorted(self.seconds)
        values: dict[str, float | None] = {f"p{p}": (percentile(ordered, p) if ordered else None) for p in PERCENTILES}
        values["max"] = ordered[-1] if ordered else None
        return values


@dataclass(frozen=True)
class ApproverLine:
    approver: str
    load: int
    """Accepted votes: the approvals this person answered."""
    approvals: int
    denials: int
    refused: int
    median_s: float | None
    rubber_stamps: int


@dataclass(frozen=True)
class AgentLine:
    agent: str
    actions: int
    denied: int
    """Denied by policy or by people."""

    @property
    def denial_rate(self) -> float:
        return self.denied / self.actions if self.actions else 0.0


@dataclass(frozen=True)
class RubberStampLine:
    action_id: str
    action: str | None
    approver: str
    seconds: float


@dataclass(frozen=True)
class DenialReason:
    rule: str
    count: int
    example: str
    """The reason the policy gave for this rule's denial (free text, masked again before display);
    empty when only inferred denials name the rule."""
    inferred: int = 0
    """How many of ``count`` are inferred: the decision did not name its denials (:func:`denied_by`),
    so the rule fired on a denied action but may not be what denied it."""


NO_RULE = "(no rule named)"


def denied_by(decision: Mapping[str, Any]) -> tuple[tuple[str, str, bool], ...]:
    """The rules that denied a denied decision (its payload): ``(rule, reason, inferred)`` each.

    A decision names them in ``denials``, each with its own reason. One recorded before that field
    (or made by a policy that does not output it) has only ``rules``, every rule that fired (an
    approval a denial overrode too), and ``reasons``, linked to none: a sole rule is the one that
    denied, with the sole reason; of several, each is counted as inferred, without a reason. A
    denial by Keyturn itself (the policy unavailable, its answer malformed) names no rule."""
    named = decision.get("denials") or ()
    if named:
        return tuple((str(d.get("rule") or NO_RULE), str(d.get("reason") or ""), False) for d in named)
    rules: list[Any] = decision.get("rules") or []
    reasons: list[Any] = decision.get("reasons") or []
    if len(rules) > 1:
        return tuple((str(rule), "", True) for rule in rules)
    return ((str(rules[0]) if rules else NO_RULE, str(reasons[0]) if len(reasons) == 1 else "", False),)


@dataclass(frozen=True)
class BreakGlassUse:
    action_id: str
    action: str | None
    requester: str
    at: int
    incident: str | None
    reviews: tuple[tuple[str, str, int], ...]
    """(reviewer, choice, at) of each accepted vote on the action by someone outside its requester chain."""

    @property
    def reviewed(self) -> bool:
        return bool(self.reviews)


@dataclass(frozen=True)
class RefusedVote:
    action_id: str
    approver: str
    refusal: str
    at: int
    message: str


@dataclass(frozen=True)
class PolicyRevision:
    revision: str
    took_effect: int
    """The first decision recorded under it (the audit knows no earlier moment)."""
    decisions_in_period: int
    in_force_at_start: bool


@dataclass(frozen=True)
class Report:
    """Every figure of the compliance report for one period."""

    since: int
    until: int
    generated_at: int
    rubber_stamp_s: float
    integrity: Integrity | None
    """None for figures computed without verifying the chain (the console's history page)."""
    actions: int
    totals: dict[str, int]
    categories: tuple[str, ...]
    days: tuple[DayOutcomes, ...]
    groups: tuple[GroupDecisionTimes, ...]
    approvers: tuple[ApproverLine, ...]
    agents: tuple[AgentLine, ...]
    rubber_stamps: tuple[RubberStampLine, ...]
    denial_reasons: tuple[DenialReason, ...]
    break_glass: tuple[BreakGlassUse, ...]
    refused_votes: tuple[RefusedVote, ...]
    refusals_by_kind: dict[str, int]
    revisions: tuple[PolicyRevision, ...]
    dead_letters: int

    @property
    def break_glass_unreviewed(self) -> int:
        return sum(1 for use in self.break_glass if not use.reviewed)


class ReportBuilder:
    """Folds audit records, in stream order, into a :class:`Report` for ``[since, until)``."""

    def __init__(self, since: int, until: int, *, rubber_stamp_s: float = DEFAULT_RUBBER_STAMP_S) -> None:
        if since >= until:
            raise ValueError("the period must start before it ends (--since before --until)")
        self.since, self.until, self.rubber_stamp_s = since, until, rubber_stamp_s
        self._actions: dict[str, _Action] = {}
        self._analytics = ApprovalAnalytics(rubber_stamp_s=rubber_stamp_s)
        self._refused: list[RefusedVote] = []
        self._checkpoints: list[tuple[int, int, str, int]] = []
        self._first_sequence: int | None = None
        self._last_sequence: int | None = None
        self._revisions: dict[str, list[int]] = {}  # revision -> [took effect, decisions in period]
        self._revision_at_start: tuple[int, str] | None = None
        self._dead_letters = 0

    def _in_period(self, millis: int) -> bool:
        return self.since <= millis < self.until

    def add(self, record: AuditRecord) -> None:
        """Take in one record of the chain."""
        if self._in_period(record.occurred_at):
            if self._first_sequence is None or record.sequence < self._first_sequence:
                self._first_sequence = record.sequence
            if self._last_sequence is None or record.sequence > self._last_sequence:
                self._last_sequence = record.sequence
        kind = record.event_type
        if record.is_checkpoint:
            if record.checkpoint is not None and self._in_period(record.occurred_at):
                self._checkpoints.append(
                    (record.sequence, record.occurred_at, record.checkpoint.key_id, record.checkpoint.covers_sequence)
                )
            return
        if record.action_id is None:
            if kind == "DeadLetter" and self._in_period(record.occurred_at):
                self._dead_letters += 1
            return
        try:
            payload = payload_of(record)
        except MalformedPayload:
            return  # the verification reports it where it stands
        facts = self._actions.get(record.action_id)
        if facts is None:
            facts = self._actions[record.action_id] = _Action(record.occurred_at)
        self._learn(facts, record, payload)
        # a vote on a break-glass action is its review, not an approval: it is not counted as one
        if self._in_period(facts.at) and not (facts.break_glass and kind == "VoteRecorded"):
            self._analytics.add(record, payload)

    def _learn(self, facts: _Action, record: AuditRecord, payload: dict[str, Any]) -> None:
        kind = record.event_type
        if kind == "ActionRequested":
            facts.requested_at = record.occurred_at
            facts.learn_request(payload)
        elif kind == "ActionDecided":
            facts.learn_request(payload.get("request") or {})
            facts.decision = payload.get("outcome")
            facts.decided_at = record.occurred_at
            facts.denials = denied_by(payload) if facts.decision == "denied" else ()
            if payload.get("break_glass") or FLAG_BREAK_GLASS in record.flags:
                facts.break_glass = True
                facts.incident = facts.incident or _incident(payload.get("request") or {})
                facts.reviews = facts.reviews or []
            self._note_revision(record, payload)
        elif kind == "VoteRecorded":
            self._vote(facts, record, payload)
        elif kind == "ApprovalResolved":
            facts.approval_outcome = payload.get("outcome")
        elif kind == "ActionExecuted":
            facts.execution = payload.get("outcome")
        elif isinstance(payload.get("outcome"), str):
            # an event type this version does not know that ends the action its own way
            facts.other_outcome = payload["outcome"]

    def _vote(self, facts: _Action, record: AuditRecord, payload: dict[str, Any]) -> None:
        vote = payload.get("vote") or {}
        approver = (vote.get("approver") or {}).get("id") or "(unknown)"
        if not payload.get("accepted"):
            if self._in_period(record.occurred_at):
                self._refused.append(
                    RefusedVote(
                        record.action_id or "",
                        approver,
                        payload.get("refusal") or "refused",
                        record.occurred_at,
                        payload.get("message") or "",
                    )
                )
            return
        if facts.break_glass and approver not in facts.requesters:
            if facts.reviews is None:
                facts.reviews = []
            facts.reviews.append((approver, str(vote.get("choice")), record.occurred_at))

    def _note_revision(self, record: AuditRecord, payload: dict[str, Any]) -> None:
        revision = (payload.get("provenance") or {}).get("policy_revision")
        if not revision:
            return
        at = record.occurred_at
        if at < self.since and (self._revision_at_start is None or at >= self._revision_at_start[0]):
            self._revision_at_start = (at, revision)
        seen = self._revisions.get(revision)
        if seen is None:
            seen = self._revisions[revision] = [at, 0]
        seen[0] = min(seen[0], at)
        if self._in_period(at):
            seen[1] += 1

    def finish(self, verification: VerifyReport | None, *, generated_at: int | None = None) -> Report:
        """The report, given the chain's verification of the same records (None: not verified)."""
        integrity = None
        if verification is not None:
            bad_checkpoints = {p.sequence for p in verification.problems if p.kind in _CHECKPOINT_PROBLEMS}
            checkpoints = tuple(
                CheckpointSeen(seq, at, key, covers, seq not in bad_checkpoints)
                for seq, at, key, covers in self._checkpoints
            )
            integrity = Integrity(verification, checkpoints, self._first_sequence, self._last_sequence)
        in_period = [facts for facts in self._actions.values() if self._in_period(facts.at)]
        totals: Counter[str] = Counter()
        per_day: dict[str, Counter[str]] = {}
        agents: dict[str, list[int]] = {}
        denial_rules: Counter[str] = Counter()
        inferred: Counter[str] = Counter()
        examples: dict[str, str] = {}
        break_glass = []
        for action_id, facts in ((a, f) for a, f in self._actions.items() if self._in_period(f.at)):
            category = facts.category
            totals[category] += 1
            per_day.setdefault(day_of(facts.at), Counter())[category] += 1
            line = agents.setdefault(facts.agent or "(unknown)", [0, 0])
            line[0] += 1
            if category in (DENIED_BY_POLICY, DENIED_BY_PEOPLE):
                line[1] += 1
            for rule, reason, guessed in facts.denials:
                denial_rules[rule] += 1
                inferred[rule] += guessed
                if reason and rule not in examples:
                    examples[rule] = reason
            if facts.break_glass:
                break_glass.append(
                    BreakGlassUse(
                        action_id,
                        facts.action,
                        facts.agent or "(unknown)",
                        facts.decided_at if facts.decided_at is not None else facts.at,
                        facts.incident,
                        tuple(facts.reviews or ()),
                    )
                )
        categories = tuple(c for c in KNOWN_CATEGORIES if totals[c]) + tuple(
            sorted(c for c in totals if c not in KNOWN_CATEGORIES and c != IN_PROGRESS)
        )
        if totals[IN_PROGRESS]:
            categories += (IN_PROGRESS,)
        stats = self._analytics.stats
        return Report(
            since=self.since,
            until=self.until,
            generated_at=generated_at if generated_at is not None else now_millis(),
            rubber_stamp_s=self.rubber_stamp_s,
            integrity=integrity,
            actions=len(in_period),
            totals={c: totals[c] for c in categories},
            categories=categories,
            days=_days(self.since, self.until, per_day, categories),
            groups=_groups(stats),
            approvers=_approvers(stats),
            agents=tuple(
                AgentLine(agent, counts[0], counts[1])
                for agent, counts in sorted(agents.items(), key=lambda item: (-item[1][0], item[0]))
            ),
            rubber_stamps=tuple(
                RubberStampLine(s.action_id, s.action, s.approver, s.seconds) for s in stats.rubber_stamps
            ),
            denial_reasons=tuple(
                DenialReason(rule, count, examples.get(rule, ""), inferred[rule])
                for rule, count in denial_rules.most_common()
            ),
            break_glass=tuple(sorted(break_glass, key=lambda use: use.at)),
            refused_votes=tuple(self._refused),
            refusals_by_kind=dict(Counter(vote.refusal for vote in self._refused).most_common()),
            revisions=self._revision_lines(),
            dead_letters=self._dead_letters,
        )

    def _revision_lines(self) -> tuple[PolicyRevision, ...]:
        at_start = self._revision_at_start[1] if self._revision_at_start else None
        lines = []
        for revision, (took_effect, decisions) in self._revisions.items():
            if revision == at_start or decisions:
                lines.append(PolicyRevision(revision, took_effect, decisions, revision == at_start))
        return tuple(sorted(lines, key=lambda line: line.took_effect))


def _incident(request: Mapping[str, Any]) -> str | None:
    """The incident id a break-glass request names (``parameters.incident_id``, masked JSON)."""
    try:
        parameters = json.loads(request.get("parameters_json") or "{}")
    except ValueError:
        return None
    incident = parameters.get("incident_id") if isinstance(parameters, dict) else None
    return incident if isinstance(incident, str) else None


def _days(
    since: int, until: int, per_day: dict[str, Counter[str]], categories: tuple[str, ...]
) -> tuple[DayOutcomes, ...]:
    """One entry per UTC day of the period (days without actions included, so gaps show)."""
    days = []
    start = since - since % DAY_MS
    # a period of years would make an unreadable chart; beyond 400 days only days with actions
    every_day = (until - start) // DAY_MS <= 400
    names = [day_of(millis) for millis in range(start, until, DAY_MS)] if every_day else sorted(per_day)
    for name in names:
        counts = per_day.get(name, Counter())
        days.append(DayOutcomes(name, {c: counts[c] for c in categories}))
    return tuple(days)


def _groups(stats: ApprovalStats) -> tuple[GroupDecisionTimes, ...]:
    return tuple(
        GroupDecisionTimes(name, tuple(times.seconds), times.approved, times.denied, times.expired)
        for name, times in sorted(stats.groups.items())
    )


def _approvers(stats: ApprovalStats) -> tuple[ApproverLine, ...]:
    lines = [
        ApproverLine(
            rates.approver,
            rates.approve + rates.deny,
            rates.approve,
            rates.deny,
            rates.refused,
            rates.median_s,
            rates.rubber_stamps,
        )
        for rates in stats.approvers.values()
    ]
    return tuple(sorted(lines, key=lambda line: (-line.load, line.approver)))


def build_report(
    records: Iterable[AuditRecord | Mapping[str, Any] | Gap],
    verifier: CheckpointVerifier,
    since: int,
    until: int,
    *,
    rubber_stamp_s: float = DEFAULT_RUBBER_STAMP_S,
    generated_at: int | None = None,
) -> Report:
    """Verify the chain and compute the report in one pass over ``records`` (the whole chain, in
    stream order, gaps where they stand; dicts from an export are verified as they are and read as
    records when they can be)."""
    builder = ReportBuilder(since, until, rubber_stamp_s=rubber_stamp_s)

    def observed() -> Iterator[AuditRecord | Mapping[str, Any] | Gap]:
        for item in records:
            if isinstance(item, Gap):
                yield item
                continue
            if not isinstance(item, AuditRecord):
                try:
                    item = AuditRecord.from_dict(item)
                except ValueError:
                    yield item  # malformed: the verification names it
                    continue
            builder.add(item)
            yield item

    verification = verify(observed(), verifier)
    return builder.finish(verification, generated_at=generated_at)
