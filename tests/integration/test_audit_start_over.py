"""An audit writer whose commit failed starts over in place, unless a newer writer fenced it.

A drill once left the audit worker alive and recording nothing after a broker restart: its
producer was lost, and the worker waited on it for good. Now a failed commit that no newer
writer caused makes the writer start over (``AuditWriter.start_over``): a new producer, the
chain resumed from the topic, the batch recorded again, each event once.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from aiokafka.errors import KafkaConnectionError

from keyturn.audit.app import audit_writer, checkpoint_key_path
from keyturn.audit.keys import load_signer
from keyturn.audit.stream import read_audit_log
from keyturn.audit.writer import AuditWriterStopped
from keyturn.bus.topics import Topics, ensure_topics
from tests import processes
from tests.integration.conftest import keyturn_cli
from tests.unit.audit_history import History

pytestmark = pytest.mark.integration


def own_namespace(settings, suffix: str):
    """A namespace of its own: the session's audit worker shares no transactional id with it."""
    settings = processes.own_namespace(settings, suffix)
    asyncio.run(ensure_topics(settings.kafka_bootstrap, Topics(settings.namespace, settings.partitions)))
    return settings


def test_a_writer_whose_commit_failed_starts_over_and_records_each_event_once(settings) -> None:
    settings = own_namespace(settings, "so")
    topics = Topics(settings.namespace, settings.partitions)
    history = History()
    events = [(history.request(f"act-{n:03d}", "read.table", n), topics.requested) for n in range(30)]

    async def scenario() -> tuple[bool, list[int]]:
        writer = audit_writer(settings, load_signer(checkpoint_key_path(settings)))
        await writer.start()
        written = [await writer.record(events[:10])]
        producer = writer._producer
        send_batch = producer.send_batch

        async def lost(*args, **kwargs):  # the producer lost under the commit, as a broker restart left it
            producer.send_batch = send_batch
            raise KafkaConnectionError("Connection at the broker closed")

        producer.send_batch = lost
        with pytest.raises(AuditWriterStopped) as stopped:
            await writer.record(events[10:20])
        with pytest.raises(AuditWriterStopped):  # out of step with the topic: no write until it starts over
            await writer.record(events[10:20])

        await writer.start_over()
        written.append(await writer.record(events[:20]))  # the batch again, with one already recorded
        written.append(await writer.record(events[20:]))
        await writer.close()
        return stopped.value.fenced, written

    fenced, written = asyncio.run(scenario())

    assert not fenced
    assert written == [10, 10, 10], "the failed batch recorded once after the start over, the earlier one not again"
    records = asyncio.run(read_audit_log(settings.kafka_bootstrap, topics.audit))
    recorded = Counter(r.event_id for r in records if not r.is_checkpoint and r.event_type == "ActionRequested")
    assert set(recorded) == {event.event_id for event, _ in events}
    assert max(recorded.values()) == 1
    verified = keyturn_cli(settings, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_writer_fenced_by_a_newer_one_says_so_and_does_not_write(settings) -> None:
    settings = own_namespace(settings, "fe")
    topics = Topics(settings.namespace, settings.partitions)
    history = History()
    events = [(history.request(f"act-{n:03d}", "read.table", n), topics.requested) for n in range(4)]

    async def scenario() -> AuditWriterStopped:
        signer = load_signer(checkpoint_key_path(settings))
        older = audit_writer(settings, signer)
        await older.start()
        await older.record(events[:2])
        newer = audit_writer(settings, signer)
        await newer.start()  # the same transactional id: the older writer is fenced
        try:
            with pytest.raises(AuditWriterStopped) as stopped:
                await older.record(events[2:])
            return stopped.value
        finally:
            await newer.close()
            await older.close()

    stopped = asyncio.run(scenario())

    assert stopped.fenced, str(stopped)
    assert "another audit worker has taken over" in str(stopped)
    records = asyncio.run(read_audit_log(settings.kafka_bootstrap, topics.audit))
    assert {events[2][0].event_id, events[3][0].event_id}.isdisjoint(r.event_id for r in records)
