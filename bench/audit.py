"""Throughput of reading the audit back: verify, filtered replay and JSONL export from a real topic.

    KEYTURN_KAFKA_BOOTSTRAP=127.0.0.1:9092 python bench/audit.py [--actions N] [--json out.json]

Writes a scratch namespace's audit topic the way the audit worker does (the real chain, a
checkpoint every 100 records, transactions of 500 records), with realistic records: reads
that run, grants that are approved or denied after a vote, a refused self-approval now and
then. Then times, each from the start of the topic: ``verify`` (decode + hash + signatures),
a two-pass replay filtered by requester, and a JSONL export. Deletes its topics at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import secrets
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "services"))
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaProducer  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient  # noqa: E402

from keyturn.audit.export import write_jsonl  # noqa: E402
from keyturn.audit.replay import ActionIndex, ReplayFilter  # noqa: E402
from keyturn.audit.stream import AuditTopic, blocking  # noqa: E402
from keyturn.bus.codec import registry  # noqa: E402
from keyturn.bus.topics import Topics, ensure_topics, topic_specs  # noqa: E402
from keyturn.config import Settings  # noqa: E402
from keyturn.core.audit.checkpoint import CheckpointVerifier  # noqa: E402
from keyturn.core.audit.verify import verify  # noqa: E402
from tests.unit.audit_history import SIGNER, History  # noqa: E402


class CheckpointedHistory(History):
    """The test history builder, signing a checkpoint every 100 records like the worker."""

    def __init__(self) -> None:
        super().__init__()
        self.chain = type(self.chain)(SIGNER, checkpoint_every=100, audit_topic="bench.audit")

    def _add(self, event, topic: str) -> None:
        super()._add(event, topic)
        if self.chain.checkpoint_due:
            self.records.append(self.chain.checkpoint(self.records[-1].recorded_at))


def build(actions: int) -> list:
    history = CheckpointedHistory()
    for n in range(actions):
        start = n * 2.0
        requester = f"agent:bench-{n % 20}"
        if n % 3:
            request = history.request(f"read-{n}", "read.table", start, requester=requester)
            history.decide(request, "allowed", start + 0.05)
            history.execute(request, "succeeded", start + 0.1)
            continue
        request = history.request(f"grant-{n}", "iam.role.grant", start, requester=requester)
        decision = history.decide(request, "needs_approval", start + 0.05, groups=(("security", 1),))
        if n % 9 == 0:
            history.vote(decision, "human:alice", "approve", start + 0.5, accepted=False)
        approve = n % 2 == 0
        vote = history.vote(
            decision, "human:carol" if approve else "human:dave", "approve" if approve else "deny", start + 1
        )
        history.resolve(decision, "approved" if approve else "denied", start + 1, (vote,))
        if approve:
            history.execute(request, "succeeded", start + 1.2)
    history.records.append(history.chain.checkpoint(history.records[-1].recorded_at))
    return history.records


async def fill(settings: Settings, records: list) -> None:
    await ensure_topics(settings.kafka_bootstrap, Topics(settings.namespace, settings.partitions))
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, transactional_id=f"{settings.namespace}-bench"
    )
    await producer.start()
    topic = Topics(settings.namespace, settings.partitions).audit
    try:
        for start in range(0, len(records), 500):
            async with producer.transaction():
                for record in records[start : start + 500]:
                    await producer.send(
                        topic, registry().encode("AuditRecord", record.to_dict()), key=(record.action_id or "").encode()
                    )
    finally:
        await producer.stop()


async def drop_topics(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([spec.name for spec in topic_specs(Topics(settings.namespace, settings.partitions))])
    finally:
        await admin.close()


def records_of(settings: Settings):
    async def read():
        async with AuditTopic(settings.kafka_bootstrap, Topics(settings.namespace, settings.partitions).audit) as topic:
            async for message in topic.messages():
                yield message.record

    return blocking(read())


def timed(label: str, count: int, run) -> dict:
    started = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - started
    print(f"{label:<28} {count:>8} records in {seconds:6.2f} s = {count / seconds:>9,.0f} records/s")
    return {
        "what": label,
        "records": count,
        "seconds": round(seconds, 3),
        "records_per_s": round(count / seconds),
        "result": result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--actions", type=int, default=15_000)
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    settings = replace(Settings.from_env(), namespace=f"bench{secrets.token_hex(3)}", partitions=1)
    records = build(options.actions)
    print(f"writing {len(records)} records for {options.actions} actions to {settings.namespace}.audit")
    asyncio.run(fill(settings, records))
    verifier = CheckpointVerifier.from_keys([SIGNER.public_key])
    wanted = ReplayFilter(requesters=frozenset({"agent:bench-7"}))
    try:
        results = [
            timed("verify from the topic", len(records), lambda: verify(records_of(settings), verifier).ok),
            timed("replay --requester (2 passes)", len(records), lambda: _replay(settings, wanted)),
            timed("export jsonl", len(records), lambda: write_jsonl(records_of(settings), io.StringIO())),
        ]
    finally:
        asyncio.run(drop_topics(settings))
    assert results[0]["result"] is True, "the benchmark chain did not verify"
    if options.json:
        options.json.write_text(json.dumps(results, indent=1) + "\n")


def _replay(settings: Settings, wanted: ReplayFilter) -> int:
    index = ActionIndex.of(records_of(settings))
    return sum(1 for r in records_of(settings) if wanted.selects(r, index.get(r.action_id)))


if __name__ == "__main__":
    main()
