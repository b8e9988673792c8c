"""``keyturn policy explain``: re-run a recorded decision's exact input through today's policy."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from keyturn.bus.codec import UndecodableMessage, registry
from keyturn.bus.topics import partition_count
from keyturn.core.events import ActionDecided
from keyturn.policy.opa import OpaClient


@dataclass(frozen=True)
class Explanation:
    recorded: ActionDecided
    outcome_now: str
    reasons_now: tuple[str, ...]
    rules_now: tuple[str, ...]
    revision_now: str

    @property
    def revision_changed(self) -> bool:
        return self.revision_now != self.recorded.provenance.policy_revision

    @property
    def outcome_changed(self) -> bool:
        return self.outcome_now != self.recorded.outcome.value

    def as_dict(self) -> dict[str, Any]:
        provenance = self.recorded.provenance
        return {
            "action_id": self.recorded.action_id,
            "action": self.recorded.request.action,
            "recorded": {
                "outcome": self.recorded.outcome.value,
                "reasons": list(self.recorded.reasons),
                "rules": list(self.recorded.rules),
                "policy_revision": provenance.policy_revision,
                "decision_id": provenance.decision_id,
                "input_digest": str(provenance.input_digest),
                "decided_at": self.recorded.decided_at.isoformat(),
            },
            "now": {
                "outcome": self.outcome_now,
                "reasons": list(self.reasons_now),
                "rules": list(self.rules_now),
                "policy_revision": self.revision_now,
            },
            "revision_changed": self.revision_changed,
            "outcome_changed": self.outcome_changed,
            "rules_added": sorted(set(self.rules_now) - set(self.recorded.rules)),
            "rules_removed": sorted(set(self.recorded.rules) - set(self.rules_now)),
        }


async def recorded_decision(bootstrap: str, topic: str, action_id: str) -> ActionDecided | None:
    """The decision event for ``action_id``, read from its partition of ``topic`` (the decided topic)."""
    partitions = list(range(await partition_count(bootstrap, topic)))
    if not partitions:
        return None
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        # the producers' partitioner puts every event of one action in the same partition
        partition = TopicPartition(topic, DefaultPartitioner()(action_id.encode(), partitions, partitions))
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        end = (await consumer.end_offsets([partition]))[partition]
        while await consumer.position(partition) < end:
            for messages in (await consumer.getmany(partition, timeout_ms=1000)).values():
                for message in messages:
                    if message.key != action_id.encode():
                        continue
                    try:
                        event = registry().decode_event(message.value)
                    except UndecodableMessage:
                        continue
                    if isinstance(event, ActionDecided):
                        return event
        return None
    finally:
        await consumer.stop()


async def explain(opa: OpaClient, bootstrap: str, decided_topic: str, action_id: str) -> Explanation | None:
    """Evaluate the recorded input against the policy ``opa`` has loaded now; closes ``opa``."""
    try:
        recorded = await recorded_decision(bootstrap, decided_topic, action_id)
        if recorded is None:
            return None
        answer = await opa.query("keyturn/decision", json.loads(recorded.provenance.input_json))
        revision = await opa.policy_revision(max_age_s=0)
    finally:
        await opa.close()
    document = answer.result.get("decision", {}) if isinstance(answer.result, dict) else {}
    return Explanation(
        recorded=recorded,
        outcome_now=str(document.get("outcome", "undefined")),
        reasons_now=tuple(document.get("reasons", ())),
        rules_now=tuple(document.get("rules", ())),
        revision_now=revision,
    )
