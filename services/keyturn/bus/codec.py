"""Avro single-object encoding: ``C3 01`` + CRC-64-AVRO fingerprint (little endian) + body.

Every message names its writer schema by fingerprint, so a reader resolves any older (or
newer) writer it knows into the current reader schema. Writer schemas come from
``schemas/*.avsc`` (current) and ``schemas/history/*.avsc`` (every earlier version, frozen by
``keyturn schemas freeze``). No registry server: the schemas ship with the code.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, load_schema, parse_schema, to_parsing_canonical_form

from keyturn.config import REPO_ROOT
from keyturn.core.events import EVENT_TYPES
from keyturn.core.records import from_record, to_record

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8
SCHEMA_DIR = REPO_ROOT / "schemas"


class UndecodableMessage(ValueError):
    """A message that cannot be read; ``reason`` says why, for the dead-letter record."""

    def __init__(self, error_type: str, reason: str) -> None:
        super().__init__(reason)
        self.error_type = error_type
        self.reason = reason


def schema_fingerprint(schema: Any) -> bytes:
    """The 8-byte CRC-64-AVRO fingerprint of a schema's parsing canonical form."""
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


@dataclass(frozen=True)
class _Writer:
    name: str
    schema: Any
    parsed: Any  # the same schema parsed once with fastavro's "already parsed" mark (see ``_parsed``)


def _parsed(schema: Any) -> Any:
    """``schema`` parsed once, marked so fastavro does not parse it again on every call.

    ``readers`` / ``writers`` keep the unmarked form (fingerprints, ``keyturn schemas``); the
    marked copy is what encoding and decoding hand to fastavro: without the mark it re-parses
    the schema (and resolves writer against reader) for every record, which measured 2.5 to 3
    times the cost of the encoding itself.
    """
    return parse_schema(schema)


def _without_logical_types(schema: Any) -> Any:
    """``schema`` without its ``logicalType`` marks: values read as their Avro type (a
    timestamp-millis as its integer, a uuid as its text). For a reader that wants them so: the
    audit's readers keep a record's instants as integer milliseconds and its id as text, and
    building a datetime and a UUID only to turn them back was half of reading a record."""
    if isinstance(schema, dict):
        return {key: _without_logical_types(value) for key, value in schema.items() if key != "logicalType"}
    if isinstance(schema, list):
        return [_without_logical_types(item) for item in schema]
    return schema


class SchemaRegistry:
    """Current reader schemas by record name, and every known writer schema by fingerprint."""

    def __init__(self, schema_dir: Path = SCHEMA_DIR) -> None:
        self.readers: dict[str, Any] = {}
        self.writers: dict[bytes, _Writer] = {}
        self.fingerprints: dict[str, bytes] = {}
        self._parsed_readers: dict[str, Any] = {}
        # (writer, reader) parsed without logical types, by writer fingerprint: on first use, since
        # only the audit's readers ask for them (``_plain_schemas``)
        self._plain: dict[bytes, tuple[Any, Any]] = {}
        for path in sorted(schema_dir.glob("*.avsc")):
            schema: Any = load_schema(str(path), _write_hint=False)  # a record schema: a dict
            name = schema["name"].removeprefix("keyturn.")
            self.readers[name] = schema
            self._parsed_readers[name] = _parsed(schema)
            self.fingerprints[name] = schema_fingerprint(schema)
            self.writers[self.fingerprints[name]] = _Writer(name, schema, self._parsed_readers[name])
        for path in sorted((schema_dir / "history").glob("*.avsc")):
            schema = parse_schema(json.loads(path.read_text()), _write_hint=False)
            name = schema["name"].removeprefix("keyturn.")
            fp = schema_fingerprint(schema)
            if fp not in self.writers:
                self.writers[fp] = _Writer(name, schema, _parsed(schema))

    def encode(self, name: str, record: dict[str, Any]) -> bytes:
        """Single-object encode ``record`` with the current schema of ``name``."""
        buf = io.BytesIO()
        buf.write(MAGIC)
        buf.write(self.fingerprints[name])
        fastavro.schemaless_writer(buf, self._parsed_readers[name], record)
        return buf.getvalue()

    def decode(self, data: bytes, *, logical_types: bool = True) -> tuple[str, dict[str, Any]]:
        """(record name, record) from single-object bytes, resolved to the current schema;
        without ``logical_types``, instants come as integer milliseconds and uuids as text."""
        if not isinstance(data, (bytes, bytearray)) or len(data) < HEADER_SIZE:
            raise UndecodableMessage(
                "truncated",
                f"message of {len(data or b'')} bytes is shorter than the 10-byte Avro single-object header",
            )
        if data[:2] != MAGIC:
            raise UndecodableMessage(
                "not_avro",
                f"message does not start with the Avro single-object marker C3 01 (starts with "
                f"{bytes(data[:2]).hex()})",
            )
        writer = self.writers.get(bytes(data[2:HEADER_SIZE]))
        if writer is None:
            raise UndecodableMessage(
                "unknown_schema",
                f"writer schema fingerprint {bytes(data[2:HEADER_SIZE]).hex()} is not a known Keyturn schema "
                f"(freeze it into schemas/history)",
            )
        reader = self._parsed_readers.get(writer.name)
        if reader is None:
            raise UndecodableMessage("unknown_schema", f"no current schema for record {writer.name}")
        written = writer.parsed
        if not logical_types:
            written, reader = self._plain_schemas(bytes(data[2:HEADER_SIZE]), writer)
        body = io.BytesIO(bytes(data[HEADER_SIZE:]))
        try:  # written with the current schema: nothing to resolve
            record = fastavro.schemaless_reader(body, written, None if written is reader else reader)
        except Exception as exc:  # fastavro raises many types for corrupt bytes; all mean the same here
            raise UndecodableMessage(
                "corrupt_body", f"{writer.name} body cannot be decoded: {type(exc).__name__}: {exc}"
            ) from exc
        if body.tell() != len(data) - HEADER_SIZE:
            raise UndecodableMessage(
                "corrupt_body", f"{writer.name} body has {len(data) - HEADER_SIZE - body.tell()} trailing bytes"
            )
        if not isinstance(record, dict):  # every Keyturn schema is a record
            raise UndecodableMessage("corrupt_body", f"{writer.name} body is not a record")
        return writer.name, record

    def _plain_schemas(self, fingerprint: bytes, writer: _Writer) -> tuple[Any, Any]:
        """``writer``'s schema and its current reader, both parsed without logical types."""
        pair = self._plain.get(fingerprint)
        if pair is None:
            reader = _parsed(_without_logical_types(self.readers[writer.name]))
            current = writer.parsed is self._parsed_readers[writer.name]
            pair = (reader if current else _parsed(_without_logical_types(writer.schema)), reader)
            self._plain[fingerprint] = pair
        return pair

    def encode_event(self, event: Any) -> bytes:
        """Encode an event dataclass with the schema named after its class."""
        return self.encode(type(event).__name__, to_record(event))

    def decode_event(self, data: bytes) -> Any:
        """Decode bytes into the event dataclass its writer schema names."""
        name, record = self.decode(data)
        cls = EVENT_TYPES.get(name)
        if cls is None:
            raise UndecodableMessage("unexpected_type", f"record {name} is not an event type")
        try:
            return from_record(cls, record)
        except (TypeError, ValueError, KeyError) as exc:
            raise UndecodableMessage("invalid_event", f"{name} decoded but is not a valid event: {exc}") from exc


@cache
def registry() -> SchemaRegistry:
    """The process-wide registry of the schemas shipped in ``schemas/``."""
    return SchemaRegistry()
