"""A producer keeps sending after what a broker restart does to its background task
(``bus.sender_revival``, ``bus.coordinator_lookup``), on the real broker.

Without them, a short drill on a slow machine lost the intake's and the audit's producers for
good when the broker was stopped: the intake answered 202 for actions whose events never left
it, and the audit recorded nothing more; neither process stopped. The faults are made the way
the broker's restart made them (a cancel left in a request, a closed connection under the
coordinator lookup), so each test runs in a second, not a restart.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError

import keyturn.bus  # noqa: F401  (installs the corrections, as every service's imports do)
from keyturn.bus.sender_revival import sender_stopped

pytestmark = pytest.mark.integration


@pytest.fixture
async def topic(settings) -> AsyncIterator[str]:
    name = f"{settings.namespace}.recovery-{secrets.token_hex(3)}"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 2, 1)])
        yield name
    finally:
        await admin.delete_topics([name])
        await admin.close()


async def values_in(settings, topic: str, expected: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        values: list[bytes] = []
        async with asyncio.timeout(20):
            while len(values) < expected:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    values += [r.value for r in records]
        return values
    finally:
        await consumer.stop()


def stray_cancel_once(producer: AIOKafkaProducer) -> None:
    """The next produce request ends in a cancel, as one whose connection closed under it did:
    aiokafka's sender takes it for its own stop and ends quietly, the broker still marked busy."""
    sender = producer._sender
    send_produce_req = sender._send_produce_req

    async def cancelled(node_id, batches):
        sender._send_produce_req = send_produce_req
        raise asyncio.CancelledError

    sender._send_produce_req = cancelled


async def test_an_idempotent_producer_whose_sender_ended_sends_again_under_a_new_producer_id(settings, topic) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"before", key=b"k")
        first_id = producer._txn_manager.producer_id
        stray_cancel_once(producer)

        caught = await asyncio.wait_for(producer.send(topic, b"caught in it", key=b"k"), 10)
        await asyncio.wait_for(caught, 15)  # the batch stayed queued: the revived sender sends it
        await asyncio.wait_for(producer.send_and_wait(topic, b"after", key=b"k"), 15)

        assert not sender_stopped(producer)
        assert producer._txn_manager.producer_id not in (first_id, -1), "a new producer id, sequences from 0"
        assert sorted(await values_in(settings, topic, 3)) == [b"after", b"before", b"caught in it"]
    finally:
        await producer.stop()


async def test_a_sender_that_died_of_an_error_fails_its_batches_and_then_sends_again(settings, topic) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sender = producer._sender
        send_produce_req = sender._send_produce_req

        async def broken(node_id, batches):
            sender._send_produce_req = send_produce_req
            raise RuntimeError("unexpected")

        sender._send_produce_req = broken
        lost = await producer.send(topic, b"lost", key=b"k")
        with pytest.raises(KafkaError):  # the caller hears of it (the intake's outbox sends it again)
            await asyncio.wait_for(lost, 15)

        await asyncio.wait_for(producer.send_and_wait(topic, b"after", key=b"k"), 15)
        assert await values_in(settings, topic, 1) == [b"after"]
    finally:
        await producer.stop()


async def test_a_stopped_producer_is_not_started_again(settings, topic) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True)
    await producer.start()
    await producer.send_and_wait(topic, b"one", key=b"k")
    sender = producer._sender
    await producer.stop()
    await asyncio.sleep(0.5)  # longer than the first pause before a revival
    assert sender.sender_task.done()


async def test_a_transaction_commits_after_its_coordinator_lookup_met_a_closed_connection(settings, topic) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        transactional_id=f"{settings.namespace}-recovery-{secrets.token_hex(3)}",
        enable_idempotence=True,
        acks="all",
    )
    await producer.start()
    try:
        client = producer.client
        lookup = client.coordinator_lookup
        failures: list[str] = []

        async def closed_once(coordinator_type, coordinator_key):
            if not failures:
                failures.append(coordinator_key)
                raise KafkaConnectionError("Connection at the broker closed")  # as a stopping broker's did
            return await lookup(coordinator_type, coordinator_key)

        client.coordinator_lookup = closed_once
        producer._sender._coordinators.clear()  # the lookup is made again, as after a coordinator moved

        async with asyncio.timeout(20):
            async with producer.transaction():
                await producer.send(topic, b"in a transaction", key=b"k")

        assert failures, "the lookup met the closed connection"
        assert not sender_stopped(producer)
        assert await values_in(settings, topic, 1) == [b"in a transaction"]
    finally:
        await producer.stop()
