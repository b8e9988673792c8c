"""The audit worker survives being killed, stopped and doubled: one record per event, a chain that verifies."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from dataclasses import replace

import httpx
import pytest

from keyturn.audit.stream import read_audit_log
from keyturn.bus.topics import Topics
from keyturn.config import REPO_ROOT
from tests.conftest import ServiceProcesses, free_port, settings_env
from tests.integration.conftest import Agent, eventually, keyturn_cli
from tests.processes import start_service

pytestmark = pytest.mark.integration

EVENTS_PER_READ = ("ActionRequested", "ActionDecided", "ActionExecuted")


def audit_log(settings):
    return asyncio.run(read_audit_log(settings.kafka_bootstrap, Topics(settings.namespace, settings.partitions).audit))


def recorded_events(settings, action_ids: set[str]) -> list:
    return [r for r in audit_log(settings) if r.action_id in action_ids]


def all_recorded(settings, action_ids: set[str]):
    """The records of these actions once every read has all three events in the audit."""

    def check():
        records = recorded_events(settings, action_ids)
        kinds = Counter(r.action_id for r in records)
        return records if all(kinds[a] >= len(EVENTS_PER_READ) for a in action_ids) else None

    return check


def assert_exactly_once_and_verified(settings) -> list:
    records = audit_log(settings)
    duplicates = {event_id: n for event_id, n in Counter(r.event_id for r in records).items() if n > 1}
    assert not duplicates, f"events recorded more than once: {duplicates}"
    assert [r.sequence for r in records] == list(range(len(records))), "the chain has gaps or repeats"
    verified = keyturn_cli(settings, "audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert "audit chain intact" in verified.stdout
    return records


def test_a_killed_audit_worker_resumes_and_records_every_event_exactly_once(services, settings) -> None:
    agent = Agent(settings, "agent:restart-probe", ("human:alice",))
    submitted: list[str] = []
    halfway = threading.Event()

    def submit_stream() -> None:
        for n in range(30):
            submitted.append(agent.submit_ok("read.table", f"postgres://staging/analytics/t{n}", {"row_count": n}))
            if n == 20:
                halfway.set()

    stream = threading.Thread(target=submit_stream)
    stream.start()
    try:
        started = eventually(lambda: len(recorded_events(settings, set(submitted))) >= 9, timeout=60)
        assert started, "the audit never started recording"
        services.stop("audit", kill=True)  # SIGKILL mid-stream: no shutdown hook, maybe an open transaction
        assert halfway.wait(60)  # events keep arriving while no audit worker runs
    finally:
        stream.join(120)
        services.start("audit")
    assert len(submitted) == 30
    # Judged from the audit itself, not the intake's status view: the audit is what is under test.
    assert eventually(all_recorded(settings, set(submitted)), timeout=180), "events were lost across the kill"
    records = assert_exactly_once_and_verified(settings)
    ours = [r for r in records if r.action_id in set(submitted)]
    assert Counter(r.event_type for r in ours) == {kind: 30 for kind in EVENTS_PER_READ}
    first, last = ours[0].sequence, ours[-1].sequence
    assert any(r.is_checkpoint for r in records[first:last]), "resuming after the kill signs a checkpoint"


def test_a_clean_stop_ends_the_chain_with_a_checkpoint_and_metrics_are_served(services, settings) -> None:
    agent = Agent(settings, "agent:shutdown-probe", ("human:alice",))
    action_id = agent.submit_ok("read.table", "postgres://staging/analytics/orders", {"row_count": 1})
    assert eventually(all_recorded(settings, {action_id}), timeout=60)

    services.stop("audit")  # SIGTERM
    last = audit_log(settings)[-1]
    assert last.is_checkpoint, f"the chain ends with {last.event_type}, not a checkpoint"
    complete = keyturn_cli(settings, "audit", "verify", "--require-checkpoint-at-end")
    assert complete.returncode == 0, complete.stderr

    port = free_port()
    observed = ServiceProcesses(replace(settings, audit_metrics_port=port))
    observed.start("audit")
    try:
        after = agent.submit_ok("read.table", "postgres://staging/analytics/lines", {"row_count": 2})
        assert eventually(all_recorded(settings, {after}), timeout=120)
        metrics = eventually(lambda: _metrics(port), timeout=30)
        assert 'keyturn_audit_records_total{event_type="ActionExecuted"}' in metrics
        assert "keyturn_audit_chain_head_sequence" in metrics
        assert "keyturn_audit_lag_seconds" in metrics
        assert "keyturn_audit_duplicate_events_total" in metrics
    finally:
        observed.stop("audit")
        services.start("audit")
    records = assert_exactly_once_and_verified(settings)
    restart = records.index(last) + 1
    assert not records[restart].is_checkpoint, "resuming right after a checkpoint signs no empty checkpoint"


def _metrics(port: int) -> str | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return None


def test_a_second_audit_worker_fences_the_first(services, settings) -> None:
    first = services.procs["audit"]
    # The first worker must hold the writer before the second starts: on a busy machine a
    # just-restarted first worker can otherwise start its producer last and fence the second.
    first_log = services.log_dir / "audit.log"
    assert eventually(
        lambda: f"[{first.pid}] [INFO] audit chain resumed" in first_log.read_text(errors="replace"), timeout=90
    ), "the first audit worker never resumed the chain"
    log_path = services.log_dir / "audit-second.log"
    second = start_service("audit", env=settings_env(settings), log_path=log_path, cwd=REPO_ROOT)
    try:
        assert eventually(lambda: "audit chain resumed" in log_path.read_text(errors="replace"), timeout=60)
        agent = Agent(settings, "agent:fencing-probe", ("human:alice",))
        # Enough actions that some land on partitions the first worker still holds.
        submitted = {agent.submit_ok("read.table", f"postgres://staging/analytics/f{n}") for n in range(12)}
        assert eventually(lambda: first.poll() is not None, timeout=120), "the fenced worker kept running"
        assert first.returncode == 70
        assert "another audit worker has taken over" in (services.log_dir / "audit.log").read_text(errors="replace")
        assert eventually(all_recorded(settings, submitted), timeout=180), "events were lost when the writer changed"
        assert_exactly_once_and_verified(settings)
    finally:
        second.terminate()
        second.wait(30)
        services.stop("audit")
        services.start("audit")


def test_a_writer_reads_the_chains_tail_only_once_no_transaction_is_in_flight(settings) -> None:
    """A commit the broker is still completing when a new writer starts becomes visible only once
    it completes; read before, the tail would be one record short and the next record would repeat
    its sequence. The tail read waits for it (``audit.stream.settled``)."""
    import secrets as random_names

    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from keyturn.audit.stream import read_audit_tail

    topic = f"{settings.namespace}.tail-{random_names.token_hex(4)}"
    hold_s = 2.0

    async def scenario() -> tuple[float, float]:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic(topic, 1, 1)])
        await admin.close()
        other = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, transactional_id=f"{topic}-other")
        await other.start()
        await other.begin_transaction()
        await (await other.send(topic, b"not yet committed"))
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def commit_later() -> float:
            await asyncio.sleep(hold_s)
            await other.commit_transaction()
            return loop.time() - started

        committing = asyncio.create_task(commit_later())
        await read_audit_tail(settings.kafka_bootstrap, topic, 10)
        read_after = loop.time() - started
        committed_after = await committing
        await other.stop()
        return read_after, committed_after

    read_after, committed_after = asyncio.run(scenario())
    assert read_after >= committed_after >= hold_s, "the tail was read while a transaction was in flight"


def _vote(event_id: str):
    from datetime import UTC, datetime

    from keyturn.core import events
    from keyturn.core.principal import Principal, PrincipalKind
    from tests.unit.audit_history import DIGEST

    carol = events.Vote(
        Principal("human:carol", PrincipalKind.HUMAN), events.VoteChoice.APPROVE, DIGEST, datetime.now(UTC), None, "cli"
    )
    return events.VoteRecorded(event_id, "a-1", carol, True, datetime.now(UTC))


def test_records_someone_else_appended_while_no_writer_ran_are_disowned_never_signed(settings) -> None:
    """Anyone who can produce to the audit topic can append a record and hash and link it right;
    only the writer holds the checkpoint key, and it ends every transaction with a checkpoint. A
    restarted writer does not sign what it finds after its last checkpoint: it records those
    records as foreign (``keyturn audit verify`` fails on them), does not count their event ids
    as recorded, and starts even when one of them does not hash right."""
    import dataclasses
    import secrets as random_names

    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from keyturn.audit.stream import read_audit_tail
    from keyturn.audit.writer import AuditWriter
    from keyturn.bus.codec import registry
    from keyturn.core.audit.canonical import record_hash, record_id_for
    from keyturn.core.audit.checkpoint import CheckpointSigner, CheckpointVerifier
    from keyturn.core.audit.verify import ProblemKind, verify

    topic = f"{settings.namespace}.forged-{random_names.token_hex(4)}"
    bootstrap = settings.kafka_bootstrap
    signer = CheckpointSigner(Ed25519PrivateKey.generate())

    def writer() -> AuditWriter:
        return AuditWriter(bootstrap, topic, f"{topic}-chain", lambda n: read_audit_tail(bootstrap, topic, n), signer)

    async def forge(*, hashed_right: bool) -> str:
        last = (await read_audit_log(bootstrap, topic))[-1]
        event_id = f"vote:forged-{random_names.token_hex(3)}"
        forged = dataclasses.replace(
            last,
            sequence=last.sequence + 1,
            prev_hash=last.hash,
            event_id=event_id,
            record_id=record_id_for(event_id),
            event_type="VoteRecorded",
            actor="human:carol",
            checkpoint=None,
            source_topic=f"{settings.namespace}.approvals.votes",
            payload_json='{"approver":"human:carol","choice":"approve"}',
            hash="",
        )
        forged = dataclasses.replace(forged, hash=record_hash(forged) if hashed_right else "0" * 64)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        await producer.send_and_wait(topic, registry().encode("AuditRecord", forged.to_dict()), partition=0)
        await producer.stop()
        return event_id

    async def scenario() -> tuple[list, str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic(topic, 1, 1)])
        await admin.close()
        first = writer()
        await first.start()
        await first.record([(_vote("vote:real-1"), "votes")])
        await first._producer.stop()  # killed: no shutdown checkpoint (each transaction ended with one)
        forged_id = await forge(hashed_right=True)
        second = writer()
        await second.start()  # finds the forged record after its last checkpoint
        assert await second.record([(_vote(forged_id), "votes")]) == 1, "a forged id kept the real event out"
        await second._producer.stop()
        await forge(hashed_right=False)
        third = writer()
        await third.start()  # one record that does not hash right does not stop the audit for good
        await third.record([(_vote("vote:real-2"), "votes")])
        await third.close()
        return await read_audit_log(bootstrap, topic), forged_id

    records, forged_id = asyncio.run(scenario())
    report = verify(records, CheckpointVerifier.from_keys([signer.public_key]), require_checkpoint_at_end=True)
    kinds = [problem.kind for problem in report.problems]
    assert not report.ok and kinds.count(ProblemKind.FOREIGN) == 2 and ProblemKind.EDITED in kinds, report.problems
    assert [r.event_id for r in records].count(forged_id) == 2  # the forged record, and the real event after it
    assert records[-1].is_checkpoint and "vote:real-2" in {r.event_id for r in records}
