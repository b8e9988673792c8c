"""Audit records to and from files: JSONL to verify and replay, CSV and Parquet for analysts.

Only JSONL is read back: it keeps every field exactly, so :func:`keyturn.core.audit.verify.verify`
can check an export (``verify(read_jsonl(fp), verifier)``). CSV and Parquet are one-way.

What the topic holds in place of records (a message that is not an audit record, messages deleted
from its front: :data:`~keyturn.core.audit.verify.Gap`) is not left out of a copy, or the copy
would verify where the topic does not: JSONL and CSV mark it in its place, by position, size and
digest (never its bytes; :func:`marker_to_dict`), and a Parquet file, which has no place for it,
is refused.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from os import PathLike
from typing import IO, Any

from keyturn.core.audit.record import AuditRecord
from keyturn.core.audit.verify import DeletedMessages, Gap, UnreadableMessage
from keyturn.core.canonical import from_millis
from keyturn.core.text import for_terminal

RecordLike = AuditRecord | Mapping[str, Any]
"""An :class:`AuditRecord` or its dict form (as read from JSONL or Avro)."""

CSV_COLUMNS = (
    "record_id",
    "sequence",
    "recorded_at",
    "event_id",
    "event_type",
    "action_id",
    "actor",
    "source_topic",
    "occurred_at",
    "payload_json",
    "prev_hash",
    "hash",
    "checkpoint_covers_sequence",
    "checkpoint_chain_hash",
    "checkpoint_key_id",
    "checkpoint_signature",
    "flags",
)

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class AuditFileError(ValueError):
    """An audit file that cannot be read as audit records, with the line at fault."""


class ParquetUnavailable(ImportError):
    """Parquet export needs the optional pyarrow package."""


class GapInParquet(ValueError):
    """A Parquet file has no place to mark what the topic holds in place of records."""


def as_record(record: RecordLike) -> AuditRecord:
    """``record`` as an :class:`AuditRecord`; raises ``MalformedRecord`` on a bad shape."""
    return record if isinstance(record, AuditRecord) else AuditRecord.from_dict(record)


def record_to_dict(record: RecordLike) -> dict[str, Any]:
    """The dict of a record in ``keyturn.AuditRecord`` Avro shape (integer timestamps).

    Round-trips: ``AuditRecord.from_dict(record_to_dict(r)) == r``, also through an Avro
    writer and reader of ``schemas/keyturn.AuditRecord.avsc``.
    """
    return as_record(record).to_dict()


MARKER_FIELDS = {
    "unreadable": ("marker", "topic", "partition", "offset", "size", "sha256"),
    "deleted": ("marker", "topic", "partition", "count"),
}
"""The fields of a marker line, by kind. A record has none named ``marker``, so the two never mix."""


def marker_to_dict(gap: Gap) -> dict[str, Any]:
    """The marker a file holds in place of ``gap``: where it was and, for an unreadable message,
    its size and SHA-256; not why it was unreadable (error text may quote the bytes)."""
    if isinstance(gap, UnreadableMessage):
        return {
            "marker": "unreadable",
            "topic": gap.topic,
            "partition": gap.partition,
            "offset": gap.offset,
            "size": gap.size,
            "sha256": gap.sha256,
        }
    return {"marker": "deleted", "topic": gap.topic, "partition": gap.partition, "count": gap.count}


def marker_from_dict(value: Mapping[str, Any]) -> Gap | None:
    """The gap a marker line stands for; None when ``value`` is not exactly a marker (a record, or
    something malformed that verify reports as such)."""
    kind = value.get("marker")
    fields = MARKER_FIELDS.get(kind) if isinstance(kind, str) else None
    if fields is None or set(value) != set(fields):
        return None
    numbers = [value[name] for name in fields if name in ("partition", "offset", "size", "count")]
    if not isinstance(value["topic"], str) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers
    ):
        return None
    if value["marker"] == "deleted":
        return DeletedMessages(value["topic"], value["partition"], value["count"])
    digest = value["sha256"]
    if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        return None
    return UnreadableMessage(value["topic"], value["partition"], value["offset"], value["size"], digest)


def describe_gap(gap: Gap) -> str:
    """A short phrase naming ``gap`` and where it was, for summaries."""
    if isinstance(gap, UnreadableMessage):
        return f"an unreadable message (offset {gap.offset} of partition {gap.partition} of {gap.topic})"
    return f"{gap.count} deleted message(s) (offsets 0 to {gap.count - 1} of partition {gap.partition} of {gap.topic})"


# Characters many line-based tools split lines at, which JSON leaves unescaped (it escapes the
# other control characters itself). They can only stand inside strings, so escaping them keeps
# every line one record, and the record the same.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def write_jsonl(records: Iterable[RecordLike | Gap], fp: IO[str]) -> int:
    """Write one JSON object per line, fields in schema order, and a marker line in place of each
    gap; returns the number of records written."""
    count = 0
    for record in records:
        if isinstance(record, Gap):
            fp.write(json.dumps(marker_to_dict(record), separators=(",", ":")) + "\n")
            continue
        fp.write(json.dumps(record_to_dict(record), ensure_ascii=False, separators=(",", ":")).translate(_LINE_BREAKS))
        fp.write("\n")
        count += 1
    return count


def read_jsonl(fp: IO[str] | IO[bytes]) -> Iterator[dict[str, Any] | Gap]:
    """Yield the record dicts of a JSONL file, in file order, and the gap of each marker line in
    its place (:func:`marker_from_dict`); blank lines are skipped.

    Raises :class:`AuditFileError` naming the line that is not UTF-8, not a JSON object, or
    has a field twice (which readers would resolve differently, so it is never guessed at).
    """
    lines: Iterator[str | bytes] = iter(fp)
    number = 0
    while True:
        number += 1
        try:
            line = next(lines)
        except StopIteration:
            return
        except UnicodeDecodeError as error:
            raise AuditFileError(
                f"line {number} or near it is not UTF-8 ({error}): the file is damaged or was edited"
            ) from None
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise AuditFileError(
                    f"line {number} is not UTF-8 ({error}): the file is damaged or was edited"
                ) from None
        if not line.strip():
            continue
        try:
            value = json.loads(line, object_pairs_hook=_refuse_repeated_fields)
        except (json.JSONDecodeError, _RepeatedField) as error:
            raise AuditFileError(
                f"line {number} is not a valid audit record ({error}): the file is damaged or was edited"
            ) from None
        if not isinstance(value, dict):
            raise AuditFileError(f"line {number} is JSON but not an object: not an audit record")
        yield marker_from_dict(value) or value


class _RepeatedField(ValueError):
    pass


def _refuse_repeated_fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        repeated = next(key for key, count in Counter(key for key, _ in pairs).items() if count > 1)
        raise _RepeatedField(f"field {repeated!r} appears twice")
    return value


def write_csv(records: Iterable[RecordLike | Gap], fp: IO[str]) -> int:
    """Write a header and one flattened row per record; returns the number of records written.

    Open ``fp`` with ``newline=""``. Timestamps are ISO 8601 UTC with milliseconds, the
    checkpoint is spread over ``checkpoint_*`` columns, flags are joined with ``;``, null is
    an empty cell, and text that a spreadsheet would run as a formula is prefixed with ``'``.
    A gap is a marker row: ``event_type`` ``(unreadable message)`` or ``(deleted messages)``,
    ``payload_json`` the marker of a JSONL export, every other cell empty.
    """
    writer = csv.writer(fp)
    writer.writerow(CSV_COLUMNS)
    count = 0
    for record in records:
        if isinstance(record, Gap):
            writer.writerow(_csv_marker_row(record))
            continue
        writer.writerow([_csv_cell(value) for value in _csv_row(as_record(record))])
        count += 1
    return count


def _csv_marker_row(gap: Gap) -> list[str]:
    marker = marker_to_dict(gap)
    cells = dict.fromkeys(CSV_COLUMNS, "")
    cells["event_type"] = f"({marker['marker']} message{'' if isinstance(gap, UnreadableMessage) else 's'})"
    cells["payload_json"] = json.dumps(marker, separators=(",", ":"))
    return list(cells.values())


def _csv_row(record: AuditRecord) -> tuple[Any, ...]:
    checkpoint = record.checkpoint
    return (
        record.record_id,
        record.sequence,
        _iso(record.recorded_at),
        record.event_id,
        record.event_type,
        record.action_id,
        record.actor,
        record.source_topic,
        _iso(record.occurred_at),
        record.payload_json,
        record.prev_hash,
        record.hash,
        None if checkpoint is None else checkpoint.covers_sequence,
        None if checkpoint is None else checkpoint.chain_hash,
        None if checkpoint is None else checkpoint.key_id,
        None if checkpoint is None else checkpoint.signature,
        ";".join(record.flags),
    )


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str):
        # a control character (a NUL a record from an older build holds, an escape sequence) is
        # written out, not written: the file stays text, and a viewer shows it (``for_terminal``)
        value = for_terminal(value)
        if value.startswith(_FORMULA_STARTS):
            return "'" + value
    return value


def _iso(millis: int) -> str:
    return from_millis(millis).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write_parquet(records: Iterable[RecordLike | Gap], path: str | PathLike[str], *, batch_size: int = 10_000) -> int:
    """Write records to a Parquet file in batches; returns the number written.

    Columns follow the Avro schema: timestamps as UTC millisecond timestamps, the checkpoint
    as a nullable struct, flags as a list of strings. Needs pyarrow
    (raises :class:`ParquetUnavailable` saying how to install it). A gap raises
    :class:`GapInParquet` naming it: every column of a record is required, so no row can mark
    it, and a file without it would show a chain the topic does not hold. The caller removes
    what was written.
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ParquetUnavailable(
            "Parquet export needs pyarrow, which is not installed: pip install pyarrow (or export JSONL or CSV instead)"
        ) from None
    schema = _parquet_schema(pa)
    count = 0
    with pq.ParquetWriter(str(path), schema) as writer:
        batch: list[dict[str, Any]] = []
        for record in records:
            if isinstance(record, Gap):
                raise GapInParquet(
                    f"the audit topic holds {describe_gap(record)} in place of records, and a Parquet file "
                    "has no place to mark it: export JSONL (which marks it and verifies) or CSV"
                )
            batch.append(record_to_dict(record))
            if len(batch) >= batch_size:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                count += len(batch)
                batch = []
        if batch or count == 0:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            count += len(batch)
    return count


def _parquet_schema(pa: Any) -> Any:
    timestamp = pa.timestamp("ms", tz="UTC")
    checkpoint = pa.struct(
        [
            pa.field("covers_sequence", pa.int64(), nullable=False),
            pa.field("chain_hash", pa.string(), nullable=False),
            pa.field("key_id", pa.string(), nullable=False),
            pa.field("signature", pa.string(), nullable=False),
        ]
    )
    return pa.schema(
        [
            pa.field("record_id", pa.string(), nullable=False),
            pa.field("sequence", pa.int64(), nullable=False),
            pa.field("recorded_at", timestamp, nullable=False),
            pa.field("event_id", pa.string(), nullable=False),
            pa.field("event_type", pa.string(), nullable=False),
            pa.field("action_id", pa.string()),
            pa.field("actor", pa.string()),
            pa.field("source_topic", pa.string(), nullable=False),
            pa.field("occurred_at", timestamp, nullable=False),
            pa.field("payload_json", pa.string(), nullable=False),
            pa.field("prev_hash", pa.string(), nullable=False),
            pa.field("hash", pa.string(), nullable=False),
            pa.field("checkpoint", checkpoint),
            pa.field("flags", pa.list_(pa.string()), nullable=False),
        ]
    )
