"""The writer side of the audit chain: ``AuditChain`` turns source events into chained records.

Pure: no I/O; the audit service publishes what it returns.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from keyturn.core.audit.canonical import GENESIS_HASH, canonical_bytes_of, record_hash, record_id_for
from keyturn.core.audit.checkpoint import CheckpointRejected, CheckpointSigner, CheckpointVerifier
from keyturn.core.audit.dedupe import SeenEvents
from keyturn.core.audit.record import (
    CHECKPOINT_EVENT_TYPE,
    FOREIGN_EVENT_TYPE,
    AuditRecord,
    Checkpoint,
    MalformedRecord,
)
from keyturn.core.canonical import CanonicalJson, Millis, canonical_json, to_millis

AUDIT_TOPIC = "keyturn.audit"
DEFAULT_CHECKPOINT_EVERY = 1000

_FLAG = re.compile(r"^[a-z0-9_.-]+$")


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
    passes a :class:`~keyturn.core.audit.dedupe.RecentEventIds` window instead, so its memory
    does not grow with history.
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
        canonical JSON (see :func:`canonical_json`), and ``CanonicalJson`` text as it is.
        ``flags`` are stored sorted and unique.
        """
        _require_text(event_id, "event_id")
        _require_text(event_type, "event_type")
        _require_text(source_topic, "source_topic")
        _require_optional_text(action_id, "action_id")
        _require_optional_text(actor, "actor")
        if event_type in (CHECKPOINT_EVENT_TYPE, FOREIGN_EVENT_TYPE):
            raise ValueError(f"{event_type} records are made by AuditChain itself, not append()")
        if event_id in self._seen:
            return None
        if isinstance(payload, CanonicalJson):
            payload_json = str(payload)
        else:
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
            raise ValueError("this AuditChain has no CheckpointSigner, so it cannot sign checkpoints")
        covers = self._next_sequence - 1
        signed = self._signer.sign(covers, self._last_hash)
        payload = {"chain_hash": signed.chain_hash, "covers_sequence": covers, "key_id": signed.key_id}
        record = self._own_record("checkpoint", CHECKPOINT_EVENT_TYPE, payload, now, checkpoint=signed)
        self._since_checkpoint = 0
        return record

    def disown(self, foreign: list[AuditRecord], now: Millis) -> AuditRecord:
        """A record saying that ``foreign`` (records found after the writer's last checkpoint at
        a restart) were not written by this chain's writer: the checkpoint after it vouches for
        the chain's links, and this record says those records are not the writer's word.
        ``verify`` reports them."""
        first, last = foreign[0], foreign[-1]
        payload = {
            "first_sequence": first.sequence,
            "last_sequence": last.sequence,
            "records": len(foreign),
            "first_hash": first.hash,
            "last_hash": last.hash,
        }
        record = self._own_record("foreign", FOREIGN_EVENT_TYPE, payload, now)
        self._since_checkpoint += 1
        return record

    def _own_record(
        self, kind: str, event_type: str, payload: dict[str, Any], now: Millis, *, checkpoint: Checkpoint | None = None
    ) -> AuditRecord:
        """A record of the chain itself (no action, no actor): a checkpoint, or a disowning note."""
        recorded_at = to_millis(now)
        return self._link(
            event_id=f"{self._audit_topic}:{kind}:{self._next_sequence}",
            event_type=event_type,
            action_id=None,
            actor=None,
            source_topic=self._audit_topic,
            occurred_at=recorded_at,
            payload_json=canonical_json(payload),
            recorded_at=recorded_at,
            checkpoint=checkpoint,
            flags=(),
        )

    def resume(
        self,
        last_record: AuditRecord | Mapping[str, Any],
        *,
        seen_event_ids: Iterable[str] = (),
        check_hash: bool = True,
    ) -> AuditChain:
        """Continue after a restart from the last record in the topic; returns ``self``.

        ``seen_event_ids`` are the events already recorded, oldest first (with a
        :class:`~keyturn.core.audit.dedupe.RecentEventIds` window, the ids of the last records
        in the topic suffice). Unless the last record is a checkpoint, a checkpoint is due at
        once: the gap since the previous one is unknown, and it marks the restart.
        Raises :class:`MalformedRecord` if the last record's hash does not match its contents,
        unless ``check_hash`` is false (a record the writer disowns: the chain goes on after
        what it says its hash is, and ``verify`` reports it).
        """
        if not isinstance(last_record, AuditRecord):
            last_record = AuditRecord.from_dict(last_record)
        actual = record_hash(last_record)
        if check_hash and actual != last_record.hash:
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
        if check_hash:
            self._seen.add(last_record.event_id)
        return self

    def _link(self, **fields: Any) -> AuditRecord:
        fields |= {
            "record_id": record_id_for(fields["event_id"]),
            "sequence": self._next_sequence,
            "prev_hash": self._last_hash,
        }
        # hashed in the form ``AuditRecord.to_dict`` gives before the record is built, so it is
        # built once (a second, hashed copy made by ``dataclasses.replace`` was a tenth of the
        # audit's time); a test holds every linked record's hash to ``record_hash`` of it
        checkpoint = fields["checkpoint"]
        as_dict = fields | {
            "checkpoint": None if checkpoint is None else checkpoint.to_dict(),
            "flags": list(fields["flags"]),
        }
        record = AuditRecord(**fields, hash=hashlib.sha256(canonical_bytes_of(as_dict)).hexdigest())
        self._next_sequence += 1
        self._last_hash = record.hash
        return record


def written_by_the_writer(tail: list[AuditRecord], verifier: CheckpointVerifier) -> int:
    """How many of ``tail`` (the last records of the topic, oldest first) the chain's writer
    vouches for: those up to its last checkpoint. The writer ends every transaction with a
    checkpoint, so a record after the last one was not written by it (anyone who can produce
    to the topic can append a record and hash it right; only the writer holds the key).

    A checkpoint counts when it vouches for the record just before it (sequence and hash) and,
    under one of ``verifier``'s keys, its signature verifies. One under another key counts too
    (the key before a rotation): ``verify``, given the trusted keys, judges that signature,
    and reports a forged one, so accepting it here hides nothing."""
    for index in range(len(tail) - 1, -1, -1):
        record, checkpoint = tail[index], tail[index].checkpoint
        if not record.is_checkpoint or checkpoint is None or record_hash(record) != record.hash:
            continue
        before = tail[index - 1] if index > 0 else None
        if before is not None and (
            checkpoint.covers_sequence != before.sequence or checkpoint.chain_hash != before.hash
        ):
            continue
        if checkpoint.key_id in verifier.key_ids:
            try:
                verifier.verify(checkpoint)
            except CheckpointRejected:
                continue
        return index + 1
    return 0


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
