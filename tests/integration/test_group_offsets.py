"""A consumer that moves to a group of its own resumes where its old group stopped
(``bus.topics.carry_offsets``; the approval desk's decisions moved from the stream framework's
group to ``<ns>-approval-actions``)."""

from __future__ import annotations

import secrets

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from keyturn.bus.topics import carry_offsets


async def _commit(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


async def _committed(bootstrap: str, group: str) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {tp: meta.offset for tp, meta in (await admin.list_consumer_group_offsets(group)).items()}
    finally:
        await admin.close()


async def test_a_new_group_takes_the_old_groups_offsets_once_and_only_of_its_topics(settings) -> None:
    bootstrap = settings.kafka_bootstrap
    run = secrets.token_hex(4)
    wanted, other = f"{settings.namespace}.carry-{run}.a", f"{settings.namespace}.carry-{run}.b"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(wanted, 3, 1), NewTopic(other, 1, 1)])
    finally:
        await admin.close()
    old, new = f"{settings.namespace}-old-{run}", f"{settings.namespace}-new-{run}"
    await _commit(
        bootstrap, old, {TopicPartition(wanted, 0): 7, TopicPartition(wanted, 2): 3, TopicPartition(other, 0): 5}
    )

    assert await carry_offsets(bootstrap, old, new, (wanted,)) == 2
    assert await _committed(bootstrap, new) == {TopicPartition(wanted, 0): 7, TopicPartition(wanted, 2): 3}

    # once the new group has offsets of its own, the old group's are never carried again
    await _commit(bootstrap, old, {TopicPartition(wanted, 0): 99})
    await _commit(bootstrap, new, {TopicPartition(wanted, 0): 8})
    assert await carry_offsets(bootstrap, old, new, (wanted,)) == 0
    assert (await _committed(bootstrap, new))[TopicPartition(wanted, 0)] == 8

    # an old group that never committed carries nothing: the new group starts as configured
    assert await carry_offsets(bootstrap, f"{old}-never", f"{new}-fresh", (wanted,)) == 0
    assert await _committed(bootstrap, f"{new}-fresh") == {}

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([wanted, other])
    finally:
        await admin.close()
