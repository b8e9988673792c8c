"""``bus.loop.KafkaSource`` as the stream workers run it (``follow_in_group``), over an in-memory
consumer: batches in flight overlap past a slow one while one action's events stay in order,
a commit never passes a batch still in hand, a rebalance lets what is in hand finish (up to its
patience) before the partitions move, and commits are paced with a timer for what is left."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import TopicPartition

from keyturn.bus.loop import KafkaSource, Pace, Stage, run
from tests.fakes.service_ports import MemoryConsumer, fake_publisher

TOPIC = "unit.decided"


def decoded_as_key(handle: Any, **options: Any) -> Stage:
    publisher, _ = fake_publisher("executor")
    return Stage(publisher, (), handle=handle, decode=lambda message: message.value, **options)


@contextlib.asynccontextmanager
async def running(source: KafkaSource, stage: Stage, **options: Any) -> AsyncIterator[None]:
    task = asyncio.create_task(run(source, stage, **options))
    await asyncio.sleep(0.01)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_batches_in_flight_go_on_past_a_slow_one_and_the_commit_stops_at_it() -> None:
    """The executor's loop: a command that runs for minutes holds up only its own action, and
    a crash meanwhile reads it (and what came after) again."""
    consumer = MemoryConsumer(TOPIC)
    slow_may_finish = asyncio.Event()
    handled: list[str] = []

    async def handle(event: bytes, message: Any) -> None:
        if message.offset == 0:
            await slow_may_finish.wait()
        handled.append(f"{event.decode()}@{message.offset}")

    source = KafkaSource(consumer, max_records=1, wait_ms=50)
    async with running(source, decoded_as_key(handle), in_flight=4, overlap_after_s=0.01):
        consumer.feed(("slow", 0))
        for offset, key in enumerate(["b", "c", "slow", "d"], start=1):
            await asyncio.sleep(0.02)
            consumer.feed((key, offset))
        await asyncio.sleep(0.2)
        assert handled == ["b@1", "c@2", "d@4"], "the slow batch held up neither the others nor its action's next"
        assert consumer.committed() is None, "nothing committed past offset 0 while it is in hand"

        slow_may_finish.set()
        await asyncio.sleep(0.1)
        assert handled[3:] == ["slow@0", "slow@3"], "one action's events in the order they came"
        assert consumer.committed() == 5, "once it was handled, the commit covers everything after it too"


async def test_in_flight_batches_are_bounded() -> None:
    consumer = MemoryConsumer(TOPIC)
    release = asyncio.Event()
    started: list[int] = []

    async def handle(event: bytes, message: Any) -> None:
        started.append(message.offset)
        await release.wait()

    source = KafkaSource(consumer, max_records=1, wait_ms=50)
    async with running(source, decoded_as_key(handle), in_flight=2, overlap_after_s=0.01):
        consumer.feed(*((key, offset) for offset, key in enumerate("abcd")))
        await asyncio.sleep(0.2)
        assert started == [0, 1], "two batches in hand, the third waits for a slot"
        release.set()
        await asyncio.sleep(0.2)
        assert started == [0, 1, 2, 3] and consumer.committed() == 4


async def test_a_batch_that_ends_soon_holds_up_the_next_so_what_arrives_meanwhile_goes_together() -> None:
    """Taken at once, batches under load were smaller, and each costs statements of its own."""
    consumer = MemoryConsumer(TOPIC)
    batches: list[list[int]] = []
    in_hand: list[int] = []

    async def handle_many(decoded: list[tuple[Any, Any]]) -> None:
        batches.append([message.offset for _, message in decoded])
        in_hand.append(len(in_hand) + 1)
        await asyncio.sleep(0.1)
        in_hand.remove(max(in_hand))

    async def handle(event: bytes, message: Any) -> None:
        raise AssertionError("handled as a batch")

    source = KafkaSource(consumer, max_records=64, wait_ms=50)
    async with running(source, decoded_as_key(handle, handle_many=handle_many), in_flight=8):
        consumer.feed(("a", 0))
        await asyncio.sleep(0.02)  # a is in hand
        consumer.feed(("b", 1), ("c", 2), ("d", 3))
        in_hand_at_once = []
        for _ in range(40):
            in_hand_at_once.append(len(in_hand))
            await asyncio.sleep(0.01)
    assert batches == [[0], [1, 2, 3]]
    assert max(in_hand_at_once) == 1, "b, c and d waited for a, which ended well within the overlap"


async def test_a_rebalance_lets_a_batch_in_hand_finish_and_commit_before_its_partition_moves() -> None:
    consumer = MemoryConsumer(TOPIC)
    source = KafkaSource(consumer, wait_ms=50)
    consumer.feed(("a", 0), ("b", 1))
    batch = await anext(source.batches())

    async def finish_soon() -> None:
        await asyncio.sleep(0.05)
        await source.handled(batch)

    finishing = asyncio.create_task(finish_soon())
    await source.give_up([TopicPartition(TOPIC, 0)], patience_s=5)
    await finishing
    assert consumer.committed() == 2, "the rebalance waited for the batch and its commit"


async def test_a_batch_still_in_hand_when_the_patience_ends_commits_nothing_for_the_moved_partition() -> None:
    consumer = MemoryConsumer(TOPIC)
    source = KafkaSource(consumer, wait_ms=50)
    consumer.feed(("a", 0), ("b", 1))
    batches = source.batches()
    stuck = await anext(batches)
    await source.give_up([TopicPartition(TOPIC, 0)], patience_s=0.05)
    await source.handled(stuck)  # ends after its partition moved on: its next owner reads it again
    assert consumer.commits == []

    # the partition comes back: it resumes from the group's offset, tracked afresh
    consumer.feed(("a", 0))
    again = await anext(batches)
    await source.handled(again)
    assert consumer.committed() == 1


async def test_commits_are_paced_and_a_timer_commits_what_is_left() -> None:
    consumer = MemoryConsumer(TOPIC)
    source = KafkaSource(consumer, wait_ms=50, commit_every_s=0.2)
    batches = source.batches()
    for offset in range(3):
        consumer.feed(("k", offset))
        await source.handled(await anext(batches))
    assert consumer.commits == [{(TOPIC, 0): 1}], "the first at once, the next two wait for the pace"
    await asyncio.sleep(0.3)
    assert consumer.commits[1:] == [{(TOPIC, 0): 3}], "one timed commit for what was left"

    consumer.feed(("k", 3))
    await source.handled(await anext(batches))
    await source.close()  # a member stopping commits what is due, at once
    assert consumer.committed() == 4
    await asyncio.sleep(0.3)
    assert len(consumer.commits) == 3, "no timer fires after close"


async def test_a_trickle_is_handed_on_at_once_and_a_pace_that_fills_the_window_gathers() -> None:
    consumer = MemoryConsumer(TOPIC)
    source = KafkaSource(consumer, max_records=500, wait_ms=1000, gather_ms=400)
    batches = source.batches()
    consumer.feed(("a1", 0))  # one record, the first in a second: nothing more is expected
    started = asyncio.get_running_loop().time()
    assert [m.offset for m in await asyncio.wait_for(anext(batches), 1)] == [0]
    assert asyncio.get_running_loop().time() - started < 0.2  # not the 400 ms window
    consumer.feed(*((f"a{i}", i) for i in range(1, 11)))  # ten more: 11 a second, 4.4 in a window

    async def later() -> None:
        await asyncio.sleep(0.1)
        consumer.feed(("b", 11))

    feeding = asyncio.create_task(later())
    gathered = await asyncio.wait_for(anext(batches), 2)
    await feeding
    assert [m.offset for m in gathered] == list(range(1, 12))  # the late one joined the batch
    await batches.aclose()


def test_the_pace_counts_the_last_second_only() -> None:
    pace = Pace()
    pace.add(10.0, 30)
    pace.add(10.5, 20)
    assert pace.per_second(10.6) == 50
    assert pace.per_second(11.2) == 20  # the first 30 are more than a second old
    assert pace.per_second(12.0) == 0
