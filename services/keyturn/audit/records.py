"""What the audit chain stores of each event: who caused it, when, and the event without secrets."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from keyturn.core.audit.record import FLAG_BREAK_GLASS, FLAG_MANDATORY_REVIEW, FLAG_VOTE_REFUSED
from keyturn.core.canonical import CanonicalJson, canonical_json_of_plain, canonical_json_without_floats
from keyturn.core.records import to_record

_TIME_FIELDS = ("requested_at", "decided_at", "recorded_at", "resolved_at", "finished_at", "failed_at")


def audit_payload(event: Any) -> Any:
    """The event as JSON-able data; bytes (sealed parameters, dead-letter payloads) become digests."""
    return AuditedEvent.of(event).payload


_SCALARS = frozenset({str, int, bool, type(None)})


def _without_bytes(value: Any, floats: list[float] | None = None) -> Any:
    """A decoded record as JSON types only: bytes become their digest and length, times ISO text;
    every float met is added to ``floats`` (``payload_json`` chooses its writer by it)."""
    kind = type(value)
    if kind in _SCALARS:  # most values: one look-up before any isinstance check
        return value
    if kind is float:
        if floats is not None:
            floats.append(value)
        return value
    if isinstance(value, dict):
        return {k: _without_bytes(v, floats) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_bytes(v, floats) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return {"sha256": hashlib.sha256(value).hexdigest(), "length": len(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def actor_of(event: Any) -> str | None:
    """The principal or service that caused the event (the rule is ``AuditedEvent.actor``)."""
    return AuditedEvent.of(event).actor


def occurred_at(event: Any) -> datetime:
    return AuditedEvent.of(event).occurred_at


def flags_of(event: Any) -> tuple[str, ...]:
    """Marks analysts filter on (the rule is ``AuditedEvent.flags``)."""
    return AuditedEvent.of(event).flags


@dataclass(frozen=True, slots=True)
class AuditedEvent:
    """An event as the audit chains it, read straight from its decoded Avro record.

    The audit used to build the event's dataclass and turn it back into the same record for the
    payload; it was a fifth of the audit process's CPU, and the audit's CPU per record caps every
    deployment (``bench/README.md``, cost model). The rules (who caused an event, when, its flags)
    are here once; ``actor_of``, ``occurred_at``, ``flags_of`` and ``audit_payload`` apply them to
    a dataclass through ``of``. ``tests/unit/test_audit_records.py`` checks that a decoded record
    and its dataclass give the same, for random records of every event type.
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
    def payload_json(self) -> CanonicalJson:
        """``payload`` in its canonical spelling. It holds JSON types only (a decoded Avro record:
        string keys; bytes and times converted above), so the general conversion walk of
        ``canonical_json`` is left out; the text is the same (``tests/unit/test_audit_records.py``).
        Most events carry no float, and those are written by the faster writer."""
        floats: list[float] = []
        payload = _without_bytes(self.record, floats)
        return CanonicalJson(canonical_json_of_plain(payload) if floats else canonical_json_without_floats(payload))

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
