"""A transactional producer that keeps looking for its coordinator through a broker restart.

aiokafka's sender looks the transaction coordinator up before a transaction's first partition
is added. It retries three errors of that lookup and turns every other one into a fatal error
of the sender task: a connection closed under the lookup (the broker stopping) or no broker
known to ask (a broker shutting down names none) ends the task for good. Nothing fails after
that; every later send and commit waits forever. A short drill on a slow machine found the
audit so: it recorded nothing more after the broker's restart, and stayed up. Kafka's own
clients retry any retriable error of the lookup (and wait while no broker is known); here
aiokafka's sender does the same, and its other errors stay fatal as they were.

Installed once per process by ``keyturn.bus``, as ``bus.rebootstrap`` is.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka.errors import KafkaError
from aiokafka.producer.sender import Sender

log = logging.getLogger(__name__)

_find_coordinator = Sender._find_coordinator


def retriable_cause(error: BaseException) -> bool:
    """The sender wraps each error of the lookup in a bare ``KafkaError``: is the one inside retriable?"""
    cause = error.__cause__
    return isinstance(cause, KafkaError) and bool(cause.retriable)


async def _patient_find_coordinator(self: Sender, coordinator_type: Any, coordinator_key: str) -> Any:
    """aiokafka's lookup, again after the retry backoff while no broker is known or the lookup
    failed with a retriable error."""
    while True:
        if coordinator_type not in self._coordinators and self.client.get_random_node() is None:
            await self.client.force_metadata_update()  # no broker to ask (the rebootstrap finds one)
            await asyncio.sleep(self._retry_backoff)
            continue
        try:
            return await _find_coordinator(self, coordinator_type, coordinator_key)
        except KafkaError as error:
            if not retriable_cause(error):
                raise
            log.warning("looking up the transaction coordinator again: %s", type(error.__cause__).__name__)
            await self.client.force_metadata_update()
            await asyncio.sleep(self._retry_backoff)


def install() -> None:
    """Give every aiokafka producer of this process the patient lookup (idempotent)."""
    Sender._find_coordinator = _patient_find_coordinator
