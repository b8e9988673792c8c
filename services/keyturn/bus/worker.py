"""The Kafka side every faust worker shares: the app, decoding with dead-lettering, publishing.

A service's ``app.py`` reads top to bottom: which topics it consumes (``consume``), what it
publishes (``Publisher``), and one call into its own logic per event.
"""

from __future__ import annotations

import logging
from pathlib import Path
from collections.abc import AsyncIterator
from typing import Any

import faust

from keyturn.bus.codec import UndecodableMessage, registry
from keyturn.bus.publisher import Publisher
from keyturn.bus.topics import Topics
from keyturn.config import Settings

log = logging.getLogger(__name__)


def make_app(settings: Settings, service: str, *, web_port: int | None = None) -> faust.App:
    """A faust app for one service: raw bytes in and out (our codec does Avro), memory tables."""
    faust_dir = Path(settings.run_dir) / "faust"
    faust_dir.mkdir(parents=True, exist_ok=True)
    return faust.App(
        f"{settings.namespace}-{service}",
        broker=f"kafka://{settings.kafka_bootstrap}",
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",
        datadir=str(faust_dir / f"{settings.namespace}-{service}"),  # not the working directory
        topic_partitions=settings.partitions,
        topic_allow_declare=False,  # topics are created by bus.topics.ensure_topics, with retention
        web_enabled=web_port is not None,
        web_port=web_port or 6066,
        web_bind="127.0.0.1",
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_every=100,
        broker_commit_interval=1.0,
    )


def faust_publisher(app: faust.App, settings: Settings, service: str) -> Publisher:
    """A publisher sending through the faust app's producer."""
    handles: dict[str, faust.TopicT] = {}

    async def send(topic: str, key: bytes, value: bytes) -> None:
        if topic not in handles:
            handles[topic] = app.topic(topic, key_type=bytes, value_type=bytes)
        await (await handles[topic].send(key=key, value=value))

    return Publisher(send, Topics.from_settings(settings), service)


async def decoded_events(stream: faust.StreamT, publisher: Publisher, *, accept: tuple[type, ...]) -> AsyncIterator[tuple[Any, Any]]:
    """(event, message) for each decodable message of an accepted type; the rest go to the DLQ
    (by the topic's owner, see ``Topics.dead_letter_owner``)."""
    async for raw in stream.events():
        message = raw.message
        try:
            event = registry().decode_event(message.value)
            if not isinstance(event, accept):
                raise UndecodableMessage("unexpected_type", f"{type(event).__name__} does not belong on {message.topic}")
        except UndecodableMessage as error:
            if publisher.topics.dead_letter_owner(message.topic) != publisher.service:
                log.warning("skipping undecodable %s:%s:%s (its owner dead-letters it): %s",
                            message.topic, message.partition, message.offset, error.reason)
                continue
            await publisher.dead_letter(
                source_topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                key=bytes(message.key) if message.key is not None else None,
                payload=bytes(message.value or b""),
                error=error,
            )
            continue
        yield event, message


def consume(app: faust.App, *names: str) -> faust.TopicT:
    """The topic(s) an agent consumes, as raw bytes."""
    return app.topic(*names, key_type=bytes, value_type=bytes)
