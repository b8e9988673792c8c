"""The desk on a real PostgreSQL, without the services: which decisions and executions leave rows.

Most decisions are allowed or denied outright and name no webhook; the desk has nothing to do
for them, so it must write nothing (bench/README.md: one transaction per event was the approval
service's cost under load). What the requester notices is the other side: a webhook they asked
for still gets every state, including an execution the desk saw before its decision.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from keyturn.approval.desk import ApprovalDesk, ApprovalNotOpenYet
from keyturn.approval.store import DDL, OUTBOX_LOCK_WAIT_MS, ApprovalStore
from keyturn.bus.codec import registry
from keyturn.bus.topics import Topics
from keyturn.core import events
from keyturn.core.principal import Principal, PrincipalKind
from keyturn.db import open_pool, schema_name
from keyturn.policy.opa import OpaClient

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 4, 9, 0, tzinfo=UTC)
REQUESTER = Principal("agent:reporter", PrincipalKind.AGENT, ("human:alice",))


def decided(outcome: events.DecisionOutcome, callback_url: str | None = None) -> events.ActionDecided:
    action_id = str(uuid.uuid4())
    request = events.ActionRequested(
        event_id=f"requested:{action_id}",
        action_id=action_id,
        action="db.table.read",
        resource="sql://staging/reports",
        parameters_json="{}",
        reason="r",
        requester=REQUESTER,
        payload_digest=events.Digest.of_json({}),
        requested_at=NOW,
        callback_url=callback_url,
    )
    return events.ActionDecided(
        event_id=f"decided:{action_id}",
        action_id=action_id,
        outcome=outcome,
        provenance=events.Provenance("r", "d", events.Digest.of_json({}), NOW),
        decided_at=NOW,
        request=request,
    )


def executed(action_id: str) -> events.ActionExecuted:
    return events.ActionExecuted(
        event_id=f"executed:{action_id}",
        action_id=action_id,
        outcome=events.ExecutionOutcome.SUCCEEDED,
        plugin="sql",
        payload_digest=events.Digest.of_json({}),
        finished_at=NOW,
    )


async def with_desk(settings, work) -> list[tuple[str, str]]:
    """Run ``work(desk)`` on a desk of a fresh namespace; every (action, state) callback row it left."""
    pool = await open_pool(settings.database_url, DDL, schema=schema_name(f"kt{uuid.uuid4().hex[:8]}"))
    opa = OpaClient(settings.opa_url)
    try:
        await work(ApprovalDesk(ApprovalStore(pool), opa, Topics(settings.namespace, settings.partitions), send=None))
        async with pool.connection() as conn:
            rows = await (await conn.execute("SELECT action_id, state FROM approval_callbacks ORDER BY id")).fetchall()
        return [(r[0], r[1]) for r in rows]
    finally:
        await opa.close()
        await pool.close()


def test_decisions_and_executions_without_a_webhook_leave_nothing_behind(settings) -> None:
    quiet = [decided(events.DecisionOutcome.ALLOWED), decided(events.DecisionOutcome.DENIED)]

    async def work(desk: ApprovalDesk) -> None:
        for decision in quiet:
            assert not desk.concerns(decision)
            assert await desk.take_decision(decision, b"") is None
        await desk.note_executed(executed(quiet[0].action_id))

    assert asyncio.run(with_desk(settings, work)) == []


def test_a_requested_webhook_still_hears_every_state_even_an_execution_seen_before_its_decision(settings) -> None:
    asked = decided(events.DecisionOutcome.ALLOWED, "https://agent.example.internal/hook")
    early = decided(events.DecisionOutcome.ALLOWED, "https://agent.example.internal/hook")

    async def work(desk: ApprovalDesk) -> None:
        assert desk.concerns(asked)
        await desk.take_decision(asked, b"")
        await desk.note_executed(executed(asked.action_id))
        await desk.note_executed(executed(early.action_id))  # the decision is still on its way
        await desk.take_decision(early, b"")

    rows = asyncio.run(with_desk(settings, work))
    assert sorted(rows) == sorted(
        [
            (asked.action_id, "allowed"),
            (asked.action_id, "succeeded"),
            (early.action_id, "succeeded"),
            (early.action_id, "allowed"),
        ]
    )


def test_a_vote_racing_the_opening_is_early_or_judged_never_an_error(settings) -> None:
    """The vote reads the approval under the row lock the opening takes: on PostgreSQL it either
    comes before (``ApprovalNotOpenYet``, nothing recorded) or after (judged and recorded)."""
    sent: list[tuple[str, bytes, bytes]] = []

    async def send(topic: str, key: bytes, value: bytes) -> None:
        sent.append((topic, key, value))

    async def work() -> list[str]:
        pool = await open_pool(settings.database_url, DDL, schema=schema_name(f"kt{uuid.uuid4().hex[:8]}"))
        opa = OpaClient(settings.opa_url)
        desk = ApprovalDesk(ApprovalStore(pool), opa, Topics(settings.namespace, settings.partitions), send)
        answers = []
        try:
            for _ in range(6):
                decision = needing_approval()

                async def answer(decision: events.ActionDecided = decision) -> str:
                    try:
                        result = await desk.vote(
                            decision.action_id,
                            Principal("human:carol", PrincipalKind.HUMAN),
                            "approve",
                            str(decision.request.payload_digest),
                            None,
                            "cli",
                        )
                    except ApprovalNotOpenYet:
                        return "early"
                    return "judged" if result.refusal != "UnknownAction" else "unknown"

                _, said = await asyncio.gather(
                    desk.take_decision(decision, registry().encode_event(decision)), answer()
                )
                answers.append(said)
                # opened either way (its requester may see it)
                assert await desk.approval(decision.request.requester, decision.action_id) is not None
        finally:
            await opa.close()
            await pool.close()
        return answers

    answers = asyncio.run(work())
    assert set(answers) <= {"early", "judged"}, answers
    recorded = [registry().decode_event(value) for _, _, value in sent]
    assert len([e for e in recorded if isinstance(e, events.VoteRecorded)]) == answers.count("judged")


def needing_approval() -> events.ActionDecided:
    plain = decided(events.DecisionOutcome.NEEDS_APPROVAL)
    request = replace(plain.request, action="iam.role.grant", resource="iam://staging/roles/analyst")
    return replace(
        plain,
        request=request,
        decided_at=datetime.now(UTC),
        approvals=events.ApprovalRequirement(
            groups=(events.GroupRequirement("security", 1),), pending_ttl_s=600, execution_window_s=60
        ),
    )


def test_two_approval_instances_on_one_namespace_fire_a_due_timer_once(settings) -> None:
    """The clock (expiry, reminders, escalation) is kept by one instance at a time: while one
    holds it the other skips its tick, and two ticking together expire a due approval once."""

    async def scenario() -> tuple[bool, str, list[bool], int, str]:
        schema = schema_name(f"kt{uuid.uuid4().hex[:8]}")
        pools = [await open_pool(settings.database_url, DDL, schema=schema) for _ in range(2)]
        opa = OpaClient(settings.opa_url)
        topics = Topics(settings.namespace, settings.partitions)
        first, second = (ApprovalDesk(ApprovalStore(pool), opa, topics, send=None) for pool in pools)
        try:
            due = replace(needing_approval(), decided_at=datetime(2026, 3, 4, 8, 0, tzinfo=UTC))  # TTL long over
            await first.take_decision(due, registry().encode_event(due))
            async with first.store.clock_lease() as held:
                skipped = await second.keep_clock()  # the other instance keeps the clock now
                status_while_held = (await second.store.read(due.action_id)).status
            ticks = await asyncio.gather(first.keep_clock(), second.keep_clock())
            async with pools[0].connection() as conn:
                resolved = await (
                    await conn.execute("SELECT count(*) FROM approval_outbox WHERE topic = %s", (topics.resolved,))
                ).fetchone()
            return (
                held and not skipped,
                status_while_held,
                list(ticks),
                resolved[0],
                (await first.store.read(due.action_id)).status,
            )
        finally:
            await opa.close()
            for pool in pools:
                await pool.close()

    one_holder, status_while_held, ticks, resolutions, status = asyncio.run(scenario())
    assert one_holder
    assert status_while_held == "pending"  # the skipping instance did nothing
    assert True in ticks
    assert (resolutions, status) == (1, "expired")


def test_a_drain_waits_for_the_drain_before_it_instead_of_leaving_its_events_to_the_next_tick(settings) -> None:
    """Drains take turns (one lock keeps each action's events in order). One that finds the lock
    held waits for it, so what its caller just committed goes out now, not a tick later; it gives
    up only after ``OUTBOX_LOCK_WAIT_MS`` (another drain held up by the broker), and the rows stay."""

    async def work() -> None:
        pool = await open_pool(settings.database_url, DDL, schema=schema_name(f"kt{uuid.uuid4().hex[:8]}"))
        store = ApprovalStore(pool)
        published: list[bytes] = []

        async def publish(topic: str, key: bytes, value: bytes) -> None:
            published.append(value)

        async def queued(value: bytes) -> None:
            async with pool.connection() as conn, conn.transaction():
                await store.enqueue(conn, "t", "k", value)

        try:
            for held_s, sent in ((0.3, [b"one"]), (OUTBOX_LOCK_WAIT_MS / 1000 + 0.5, [])):
                published.clear()
                await queued(b"one")
                async with pool.connection() as other, other.transaction():  # another drain, busy
                    await other.execute("SELECT pg_advisory_xact_lock(hashtext('approval_outbox'))")
                    draining = asyncio.create_task(store.drain_outbox(publish))
                    await asyncio.sleep(held_s)
                    assert published == []  # not while the other holds the turn
                assert await draining == len(sent) and published == sent
            assert await store.drain_outbox(publish) == 1 and published == [b"one"]  # the tick's drain
        finally:
            await pool.close()

    asyncio.run(work())
