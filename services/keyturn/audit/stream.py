"""Reading the audit topic: the whole log (to resume, verify or replay), or following it live.

The audit worker writes in Kafka transactions, so every reader here is ``read_committed``:
records of a transaction that a crashed or fenced writer never committed are never seen.
Transaction markers take offsets too, so an offset is a position in the topic, not a sequence.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition

from keyturn.bus.codec import UndecodableMessage, registry
from keyturn.core.audit.record import AuditRecord, MalformedRecord
from keyturn.core.audit.verify import UnreadableMessage

log = logging.getLogger(__name__)

T = TypeVar("T")
FETCH_BYTES = 16 * 1024 * 1024  # per fetch of the audit partition (the consumer's default is 1 MiB)


@dataclass(frozen=True)
class UnreadableAuditMessage:
    """A message in the audit topic that is not an audit record (its sequence is unknown).

    Its size and SHA-256 name it without its bytes, which may be anything: an export marks it by them."""

    offset: int
    reason: str
    size: int
    sha256: str


@dataclass(frozen=True)
class AuditMessage:
    """One message of the audit topic: its offset and the record (or why it is unreadable)."""

    offset: int
    record: AuditRecord | None
    unreadable: UnreadableAuditMessage | None = None


def decode_audit_message(offset: int, value: bytes | None) -> AuditMessage:
    """The record in one message of the audit topic; never raises on bad bytes."""
    try:
        name, body = registry().decode(value or b"", logical_types=False)  # instants as integers, as records hold them
        if name != "AuditRecord":
            raise UndecodableMessage("unexpected_type", f"a {name} is not an audit record")
        return AuditMessage(offset, AuditRecord.from_avro(body))
    except (UndecodableMessage, MalformedRecord, KeyError, TypeError, ValueError) as error:
        reason = getattr(error, "reason", None) or f"{type(error).__name__}: {error}"
        raw = value or b""
        return AuditMessage(
            offset, None, UnreadableAuditMessage(offset, reason, len(raw), hashlib.sha256(raw).hexdigest())
        )


def record_or_gap(topic: str, message: AuditMessage) -> AuditRecord | UnreadableMessage:
    """The record a message of the audit ``topic`` holds, or the gap it leaves in the chain, which
    verify reports and an export marks where it stands."""
    if message.record is not None:
        return message.record
    bad = message.unreadable
    assert bad is not None  # a message is a record or says why it is not
    return UnreadableMessage(topic, 0, bad.offset, bad.size, bad.sha256, bad.reason)


class AuditTopicMissing(LookupError):
    """The audit topic does not exist on the broker."""


class AuditTopic:
    """The audit topic's one partition, opened for reading from ``from_offset``.

    ``async with AuditTopic(bootstrap, topic) as topic:`` then ``topic.end_offset`` (for progress) and
    ``async for message in topic.messages(follow=...)``.
    """

    def __init__(self, bootstrap: str, topic: str, *, from_offset: int = 0, to_offset: int | None = None) -> None:
        self._partition = TopicPartition(topic, 0)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            isolation_level="read_committed",
            max_partition_fetch_bytes=FETCH_BYTES,  # one partition: let a fetch bring it all
            fetch_max_bytes=FETCH_BYTES,
        )
        self._from_offset = from_offset
        self._to_offset = to_offset
        self.start_offset = 0
        self.end_offset = 0
        self.earliest_offset = 0
        """The broker's earliest offset of the partition: not 0 once records were deleted."""

    async def __aenter__(self) -> AuditTopic:
        await self._consumer.start()
        partition = self._partition
        if partition.topic not in await self._consumer.topics():  # else aiokafka waits for it, forever
            await self._consumer.stop()
            raise AuditTopicMissing(
                f"there is no audit topic {partition.topic} on this broker: check KEYTURN_NAMESPACE (and that "
                "Keyturn's audit service ran with it)"
            )
        self._consumer.assign([partition])
        first = self.earliest_offset = (await self._consumer.beginning_offsets([partition]))[partition]
        self.start_offset = max(first, self._from_offset)
        self._consumer.seek(partition, self.start_offset)
        self.end_offset = (await self._consumer.end_offsets([partition]))[partition]
        if self._to_offset is not None:
            self.end_offset = min(self.end_offset, self._to_offset)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._consumer.stop()

    async def position(self) -> int:
        """The offset of the next message this reader will look at."""
        return await self._consumer.position(self._partition)

    async def messages(self, *, follow: bool = False, poll_ms: int = 500) -> AsyncIterator[AuditMessage]:
        """Every message from the start offset to the end found on opening; with ``follow``,
        keep waiting for new ones."""
        partition = self._partition
        while follow or await self._consumer.position(partition) < self.end_offset:
            batches = await self._consumer.getmany(partition, timeout_ms=poll_ms)
            for batch in batches.values():
                for message in batch:
                    if not follow and message.offset >= self.end_offset:
                        return
                    yield decode_audit_message(message.offset, message.value)

    async def batches(self, *, follow: bool = False, poll_ms: int = 500) -> AsyncIterator[list[AuditMessage]]:
        """Messages as they arrive, one list per fetch (empty lists while following an idle topic)."""
        partition = self._partition
        while follow or await self._consumer.position(partition) < self.end_offset:
            fetched = await self._consumer.getmany(partition, timeout_ms=poll_ms)
            yield [decode_audit_message(m.offset, m.value) for batch in fetched.values() for m in batch]


async def follow_audit(bootstrap: str, topic: str, *, follow: bool = False) -> AsyncIterator[AuditRecord]:
    """Every readable record of the audit ``topic`` from the first; with ``follow``, keep waiting for new ones."""
    async with AuditTopic(bootstrap, topic) as audit:
        async for message in audit.messages(follow=follow):
            if message.record is not None:
                yield message.record


async def read_audit_log(bootstrap: str, topic: str) -> list[AuditRecord]:
    """Every readable record in the audit ``topic``, oldest first."""
    return [record async for record in follow_audit(bootstrap, topic)]


SETTLE_WITHIN_S = 90.0  # past the longest transaction a writer may hold open (aiokafka's 60 s)


async def read_audit_tail(bootstrap: str, topic: str, records: int) -> list[AuditRecord]:
    """At least the last ``records`` readable records of the audit topic (all, if it holds
    fewer), oldest first: what a writer needs to resume, in time and memory that do not grow
    with the history behind them. Read once no transaction is in flight on the topic
    (``settled``): the tail a writer resumes from is then the tail."""
    await settled(bootstrap, topic)
    async with AuditTopic(bootstrap, topic) as audit:
        beginning, end = audit.start_offset, audit.end_offset
    tail: list[AuditRecord] = []
    # Offsets also count transaction markers (one per commit, at most one per record) and the
    # records of aborted transactions, so read back in slices until enough records are in hand.
    step = 2 * records + 2
    to_offset = end
    while to_offset > beginning and len(tail) < records:
        from_offset = max(beginning, to_offset - step)
        async with AuditTopic(bootstrap, topic, from_offset=from_offset, to_offset=to_offset) as audit:
            piece = [m.record async for m in audit.messages() if m.record is not None]
        tail = piece + tail
        to_offset = from_offset
    return tail


async def settled(bootstrap: str, topic: str, *, within_s: float = SETTLE_WITHIN_S, every_s: float = 0.2) -> bool:
    """Wait until no transaction is in flight on the audit partition: its last stable offset (what
    a committed reader may see) has reached its high watermark (everything written). False
    if it has not within ``within_s``.

    A writer that has just fenced the one before it must not read the chain's tail sooner: a
    commit of the fenced writer that the broker was still completing (its markers not yet
    written, as across a broker restart) becomes visible only afterwards, and a tail read
    before it would resume one record short: the next record would repeat a sequence. Fenced,
    that transaction can only be completed or aborted, so the wait ends."""
    partition = TopicPartition(topic, 0)
    committed = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    written = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await committed.start()
    await written.start()
    try:
        deadline = asyncio.get_running_loop().time() + within_s
        while True:
            stable = (await committed.end_offsets([partition]))[partition]
            high = (await written.end_offsets([partition]))[partition]
            if stable >= high:
                return True
            if asyncio.get_running_loop().time() >= deadline:
                log.warning(
                    "a transaction is still in flight on the audit topic after %.0f s; reading its tail", within_s
                )
                return False
            await asyncio.sleep(every_s)
    finally:
        await committed.stop()
        await written.stop()


def blocking(stream: AsyncIterator[T]) -> Iterator[T]:
    """Iterate an async stream from synchronous code (one private event loop, one item at a
    time), so file writers and :func:`~keyturn.core.audit.verify.verify` stream in constant memory."""
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(stream.__anext__())
            except StopAsyncIteration:
                return
    finally:
        try:
            loop.run_until_complete(stream.aclose())  # type: ignore[attr-defined]
        finally:
            loop.close()
