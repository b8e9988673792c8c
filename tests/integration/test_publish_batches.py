"""A batch of records handed to the broker in the producer's batches whole
(``bus.publisher.send_in_batches``), on a real broker: each record lands on the partition
``send`` picks for its key, in order, with its headers, and one too many for a batch starts
the next."""

from __future__ import annotations

import asyncio
import secrets

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from keyturn.bus.publisher import send_in_batches

pytestmark = pytest.mark.integration


async def test_records_land_where_send_puts_their_key_in_order_with_headers(settings) -> None:
    bootstrap = settings.kafka_bootstrap
    topic, probe = (f"{settings.namespace}.batches-{secrets.token_hex(4)}.{n}" for n in ("a", "b"))
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 4, 1), NewTopic(probe, 4, 1)])
    finally:
        await admin.close()
    # small batches: 60 records of 300 bytes for 6 keys fill several batches per partition
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_batch_size=2048, linger_ms=3)
    await producer.start()
    try:
        keys = [f"action-{k}".encode() for k in range(6)]
        records = [
            (topic, keys[n % 6], f"{n:04d}".encode() + b"." * 296, [("type", b"ActionDecided"), ("n", str(n).encode())])
            for n in range(60)
        ]
        acks = await send_in_batches(producer, records)
        delivered = [await ack for ack in acks]
        expected = {key: (await (await producer.send(probe, b"probe", key=key))).partition for key in keys}
        # a record larger than a batch goes in one of its own, between the others of its key
        big = await send_in_batches(producer, [(topic, keys[0], b"9999" + b"x" * 4096, [("n", b"60")])])
        big_delivered = await big[0]
    finally:
        await producer.stop()
    assert len(acks) == 60 and len({id(ack) for ack in acks}) > 4  # several batches, each record its batch's ack
    assert all(meta.topic == topic for meta in delivered)

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        seen = []
        while len(seen) < 61:
            for batch in (await consumer.getmany(timeout_ms=2000)).values():
                seen.extend(batch)
    finally:
        await consumer.stop()
    assert len(seen) == 61
    assert big_delivered.partition == expected[keys[0]]
    seen = [r for r in seen if r.value[:4] != b"9999"]
    for record in seen:
        assert record.partition == expected[record.key]  # where ``send`` puts that key
        assert dict(record.headers)["type"] == b"ActionDecided"
        assert int(record.value[:4]) == int(dict(record.headers)["n"])
    for key in keys:  # one key's records in the order given
        mine = sorted((r for r in seen if r.key == key), key=lambda r: r.offset)
        assert [int(r.value[:4]) for r in mine] == [n for n in range(60) if n % 6 == keys.index(key)]


async def test_a_batch_built_whole_leaves_without_waiting_out_the_linger(settings) -> None:
    """A batch nothing more will join is sent at once: with a producer lingering 20 s, its
    records are acknowledged within seconds (aiokafka lingered over every batch left open)."""
    bootstrap = settings.kafka_bootstrap
    topic = f"{settings.namespace}.batches-{secrets.token_hex(4)}.linger"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 4, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20_000)
    await producer.start()
    try:
        await producer.partitions_for(topic)  # the topic's metadata known, as a running service's is
        acks = await send_in_batches(producer, [(topic, f"k{n}".encode(), b"v", []) for n in range(12)])
        async with asyncio.timeout(10):
            delivered = [await ack for ack in acks]
    finally:
        await producer.stop()
    assert len(delivered) == 12 and all(meta.topic == topic for meta in delivered)
