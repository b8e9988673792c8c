"""What every action went through, read back from the topics, and the invariants it must keep.

``read_lifecycle`` reads every lifecycle topic, the votes, the DLQ and the audit topic of one
namespace to their ends and gathers, per action, every message about it. Redelivery makes
identical copies (the same event id, the same content); those are counted but harmless. A
*second fact* is not: two decisions with different OPA decision ids, or two executions with
different start times, mean the action was decided or executed twice.

``make bench`` uses the same reading for its latencies (the events' own timestamps) and for
the scale-out check; the chaos tests assert ``problems()`` is empty.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from keyturn.bus.codec import UndecodableMessage, registry
from keyturn.bus.topics import Topics
from keyturn.config import Settings
from keyturn.core.audit.record import CHECKPOINT_EVENT_TYPE

TERMINAL_DECISIONS = {"denied"}
TERMINAL_RESOLUTIONS = {"denied", "expired"}


@dataclass
class ActionFacts:
    """Everything the topics say about one action."""

    action_id: str
    requested_at: datetime | None = None
    requested_copies: int = 0
    decisions: dict[str, tuple[str, datetime]] = field(default_factory=dict)  # decision id -> (outcome, decided_at)
    decided_copies: int = 0
    decision_sent_at: float | None = None  # the first decided record's own timestamp (s): when it was published
    resolutions: dict[tuple[str, datetime], int] = field(default_factory=dict)  # (outcome, resolved_at) -> copies
    executions: dict[tuple[str, datetime | None], tuple[str, datetime]] = field(
        default_factory=dict
    )  # (executor, started_at) -> (outcome, finished_at)
    executed_copies: int = 0

    @property
    def decided_at(self) -> datetime | None:
        return min((at for _, at in self.decisions.values()), default=None)

    @property
    def decision(self) -> str | None:
        first = min(self.decisions.values(), key=lambda d: d[1], default=None)
        return first[0] if first else None

    @property
    def resolved_at(self) -> datetime | None:
        return min((at for _, at in self.resolutions), default=None)

    @property
    def finished_at(self) -> datetime | None:
        return min((finished for _, finished in self.executions.values()), default=None)

    def terminal_facts(self) -> list[str]:
        """Each distinct terminal fact: a denial, a denied/expired resolution, an execution."""
        facts = [
            f"decided {outcome} ({decision_id})"
            for decision_id, (outcome, _) in self.decisions.items()
            if outcome in TERMINAL_DECISIONS
        ]
        facts += [
            f"resolved {outcome} at {at.isoformat()}"
            for outcome, at in self.resolutions
            if outcome in TERMINAL_RESOLUTIONS
        ]
        facts += [
            f"executed {outcome} by {executor} started {started}"
            for (executor, started), (outcome, _) in self.executions.items()
        ]
        return facts

    @property
    def terminal_state(self) -> str | None:
        if self.executions:
            return min(self.executions.values(), key=lambda e: e[1])[0]
        for outcome, _ in sorted(self.resolutions, key=lambda r: r[1]):
            if outcome in TERMINAL_RESOLUTIONS:
                return outcome
        if self.decision in TERMINAL_DECISIONS:
            return self.decision
        return None

    @property
    def terminal_at(self) -> datetime | None:
        if self.executions:
            return self.finished_at
        if any(outcome in TERMINAL_RESOLUTIONS for outcome, _ in self.resolutions):
            return self.resolved_at
        if self.decision in TERMINAL_DECISIONS:
            return self.decided_at
        return None


@dataclass
class Lifecycle:
    """Every action of a namespace, plus the audit topic and the dead letters."""

    actions: dict[str, ActionFacts]
    source_event_ids: set[str]  # every distinct event id on the audited topics
    audit_event_ids: Counter  # event id -> audit records carrying it (checkpoints excluded)
    dead_letters: list[dict[str, Any]]
    undecodable: Counter  # topic -> messages no reader could decode (those belong in the DLQ)

    def problems(self, accepted: set[str]) -> list[str]:
        """Every broken invariant, one line each, naming the action or event."""
        found: list[str] = []
        for action_id in sorted(accepted):
            facts = self.actions.get(action_id)
            if facts is None or facts.requested_copies == 0:
                found.append(f"{action_id}: accepted (202) but never reached the requested topic")
                continue
            terminal = facts.terminal_facts()
            if not terminal:
                found.append(
                    f"{action_id}: no terminal state (decision {facts.decision}, "
                    f"{len(facts.resolutions)} resolutions, {len(facts.executions)} executions)"
                )
            elif len(terminal) > 1:
                found.append(f"{action_id}: {len(terminal)} terminal facts: {'; '.join(terminal)}")
        for action_id, facts in sorted(self.actions.items()):
            if len(facts.decisions) > 1:
                found.append(
                    f"{action_id}: decided {len(facts.decisions)} times: "
                    + "; ".join(f"{o} at {at.isoformat()} ({d})" for d, (o, at) in facts.decisions.items())
                )
            if len(facts.executions) > 1:
                found.append(
                    f"{action_id}: executed {len(facts.executions)} times: "
                    + "; ".join(f"{o} by {e} started {s}" for (e, s), (o, _) in facts.executions.items())
                )
            if facts.executions and facts.decision == "denied":
                found.append(f"{action_id}: denied by policy yet executed")
        missing = self.source_event_ids - set(self.audit_event_ids)
        duplicated = {e: n for e, n in self.audit_event_ids.items() if n > 1}
        invented = set(self.audit_event_ids) - self.source_event_ids
        if missing:
            found.append(f"{len(missing)} events never reached the audit, e.g. {sorted(missing)[:5]}")
        if duplicated:
            found.append(f"{len(duplicated)} events audited more than once, e.g. {sorted(duplicated.items())[:5]}")
        if invented:
            found.append(f"{len(invented)} audit records name no event on any topic, e.g. {sorted(invented)[:5]}")
        return found

    def summary(self, accepted: set[str]) -> dict[str, Any]:
        states = Counter(self.actions[a].terminal_state if a in self.actions else None for a in accepted)
        return {
            "accepted": len(accepted),
            "terminal_states": dict(sorted(((k or "none"), v) for k, v in states.items())),
            "redelivered_copies": {
                "requested": sum(max(0, f.requested_copies - 1) for f in self.actions.values()),
                "decided": sum(max(0, f.decided_copies - len(f.decisions)) for f in self.actions.values()),
                "executed": sum(max(0, f.executed_copies - len(f.executions)) for f in self.actions.values()),
            },
            "audited_events": len(self.audit_event_ids),
            "source_events": len(self.source_event_ids),
            "dead_letters": len(self.dead_letters),
        }


async def read_all(settings: Settings, topic: str, partitions: int, *, read_committed: bool = False) -> list[Any]:
    """Every message of ``topic`` from its beginning to the end it had when we looked."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed" if read_committed else "read_uncommitted",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    try:
        if topic not in await consumer.topics():
            return []
        partitions = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        messages: list[Any] = []
        while True:
            pending = [tp for tp in partitions if await consumer.position(tp) < end[tp]]
            if not pending:
                return messages
            for batch in (await consumer.getmany(*pending, timeout_ms=1000)).values():
                messages.extend(m for m in batch if m.offset < end[TopicPartition(m.topic, m.partition)])
    finally:
        await consumer.stop()


async def read_lifecycle_async(settings: Settings) -> Lifecycle:
    """Read the namespace's topics to their current ends (see the module doc)."""
    topics = Topics(settings.namespace, settings.partitions)
    names = [topics.requested, topics.decided, topics.resolved, topics.executed, topics.votes, topics.dlq]
    read = await asyncio.gather(
        *(read_all(settings, t, settings.partitions) for t in names),
        read_all(settings, topics.audit, 1, read_committed=True),
    )
    by_topic = dict(zip(names, read[:-1], strict=False))
    actions: dict[str, ActionFacts] = {}
    source_ids: set[str] = set()
    undecodable: Counter = Counter()
    dead_letters: list[dict[str, Any]] = []
    codec = registry()

    def facts(action_id: str) -> ActionFacts:
        if action_id not in actions:
            actions[action_id] = ActionFacts(action_id)
        return actions[action_id]

    for topic, messages in by_topic.items():
        for message in messages:
            try:
                name, record = codec.decode(message.value or b"")
            except UndecodableMessage:
                undecodable[topic] += 1
                continue
            source_ids.add(record["event_id"])
            if name == "ActionRequested":
                f = facts(record["action_id"])
                f.requested_copies += 1
                f.requested_at = f.requested_at or record["requested_at"]
            elif name == "ActionDecided":
                f = facts(record["action_id"])
                f.decided_copies += 1
                f.decisions.setdefault(record["provenance"]["decision_id"], (record["outcome"], record["decided_at"]))
                sent = message.timestamp / 1000
                f.decision_sent_at = sent if f.decision_sent_at is None else min(f.decision_sent_at, sent)
            elif name == "ApprovalResolved":
                f = facts(record["action_id"])
                key = (record["outcome"], record["resolved_at"])
                f.resolutions[key] = f.resolutions.get(key, 0) + 1
            elif name == "ActionExecuted":
                f = facts(record["action_id"])
                f.executed_copies += 1
                f.executions.setdefault(
                    (record["executor"], record.get("started_at")), (record["outcome"], record["finished_at"])
                )
            elif name == "DeadLetter":
                dead_letters.append(record)
    audited: Counter = Counter()
    for message in read[-1]:
        try:
            name, record = codec.decode(message.value or b"")
        except UndecodableMessage:
            undecodable["audit"] += 1
            continue
        if record["event_type"] != CHECKPOINT_EVENT_TYPE:
            audited[record["event_id"]] += 1
    return Lifecycle(actions, source_ids, audited, dead_letters, undecodable)


def read_lifecycle(settings: Settings) -> Lifecycle:
    """Synchronous ``read_lifecycle_async``."""
    return asyncio.run(read_lifecycle_async(settings))
