"""The Kafka side every faust worker shares: the app, decoding with dead-lettering, publishing.

A service's ``app.py`` reads top to bottom: which topics it consumes (``consume``), what it
publishes (``Publisher``), and one call into its own logic per event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import faust

from keyturn.bus.codec import UndecodableMessage, registry
from keyturn.bus.publisher import Publisher
from keyturn.bus.topics import Topics
from keyturn.config import Settings
from keyturn.faults import until_done

log = logging.getLogger(__name__)


def make_app(settings: Settings, service: str) -> faust.App:
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
        web_enabled=False,  # the approval service serves its HTTP API itself (bus.http)
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_every=100,
        broker_commit_interval=1.0,
        # A SIGKILLed worker keeps its partitions until its session times out (faust's default is
        # 60 s, measured 55 s in the fault drill); 10 s is three missed heartbeats.
        broker_session_timeout=settings.worker_session_timeout_s,
        # A worker that joins while a restarted broker has not yet listed the topics gets an empty
        # assignment; it rejoins when its next metadata refresh sees them (default: 5 minutes).
        consumer_metadata_max_age_ms=10_000,
    )


def faust_publisher(app: faust.App, settings: Settings, service: str) -> Publisher:
    """A publisher sending through the faust app's producer."""
    handles: dict[str, faust.TopicT] = {}

    async def send(topic: str, key: bytes, value: bytes) -> None:
        if topic not in handles:
            handles[topic] = app.topic(topic, key_type=bytes, value_type=bytes)
        await (await handles[topic].send(key=key, value=value))

    return Publisher(send, Topics.from_settings(settings), service)


async def decoded_events(stream: Any, publisher: Publisher, *, accept: tuple[type, ...]) -> AsyncIterator[tuple[Any, Any]]:
    """(event, message) for each decodable message of an accepted type; the rest go to the DLQ
    (by the topic's owner, see ``Topics.dead_letter_owner``)."""
    async for raw in stream.events():
        decoded = await _decoded(raw.message, publisher, accept)
        if decoded is not None:
            yield decoded


async def _decoded(message: Any, publisher: Publisher, accept: tuple[type, ...]) -> tuple[Any, Any] | None:
    try:
        event = registry().decode_event(message.value)
        if not isinstance(event, accept):
            raise UndecodableMessage("unexpected_type", f"{type(event).__name__} does not belong on {message.topic}")
    except UndecodableMessage as error:
        if publisher.topics.dead_letter_owner(message.topic) != publisher.service:
            log.warning("skipping undecodable %s:%s:%s (its owner dead-letters it): %s",
                        message.topic, message.partition, message.offset, error.reason)
            return None
        await _dead_letter(publisher, message, error)
        return None
    return event, message


async def _dead_letter(publisher: Publisher, message: Any, error: UndecodableMessage, *, by_service: bool = False) -> None:
    await until_done(lambda: publisher.dead_letter(
        source_topic=message.topic, partition=message.partition, offset=message.offset,
        key=bytes(message.key) if message.key is not None else None, payload=bytes(message.value or b""),
        error=error, by_service=by_service,
    ), f"{publisher.service}: dead-lettering {message.topic}:{message.partition}:{message.offset}")


Handler = Callable[[Any, Any], Awaitable[None]]


async def handle_each(stream: faust.StreamT, publisher: Publisher, handle: Handler, *, accept: tuple[type, ...],
                      batch: int = 64, within_s: float = 0.005) -> None:
    """Run ``handle(event, message)`` for every decodable event of the stream, never losing one.

    Events come in batches (up to ``batch``, or what arrived within ``within_s``): events of
    different keys (actions) are handled concurrently — their database calls, OPA calls and
    produce acks overlap instead of queueing one round trip at a time — and events of one key in
    order. faust acknowledges a batch once this returns, so a handler never raises out of it:
    a transient failure (a database or broker restart) is retried until it passes, anything
    else is dead-lettered with its reason, and the stream goes on.
    """
    async def in_order(events: list[tuple[Any, Any]]) -> None:
        for event, message in events:
            try:
                await until_done(lambda: handle(event, message), f"{publisher.service}: handling {message.topic}:{message.partition}:{message.offset}")
            except Exception as exc:
                log.exception("%s could not handle %s:%s:%s", publisher.service, message.topic, message.partition, message.offset)
                failure = UndecodableMessage("handler_failed", f"{publisher.service} failed on it: {type(exc).__name__}: {exc}")
                await _dead_letter(publisher, message, failure, by_service=True)

    async for events in stream.take_events(batch, within_s):
        by_key: dict[Any, list[tuple[Any, Any]]] = {}
        for raw in events:
            decoded = await _decoded(raw.message, publisher, accept)
            if decoded is not None:
                by_key.setdefault(raw.message.key, []).append(decoded)
        await asyncio.gather(*(in_order(group) for group in by_key.values()))


def consume(app: faust.App, *names: str) -> faust.TopicT:
    """The topic(s) an agent consumes, as raw bytes."""
    return app.topic(*names, key_type=bytes, value_type=bytes)
