"""What the audit topic holds in place of records (a message that is not an audit record, messages
deleted from its front) stays in a copy: the export marks it where it stood and says so, and the
copy fails verification as the topic does, at the same position. No broker: the topic reader is
replaced by one serving the story's messages."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keyturn.audit import cli, stream
from keyturn.audit.export import read_jsonl, write_jsonl
from keyturn.audit.keys import write_public_key
from keyturn.bus.codec import registry
from keyturn.core.audit.checkpoint import CheckpointVerifier
from keyturn.core.audit.verify import DeletedMessages, ProblemKind, UnreadableMessage, verify
from tests.unit.audit_history import SIGNER, story

VERIFIER = CheckpointVerifier.from_keys([SIGNER.public_key])
GARBAGE = b"\x00garbage\xff" * 10
RECORDS = story().records
MIDDLE = 5  # the garbage sits between records 4 and 5, as a producer to the topic can put it


def messages(deleted: int = 0) -> list[bytes]:
    """The story's messages as the topic holds them, garbage in the middle."""
    encoded = [registry().encode("AuditRecord", record.to_dict()) for record in RECORDS]
    return [*encoded[:MIDDLE], GARBAGE, *encoded[MIDDLE:]][deleted:]


@pytest.fixture
def topic(monkeypatch):
    """Serve ``messages`` as the audit topic; ``deleted`` of them were deleted from its front."""

    def use(values: list[bytes], deleted: int = 0) -> None:
        class Topic:
            def __init__(self, bootstrap: str, name: str, *, from_offset: int = 0, to_offset: int | None = None):
                self.earliest_offset = self.start_offset = deleted
                self.end_offset = deleted + len(values)

            async def __aenter__(self):
                return self

            async def __aexit__(self, *exc_info):
                return None

            async def batches(self, *, follow: bool = False, poll_ms: int = 500):
                yield [stream.decode_audit_message(deleted + n, value) for n, value in enumerate(values)]

        monkeypatch.setattr(stream, "AuditTopic", Topic)

    return use


@pytest.fixture
def key(tmp_path) -> Path:
    path = tmp_path / "audit-checkpoint.pub.pem"
    write_public_key(SIGNER.public_key, path)
    return path


def said(output: str) -> str:
    """The output with the console's line wrapping undone."""
    return " ".join(output.split())


def problems(output: str) -> list[str]:
    return [line for line in output.splitlines() if " at " in line and line.split(" at ")[0].isidentifier()]


def test_an_unreadable_message_is_marked_in_the_export_which_then_fails_verify_where_the_topic_does(
    topic, key, tmp_path
) -> None:
    topic(messages())
    copy = tmp_path / "audit.jsonl"
    exported = CliRunner().invoke(cli.app, ["export", "--format", "jsonl", "-o", str(copy)])
    assert exported.exit_code == 1, exported.output
    assert f"exported {len(RECORDS)} records" in exported.output
    assert "marked in their place 1 unreadable message(s)" in said(exported.output)
    assert "NOT intact" in exported.output

    lines = copy.read_text().splitlines()
    assert len(lines) == len(RECORDS) + 1
    assert json.loads(lines[MIDDLE]) == {
        "marker": "unreadable",
        "topic": "keyturn.audit",
        "partition": 0,
        "offset": MIDDLE,
        "size": len(GARBAGE),
        "sha256": hashlib.sha256(GARBAGE).hexdigest(),
    }
    assert "garbage" not in copy.read_text()  # never its bytes

    from_topic = CliRunner().invoke(cli.app, ["verify", "--public-key", str(key)])
    from_copy = CliRunner().invoke(cli.app, ["verify", "--public-key", str(key), "--export", str(copy)])
    assert from_topic.exit_code == from_copy.exit_code == 1, from_copy.output
    [at_topic] = problems(from_topic.output)
    [at_copy] = problems(from_copy.output)
    assert at_copy.startswith(f"unreadable at index {MIDDLE}: the message at offset {MIDDLE} of partition 0")
    assert at_topic.startswith(at_copy.split(" is not an audit record")[0])  # the topic also says why


def test_messages_deleted_from_the_front_are_marked_and_fail_verify_of_the_copy(topic, key, tmp_path) -> None:
    topic(messages(deleted=3), deleted=3)
    copy = tmp_path / "audit.jsonl"
    exported = CliRunner().invoke(cli.app, ["export", "-o", str(copy)])
    assert exported.exit_code == 1 and "3 message(s) deleted" in said(exported.output), exported.output
    assert json.loads(copy.read_text().splitlines()[0]) == {
        "marker": "deleted",
        "topic": "keyturn.audit",
        "partition": 0,
        "count": 3,
    }
    checked = CliRunner().invoke(cli.app, ["verify", "--public-key", str(key), "--export", str(copy)])
    assert checked.exit_code == 1
    assert "deleted at index 0: offsets 0 to 2 of partition 0 of keyturn.audit were deleted" in said(checked.output)


def test_a_clean_topic_exports_without_markers_and_exits_0(topic, tmp_path) -> None:
    topic([registry().encode("AuditRecord", record.to_dict()) for record in RECORDS])
    copy = tmp_path / "audit.jsonl"
    exported = CliRunner().invoke(cli.app, ["export", "-o", str(copy)])
    assert exported.exit_code == 0 and "marked" not in exported.output, exported.output
    assert verify(read_jsonl(copy.open()), VERIFIER).ok


def test_the_readers_of_a_copy_leave_the_markers_out_and_say_so(topic, key, tmp_path) -> None:
    topic(messages())
    copy = tmp_path / "audit.jsonl"
    CliRunner().invoke(cli.app, ["export", "-o", str(copy)])
    for command in (["replay", "--requester", "agent:reporter"], ["stats"], ["replay"]):
        answer = CliRunner().invoke(cli.app, [*command, "--export", str(copy)])
        assert answer.exit_code == 0, answer.output
        assert said(answer.output).count("left out what the audit holds in place of records") == 1, answer.output
        assert f"an unreadable message (offset {MIDDLE} of partition 0 of keyturn.audit)" in said(answer.output)
    from keyturn.cli import app as keyturn

    report = CliRunner().invoke(
        keyturn,
        [
            "report",
            "--export",
            str(copy),
            "--public-key",
            str(key),
            "--since",
            "2000-01-01",
            "-o",
            str(tmp_path / "r.html"),
        ],
    )
    assert report.exit_code == 1 and "NOT intact" in report.output
    assert "<code>unreadable</code>" in (tmp_path / "r.html").read_text()


def test_csv_marks_the_message_in_a_row_of_its_own(topic, tmp_path) -> None:
    topic(messages())
    table = tmp_path / "audit.csv"
    exported = CliRunner().invoke(cli.app, ["export", "--format", "csv", "-o", str(table)])
    assert exported.exit_code == 1
    rows = list(csv.DictReader(table.open(newline="")))
    assert len(rows) == len(RECORDS) + 1
    marker = rows[MIDDLE]
    assert marker["event_type"] == "(unreadable message)" and marker["sequence"] == ""
    assert json.loads(marker["payload_json"])["offset"] == MIDDLE


def test_parquet_refuses_a_chain_it_cannot_mark_and_leaves_no_file(topic, tmp_path) -> None:
    pytest.importorskip("pyarrow")
    topic(messages())
    table = tmp_path / "audit.parquet"
    exported = CliRunner().invoke(cli.app, ["export", "--format", "parquet", "-o", str(table)])
    assert exported.exit_code == 1 and "no place to mark it" in said(exported.output), exported.output
    assert not table.exists()


def test_a_marker_is_one_problem_and_no_record_more_or_less_to_sign() -> None:
    gap = UnreadableMessage("kt.audit", 0, 9, 80, "0" * 64)
    # after the last checkpoint: the records after it are still counted right
    report = verify([*RECORDS, gap], VERIFIER)
    assert [(p.kind, p.index) for p in report.problems] == [(ProblemKind.UNREADABLE, len(RECORDS))]
    assert report.unverified_tail == 0 and report.records_checked == len(RECORDS)
    # before it
    report = verify([*RECORDS[:MIDDLE], gap, *RECORDS[MIDDLE:]], VERIFIER, require_checkpoint_at_end=True)
    assert [p.kind for p in report.problems] == [ProblemKind.UNREADABLE]


def test_markers_round_trip_and_a_line_that_only_looks_like_one_is_malformed() -> None:
    import io

    gaps = [DeletedMessages("kt.audit", 0, 4), UnreadableMessage("kt.audit", 0, 9, 80, "a" * 64, reason="dropped")]
    file = io.StringIO()
    assert write_jsonl(gaps, file) == 0
    assert list(read_jsonl(io.StringIO(file.getvalue()))) == [
        gaps[0],
        UnreadableMessage("kt.audit", 0, 9, 80, "a" * 64),
    ]
    odd = {"marker": "unreadable", "topic": "kt.audit", "partition": 0, "offset": -1, "size": 1, "sha256": "a" * 64}
    [read] = read_jsonl(io.StringIO(json.dumps(odd)))
    assert read == odd
    assert [p.kind for p in verify([read], VERIFIER).problems] == [ProblemKind.MALFORMED]


def test_a_record_read_from_the_topic_is_the_record_that_was_written():
    """Read without the schema's logical types (instants as integers, the id as text), every
    record of a story comes back equal to what the writer wrote, checkpoints included."""
    records = story().records
    assert any(record.is_checkpoint for record in records)
    read = [
        stream.decode_audit_message(n, registry().encode("AuditRecord", r.to_dict())) for n, r in enumerate(records)
    ]
    assert [message.record for message in read] == records


def test_a_record_whose_id_is_not_a_canonical_uuid_is_unreadable_not_taken():
    written = story().records[0].to_dict()
    for record_id in (written["record_id"].upper(), "not-a-uuid", "{" + written["record_id"] + "}"):
        message = stream.decode_audit_message(7, registry().encode("AuditRecord", {**written, "record_id": record_id}))
        assert message.record is None
        assert message.unreadable is not None and "record_id" in message.unreadable.reason
