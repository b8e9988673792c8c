"""Publishing events: encode with the schema codec, key by ``action_id``, wait for the ack.

One class for every service; only the transport differs (a faust app's producer in the
stream workers, a plain aiokafka producer in the HTTP intake).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from keyturn.bus.codec import UndecodableMessage, registry
from keyturn.bus.refusals import refusal_letter
from keyturn.bus.topics import Topics
from keyturn.core.events import DeadLetter

log = logging.getLogger(__name__)

Send = Callable[[str, bytes, bytes], Awaitable[None]]
"""(topic, key, value) → returns once the broker acknowledged the record."""


class Publisher:
    def __init__(self, send: Send, topics: Topics, service: str) -> None:
        self._send = send
        self.topics = topics
        self.service = service

    async def publish(self, topic: str, event: Any, *, key: str | None = None) -> None:
        """Encode ``event`` and send it keyed by its action id (or ``key``)."""
        key = key if key is not None else event.action_id
        await self._send(topic, key.encode(), self.encode(event))

    async def send_raw(self, topic: str, key: bytes, value: bytes) -> None:
        """Send already-encoded bytes with a raw key (outboxes)."""
        await self._send(topic, key, value)

    async def publish_encoded(self, topic: str, key: str, value: bytes) -> None:
        """Send bytes already encoded by ``encode`` (kept in an outbox)."""
        await self._send(topic, key.encode(), value)

    @staticmethod
    def encode(event: Any) -> bytes:
        return registry().encode_event(event)

    async def dead_letter(
        self,
        *,
        source_topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        payload: bytes,
        error: UndecodableMessage,
        by_service: bool = False,
        principal: str | None = None,
        problems: tuple[str, ...] = (),
        excerpt: bool = False,
    ) -> DeadLetter:
        """Quarantine input this service cannot accept, with the reason; returns the record.

        The record holds no byte of the input (see ``bus.refusals``). An undecodable message is
        dead-lettered once, by its topic's owner; a message that failed in one service's
        handling (``by_service``) is that service's own record.
        """
        letter = refusal_letter(
            service=self.service,
            source_topic=source_topic,
            partition=partition,
            offset=offset,
            key=key,
            payload=payload,
            error_type=error.error_type,
            reason=error.reason,
            problems=problems,
            principal=principal,
            excerpt=excerpt,
            by_service=by_service,
        )
        await self.publish(
            self.topics.dlq, letter, key=letter.key.decode(errors="replace") if letter.key else letter.event_id
        )
        log.warning("dead-lettered input from %s (%s): %s", source_topic, letter.error_type, letter.reason)
        return letter
