"""Audit service: every lifecycle event, vote and dead letter becomes one chained record.

consumes  lifecycle topics · <ns>.approvals.votes · <ns>.dlq (consumer group ``<ns>-audit``)
produces  <ns>.audit (one partition, kept forever; SHA-256 chained, Ed25519 checkpoints),
          in Kafka transactions under one transactional id, so a newer worker fences an older one
state     the chain head and the ids of the last 100,000 events recorded (to drop redeliveries),
          read back from the tail of <ns>.audit at start
metrics   http://127.0.0.1:<KEYTURN_AUDIT_METRICS_PORT>/metrics
A checkpoint is signed every 100 records, after resuming, and on a clean shutdown (SIGTERM).

The one service that does not run as a faust worker. The audit chain is one sequence written
by one process, so its CPU per record caps every deployment (bench/README.md, cost model);
profiled in the batched flood, faust's fetcher, stream and acknowledgement machinery took 47 %
of the audit process's CPU beside 52 % in the audit's own work. It reads through the same
consumption loop as every service (``bus.loop.run`` over a plain consumer, ``KafkaSource``),
committing each batch once its transaction is in the topic, in the same consumer group the
faust worker used, so an upgrade resumes where that worker stopped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from keyturn.audit.keys import load_signer
from keyturn.audit.records import AuditedEvent
from keyturn.audit.stream import read_audit_tail
from keyturn.audit.writer import AuditWriter, AuditWriterStopped
from keyturn.bus.codec import UndecodableMessage, registry
from keyturn.bus.loop import KafkaSource, Stage, group_member, run
from keyturn.bus.publisher import kafka_publisher
from keyturn.bus.topics import Topics
from keyturn.bus.warrants import Warrants, dead_letter_unwarranted, log_skipped
from keyturn.config import Settings
from keyturn.core.audit.checkpoint import CheckpointSigner
from keyturn.core.events import EVENT_TYPES, ActionSubmitted
from keyturn.faults import supervised, until_done
from keyturn.masking.agreement import start_only_in_agreement_at
from keyturn.masking.protect import keyring_for
from keyturn.metrics import serve_metrics
from keyturn.roots import topics_of

log = logging.getLogger(__name__)

BATCH_MAX, BATCH_WITHIN_MS = 500, 100  # one transaction per batch: a commit costs ~30 ms


def checkpoint_key_path(settings: Settings) -> Path:
    return settings.keys_dir / "audit-checkpoint.pem"


#: How often the writer starts over for one batch before the worker stops (``AuditService.chain``).
START_OVERS = 3


def audit_writer(settings: Settings, signer: CheckpointSigner, **options: Any) -> AuditWriter:
    """The writer of ``<ns>.audit``; every audit worker of a namespace shares its transactional
    id, so a new one fences the old. ``options`` as for ``AuditWriter``."""
    bootstrap, topic = settings.kafka_bootstrap, topics_of(settings).audit
    return AuditWriter(
        bootstrap,
        topic,
        f"{settings.namespace}-audit-chain",
        lambda records: read_audit_tail(bootstrap, topic, records),
        signer,
        **options,
    )


def happened_order(events: list[tuple[Any, Any]], topics: Topics) -> list[tuple[Any, Any]]:
    """A batch in the order its events happened: by the time each was produced, and for events
    produced in the same millisecond, by their step in an action's life (requested, decided,
    vote, resolved, executed).

    A batch holds what the consumer had buffered from every topic, handed over partition by
    partition, so arrival order can put an action's decision before its request, or a resolution
    before the vote that caused it. Each event is produced after the one that caused it, so the
    producers' timestamps restore the order; the sort is stable, so records of one partition keep
    their offsets' order."""
    step = {
        topic: rank
        for rank, topic in enumerate((topics.requested, topics.decided, topics.votes, topics.resolved, topics.executed))
    }
    return sorted(events, key=lambda pair: (getattr(pair[1], "timestamp", 0), step.get(pair[1].topic, len(step))))


class AuditService:
    """The audit service's composition root: everything it uses is built here from ``settings``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = topics_of(settings)
        self.writer = audit_writer(settings, load_signer(checkpoint_key_path(settings)))
        self.auditable_names = frozenset(name for name, cls in EVENT_TYPES.items() if cls is not ActionSubmitted)
        # the chain holds what Keyturn's services did: a lifecycle event or a vote without the
        # warrant of the service that makes it (``bus.warrants``) is left out of it, and its
        # refusal is chained instead (a dead letter), so reports never count a forged outcome
        self.keyring = keyring_for(settings.seal_keys, settings.keys_dir)
        self.warrants = Warrants(self.keyring, (*self.topics.lifecycle, self.topics.votes))
        self.publisher: Any = None  # the dead letters' (``run``)

    def audited(self, message: Any) -> AuditedEvent:
        """The event a message holds, as its Avro record (no dataclass: ``AuditedEvent``);
        ``UndecodableMessage`` when it is not an event the audit records."""
        name, record = registry().decode(message.value or b"")  # no value: refused as truncated
        if name not in self.auditable_names:
            raise UndecodableMessage("unexpected_type", f"{name} does not belong on {message.topic}")
        return AuditedEvent(name, record)

    async def chain(self, events: list[tuple[Any, Any]]) -> None:
        """One batch, in the order it happened (``happened_order``), as one transaction of the one
        chain; the events of warranted topics without their warrant are dead-lettered instead."""
        kept, refused = self.warrants.sorted(e for e in events if e[1].topic in self.warrants.topics)
        # one refusal per record, by its topic's owner (``Topics.dead_letter_owner``): the policy and
        # the executor dead-letter what they refuse on theirs, and the audit what comes on its own
        log_skipped([r for r in refused if self.topics.dead_letter_owner(r[1].topic) != "audit"], "audit")
        for event, message, why in refused:
            if self.topics.dead_letter_owner(message.topic) != "audit":
                continue
            await dead_letter_unwarranted(
                self.publisher,
                message,
                "unwarranted_event",
                f"{event.name} for {event.action_id or '?'} with {why}: not written by the Keyturn service "
                "that makes it, so it is left out of the audit chain",
            )
        events = [e for e in events if e[1].topic not in self.warrants.topics] + kept
        batch = [(event, message.topic) for event, message in happened_order(events, self.topics)]
        for attempt in range(1, START_OVERS + 2):
            try:
                await self.writer.record(batch)
                return
            except AuditWriterStopped as error:
                # fenced, or failing however the writer starts: exit before the batch's offsets are
                # committed, and the next worker reads them again
                if error.fenced or attempt > START_OVERS:
                    log.critical("audit worker stopping: %s", error)
                    os._exit(70)
                log.error("audit: %s; the writer starts over and records the batch again", error)
                await until_done(self.writer.start_over, "audit: starting the chain writer over")

    async def run(self) -> None:
        """Until cancelled (SIGTERM): resume the chain, then chain every batch; on the way out,
        sign a final checkpoint."""
        settings = self.settings
        # with another ring than the services', every genuine event would be left out of the chain
        await until_done(
            lambda: start_only_in_agreement_at(settings.database_url, settings.namespace, "audit", self.keyring),
            "audit: checking the seal keys",
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=int(settings.producer_linger_ms),
            max_batch_size=settings.producer_batch_bytes,
        )
        await until_done(producer.start, "audit: starting the producer")
        try:
            await until_done(self.writer.start, "audit: resuming the chain")
            serve_metrics("audit", settings.audit_metrics_port)
            self.publisher = kafka_publisher(producer, self.topics, "audit")
            stage = Stage(self.publisher, handle_batch=self.chain, decode=self.audited)
            try:
                await supervised("audit: the chain follower", lambda: self._follow(stage))
            finally:
                await self.writer.close()
        finally:
            await producer.stop()

    async def _follow(self, stage: Stage) -> None:
        settings = self.settings
        consumer = AIOKafkaConsumer(
            *self.topics.audited,
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=f"{settings.namespace}-audit",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **group_member(settings.worker_session_timeout_s),
            # fetches answered as records arrive (not held for more, as followers' are): one fetch
            # holding a vote and its resolution hands them over by partition, not in the order the
            # approval service published them, and the chain would record the resolution first
        )
        await until_done(consumer.start, "audit: joining the consumer group")
        try:
            await run(KafkaSource(consumer, max_records=BATCH_MAX, wait_ms=1000, gather_ms=BATCH_WITHIN_MS), stage)
        finally:
            await consumer.stop()


def create_app(settings: Settings) -> AuditService:
    return AuditService(settings)


def serve(settings: Settings) -> None:
    """Run the audit service in the foreground until SIGTERM or SIGINT (then a final checkpoint)."""
    logging.basicConfig(
        level=settings.log_level.upper(), format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
    )
    # the Kafka client notes every transaction's coordinator lookup at INFO: a line per batch
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    service = create_app(settings)

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for stop in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(stop, task.cancel)
        try:
            await service.run()
        except asyncio.CancelledError:
            log.info("audit service stopped")

    asyncio.run(main())
