"""What the audit chain stores of each event: who caused it, when, and the event without secrets."""

from __future__ import annotations

import hashlib
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
