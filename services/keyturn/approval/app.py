"""Approval service: holds needs-approval actions until approvers answer, or the TTL runs out.

consumes  <ns>.actions.decided (needs_approval)
produces  <ns>.actions.resolved (approved / denied / expired) · <ns>.approvals.votes (every
          vote, accepted or refused) · <ns>.dlq
routes    GET /v1/approvals · GET /v1/approvals/{id} · POST /v1/approvals/{id}/votes
state     approvals, votes and an outbox in PostgreSQL
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI

from keyturn.approval.http import mount_routes
from keyturn.approval.service import ApprovalDesk, needs_approval
from keyturn.approval.store import DDL, ApprovalStore
from keyturn.bus.http import embedded_server
from keyturn.bus.topics import Topics, ensure_topics
from keyturn.bus.worker import consume, decoded_events, faust_publisher, make_app
from keyturn.config import Settings
from keyturn.core.events import ActionDecided
from keyturn.db import open_pool
from keyturn.identity import verifier_from_settings
from keyturn.policy.opa import OpaClient

log = logging.getLogger(__name__)


def create_app(settings: Settings):
    app = make_app(settings, "approval")
    topics = Topics.from_settings(settings)
    publisher = faust_publisher(app, settings, "approval")
    http = FastAPI(title="Keyturn approvals", version="0.1.0", description="Answer pending actions.")
    runtime: dict[str, Any] = {}

    async def desk() -> ApprovalDesk:
        """The desk, built once on first use inside the worker's event loop."""
        lock = runtime.setdefault("lock", asyncio.Lock())
        async with lock:
            if "desk" not in runtime:
                await ensure_topics(settings)
                pool = await open_pool(settings, DDL)
                opa = OpaClient(settings.opa_url, timeout_s=settings.opa_timeout_s, retries=settings.opa_retries)
                runtime["verifier"] = verifier_from_settings(
                    settings.jwks_url or None, settings.jwks_path or None, settings.keys_dir, settings.jwt_issuer, settings.jwt_audience
                )
                runtime["desk"] = ApprovalDesk(ApprovalStore(pool), opa, topics, publisher.send_raw)
        return runtime["desk"]

    mount_routes(http, desk, lambda: runtime["verifier"])

    @app.agent(consume(app, topics.decided))
    async def open_approvals(stream):
        approvals = await desk()
        async for decided, message in decoded_events(stream, publisher, accept=(ActionDecided,)):
            if needs_approval(decided) and await approvals.open(decided, bytes(message.value)):
                log.info("approval opened for %s (%s)", decided.action_id, decided.request.action)

    @app.timer(interval=1.0)
    async def expire_and_flush():
        if "desk" in runtime:
            approvals = runtime["desk"]
            await approvals.expire_due()
            await approvals.flush()

    @app.task
    async def serve_api():
        await desk()
        await embedded_server(http, settings.approval_host, settings.approval_port).serve()

    return app
