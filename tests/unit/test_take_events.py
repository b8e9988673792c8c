"""``bus.loop.take_events``: the stream workers' batches. A batch goes out when it is full or
``within_s`` after its first event; events are acknowledged only once the batch was handled;
and an idle stage waits without waking (faust's own woke every 5 ms, idle or not)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from keyturn.bus.loop import take_events


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
    assert stream.acked == [], "nothing is acknowledged before the batch was handled"

    second = asyncio.create_task(next_batch(batches, within=15.0))
    await asyncio.sleep(0.1)
    assert stream.acked == ["a", "b", "c"], "asking for the next batch acknowledges the last"
    await feeding
    more = asyncio.create_task(stream.feed("e", "f"))  # fills the batch: held until it is taken
    batch, _ = await second
    assert batch == ["d", "e", "f"], "never more than max_ in a batch; the rest comes next, in order"
    await asyncio.sleep(0.05)
    assert not more.done(), "a full buffer holds the stream until its batch was handled"
    await batches.aclose()
    await asyncio.wait_for(more, 1.0)
    assert stream.acked == ["a", "b", "c", "d", "e", "f"]
    assert stream.enable_acks and stream._processors == [], "closing restores the stream as it was"
