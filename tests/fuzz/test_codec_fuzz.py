"""Whatever bytes arrive on a topic, decoding either yields an event or raises UndecodableMessage —
never anything else, so every consumer can dead-letter it and move on. No I/O."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyturn.bus.codec import HEADER_SIZE, MAGIC, UndecodableMessage, registry
from keyturn.core.events import (
    ActionDecided,
    ActionExecuted,
    ActionRequested,
    DecisionOutcome,
    Digest,
    ExecutionOutcome,
    Provenance,
)
from keyturn.core.principal import Principal, PrincipalKind

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def decodes_or_refuses(data: bytes) -> None:
    """The property: an event, or UndecodableMessage with a reason; any other exception fails."""
    try:
        registry().decode_event(data)
    except UndecodableMessage as refusal:
        assert refusal.error_type and refusal.reason


def _requested() -> ActionRequested:
    return ActionRequested(
        event_id="requested:a1",
        action_id="a1",
        action="read.table",
        resource="postgres://staging/a/b",
        parameters_json='{"limit":10}',
        reason="fuzz",
        requester=Principal("agent:fuzz", PrincipalKind.AGENT, ("human:alice",)),
        payload_digest=Digest("00" * 32),
        requested_at=NOW,
    )


def valid_messages() -> list[bytes]:
    """One real encoding of each event shape the services consume."""
    requested = _requested()
    decided = ActionDecided(
        event_id="decided:a1",
        action_id="a1",
        outcome=DecisionOutcome.ALLOWED,
        provenance=Provenance("sha256:x", "d1", Digest("11" * 32), NOW),
        decided_at=NOW,
        request=requested,
    )
    executed = ActionExecuted(
        event_id="executed:a1",
        action_id="a1",
        outcome=ExecutionOutcome.SUCCEEDED,
        plugin="noop",
        payload_digest=Digest("00" * 32),
        finished_at=NOW,
        started_at=NOW,
    )
    return [registry().encode_event(e) for e in (requested, decided, executed)]


VALID = valid_messages()
FINGERPRINTS = sorted(registry().writers)


@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_raise_anything_but_undecodable(data: bytes) -> None:
    decodes_or_refuses(data)


@FUZZ
@given(st.sampled_from(FINGERPRINTS), st.binary(max_size=4096))
def test_a_known_schema_header_over_random_body_is_refused_cleanly(fingerprint: bytes, body: bytes) -> None:
    decodes_or_refuses(MAGIC + fingerprint + body)


@FUZZ
@given(
    st.sampled_from(range(len(VALID))),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_real_events_with_corrupted_bytes_decode_or_are_refused(which: int, flips: list[tuple[int, int]]) -> None:
    data = bytearray(VALID[which])
    for position, value in flips:
        data[HEADER_SIZE + position % (len(data) - HEADER_SIZE)] = value
    decodes_or_refuses(bytes(data))


@FUZZ
@given(st.sampled_from(range(len(VALID))), st.integers(0, 5000), st.binary(max_size=64))
def test_real_events_truncated_or_extended_are_refused(which: int, cut: int, tail: bytes) -> None:
    data = VALID[which]
    decodes_or_refuses(data[: cut % len(data)])
    if tail:
        with_tail = data + tail
        try:
            registry().decode_event(with_tail)
        except UndecodableMessage as refusal:
            assert refusal.error_type == "corrupt_body"
        else:
            raise AssertionError("trailing bytes after a complete event were accepted")


def test_raw_random_bytes_of_every_shape_never_crash_the_decoder() -> None:
    """Raw random bytes (no shrinking, high volume): lengths around the header size and bodies
    behind every known fingerprint, including huge declared lengths."""
    rng = random.Random(20261130)
    for _ in range(1500):
        size = rng.choice((0, 1, 2, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 1, rng.randint(0, 600)))
        decodes_or_refuses(bytes(rng.getrandbits(8) for _ in range(size)))
        fingerprint = rng.choice(FINGERPRINTS)
        body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
        decodes_or_refuses(MAGIC + fingerprint + body)
        # a long varint: a string or array claiming a gigantic length
        decodes_or_refuses(MAGIC + fingerprint + b"\x02" + b"\xff" * rng.randint(1, 9) + b"\x7f" + body[:20])
