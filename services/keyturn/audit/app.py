"""Audit service: every lifecycle event, vote and dead letter becomes one chained record.

consumes  lifecycle topics · <ns>.approvals.votes · <ns>.dlq
produces  <ns>.audit (one partition, kept forever; SHA-256 chained, Ed25519 checkpoints)
state     the chain head and the event ids already recorded, rebuilt from <ns>.audit at start
Run exactly one audit worker per namespace: the chain is a single ordered log.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

from keyturn.audit.keys import load_signer
from keyturn.audit.stream import read_audit_log
from keyturn.audit.records import actor_of, audit_payload, flags_of, occurred_at
from keyturn.bus.codec import registry
from keyturn.bus.topics import Topics, ensure_topics
from keyturn.bus.worker import consume, decoded_events, faust_publisher, make_app
from keyturn.config import Settings
from keyturn.core.audit_chain import AuditChain, AuditRecord
from keyturn.core.events import EVENT_TYPES, ActionSubmitted

log = logging.getLogger(__name__)


def checkpoint_key_path(settings: Settings) -> Path:
    return settings.keys_dir / "audit-checkpoint.pem"


def create_app(settings: Settings):
    app = make_app(settings, "audit")
    topics = Topics.from_settings(settings)
    publisher = faust_publisher(app, settings, "audit")
    auditable = tuple(cls for cls in EVENT_TYPES.values() if cls is not ActionSubmitted)

    async def append(record: AuditRecord) -> None:
        await publisher.publish_encoded(topics.audit, record.action_id or record.event_id, registry().encode("AuditRecord", record.to_dict()))

    @app.agent(consume(app, *topics.audited), concurrency=1)
    async def chain_events(stream):
        await ensure_topics(settings)
        history = await read_audit_log(settings)
        chain = AuditChain(load_signer(checkpoint_key_path(settings)), checkpoint_every=100, audit_topic=topics.audit)
        if history:
            chain.resume(history[-1], seen_event_ids=(r.event_id for r in history))
        log.info("audit chain resumed at sequence %d", chain.next_sequence)
        async for event, message in decoded_events(stream, publisher, accept=auditable):
            now = datetime.now(timezone.utc)
            record = chain.append(
                event_id=event.event_id,
                event_type=type(event).__name__,
                source_topic=message.topic,
                occurred_at=occurred_at(event),
                payload=audit_payload(event),
                now=now,
                action_id=getattr(event, "action_id", None),
                actor=actor_of(event),
                flags=flags_of(event),
            )
            if record is not None:
                await append(record)
            if chain.checkpoint_due:
                await append(chain.checkpoint(now))

    return app
