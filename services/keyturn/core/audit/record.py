"""The audit record model: ``AuditRecord`` and its ``Checkpoint``, mirroring ``keyturn.AuditRecord.avsc``.

Reading a record from its dict form (JSONL, or Avro as read) checks every field and raises
:class:`MalformedRecord` naming the first one that is wrong. Pure: no I/O.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from keyturn.core.canonical import to_millis

CHECKPOINT_EVENT_TYPE = "Checkpoint"
# The writer's note, at a restart, of records it found after its last checkpoint: it did not
# write them (each of its transactions ends with a checkpoint), so it does not vouch for them.
FOREIGN_EVENT_TYPE = "ForeignRecords"

# The marks analysts filter on (``AuditRecord.flags``), set by ``audit.records.flags_of``.
FLAG_BREAK_GLASS = "break_glass"
FLAG_MANDATORY_REVIEW = "mandatory_review"
FLAG_VOTE_REFUSED = "vote_refused"


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement that the chain up to ``covers_sequence`` ends in ``chain_hash``."""

    covers_sequence: int
    chain_hash: str
    key_id: str
    signature: str

    def to_dict(self) -> dict[str, Any]:
        """The Avro-shaped dict of this checkpoint."""
        return {
            "covers_sequence": self.covers_sequence,
            "chain_hash": self.chain_hash,
            "key_id": self.key_id,
            "signature": self.signature,
        }


@dataclass(frozen=True)
class AuditRecord:
    """One record of the ``keyturn.audit`` stream; mirrors ``keyturn.AuditRecord.avsc``.

    Timestamps are integer UTC milliseconds. ``hash`` is
    :func:`~keyturn.core.audit.canonical.record_hash` of the rest.
    """

    record_id: str
    sequence: int
    recorded_at: int
    event_id: str
    event_type: str
    action_id: str | None
    actor: str | None
    source_topic: str
    occurred_at: int
    payload_json: str
    prev_hash: str
    hash: str
    checkpoint: Checkpoint | None = None
    flags: tuple[str, ...] = field(default=())

    @property
    def is_checkpoint(self) -> bool:
        """Whether this is a signed checkpoint record."""
        return self.event_type == CHECKPOINT_EVENT_TYPE

    def to_dict(self) -> dict[str, Any]:
        """The Avro-shaped dict (timestamps as integer milliseconds), ready for any writer."""
        return {
            "record_id": self.record_id,
            "sequence": self.sequence,
            "recorded_at": self.recorded_at,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "action_id": self.action_id,
            "actor": self.actor,
            "source_topic": self.source_topic,
            "occurred_at": self.occurred_at,
            "payload_json": self.payload_json,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
            "checkpoint": None if self.checkpoint is None else self.checkpoint.to_dict(),
            "flags": list(self.flags),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditRecord:
        """A record from its dict form (JSONL, or Avro as read, with datetimes and UUIDs).

        Raises :class:`MalformedRecord` naming the first field that is missing, unknown or
        of the wrong type.
        """
        if not isinstance(data, Mapping):
            raise MalformedRecord(f"expected an object, got {type(data).__name__}")
        unknown = set(data) - _FIELDS
        if unknown:
            raise MalformedRecord(f"it has fields this version of keyturn does not know: {', '.join(sorted(unknown))}")
        raw_checkpoint = data.get("checkpoint")
        if raw_checkpoint is None:
            checkpoint = None
        elif isinstance(raw_checkpoint, Mapping):
            unknown = set(raw_checkpoint) - _CHECKPOINT_FIELDS
            if unknown:
                raise MalformedRecord(f"its checkpoint has unknown fields: {', '.join(sorted(unknown))}")
            checkpoint = Checkpoint(
                covers_sequence=_int(raw_checkpoint, "covers_sequence", "checkpoint."),
                chain_hash=_str(raw_checkpoint, "chain_hash", "checkpoint."),
                key_id=_str(raw_checkpoint, "key_id", "checkpoint."),
                signature=_str(raw_checkpoint, "signature", "checkpoint."),
            )
        else:
            raise MalformedRecord("checkpoint must be null or an object")
        flags = data.get("flags", [])
        if not isinstance(flags, (list, tuple)) or not all(isinstance(f, str) for f in flags):
            raise MalformedRecord("flags must be an array of strings")
        record_id = data.get("record_id")
        if isinstance(record_id, uuid.UUID):
            record_id = str(record_id)
        if not isinstance(record_id, str) or not _is_canonical_uuid(record_id):
            raise MalformedRecord("record_id must be a lowercase hyphenated UUID string")
        return cls(
            record_id=record_id,
            sequence=_int(data, "sequence"),
            recorded_at=_timestamp(data, "recorded_at"),
            event_id=_str(data, "event_id"),
            event_type=_str(data, "event_type"),
            action_id=_optional_str(data, "action_id"),
            actor=_optional_str(data, "actor"),
            source_topic=_str(data, "source_topic"),
            occurred_at=_timestamp(data, "occurred_at"),
            payload_json=_str(data, "payload_json"),
            prev_hash=_str(data, "prev_hash"),
            hash=_str(data, "hash"),
            checkpoint=checkpoint,
            flags=tuple(flags),
        )

    @classmethod
    def from_avro(cls, data: Mapping[str, Any]) -> AuditRecord:
        """A record from the dict an Avro reader decoded against ``keyturn.AuditRecord.avsc``.

        The schema has already given every field its type (a reader resolves older writers into
        it), so only the logical types are converted: a third of :meth:`from_dict`'s time, which
        checks every field of input that no schema vouched for (a JSONL line). Reading the audit
        topic decodes every record, so this is most of what ``verify`` and ``report`` spend per
        record beyond the Avro decoding itself. The topic's readers decode without the logical
        types (``SchemaRegistry.decode(logical_types=False)``): instants come as the integers a
        record holds, and the id as its text, held to the canonical spelling here.
        """
        checkpoint = data["checkpoint"]
        record_id = data["record_id"]
        if isinstance(record_id, uuid.UUID):  # read with the schema's logical types
            record_id = str(record_id)
        elif not _is_canonical_uuid(record_id):  # read as its text: held to what the uuid type reads
            raise MalformedRecord("record_id must be a lowercase hyphenated UUID string")
        return cls(
            record_id=record_id,
            sequence=data["sequence"],
            recorded_at=to_millis(data["recorded_at"]),
            event_id=data["event_id"],
            event_type=data["event_type"],
            action_id=data["action_id"],
            actor=data["actor"],
            source_topic=data["source_topic"],
            occurred_at=to_millis(data["occurred_at"]),
            payload_json=data["payload_json"],
            prev_hash=data["prev_hash"],
            hash=data["hash"],
            checkpoint=None if checkpoint is None else Checkpoint(**checkpoint),
            flags=tuple(data["flags"]),
        )


_FIELDS = frozenset(AuditRecord.__dataclass_fields__)
_CHECKPOINT_FIELDS = frozenset(Checkpoint.__dataclass_fields__)


class MalformedRecord(ValueError):
    """A record whose shape does not match ``keyturn.AuditRecord``."""


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _is_canonical_uuid(text: str) -> bool:
    """Whether ``text`` is what ``str(uuid.UUID(text))`` gives back (a regular expression: a
    fifth of the time, on every record read)."""
    return _CANONICAL_UUID.fullmatch(text) is not None


def _int(data: Mapping[str, Any], name: str, prefix: str = "") -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedRecord(f"{prefix}{name} must be an integer")
    return value


def _timestamp(data: Mapping[str, Any], name: str) -> int:
    value = data.get(name)
    if isinstance(value, datetime) and value.tzinfo is not None:
        return to_millis(value)
    return _int(data, name)


def _str(data: Mapping[str, Any], name: str, prefix: str = "") -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise MalformedRecord(f"{prefix}{name} must be a string")
    return value


def _optional_str(data: Mapping[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise MalformedRecord(f"{name} must be a string or null")
    return value
