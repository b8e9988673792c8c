"""Garbage on every topic a service consumes: each bad message becomes exactly one DeadLetter on
<ns>.dlq, written by the topic's owner, with a reason — and every service keeps working."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest
from aiokafka import AIOKafkaProducer

from keyturn.bus.codec import HEADER_SIZE, MAGIC, registry
from keyturn.bus.topics import Topics
from keyturn.core.events import DeadLetter
from tests.fuzz.test_codec_fuzz import VALID
from tests.integration.conftest import Agent, eventually, read_topic

pytestmark = pytest.mark.integration


def garbage(seed: int) -> list[tuple[str, bytes | None]]:
    """(what it is, bytes) — from plain noise to real events cut short or of the wrong type."""
    rng = random.Random(seed)
    noise = lambda n: bytes(rng.getrandbits(8) for _ in range(n))  # noqa: E731
    fingerprint = rng.choice(sorted(registry().writers))
    return [
        ("tombstone (no value)", None),
        ("empty", b""),
        ("json instead of avro", b'{"action": "read.table", "resource": "x"}'),
        ("random noise", noise(rng.randint(20, 400))),
        ("unknown schema fingerprint", MAGIC + bytes.fromhex("0123456789abcdef") + noise(30)),
        ("known fingerprint, random body", MAGIC + fingerprint + noise(rng.randint(1, 200))),
        ("real event cut short", VALID[1][: HEADER_SIZE + rng.randint(1, len(VALID[1]) - HEADER_SIZE - 1)]),
        ("real event with trailing bytes", VALID[0] + noise(5)),
    ]


async def _produce_all(
    bootstrap: str, batches: dict[str, list[tuple[str, bytes | None]]]
) -> dict[tuple[str, int, int], str]:
    """Send every bad message; (topic, partition, offset) → what it was."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    sent = {}
    try:
        for topic, messages in batches.items():
            for n, (what, value) in enumerate(messages):
                meta = await producer.send_and_wait(topic, value, key=f"fuzz-{n}".encode())
                sent[(topic, meta.partition, meta.offset)] = what
    finally:
        await producer.stop()
    return sent


def test_every_bad_message_on_every_consumed_topic_is_dead_lettered_once_by_its_owner(
    reporter: Agent, settings, services
) -> None:
    topics = Topics(settings.namespace, settings.partitions)
    consumed = [
        topics.submissions,
        topics.requested,
        topics.decided,
        topics.resolved,
        topics.executed,
        topics.votes,
        topics.dlq,
    ]
    batches = {topic: garbage(seed) for seed, topic in enumerate(consumed)}
    # well-formed events of a type the owner does not take on that topic
    batches[topics.requested].append(("an ActionExecuted on the requested topic", VALID[2]))
    batches[topics.decided].append(("an ActionExecuted on the decided topic", VALID[2]))
    batches[topics.submissions].append(("an ActionRequested on the submissions topic", VALID[0]))
    sent = asyncio.run(_produce_all(settings.kafka_bootstrap, batches))

    def letters() -> Counter:
        found = Counter()
        for event, _ in read_topic(settings, topics.dlq):
            if isinstance(event, DeadLetter) and (event.source_topic, event.partition, event.offset) in sent:
                found[(event.source_topic, event.partition, event.offset)] += 1
        return found

    eventually(lambda: set(letters()) >= set(sent), timeout=90)
    found = letters()
    missing = {where: what for where, what in sent.items() if where not in found}
    doubled = {where: n for where, n in found.items() if n > 1}
    assert not missing, f"bad messages dropped without a dead letter: {missing}"
    assert not doubled, f"bad messages dead-lettered more than once: {doubled}"

    by_place = {
        (e.source_topic, e.partition, e.offset): e
        for e, _ in read_topic(settings, topics.dlq)
        if isinstance(e, DeadLetter)
    }
    for where, what in sent.items():
        letter = by_place[where]
        assert letter.reason and letter.error_type, f"{what} on {where[0]}: dead letter without a reason"
        assert letter.service == topics.dead_letter_owner(where[0]), (
            f"{what} on {where[0]} dead-lettered by {letter.service}"
        )

    # nobody stopped: every service is alive and an action still goes all the way through
    assert not services.exited(), f"services died on bad input: {services.exited()}"
    after = reporter.submit_ok("read.table", "postgres://staging/fuzz/after")
    assert reporter.wait(after)["state"] == "approved_external"  # read.* is external: a receipt
