"""Reading the audit topic: the whole log (to resume or verify), or following it live."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiokafka import AIOKafkaConsumer, TopicPartition

from keyturn.bus.codec import registry
from keyturn.bus.topics import Topics
from keyturn.config import Settings
from keyturn.core.audit_chain import AuditRecord


async def follow_audit(settings: Settings, *, follow: bool = False) -> AsyncIterator[AuditRecord]:
    """Every audit record from the first; with ``follow``, keep waiting for new ones."""
    partition = TopicPartition(Topics.from_settings(settings).audit, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        end = (await consumer.end_offsets([partition]))[partition]
        while follow or await consumer.position(partition) < end:
            for messages in (await consumer.getmany(partition, timeout_ms=500)).values():
                for message in messages:
                    yield AuditRecord.from_dict(registry().decode(message.value)[1])
    finally:
        await consumer.stop()


async def read_audit_log(settings: Settings) -> list[AuditRecord]:
    """Every record in the audit topic, oldest first."""
    return [record async for record in follow_audit(settings)]
