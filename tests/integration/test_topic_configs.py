"""The submissions topic (parameters in clear) rolls its segments every minute and drops a deleted
one a second after the broker's retention check, whether it was made by this version or before."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from keyturn.bus.topics import AUDIT_CONFIGS, SUBMISSIONS_CONFIGS, Topics, ensure_topics, topic_configs
from keyturn.config import Settings
from keyturn.faults import until_done
from tests.integration.conftest import eventually
from tests.processes import own_namespace

pytestmark = pytest.mark.integration


def described(settings: Settings, *names: str) -> dict[str, dict[str, str]]:
    """Each topic's config values as the broker describes them now."""

    async def ask() -> dict[str, dict[str, str]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            found = await until_done(lambda: topic_configs(admin, list(names)), "describing topics")
        finally:
            await admin.close()
        return {name: {key: value for key, (value, _) in configs.items()} for name, configs in found.items()}

    return asyncio.run(ask())


def has(configs: dict[str, str], wanted: dict[str, str]) -> bool:
    return wanted.items() <= configs.items()


def test_an_existing_submissions_topic_gets_its_segment_configs_and_keeps_an_operators_own(settings) -> None:
    settings = own_namespace(settings, "tc")
    topics = Topics(settings.namespace, settings.partitions)

    async def made_by_an_earlier_version() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:  # no segment configs, and an operator's own retention
            await admin.create_topics(
                [NewTopic(topics.submissions, topics.partitions, 1, topic_configs={"retention.ms": "86400000"})]
            )
        finally:
            await admin.close()

    asyncio.run(made_by_an_earlier_version())
    asyncio.run(until_done(lambda: ensure_topics(settings.kafka_bootstrap, topics), "creating topics"))

    # the broker applies a config change a moment after it answers
    def reconciled() -> dict[str, dict[str, str]] | None:
        found = described(settings, topics.submissions, topics.audit, topics.requested)
        return (
            found
            if has(found[topics.submissions], SUBMISSIONS_CONFIGS) and has(found[topics.audit], AUDIT_CONFIGS)
            else None
        )

    now = eventually(reconciled)
    assert now[topics.submissions]["retention.ms"] == "86400000"
    assert now[topics.requested]["segment.ms"] != SUBMISSIONS_CONFIGS["segment.ms"]  # only the clear topic has it


def test_a_submissions_topic_is_made_with_them(settings) -> None:
    settings = own_namespace(settings, "tn")
    topics = Topics(settings.namespace, settings.partitions)
    asyncio.run(until_done(lambda: ensure_topics(settings.kafka_bootstrap, topics), "creating topics"))
    eventually(lambda: has(described(settings, topics.submissions)[topics.submissions], SUBMISSIONS_CONFIGS))
