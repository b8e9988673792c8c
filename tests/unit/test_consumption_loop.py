"""The one consumption loop (bus.loop), with an in-memory source and broker: order per key,
transient faults waited out, undecodable input dead-lettered by its owner only, and a
non-transient failure dead-lettered and handed to the stage to end the action."""

from __future__ import annotations

import asyncio
import functools

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaConnectionError

from keyturn.bus import loop
from keyturn.bus.codec import registry
from keyturn.bus.loop import Stage, run
from keyturn.core.events import ActionRequested, DeadLetter
from keyturn.faults import until_done
from tests.fakes.service_ports import ListSource, Record, fake_publisher
from tests.unit.service_events import requested


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(loop, "until_done", functools.partial(until_done, first_wait_s=0.001, max_wait_s=0.002))


def record(topic: str, offset: int, event=None, *, key: str | None = None, value: bytes | None = None) -> Record:
    value = registry().encode_event(event) if event is not None else value
    return Record(topic, 0, offset, (key or (event.action_id if event is not None else "k")).encode(), value)


def letters(send) -> list[DeadLetter]:
    return [e for e in send.events("unit.dlq") if isinstance(e, DeadLetter)]


async def test_events_of_one_key_are_handled_in_order_while_other_keys_go_on() -> None:
    publisher, _ = fake_publisher("policy")
    topic = publisher.topics.requested
    batch = [
        record(topic, 0, requested("a1")),
        record(topic, 1, requested("b1"), key="b"),
        record(topic, 2, requested("a1"), key="a1"),
        record(topic, 3, requested("b2"), key="b"),
    ]
    batch[0].key = batch[2].key = b"a"
    seen: list[tuple[str, int]] = []
    first_a_may_finish = asyncio.Event()

    async def handle(event: ActionRequested, message) -> None:
        if message.offset == 0:
            await first_a_may_finish.wait()  # the key "a" is stuck on its first event...
        seen.append((message.key.decode(), message.offset))
        if message.offset == 3:
            first_a_may_finish.set()  # ...while key "b" finished both of its events

    source = ListSource([batch])
    await asyncio.wait_for(run(source, Stage(publisher, (ActionRequested,), handle=handle)), 1)
    assert [o for k, o in seen if k == "a"] == [0, 2]
    assert [o for k, o in seen if k == "b"] == [1, 3]
    assert seen.index(("b", 3)) < seen.index(("a", 0))
    assert source.committed == [batch]


async def test_a_transient_fault_is_waited_out_and_the_batch_committed_only_after_it_passed() -> None:
    publisher, _ = fake_publisher("policy")
    batch = [record(publisher.topics.requested, 0, requested("a1"))]
    attempts: list[int] = []
    source = ListSource([batch])

    async def handle(event, message) -> None:
        attempts.append(len(source.committed))
        if len(attempts) < 3:
            raise KafkaConnectionError("broker restarting")

    await asyncio.wait_for(run(source, Stage(publisher, (ActionRequested,), handle=handle)), 1)
    assert attempts == [0, 0, 0]  # never committed while it was failing
    assert source.committed == [batch]


async def test_a_fault_that_never_passes_keeps_the_batch_uncommitted() -> None:
    publisher, _ = fake_publisher("policy")
    source = ListSource([[record(publisher.topics.requested, 0, requested("a1"))]])

    async def handle(event, message) -> None:
        raise KafkaConnectionError("broker away")

    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(run(source, Stage(publisher, (ActionRequested,), handle=handle)), 0.05)
    assert source.committed == []


async def test_undecodable_input_is_dead_lettered_by_its_topics_owner_only() -> None:
    garbage = b"\x00not avro"
    owner, owner_send = fake_publisher("policy")  # owns <ns>.actions.requested
    reader, reader_send = fake_publisher("audit")
    handled: list[object] = []

    async def handle(event, message) -> None:
        handled.append(event)

    for publisher in (owner, reader):
        source = ListSource([[record(publisher.topics.requested, 7, value=garbage)]])
        await run(source, Stage(publisher, (ActionRequested,), handle=handle))
        assert len(source.committed) == 1
    assert handled == []
    [letter] = letters(owner_send)
    assert (letter.source_topic, letter.offset, letter.service) == ("unit.actions.requested", 7, "policy")
    assert garbage not in registry().encode_event(letter)
    assert letters(reader_send) == []


async def test_an_event_of_a_type_that_does_not_belong_on_the_topic_is_dead_lettered() -> None:
    publisher, send = fake_publisher("executor")  # owns <ns>.actions.decided, which carries decisions only
    source = ListSource([[record(publisher.topics.decided, 0, requested("a1"))]])

    async def handle(event, message) -> None:
        raise AssertionError("a request is not a decision")

    from keyturn.core.events import ActionDecided

    await run(source, Stage(publisher, (ActionDecided,), handle=handle))
    assert [letter.error_type for letter in letters(send)] == ["unexpected_type"]


async def test_a_non_transient_failure_is_dead_lettered_and_the_stage_ends_the_action() -> None:
    publisher, send = fake_publisher("policy")
    batch = [
        record(publisher.topics.requested, 0, requested("a1")),
        record(publisher.topics.requested, 1, requested("a2")),
    ]
    ended: list[tuple[str, str]] = []

    async def handle(event, message) -> None:
        if event.action_id == "a1":
            raise ValueError("a bug")

    async def on_failure(event, message, exc) -> None:
        ended.append((event.action_id, str(exc)))

    source = ListSource([batch])
    await run(source, Stage(publisher, (ActionRequested,), handle=handle, on_failure=on_failure))
    [letter] = letters(send)
    assert letter.error_type == "handler_failed" and letter.offset == 0
    assert letter.event_id.startswith("dlq:policy:")  # the service's own record (by_service)
    assert ended == [("a1", "a bug")]
    assert source.committed == [batch]


async def test_a_batch_stage_gets_the_decoded_batch_in_arrival_order_once() -> None:
    publisher, _ = fake_publisher("audit")
    topic = publisher.topics.requested
    batch = [record(topic, i, requested(f"a{i % 2}")) for i in range(5)]
    batch.insert(2, record(topic, 99, value=b"garbage"))  # not the audit's to dead-letter: skipped
    got: list[list[int]] = []

    async def chain(events) -> None:
        got.append([message.offset for _, message in events])

    source = ListSource([batch])
    await run(source, Stage(publisher, (ActionRequested,), handle_batch=chain))
    assert got == [[0, 1, 2, 3, 4]]
    assert source.committed == [batch]


def test_a_stage_handles_one_by_one_or_in_batches_not_both() -> None:
    publisher, _ = fake_publisher("audit")

    async def handle(*_): ...

    with pytest.raises(ValueError):
        Stage(publisher, handle=handle, handle_batch=handle)
    with pytest.raises(ValueError):
        Stage(publisher)


class _RebalancedConsumer:
    """A consumer whose partitions a rebalance took: its commit fails as aiokafka's does."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.commits = 0

    async def commit(self, offsets=None) -> None:
        self.commits += 1
        raise self.error


@pytest.mark.parametrize("error", [CommitFailedError("rebalanced"), IllegalStateError("No partitions assigned")])
async def test_a_commit_lost_to_a_rebalance_leaves_the_batch_to_its_next_owner(error: Exception) -> None:
    committed: list[dict] = []
    consumer = _RebalancedConsumer(error)
    source = loop.KafkaSource(consumer, after_commit=committed.append)
    batch = [Record("unit.actions.requested", 3, 7, b"k", b"v")]
    await source.handled(batch)  # does not raise: the consumer goes on and rejoins
    assert consumer.commits == 1
    assert committed == [], "nothing was committed, so nothing may be treated as committed"


class _CommittingConsumer:
    def __init__(self) -> None:
        self.commits: list[dict] = []

    async def commit(self, offsets=None) -> None:
        self.commits.append(offsets)


async def test_a_handled_batch_commits_only_the_partitions_it_came_from_each_past_its_last_record() -> None:
    committed: list[dict] = []
    consumer = _CommittingConsumer()
    source = loop.KafkaSource(consumer, after_commit=committed.append)
    batch = [
        Record("unit.actions.decided", 3, 7, b"k", b"v"),
        Record("unit.actions.executed", 0, 40, b"k", b"v"),
        Record("unit.actions.decided", 3, 9, b"k", b"v"),
        Record("unit.actions.decided", 3, 8, b"k", b"v"),
    ]
    await source.handled(batch)
    # a bare commit() would write every assigned partition's position: a broker record each
    assert consumer.commits == [
        {TopicPartition("unit.actions.decided", 3): 10, TopicPartition("unit.actions.executed", 0): 41}
    ]
    assert committed == [{("unit.actions.decided", 3): 10, ("unit.actions.executed", 0): 41}]


async def test_a_large_record_is_decoded_off_the_event_loop_and_a_small_one_on_it() -> None:
    import threading

    publisher, _ = fake_publisher("intake")
    topic = publisher.topics.submissions
    small, large = record(topic, 0, value=b"x"), record(topic, 1, value=b"x" * loop.DECODE_IN_THREAD_BYTES)
    decoded_in: dict[int, str] = {}

    def decode(message):  # a decoder that validates and masks what it reads may take seconds
        decoded_in[message.offset] = threading.current_thread().name
        return message.offset

    async def handle(_, __) -> None: ...

    await run(ListSource([[small, large]]), Stage(publisher, handle=handle, decode=decode))
    assert decoded_in[0] == threading.current_thread().name != decoded_in[1]
