"""Warrants on orders (``bus.warrants``): made by the services that decide and resolve, checked
by the ones that act on them or report them."""

from __future__ import annotations

import dataclasses

from keyturn.bus.topics import Topics
from keyturn.bus.warrants import HEADER, Warrants
from keyturn.masking.sealing import Keyring
from tests.fakes.service_ports import Record, fake_publisher

RING = Keyring.generate("ring-1")
DECIDED = "unit.actions.decided"


def record(value: bytes = b"\x00\x01decision", headers=()) -> Record:
    return Record(DECIDED, 0, 7, b"a1", value, headers=list(headers))


def test_a_warrant_holds_for_its_record_only_and_for_every_key_of_the_ring() -> None:
    warrants = Warrants(RING, (DECIDED,))
    signed = record(headers=warrants.signed(DECIDED, b"a1", b"\x00\x01decision", [("keyturn-type", b"X")]))
    assert warrants.problem(signed) is None
    assert dict(signed.headers)["keyturn-type"] == b"X", "the record's other headers are kept"
    assert warrants.problem(dataclasses.replace(signed, value=b"\x00\x01decisioN")) == (
        "a warrant that does not match the record"
    )
    assert warrants.problem(dataclasses.replace(signed, key=b"a2")) is not None
    assert warrants.problem(dataclasses.replace(signed, topic="unit.actions.resolved")) is not None
    assert warrants.problem(record()) == "no warrant"
    assert warrants.problem(dataclasses.replace(signed, headers=[*signed.headers, *signed.headers])) == (
        "more than one warrant"
    )
    assert "does not hold" in Warrants(Keyring.generate("ring-2"), (DECIDED,)).problem(signed)
    # rotated: the new current key warrants, the old one still verifies what it made
    rotated = Warrants(RING.rotated("ring-3"), (DECIDED,))
    assert rotated.problem(signed) is None
    assert Warrants(RING, ()).signed("unit.dlq", b"k", b"v", []) == [], "other topics carry none"


def test_a_publisher_sends_its_orders_with_their_warrants() -> None:
    import asyncio

    sent: list[tuple[str, bytes, bytes, list]] = []

    async def enqueue(topic, key, value, headers):
        sent.append((topic, key, value, headers))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    publisher, _ = fake_publisher("policy")
    publisher._enqueue = enqueue
    topics = Topics("unit", 4)
    publisher.warrants = Warrants(RING, (topics.decided,))

    async def send() -> None:
        await publisher.publish_encoded(topics.decided, "a1", b"\x00\x01decision")
        await publisher.send_raw(topics.dlq, b"a1", b"\x00\x01letter")

    asyncio.run(send())
    (decided, key, value, headers), (_, _, _, letter_headers) = sent
    assert Warrants(RING, (topics.decided,)).problem(Record(decided, 0, 0, key, value, headers=headers)) is None
    assert HEADER not in dict(letter_headers)
