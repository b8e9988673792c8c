"""Audit service: every lifecycle event, vote and dead letter becomes one chained record.

consumes  lifecycle topics · <ns>.approvals.votes · <ns>.dlq
produces  <ns>.audit (one partition, kept forever; SHA-256 chained, Ed25519 checkpoints),
          in Kafka transactions under one transactional id, so a newer worker fences an older one
state     the chain head and the ids of the last 100,000 events recorded (to drop redeliveries),
          read back from the tail of <ns>.audit at start
metrics   http://127.0.0.1:<KEYTURN_AUDIT_METRICS_PORT>/metrics
A checkpoint is signed every 100 records, after resuming, and on a clean shutdown.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from keyturn.audit.keys import load_signer
from keyturn.audit.stream import read_audit_tail
from keyturn.audit.writer import AuditWriter, AuditWriterStopped
from keyturn.bus.loop import FaustSource, Stage, run
from keyturn.bus.topics import Topics
from keyturn.bus.worker import consume
from keyturn.config import Settings
from keyturn.core.audit.checkpoint import CheckpointSigner
from keyturn.core.events import EVENT_TYPES, ActionSubmitted
from keyturn.metrics import serve_metrics
from keyturn.roots import stream_worker

log = logging.getLogger(__name__)

BATCH_MAX, BATCH_WITHIN_S = 500, 0.1  # one transaction per batch: a commit costs ~30 ms


def checkpoint_key_path(settings: Settings) -> Path:
    return settings.keys_dir / "audit-checkpoint.pem"


def audit_writer(settings: Settings, signer: CheckpointSigner, **options: Any) -> AuditWriter:
    """The writer of ``<ns>.audit``; every audit worker of a namespace shares its transactional
    id, so a new one fences the old. ``options`` as for ``AuditWriter``."""
    bootstrap, topic = settings.kafka_bootstrap, Topics(settings.namespace, settings.partitions).audit
    return AuditWriter(
        bootstrap,
        topic,
        f"{settings.namespace}-audit-chain",
        lambda records: read_audit_tail(bootstrap, topic, records),
        signer,
        **options,
    )


def create_app(settings: Settings):
    """The audit service's composition root: everything it uses is built here from ``settings``."""
    app, topics, publisher = stream_worker(settings, "audit")
    auditable = tuple(cls for cls in EVENT_TYPES.values() if cls is not ActionSubmitted)
    writer = audit_writer(settings, load_signer(checkpoint_key_path(settings)))

    async def chain(events: list[tuple[Any, Any]]) -> None:
        """One batch, in arrival order, as one transaction of the one chain."""
        try:
            await writer.record([(event, message.topic) for event, message in events])
        except AuditWriterStopped as error:
            # Exit before faust commits these events' offsets: the next worker reads them again.
            log.critical("audit worker stopping: %s", error)
            os._exit(70)

    @app.agent(consume(app, *topics.audited), concurrency=1)
    async def chain_events(stream):
        await writer.start()
        serve_metrics("audit", settings.audit_metrics_port)
        await run(
            FaustSource(stream, batch=BATCH_MAX, within_s=BATCH_WITHIN_S),
            Stage(publisher, auditable, handle_batch=chain),
        )

    @app.on_before_shutdown.connect
    async def sign_final_checkpoint(sender, **kwargs) -> None:
        await writer.close()

    return app
