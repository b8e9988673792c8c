"""The audit chain detects every edited, dropped, reordered, duplicated or forged record."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyturn.core.audit.canonical import GENESIS_HASH, RECORD_ID_NAMESPACE, canonical_bytes, record_hash, record_id_for
from keyturn.core.audit.chain import AuditChain
from keyturn.core.audit.checkpoint import CheckpointSigner, CheckpointVerifier, checkpoint_message
from keyturn.core.audit.record import AuditRecord, MalformedRecord
from keyturn.core.audit.verify import Problem, ProblemKind, verify
from keyturn.core.canonical import canonical_json

T0 = 1_714_564_800_000  # 2024-05-01T12:00:00Z
AUDIT_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
SIGNER = CheckpointSigner(AUDIT_KEY)
VERIFIER = CheckpointVerifier.from_keys([AUDIT_KEY.public_key()])

KINDS = ("ActionRequested", "ActionDecided", "ApprovalResolved", "ActionExecuted")
TOPICS = {
    "ActionRequested": "keyturn.actions.requested",
    "ActionDecided": "keyturn.actions.decided",
    "ApprovalResolved": "keyturn.actions.resolved",
    "ActionExecuted": "keyturn.actions.executed",
}


def event(n: int) -> dict:
    """The arguments of AuditChain.append for the n-th source event of a test stream."""
    kind = KINDS[n % 4]
    action_id = f"act-{n // 4:04d}"
    return {
        "event_id": f"{TOPICS[kind]}:{action_id}:{kind}",
        "event_type": kind,
        "source_topic": TOPICS[kind],
        "occurred_at": T0 + 1000 * n,
        "payload": {
            "action_id": action_id,
            "kind": kind,
            "params": {"table": "orders", "note": "café"},
        },
        "now": T0 + 1000 * n + 7,
        "action_id": action_id,
        "actor": "human:alice" if kind == "ApprovalResolved" else "agent:reporter",
        "flags": ["mandatory_review"] if n % 13 == 0 else [],
    }


def feed(chain: AuditChain, events: range) -> list[AuditRecord]:
    """Append events the way the audit service does, publishing checkpoints when due."""
    published = []
    for n in events:
        record = chain.append(**event(n))
        if record is not None:
            published.append(record)
        if chain.checkpoint_due:
            published.append(chain.checkpoint(T0 + 1000 * n + 9))
    return published


def build_chain(events: int = 210, checkpoint_every: int = 50) -> list[AuditRecord]:
    """A finished stream: events with a checkpoint every 50, closed by a final checkpoint."""
    chain = AuditChain(SIGNER, checkpoint_every=checkpoint_every)
    records = feed(chain, range(events))
    records.append(chain.checkpoint(T0 + 1000 * events))
    return records


CHAIN = build_chain()
CHECKPOINTS = [r.sequence for r in CHAIN if r.is_checkpoint]


def rehashed(record: AuditRecord, **changes) -> AuditRecord:
    """The record with changes and a hash recomputed to match: an edit that covers its tracks."""
    changed = dataclasses.replace(record, **changes)
    return dataclasses.replace(changed, hash=record_hash(changed))


def relinked(records: list[AuditRecord], start: int) -> list[AuditRecord]:
    """Records with prev_hash and hash recomputed from ``start`` on, as a forger would."""
    records = list(records)
    for i in range(start, len(records)):
        records[i] = rehashed(records[i], prev_hash=records[i - 1].hash if i else GENESIS_HASH)
    return records


def only_problem(records, **options) -> Problem:
    report = verify(records, VERIFIER, **options)
    assert not report.ok
    assert len(report.problems) == 1, report.summary()
    return report.problems[0]


def test_the_test_chain_has_checkpoints_every_50_events_and_at_the_end():
    assert CHECKPOINTS == [50, 101, 152, 203, 214]
    assert [r.sequence for r in CHAIN] == list(range(215))


def test_an_untouched_chain_verifies():
    report = verify(CHAIN, VERIFIER, require_checkpoint_at_end=True)

    assert report.ok, report.summary()
    assert report.records_checked == 215
    assert report.last_sequence == 214
    assert report.last_checkpoint_sequence == 214
    assert report.unverified_tail == 0
    assert report.problems == []


def test_records_link_each_to_the_one_before():
    assert CHAIN[0].prev_hash == GENESIS_HASH
    assert all(CHAIN[i].prev_hash == CHAIN[i - 1].hash for i in range(1, len(CHAIN)))
    assert all(r.hash == hashlib.sha256(canonical_bytes(r)).hexdigest() for r in CHAIN)


def test_an_edited_payload_is_reported_at_its_record():
    tampered = list(CHAIN)
    tampered[41] = dataclasses.replace(CHAIN[41], payload_json='{"action_id":"act-0010"}')

    assert only_problem(tampered) == Problem(
        ProblemKind.EDITED, 41, 41, "record 41 was edited: its hash does not match its contents"
    )


def test_an_edit_with_a_recomputed_hash_is_caught_by_the_next_record():
    tampered = list(CHAIN)
    tampered[41] = rehashed(CHAIN[41], actor="human:mallory")

    problem = only_problem(tampered)
    assert (problem.kind, problem.sequence, problem.index) == (ProblemKind.BROKEN_LINK, 42, 42)
    assert "record 41 was rewritten or replaced" in problem.message


def test_rewriting_history_and_every_later_hash_is_caught_by_the_next_checkpoint():
    tampered = list(CHAIN)
    tampered[41] = rehashed(CHAIN[41], actor="human:mallory")
    tampered = relinked(tampered, 42)

    report = verify(tampered, VERIFIER)
    assert not report.ok
    first = report.problems[0]
    assert (first.kind, first.sequence, first.index) == (ProblemKind.CHECKPOINT_MISMATCH, 50, 50)
    assert "does not match the chain" in first.message
    assert {p.kind for p in report.problems} == {ProblemKind.CHECKPOINT_MISMATCH}
    assert report.last_checkpoint_sequence is None


def test_a_dropped_record_is_reported_where_it_is_missing():
    tampered = CHAIN[:77] + CHAIN[78:]

    assert only_problem(tampered) == Problem(
        ProblemKind.DROPPED,
        77,
        77,
        "record 77 is missing: the stream skips from record 76 to record 78",
    )


def test_dropped_records_at_the_start_are_reported():
    problem = only_problem(CHAIN[3:])
    assert (problem.kind, problem.sequence, problem.index) == (ProblemKind.DROPPED, 0, 0)
    assert "records 0 to 2 are missing" in problem.message


def test_two_swapped_records_are_reported_as_reordered():
    tampered = list(CHAIN)
    tampered[60], tampered[61] = CHAIN[61], CHAIN[60]

    assert only_problem(tampered) == Problem(
        ProblemKind.REORDERED, 60, 61, "record 60 is out of order: it appears after record 61"
    )


def test_a_block_moved_later_is_one_reordering():
    tampered = CHAIN[:10] + CHAIN[20:41] + CHAIN[10:20] + CHAIN[41:]

    problem = only_problem(tampered)
    assert (problem.kind, problem.sequence, problem.index) == (ProblemKind.REORDERED, 10, 31)
    assert problem.message == "records 10 to 19 are out of order: they appear after record 40"


def test_a_truncated_tail_is_unverified_and_fails_when_a_final_checkpoint_is_required():
    truncated = CHAIN[:209]  # cut in the middle of the records after checkpoint 203

    lenient = verify(truncated, VERIFIER)
    assert lenient.ok
    assert (lenient.last_checkpoint_sequence, lenient.unverified_tail) == (203, 5)

    problem = only_problem(truncated, require_checkpoint_at_end=True)
    assert (problem.kind, problem.sequence, problem.index) == (
        ProblemKind.UNVERIFIED_TAIL,
        204,
        204,
    )
    assert "5 records come after the last valid checkpoint (record 203)" in problem.message


def test_a_rewritten_tail_without_its_checkpoint_is_not_trusted():
    tail_rewritten = list(CHAIN[:214])
    tail_rewritten[210] = dataclasses.replace(CHAIN[210], payload_json="{}")
    tail_rewritten = relinked(tail_rewritten, 210)

    lenient = verify(tail_rewritten, VERIFIER)
    assert lenient.ok and lenient.unverified_tail == 10
    strict = only_problem(tail_rewritten, require_checkpoint_at_end=True)
    assert strict.kind is ProblemKind.UNVERIFIED_TAIL


def test_a_forged_checkpoint_signature_is_reported():
    genuine = CHAIN[214].checkpoint
    forged_signature = OTHER_KEY.sign(
        checkpoint_message(genuine.covers_sequence, genuine.chain_hash, genuine.key_id)
    ).hex()
    tampered = [*CHAIN[:214], rehashed(CHAIN[214], checkpoint=dataclasses.replace(genuine, signature=forged_signature))]

    report = verify(tampered, VERIFIER)
    assert [(p.kind, p.sequence, p.index) for p in report.problems] == [(ProblemKind.FORGED_CHECKPOINT, 214, 214)]
    assert report.problems[0].message.startswith("checkpoint record 214 is not genuine")
    assert (report.last_checkpoint_sequence, report.unverified_tail) == (203, 11)


def test_a_checkpoint_signed_with_an_unknown_key_is_reported():
    intruder = CheckpointSigner(OTHER_KEY)
    genuine = CHAIN[152].checkpoint
    tampered = list(CHAIN)
    tampered[152] = rehashed(CHAIN[152], checkpoint=intruder.sign(genuine.covers_sequence, genuine.chain_hash))

    report = verify(tampered, VERIFIER)
    # Replacing the record also changed its hash, which the next record's link exposes.
    assert [(p.kind, p.sequence, p.index) for p in report.problems] == [
        (ProblemKind.UNKNOWN_CHECKPOINT_KEY, 152, 152),
        (ProblemKind.BROKEN_LINK, 153, 153),
    ]
    message = report.problems[0].message
    assert intruder.key_id in message and "not a trusted checkpoint key" in message


def test_a_genuine_checkpoint_copied_from_another_point_does_not_vouch_here():
    tampered = [*CHAIN[:214], rehashed(CHAIN[214], checkpoint=CHAIN[203].checkpoint)]

    problem = only_problem(tampered)
    assert (problem.kind, problem.sequence, problem.index) == (
        ProblemKind.CHECKPOINT_MISMATCH,
        214,
        214,
    )
    assert "it vouches for record 202" in problem.message


def test_a_rotated_key_still_verifies_old_checkpoints():
    rotated = CheckpointSigner(OTHER_KEY)
    chain = AuditChain(SIGNER, checkpoint_every=5)
    records = feed(chain, range(12))
    chain = AuditChain(rotated, checkpoint_every=5).resume(records[-1])
    records += feed(chain, range(12, 24))

    both = CheckpointVerifier.from_keys([AUDIT_KEY.public_key(), OTHER_KEY.public_key()])
    assert verify(records, both).ok
    assert verify(records, VERIFIER).problems[0].kind is ProblemKind.UNKNOWN_CHECKPOINT_KEY


def test_a_duplicated_record_is_reported_at_the_copy():
    tampered = [*CHAIN[:31], CHAIN[30], *CHAIN[31:]]

    assert only_problem(tampered) == Problem(
        ProblemKind.DUPLICATE_RECORD, 30, 31, "record 30 appears twice: a copy of it is at index 31"
    )


def test_a_record_with_a_negative_sequence_is_malformed_not_a_repeat():
    forged = dataclasses.replace(CHAIN[30], sequence=-5)
    tampered = [*CHAIN[:31], dataclasses.replace(forged, hash=record_hash(forged)), *CHAIN[31:]]

    problem = only_problem(tampered)
    assert (problem.kind, problem.sequence, problem.index) == (ProblemKind.MALFORMED, -5, 31)
    assert "negative sequence" in problem.message and "twice" not in problem.message


def test_an_event_recorded_twice_is_reported():
    class Forgetful:
        def __contains__(self, event_id):
            return False

        def add(self, event_id):
            pass

    chain = AuditChain(SIGNER, checkpoint_every=None, seen=Forgetful())
    records = feed(chain, range(10)) + feed(chain, range(4, 5))

    problem = only_problem(records)
    assert (problem.kind, problem.sequence, problem.index) == (ProblemKind.DUPLICATE_EVENT, 10, 10)
    assert "already recorded as record 4" in problem.message


def test_a_malformed_record_is_reported_and_the_rest_still_checked():
    tampered = [r.to_dict() for r in CHAIN]
    del tampered[5]["event_type"]
    tampered[90]["payload_json"] = "{}"

    report = verify(tampered, VERIFIER)
    assert [(p.kind, p.sequence, p.index) for p in report.problems] == [
        (ProblemKind.MALFORMED, 5, 5),
        (ProblemKind.EDITED, 90, 90),
    ]
    assert "event_type must be a string" in report.problems[0].message


def test_an_empty_stream_is_fine_unless_a_checkpoint_is_required():
    assert verify([], VERIFIER).ok
    assert only_problem([], require_checkpoint_at_end=True).kind is ProblemKind.UNVERIFIED_TAIL


def test_problems_beyond_the_limit_are_counted_not_kept():
    tampered = [dataclasses.replace(r, payload_json="{}") for r in CHAIN]

    report = verify(tampered, VERIFIER, max_problems=10)
    assert len(report.problems) == 10
    assert report.problems_omitted == 205
    assert not report.ok


def test_each_event_is_recorded_exactly_once():
    chain = AuditChain(SIGNER)
    first = chain.append(**event(0))

    assert chain.append(**event(0)) is None
    assert chain.next_sequence == 1
    assert chain.has_recorded(first.event_id)


def test_resume_continues_the_chain_and_skips_events_recorded_before_the_restart():
    before = AuditChain(SIGNER, checkpoint_every=50)
    published = feed(before, range(120))
    recorded_ids = [r.event_id for r in published]

    after = AuditChain(SIGNER, checkpoint_every=50).resume(published[-1].to_dict(), seen_event_ids=recorded_ids)
    assert after.checkpoint_due  # the gap since the last checkpoint is unknown after a restart
    published.append(after.checkpoint(T0 + 500_000))
    redelivered = feed(after, range(100, 210))  # the consumer replays from an older offset
    published += redelivered
    published.append(after.checkpoint(T0 + 900_000))

    assert len([r for r in redelivered if not r.is_checkpoint]) == 90
    assert [r.sequence for r in published] == list(range(len(published)))
    report = verify(published, VERIFIER, require_checkpoint_at_end=True)
    assert report.ok, report.summary()


def test_resume_after_a_checkpoint_waits_for_the_next_one():
    chain = AuditChain(SIGNER, checkpoint_every=50)
    chain.resume(CHAIN[-1])
    assert not chain.checkpoint_due
    assert (chain.next_sequence, chain.last_hash) == (215, CHAIN[-1].hash)


def test_resume_refuses_a_last_record_that_was_edited():
    with pytest.raises(MalformedRecord, match="refusing to continue after record 30"):
        AuditChain(SIGNER).resume(dataclasses.replace(CHAIN[30], actor="human:mallory"))


def test_checkpoints_need_a_signer():
    chain = AuditChain()
    chain.append(**event(0))
    assert not chain.checkpoint_due
    with pytest.raises(ValueError, match="no CheckpointSigner"):
        chain.checkpoint(T0)


@pytest.mark.parametrize("event_type", ["Checkpoint", "ForeignRecords"])
def test_the_chain_s_own_records_cannot_be_appended_as_events(event_type):
    with pytest.raises(ValueError, match=r"made by AuditChain itself"):
        AuditChain(SIGNER).append(**{**event(0), "event_type": event_type})


def test_payloads_are_stored_as_canonical_json():
    record = AuditChain().append(
        **{
            **event(0),
            "payload": {
                "z": 1,
                "a": {"y": [1, 2], "b": "é"},
                "at": datetime(2024, 5, 1, 12, tzinfo=UTC),
                "sealed": b"\x00\x01",
            },
        }
    )
    assert record.payload_json == ('{"a":{"b":"é","y":[1,2]},"at":1714564800000,"sealed":"AAE=","z":1}')


def test_payloads_refuse_values_that_would_be_guessed_at():
    with pytest.raises(TypeError, match="keys must be strings"):
        canonical_json({1: "one"})
    with pytest.raises(ValueError, match="has no timezone"):
        AuditChain().append(**{**event(0), "now": datetime(2024, 5, 1, 12)})


def test_fields_the_schema_cannot_carry_are_refused_at_append():
    with pytest.raises(TypeError, match="actor must be a string or None"):
        AuditChain().append(**{**event(0), "actor": 42})
    with pytest.raises(ValueError, match="event_id must be a non-empty string"):
        AuditChain().append(**{**event(0), "event_id": ""})


def test_the_checkpoint_signature_covers_a_documented_statement():
    assert checkpoint_message(49, "ab" * 32, "ed25519:0123456789abcdef") == (
        '{"chain_hash":"' + "ab" * 32 + '","covers_sequence":49,'
        '"domain":"keyturn.AuditRecord.checkpoint/v1","key_id":"ed25519:0123456789abcdef"}'
    ).encode("utf-8")
    checkpoint = SIGNER.sign(49, "ab" * 32)
    VERIFIER.verify(checkpoint)
    AUDIT_KEY.public_key().verify(
        bytes.fromhex(checkpoint.signature), checkpoint_message(49, "ab" * 32, checkpoint.key_id)
    )


def test_flags_are_sorted_unique_tokens():
    flags = ["mandatory_review", "break_glass", "break_glass"]
    record = AuditChain().append(**{**event(1), "flags": flags})
    assert record.flags == ("break_glass", "mandatory_review")
    with pytest.raises(ValueError, match="lowercase token"):
        AuditChain().append(**{**event(1), "flags": ["Break Glass"]})


def test_the_hash_is_sha256_of_the_documented_canonical_bytes():
    record = AuditChain().append(
        event_id="keyturn.actions.decided:act-1:ActionDecided",
        event_type="ActionDecided",
        source_topic="keyturn.actions.decided",
        occurred_at=T0,
        payload={"decision": "needs_approval", "note": "naïve"},
        now=T0 + 5,
        action_id="act-1",
        actor=None,
        flags=["break_glass"],
    )
    expected = (
        '{"action_id":"act-1","actor":null,"checkpoint":null,'
        '"event_id":"keyturn.actions.decided:act-1:ActionDecided","event_type":"ActionDecided",'
        '"flags":["break_glass"],"occurred_at":1714564800000,'
        '"payload_json":"{\\"decision\\":\\"needs_approval\\",\\"note\\":\\"naïve\\"}",'
        '"prev_hash":"0000000000000000000000000000000000000000000000000000000000000000",'
        '"record_id":"f45b0a7b-f450-57f8-b9fa-bb29c7fca6b0",'
        '"recorded_at":1714564800005,"sequence":0,"source_topic":"keyturn.actions.decided"}'
    ).encode()
    assert canonical_bytes(record) == expected
    assert record.hash == hashlib.sha256(expected).hexdigest()
    # Pinned so a change to the encoding cannot slip through: it would invalidate every export.
    assert record.hash == "28a30209b9d266d9af7e282b6928e37e82813926bd63e7896823976c476b2899"


@settings(max_examples=500)
@given(st.text())
def test_a_record_id_is_the_uuid5_of_its_event_id(event_id):
    assert record_id_for(event_id) == str(uuid.uuid5(RECORD_ID_NAMESPACE, event_id))


def test_every_record_the_chain_links_carries_the_hash_of_its_own_fields():
    chain = build_chain(events=26, checkpoint_every=10)
    assert any(r.is_checkpoint for r in chain)
    assert all(r.hash == record_hash(r) for r in chain)
    assert all(r.record_id == str(uuid.uuid5(RECORD_ID_NAMESPACE, r.event_id)) for r in chain)


# A small chain for property tests: three checkpoints, flags on some records.
SMALL = build_chain(events=26, checkpoint_every=10)
INT_FIELDS = {"sequence", "recorded_at", "occurred_at"}


def editable_fields(record: AuditRecord) -> list[str]:
    fields = [
        name for name, value in record.to_dict().items() if name not in ("checkpoint", "flags") and value is not None
    ]
    if record.checkpoint is not None:
        fields += [f"checkpoint.{name}" for name in record.checkpoint.to_dict()]
    if record.flags:
        fields.append("flags.0")
    return fields


def edit_one_byte(record: AuditRecord, field: str, position: int, byte: int) -> dict:
    """The record's dict with one byte of one field changed (``byte`` is never 0)."""
    data = record.to_dict()
    container, key = data, field
    if field.startswith("checkpoint."):
        container, key = data["checkpoint"], field.split(".", 1)[1]
    elif field == "flags.0":
        container, key = data["flags"], 0
    value = container[key]
    if isinstance(value, int):
        edited = value ^ (byte << (8 * (position % 8)))
        container[key] = edited - 2**64 if edited >= 2**63 else edited
    else:
        raw = bytearray(value.encode("utf-8"))
        raw[position % len(raw)] ^= byte
        container[key] = raw.decode("utf-8", errors="surrogateescape")
    return data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_single_byte_edit_of_any_field_of_any_record_is_detected(data):
    index = data.draw(st.integers(0, len(SMALL) - 1), label="index")
    field = data.draw(st.sampled_from(editable_fields(SMALL[index])), label="field")
    position = data.draw(st.integers(0, 200), label="position")
    byte = data.draw(st.integers(1, 255), label="xor")
    tampered = [r.to_dict() for r in SMALL]
    tampered[index] = edit_one_byte(SMALL[index], field, position, byte)

    report = verify(tampered, VERIFIER, require_checkpoint_at_end=True)

    assert not report.ok
    assert any(problem.index == index for problem in report.problems), report.summary()


def test_a_writer_vouches_for_the_tail_up_to_its_last_genuine_checkpoint_only():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from keyturn.core.audit.chain import written_by_the_writer

    assert written_by_the_writer(CHAIN, VERIFIER) == len(CHAIN)  # it ends with a checkpoint
    appended = dataclasses.replace(CHAIN[5], sequence=len(CHAIN), prev_hash=CHAIN[-1].hash)
    appended = dataclasses.replace(appended, hash=record_hash(appended))
    assert written_by_the_writer([*CHAIN, appended], VERIFIER) == len(CHAIN)
    # a checkpoint under the writer's key that does not verify is no checkpoint of the writer's
    chain = AuditChain(SIGNER, checkpoint_every=None).resume(appended)
    made = chain.checkpoint(T0)
    forged = dataclasses.replace(made, checkpoint=dataclasses.replace(made.checkpoint, signature="00" * 64))
    forged = dataclasses.replace(forged, hash=record_hash(forged))
    assert written_by_the_writer([*CHAIN, appended, forged], VERIFIER) == len(CHAIN)
    # one under another key (the key before a rotation) counts: verify judges it with the trusted keys
    rotated = AuditChain(CheckpointSigner(Ed25519PrivateKey.generate()), checkpoint_every=None).resume(appended)
    assert written_by_the_writer([*CHAIN, appended, rotated.checkpoint(T0)], VERIFIER) == len(CHAIN) + 2
    assert written_by_the_writer([appended], VERIFIER) == 0
