"""The Avro schemas are the contract: events mirror them, old writers stay readable, bad bytes are named."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import typing
from datetime import UTC, datetime
from pathlib import Path

import fastavro
import pytest

from keyturn.bus.codec import MAGIC, SCHEMA_DIR, SchemaRegistry, UndecodableMessage, registry, schema_fingerprint
from keyturn.core.events import EVENT_TYPES, ActionRequested, Digest
from keyturn.core.principal import Principal, PrincipalKind


def sample_request(**changes) -> ActionRequested:
    base = dict(
        event_id="requested:1",
        action_id="6c0a1f9e-8a3f-4a7e-9a55-2b8f0d6e7a10",
        action="db.export",
        resource="postgres://staging/analytics/orders",
        parameters_json='{"table":"orders"}',
        reason="weekly report",
        requester=Principal("agent:reporter", PrincipalKind.AGENT, ("human:alice",)),
        payload_digest=Digest("ab" * 32),
        requested_at=datetime(2026, 11, 30, 12, 0, tzinfo=UTC),
    )
    return ActionRequested(**{**base, **changes})


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_every_event_dataclass_has_exactly_the_fields_of_its_schema(name: str) -> None:
    schema = registry().readers[name]
    schema_fields = {f["name"] for f in schema["fields"]}
    class_fields = {f.name for f in dataclasses.fields(EVENT_TYPES[name])}
    assert class_fields == schema_fields


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_every_event_field_with_a_schema_default_has_a_python_default(name: str) -> None:
    schema_defaults = {f["name"] for f in registry().readers[name]["fields"] if "default" in f}
    python_defaults = {
        f.name
        for f in dataclasses.fields(EVENT_TYPES[name])
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }
    assert python_defaults <= schema_defaults, "a Python default the schema lacks would make old readers fail"


def test_event_round_trips_through_single_object_encoding() -> None:
    event = sample_request()
    data = registry().encode_event(event)
    assert data[:2] == MAGIC
    assert data[2:10] == registry().fingerprints["ActionRequested"]
    assert registry().decode_event(data) == event


def test_every_current_schema_is_frozen_in_history() -> None:
    frozen = {schema_fingerprint(json.loads(p.read_text())) for p in (SCHEMA_DIR / "history").glob("*.avsc")}
    missing = [name for name, fp in registry().fingerprints.items() if fp not in frozen]
    assert not missing, f"run `keyturn schemas freeze` and commit schemas/history: {missing}"


def _registry_with(tmp_path: Path, schema_name: str, edit) -> tuple[SchemaRegistry, dict]:
    """A copy of schemas/ where ``schema_name`` was edited; returns (registry, edited schema)."""
    copy = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, copy)
    path = copy / f"keyturn.{schema_name}.avsc"
    schema = json.loads(path.read_text())
    edit(schema)
    path.write_text(json.dumps(schema))
    return SchemaRegistry(copy), schema


def _encode_with(reg: SchemaRegistry, name: str, record: dict) -> bytes:
    buf = io.BytesIO()
    buf.write(MAGIC + reg.fingerprints[name])
    fastavro.schemaless_writer(buf, reg.readers[name], record)
    return buf.getvalue()


def test_a_newer_reader_fills_defaults_for_an_older_writer(tmp_path: Path) -> None:
    # the writer of today; the reader of tomorrow adds a field with a default
    old_bytes = registry().encode_event(sample_request())
    newer, _ = _registry_with(
        tmp_path,
        "ActionRequested",
        lambda s: s["fields"].append({"name": "ticket", "type": ["null", "string"], "default": None}),
    )
    name, record = newer.decode(old_bytes)
    assert name == "ActionRequested"
    assert record["ticket"] is None
    assert record["action"] == "db.export"


def test_an_older_reader_reads_a_newer_writer_it_was_shipped(tmp_path: Path) -> None:
    newer, _schema = _registry_with(
        tmp_path,
        "ActionRequested",
        lambda s: s["fields"].append({"name": "ticket", "type": ["null", "string"], "default": None}),
    )
    record = {**json.loads(json.dumps(_plain(sample_request()))), "ticket": "CHG-7"}
    data = _encode_with(newer, "ActionRequested", record)
    with pytest.raises(UndecodableMessage) as unknown:
        registry().decode(data)
    assert unknown.value.error_type == "unknown_schema"
    # shipping the newer writer schema into history lets today's reader resolve it
    history = tmp_path / "old" / "history"
    shutil.copytree(SCHEMA_DIR, tmp_path / "old", ignore=shutil.ignore_patterns("history"))
    history.mkdir()
    (history / "keyturn.ActionRequested.next.avsc").write_text(json.dumps(newer.readers["ActionRequested"]))
    older = SchemaRegistry(tmp_path / "old")
    event = older.decode_event(data)
    assert event.action == "db.export" and not hasattr(event, "ticket")


def _plain(event) -> dict:
    from keyturn.core.records import to_record

    record = to_record(event)
    record["requested_at"] = int(event.requested_at.timestamp() * 1000)
    return record


@pytest.mark.parametrize(
    ("data", "error_type"),
    [
        (b"", "truncated"),
        (b"\xc3\x01\x00", "truncated"),
        (b'{"action": "db.export"}', "not_avro"),
        (MAGIC + b"\x00" * 8 + b"body", "unknown_schema"),
    ],
)
def test_bad_bytes_are_refused_with_a_named_reason(data: bytes, error_type: str) -> None:
    with pytest.raises(UndecodableMessage) as refused:
        registry().decode(data)
    assert refused.value.error_type == error_type
    assert refused.value.reason


def test_a_corrupt_body_is_refused_not_misread() -> None:
    data = registry().encode_event(sample_request())
    with pytest.raises(UndecodableMessage) as refused:
        registry().decode_event(data[:10] + b"\xff" * 3 + data[13:40])
    assert refused.value.error_type in {"corrupt_body", "invalid_event"}


def test_trailing_bytes_are_refused() -> None:
    with pytest.raises(UndecodableMessage) as refused:
        registry().decode(registry().encode_event(sample_request()) + b"extra")
    assert "trailing" in refused.value.reason


def test_typing_of_events_is_resolvable() -> None:
    for cls in EVENT_TYPES.values():
        assert typing.get_type_hints(cls)
