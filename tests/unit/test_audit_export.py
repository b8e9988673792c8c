"""Audit exports keep records exact (JSONL, Avro) or readable (CSV), and keys stay private."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import stat
from pathlib import Path

import fastavro
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastavro.schema import load_schema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyturn.audit.export import (
    CSV_COLUMNS,
    AuditFileError,
    ParquetUnavailable,
    read_jsonl,
    record_to_dict,
    write_csv,
    write_jsonl,
    write_parquet,
)
from keyturn.audit.keys import (
    InsecureKeyFile,
    create_signing_key,
    load_or_create_signing_key,
    load_public_key,
    load_signer,
    load_signing_key,
    load_verifier,
    write_public_key,
)
from keyturn.core.audit.canonical import record_hash
from keyturn.core.audit.chain import AuditChain
from keyturn.core.audit.checkpoint import CheckpointSigner, CheckpointVerifier
from keyturn.core.audit.record import AuditRecord, Checkpoint
from keyturn.core.audit.verify import verify

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "keyturn.AuditRecord.avsc"
T0 = 1_714_564_800_000  # 2024-05-01T12:00:00Z
AUDIT_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
VERIFIER = CheckpointVerifier.from_keys([AUDIT_KEY.public_key()])


def build_chain(events: int = 30) -> list[AuditRecord]:
    """Events with flags, nulls and non-ASCII text; a checkpoint every 10 and at the end."""
    chain = AuditChain(CheckpointSigner(AUDIT_KEY), checkpoint_every=10)
    records = []
    for n in range(events):
        record = chain.append(
            event_id=f"keyturn.actions.requested:act-{n}:ActionRequested",
            event_type="ActionRequested" if n % 5 else "BreakGlass",
            source_topic="keyturn.actions.requested",
            occurred_at=T0 + n,
            payload={"action_id": f"act-{n}", "params": {"note": "Zürich ✓", "rows": n}},
            now=T0 + n + 3,
            action_id=f"act-{n}",
            actor=None if n % 7 == 0 else "agent:reporter",
            flags=["break_glass"] if n % 5 == 0 else [],
        )
        records.append(record)
        if chain.checkpoint_due:
            records.append(chain.checkpoint(T0 + n + 4))
    records.append(chain.checkpoint(T0 + events + 10))
    return records


CHAIN = build_chain()


def avro_round_trip(schema, data: dict) -> dict:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, data)
    buffer.seek(0)
    return fastavro.schemaless_reader(buffer, schema)


def test_records_round_trip_through_the_avro_schema_with_their_hashes_intact():
    schema = load_schema(str(SCHEMA_PATH))
    read_back = [avro_round_trip(schema, record_to_dict(record)) for record in CHAIN]

    assert [AuditRecord.from_dict(data) for data in read_back] == CHAIN
    assert all(record_hash(AuditRecord.from_dict(data)) == data["hash"] for data in read_back)
    assert verify(read_back, VERIFIER, require_checkpoint_at_end=True).ok


def test_python_types_mirror_the_avro_schema():
    schema = json.loads(SCHEMA_PATH.read_text())
    fields = schema["fields"]
    checkpoint_schema = next(f for f in fields if f["name"] == "checkpoint")["type"][1]

    assert (schema["namespace"], schema["name"]) == ("keyturn", "AuditRecord")
    assert [f["name"] for f in fields] == list(AuditRecord.__dataclass_fields__)
    assert [f["name"] for f in checkpoint_schema["fields"]] == list(Checkpoint.__dataclass_fields__)
    assert list(record_to_dict(CHAIN[0])) == [f["name"] for f in fields]


def test_every_schema_field_is_documented_and_optional_fields_have_defaults():
    schema = json.loads(SCHEMA_PATH.read_text())
    checkpoint_schema = next(f for f in schema["fields"] if f["name"] == "checkpoint")["type"][1]

    for field in schema["fields"] + checkpoint_schema["fields"]:
        assert field.get("doc"), f"{field['name']} has no doc"
    defaults = {f["name"]: f["default"] for f in schema["fields"] if "default" in f}
    assert defaults == {"action_id": None, "actor": None, "checkpoint": None, "flags": []}


def test_the_schema_stands_alone():
    schema = fastavro.parse_schema(json.loads(SCHEMA_PATH.read_text()), named_schemas={})
    assert schema["name"] == "keyturn.AuditRecord"


def test_a_jsonl_export_reads_back_identical_and_verifies():
    file = io.StringIO()
    assert write_jsonl(CHAIN, file) == len(CHAIN)

    file.seek(0)
    read_back = list(read_jsonl(file))
    assert read_back == [record.to_dict() for record in CHAIN]
    assert "Zürich ✓" in file.getvalue()  # non-ASCII kept readable, not escaped
    assert verify(read_back, VERIFIER, require_checkpoint_at_end=True).ok


def test_jsonl_reads_from_binary_files_and_skips_blank_lines():
    text = io.StringIO()
    write_jsonl(CHAIN[:3], text)
    data = text.getvalue().replace("\n", "\n\n", 1).encode("utf-8")

    assert [r["sequence"] for r in read_jsonl(io.BytesIO(data))] == [0, 1, 2]


def test_jsonl_names_the_line_that_is_not_a_record():
    text = io.StringIO()
    write_jsonl(CHAIN[:3], text)
    lines = text.getvalue().splitlines(keepends=True)
    lines[1] = lines[1][:40] + "\n"

    with pytest.raises(AuditFileError, match="line 2 is not a valid audit record"):
        list(read_jsonl(io.StringIO("".join(lines))))


def test_jsonl_refuses_a_field_given_twice():
    line = json.dumps(record_to_dict(CHAIN[0]))[:-1] + ', "actor": "human:mallory"}\n'

    with pytest.raises(AuditFileError, match="field 'actor' appears twice"):
        list(read_jsonl(io.StringIO(line)))


def test_jsonl_names_a_line_that_is_not_utf8():
    with pytest.raises(AuditFileError, match="line 1 is not UTF-8"):
        list(read_jsonl(io.BytesIO(b'{"a": "\xff"}\n')))


JSONL = io.StringIO()
write_jsonl(CHAIN, JSONL)
JSONL_BYTES = JSONL.getvalue().encode("utf-8")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(position=st.integers(0, len(JSONL_BYTES) - 1), xor=st.integers(1, 255))
def test_any_single_byte_change_to_a_jsonl_export_is_refused_or_reported(position, xor):
    tampered = bytearray(JSONL_BYTES)
    tampered[position] ^= xor

    try:
        records = list(read_jsonl(io.BytesIO(bytes(tampered))))
    except AuditFileError:
        return
    if records == list(read_jsonl(io.BytesIO(JSONL_BYTES))):
        return  # whitespace between records (e.g. a tab for the final newline) changes no record
    assert not verify(records, VERIFIER, require_checkpoint_at_end=True).ok


def test_csv_export_flattens_records_for_spreadsheets():
    file = io.StringIO(newline="")
    assert write_csv(CHAIN, file) == len(CHAIN)

    rows = list(csv.DictReader(io.StringIO(file.getvalue(), newline="")))
    assert tuple(rows[0]) == CSV_COLUMNS
    first, checkpoint = rows[0], next(r for r in rows if r["event_type"] == "Checkpoint")
    assert first["recorded_at"] == "2024-05-01T12:00:00.003Z"
    assert first["actor"] == ""  # null
    assert first["flags"] == "break_glass"
    assert json.loads(first["payload_json"])["params"]["note"] == "Zürich ✓"
    assert first["checkpoint_signature"] == ""
    assert checkpoint["checkpoint_covers_sequence"] == "9"
    assert checkpoint["checkpoint_chain_hash"] == rows[9]["hash"]


def one_record_by(actor: str):
    return AuditChain().append(
        event_id="keyturn.dlq:1",
        event_type="DeadLetter",
        source_topic="keyturn.dlq",
        occurred_at=T0,
        payload={},
        now=T0,
        actor=actor,
    )


def csv_of(record) -> io.StringIO:
    file = io.StringIO(newline="")
    write_csv([record], file)
    return file


def test_csv_cells_that_a_spreadsheet_would_run_are_defused():
    file = csv_of(one_record_by('=HYPERLINK("http://evil")'))

    row = next(csv.DictReader(io.StringIO(file.getvalue(), newline="")))
    assert row["actor"] == '\'=HYPERLINK("http://evil")'


def test_csv_cells_holding_control_characters_are_written_out():
    file = csv_of(one_record_by("human:car\x00ol\x1b[2J"))  # as a record from an older build may hold

    assert "\x00" not in file.getvalue() and "\x1b" not in file.getvalue()
    row = next(csv.DictReader(io.StringIO(file.getvalue(), newline="")))
    assert row["actor"] == "human:car\\x00ol\\x1b[2J"


def test_parquet_export_says_how_to_get_pyarrow_when_it_is_missing(tmp_path):
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(ParquetUnavailable, match="pip install pyarrow"):
            write_parquet(CHAIN, tmp_path / "audit.parquet")
        return
    import pyarrow.parquet as pq

    assert write_parquet(CHAIN, tmp_path / "audit.parquet", batch_size=7) == len(CHAIN)
    table = pq.read_table(tmp_path / "audit.parquet")
    assert table.column("hash").to_pylist() == [r.hash for r in CHAIN]


def test_a_new_signing_key_is_readable_by_its_owner_only(tmp_path):
    path = tmp_path / "keys" / "audit-checkpoint.pem"
    key = create_signing_key(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_signing_key(path).private_bytes_raw() == key.private_bytes_raw()
    assert load_or_create_signing_key(path).private_bytes_raw() == key.private_bytes_raw()
    with pytest.raises(FileExistsError):
        create_signing_key(path)


def test_a_signing_key_others_can_read_is_refused(tmp_path):
    path = tmp_path / "audit-checkpoint.pem"
    create_signing_key(path)
    os.chmod(path, 0o644)

    with pytest.raises(InsecureKeyFile, match="chmod 600"):
        load_signing_key(path)


def test_checkpoints_signed_with_a_key_file_verify_with_its_public_key_file(tmp_path):
    signer = load_signer(tmp_path / "audit-checkpoint.pem")
    write_public_key(signer.public_key, tmp_path / "audit-checkpoint.pub.pem")
    chain = AuditChain(signer)
    records = [
        chain.append(
            event_id="keyturn.actions.requested:act-1:ActionRequested",
            event_type="ActionRequested",
            source_topic="keyturn.actions.requested",
            occurred_at=T0,
            payload={},
            now=T0,
        )
    ]
    records.append(chain.checkpoint(T0 + 1))

    verifier = load_verifier([tmp_path / "audit-checkpoint.pub.pem"])
    assert verifier.key_ids == {signer.key_id}
    assert verify(records, verifier, require_checkpoint_at_end=True).ok
    assert load_public_key(tmp_path / "audit-checkpoint.pub.pem") == signer.public_key


def test_every_record_stays_one_line_whatever_its_text_holds() -> None:
    # refusals record what callers sent (masked): any character may reach the audit
    odd = [
        dataclasses.replace(record, payload_json=record.payload_json.replace("}", ',"x":"a\u2028b\u2029c\x85d"}', 1))
        for record in CHAIN[:5]
    ]
    file = io.StringIO()
    write_jsonl(odd, file)
    assert len(file.getvalue().splitlines()) == len(odd)
    assert list(read_jsonl(io.StringIO(file.getvalue()))) == [record.to_dict() for record in odd]


def test_a_record_read_from_the_topic_is_the_record_written():
    """The audit topic's reader trusts the Avro schema's types (AuditRecord.from_avro): it must
    give back exactly what the strict reader of untrusted input gives."""
    from keyturn.audit.stream import decode_audit_message
    from keyturn.bus.codec import registry

    for offset, record in enumerate(CHAIN):
        message = decode_audit_message(offset, registry().encode("AuditRecord", record.to_dict()))
        assert message.record == record and message.unreadable is None
    broken = decode_audit_message(7, registry().encode("AuditRecord", CHAIN[0].to_dict())[:-3])
    assert broken.record is None and broken.unreadable is not None
