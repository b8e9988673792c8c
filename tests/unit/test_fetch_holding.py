"""``bus.loop.FetchHolding`` through ``KafkaSource``: a follower made with held fetches asks the
broker for a long poll once nothing comes (a quiet follower sends two fetches a second, not one
per hold, and its next record is answered at once), and for held fetches again as soon as
records come; a consumer made without held fetches is left as it was."""

from __future__ import annotations

import asyncio
import inspect

from aiokafka.consumer.fetcher import Fetcher

from keyturn.bus.loop import FETCH_MIN_BYTES, LONG_POLL_MS, KafkaSource, held_fetches
from tests.fakes.service_ports import MemoryConsumer

TOPIC = "unit.decided"


async def test_a_held_follower_long_polls_while_nothing_comes_and_holds_again_when_records_do() -> None:
    consumer = MemoryConsumer(TOPIC, **held_fetches(20))
    source = KafkaSource(consumer, max_records=500, wait_ms=1000)
    batches = source.batches()
    waiting = asyncio.create_task(anext(batches))
    await asyncio.sleep(0.15)  # longer than two held fetches
    # first as made: a getmany of two held fetches and a margin, not the follower's second
    assert consumer.asked[0] == (50, FETCH_MIN_BYTES, 20)
    # then, nothing having come, the broker is asked to answer at the first record
    assert consumer.fetching() == (1, LONG_POLL_MS)
    assert consumer.asked[-1] == (1000, 1, LONG_POLL_MS)
    consumer.feed(("k", 7))
    assert [m.offset for m in await asyncio.wait_for(waiting, 1)] == [7]
    assert consumer.fetching() == (FETCH_MIN_BYTES, 20), "records flow: fetches are held again"
    await batches.aclose()


async def test_a_wait_longer_than_the_long_poll_is_kept_while_quiet() -> None:
    consumer = MemoryConsumer(TOPIC, **held_fetches(1000))  # the console history's
    source = KafkaSource(consumer, max_records=500, wait_ms=1000)
    batches = source.batches()
    waiting = asyncio.create_task(anext(batches))
    await asyncio.sleep(1.1)
    assert consumer.asked[0][0] == 1000  # never more than the follower's own wait
    assert consumer.fetching() == (1, 1000)
    consumer.feed(("k", 1))
    await asyncio.wait_for(waiting, 2)
    assert consumer.fetching() == (FETCH_MIN_BYTES, 1000)
    await batches.aclose()


async def test_a_follower_made_without_held_fetches_is_left_as_it_was() -> None:
    consumer = MemoryConsumer(TOPIC)  # aiokafka's defaults: 1 byte, 500 ms
    source = KafkaSource(consumer, max_records=500, wait_ms=300)
    batches = source.batches()
    waiting = asyncio.create_task(anext(batches))
    await asyncio.sleep(0.7)
    consumer.feed(("k", 3))
    await asyncio.wait_for(waiting, 1)
    assert {asked for asked in consumer.asked} == {(300, 1, 500)}
    await batches.aclose()


def test_aiokafka_reads_both_settings_from_its_fetcher_for_every_fetch_it_builds() -> None:
    # FetchHolding changes them on a running consumer's fetcher; were they read once, at start,
    # or named otherwise, a quiet follower would go on sending a held fetch every wait
    made = inspect.signature(Fetcher.__init__).parameters
    assert {"fetch_min_bytes", "fetch_max_wait_ms"} <= set(made)
    building = inspect.getsource(Fetcher._get_actions_per_node)
    assert "self._fetch_max_wait_ms" in building and "self._fetch_min_bytes" in building
    assert "self._fetch_min_bytes = fetch_min_bytes" in inspect.getsource(Fetcher.__init__)
