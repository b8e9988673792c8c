"""The topics services talk through. Names are ``<namespace>.<suffix>``; all lifecycle topics
share one partition count and are keyed by ``action_id``, so an action's events stay in order."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

# The submissions topic carries parameters in clear. The intake deletes what it took
# (DeleteRecords), but that only moves the log start offset: the bytes stay in their segment file
# until the segment is closed and the broker's retention check removes it. A segment closes at
# the first append once it is ``segment.ms`` old (the default is 7 days); after the check, its
# files are removed ``file.delete.delay.ms`` later (the default is a minute). So: a new segment
# every minute and removal a second after the check (docs/architecture.md, "Submissions do not
# stay on their topic", has the bound this gives and its one gap).
SUBMISSIONS_CONFIGS = {"segment.ms": "60000", "file.delete.delay.ms": "1000"}
AUDIT_CONFIGS = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}
DYNAMIC_TOPIC_CONFIG = 1  # DescribeConfigs' config_source of a value set on the topic itself


@dataclass(frozen=True)
class Topics:
    namespace: str
    partitions: int

    def _name(self, suffix: str) -> str:
        return f"{self.namespace}.{suffix}"

    @property
    def submissions(self) -> str:
        return self._name("submissions")

    @property
    def requested(self) -> str:
        return self._name("actions.requested")

    @property
    def decided(self) -> str:
        return self._name("actions.decided")

    @property
    def votes(self) -> str:
        return self._name("approvals.votes")

    @property
    def resolved(self) -> str:
        return self._name("actions.resolved")

    @property
    def executed(self) -> str:
        return self._name("actions.executed")

    @property
    def dlq(self) -> str:
        return self._name("dlq")

    @property
    def audit(self) -> str:
        return self._name("audit")

    @property
    def lifecycle(self) -> tuple[str, ...]:
        """Topics whose events move an action through its states."""
        return (self.requested, self.decided, self.resolved, self.executed)

    @property
    def audited(self) -> tuple[str, ...]:
        """Everything the audit service chains: the lifecycle, every vote, every dead letter."""
        return (*self.lifecycle, self.votes, self.dlq)

    def dead_letter_owner(self, topic: str) -> str:
        """The one service that dead-letters bad messages found on ``topic``.

        Several services read some topics; only the owner quarantines what it cannot read,
        so one bad message yields one dead letter. Other readers skip it.
        """
        owners = {
            self.submissions: "intake",
            self.requested: "policy",
            self.decided: "executor",
            self.resolved: "executor",
            self.votes: "audit",
            self.executed: "audit",
            self.dlq: "audit",
        }
        return owners.get(topic, "audit")


STREAM_WORKERS = ("policy", "approval", "executor", "audit")
"""The services that run as stream workers, each a consumer group named ``<ns>-<service>``."""


def topic_specs(topics: Topics) -> list[NewTopic]:
    """Every topic with its partitions and retention; the audit topic is one ordered log, kept forever.

    Each stream worker's group leader also reads a one-partition topic of its own (the
    assignor's, named by the worker framework); workers may not declare topics, so it is made
    here with the rest, or every rebalance logs that it is missing.
    """
    specs = [NewTopic(topics.submissions, topics.partitions, 1, topic_configs=dict(SUBMISSIONS_CONFIGS))]
    specs.extend(NewTopic(name, topics.partitions, 1) for name in [*topics.lifecycle, topics.votes, topics.dlq])
    specs.append(NewTopic(topics.audit, 1, 1, topic_configs=dict(AUDIT_CONFIGS)))
    specs.extend(NewTopic(f"{topics.namespace}-{service}-__assignor-__leader", 1, 1) for service in STREAM_WORKERS)
    return specs


#: How often ``ensure_topics`` asks for the configs of topics the broker does not describe yet (0.2 s apart).
DESCRIBE_ATTEMPTS = 50


async def ensure_topics(bootstrap: str, topics: Topics) -> None:
    """Create any missing topic, and give an existing one the configs its spec names (a topic made
    before a config was added to its spec gets it at the next start). Idempotent; safe for several
    services starting at once."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        specs = topic_specs(topics)
        existing = set(await admin.list_topics())
        missing = [spec for spec in specs if spec.name not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
        # every topic with configs, not only those listed above: a topic made a moment ago (by
        # another service starting) may not be listed yet, and "already exists" says nothing of
        # its configs. One made with them is left alone. One made a moment ago (here or by
        # another service) may not be described yet: that retriable error is waited out here, for
        # a few seconds, so no caller fails on it (a test creating its topics did).
        with_configs = [spec for spec in specs if spec.topic_configs]
        for attempt in range(DESCRIBE_ATTEMPTS):
            try:
                await _reconcile_configs(admin, with_configs)
                break
            except KafkaError as error:
                if not error.retriable or attempt == DESCRIBE_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def topic_configs(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[str, tuple[str, int]]]:
    """Each topic's configs as the broker describes them: name -> (value, config_source)."""
    if not names:
        return {}
    found: dict[str, dict[str, tuple[str, int]]] = {}
    for response in await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names]):
        for error_code, _, _, name, entries in (tuple(r[:5]) for r in response.resources):
            if error_code:
                raise for_code(error_code)(f"describing the configs of topic {name}")
            found[name] = {entry[0]: (entry[1], entry[3]) for entry in entries}
    return found


async def _reconcile_configs(admin: AIOKafkaAdminClient, specs: list[NewTopic]) -> None:
    """Set each spec's configs on its existing topic where they differ. AlterConfigs (the request
    aiokafka sends) replaces every value set on the topic, so the values set there that the spec
    does not name (an operator's) are sent back with it."""
    described = await topic_configs(admin, [spec.name for spec in specs])
    changes = []
    for spec in specs:
        current = described.get(spec.name, {})
        if all(current.get(key, ("", 0))[0] == value for key, value in spec.topic_configs.items()):
            continue
        kept = {key: value for key, (value, source) in current.items() if source == DYNAMIC_TOPIC_CONFIG}
        changes.append(ConfigResource(ConfigResourceType.TOPIC, spec.name, configs={**kept, **spec.topic_configs}))
    if changes:
        for response in await admin.alter_configs(changes):
            for error_code, error_message, _, name in (tuple(r[:4]) for r in response.resources):
                if error_code:
                    raise for_code(error_code)(f"setting the configs of topic {name}: {error_message}")


async def partition_count(bootstrap: str, topic: str) -> int:
    """How many partitions ``topic`` has (0 when it does not exist)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return len(described[0].get("partitions", ())) if described and not described[0].get("error_code") else 0


async def carry_offsets(bootstrap: str, from_group: str, to_group: str, topics: tuple[str, ...]) -> int:
    """Give ``to_group`` the offsets ``from_group`` committed on ``topics``, if ``to_group`` has
    none yet: a consumer that moves to a group of its own resumes where the old one stopped
    instead of reading the topics from their start again. Returns how many partitions were
    carried (0 when ``to_group`` already had offsets or ``from_group`` had none).

    Offsets are read partition by partition through the group coordinator (``committed``), which
    waits out a coordinator that is still loading: a group-wide listing answers such a moment
    with an empty list, which would read as "no offsets yet" and rewind a group that has them.
    The commit is made outside any group generation, which the broker accepts only while
    ``to_group`` has no members: a second instance starting at the same moment fails here and
    is started again by its supervisor, by when the first one's offsets are there.
    """
    partitions = [
        TopicPartition(topic, partition)
        for topic in topics
        for partition in range(await partition_count(bootstrap, topic))
    ]
    if not partitions or await _committed(bootstrap, to_group, partitions):
        return 0
    carried = await _committed(bootstrap, from_group, partitions)
    if carried:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=to_group, enable_auto_commit=False)
        try:
            await consumer.start()
            consumer.assign(list(carried))
            await consumer.commit(carried)
        finally:
            await consumer.stop()
    return len(carried)


async def _committed(bootstrap: str, group: str, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
    """The offsets ``group`` committed on ``partitions`` (those it committed at all)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        await consumer.start()
        found = {tp: await consumer.committed(tp) for tp in partitions}
    finally:
        await consumer.stop()
    return {tp: offset for tp, offset in found.items() if offset is not None and offset >= 0}
