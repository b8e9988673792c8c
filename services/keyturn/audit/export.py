"""Audit records to and from files: JSONL to verify and replay, CSV and Parquet for analysts.

Only JSONL is read back: it keeps every field exactly, so :func:`keyturn.core.audit.verify.verify`
can check an export (``verify(read_jsonl(fp), verifier)``). CSV and Parquet are one-way.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from os import PathLike
from typing import IO, Any

from keyturn.core.audit.record import AuditRecord
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


def as_record(record: RecordLike) -> AuditRecord:
    """``record`` as an :class:`AuditRecord`; raises ``MalformedRecord`` on a bad shape."""
    return record if isinstance(record, AuditRecord) else AuditRecord.from_dict(record)


def record_to_dict(record: RecordLike) -> dict[str, Any]:
    """The dict of a record in ``keyturn.AuditRecord`` Avro shape (integer timestamps).

    Round-trips: ``AuditRecord.from_dict(record_to_dict(r)) == r``, also through an Avro
    writer and reader of ``schemas/keyturn.AuditRecord.avsc``.
    """
    return as_record(record).to_dict()


# Characters many line-based tools split lines at, which JSON leaves unescaped (it escapes the
# other control characters itself). They can only stand inside strings, so escaping them keeps
# every line one record, and the record the same.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def write_jsonl(records: Iterable[RecordLike], fp: IO[str]) -> int:
    """Write one JSON object per line, fields in schema order; returns the number written."""
    count = 0
    for record in records:
        fp.write(json.dumps(record_to_dict(record), ensure_ascii=False, separators=(",", ":")).translate(_LINE_BREAKS))
        fp.write("\n")
        count += 1
    return count


def read_jsonl(fp: IO[str] | IO[bytes]) -> Iterator[dict[str, Any]]:
    """Yield the record dicts of a JSONL file, in file order; blank lines are skipped.

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
        yield value


class _RepeatedField(ValueError):
    pass


def _refuse_repeated_fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        repeated = next(key for key, count in Counter(key for key, _ in pairs).items() if count > 1)
        raise _RepeatedField(f"field {repeated!r} appears twice")
    return value


def write_csv(records: Iterable[RecordLike], fp: IO[str]) -> int:
    """Write a header and one flattened row per record; returns the number of rows.

    Open ``fp`` with ``newline=""``. Timestamps are ISO 8601 UTC with milliseconds, the
    checkpoint is spread over ``checkpoint_*`` columns, flags are joined with ``;``, null is
    an empty cell, and text that a spreadsheet would run as a formula is prefixed with ``'``.
    """
    writer = csv.writer(fp)
    writer.writerow(CSV_COLUMNS)
    count = 0
    for record in records:
        writer.writerow([_csv_cell(value) for value in _csv_row(as_record(record))])
        count += 1
    return count


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


def write_parquet(records: Iterable[RecordLike], path: str | PathLike[str], *, batch_size: int = 10_000) -> int:
    """Write records to a Parquet file in batches; returns the number written.

    Columns follow the Avro schema: timestamps as UTC millisecond timestamps, the checkpoint
    as a nullable struct, flags as a list of strings. Needs pyarrow
    (raises :class:`ParquetUnavailable` saying how to install it).
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
