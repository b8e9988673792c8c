"""Publishing events: encode with the schema codec, key by ``action_id``, wait for the ack.

One class for every service; only the transport differs (a faust app's producer in the
stream workers, a plain aiokafka producer in the intake and the audit). A transport that can
``enqueue`` (put a record in the producer's buffer and hand back its acknowledgement) gets
the event's headers (``bus.headers``); one that can ``enqueue_all`` lets ``publish_all`` build
a whole batch into produce batches (``send_in_batches``) before waiting for any acknowledgement.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

from keyturn.bus.codec import UndecodableMessage, registry
from keyturn.bus.headers import Headers, headers_of, type_headers
from keyturn.bus.refusals import refusal_letter
from keyturn.bus.topics import Topics
from keyturn.bus.warrants import Warrants
from keyturn.core.events import DeadLetter

log = logging.getLogger(__name__)

Send = Callable[[str, bytes, bytes], Awaitable[None]]
"""(topic, key, value) → returns once the broker acknowledged the record."""

Enqueue = Callable[[str, bytes, bytes, Headers], Awaitable[Awaitable[Any]]]
"""(topic, key, value, headers) → returns once the record is buffered; what it returns is
awaited for the broker's acknowledgement. Records of one partition go out in enqueue order."""

Outgoing = tuple[str, str, bytes, Headers | None]
"""(topic, key, encoded value, headers or None to read the type from the value)."""

Record = tuple[str, bytes, bytes, Headers]
"""(topic, key, value, headers): one record as the transport sends it."""

EnqueueAll = Callable[[Sequence[Record]], Awaitable[list[Awaitable[Any]]]]
"""Records → returns once all are buffered, in order per partition; one acknowledgement to
await per record (records of one produce batch share theirs)."""


class Publisher:
    def __init__(
        self,
        send: Send,
        topics: Topics,
        service: str,
        *,
        enqueue: Enqueue | None = None,
        enqueue_all: EnqueueAll | None = None,
    ) -> None:
        self._send = send
        self._enqueue = enqueue
        self._enqueue_all = enqueue_all
        self.topics = topics
        self.service = service
        # the records this service vouches for (``bus.warrants``): the intake's requests, the
        # policy's decisions, the approval service's resolutions, the executor's outcomes
        self.warrants: Warrants | None = None

    async def _put(self, topic: str, key: bytes, value: bytes, headers: Headers | None) -> Awaitable[Any]:
        """Hand one record to the transport; returns what to await for its acknowledgement."""
        if self._enqueue is not None:
            return await self._enqueue(topic, key, value, self._headers(topic, key, value, headers))
        # a transport that only sends (a test's): the send runs as a task, started now
        return asyncio.ensure_future(self._send(topic, key, value))

    async def publish(self, topic: str, event: Any, *, key: str | None = None, callback: bool | None = None) -> None:
        """Encode ``event`` and send it keyed by its action id (or ``key``), with its headers
        (``callback``: whether its action has a webhook, for events that do not carry the request)."""
        key = key if key is not None else event.action_id
        await (await self._put(topic, key.encode(), self.encode(event), headers_of(event, callback=callback)))

    async def send_raw(self, topic: str, key: bytes, value: bytes) -> None:
        """Send already-encoded bytes with a raw key (outboxes)."""
        await (await self._put(topic, key, value, None))

    async def publish_encoded(self, topic: str, key: str, value: bytes, headers: Headers | None = None) -> None:
        """Send bytes already encoded by ``encode`` (kept in an outbox)."""
        await (await self._put(topic, key.encode(), value, headers))

    async def publish_all(self, records: Sequence[Outgoing]) -> None:
        """Send every record, in order, then wait for every acknowledgement (the batch's
        offsets are committed only after this returns). Raises if any was not acknowledged."""
        await self._put_all([(topic, key.encode(), value, h) for topic, key, value, h in records])

    async def send_raw_all(self, records: Sequence[tuple[str, bytes, bytes]]) -> None:
        """``send_raw`` for many records (an outbox's), sent in order, then every acknowledgement awaited."""
        await self._put_all([(topic, key, value, None) for topic, key, value in records])

    async def _put_all(self, records: Sequence[tuple[str, bytes, bytes, Headers | None]]) -> None:
        # one record alone joins its partition's lingering batch (``send``), as concurrent
        # requests' do; several go as batches of their own (``send_in_batches``)
        if self._enqueue_all is not None and len(records) > 1:
            acks = await self._enqueue_all(
                [(topic, key, value, self._headers(topic, key, value, h)) for topic, key, value, h in records]
            )
        else:
            acks = [await self._put(topic, key, value, h) for topic, key, value, h in records]
        await _acknowledged(acks)

    def _headers(self, topic: str, key: bytes, value: bytes, headers: Headers | None) -> Headers:
        """A record's headers (its type's, read from the bytes, when none were given), with its
        warrant when it is an order this service vouches for."""
        if headers is None:
            headers = type_headers(value)
        return self.warrants.signed(topic, key, value, headers) if self.warrants is not None else headers

    @staticmethod
    def encode(event: Any) -> bytes:
        return registry().encode_event(event)

    async def dead_letter(
        self,
        *,
        source_topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        payload: bytes,
        error: UndecodableMessage,
        by_service: bool = False,
        principal: str | None = None,
        problems: tuple[str, ...] = (),
        excerpt: bool = False,
    ) -> DeadLetter:
        """Quarantine input this service cannot accept, with the reason; returns the record.

        The record holds no byte of the input (see ``bus.refusals``). An undecodable message is
        dead-lettered once, by its topic's owner; a message that failed in one service's
        handling (``by_service``) is that service's own record.
        """
        letter = refusal_letter(
            service=self.service,
            source_topic=source_topic,
            partition=partition,
            offset=offset,
            key=key,
            payload=payload,
            error_type=error.error_type,
            reason=error.reason,
            problems=problems,
            principal=principal,
            excerpt=excerpt,
            by_service=by_service,
        )
        await self.publish(
            self.topics.dlq, letter, key=letter.key.decode(errors="replace") if letter.key else letter.event_id
        )
        log.warning("dead-lettered input from %s (%s): %s", source_topic, letter.error_type, letter.reason)
        return letter


def kafka_publisher(producer: Any, topics: Topics, service: str) -> Publisher:
    """A publisher over a started aiokafka producer, with event headers (the audit service's)."""

    async def enqueue(topic: str, key: bytes, value: bytes, headers: Headers) -> Awaitable[Any]:
        return await producer.send(topic, value, key=key, headers=list(headers))

    async def send(topic: str, key: bytes, value: bytes) -> None:
        await (await producer.send(topic, value, key=key))

    return Publisher(send, topics, service, enqueue=enqueue, enqueue_all=partial(send_in_batches, producer))


_PARTITIONER = DefaultPartitioner()
"""The partitioner of every producer of the project (aiokafka's, and faust's default): a
record built into a batch here lands on the partition ``send`` would have chosen for its key."""


async def send_in_batches(producer: Any, records: Sequence[Record]) -> list[Awaitable[Any]]:
    """Put ``records`` into the producer's batches, one per partition (more if one fills), and
    hand each over whole (aiokafka's ``create_batch`` and ``send_batch``); returns each
    record's acknowledgement, its batch's. Records of one partition keep their order.

    ``send`` per record costs a future and a pass through the accumulator each: 40 µs of CPU
    per record in aiokafka, 72 µs through faust's ``Topic.send``, against 23 µs built here with
    four records per partition (bench/README.md, thirteenth round). ``producer``: a started
    aiokafka producer."""
    partitions: dict[str, list[int]] = {}
    building: dict[tuple[str, int], tuple[Any, list[int]]] = {}
    acks: list[Awaitable[Any] | None] = [None] * len(records)

    async def hand_over(where: tuple[str, int]) -> None:
        batch, members = building.pop(where)
        # closed, a batch is ready at once: aiokafka lingers only over a batch still open to
        # ``send``, and this one is whole (the linger only delayed it)
        batch.close()
        ack = await producer.send_batch(batch, where[0], partition=where[1])
        for i in members:
            acks[i] = ack

    for i, (topic, key, value, headers) in enumerate(records):
        if topic not in partitions:
            partitions[topic] = sorted(await producer.partitions_for(topic))
        choice = partitions[topic]  # one partition (the audit chain's): no key to hash, in pure Python
        where = (topic, choice[0] if len(choice) == 1 else _PARTITIONER(key, choice, choice))
        if (
            where in building
            and building[where][0].append(key=key, value=value, timestamp=None, headers=headers) is not None
        ):
            building[where][1].append(i)
            continue
        if where in building:  # full: it goes, and this record starts the next one
            await hand_over(where)
        batch = producer.create_batch()
        batch.append(key=key, value=value, timestamp=None, headers=headers)  # a batch takes its first record whole
        building[where] = (batch, [i])
    for where in list(building):
        await hand_over(where)
    sent = [ack for ack in acks if ack is not None]
    if len(sent) != len(records):  # never reported as sent without its batch's acknowledgement
        raise RuntimeError(f"{len(records) - len(sent)} record(s) were put in no batch")
    return sent


async def _acknowledged(acks: list[Awaitable[Any]]) -> None:
    """Wait for every acknowledgement; raise the first failure once all have settled."""
    results = await asyncio.gather(*acks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
