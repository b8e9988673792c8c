"""What the audit chain stores of each event: who caused it, when, and the event without secrets."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from keyturn.core.audit.record import FLAG_BREAK_GLASS, FLAG_MANDATORY_REVIEW, FLAG_VOTE_REFUSED
from keyturn.core.events import (
    ActionDecided,
    ActionExecuted,
    ActionRequested,
    ApprovalResolved,
    DeadLetter,
    VoteRecorded,
)
from keyturn.core.records import to_record

_TIME_FIELDS = ("requested_at", "decided_at", "recorded_at", "resolved_at", "finished_at", "failed_at")


def audit_payload(event: Any) -> Any:
    """The event as JSON-able data; bytes (sealed parameters, dead-letter payloads) become digests."""
    return _without_bytes(to_record(event))


def _without_bytes(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return {"sha256": hashlib.sha256(value).hexdigest(), "length": len(value)}
    if isinstance(value, dict):
        return {k: _without_bytes(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_bytes(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def actor_of(event: Any) -> str | None:
    """The principal or service that caused the event."""
    if isinstance(event, ActionRequested):
        return event.requester.id
    if isinstance(event, ActionDecided):
        return "service:policy"
    if isinstance(event, VoteRecorded):
        return event.vote.approver.id
    if isinstance(event, ApprovalResolved):
        return event.votes[-1].approver.id if event.votes else "service:approval"
    if isinstance(event, ActionExecuted):
        return f"service:executor{':' + event.executor if event.executor else ''}"
    if isinstance(event, DeadLetter):
        return f"service:{event.service}"
    return None


def occurred_at(event: Any) -> datetime:
    for name in ("requested_at", "decided_at", "recorded_at", "resolved_at", "finished_at", "failed_at"):
        if hasattr(event, name):
            return getattr(event, name)
    raise TypeError(f"{type(event).__name__} carries no time")


def flags_of(event: Any) -> tuple[str, ...]:
    """Marks analysts filter on: break-glass decisions need a mandatory review."""
    if isinstance(event, ActionDecided) and event.break_glass:
        return (FLAG_BREAK_GLASS, FLAG_MANDATORY_REVIEW)
    if isinstance(event, VoteRecorded) and not event.accepted:
        return (FLAG_VOTE_REFUSED,)
    return ()


@dataclass(frozen=True, slots=True)
class AuditedEvent:
    """An event as the audit chains it, read straight from its decoded Avro record.

    The audit used to build the event's dataclass and turn it back into the same record for the
    payload; it was a fifth of the audit process's CPU, and the audit's CPU per record caps every
    deployment (``bench/README.md``, cost model). What this reads from the record is what
    ``actor_of``, ``occurred_at``, ``flags_of`` and ``audit_payload`` read from the dataclass;
    ``tests/unit/test_audit_records.py`` checks both give the same for random records of every
    event type.
    """

    name: str
    record: dict[str, Any]

    @classmethod
    def of(cls, event: Any) -> AuditedEvent:
        """An event dataclass as the audit chains it."""
        return cls(type(event).__name__, to_record(event))

    @property
    def event_id(self) -> str:
        return str(self.record["event_id"])

    @property
    def action_id(self) -> str | None:
        return self.record.get("action_id")

    @property
    def payload(self) -> Any:
        return _without_bytes(self.record)

    @property
    def occurred_at(self) -> datetime:
        for name in _TIME_FIELDS:
            if (at := self.record.get(name)) is not None:
                return at
        raise TypeError(f"{self.name} carries no time")

    @property
    def actor(self) -> str | None:
        record, name = self.record, self.name
        if name == "ActionRequested":
            return record["requester"]["id"]
        if name == "ActionDecided":
            return "service:policy"
        if name == "VoteRecorded":
            return record["vote"]["approver"]["id"]
        if name == "ApprovalResolved":
            return record["votes"][-1]["approver"]["id"] if record["votes"] else "service:approval"
        if name == "ActionExecuted":
            return f"service:executor{':' + record['executor'] if record.get('executor') else ''}"
        if name == "DeadLetter":
            return f"service:{record['service']}"
        return None

    @property
    def flags(self) -> tuple[str, ...]:
        if self.name == "ActionDecided" and self.record.get("break_glass"):
            return (FLAG_BREAK_GLASS, FLAG_MANDATORY_REVIEW)
        if self.name == "VoteRecorded" and not self.record.get("accepted"):
            return (FLAG_VOTE_REFUSED,)
        return ()
