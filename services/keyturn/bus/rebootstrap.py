"""Kafka clients that bootstrap again when they know no broker to ask.

Kafka's own clients do this since KIP-899 (``metadata.recovery.strategy=rebootstrap``); aiokafka
does not (its issue 267). A client whose metadata answer named no broker (a broker shutting
down answers so) keeps only its bootstrap connection; once that connection closes, the client
knows no node to ask and logs "Unable to update metadata from []" for as long as it lives. A
short drill found the executor's producer so, started while the broker was stopping: the
worker consumed again after the restart, but every batch waited for partitions its producer
could never learn, 267 orders never ran. Here a client in that state connects to its
configured servers again (``AIOKafkaClient.bootstrap``) before it asks for metadata; while they
are away the update fails as it did, and is tried again as it was.

Installed once per process by ``keyturn.bus`` (every Kafka client of Keyturn is made after it).
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka.client import AIOKafkaClient, ConnectionGroup
from aiokafka.errors import KafkaConnectionError

log = logging.getLogger(__name__)

_BOOTSTRAP = ("bootstrap", ConnectionGroup.DEFAULT)
_metadata_update = AIOKafkaClient._metadata_update


async def _rebootstrapping_update(self: AIOKafkaClient, cluster_metadata: Any, topics: Any) -> bool:
    """aiokafka's metadata update, after a new bootstrap when no broker and no bootstrap
    connection is left to ask."""
    if not self.cluster.brokers() and _BOOTSTRAP not in self._conns:
        if not getattr(self, "_keyturn_rebootstrapping", False):
            log.warning("the Kafka client knows no broker to ask; bootstrapping again from %s", self._bootstrap_servers)
            self._keyturn_rebootstrapping = True
        try:
            await self.bootstrap()
        except KafkaConnectionError:  # the servers are away: failed, as before, and tried again
            cluster_metadata.failed_update(None)
            return False
    updated = await _metadata_update(self, cluster_metadata, topics)
    if self.cluster.brokers():
        self._keyturn_rebootstrapping = False
    return updated


def install() -> None:
    """Give every aiokafka client of this process the rebootstrap (idempotent)."""
    AIOKafkaClient._metadata_update = _rebootstrapping_update
