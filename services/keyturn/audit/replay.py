"""Replaying the audit: what each record says about its action, filters, and one action's timeline.

Pure functions over :class:`~keyturn.core.audit.record.AuditRecord`. Filters on who asked,
who answered, the action type and the outcome are facts of the *action*, not of one record
(a vote does not say what was asked), so a filtered replay first indexes the actions
(:class:`ActionIndex`, one small entry per action) and then selects every record of the
actions that match.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from keyturn.core.approval import shown_channel
from keyturn.core.audit.payload import MalformedPayload, read_payload
from keyturn.core.audit.record import AuditRecord
from keyturn.core.canonical import from_millis, to_millis

OUTCOMES = (
    "allowed",
    "denied",
    "needs_approval",
    "approved",
    "expired",
    "succeeded",
    "failed",
    "outcome_unknown",
    "approved_external",
)


def payload_of(record: AuditRecord) -> dict[str, Any]:
    """The masked event the record carries; raises :class:`MalformedPayload` for one the tools
    cannot read (see ``core/audit/payload.py``: anyone who can produce to the topic can append it)."""
    return read_payload(record.payload_json)


def request_of(event_type: str, payload: dict[str, Any]) -> dict[str, Any] | None:
    """The ActionRequested embedded in a request, decision or resolution payload."""
    if event_type == "ActionRequested":
        return payload
    if event_type == "ActionDecided":
        return payload.get("request")
    if event_type == "ApprovalResolved":
        return (payload.get("decision") or {}).get("request")
    return None


@dataclass
class ActionFacts:
    """What the audit says about one action, gathered from all of its records."""

    action_id: str
    action: str | None = None
    requester: str | None = None
    acting_for: tuple[str, ...] = ()
    approvers: set[str] = field(default_factory=set)
    outcomes: list[str] = field(default_factory=list)
    requested_at: int | None = None

    def learn(self, record: AuditRecord, payload: dict[str, Any]) -> None:
        """Take in one record of this action."""
        request = request_of(record.event_type, payload)
        if request:
            self.action = self.action or request.get("action")
            requester = request.get("requester") or {}
            self.requester = self.requester or requester.get("id")
            self.acting_for = self.acting_for or tuple(requester.get("chain") or ())
        if record.event_type == "ActionRequested":
            self.requested_at = record.occurred_at
        if record.event_type == "VoteRecorded":
            approver = ((payload.get("vote") or {}).get("approver") or {}).get("id")
            if approver:
                self.approvers.add(approver)
        if record.event_type == "ApprovalResolved":
            self.approvers.update(
                approver for vote in payload.get("votes") or () if (approver := (vote.get("approver") or {}).get("id"))
            )
        outcome = (
            payload.get("outcome")
            if record.event_type in ("ActionDecided", "ApprovalResolved", "ActionExecuted")
            else None
        )
        if outcome and outcome not in self.outcomes:
            self.outcomes.append(outcome)


class ActionIndex:
    """Facts of every action seen, by action id."""

    def __init__(self) -> None:
        self.actions: dict[str, ActionFacts] = {}
        self.malformed: list[int] = []
        """Sequences of records whose payload could not be read: they taught nothing."""

    def add(self, record: AuditRecord) -> None:
        if record.action_id is None:
            return
        try:
            payload = payload_of(record)
        except MalformedPayload:
            self.malformed.append(record.sequence)
            return
        facts = self.actions.get(record.action_id)
        if facts is None:
            facts = self.actions[record.action_id] = ActionFacts(record.action_id)
        facts.learn(record, payload)

    @classmethod
    def of(cls, records: Iterable[AuditRecord]) -> ActionIndex:
        index = cls()
        for record in records:
            index.add(record)
        return index

    def get(self, action_id: str | None) -> ActionFacts | None:
        return None if action_id is None else self.actions.get(action_id)


@dataclass(frozen=True)
class ReplayFilter:
    """Which records a replay keeps. Empty criteria match everything; criteria combine with AND,
    values of one criterion with OR. ``action_types`` may use shell wildcards (``read.*``).
    ``since`` (inclusive) and ``until`` (exclusive) are UTC milliseconds of ``occurred_at``."""

    action_ids: frozenset[str] = frozenset()
    requesters: frozenset[str] = frozenset()
    approvers: frozenset[str] = frozenset()
    action_types: frozenset[str] = frozenset()
    outcomes: frozenset[str] = frozenset()
    since: int | None = None
    until: int | None = None

    def __post_init__(self) -> None:
        unknown = set(self.outcomes) - set(OUTCOMES)
        if unknown:
            raise ValueError(f"unknown outcome {', '.join(sorted(unknown))}; choose from {', '.join(OUTCOMES)}")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError("--since must be before --until")

    @property
    def needs_index(self) -> bool:
        """Whether matching needs facts from other records of the action (a first pass)."""
        return bool(self.requesters or self.approvers or self.action_types or self.outcomes)

    @property
    def about_actions(self) -> bool:
        """Whether only records of some actions are wanted (so checkpoints and dead letters are not)."""
        return bool(self.action_ids) or self.needs_index

    def selects(self, record: AuditRecord, facts: ActionFacts | None = None) -> bool:
        """Whether ``record`` is kept; ``facts`` are its action's facts when :attr:`needs_index`."""
        if self.since is not None and record.occurred_at < self.since:
            return False
        if self.until is not None and record.occurred_at >= self.until:
            return False
        if not self.about_actions:
            return True
        if record.action_id is None:
            return False
        if self.action_ids and record.action_id not in self.action_ids:
            return False
        if not self.needs_index:
            return True
        if facts is None:
            return False
        if self.requesters and not ({facts.requester, *facts.acting_for} & self.requesters):
            return False
        if self.approvers and not (facts.approvers & self.approvers):
            return False
        if self.action_types and not any(fnmatch.fnmatchcase(facts.action or "", p) for p in self.action_types):
            return False
        return not (self.outcomes and not set(facts.outcomes) & self.outcomes)


def parse_instant(text: str, *, now: datetime | None = None) -> int:
    """UTC milliseconds for an ISO 8601 time (``2026-11-30T10:00Z``; no zone means UTC), a date,
    or a duration ago (``90s``, ``15m``, ``2h``, ``7d``)."""
    from datetime import timedelta

    text = text.strip()
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    if text[:-1].isdigit() and text[-1:] in units:
        now = now or datetime.now(UTC)
        return to_millis(now - timedelta(**{units[text[-1]]: int(text[:-1])}))
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use ISO 8601 (2026-11-30T10:00:00Z), a date, or a duration ago (15m, 2h, 7d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return to_millis(moment)


@dataclass(frozen=True)
class TimelineStep:
    """One step of an action's life, as a person reads it."""

    sequence: int
    at: datetime
    event_type: str
    who: str
    what: str
    why: str
    policy_revision: str | None
    flags: tuple[str, ...]


def timeline_step(record: AuditRecord) -> TimelineStep:
    """Who did what, when, why, under which policy revision, for one record."""
    kind = record.event_type
    who, what, why, revision = record.actor or "-", kind, "", None
    try:
        payload = payload_of(record)
    except MalformedPayload as error:
        # shown where it stands, so the steps around it still read in order
        what, why = f"{kind}: NOT A READABLE EVENT", f"{error}; keyturn audit verify reports it"
        payload, kind = {}, ""  # no branch below reads it
    if kind == "ActionRequested":
        chain = (payload.get("requester") or {}).get("chain") or []
        who = record.actor or "-"
        if chain:
            who += f" for {', '.join(chain)}"
        what = f"requested {payload.get('action')} on {payload.get('resource')}"
        why = payload.get("reason") or ""
    elif kind == "ActionDecided":
        provenance = payload.get("provenance") or {}
        revision = provenance.get("policy_revision")
        what = f"policy decided: {payload.get('outcome')}"
        groups = ((payload.get("approvals") or {}).get("groups")) or []
        if groups:
            what += " by " + " and ".join(
                f"{g.get('name')} x{g.get('min_approvals', 1)}" if isinstance(g, dict) else str(g) for g in groups
            )
        why = "; ".join(payload.get("reasons") or ())
        impact = payload.get("impact") or {}
        if impact:
            rows = impact.get("rows")
            what += f"; impact preview: {impact.get('operation')} " + (
                f"{rows} rows ({impact.get('method')})" if rows is not None else f"{impact.get('status')}"
            )
        if payload.get("rules"):
            why += f" [rules: {', '.join(payload['rules'])}]"
        if provenance.get("decision_id"):
            why += f" (decision {provenance['decision_id']})"
    elif kind == "VoteRecorded":
        vote = payload.get("vote") or {}
        accepted = payload.get("accepted")
        channel = shown_channel(vote.get("channel"))
        what = f"{vote.get('choice')} vote {'accepted' if accepted else 'refused'} via {channel}"
        why = (vote.get("reason") or "") if accepted else f"{payload.get('refusal')}: {payload.get('message')}"
    elif kind == "ApprovalResolved":
        what = f"approval resolved: {payload.get('outcome')}"
        why = payload.get("summary") or ""
        revision = (((payload.get("decision") or {}).get("provenance")) or {}).get("policy_revision")
    elif kind == "ActionExecuted":
        if payload.get("outcome") == "approved_external":  # Keyturn ran nothing: it signed a receipt
            what = "not performed by Keyturn: approved_external, a signed receipt handed to the requester"
        else:
            what = f"executed by {payload.get('plugin')}: {payload.get('outcome')}"
        why = payload.get("error") or ""
    elif kind == "DeadLetter":
        what = f"dead letter from {payload.get('source_topic')}"
        why = f"{payload.get('error_type')}: {payload.get('reason')}"
    return TimelineStep(
        record.sequence,
        from_millis(record.occurred_at),
        record.event_type,
        who,
        what,
        why.strip(),
        revision,
        record.flags,
    )


def timeline(records: Iterable[AuditRecord], action_id: str) -> list[TimelineStep]:
    """Every step of one action, in chain order."""
    return [timeline_step(r) for r in records if r.action_id == action_id]
