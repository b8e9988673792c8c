"""``bus.loop.take_events`` and ``FaustSource``: the stream workers' batches. A batch goes out
when it is full or ``within_s`` after its first event; events are acknowledged only once the
batch was handled; an idle stage waits without waking (faust's own woke every 5 ms, idle or
not); and with batches in flight, a slow one holds up neither the others nor their acks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from keyturn.bus.loop import FaustSource, Stage, run, take_events
from tests.fakes.service_ports import Record, fake_publisher


class Channel:
    """What the stream reads from; take_events only hands it to the passive consumer."""

    def __aiter__(self) -> Channel:
        return self

    async def __anext__(self) -> Any:
        raise StopAsyncIteration


class Stream:
    """The part of a faust stream take_events uses: a processor per event, waits that end early
    when the stream stops, acks. ``feed`` plays the stream's passive consumer."""

    def __init__(self) -> None:
        self.enable_acks = True
        self._processors: list[Any] = []
        self.current_event: Any = None
        self.should_stop = False
        self.acked: list[str] = []
        self.wakeups = 0  # waits that ended with nothing to show: timers firing
        self.log = logging.getLogger("test")
        self.loop = asyncio.get_running_loop()
        self.channel = Channel()

    def add_processor(self, processor: Any) -> None:
        self._processors.append(processor)

    def _enable_passive(self, channel: Any) -> None:
        pass

    async def wait(self, event: asyncio.Event) -> None:
        await event.wait()

    async def wait_for_stopped(self, event: asyncio.Event, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            self.wakeups += 1
        return self.should_stop

    async def ack(self, event: Any) -> None:
        self.acked.append(event)

    async def crash(self, exc: BaseException) -> None:
        raise AssertionError(f"the stream crashed: {exc!r}")

    async def feed(self, *events: str) -> None:
        for event in events:
            self.current_event = event
            for processor in self._processors:
                await processor(event)


async def next_batch(batches: Any, within: float = 2.0) -> tuple[list[str], float]:
    started = time.monotonic()
    batch = await asyncio.wait_for(anext(batches), within)
    return batch, time.monotonic() - started


async def test_an_idle_stage_waits_without_waking_then_hands_over_within_its_window() -> None:
    stream = Stream()
    batches = take_events(stream, 64, 0.05)
    waiting = asyncio.create_task(next_batch(batches))
    await asyncio.sleep(0.5)  # a hundred 5 ms windows of nothing
    assert not waiting.done() and stream.wakeups == 0, "an empty buffer must not wake on a timer"

    await stream.feed("a", "b")
    batch, _ = await waiting
    assert batch == ["a", "b"]
    assert stream.wakeups == 1, "handed over when the window after the first event closed"
    await batches.aclose()


async def test_a_full_batch_goes_at_once_and_holds_the_next_event_until_asked_again() -> None:
    stream = Stream()
    batches = take_events(stream, 3, 10.0)  # a window far longer than the test
    waiting = asyncio.create_task(next_batch(batches))
    await asyncio.sleep(0)
    feeding = asyncio.create_task(stream.feed("a", "b", "c", "d"))
    batch, took = await waiting
    assert batch == ["a", "b", "c"] and took < 1.0, "a full batch does not wait for its window"

    second = asyncio.create_task(next_batch(batches, within=15.0))
    await asyncio.sleep(0.1)
    assert stream.acked == [], "take_events acknowledges nothing: the batch's handler does"
    await feeding
    more = asyncio.create_task(stream.feed("e", "f"))  # fills the batch: held until it is taken
    batch, _ = await second
    assert batch == ["d", "e", "f"], "never more than max_ in a batch; the rest comes next, in order"
    await asyncio.sleep(0.05)
    assert not more.done(), "a full buffer holds the stream until its batch was handed over"
    await batches.aclose()
    await asyncio.wait_for(more, 1.0)
    assert stream.enable_acks and stream._processors == [], "closing restores the stream as it was"


class Event:
    """A faust event as the loop meets it: its message."""

    def __init__(self, key: str, offset: int) -> None:
        self.message = Record("unit.requested", 0, offset, key.encode(), key.encode())

    def __repr__(self) -> str:
        return f"{self.message.key.decode()}@{self.message.offset}"


def offsets(events: list[Any]) -> list[int]:
    return [event.message.offset for event in events]


@contextlib.asynccontextmanager
async def executor_loop(stage: Stage, stream: Stream, batch: int, **options: Any) -> AsyncIterator[None]:
    """``run`` over ``stream`` as the executor runs it, reading the stream when the block starts."""
    running = asyncio.create_task(run(FaustSource(stream, batch=batch, within_s=0.001), stage, **options))
    await asyncio.sleep(0.01)
    try:
        yield
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def test_a_handled_batch_is_acknowledged_and_one_not_yet_handled_is_not() -> None:
    stream = Stream()
    source = FaustSource(stream, batch=2, within_s=0.01)
    batches = source.batches()
    waiting = asyncio.create_task(anext(batches))
    await asyncio.sleep(0.01)  # reading the stream
    feeding = asyncio.create_task(stream.feed(Event("a", 0), Event("b", 1)))  # a full batch holds the feed
    first = await asyncio.wait_for(waiting, 1)
    assert [m.offset for m in first] == [0, 1] and stream.acked == []
    await source.handled(first)
    assert offsets(stream.acked) == [0, 1]
    waiting = asyncio.create_task(anext(batches))
    await asyncio.wait_for(feeding, 1)
    await stream.feed(Event("c", 2))
    second = await asyncio.wait_for(waiting, 1)
    assert [m.offset for m in second] == [2] and offsets(stream.acked) == [0, 1]  # the loop has not handled it
    await batches.aclose()
    assert offsets(stream.acked) == [0, 1], "a batch never handled stays unacknowledged: it comes again"


async def test_batches_in_flight_go_on_past_a_slow_one_and_keep_one_actions_events_in_order() -> None:
    """The executor's loop: a command that runs for minutes holds up only its own action."""
    publisher, _ = fake_publisher("executor")
    stream = Stream()
    slow_may_finish = asyncio.Event()
    handled: list[str] = []

    async def handle(event: bytes, message: Any) -> None:
        if message.offset == 0:
            await slow_may_finish.wait()
        handled.append(f"{event.decode()}@{message.offset}")

    stage = Stage(publisher, (), handle=handle, decode=lambda message: message.value)
    async with executor_loop(stage, stream, 1, in_flight=4, overlap_after_s=0.01):
        await stream.feed(Event("slow", 0))
        for offset, key in enumerate(["b", "c", "slow", "d"], start=1):
            await asyncio.sleep(0.02)
            await stream.feed(Event(key, offset))
        await asyncio.sleep(0.2)
        assert handled == ["b@1", "c@2", "d@4"], "the slow batch held up neither the others nor its action's next"
        assert offsets(stream.acked) == [1, 2, 4], "each acknowledged once handled; faust commits up to offset 0"

        slow_may_finish.set()
        await asyncio.sleep(0.1)
        assert handled[3:] == ["slow@0", "slow@3"], "one action's events in the order they came"
        assert sorted(offsets(stream.acked)) == [0, 1, 2, 3, 4]


async def test_in_flight_batches_are_bounded() -> None:
    publisher, _ = fake_publisher("executor")
    stream = Stream()
    release = asyncio.Event()
    started: list[int] = []

    async def handle(event: bytes, message: Any) -> None:
        started.append(message.offset)
        await release.wait()

    stage = Stage(publisher, (), handle=handle, decode=lambda message: message.value)
    async with executor_loop(stage, stream, 1, in_flight=2, overlap_after_s=0.01):
        feeding = asyncio.create_task(stream.feed(*(Event(key, offset) for offset, key in enumerate("abcd"))))
        await asyncio.sleep(0.2)
        assert started == [0, 1], "two batches in hand, the third waits for a slot"
        release.set()
        await asyncio.wait_for(feeding, 1.0)
        await asyncio.sleep(0.1)
        assert started == [0, 1, 2, 3] and sorted(offsets(stream.acked)) == [0, 1, 2, 3]


async def test_a_batch_that_ends_soon_holds_up_the_next_so_what_arrives_meanwhile_goes_together() -> None:
    """Taken at once, batches under load were smaller, and each costs statements of its own."""
    publisher, _ = fake_publisher("executor")
    stream = Stream()
    batches: list[list[int]] = []
    in_hand: list[int] = []

    async def handle_many(decoded: list[tuple[Any, Any]]) -> None:
        batches.append([message.offset for _, message in decoded])
        in_hand.append(len(in_hand) + 1)
        await asyncio.sleep(0.1)
        in_hand.remove(max(in_hand))

    async def handle(event: bytes, message: Any) -> None:
        raise AssertionError("handled as a batch")

    stage = Stage(publisher, (), handle=handle, handle_many=handle_many, decode=lambda message: message.value)
    async with executor_loop(stage, stream, 64, in_flight=8):
        await stream.feed(Event("a", 0))
        await asyncio.sleep(0.02)  # a is in hand
        await stream.feed(Event("b", 1), Event("c", 2), Event("d", 3))
        in_hand_at_once = []
        for _ in range(40):
            in_hand_at_once.append(len(in_hand))
            await asyncio.sleep(0.01)
    assert batches == [[0], [1, 2, 3]]
    assert max(in_hand_at_once) == 1, "b, c and d waited for a, which ended well within the overlap"
