"""The audit worker survives being killed, stopped and doubled: one record per event, a chain that verifies."""

from __future__ import annotations

import asyncio
import subprocess
import sys
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
    with log_path.open("ab") as log:
        second = subprocess.Popen(
            [sys.executable, "-m", "keyturn.cli", "serve", "audit"],
            env=settings_env(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )
    try:
        assert eventually(lambda: "audit chain resumed" in log_path.read_text(errors="replace"), timeout=60)
        agent = Agent(settings, "agent:fencing-probe", ("human:alice",))
        # Enough actions that some land on partitions the first worker still holds.
        submitted = {agent.submit_ok("read.table", f"postgres://staging/analytics/f{n}") for n in range(12)}
        assert eventually(lambda: first.poll() is not None, timeout=120), "the fenced worker kept running"
        assert first.returncode == 70
        assert "another audit worker may have taken over" in (services.log_dir / "audit.log").read_text(
            errors="replace"
        )
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
