"""The status table records a whole batch of lifecycle events at once, with the same rules as one
by one: the state only moves forward, history stays in time order, redeliveries and
contradictions change nothing, and events of actions this intake never accepted are skipped."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from keyturn.config import Settings
from keyturn.core.events import ActionDecided, ActionExecuted, DecisionOutcome, ExecutionOutcome
from keyturn.db import open_pool, schema_name
from keyturn.intake.status import change_of
from keyturn.intake.store import DDL, ActionStore, LifecycleChange
from tests.unit.service_events import allowed

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def event(cls, outcome):
    """A lifecycle event carrying only the outcome the lifecycle rules read."""

    def init(self, value):
        object.__setattr__(self, "outcome", value)

    return type(cls.__name__, (cls,), {"__init__": init})(outcome)


def decided(
    action_id: str, outcome: DecisionOutcome, seconds: int, reasons: list[str] | None = None
) -> LifecycleChange:
    entry = {"event": "ActionDecided", "at": (T0 + timedelta(seconds=seconds)).isoformat()}
    return LifecycleChange(action_id, event(ActionDecided, outcome), entry, reasons)


def executed(action_id: str, outcome: ExecutionOutcome, seconds: int, result: object = None) -> LifecycleChange:
    entry = {"event": "ActionExecuted", "at": (T0 + timedelta(seconds=seconds)).isoformat()}
    return LifecycleChange(action_id, event(ActionExecuted, outcome), entry, None, result)


@pytest.fixture
async def store(endpoints) -> AsyncIterator[ActionStore]:
    settings = Settings(
        kafka_bootstrap=endpoints.kafka_bootstrap,
        opa_url=endpoints.opa_url,
        database_url=endpoints.database_url,
        namespace=f"kt{secrets.token_hex(4)}",
    )
    pool = await open_pool(settings.database_url, DDL, schema=schema_name(settings.namespace), max_size=2)
    try:
        yield ActionStore(pool)
    finally:
        async with pool.connection() as conn:
            await conn.execute(f'DROP SCHEMA "{settings.namespace}" CASCADE')
        await pool.close()


async def accepted(store: ActionStore) -> str:
    action_id = f"action-{secrets.token_hex(4)}"
    await store.insert_requested(
        action_id=action_id,
        requester="agent:reporter",
        principals=["agent:reporter"],
        idempotency_key=None,
        payload_digest="sha256:x",
        action="read.table",
        resource="postgres://staging/a/b",
        requested_event=b"event",
        at=T0,
    )
    return action_id


def states(stored) -> list[str]:
    return [entry["state"] for entry in stored.history]


async def test_a_batch_with_the_execution_before_its_decision_ends_in_order(store: ActionStore) -> None:
    action_id = await accepted(store)
    await store.apply_many(
        [
            executed(action_id, ExecutionOutcome.SUCCEEDED, 3, {"rows": 1}),
            decided(action_id, DecisionOutcome.ALLOWED, 1, ["allowed by rule x"]),
        ]
    )
    stored = await store.get(action_id)
    assert stored.state.value == "succeeded"
    assert states(stored) == ["requested", "allowed", "succeeded"]
    assert stored.result == {"rows": 1}
    assert stored.reasons == []  # the decision came late: it joined the history without moving the state


async def test_a_redelivered_batch_changes_nothing(store: ActionStore) -> None:
    action_id = await accepted(store)
    batch = [decided(action_id, DecisionOutcome.ALLOWED, 1), executed(action_id, ExecutionOutcome.SUCCEEDED, 2)]
    await store.apply_many(batch)
    first = await store.get(action_id)
    await store.apply_many(batch + batch)
    assert await store.get(action_id) == first


async def test_an_execution_after_a_denial_in_the_same_batch_is_ignored(store: ActionStore) -> None:
    action_id = await accepted(store)
    await store.apply_many(
        [
            decided(action_id, DecisionOutcome.DENIED, 1, ["production secrets are never deleted"]),
            executed(action_id, ExecutionOutcome.SUCCEEDED, 2),
        ]
    )
    stored = await store.get(action_id)
    assert stored.state.value == "denied"
    assert states(stored) == ["requested", "denied"]
    assert stored.reasons == ["production secrets are never deleted"]


async def test_many_actions_in_one_batch_and_unknown_ones_skipped(store: ActionStore) -> None:
    ids = [await accepted(store) for _ in range(30)]
    batch = [decided(a, DecisionOutcome.ALLOWED, 1) for a in ids] + [decided("not-ours", DecisionOutcome.ALLOWED, 1)]
    batch += [executed(a, ExecutionOutcome.FAILED, 2) for a in ids[::2]]
    after = await store.apply_many(batch)
    assert "not-ours" not in after
    for number, action_id in enumerate(ids):
        stored = await store.get(action_id)
        assert stored.state.value == ("failed" if number % 2 == 0 else "allowed"), action_id


async def unpublished(store: ActionStore) -> set[str]:
    return {stored.action_id for stored in await store.unpublished(older_than_s=0)}


async def unpublished_while_marking(store: ActionStore, within_s: float) -> set[str]:
    """What is still unmarked once the marks due within ``within_s`` had their chance."""
    for _ in range(int(within_s * 10)):
        if not await unpublished(store):
            break
        await asyncio.sleep(0.1)
    return await unpublished(store)


async def test_a_decision_marks_its_request_published_and_a_late_mark_covers_the_rest(store: ActionStore) -> None:
    decided_one, waiting_one = await accepted(store), await accepted(store)
    store.mark_after_s = 2.0
    await store.mark_published(decided_one)
    await store.mark_published(waiting_one)
    await store.apply_many([decided(decided_one, DecisionOutcome.ALLOWED, 1)])
    # the decision proves the request was read: its row is marked with the status, not by a write of its own
    assert await unpublished(store) == {waiting_one}
    marking = asyncio.create_task(store.keep_marking())
    try:
        await asyncio.sleep(0.2)
        assert await unpublished(store) == {waiting_one}, "marked before mark_after_s passed"
        assert await unpublished_while_marking(store, 10.0) == set(), "the late mark was never written"
    finally:
        marking.cancel()


async def test_marks_still_queued_are_written_at_shutdown(store: ActionStore) -> None:
    action_id = await accepted(store)
    store.mark_after_s = 60.0
    await store.mark_published(action_id)
    await store.flush_marks()  # what the intake does when it stops
    assert await unpublished(store) == set()


async def test_a_republished_event_is_marked_at_the_next_beat_not_after_the_delay(store: ActionStore) -> None:
    action_id = await accepted(store)
    store.mark_after_s = 60.0  # a first publish would wait a minute for its status to mark it
    await store.mark_published(action_id, at_once=True)  # the sweep, or a retried request, sent it again
    marking = asyncio.create_task(store.keep_marking())
    try:
        assert await unpublished_while_marking(store, 5.0) == set(), "a republished event's mark waited for the delay"
    finally:
        marking.cancel()


async def test_text_postgresql_cannot_hold_is_stored_replaced_and_the_batch_goes_through(store: ActionStore) -> None:
    # an approver's reason or a command's answer may hold a NUL or a lone surrogate: before,
    # the batch's statement failed on every retry and no requester's status moved again
    odd, fine = await accepted(store), await accepted(store)
    denial = dataclasses.replace(allowed(odd), outcome=DecisionOutcome.DENIED, reasons=("no\u0000pe \ud800",))
    await store.apply_many([change_of(denial), change_of(allowed(fine))], patience_s=2.0)
    stored = await store.get(odd)
    assert stored.state.value == "denied"
    assert stored.reasons == ["no\ufffdpe \ufffd"]
    assert (await store.get(fine)).state.value == "allowed"
