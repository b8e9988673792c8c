"""Verification of a stream of audit records, in stream order, in one pass: ``verify`` and its report.

Pure: no I/O; the CLI and the bench stream records in from the topic or an export.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from keyturn.core.audit.canonical import GENESIS_HASH, record_hash
from keyturn.core.audit.checkpoint import CheckpointVerifier, ForgedCheckpoint, UnknownCheckpointKey
from keyturn.core.audit.payload import MalformedPayload, read_payload
from keyturn.core.audit.record import FOREIGN_EVENT_TYPE, AuditRecord


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
    FOREIGN = "foreign"
    DELETED = "deleted"
    UNREADABLE = "unreadable"


@dataclass(frozen=True)
class DeletedMessages:
    """Messages deleted from the front of the audit topic: its first readable offset is not 0.

    The topic is kept forever (``bus/topics.py``), so nothing ever leaves it by itself; a reader
    of the topic puts this in the stream, before the first record, when the broker's earliest
    offset is ``first_offset + count``. Records that existed and are gone are a failure even when
    none is left to show a gap in the sequences."""

    topic: str
    partition: int
    count: int


@dataclass(frozen=True)
class UnreadableMessage:
    """A message of the audit topic that is not an audit record, where it stands in the stream.

    No writer writes one, so whoever can produce to the topic put it there. Its sequence is
    unknown; its offset, size and SHA-256 say which message it is (never its bytes, which may be
    anything), so an export can carry it in its place and be checked against the topic.
    ``reason`` says why it could not be read, when it was read from the topic."""

    topic: str
    partition: int
    offset: int
    size: int
    sha256: str
    reason: str | None = None


Gap = DeletedMessages | UnreadableMessage
"""What a reader of the topic found in place of records: verify reports it where it stands."""


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
                f"{self.unverified_tail} records after the last valid checkpoint are hash-chained but not signed"
            )
        lines.extend(f"- {problem.message}" for problem in self.problems)
        if self.problems_omitted:
            lines.append(f"- … and {self.problems_omitted} more problems")
        return "\n".join(lines)


def verify(
    records: Iterable[AuditRecord | Mapping[str, Any] | Gap],
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
        state.check(index, item)  # a gap takes an index too: it is where the messages were
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
        self._count_at_last_checkpoint = 0

    def _report(self, kind: ProblemKind, sequence: int | None, index: int, message: str) -> None:
        if len(self._problems) < self._max_problems:
            self._problems.append(Problem(kind, sequence, index, message))
        else:
            self._omitted += 1

    def check(self, index: int, item: AuditRecord | Mapping[str, Any] | Gap) -> None:
        if isinstance(item, UnreadableMessage):
            why = f" ({item.reason})" if item.reason else ""
            self._report(
                ProblemKind.UNREADABLE,
                None,
                index,
                f"the message at offset {item.offset} of partition {item.partition} of {item.topic} ({item.size} "
                f"bytes, SHA-256 {item.sha256}) is not an audit record{why}: no writer writes one, so someone who "
                "can produce to the audit topic put it there",
            )
            return
        if isinstance(item, DeletedMessages):
            self._report(
                ProblemKind.DELETED,
                None,
                index,
                f"offsets 0 to {item.count - 1} of partition {item.partition} of {item.topic} were deleted "
                f"({item.count} messages): the audit topic is kept forever, so someone with the right to delete "
                "records removed them (the earliest readable offset should be 0)",
            )
            return
        self._count += 1
        try:
            record = item if isinstance(item, AuditRecord) else AuditRecord.from_dict(item)
            actual_hash = record_hash(record)
        except (ValueError, TypeError) as error:  # MalformedRecord, bad UTF-8 text
            self._malformed(index, item, error)
            return
        problems_before = len(self._problems) + self._omitted
        sequence = record.sequence
        if sequence < 0:  # no writer numbers one so: not a record of this chain at all
            self._report(
                ProblemKind.MALFORMED,
                sequence,
                index,
                f"record {sequence} has a negative sequence (a chain starts at 0)",
            )
            return
        predecessor_hash = self._expected_prev_hash
        if actual_hash != record.hash:
            self._report(
                ProblemKind.EDITED,
                sequence,
                index,
                f"record {sequence} was edited: its hash does not match its contents",
            )
        try:
            read_payload(record.payload_json)
        except MalformedPayload as error:
            self._report(
                ProblemKind.MALFORMED,
                sequence,
                index,
                f"record {sequence} does not hold an event the tools can read: {error}; no writer records "
                "such a payload, so someone who can produce to the audit topic appended it",
            )
        in_order = self._place(index, record)
        self._check_event_id(index, record)
        if record.event_type == FOREIGN_EVENT_TYPE:
            self._foreign(index, record)
        if record.checkpoint is not None or record.is_checkpoint:
            chain_hash = predecessor_hash if in_order else record.prev_hash
            self._check_checkpoint(index, record, chain_hash)
            if in_order and len(self._problems) + self._omitted == problems_before:
                self._last_checkpoint = sequence
                self._last_checkpoint_index = index
                self._count_at_last_checkpoint = self._count

    def _foreign(self, index: int, record: AuditRecord) -> None:
        """The writer's note that it found records after its last checkpoint at a restart."""
        try:
            found = json.loads(record.payload_json)
            first, last, count = int(found["first_sequence"]), int(found["last_sequence"]), int(found["records"])
        except (ValueError, TypeError, KeyError):
            first = last = count = -1
        self._report(
            ProblemKind.FOREIGN,
            first if count > 0 else record.sequence,
            index,
            f"{count} records (sequences {first}..{last}) were found after the writer's last checkpoint when it "
            f"restarted (record {record.sequence} says so): no audit writer wrote them, so they may be forged by "
            "someone who can produce to the audit topic",
        )

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
                    f"records {run.first} to {sequence} are out of order: they appear after record {run.after}",
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
                message = f"record {first} is missing: the stream skips from record {first - 1} to record {first + 1}"
            else:
                message = f"records {first} to {last} are missing ({last - first + 1} records)"
                if first == 0:
                    message += ": the stream does not start at the beginning"
            self._report(ProblemKind.DROPPED, first, noticed, message)
        unverified = self._count - self._count_at_last_checkpoint
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
