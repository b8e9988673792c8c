"""The tamper-evident audit chain: records, their hashes, signed checkpoints, verification.

Pure: no I/O. The audit service feeds events in and writes the records out; exports are
verified by streaming them back through :func:`verify`.

Canonical encoding (what ``hash`` is computed over), version 1:

* Take every field of the record except ``hash`` as a JSON object: ``record_id``,
  ``sequence``, ``recorded_at``, ``event_id``, ``event_type``, ``action_id``, ``actor``,
  ``source_topic``, ``occurred_at``, ``payload_json``, ``prev_hash``, ``checkpoint`` (``null``
  or an object with ``covers_sequence``, ``chain_hash``, ``key_id``, ``signature``) and
  ``flags`` (an array of strings, in stored order).
* Timestamps are integers (UTC milliseconds since the epoch), as in the Avro schema; there
  are no floating-point numbers anywhere in the record.
* Serialise with keys sorted, no whitespace (``,`` and ``:`` separators), non-ASCII characters
  written as themselves, and only ``"``, ``\\`` and control characters escaped (``\\b \\f \\n
  \\r \\t``, other controls as lowercase ``\\u00xx``); encode as UTF-8. For these records (ASCII
  keys, integers below 2**53) this is exactly RFC 8785 (JCS), so any language can reproduce it.
* ``hash`` = lowercase hex SHA-256 of those bytes; ``prev_hash`` of sequence 0 is 64 zeros.

Fields added to the schema after version 1 must join the canonical form only when they differ
from their default, so records written before the change keep their hashes.

A checkpoint is a record of type ``Checkpoint`` whose ``checkpoint`` field carries an Ed25519
signature over :func:`checkpoint_message` of (``covers_sequence``, ``chain_hash``, ``key_id``):
it vouches that the chain up to the record before it ends in that hash. Without the private key
nobody can rewrite history behind a checkpoint; records after the last checkpoint are only as
trustworthy as the medium holding them, which :func:`verify` reports.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import enum
import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Protocol, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

GENESIS_HASH = "0" * 64
CHECKPOINT_EVENT_TYPE = "Checkpoint"
AUDIT_TOPIC = "keyturn.audit"
DEFAULT_CHECKPOINT_EVERY = 1000
CHECKPOINT_DOMAIN = "keyturn.AuditRecord.checkpoint/v1"

FLAG_BREAK_GLASS = "break_glass"
FLAG_MANDATORY_REVIEW = "mandatory_review"

# Fixed namespace so record_id = uuid5(namespace, event_id) is the same on every replica.
RECORD_ID_NAMESPACE = uuid.UUID("6b1d3f0e-51a4-4c5e-9f0a-4b6579747572")

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)
_FLAG = re.compile(r"^[a-z0-9_.-]+$")
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)

Millis = Union[int, datetime]
"""A UTC instant as integer milliseconds since the epoch, or a timezone-aware datetime."""


def to_millis(instant: Millis) -> int:
    """Integer UTC milliseconds for ``instant``; naive datetimes are refused as ambiguous."""
    if isinstance(instant, bool):
        raise TypeError("a timestamp must be integer milliseconds or an aware datetime, not a bool")
    if isinstance(instant, int):
        return instant
    if isinstance(instant, datetime):
        if instant.tzinfo is None or instant.utcoffset() is None:
            raise ValueError(
                f"timestamp {instant.isoformat()} has no timezone; pass an aware datetime (UTC)"
            )
        return (instant - _EPOCH) // _ONE_MS
    raise TypeError(
        "a timestamp must be integer milliseconds or an aware datetime, "
        f"not {type(instant).__name__}"
    )


def from_millis(millis: int) -> datetime:
    """The aware UTC datetime for integer milliseconds since the epoch."""
    return _EPOCH + timedelta(milliseconds=millis)


def canonical_json(value: Any) -> str:
    """``value`` as canonical JSON text: sorted keys, no whitespace, non-ASCII kept as is.

    Beyond JSON's own types: aware datetimes become integer milliseconds (as Avro
    timestamp-millis), bytes become standard base64, UUIDs and Decimals their string form,
    enums their value, tuples and sets arrays (sets sorted). Mapping keys must be strings
    and floats finite; anything else is refused rather than guessed at.
    """
    return _CANONICAL.encode(_plain(value))


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        if isinstance(value, enum.Enum):
            return _plain(value.value)
        return value
    if isinstance(value, Mapping):
        plain = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"payload key {key!r} is a {type(key).__name__}; keys must be strings"
                )
            plain[key] = _plain(item)
        return plain
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(item) for item in value), key=canonical_json)
    if isinstance(value, datetime):
        return to_millis(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (uuid.UUID, Decimal)):
        return str(value)
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    raise TypeError(
        f"payload value of type {type(value).__name__} cannot go into an audit record; "
        "convert it to JSON types first"
    )


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

    Timestamps are integer UTC milliseconds. ``hash`` is :func:`record_hash` of the rest.
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
            raise MalformedRecord(
                f"it has fields this version of keyturn does not know: {', '.join(sorted(unknown))}"
            )
        raw_checkpoint = data.get("checkpoint")
        if raw_checkpoint is None:
            checkpoint = None
        elif isinstance(raw_checkpoint, Mapping):
            unknown = set(raw_checkpoint) - _CHECKPOINT_FIELDS
            if unknown:
                raise MalformedRecord(
                    f"its checkpoint has unknown fields: {', '.join(sorted(unknown))}"
                )
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


_FIELDS = frozenset(AuditRecord.__dataclass_fields__)
_CHECKPOINT_FIELDS = frozenset(Checkpoint.__dataclass_fields__)


class MalformedRecord(ValueError):
    """A record whose shape does not match ``keyturn.AuditRecord``."""


def _is_canonical_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


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


def canonical_bytes(record: AuditRecord) -> bytes:
    """The exact bytes ``hash`` is computed over (see the module docstring)."""
    # Canonical JSON, not Avro bytes: the hash must not change when the schema evolves.
    fields = record.to_dict()
    del fields["hash"]
    return _CANONICAL.encode(fields).encode("utf-8")


def record_hash(record: AuditRecord) -> str:
    """Lowercase hex SHA-256 of :func:`canonical_bytes`."""
    return hashlib.sha256(canonical_bytes(record)).hexdigest()


def record_id_for(event_id: str) -> str:
    """The record id for an event: the same event always gets the same id."""
    return str(uuid.uuid5(RECORD_ID_NAMESPACE, event_id))


def checkpoint_message(covers_sequence: int, chain_hash: str, key_id: str) -> bytes:
    """The bytes a checkpoint signs: canonical JSON of the statement, domain-separated."""
    statement = {
        "chain_hash": chain_hash,
        "covers_sequence": covers_sequence,
        "domain": CHECKPOINT_DOMAIN,
        "key_id": key_id,
    }
    return canonical_json(statement).encode("utf-8")


def key_id_for(public_key: Ed25519PublicKey) -> str:
    """A stable id for a checkpoint key: ``ed25519:`` and 16 hex of SHA-256 of its raw bytes."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


class CheckpointSigner:
    """Signs checkpoints with one Ed25519 private key, under ``key_id``."""

    def __init__(self, private_key: Ed25519PrivateKey, key_id: str | None = None) -> None:
        self._private_key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id if key_id is not None else key_id_for(self.public_key)

    def sign(self, covers_sequence: int, chain_hash: str) -> Checkpoint:
        """A checkpoint vouching that the chain up to ``covers_sequence`` ends in ``chain_hash``."""
        message = checkpoint_message(covers_sequence, chain_hash, self.key_id)
        return Checkpoint(
            covers_sequence=covers_sequence,
            chain_hash=chain_hash,
            key_id=self.key_id,
            signature=self._private_key.sign(message).hex(),
        )


class CheckpointRejected(Exception):
    """A checkpoint that does not prove anything."""


class UnknownCheckpointKey(CheckpointRejected):
    """The checkpoint names a key that is not among the trusted ones."""


class ForgedCheckpoint(CheckpointRejected):
    """The checkpoint's signature does not verify with the key it names."""


class CheckpointVerifier:
    """Checks checkpoint signatures against trusted public keys, by key id.

    Keep retired keys here after rotation: old checkpoints stay signed with them.
    """

    def __init__(self, public_keys: Mapping[str, Ed25519PublicKey]) -> None:
        self._public_keys = dict(public_keys)

    @classmethod
    def from_keys(cls, public_keys: Iterable[Ed25519PublicKey]) -> CheckpointVerifier:
        """A verifier trusting ``public_keys`` under the ids :func:`key_id_for` gives them."""
        return cls({key_id_for(key): key for key in public_keys})

    @property
    def key_ids(self) -> frozenset[str]:
        """The ids of the trusted keys."""
        return frozenset(self._public_keys)

    def verify(self, checkpoint: Checkpoint) -> None:
        """Return if the signature is genuine; raise :class:`CheckpointRejected` otherwise."""
        public_key = self._public_keys.get(checkpoint.key_id)
        if public_key is None:
            raise UnknownCheckpointKey(
                f"it is signed with key {checkpoint.key_id!r}, which is not a trusted "
                "checkpoint key"
            )
        try:
            signature = bytes.fromhex(checkpoint.signature)
        except ValueError:
            raise ForgedCheckpoint("its signature is not hexadecimal") from None
        message = checkpoint_message(
            checkpoint.covers_sequence, checkpoint.chain_hash, checkpoint.key_id
        )
        try:
            public_key.verify(signature, message)
        except InvalidSignature:
            raise ForgedCheckpoint(
                f"its signature does not verify with key {checkpoint.key_id!r}: it is forged "
                "or the checkpoint was altered"
            ) from None


class SeenEvents(Protocol):
    """Where the chain remembers which event ids it has recorded (a set works)."""

    def __contains__(self, event_id: object) -> bool: ...

    def add(self, event_id: str) -> None: ...


class RecentEventIds:
    """The ids of the last ``limit`` events recorded: a :class:`SeenEvents` of bounded size.

    A set of every id ever recorded grows with the whole history (about 120 bytes per event,
    for as long as the worker runs). A repeated event never comes from far back: the audit
    worker's own redelivery reaches back only to its last committed source offsets (faust
    commits every second or 100 events), and a service that republishes an event (the policy's
    stored decision, the executor's ledger) does so when its own input is redelivered, within
    its consumer group's session timeout. So remembering the most recent ids is enough, and
    memory stays flat however long the chain gets. Ids are forgotten oldest first, in the
    order they were added.

    Size it well beyond the furthest redelivery: an event redelivered from beyond the window is
    recorded again, and adding it pushes out the oldest id, which is the next one a replay in
    the original order brings, so from there the whole replay would be recorded twice
    (``verify`` reports each as ``duplicate_event``).
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        self.limit = limit
        self._ids: set[str] = set()
        self._order: collections.deque[str] = collections.deque()

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, event_id: str) -> None:
        if event_id in self._ids:
            return
        self._ids.add(event_id)
        self._order.append(event_id)
        if len(self._order) > self.limit:
            self._ids.discard(self._order.popleft())


class AuditChain:
    """The writer side of the chain: turns source events into chained records.

    State is the next sequence, the last hash and the event ids already recorded. ``append``
    returns the record to publish (or None for an event already recorded); when
    :attr:`checkpoint_due`, publish :meth:`checkpoint` next::

        record = chain.append(event_id=..., ..., now=now)
        if record is not None:
            publish(record)
        if chain.checkpoint_due:
            publish(chain.checkpoint(now))

    If publishing fails, the state is ahead of the topic: rebuild the chain with
    :meth:`resume` from the last record actually in the topic.

    ``seen`` defaults to an in-memory set, which grows by one id per event; the audit service
    passes a :class:`RecentEventIds` window instead, so its memory does not grow with history.
    """

    def __init__(
        self,
        signer: CheckpointSigner | None = None,
        *,
        checkpoint_every: int | None = DEFAULT_CHECKPOINT_EVERY,
        seen: SeenEvents | None = None,
        audit_topic: str = AUDIT_TOPIC,
    ) -> None:
        if checkpoint_every is not None and checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be at least 1 or None, not {checkpoint_every}")
        self._signer = signer
        self._checkpoint_every = checkpoint_every
        self._seen: SeenEvents = set() if seen is None else seen
        self._audit_topic = audit_topic
        self._next_sequence = 0
        self._last_hash = GENESIS_HASH
        self._since_checkpoint = 0

    @property
    def next_sequence(self) -> int:
        """The sequence the next record will get."""
        return self._next_sequence

    @property
    def last_hash(self) -> str:
        """The hash of the last record (64 zeros before the first)."""
        return self._last_hash

    @property
    def records_since_checkpoint(self) -> int:
        """Event records appended since the last checkpoint record."""
        return self._since_checkpoint

    @property
    def checkpoint_due(self) -> bool:
        """Whether ``checkpoint_every`` event records have been appended since the last one."""
        return (
            self._signer is not None
            and self._checkpoint_every is not None
            and self._since_checkpoint >= self._checkpoint_every
        )

    def has_recorded(self, event_id: str) -> bool:
        """Whether a record for ``event_id`` is already in the chain."""
        return event_id in self._seen

    def append(
        self,
        *,
        event_id: str,
        event_type: str,
        source_topic: str,
        occurred_at: Millis,
        payload: Mapping[str, Any] | str,
        now: Millis,
        action_id: str | None = None,
        actor: str | None = None,
        flags: Iterable[str] = (),
    ) -> AuditRecord | None:
        """The next record for one source event, or None if ``event_id`` is already recorded.

        ``payload`` is the masked event, as a mapping or as JSON text; it is stored as
        canonical JSON (see :func:`canonical_json`). ``flags`` are stored sorted and unique.
        """
        _require_text(event_id, "event_id")
        _require_text(event_type, "event_type")
        _require_text(source_topic, "source_topic")
        _require_optional_text(action_id, "action_id")
        _require_optional_text(actor, "actor")
        if event_type == CHECKPOINT_EVENT_TYPE:
            raise ValueError("Checkpoint records are made by AuditChain.checkpoint(), not append()")
        if event_id in self._seen:
            return None
        payload_json = canonical_json(json.loads(payload) if isinstance(payload, str) else payload)
        record = self._link(
            event_id=event_id,
            event_type=event_type,
            action_id=action_id,
            actor=actor,
            source_topic=source_topic,
            occurred_at=to_millis(occurred_at),
            payload_json=payload_json,
            recorded_at=to_millis(now),
            checkpoint=None,
            flags=_normalise_flags(flags),
        )
        self._seen.add(event_id)
        self._since_checkpoint += 1
        return record

    def checkpoint(self, now: Millis) -> AuditRecord:
        """A signed Checkpoint record vouching for every record so far; due or on demand.

        Take one on shutdown and at the end of an export, so the whole stream verifies.
        """
        if self._signer is None:
            raise ValueError(
                "this AuditChain has no CheckpointSigner, so it cannot sign checkpoints"
            )
        covers = self._next_sequence - 1
        signed = self._signer.sign(covers, self._last_hash)
        recorded_at = to_millis(now)
        record = self._link(
            event_id=f"{self._audit_topic}:checkpoint:{self._next_sequence}",
            event_type=CHECKPOINT_EVENT_TYPE,
            action_id=None,
            actor=None,
            source_topic=self._audit_topic,
            occurred_at=recorded_at,
            payload_json=canonical_json(
                {
                    "chain_hash": signed.chain_hash,
                    "covers_sequence": covers,
                    "key_id": signed.key_id,
                }
            ),
            recorded_at=recorded_at,
            checkpoint=signed,
            flags=(),
        )
        self._since_checkpoint = 0
        return record

    def resume(
        self,
        last_record: AuditRecord | Mapping[str, Any],
        *,
        seen_event_ids: Iterable[str] = (),
    ) -> AuditChain:
        """Continue after a restart from the last record in the topic; returns ``self``.

        ``seen_event_ids`` are the events already recorded, oldest first (with a
        :class:`RecentEventIds` window, the ids of the last records in the topic suffice). Unless the last record is a checkpoint, a checkpoint is due at
        once: the gap since the previous one is unknown, and it marks the restart.
        Raises :class:`MalformedRecord` if the last record's hash does not match its contents.
        """
        if not isinstance(last_record, AuditRecord):
            last_record = AuditRecord.from_dict(last_record)
        actual = record_hash(last_record)
        if actual != last_record.hash:
            raise MalformedRecord(
                f"refusing to continue after record {last_record.sequence}: its hash does not "
                "match its contents (verify the audit topic)"
            )
        self._next_sequence = last_record.sequence + 1
        self._last_hash = last_record.hash
        self._since_checkpoint = 0 if last_record.is_checkpoint else (self._checkpoint_every or 0)
        # The last record's id goes in last: a bounded window forgets the oldest first.
        for event_id in seen_event_ids:
            self._seen.add(event_id)
        self._seen.add(last_record.event_id)
        return self

    def _link(self, **fields: Any) -> AuditRecord:
        unhashed = AuditRecord(
            record_id=record_id_for(fields["event_id"]),
            sequence=self._next_sequence,
            prev_hash=self._last_hash,
            hash="",
            **fields,
        )
        record = dataclasses.replace(unhashed, hash=record_hash(unhashed))
        self._next_sequence += 1
        self._last_hash = record.hash
        return record


def _require_text(value: object, name: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")


def _require_optional_text(value: object, name: str) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a string or None, got {type(value).__name__}")


def _normalise_flags(flags: Iterable[str]) -> tuple[str, ...]:
    if isinstance(flags, str):
        raise TypeError("flags must be an iterable of flag names, not one string")
    unique = sorted(set(flags))
    for flag in unique:
        if not isinstance(flag, str) or not _FLAG.match(flag):
            raise ValueError(f"flag {flag!r} is not a lowercase token of [a-z0-9_.-]")
    return tuple(unique)


class ProblemKind(str, enum.Enum):
    """What :func:`verify` found wrong."""

    MALFORMED = "malformed"
    EDITED = "edited"
    BROKEN_LINK = "broken_link"
    DROPPED = "dropped"
    REORDERED = "reordered"
    DUPLICATE_RECORD = "duplicate_record"
    DUPLICATE_EVENT = "duplicate_event"
    FORGED_CHECKPOINT = "forged_checkpoint"
    UNKNOWN_CHECKPOINT_KEY = "unknown_checkpoint_key"
    CHECKPOINT_MISMATCH = "checkpoint_mismatch"
    UNVERIFIED_TAIL = "unverified_tail"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the stream, where it was found, and what it means."""

    kind: ProblemKind
    sequence: int | None
    """The record's sequence (the first missing one for DROPPED); None if unreadable."""
    index: int
    """0-based position in the stream where it was found."""
    message: str


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of :func:`verify`."""

    ok: bool
    records_checked: int
    last_sequence: int | None
    """The highest sequence seen; None for an empty stream."""
    last_checkpoint_sequence: int | None
    """Sequence of the last checkpoint record that verified; None if there was none."""
    unverified_tail: int
    """Records after the last valid checkpoint: only hash-chained, not signed."""
    problems: list[Problem]
    problems_omitted: int = 0
    """Problems counted but not kept, beyond ``max_problems``."""

    def summary(self) -> str:
        """A few lines a person can read."""
        head = (
            f"{'OK' if self.ok else 'FAILED'}: {self.records_checked} records checked, "
            f"last sequence {self.last_sequence}, last valid checkpoint "
            f"{self.last_checkpoint_sequence}"
        )
        lines = [head]
        if self.unverified_tail:
            lines.append(
                f"{self.unverified_tail} records after the last valid checkpoint are "
                "hash-chained but not signed"
            )
        lines.extend(f"- {problem.message}" for problem in self.problems)
        if self.problems_omitted:
            lines.append(f"- … and {self.problems_omitted} more problems")
        return "\n".join(lines)


def verify(
    records: Iterable[AuditRecord | Mapping[str, Any]],
    verifier: CheckpointVerifier,
    *,
    require_checkpoint_at_end: bool = False,
    max_problems: int = 1000,
) -> VerifyReport:
    """Check a stream of audit records, in stream order, in one pass.

    Finds edited records (hash mismatch), broken links (prev_hash is not the previous
    record's hash), dropped, reordered and duplicated records, event ids recorded twice, and
    checkpoints that are forged, signed with an unknown key, or vouch for another chain.
    Records after the last valid checkpoint are counted in ``unverified_tail``; with
    ``require_checkpoint_at_end`` that tail (or an empty stream) is a problem, since a
    complete export ends with a checkpoint.

    Memory is constant except for one entry per distinct event id (to find duplicates), the
    ranges of sequences still missing, and the problems found.
    """
    state = _Verification(verifier, max_problems)
    for index, item in enumerate(records):
        state.check(index, item)
    return state.finish(require_checkpoint_at_end)


@dataclass
class _LateRun:
    """Consecutive records that arrived after a later one, reported as one problem."""

    first: int
    last: int
    first_index: int
    last_index: int
    after: int | None
    position: int | None


class _Verification:
    def __init__(self, verifier: CheckpointVerifier, max_problems: int) -> None:
        self._verifier = verifier
        self._max_problems = max_problems
        self._problems: list[Problem] = []
        self._omitted = 0
        self._count = 0
        self._expected_sequence = 0
        self._expected_prev_hash = GENESIS_HASH
        self._highest: int | None = None
        self._missing: list[list[int]] = []  # [first, last, index where noticed]
        self._event_sequences: dict[str, int] = {}
        self._last_checkpoint: int | None = None
        self._last_checkpoint_index = -1
        self._late_run: _LateRun | None = None

    def _report(self, kind: ProblemKind, sequence: int | None, index: int, message: str) -> None:
        if len(self._problems) < self._max_problems:
            self._problems.append(Problem(kind, sequence, index, message))
        else:
            self._omitted += 1

    def check(self, index: int, item: AuditRecord | Mapping[str, Any]) -> None:
        self._count += 1
        try:
            record = item if isinstance(item, AuditRecord) else AuditRecord.from_dict(item)
            actual_hash = record_hash(record)
        except (ValueError, TypeError) as error:  # MalformedRecord, bad UTF-8 text
            self._malformed(index, item, error)
            return
        problems_before = len(self._problems) + self._omitted
        sequence = record.sequence
        predecessor_hash = self._expected_prev_hash
        if actual_hash != record.hash:
            self._report(
                ProblemKind.EDITED,
                sequence,
                index,
                f"record {sequence} was edited: its hash does not match its contents",
            )
        in_order = self._place(index, record)
        self._check_event_id(index, record)
        if record.checkpoint is not None or record.is_checkpoint:
            chain_hash = predecessor_hash if in_order else record.prev_hash
            self._check_checkpoint(index, record, chain_hash)
            if in_order and len(self._problems) + self._omitted == problems_before:
                self._last_checkpoint = sequence
                self._last_checkpoint_index = index

    def _malformed(self, index: int, item: object, error: Exception) -> None:
        sequence = item.get("sequence") if isinstance(item, Mapping) else None
        if not isinstance(sequence, int) or isinstance(sequence, bool):
            sequence = None
        self._report(
            ProblemKind.MALFORMED,
            sequence,
            index,
            f"the record at index {index} is malformed and cannot be checked: {error}",
        )
        # Keep following the chain with what the record claims, so one bad record is one problem.
        if sequence is None:
            return
        if sequence < self._expected_sequence:
            self._take_missing(sequence)
            return
        if sequence > self._expected_sequence:
            self._missing.append([self._expected_sequence, sequence - 1, index])
        self._expected_sequence = sequence + 1
        self._highest = sequence
        claimed = item.get("hash") if isinstance(item, Mapping) else None
        self._expected_prev_hash = claimed if isinstance(claimed, str) else ""

    def _place(self, index: int, record: AuditRecord) -> bool:
        """Check sequence and link; True when the record directly follows the previous one."""
        sequence, expected = record.sequence, self._expected_sequence
        if sequence == expected:
            self._late_run = None
            if record.prev_hash != self._expected_prev_hash:
                if sequence == 0:
                    message = (
                        "record 0 does not start a chain: its prev_hash should be 64 zeros, so "
                        "earlier history was cut off or the record was replaced"
                    )
                else:
                    message = (
                        f"record {sequence} does not follow record {sequence - 1}: its prev_hash "
                        f"is not the hash of record {sequence - 1}, so record {sequence - 1} was "
                        "rewritten or replaced"
                    )
                self._report(ProblemKind.BROKEN_LINK, sequence, index, message)
            self._advance(record)
            return True
        if sequence > expected:
            self._late_run = None
            self._missing.append([expected, sequence - 1, index])
            self._advance(record)
            return False
        self._behind(index, record)
        return False

    def _advance(self, record: AuditRecord) -> None:
        self._expected_sequence = record.sequence + 1
        self._expected_prev_hash = record.hash
        self._highest = record.sequence

    def _behind(self, index: int, record: AuditRecord) -> None:
        sequence = record.sequence
        if self._take_missing(sequence):
            self._reordered(index, sequence)
            return
        self._late_run = None
        previous_sequence = self._event_sequences.get(record.event_id)
        if previous_sequence == sequence:
            message = f"record {sequence} appears twice: a copy of it is at index {index}"
        else:
            message = (
                f"the record at index {index} reuses sequence {sequence}, which an earlier "
                "record already has: it was inserted"
            )
        self._report(ProblemKind.DUPLICATE_RECORD, sequence, index, message)

    def _reordered(self, index: int, sequence: int) -> None:
        run = self._late_run
        if run is not None and sequence == run.last + 1 and index == run.last_index + 1:
            # Consecutive late records are one move, reported once.
            run.last, run.last_index = sequence, index
            if run.position is not None:
                self._problems[run.position] = Problem(
                    ProblemKind.REORDERED,
                    run.first,
                    run.first_index,
                    f"records {run.first} to {sequence} are out of order: they appear after "
                    f"record {run.after}",
                )
            return
        position = len(self._problems) if len(self._problems) < self._max_problems else None
        self._late_run = _LateRun(sequence, sequence, index, index, self._highest, position)
        self._report(
            ProblemKind.REORDERED,
            sequence,
            index,
            f"record {sequence} is out of order: it appears after record {self._highest}",
        )

    def _take_missing(self, sequence: int) -> bool:
        for position, (first, last, noticed) in enumerate(self._missing):
            if first <= sequence <= last:
                pieces = []
                if first < sequence:
                    pieces.append([first, sequence - 1, noticed])
                if sequence < last:
                    pieces.append([sequence + 1, last, noticed])
                self._missing[position : position + 1] = pieces
                return True
        return False

    def _check_event_id(self, index: int, record: AuditRecord) -> None:
        earlier = self._event_sequences.get(record.event_id)
        if earlier is None:
            self._event_sequences[record.event_id] = record.sequence
        elif earlier != record.sequence:
            self._report(
                ProblemKind.DUPLICATE_EVENT,
                record.sequence,
                index,
                f"record {record.sequence} records event {record.event_id!r} again: it was "
                f"already recorded as record {earlier}",
            )

    def _check_checkpoint(self, index: int, record: AuditRecord, chain_hash: str) -> None:
        sequence, checkpoint = record.sequence, record.checkpoint
        if checkpoint is None or not record.is_checkpoint:
            self._report(
                ProblemKind.CHECKPOINT_MISMATCH,
                sequence,
                index,
                f"record {sequence} is half a checkpoint: event_type is {record.event_type!r} "
                f"but checkpoint is {'missing' if checkpoint is None else 'set'}",
            )
            return
        try:
            self._verifier.verify(checkpoint)
        except UnknownCheckpointKey as rejection:
            self._report(
                ProblemKind.UNKNOWN_CHECKPOINT_KEY,
                sequence,
                index,
                f"checkpoint record {sequence} cannot be trusted: {rejection}",
            )
        except ForgedCheckpoint as rejection:
            self._report(
                ProblemKind.FORGED_CHECKPOINT,
                sequence,
                index,
                f"checkpoint record {sequence} is not genuine: {rejection}",
            )
        if checkpoint.covers_sequence != sequence - 1 or checkpoint.chain_hash != chain_hash:
            self._report(
                ProblemKind.CHECKPOINT_MISMATCH,
                sequence,
                index,
                f"checkpoint record {sequence} does not match the chain: it vouches for record "
                f"{checkpoint.covers_sequence} with hash {checkpoint.chain_hash[:12]}…, but the "
                f"chain before it ends at record {sequence - 1} with hash {chain_hash[:12]}…",
            )

    def finish(self, require_checkpoint_at_end: bool) -> VerifyReport:
        for first, last, noticed in self._missing:
            if first == last == 0:
                message = "record 0 is missing: the stream does not start at the beginning"
            elif first == last:
                message = (
                    f"record {first} is missing: the stream skips from record {first - 1} "
                    f"to record {first + 1}"
                )
            else:
                message = f"records {first} to {last} are missing ({last - first + 1} records)"
                if first == 0:
                    message += ": the stream does not start at the beginning"
            self._report(ProblemKind.DROPPED, first, noticed, message)
        unverified = self._count - (self._last_checkpoint_index + 1)
        if require_checkpoint_at_end and (unverified or self._count == 0):
            if self._count == 0:
                message = "the stream is empty, so there is no checkpoint to verify it against"
            elif self._last_checkpoint is None:
                message = (
                    f"none of the {unverified} records is covered by a valid checkpoint; a "
                    "complete export ends with a checkpoint"
                )
            else:
                message = (
                    f"{unverified} records come after the last valid checkpoint (record "
                    f"{self._last_checkpoint}): the end of the stream may have been cut off or "
                    "rewritten; a complete export ends with a checkpoint"
                )
            after = self._last_checkpoint
            self._report(
                ProblemKind.UNVERIFIED_TAIL,
                None if after is None else after + 1,
                self._last_checkpoint_index + 1,
                message,
            )
        problems = sorted(self._problems, key=lambda problem: problem.index)
        return VerifyReport(
            ok=not problems and not self._omitted,
            records_checked=self._count,
            last_sequence=self._highest,
            last_checkpoint_sequence=self._last_checkpoint,
            unverified_tail=unverified,
            problems=problems,
            problems_omitted=self._omitted,
        )
