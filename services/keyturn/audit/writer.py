"""The one writer of ``<ns>.audit``: the chain head, and a transactional producer that fences others.

Starting a writer registers the transactional id ``<ns>-audit-chain`` with the broker, which
fences every older writer with that id (a second worker, or a paused one that came back) and
aborts whatever transaction it left open. Only then is the chain head read back, so the head
cannot move under us. Each batch of records is one transaction, ending with a signed checkpoint:
it lands whole or not at all, and every record the writer wrote is followed by its signature.
So at a restart, a record after the last checkpoint was not written by a writer: anyone who can
produce to the topic can append one and hash it right. The writer does not vouch for such
records: it writes a ``ForeignRecords`` record naming them before its next checkpoint, which
``keyturn audit verify`` reports, and it does not count their event ids as recorded (a forged
record cannot keep a real event out of the chain). Redelivered events are skipped by event id (the ids of the last
``DEDUPE_WINDOW`` records, read back from the tail of the topic at start), so every event is
recorded exactly once even when the worker is killed between committing records and
committing its source offsets.

When a commit fails the writer's head is ahead of the topic, and it refuses further writes.
Fenced by a newer writer, the worker stops without committing source offsets (``os._exit`` in
the app), so the events are read again by the next worker. Failed for any other reason (its
producer lost across a broker restart), it starts over in place (``start_over``): a new
producer fences the failed one, the chain resumes from what the topic really holds, and the
batch is recorded again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import ProducerFenced

from keyturn.audit import metrics
from keyturn.audit.records import AuditedEvent
from keyturn.bus.codec import registry
from keyturn.bus.publisher import send_in_batches
from keyturn.core.audit.chain import AuditChain, written_by_the_writer
from keyturn.core.audit.checkpoint import CheckpointSigner, CheckpointVerifier
from keyturn.core.audit.dedupe import RecentEventIds
from keyturn.core.audit.record import AuditRecord

log = logging.getLogger(__name__)

# Event ids remembered to drop repeats (see RecentEventIds): a repeat arrives within seconds of
# the original (the audit's own uncommitted offsets) or within a service's session timeout
# (about a minute) when it republishes; 100,000 records is about a quarter of an hour at the
# measured pace, at a flat ~14 MiB (ids and index) instead of growing with the chain.
DEDUPE_WINDOW = 100_000


class AuditWriterStopped(RuntimeError):
    """The writer cannot append: it was closed, fenced by a newer writer (``fenced``), or a commit failed."""

    def __init__(self, message: str, *, fenced: bool = False) -> None:
        super().__init__(message)
        self.fenced = fenced


class AuditWriter:
    """Turns source events into chained records and commits them to the audit topic."""

    def __init__(
        self,
        kafka_bootstrap: str,
        audit_topic: str,
        transactional_id: str,
        read_tail: Callable[[int], Awaitable[list[AuditRecord]]],
        signer: CheckpointSigner,
        *,
        dedupe_window: int = DEDUPE_WINDOW,
    ) -> None:
        """``transactional_id`` is shared by every audit worker of a namespace, so a new one
        fences the old; ``read_tail(n)`` returns the last ``n`` records of ``audit_topic``."""
        self._kafka_bootstrap = kafka_bootstrap
        self._transactional_id = transactional_id
        self._read_tail = read_tail
        self._topic = audit_topic
        self._signer = signer
        self._seen, self._chain = self._fresh_memory(dedupe_window)
        self._own_key = CheckpointVerifier.from_keys([signer.public_key])
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._in_step_with_topic = False

    @property
    def next_sequence(self) -> int:
        return self._chain.next_sequence

    @property
    def remembered_event_ids(self) -> int:
        """How many recorded event ids the writer holds to drop repeats (at most the window)."""
        return len(self._seen)

    async def start(self) -> None:
        """Fence older writers, resume from the topic, and sign a checkpoint marking the restart."""
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._kafka_bootstrap,
            transactional_id=self._transactional_id,
            enable_idempotence=True,
            acks="all",
            # a batch's records are all handed over before any is awaited (``_commit``): a few ms
            # of linger and large batches make the whole transaction one produce request, not
            # one per record (which cost a fifth of the writer's CPU in send calls)
            linger_ms=5,
            max_batch_size=512 * 1024,  # under the broker's default message.max.bytes (1 MiB)
        )
        await self._producer.start()  # InitProducerId: older writers are fenced from here on
        tail = await self._read_tail(self._seen.limit)
        vouched = written_by_the_writer(tail, self._own_key)
        genuine, foreign = tail[:vouched], tail[vouched:]
        if tail:
            self._chain.resume(tail[-1], seen_event_ids=(r.event_id for r in genuine), check_hash=not foreign)
        self._in_step_with_topic = True
        log.info("audit chain resumed at sequence %d", self._chain.next_sequence)
        if foreign:
            log.error(
                "the audit topic holds %d records (sequences %d..%d) after the writer's last checkpoint: no writer "
                "wrote them; recorded as foreign, and `keyturn audit verify` reports them",
                len(foreign),
                foreign[0].sequence,
                foreign[-1].sequence,
            )
            metrics.FOREIGN.inc(len(foreign))
            now = _now()
            await self._commit(
                [self._chain.disown(foreign, now), self._chain.checkpoint(now)], checkpoint_reason="resume"
            )
        metrics.HEAD.set(self._chain.next_sequence - 1)

    async def start_over(self) -> None:
        """After a commit failed for a reason other than a newer writer (``AuditWriterStopped.fenced``):
        drop the producer and what the chain held in memory, and start as a new worker does
        (fence the failed producer, read the topic's tail). The batch can then be recorded again:
        what the failed commit did land is in the tail, and its events are skipped by id."""
        async with self._lock:
            failed, self._producer = self._producer, None
            self._in_step_with_topic = False
            if failed is not None:
                with contextlib.suppress(Exception):  # it failed already: closing it must not hold the worker
                    await asyncio.wait_for(failed.stop(), 5)
            self._seen, self._chain = self._fresh_memory(self._seen.limit)
        await self.start()

    def _fresh_memory(self, dedupe_window: int) -> tuple[RecentEventIds, AuditChain]:
        """The recorded event ids and the chain head, empty until ``start`` reads the topic's tail."""
        seen = RecentEventIds(dedupe_window)
        return seen, AuditChain(self._signer, checkpoint_every=None, seen=seen, audit_topic=self._topic)

    async def record(self, events: Iterable[tuple[Any, str]]) -> int:
        """Append (event, source topic) pairs as one transaction; returns records written. An
        event is an ``AuditedEvent`` (what the service reads) or an event dataclass."""
        async with self._lock:
            self._require_writable()
            now = _now()
            records: list[AuditRecord] = []
            newest_event_at: datetime | None = None
            for given, source_topic in events:
                event = given if isinstance(given, AuditedEvent) else AuditedEvent.of(given)
                at = event.occurred_at
                record = self._chain.append(
                    event_id=event.event_id,
                    event_type=event.name,
                    source_topic=source_topic,
                    occurred_at=at,
                    payload=event.payload_json,
                    now=now,
                    action_id=event.action_id,
                    actor=event.actor,
                    flags=event.flags,
                )
                if record is None:
                    metrics.DUPLICATES.inc()
                    continue
                records.append(record)
                newest_event_at = max(filter(None, (newest_event_at, at)))
            if records:  # every transaction ends with the writer's signature (see the module's doc)
                await self._commit([*records, self._chain.checkpoint(now)], checkpoint_reason="periodic")
            if newest_event_at is not None:
                metrics.LAG.set((_now() - newest_event_at).total_seconds())
            return len(records)

    async def close(self) -> None:
        """Sign a final checkpoint (when the head is known to be in the topic) and stop."""
        async with self._lock:
            try:
                if self._in_step_with_topic and self._chain.records_since_checkpoint:
                    await self._commit([self._chain.checkpoint(_now())], checkpoint_reason="shutdown")
                    log.info("audit chain closed with a checkpoint at sequence %d", self._chain.next_sequence - 1)
            finally:
                self._in_step_with_topic = False
                if self._producer is not None:
                    await self._producer.stop()
                    self._producer = None

    def _require_writable(self) -> None:
        if self._producer is None or not self._in_step_with_topic:
            raise AuditWriterStopped(
                "the audit writer is closed or out of step with the audit topic; restart the audit worker"
            )

    async def _commit(self, records: list[AuditRecord], *, checkpoint_reason: str) -> None:
        assert self._producer is not None
        started = time.perf_counter()
        self._in_step_with_topic = False  # until the broker says the transaction committed
        try:
            async with self._producer.transaction():
                # in the producer's batches whole, on the chain's one partition (``bus.topics.topic_specs``)
                sent = await send_in_batches(
                    self._producer,
                    [
                        (
                            self._topic,
                            (record.action_id or record.event_id).encode(),
                            registry().encode("AuditRecord", record.to_dict()),
                            [],
                        )
                        for record in records
                    ],
                )
                await asyncio.gather(*sent)
        except Exception as error:
            fenced = isinstance(error, ProducerFenced)
            raise AuditWriterStopped(
                f"committing audit records {records[0].sequence}..{records[-1].sequence} failed "
                f"({type(error).__name__}: {error})" + ("; another audit worker has taken over" if fenced else ""),
                fenced=fenced,
            ) from error
        self._in_step_with_topic = True
        metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
        metrics.HEAD.set(records[-1].sequence)
        for record in records:
            if record.is_checkpoint:
                metrics.CHECKPOINTS.labels(checkpoint_reason).inc()
            else:
                metrics.RECORDS.labels(record.event_type).inc()


def _now() -> datetime:
    return datetime.now(UTC)
