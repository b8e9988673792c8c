"""Bad bytes on any topic reach the DLQ with the reason, the audit records them, and nothing stops."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from keyturn.audit.stream import read_audit_log
from keyturn.bus.codec import MAGIC, registry
from keyturn.bus.topics import Topics
from keyturn.core.events import DeadLetter
from tests.integration.conftest import Agent, eventually, produce, read_topic

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("payload", "error_type"),
    [
        (b"\x00garbage that is not avro", "not_avro"),
        (MAGIC + bytes.fromhex("0123456789abcdef") + b"\x02", "unknown_schema"),
    ],
)
def test_undecodable_request_goes_to_the_dlq_and_the_audit(
    reporter: Agent, settings, payload: bytes, error_type: str
) -> None:
    topics = Topics(settings.namespace, settings.partitions)
    key = f"bad-{error_type}".encode()
    produce(settings, topics.requested, payload, key=key)

    def letter():
        return next(
            (
                e
                for e, _ in read_topic(settings, topics.dlq)
                if isinstance(e, DeadLetter) and e.source_topic == topics.requested and e.key == key
            ),
            None,
        )

    found = eventually(letter)
    assert found is not None, "the bad message was dropped silently"
    assert found.error_type == error_type
    assert found.service == "policy"
    # the letter points at the message (it stays on its topic for repair) and keeps no byte of it
    assert (found.payload_length, found.payload_digest.hex) == (len(payload), hashlib.sha256(payload).hexdigest())
    assert found.partition >= 0 and found.offset >= 0 and found.principal is None
    assert payload not in registry().encode_event(found)

    audited = eventually(
        lambda: [
            r
            for r in asyncio.run(
                read_audit_log(settings.kafka_bootstrap, Topics(settings.namespace, settings.partitions).audit)
            )
            if r.event_id == found.event_id
        ]
    )
    assert len(audited) == 1
    assert audited[0].event_type == "DeadLetter"
    assert payload.hex() not in audited[0].payload_json  # the audit keeps a digest, not the bytes

    # the policy worker kept going
    assert reporter.wait(reporter.submit_ok("read.table", "postgres://staging/a/b"))["state"] == "approved_external"
