"""Approval analytics from the audit: how long people take, who approves what, who rubber-stamps.

Pure, one pass over the records, memory per pending approval and per approver.

* time to decision: from the policy's ``needs_approval`` decision to the approval's resolution
  (approved or denied; expiries are counted apart), per approver group the decision named;
* rubber stamps: approve votes cast within N seconds of the approval opening. There is no
  notification event yet, so the decision's time stands in for "the approver was notified";
  an approver notified late looks faster than they were, never slower;
* per approver: accepted approve and deny votes, refused votes, and rates.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from keyturn.audit.replay import payload_of
from keyturn.core.audit.payload import MalformedPayload
from keyturn.core.audit.record import AuditRecord

DEFAULT_RUBBER_STAMP_S = 10.0
PERCENTILES = (50, 90, 99)


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (the value at rank ceil(p/100 * n))."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class GroupTimes:
    """Times to decision for one approver group."""

    group: str
    seconds: list[float] = field(default_factory=list)
    approved: int = 0
    denied: int = 0
    expired: int = 0

    def to_dict(self) -> dict[str, Any]:
        ordered = sorted(self.seconds)
        summary: dict[str, Any] = {
            "group": self.group,
            "decided": len(ordered),
            "approved": self.approved,
            "denied": self.denied,
            "expired": self.expired,
        }
        for p in PERCENTILES:
            summary[f"p{p}_s"] = round(percentile(ordered, p), 3) if ordered else None
        summary["max_s"] = round(ordered[-1], 3) if ordered else None
        return summary


@dataclass
class ApproverRates:
    """One approver's votes."""

    approver: str
    approve: int = 0
    deny: int = 0
    refused: int = 0
    rubber_stamps: int = 0
    seconds: list[float] = field(default_factory=list)
    """For each accepted vote cast while its approval was open: seconds from the opening."""

    @property
    def median_s(self) -> float | None:
        """Median seconds from an approval opening to this approver's answer (nearest rank)."""
        return percentile(sorted(self.seconds), 50) if self.seconds else None

    def to_dict(self) -> dict[str, Any]:
        answered = self.approve + self.deny
        return {
            "approver": self.approver,
            "approve": self.approve,
            "deny": self.deny,
            "refused": self.refused,
            "approve_rate": round(self.approve / answered, 4) if answered else None,
            "deny_rate": round(self.deny / answered, 4) if answered else None,
            "rubber_stamps": self.rubber_stamps,
        }


@dataclass(frozen=True)
class RubberStamp:
    """An approval given within the threshold of the approval opening."""

    action_id: str
    action: str | None
    approver: str
    seconds: float
    sequence: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "action_id": self.action_id,
            "action": self.action,
            "approver": self.approver,
            "seconds": round(self.seconds, 3),
            "sequence": self.sequence,
        }


@dataclass
class ApprovalStats:
    """Everything ``keyturn audit stats`` shows."""

    rubber_stamp_s: float
    groups: dict[str, GroupTimes] = field(default_factory=dict)
    approvers: dict[str, ApproverRates] = field(default_factory=dict)
    rubber_stamps: list[RubberStamp] = field(default_factory=list)
    malformed: list[int] = field(default_factory=list)
    """Sequences of records whose payload could not be read, so they were left out."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "rubber_stamp_threshold_s": self.rubber_stamp_s,
            "notification_time": "the needs_approval decision (no notification event is recorded yet)",
            "time_to_decision": [self.groups[name].to_dict() for name in sorted(self.groups)],
            "approvers": [self.approvers[name].to_dict() for name in sorted(self.approvers)],
            "rubber_stamps": [stamp.to_dict() for stamp in self.rubber_stamps],
            "malformed_records": list(self.malformed),
        }


@dataclass
class _Opening:
    opened_at: int
    action: str | None
    groups: tuple[str, ...]


class ApprovalAnalytics:
    """The analytics, fed one record at a time (``add``), for readers that parse each payload once."""

    def __init__(self, *, rubber_stamp_s: float = DEFAULT_RUBBER_STAMP_S) -> None:
        self.stats = ApprovalStats(rubber_stamp_s)
        self._open: dict[str, _Opening] = {}

    def add(self, record: AuditRecord, payload: dict[str, Any]) -> None:
        """Take in one record (in chain order) and its parsed payload; other kinds are ignored."""
        kind = record.event_type
        if record.action_id is None:
            return
        if kind == "ActionDecided" and payload.get("outcome") == "needs_approval":
            groups = tuple(
                str(g["name"])
                for g in ((payload.get("approvals") or {}).get("groups") or ())
                if isinstance(g, dict) and g.get("name")
            )
            action = (payload.get("request") or {}).get("action")
            self._open[record.action_id] = _Opening(record.occurred_at, action, groups or ("(none)",))
        elif kind == "VoteRecorded":
            _count_vote(self.stats, record, payload, self._open.get(record.action_id))
        elif kind == "ApprovalResolved":
            opening = self._open.pop(record.action_id, None)
            if opening is not None:
                _count_resolution(self.stats, record, payload, opening)


def approval_stats(records: Iterable[AuditRecord], *, rubber_stamp_s: float = DEFAULT_RUBBER_STAMP_S) -> ApprovalStats:
    """Analytics over audit records in chain order (records of other kinds are ignored)."""
    analytics = ApprovalAnalytics(rubber_stamp_s=rubber_stamp_s)
    for record in records:
        if record.event_type in ("ActionDecided", "VoteRecorded", "ApprovalResolved") and record.action_id is not None:
            try:
                payload = payload_of(record)
            except MalformedPayload:
                analytics.stats.malformed.append(record.sequence)
                continue
            analytics.add(record, payload)
    return analytics.stats


def _count_vote(stats: ApprovalStats, record: AuditRecord, payload: dict[str, Any], opening: _Opening | None) -> None:
    vote = payload.get("vote") or {}
    approver = (vote.get("approver") or {}).get("id") or "(unknown)"
    rates = stats.approvers.setdefault(approver, ApproverRates(approver))
    if not payload.get("accepted"):
        rates.refused += 1
        return
    seconds = None if opening is None else (record.occurred_at - opening.opened_at) / 1000
    if seconds is not None:
        rates.seconds.append(seconds)
    if vote.get("choice") == "deny":
        rates.deny += 1
        return
    rates.approve += 1
    if opening is not None and seconds is not None and seconds <= stats.rubber_stamp_s:
        rates.rubber_stamps += 1
        stamp = RubberStamp(record.action_id or "", opening.action, approver, seconds, record.sequence)
        stats.rubber_stamps.append(stamp)


def _count_resolution(stats: ApprovalStats, record: AuditRecord, payload: dict[str, Any], opening: _Opening) -> None:
    outcome = payload.get("outcome")
    for group in opening.groups:
        times = stats.groups.setdefault(group, GroupTimes(group))
        if outcome == "expired":
            times.expired += 1
            continue
        times.seconds.append((record.occurred_at - opening.opened_at) / 1000)
        if outcome == "approved":
            times.approved += 1
        elif outcome == "denied":
            times.denied += 1
