"""The faust app every stream worker runs in (its tasks, timers and producer), and publishing
through it.

A service's ``app.py`` reads top to bottom: what it publishes (``Publisher``), which topics it
consumes in which group (``roots.follow_group``, the one loop of ``bus.loop``), and one call into
its own logic per event or batch.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any, cast

import faust
from faust.app.base import BootStrategy

from keyturn.bus.headers import Headers, type_headers
from keyturn.bus.publisher import Publisher, Record, send_in_batches
from keyturn.bus.topics import Topics

log = logging.getLogger(__name__)


class _NoConsumer(BootStrategy):
    """faust starts no consumer of its own (nor its assignor, streams and tables): every service
    consumes through ``bus.loop`` in groups of its own. An idle faust consumer still ran its
    thread and fetched for its internal assignor topic."""

    enable_kafka_consumer = False


class _ProducingApp(faust.App):
    BootStrategy = _NoConsumer


def make_app(
    *,
    namespace: str,
    bootstrap: str,
    partitions: int,
    run_dir: Path | str,
    service: str,
    linger_ms: float = 3.0,
    batch_bytes: int = 256 * 1024,
) -> faust.App:
    """A faust app for one service: its tasks, timers and producer (raw bytes in and out: our
    codec does Avro); it consumes nothing itself (``_NoConsumer``)."""
    faust_dir = Path(run_dir) / "faust"
    faust_dir.mkdir(parents=True, exist_ok=True)
    return _ProducingApp(
        f"{namespace}-{service}",
        broker=f"kafka://{bootstrap}",
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",
        datadir=str(faust_dir / f"{namespace}-{service}"),  # not the working directory
        topic_partitions=partitions,
        topic_allow_declare=False,  # topics are created by bus.topics.ensure_topics, with retention
        web_enabled=False,  # the approval service serves its HTTP API itself (bus.http)
        producer_acks=-1,
        # A batch's records are sent before any is awaited (Publisher.publish_all), so a few ms of
        # linger and large batches put a whole batch in one produce request.
        producer_linger=linger_ms / 1000.0,
        producer_max_batch_size=batch_bytes,
    )


def faust_publisher(app: faust.App, topics: Topics, service: str) -> Publisher:
    """A publisher sending through the faust app's producer, with headers."""
    handles: dict[str, faust.TopicT] = {}

    async def enqueue(topic: str, key: bytes, value: bytes, headers: Headers) -> Awaitable[Any]:
        if topic not in handles:
            handles[topic] = app.topic(topic, key_type=bytes, value_type=bytes)
        return await handles[topic].send(key=key, value=value, headers=headers)

    async def send(topic: str, key: bytes, value: bytes) -> None:
        await (await enqueue(topic, key, value, type_headers(value)))

    # a batch's records go in the producer's batches whole (``send_in_batches``), past faust's
    # ``Topic.send`` and aiokafka's per-record path; faust has no public name for its started
    # aiokafka producer, hence the driver's own accessor
    async def enqueue_all(records: Sequence[Record]) -> list[Awaitable[Any]]:
        return await send_in_batches(cast(Any, app.producer)._ensure_producer(), records)

    return Publisher(send, topics, service, enqueue=enqueue, enqueue_all=enqueue_all)
